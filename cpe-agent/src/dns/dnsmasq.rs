//! dnsmasq enforcing the DNS policy: the `Resolver` the agent loop uses.
//!
//! In `managed` mode the agent runs a dnsmasq of its own, on the LAN
//! interfaces and lo, and restarts it only when its config changed (again
//! from the periodic pass if it died; one left by a crashed agent is ended
//! by the PID it recorded). In `conf-dir` mode (OpenWrt) it writes
//! `isdf.conf` into the system dnsmasq's conf-dir and runs its reload
//! command. Either way an apply succeeds only once dnsmasq answers the
//! marker of the config just written (see `plan::with_marker`); config and
//! pid files are written atomically (`sys::atomic_write`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use isdf_api::DnsPolicy;

use super::plan::{answers_with, txt_query, with_marker, RenderOptions, MARKER_NAME};
use super::{render, Resolver};
use crate::sys::atomic_write::write_atomically;
use crate::sys::processes;
use crate::sys::settings::{DnsMode, Settings};

/// How long dnsmasq has to answer after a start or reload.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the conf-dir reload command may run.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of dnsmasq's stderr kept for error messages.
const STDERR_TAIL: usize = 12;
/// The file the agent owns in the system dnsmasq's conf-dir.
pub const CONF_DIR_FILE: &str = "isdf.conf";

/// A config the resolver should enforce.
#[derive(Clone, PartialEq, Eq)]
struct Desired {
    text: String,
    digest: String,
}

/// A managed dnsmasq process.
struct Running {
    child: Child,
    text: String,
    /// The last lines it wrote to stderr.
    stderr: Arc<Mutex<VecDeque<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Running {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What it said last, once it has said all (it exited).
    fn last_words(&self) -> String {
        let deadline = Instant::now() + Duration::from_millis(500);
        while !self.reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() {
            return "(it wrote nothing)".to_owned();
        }
        lines.iter().cloned().collect::<Vec<_>>().join("; ")
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq, managed by the agent or configured through its conf-dir.
pub struct Dnsmasq {
    mode: DnsMode,
    /// The dnsmasq program (managed mode).
    program: PathBuf,
    port: u16,
    /// The system dnsmasq's conf-dir and reload command (conf-dir mode).
    conf_dir: PathBuf,
    reload_command: Vec<String>,
    upstream: Vec<SocketAddr>,
    lan_interfaces: Vec<String>,
    run_dir: PathBuf,
    desired: Option<Desired>,
    running: Option<Running>,
    /// conf-dir mode: the config the system dnsmasq was seen answering with.
    loaded: Option<String>,
    /// A dnsmasq a crashed agent left behind was looked for.
    swept: bool,
}

impl Dnsmasq {
    /// Does nothing until the first `apply`.
    pub fn new(settings: &Settings) -> Self {
        // Both were checked by `Settings::parse`.
        Dnsmasq {
            mode: settings.resolver_mode().unwrap_or(DnsMode::Managed),
            program: settings.dns_dnsmasq.clone(),
            port: settings.dns_port,
            conf_dir: settings.dns_conf_dir.clone(),
            reload_command: settings.dns_reload_command.clone(),
            upstream: settings.upstream_servers().unwrap_or_default(),
            lan_interfaces: settings.lan_interfaces.clone(),
            run_dir: settings.dnsmasq_run_dir(),
            desired: None,
            running: None,
            loaded: None,
            swept: false,
        }
    }

    /// The managed dnsmasq's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    fn options(&self) -> RenderOptions<'_> {
        RenderOptions {
            mode: self.mode,
            port: self.port,
            lan_interfaces: &self.lan_interfaces,
            upstream: &self.upstream,
        }
    }

    fn conf_path(&self) -> PathBuf {
        self.run_dir.join("dnsmasq.conf")
    }

    fn pid_path(&self) -> PathBuf {
        self.run_dir.join("dnsmasq.pid")
    }

    fn conf_dir_path(&self) -> PathBuf {
        self.conf_dir.join(CONF_DIR_FILE)
    }

    /// Brings the resolver to `self.desired`, restarting only what differs.
    fn converge(&mut self) -> anyhow::Result<()> {
        match self.mode {
            DnsMode::Managed => self.converge_managed(),
            DnsMode::ConfDir => self.converge_conf_dir(),
        }
    }

    fn converge_managed(&mut self) -> anyhow::Result<()> {
        if !self.swept {
            self.swept = true;
            self.kill_leftover();
        }
        if let Some(running) = &mut self.running {
            let current = self
                .desired
                .as_ref()
                .is_some_and(|d| d.text == running.text);
            match running.exited() {
                None if current => return Ok(()),
                None => {}
                Some(status) => tracing::warn!(
                    %status,
                    said = %running.last_words(),
                    "dnsmasq died; starting it again"
                ),
            }
        }
        self.stop();
        let Some(desired) = self.desired.clone() else {
            return Ok(());
        };
        write_file(&self.conf_path(), desired.text.as_bytes())?;
        let mut running = self.spawn(&desired.text)?;
        // Written after the start, so a crashed agent's successor can end
        // this dnsmasq, which would otherwise hold the port.
        if let Err(e) = write_file(&self.pid_path(), running.child.id().to_string().as_bytes()) {
            tracing::warn!(error = %format!("{e:#}"), "recording dnsmasq's pid");
        }
        match wait_until_answers(self.port, &desired.digest, Some(&mut running)) {
            Ok(()) => {
                tracing::info!(
                    pid = running.child.id(),
                    "dnsmasq answers with the new config"
                );
                self.running = Some(running);
                Ok(())
            }
            Err(e) => {
                running.kill();
                let _ = std::fs::remove_file(self.pid_path());
                Err(e)
            }
        }
    }

    fn spawn(&self, text: &str) -> anyhow::Result<Running> {
        let mut child = Command::new(&self.program)
            .arg(format!("--conf-file={}", self.conf_path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let pipe = child.stderr.take().context("dnsmasq's stderr")?;
        let tail = stderr.clone();
        let reader = std::thread::Builder::new()
            .name("dnsmasq-log".into())
            .spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    tracing::info!("{line}");
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
            .context("starting the dnsmasq log thread")?;
        Ok(Running {
            child,
            text: text.to_owned(),
            stderr,
            reader,
        })
    }

    fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            tracing::info!(pid = running.child.id(), "stopping dnsmasq");
            running.kill();
            let _ = std::fs::remove_file(self.pid_path());
        }
    }

    /// Ends a dnsmasq a previous agent started on this config file and
    /// could not stop (it crashed): it would hold the port.
    fn kill_leftover(&self) {
        let Ok(pid) = std::fs::read_to_string(self.pid_path()) else {
            return;
        };
        let pid = pid.trim();
        let ours = pid.bytes().all(|b| b.is_ascii_digit())
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let conf = self.conf_path();
                let conf = conf.as_os_str().as_encoded_bytes();
                cmdline.windows(conf.len()).any(|w| w == conf)
            });
        if ours {
            tracing::warn!(pid, "ending the dnsmasq a previous agent left running");
            processes::terminate_and_wait(pid);
        }
        let _ = std::fs::remove_file(self.pid_path());
    }

    fn converge_conf_dir(&mut self) -> anyhow::Result<()> {
        let path = self.conf_dir_path();
        let on_disk = std::fs::read_to_string(&path).ok();
        let Some(desired) = self.desired.clone() else {
            if on_disk.is_none() {
                return Ok(());
            }
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            self.loaded = None;
            return self.reload();
        };
        if on_disk.as_ref() == Some(&desired.text) {
            if self.loaded.as_ref() == Some(&desired.text) {
                return Ok(());
            }
            // Written by a previous run of the agent: the system dnsmasq
            // may already answer with it.
            if query_marker(self.port, &desired.digest).unwrap_or(false) {
                self.loaded = Some(desired.text);
                return Ok(());
            }
        }
        self.loaded = None;
        write_file(&path, desired.text.as_bytes())?;
        self.reload()?;
        wait_until_answers(self.port, &desired.digest, None)
            .context("the system dnsmasq (its log: logread -e dnsmasq)")?;
        self.loaded = Some(desired.text);
        Ok(())
    }

    /// Runs `reload_command`, bounded in time.
    fn reload(&self) -> anyhow::Result<()> {
        let command = &self.reload_command;
        let (program, args) = command
            .split_first()
            .context("dns_reload_command is empty")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {}", command.join(" ")))?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            match child.try_wait().context("waiting for the reload command")? {
                Some(status) if status.success() => return Ok(()),
                Some(status) => bail!("{} failed: {status}", command.join(" ")),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("{} took over {RELOAD_TIMEOUT:?}", command.join(" "));
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Resolver for Dnsmasq {
    fn apply(&mut self, policy: Option<&DnsPolicy>) -> anyhow::Result<()> {
        self.desired = policy.map(|p| {
            let (text, digest) = with_marker(render(p, &self.options()));
            Desired { text, digest }
        });
        self.converge()
    }

    fn repair(&mut self) -> anyhow::Result<()> {
        self.converge()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the dnsmasq on 127.0.0.1:`port` answers with the config of
/// `digest`; fails early, with what it said, if `running` exits first.
fn wait_until_answers(
    port: u16,
    digest: &str,
    mut running: Option<&mut Running>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(running) = running.as_deref_mut() {
            if let Some(status) = running.exited() {
                bail!(
                    "dnsmasq exited ({status}) before answering: {}",
                    running.last_words()
                );
            }
        }
        if query_marker(port, digest).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let said = running.map_or_else(String::new, |r| format!(": {}", r.last_words()));
            bail!("dnsmasq did not answer on 127.0.0.1:{port} within {READY_TIMEOUT:?}{said}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asks 127.0.0.1:`port` once for the marker's TXT record; true when the
/// answer holds `digest`.
fn query_marker(port: u16, digest: &str) -> std::io::Result<bool> {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let id = (nanos >> 8) as u16;
    socket.send(&txt_query(id, MARKER_NAME))?;
    let mut answer = [0u8; 512];
    let len = socket.recv(&mut answer)?;
    Ok(answers_with(&answer[..len], id, digest))
}

/// Writes `path` atomically (creating its directory), so dnsmasq never reads
/// half a file, even after a power cut. The mode is the one `std::fs::write`
/// gives: the umask decides, as for any file the agent writes for dnsmasq.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a file without directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomically(path, bytes, 0o666)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::sample_policy as policy;

    fn settings(dir: &Path, extra: &str) -> Settings {
        Settings::parse(&format!(
            "state_dir = {:?}\ndns_port = 1\n{extra}",
            dir.join("state")
        ))
        .unwrap()
    }

    // Real dnsmasq processes are tested in tests/it/dns.rs, in network
    // namespaces: here nothing may reach a port of the test machine.

    #[test]
    fn a_dnsmasq_that_cannot_start_fails_the_apply_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut dnsmasq = Dnsmasq::new(&settings(
            dir.path(),
            "dns_dnsmasq = \"/nonexistent/dnsmasq\"\n",
        ));
        dnsmasq.apply(None).unwrap();
        let e = dnsmasq.apply(Some(&policy())).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/dnsmasq"), "{e:#}");
        assert_eq!(dnsmasq.pid(), None);
        let conf = std::fs::read_to_string(dir.path().join("state/dnsmasq/dnsmasq.conf")).unwrap();
        assert!(conf.contains("max-ttl=30\n"), "{conf}");
        assert!(dnsmasq.repair().is_err(), "repair tries again");
        dnsmasq.apply(None).unwrap();
        assert!(dnsmasq.repair().is_ok(), "nothing asked for");
    }

    #[test]
    fn conf_dir_mode_writes_and_removes_its_file_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("reloads");
        let mut dnsmasq = Dnsmasq::new(&settings(
            dir.path(),
            &format!(
                "dns_mode = \"conf-dir\"\ndns_conf_dir = {:?}\ndns_reload_command = [\"sh\", \"-c\", \"echo x >> {}; exit 3\"]\n",
                dir.path().join("d"),
                log.display()
            ),
        ));
        // The reload fails: the file is there, the apply fails.
        let e = dnsmasq.apply(Some(&policy())).unwrap_err();
        assert!(format!("{e:#}").contains("exit status: 3"), "{e:#}");
        let file = dir.path().join("d/isdf.conf");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("nftset=/video.test/cdn-video.test/"),
            "{text}"
        );
        assert!(!text.contains("port="), "{text}");
        assert!(dnsmasq.apply(None).is_err(), "the reload fails again");
        assert!(!file.exists());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\nx\n");
        dnsmasq.apply(None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "x\nx\n",
            "no file, no reload"
        );
    }
}
