//! dnsmasq enforcing the DNS policy: the `Resolver` the agent loop uses.
//!
//! In `managed` mode the agent runs a dnsmasq of its own, on the LAN
//! interfaces and lo, **as a daemon that outlives the agent**: dnsmasq
//! forks into a session of its own and writes its pid file, so the LAN
//! keeps its resolver when the agent stops, crashes or is killed (a service
//! manager must not end it with the agent: `KillMode=process` under
//! systemd). The next agent adopts it: the pid file names a process that
//! is dnsmasq started on this config file (`/proc/PID/cmdline`, not a
//! recycled pid) in this network namespace, and it answers the marker of
//! the config wanted; then nothing is restarted. Only a config that
//! changed replaces it: the new file is checked first (`dnsmasq --test`),
//! the old dnsmasq ends and the new one starts at once (dnsmasq cannot
//! share port 53, so the LAN's resolver is away for that start, tens of
//! milliseconds), and if the new one does not answer, the config that
//! answered before starts again. A dnsmasq that died is started again by
//! the periodic pass. Only `apply(None)` (a config without DNS policy, or
//! `isdf-agent uninstall`) ends it.
//!
//! In `conf-dir` mode (OpenWrt) it writes `isdf.conf` into the system
//! dnsmasq's conf-dir and runs its reload command. Either way an apply
//! succeeds only once dnsmasq answers the marker of the config just
//! written (see `plan::with_marker`); config files are written atomically
//! (`sys::atomic_write`).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use isdf_api::DnsPolicy;

use super::lookup::{query, query_id, Record};
use super::plan::{answers_with, marker_digest, with_marker, RenderOptions, MARKER_NAME};
use super::{render, Resolver};
use crate::sys::atomic_write::write_atomically;
use crate::sys::processes;
use crate::sys::settings::{DnsMode, Settings};

/// How long dnsmasq has to start, and to answer after a start or reload.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the conf-dir reload command may run.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a running dnsmasq has to answer the marker before it counts
/// as not answering (a busy router answers late, not never).
const ADOPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The file the agent owns in the system dnsmasq's conf-dir.
pub const CONF_DIR_FILE: &str = "isdf.conf";

/// A config the resolver should enforce.
#[derive(Clone, PartialEq, Eq)]
struct Desired {
    text: String,
    digest: String,
}

/// The managed dnsmasq daemon.
struct Daemon {
    pid: u32,
    /// The config it answers with; None for one found running whose
    /// config is not confirmed yet.
    config: Option<Desired>,
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
    /// What the last `apply` asked for; nothing before the first one (a
    /// running dnsmasq is left alone until the agent knows its policy).
    desired: Option<Option<Desired>>,
    daemon: Option<Daemon>,
    /// conf-dir mode: the config the system dnsmasq was seen answering with.
    loaded: Option<String>,
    /// A dnsmasq a previous agent left running was looked for.
    looked_for_daemon: bool,
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
            daemon: None,
            loaded: None,
            looked_for_daemon: false,
        }
    }

    /// The managed dnsmasq's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.pid)
    }

    fn conf_path(&self) -> PathBuf {
        self.run_dir.join("dnsmasq.conf")
    }

    fn pid_path(&self) -> PathBuf {
        self.run_dir.join("dnsmasq.pid")
    }

    /// What dnsmasq said while starting (its stderr): kept for the error.
    fn start_log_path(&self) -> PathBuf {
        self.run_dir.join("dnsmasq.start.log")
    }

    fn conf_dir_path(&self) -> PathBuf {
        self.conf_dir.join(CONF_DIR_FILE)
    }

    fn desired_for(&self, policy: &DnsPolicy) -> anyhow::Result<Desired> {
        let pid_path = self.pid_path();
        let pid_file = pid_path
            .to_str()
            .filter(|p| !p.contains('\n'))
            .with_context(|| {
                format!(
                    "dnsmasq's pid file {} must be UTF-8 without line breaks (setting dns_run_dir)",
                    pid_path.display()
                )
            })?;
        let options = RenderOptions {
            mode: self.mode,
            port: self.port,
            lan_interfaces: &self.lan_interfaces,
            upstream: &self.upstream,
            pid_file,
        };
        let (text, digest) = with_marker(render(policy, &options));
        Ok(Desired { text, digest })
    }

    /// Brings the resolver to `self.desired`, restarting only what differs.
    fn converge(&mut self) -> anyhow::Result<()> {
        if self.desired.is_none() {
            return Ok(());
        }
        match self.mode {
            DnsMode::Managed => self.converge_managed(),
            DnsMode::ConfDir => self.converge_conf_dir(),
        }
    }

    fn converge_managed(&mut self) -> anyhow::Result<()> {
        if !self.looked_for_daemon {
            self.looked_for_daemon = true;
            self.daemon = self.running_daemon();
        }
        if let Some(daemon) = &self.daemon {
            if !self.is_ours(daemon.pid) {
                tracing::warn!(pid = daemon.pid, "dnsmasq is gone; starting it again");
                self.daemon = None;
            }
        }
        let Some(desired) = self.desired.clone().flatten() else {
            return self.stop();
        };
        if let Some(daemon) = &mut self.daemon {
            match &daemon.config {
                Some(config) if *config == desired => return Ok(()),
                Some(_) => {}
                None => {
                    if answers_within(self.port, &desired.digest, ADOPT_TIMEOUT) {
                        tracing::info!(
                            pid = daemon.pid,
                            "adopted the running dnsmasq: it answers with this config"
                        );
                        daemon.config = Some(desired);
                        return Ok(());
                    }
                    tracing::info!(
                        pid = daemon.pid,
                        "the running dnsmasq answers with another config; replacing it"
                    );
                }
            }
        }
        self.replace(&desired)
    }

    /// The dnsmasq the pid file names, if it is ours and runs (left by a
    /// previous agent, which stopped or crashed).
    fn running_daemon(&self) -> Option<Daemon> {
        let pid = std::fs::read_to_string(self.pid_path()).ok()?;
        let pid: u32 = pid.trim().parse().ok()?;
        self.is_ours(pid).then_some(Daemon { pid, config: None })
    }

    /// Whether `pid` runs dnsmasq on our config file in our network
    /// namespace: a pid file outlives its process, and the pid may belong
    /// to another process since.
    fn is_ours(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        // Without CAP_SYS_PTRACE another user's namespace link cannot be
        // read: then the command line decides alone.
        let namespace = |path: String| std::fs::read_link(path).ok();
        let same_namespace = match (
            namespace(format!("/proc/{pid}/ns/net")),
            namespace("/proc/thread-self/ns/net".to_owned()),
        ) {
            (Some(theirs), Some(ours)) => theirs == ours,
            _ => true,
        };
        processes::process_runs(&pid.to_string())
            && started_as(&cmdline, &self.program, &self.conf_path())
            && same_namespace
    }

    /// Replaces the running dnsmasq (if any) with one answering `desired`;
    /// if that fails, starts the config that answered before again (for
    /// one found running: the config file as the previous agent left it).
    fn replace(&mut self, desired: &Desired) -> anyhow::Result<()> {
        let left = std::fs::read_to_string(self.conf_path()).ok();
        write_file(&self.conf_path(), desired.text.as_bytes())?;
        // A config this dnsmasq refuses never stops the one that answers.
        self.check_config()?;
        let previous = self.daemon.take();
        if let Some(old) = &previous {
            tracing::info!(pid = old.pid, "stopping dnsmasq for the new config");
            if let Err(e) = end(old.pid) {
                self.daemon = previous;
                return Err(e);
            }
        }
        let failed = match self.start(desired) {
            Ok(daemon) => {
                self.daemon = Some(daemon);
                return Ok(());
            }
            Err(e) => e,
        };
        // The LAN must not stay without a resolver.
        let before = previous.map(|d| {
            d.config.or_else(|| {
                let text = left?;
                let digest = marker_digest(&text)?.to_owned();
                Some(Desired { text, digest })
            })
        });
        if let Some(config) = before.flatten() {
            let restarted = write_file(&self.conf_path(), config.text.as_bytes())
                .and_then(|()| self.start(&config));
            match restarted {
                Ok(daemon) => {
                    tracing::warn!(
                        pid = daemon.pid,
                        "the previous dnsmasq config answers again"
                    );
                    self.daemon = Some(daemon);
                }
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    "the previous dnsmasq config did not start again either"
                ),
            }
        }
        Err(failed)
    }

    /// `dnsmasq --test` on the config file.
    fn check_config(&self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.program);
        command
            .arg("--test")
            .arg(format!("--conf-file={}", self.conf_path().display()));
        let (status, said) = self.run_logged(command)?;
        if !status.success() {
            bail!("dnsmasq refuses the new config ({status}): {said}");
        }
        Ok(())
    }

    /// Starts dnsmasq on the config file (written: `desired`) and waits
    /// until it answers with it. dnsmasq's first process exits once the
    /// daemon listens and has written its pid file, or with why it cannot.
    fn start(&self, desired: &Desired) -> anyhow::Result<Daemon> {
        let mut command = Command::new(&self.program);
        command.arg(format!("--conf-file={}", self.conf_path().display()));
        let (status, said) = self.run_logged(command)?;
        if !status.success() {
            bail!("dnsmasq exited ({status}) without starting: {said}");
        }
        let pid_path = self.pid_path();
        let pid: u32 = std::fs::read_to_string(&pid_path)
            .with_context(|| format!("reading dnsmasq's pid file {}", pid_path.display()))?
            .trim()
            .parse()
            .with_context(|| format!("dnsmasq's pid file {}", pid_path.display()))?;
        if !self.is_ours(pid) {
            bail!("dnsmasq started, but its pid file names process {pid}, which is not it");
        }
        if let Err(e) = wait_until_answers(self.port, &desired.digest, Some(pid)) {
            let _ = end(pid);
            return Err(e);
        }
        tracing::info!(pid, "dnsmasq answers with the new config");
        Ok(Daemon {
            pid,
            config: Some(desired.clone()),
        })
    }

    /// Runs `command` (dnsmasq) bounded in time, its stderr kept in the
    /// start log; returns how it exited and what it said.
    fn run_logged(&self, mut command: Command) -> anyhow::Result<(ExitStatus, String)> {
        let log_path = self.start_log_path();
        // Not state, so not written atomically: dnsmasq's stderr, read back
        // once below (`sys::atomic_write`'s test lists the exception).
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        command.stderr(log);
        let status = run_bounded(command, READY_TIMEOUT)
            .with_context(|| format!("running {}", self.program.display()))?;
        let said = std::fs::read_to_string(&log_path).unwrap_or_default();
        let said = said.trim();
        let said = if said.is_empty() {
            "(it said nothing)"
        } else {
            said
        };
        Ok((status, said.replace('\n', "; ")))
    }

    /// Ends the managed dnsmasq (there is no policy to enforce).
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(daemon) = self.daemon.take() {
            tracing::info!(pid = daemon.pid, "stopping dnsmasq");
            if let Err(e) = end(daemon.pid) {
                self.daemon = Some(daemon);
                return Err(e);
            }
            let _ = std::fs::remove_file(self.pid_path());
        }
        Ok(())
    }

    fn converge_conf_dir(&mut self) -> anyhow::Result<()> {
        let path = self.conf_dir_path();
        let on_disk = std::fs::read_to_string(&path).ok();
        let Some(desired) = self.desired.clone().flatten() else {
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
        let mut run = Command::new(program);
        run.args(args).stderr(Stdio::null());
        let status = run_bounded(run, RELOAD_TIMEOUT)
            .with_context(|| format!("running {}", command.join(" ")))?;
        if !status.success() {
            bail!("{} failed: {status}", command.join(" "));
        }
        Ok(())
    }
}

impl Resolver for Dnsmasq {
    fn apply(&mut self, policy: Option<&DnsPolicy>) -> anyhow::Result<()> {
        self.desired = Some(policy.map(|p| self.desired_for(p)).transpose()?);
        self.converge()
    }

    fn repair(&mut self) -> anyhow::Result<()> {
        self.converge()
    }
}

/// Waits until the dnsmasq on 127.0.0.1:`port` answers with the config of
/// `digest`; fails early if process `pid` (the managed daemon) ends first.
fn wait_until_answers(port: u16, digest: &str, pid: Option<u32>) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(pid) = pid.filter(|pid| !processes::process_runs(&pid.to_string())) {
            bail!("dnsmasq (pid {pid}) ended before answering (its log: syslog)");
        }
        if query_marker(port, digest).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("dnsmasq did not answer on 127.0.0.1:{port} within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the dnsmasq on 127.0.0.1:`port` answers with the config of
/// `digest` within `timeout`.
fn answers_within(port: u16, digest: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if query_marker(port, digest).unwrap_or(false) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ends process `pid` (SIGTERM) and waits until it has.
fn end(pid: u32) -> anyhow::Result<()> {
    let pid = pid.to_string();
    processes::terminate_and_wait(&pid);
    if processes::process_runs(&pid) {
        bail!("dnsmasq (pid {pid}) did not end when asked to");
    }
    Ok(())
}

/// Runs `command` with no input or output (but what it sets itself) and
/// waits for it at most `timeout` (then kills it).
fn run_bounded(mut command: Command, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting it")?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().context("waiting for it")? {
            Some(status) => return Ok(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("it took over {timeout:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Whether a process's `/proc/PID/cmdline` (NUL-separated arguments) is
/// `program` (by file name) started on config file `conf`.
fn started_as(cmdline: &[u8], program: &Path, conf: &Path) -> bool {
    let mut args = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty());
    let file_name = |path: &[u8]| path.rsplit(|&b| b == b'/').next().map(<[u8]>::to_vec);
    let program = program.as_os_str().as_encoded_bytes();
    let conf_arg = [b"--conf-file=", conf.as_os_str().as_encoded_bytes()].concat();
    args.next()
        .is_some_and(|first| file_name(first) == file_name(program))
        && args.any(|a| a == conf_arg.as_slice())
}

/// Asks 127.0.0.1:`port` once for the marker's TXT record; true when the
/// answer holds `digest`.
fn query_marker(port: u16, digest: &str) -> std::io::Result<bool> {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let id = query_id();
    let question = query(id, MARKER_NAME, Record::Txt).expect("the marker is a valid name");
    socket.send(&question)?;
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
    fn only_dnsmasq_on_our_config_file_is_ours() {
        let (program, conf) = (Path::new("dnsmasq"), Path::new("/s/dnsmasq/dnsmasq.conf"));
        let ours = b"/usr/sbin/dnsmasq\0--conf-file=/s/dnsmasq/dnsmasq.conf\0";
        assert!(started_as(ours, program, conf));
        assert!(started_as(ours, Path::new("/usr/sbin/dnsmasq"), conf));
        for other in [
            &b"/usr/sbin/dnsmasq\0--conf-file=/etc/dnsmasq.conf\0"[..],
            b"/usr/sbin/dnsmasq\0--conf-file=/s/dnsmasq/dnsmasq.conf.old\0",
            b"vi\0--conf-file=/s/dnsmasq/dnsmasq.conf\0",
            b"sh\0-c\0dnsmasq --conf-file=/s/dnsmasq/dnsmasq.conf\0",
            b"",
        ] {
            assert!(
                !started_as(other, program, conf),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
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
