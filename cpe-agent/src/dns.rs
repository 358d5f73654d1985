//! The router's resolver: the config's DNS policy as a dnsmasq config
//! (`render`, pure and snapshot-tested), and the `Resolver` that makes a
//! dnsmasq enforce it: one the agent runs itself (`managed`), or the
//! system's, through a file in its conf-dir (`conf-dir`, OpenWrt).
//!
//! dnsmasq does the work: answers for gated domains add their addresses to
//! the firewall's sets (`nftset=`), TTLs handed to clients are capped, and
//! some names are answered by the router itself. Every apply waits until
//! dnsmasq answers a TXT record naming a digest of the config just written,
//! so "applied" means "this config answers", not "a dnsmasq answers".

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use isdf_api::DnsPolicy;

use crate::sys::processes;
use crate::sys::settings::{DnsMode, Settings};

/// How long dnsmasq has to answer after a start or reload.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the conf-dir reload command may run.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of dnsmasq's stderr kept for error messages.
const STDERR_TAIL: usize = 12;
/// The name whose TXT record is the digest of the config in force. Under
/// `.invalid`, which no real domain uses (RFC 6761).
const MARKER_NAME: &str = "config.isdf.invalid";
/// The file the agent owns in the system dnsmasq's conf-dir.
pub const CONF_DIR_FILE: &str = "isdf.conf";

/// The router's resolver, as the agent loop sees it.
pub trait Resolver: Send {
    /// Makes the resolver enforce `policy` (None: the agent runs none, and
    /// its file leaves the conf-dir) and waits until it answers with it.
    /// Remembers `policy` even when this fails, for `repair`.
    fn apply(&mut self, policy: Option<&DnsPolicy>) -> anyhow::Result<()>;

    /// Puts back what the last `apply` asked for if it is gone: a managed
    /// dnsmasq that died, a conf-dir file someone removed.
    fn repair(&mut self) -> anyhow::Result<()>;
}

/// What `render` needs besides the policy.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions<'a> {
    pub mode: DnsMode,
    pub port: u16,
    /// Interfaces a managed dnsmasq answers on, besides lo.
    pub lan_interfaces: &'a [String],
    pub upstream: &'a [SocketAddr],
}

/// The dnsmasq config enforcing `policy`. Everything written comes from
/// parsed values (domain patterns, set names, addresses, interface names
/// checked when the settings were read), so no text can add an option.
pub fn render(policy: &DnsPolicy, options: &RenderOptions) -> String {
    let mut s = String::from("# Written by isdf-agent from its signed config; changes are lost.\n");
    if options.mode == DnsMode::Managed {
        // DNS only: without a dhcp-range this dnsmasq serves no DHCP.
        let _ = writeln!(s, "port={}", options.port);
        s.push_str("interface=lo\n");
        for name in options.lan_interfaces {
            let _ = writeln!(s, "interface={name}");
        }
        // Binds each address of those interfaces, as they come and go,
        // and leaves the others' port 53 alone.
        s.push_str("bind-dynamic\n");
        if !options.upstream.is_empty() {
            s.push_str("no-resolv\n");
            for server in options.upstream {
                let _ = writeln!(s, "server={}#{}", server.ip(), server.port());
            }
        }
        // The agent supervises it and logs what it says.
        s.push_str("keep-in-foreground\nlog-facility=-\npid-file=\n");
    }
    if let Some(ttl) = policy.max_ttl_secs {
        // max-ttl caps what clients are told, forwarded answers included;
        // max-cache-ttl makes dnsmasq ask upstream again within the cap, and
        // only answers from upstream add addresses to the sets.
        let _ = writeln!(s, "max-ttl={ttl}\nmax-cache-ttl={ttl}");
    }
    for fill in &policy.fill_sets {
        s.push_str("nftset=/");
        for domain in &fill.domains {
            let _ = write!(s, "{}/", domain.domain());
        }
        let _ = writeln!(
            s,
            "4#inet#isdf#{},6#inet#isdf#{}",
            fill.ipv4_set, fill.ipv6_set
        );
    }
    for answer in &policy.local_answers {
        let domain = answer.domain.domain();
        if answer.addresses.is_empty() {
            let _ = writeln!(s, "address=/{domain}/");
            continue;
        }
        // Local only: other types (AAAA for a name with only IPv4
        // addresses) get an empty answer instead of going upstream.
        let _ = writeln!(s, "local=/{domain}/");
        for addr in &answer.addresses {
            let _ = writeln!(s, "address=/{domain}/{addr}");
        }
    }
    s
}

/// The config file's text: `rendered` plus the TXT record the agent asks for
/// to know this very config answers.
fn with_marker(rendered: String) -> (String, String) {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same text gives the same digest within one agent run,
    // which is all the check needs.
    let mut hasher = std::hash::DefaultHasher::new();
    rendered.hash(&mut hasher);
    let digest = format!("{:016x}", hasher.finish());
    let text = format!("{rendered}txt-record={MARKER_NAME},{digest}\n");
    (text, digest)
}

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
        write_atomically(&self.conf_path(), desired.text.as_bytes())?;
        let mut running = self.spawn(&desired.text)?;
        // Written after the start, so a crashed agent's successor can end
        // this dnsmasq, which would otherwise hold the port.
        if let Err(e) =
            write_atomically(&self.pid_path(), running.child.id().to_string().as_bytes())
        {
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
        write_atomically(&path, desired.text.as_bytes())?;
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

/// A recursive DNS query for `name`'s TXT record.
fn txt_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    // Recursion desired; one question.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    // Root label, type TXT (16), class IN (1).
    q.extend_from_slice(&[0, 0, 16, 0, 1]);
    q
}

/// Whether `answer` answers query `id` without error and holds `digest`.
fn answers_with(answer: &[u8], id: u16, digest: &str) -> bool {
    answer.len() > 12
        && answer[..2] == id.to_be_bytes()
        && answer[2] & 0x80 != 0
        && answer[3] & 0x0f == 0
        && answer.windows(digest.len()).any(|w| w == digest.as_bytes())
}

/// Writes `path` by a rename, so dnsmasq never reads half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a file without directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("a path without file name")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DnsPolicy {
        serde_json::from_value(serde_json::json!({
            "max_ttl_secs": 30,
            "fill_sets": [
                {"domains": ["video.test", "*.cdn-video.test"], "ipv4_set": "site_v4", "ipv6_set": "site_v6"},
                {"domains": ["music.test"], "ipv4_set": "music_v4", "ipv6_set": "music_v6"}
            ],
            "local_answers": [
                {"domain": "use-application-dns.net"},
                {"domain": "dns.google", "addresses": []},
                {"domain": "portal.isp.test", "addresses": ["192.0.2.1", "2001:db8:1::1"]}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn a_managed_dnsmasq_config() {
        let lan = ["br-lan".to_owned(), "wlan0".to_owned()];
        let upstream = [
            "198.51.100.2:53".parse().unwrap(),
            "[2001:db8:2::2]:5353".parse().unwrap(),
        ];
        let options = RenderOptions {
            mode: DnsMode::Managed,
            port: 53,
            lan_interfaces: &lan,
            upstream: &upstream,
        };
        insta::assert_snapshot!(render(&policy(), &options));
    }

    #[test]
    fn a_conf_dir_file_holds_only_the_policy() {
        let options = RenderOptions {
            mode: DnsMode::ConfDir,
            port: 53,
            lan_interfaces: &[],
            upstream: &[],
        };
        insta::assert_snapshot!(render(&policy(), &options));
    }

    #[test]
    fn without_upstream_servers_dnsmasq_reads_resolv_conf() {
        let options = RenderOptions {
            mode: DnsMode::Managed,
            port: 5353,
            lan_interfaces: &[],
            upstream: &[],
        };
        let text = render(&DnsPolicy::default(), &options);
        assert!(text.contains("port=5353\n"));
        assert!(!text.contains("no-resolv"), "{text}");
        assert!(!text.contains("max-ttl"), "no cap asked: {text}");
    }

    #[test]
    fn the_marker_changes_with_the_config() {
        let (text, digest) = with_marker("port=53\n".into());
        assert_eq!(
            text,
            format!("port=53\ntxt-record=config.isdf.invalid,{digest}\n")
        );
        assert_ne!(with_marker("port=54\n".into()).1, digest);
    }

    #[test]
    fn queries_and_answers_are_matched() {
        let q = txt_query(0xbeef, "config.isdf.invalid");
        assert_eq!(&q[..4], &[0xbe, 0xef, 0x01, 0x00]);
        assert_eq!(&q[12..19], b"\x06config");
        assert_eq!(&q[q.len() - 5..], &[0, 0, 16, 0, 1]);
        // The question echoed, then an answer whose TXT holds the digest.
        let mut answer = q.clone();
        answer[2] = 0x81;
        answer[3] = 0x80;
        answer.extend_from_slice(b"\xc0\x0c\0\x10\0\x01\0\0\0\0\0\x09\x08abcd1234");
        assert!(answers_with(&answer, 0xbeef, "abcd1234"));
        assert!(!answers_with(&answer, 0xbeee, "abcd1234"), "another id");
        assert!(!answers_with(&answer, 0xbeef, "abcd1235"), "another config");
        answer[3] = 0x83;
        assert!(!answers_with(&answer, 0xbeef, "abcd1234"), "NXDOMAIN");
        assert!(!answers_with(&q, 0xbeef, "x"), "the query itself");
    }

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
