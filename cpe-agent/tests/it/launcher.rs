//! `deploy/isdf-agent-launch`, the watchdog that undoes an agent upgrade by
//! itself, run with stand-in agents (shell scripts): a new agent that
//! confirms keeps running; one that exits at start, or never reaches the
//! controller by the deadline, is replaced by the previous agent, and the
//! reason is left for it to report (and in the undone release's folder, so
//! it is never installed again).

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LAUNCHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/isdf-agent-launch");

struct Stage {
    _dir: tempfile::TempDir,
    state: PathBuf,
    releases: PathBuf,
}

impl Stage {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let releases = state.join("releases");
        std::fs::create_dir_all(&releases).unwrap();
        Stage {
            _dir: dir,
            state,
            releases,
        }
    }

    /// A stand-in agent: `body` in sh, with STATE set.
    fn agent(&self, name: &str, body: &str) -> PathBuf {
        let path = self.state.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\nSTATE='{}'\n{body}\n", self.state.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A stand-in agent installed as a release is (`<folder>/isdf-agent`).
    fn release(&self, folder: &str, body: &str) -> PathBuf {
        let dir = self.releases.join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        let path = self.agent("release-body", body);
        let installed = dir.join("isdf-agent");
        std::fs::rename(path, &installed).unwrap();
        installed
    }

    /// Stages an upgrade from `previous` to `new`, to be confirmed within
    /// `secs` seconds.
    fn upgrade(&self, previous: &Path, new: &Path, secs: u64) {
        symlink(previous, self.releases.join("previous")).unwrap();
        symlink(new, self.releases.join("current")).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        std::fs::write(self.releases.join("pending"), (now + secs).to_string()).unwrap();
    }

    /// Runs the launcher (bounded: it must end within a minute).
    fn launch(&self, installed: &Path) -> (i32, Duration) {
        let started = Instant::now();
        let mut child = Command::new("sh")
            .arg(LAUNCHER)
            .arg(&self.state)
            .arg(installed)
            .args(["--", "run", "--config", "agent.toml"])
            .spawn()
            .expect("sh runs the launcher");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("the launcher ran for more than a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn current(&self) -> PathBuf {
        std::fs::read_link(self.releases.join("current")).unwrap()
    }

    fn reverted(&self) -> Option<String> {
        std::fs::read_to_string(self.releases.join("reverted")).ok()
    }

    fn ran(&self, marker: &str) -> Option<String> {
        std::fs::read_to_string(self.state.join(marker)).ok()
    }
}

/// The previous agent: says it ran, with its arguments.
const PREVIOUS: &str = "echo \"$@\" > \"$STATE/previous-ran\"; exit 0";

#[test]
fn a_new_agent_that_confirms_keeps_running() {
    let s = Stage::new();
    let previous = s.agent("previous", PREVIOUS);
    // Confirms at once, then runs until the launcher took the confirmation.
    let good = s.agent(
        "good",
        "echo \"$@\" > \"$STATE/good-ran\"; touch \"$STATE/releases/confirmed\"
         i=0; while [ -f \"$STATE/releases/pending\" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
         exit 0",
    );
    s.upgrade(&previous, &good, 600);
    let (code, _) = s.launch(Path::new("/nonexistent"));
    assert_eq!(code, 0);
    assert_eq!(
        s.ran("good-ran").as_deref(),
        Some("run --config agent.toml\n")
    );
    assert_eq!(s.current(), good, "the upgrade stands");
    assert!(!s.releases.join("pending").exists() && !s.releases.join("confirmed").exists());
    assert_eq!(s.reverted(), None);
    assert_eq!(s.ran("previous-ran"), None);
}

#[test]
fn a_new_agent_that_exits_at_start_is_replaced_by_the_previous_one() {
    let s = Stage::new();
    let previous = s.agent("previous", PREVIOUS);
    let broken = s.release("9.9.9-0123456789abcdef", "exit 3");
    s.upgrade(&previous, &broken, 600);
    let (code, _) = s.launch(Path::new("/nonexistent"));
    assert_eq!(code, 0, "the previous agent's exit");
    assert_eq!(s.current(), previous);
    let reason = s
        .reverted()
        .expect("the reason is left for the previous agent");
    assert!(reason.contains("exited with status 3"), "{reason}");
    // The release itself is marked, so the agent never installs it again.
    let marked = std::fs::read_to_string(broken.with_file_name("reverted")).unwrap();
    assert_eq!(marked, reason);
    assert_eq!(
        s.ran("previous-ran").as_deref(),
        Some("run --config agent.toml\n")
    );
    assert!(!s.releases.join("pending").exists());
}

#[test]
fn a_new_agent_that_never_confirms_is_stopped_at_its_deadline() {
    let s = Stage::new();
    let previous = s.agent("previous", PREVIOUS);
    // Runs, but never reaches the controller.
    let silent = s.agent("silent", "echo $$ > \"$STATE/silent-pid\"; exec sleep 50");
    s.upgrade(&previous, &silent, 2);
    let (code, took) = s.launch(Path::new("/nonexistent"));
    assert_eq!(code, 0);
    assert!(
        took < Duration::from_secs(45),
        "stopped at the deadline, not at its end: {took:?}"
    );
    let reason = s.reverted().unwrap();
    assert!(reason.contains("did not reach the controller"), "{reason}");
    assert_eq!(s.current(), previous);
    assert!(s.ran("previous-ran").is_some());
    let pid = s.ran("silent-pid").unwrap();
    let alive = Command::new("kill")
        .args(["-0", pid.trim()])
        .status()
        .unwrap()
        .success();
    assert!(!alive, "the new agent was stopped");
}

#[test]
fn without_an_upgrade_the_current_or_installed_agent_runs() {
    let s = Stage::new();
    let installed = s.agent(
        "installed",
        "echo \"$@\" > \"$STATE/installed-ran\"; exit 7",
    );
    let (code, _) = s.launch(&installed);
    assert_eq!(code, 7, "exec'd: its exit is the launcher's");
    assert_eq!(
        s.ran("installed-ran").as_deref(),
        Some("run --config agent.toml\n")
    );
    let staged = s.agent("staged", "echo \"$@\" > \"$STATE/staged-ran\"; exit 0");
    symlink(&staged, s.releases.join("current")).unwrap();
    assert_eq!(s.launch(&installed).0, 0);
    assert!(s.ran("staged-ran").is_some(), "the current link wins");
}
