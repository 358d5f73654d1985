//! A full state disk (issue 15): the agent's state directory on a small
//! tmpfs of its own, filled up while the agent runs. A new config is still
//! enforced and reported (with what could not be saved), nothing
//! half-written is left, and once there is room the config is saved as the
//! last good one and the reports are clean again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    blocking, in_wan, serve_greeting, wait_until, wan, AgentProcess, Stage, ATTEMPT,
};
use crate::netns::WAN_HOST;

const BLOCKED_PORT: u16 = 9000;

/// A tmpfs mounted on a directory the test made; unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("isdf-test-state")
            .arg(path)
            .output()
            .expect("mount (util-linux; this test needs root)");
        assert!(
            out.status.success(),
            "mounting a tmpfs on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// Fills the file system of `dir` with `dir/filler`, in bounded steps.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    for _ in 0..100_000 {
        if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "filling {}: {e}", dir.display());
            return path;
        }
    }
    panic!("{} never filled up", dir.display());
}

/// The names in the state directory, and whether each JSON file parses.
fn check_whole(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with('.'),
            "a temp file was left behind: {name}"
        );
        if name.ends_with(".json") {
            let bytes = std::fs::read(entry.path()).unwrap();
            serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|e| panic!("{name} is not whole: {e}"));
        }
        names.push(name);
    }
    names.sort();
    names
}

#[test]
fn a_full_state_disk_still_enforces_reports_and_leaves_no_partial_file() {
    in_wan("full", |topo, work| async move {
        serve_greeting(BLOCKED_PORT).await;
        let Stage {
            controller: _controller,
            operator,
            device,
            config_path,
            log,
            ..
        } = Stage::prepare(&work, None).await;
        // Short polls: the agent's periodic pass (which retries saving)
        // comes every couple of seconds.
        let config = std::fs::read_to_string(&config_path).unwrap();
        std::fs::write(
            &config_path,
            config.replace("poll_wait_secs = 20", "poll_wait_secs = 2"),
        )
        .unwrap();
        let state = work.join("agent").join("state");
        let _tmpfs = Tmpfs::mount(&state, "512k");
        let agent = AgentProcess::start(&topo.router, &config_path, "nftables", &log);
        operator.wait_applied(&device, 1).await;
        let envelope_of = |config: Value| config["envelope"].clone();
        let first = envelope_of(
            operator
                .get(&format!("/api/v1/devices/{device}/config"))
                .await,
        );

        let filler = fill(&state);
        operator
            .block_everywhere(json!([{"protocol": "tcp", "dst": WAN_HOST, "dport": BLOCKED_PORT}]))
            .await;
        let report = operator
            .wait_status(&device, |r| {
                r["enforced_version"] == json!(2) && r["outcome"] == "applied"
            })
            .await;
        let errors = report["errors"].to_string();
        assert!(
            errors.contains("state_not_saved: config 2 is enforced but not saved"),
            "the report names what was not saved: {errors}\n{}",
            agent.log()
        );
        let topo2 = topo.clone();
        assert!(
            !blocking(move || topo2.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT)).await,
            "the new config is enforced"
        );
        // Nothing half-written: every file whole, no temp file, and the
        // last good config still the first one.
        let names = check_whole(&state);
        assert!(
            names.contains(&"last-good.envelope.json".to_owned()),
            "{names:?}"
        );
        let saved: Value =
            serde_json::from_slice(&std::fs::read(state.join("last-good.envelope.json")).unwrap())
                .unwrap();
        assert_eq!(
            saved, first,
            "the last good config on disk is still version 1"
        );

        // Room again: the next pass saves version 2 and the report is clean.
        std::fs::remove_file(&filler).unwrap();
        operator
            .wait_status(&device, |r| {
                r["enforced_version"] == json!(2) && r["errors"] == json!([])
            })
            .await;
        let second = envelope_of(
            operator
                .get(&format!("/api/v1/devices/{device}/config"))
                .await,
        );
        blocking({
            let state = state.clone();
            move || {
                wait_until("version 2 is saved", Duration::from_secs(10), || {
                    std::fs::read(state.join("last-good.envelope.json"))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        == Some(second.clone())
                })
            }
        })
        .await;
        check_whole(&state);
        drop(agent);
    });
}
