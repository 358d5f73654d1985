//! Agent configuration: a TOML file (written by the OpenWrt init script from
//! UCI, or by hand) plus command-line overrides.
//!
//! **This module imports nothing of the crate**: the types others take from
//! the settings (`BackendChoice`, `RouterBlockLimits`, `TunnelSettings`) are
//! defined here, so every layer of the agent can read its settings without
//! an import cycle.
//!
//! What the controller tells the router at enrollment (its device id, the CA,
//! the signing keys, the device API URL) lives in the state directory, not
//! here; the keys below only override it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context};
use isdf_api::enrollment::DeviceCertificate;
use isdf_api::root::RootDocument;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Device API base URL, e.g. `https://controller.example.net:8443`.
    /// Default: the `device_api_url` of the enrollment answer.
    #[serde(default)]
    pub controller_url: Option<String>,
    /// Enrollment listener base URL, e.g.
    /// `https://controller.example.net:8444`. Needed only to enroll.
    #[serde(default)]
    pub enrollment_url: Option<String>,
    /// The controller CA (PEM) shipped with the enrollment token: the only
    /// root trusted for enrollment. Afterwards the CA of the enrollment
    /// answer, kept in the state directory, is used.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Ed25519 public keys (hex or base64) whose config signatures are
    /// accepted. Empty: the keys of the enrollment answer.
    #[serde(default)]
    pub signing_public_keys: Vec<String>,
    /// A file holding an enrollment token. When the agent has no identity
    /// (first start, or a certificate that expired) it enrolls with it by
    /// itself: zero-touch provisioning.
    #[serde(default)]
    pub enrollment_token_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    #[serde(default = "default_backend")]
    pub backend: BackendChoice,
    /// How long one long poll waits for a change.
    #[serde(default = "default_poll_wait")]
    pub poll_wait_secs: u64,
    /// Upper bound of the retry backoff after errors.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// After applying, check the controller is still reachable, else roll back.
    #[serde(default = "default_true")]
    pub wan_check: bool,
    /// Seconds between status heartbeats when nothing changes.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// How long a newly installed agent has to reach the controller and
    /// report its version before `isdf-agent-launch` brings the previous
    /// one back (agent upgrades).
    #[serde(default = "default_upgrade_confirm")]
    pub upgrade_confirm_secs: u64,
    /// Where to write the agent's metrics for node-exporter's textfile
    /// collector (e.g. `/var/prometheus/isdf_agent.prom`, which OpenWrt's
    /// prometheus-node-exporter-lua reads), replaced at every status
    /// report. None (the default): not written.
    #[serde(default)]
    pub metrics_textfile: Option<PathBuf>,
    /// The Unix socket detectors on the router use to block flows
    /// (`isdf-agent block ...`); only root may use it. Default:
    /// `control.sock` in `state_dir` (see `Settings::control_socket_path`),
    /// so two agents with their own state directories never share one.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Most router-side blocks (local and detections) in force at once.
    #[serde(default = "default_local_block_max")]
    pub local_block_max: usize,
    /// Sustained local block requests per second (bursts of ten times that).
    #[serde(default = "default_local_block_rate")]
    pub local_block_rate: u32,
    /// The router's interfaces facing the customer's LAN (rules matching
    /// `in_interface: lan`; where the managed resolver listens; which side
    /// of a flow the classifier takes for the customer's).
    #[serde(default = "default_lan_interfaces")]
    pub lan_interfaces: Vec<String>,
    /// The router's interfaces facing the ISP (`in_interface: wan`).
    #[serde(default = "default_wan_interfaces")]
    pub wan_interfaces: Vec<String>,
    // The router's resolver, which enforces the config's DNS policy. Flat
    // `dns_*` keys rather than a `[dns]` table: a nested table costs the
    // small binary a deserializer of its own (about 12 kB).
    /// `managed` or `conf-dir` (`Settings::resolver_mode`; a string, not an
    /// enum, for the same reason).
    #[serde(default = "default_dns_mode")]
    pub dns_mode: String,
    /// The dnsmasq program (managed mode).
    #[serde(default = "default_dns_dnsmasq")]
    pub dns_dnsmasq: PathBuf,
    /// Where the resolver answers (both modes: the agent checks it there).
    #[serde(default = "default_dns_port")]
    pub dns_port: u16,
    /// Servers the managed dnsmasq asks (`192.0.2.53`, `192.0.2.53:5353`,
    /// `[2001:db8::53]:53`); empty: those of /etc/resolv.conf. Checked by
    /// `Settings::parse`; see `Settings::upstream_servers`.
    #[serde(default)]
    pub dns_upstream: Vec<String>,
    /// Where the managed dnsmasq's config lives; default: `dnsmasq/` in the
    /// state directory (see `Settings::dnsmasq_run_dir`).
    #[serde(default)]
    pub dns_run_dir: Option<PathBuf>,
    /// The system dnsmasq's conf-dir (`conf-dir` mode).
    #[serde(default = "default_dns_conf_dir")]
    pub dns_conf_dir: PathBuf,
    /// Makes the system dnsmasq read its conf-dir again (`conf-dir` mode).
    #[serde(default = "default_dns_reload_command")]
    pub dns_reload_command: Vec<String>,
    // Site-to-site tunnels (configs with `wireguard`); flat keys like the
    // `dns_*` ones, for the same reason.
    /// The port the facts report for the router's first tunnel (the
    /// controller picks each tunnel's port, usually this one).
    #[serde(default = "default_wireguard_listen_port")]
    pub wireguard_listen_port: u16,
    /// The UDP port the controller's reachability probe is received on.
    #[serde(default = "default_wireguard_probe_port")]
    pub wireguard_probe_port: u16,
    /// Seconds between facts reports (each with a fresh probe).
    #[serde(default = "default_wireguard_facts_secs")]
    pub wireguard_facts_secs: u64,
    /// The userspace WireGuard, for kernels without the module.
    #[serde(default = "default_wireguard_go")]
    pub wireguard_go: PathBuf,
    /// The routing table of the first tunnel; tunnel n uses this plus n.
    #[serde(default = "default_wireguard_table_base")]
    pub wireguard_table_base: u32,
}

/// Who runs the dnsmasq that enforces the DNS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    /// The agent runs a dnsmasq of its own, on the LAN interfaces and lo.
    Managed,
    /// The system's dnsmasq (OpenWrt) reads a file the agent writes into
    /// its conf-dir.
    ConfDir,
}

/// Which firewall backend to use (`backend`, or `--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// nftables when `nft` works, else iptables.
    Auto,
    Nftables,
    Iptables,
}

/// Bounds on router-side blocks (`Settings::router_block_limits`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterBlockLimits {
    /// Most blocks in force at once.
    pub max_active: usize,
    /// Sustained local requests per second (detections are bounded by
    /// `max_active` only: the classifier has its own per-flow bounds).
    pub per_sec: f64,
    /// Requests allowed at once above the sustained rate.
    pub burst: f64,
}

/// What the tunnels need of the settings (`Settings::tunnel_settings`).
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    pub state_dir: PathBuf,
    /// The `wireguard-go` program, for kernels without WireGuard.
    pub wireguard_go: PathBuf,
    /// The routing table of the first tunnel; the others follow.
    pub table_base: u32,
}

/// Whether `name` can be a Linux interface name (it is written into
/// dnsmasq's config and nft scripts as is).
fn check_interface_name(name: &str) -> anyhow::Result<()> {
    let chars_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name.is_empty() || name.len() > 15 || !chars_ok {
        bail!("`{name}` is not an interface name (1 to 15 of a-z A-Z 0-9 . _ -)");
    }
    Ok(())
}

/// OpenWrt's names.
fn default_lan_interfaces() -> Vec<String> {
    vec!["br-lan".to_owned()]
}
fn default_wan_interfaces() -> Vec<String> {
    vec!["wan".to_owned(), "pppoe-wan".to_owned()]
}

/// The control socket's file in the state directory when `control_socket`
/// is not set.
pub const CONTROL_SOCKET_FILE: &str = "control.sock";
fn default_local_block_max() -> usize {
    4096
}
fn default_local_block_rate() -> u32 {
    20
}

fn default_dns_mode() -> String {
    "managed".to_owned()
}
fn default_dns_dnsmasq() -> PathBuf {
    PathBuf::from("dnsmasq")
}
fn default_dns_port() -> u16 {
    53
}
fn default_dns_conf_dir() -> PathBuf {
    PathBuf::from("/tmp/dnsmasq.d")
}
fn default_dns_reload_command() -> Vec<String> {
    vec!["/etc/init.d/dnsmasq".to_owned(), "restart".to_owned()]
}

fn default_wireguard_listen_port() -> u16 {
    51820
}
fn default_wireguard_probe_port() -> u16 {
    51821
}
fn default_wireguard_facts_secs() -> u64 {
    300
}
fn default_wireguard_go() -> PathBuf {
    PathBuf::from("wireguard-go")
}
fn default_wireguard_table_base() -> u32 {
    51820
}

fn default_backend() -> BackendChoice {
    BackendChoice::Auto
}
fn default_poll_wait() -> u64 {
    30
}
fn default_max_backoff() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_heartbeat() -> u64 {
    300
}
fn default_upgrade_confirm() -> u64 {
    300
}

/// Refuses a URL the agent would talk to in clear: the enrollment token and
/// the configs must never cross the network unencrypted. Also refuses a
/// host name that is not ASCII: the agent is built without the Unicode
/// tables of internationalised domain names (120 kB, see `idna_adapter` in
/// its `Cargo.toml`), so such a name must be written in its punycode form.
pub(crate) fn require_https(key: &str, url: &str) -> anyhow::Result<()> {
    let Some(rest) = url.strip_prefix("https://") else {
        bail!("{key} must be an https:// URL (got {url:?})");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if !host.is_ascii() {
        bail!(
            "{key}: the host name in {url:?} is not ASCII; write it in its punycode \
             form (xn--...): this agent has no tables for internationalised names"
        );
    }
    Ok(())
}

impl Settings {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let settings: Settings = toml::from_str(text).context("parsing")?;
        if let Some(url) = &settings.controller_url {
            require_https("controller_url", url)?;
        }
        if let Some(url) = &settings.enrollment_url {
            require_https("enrollment_url", url)?;
        }
        for name in settings
            .lan_interfaces
            .iter()
            .chain(&settings.wan_interfaces)
        {
            check_interface_name(name)?;
        }
        settings.upstream_servers()?;
        if settings.wireguard_table_base == 0 || settings.wireguard_table_base > 0xffff_0000 {
            bail!("wireguard_table_base is a routing table number from 1 to 4294901760");
        }
        if !(10..=86_400).contains(&settings.upgrade_confirm_secs) {
            bail!(
                "upgrade_confirm_secs is 10 to 86400: a new agent needs time to start and report"
            );
        }
        if settings.wireguard_facts_secs < 10 {
            bail!("wireguard_facts_secs is at least 10");
        }
        if settings.resolver_mode()? == DnsMode::ConfDir && settings.dns_reload_command.is_empty() {
            bail!("dns_reload_command is empty: the system dnsmasq would never read isdf.conf");
        }
        // Fail now rather than at the first config: a key that does not
        // parse would otherwise surface as every config being refused.
        if !settings.signing_public_keys.is_empty() {
            parse_keys(&settings.signing_public_keys).context("signing_public_keys")?;
        }
        Ok(settings)
    }

    /// The keys config signatures are accepted from: `signing_public_keys`
    /// when set, else those the controller named at enrollment (in
    /// `certificate`, the enrollment or renewal answer).
    pub fn trusted_keys(
        &self,
        certificate: &DeviceCertificate,
    ) -> anyhow::Result<isdf_api::TrustedKeys> {
        if self.signing_public_keys.is_empty() {
            parse_keys(&certificate.signing_public_keys)
                .context("the signing keys of the enrollment answer")
        } else {
            parse_keys(&self.signing_public_keys).context("signing_public_keys")
        }
    }

    /// The keys configs may be signed with, and the root they come from:
    /// pinned in the settings (no root), or those of the newest root
    /// reachable from the answer's root 1 through `fetched` (the roots
    /// fetched since, oldest first; each step verified), or, from a
    /// controller without roots, the keys the answer names.
    pub fn config_trust(
        &self,
        certificate: &DeviceCertificate,
        fetched: &[String],
    ) -> anyhow::Result<(isdf_api::TrustedKeys, Option<RootDocument>)> {
        let roots = &certificate.roots;
        if !self.signing_public_keys.is_empty() || roots.is_empty() {
            return Ok((self.trusted_keys(certificate)?, None));
        }
        let first = RootDocument::open_first(roots[0].as_bytes())
            .map_err(|e| anyhow::anyhow!("root 1: {e}"))?;
        let latest = first
            .walk(roots.iter().chain(fetched).map(|e| e.as_bytes()))
            .map_err(|e| anyhow::anyhow!("the root chain: {e}"))?;
        let keys = latest.config_keys().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((keys, Some(latest)))
    }

    /// The device API base URL: `controller_url` when set, else the one the
    /// controller named at enrollment (in `certificate`).
    pub fn device_api_url<'a>(&'a self, certificate: &'a DeviceCertificate) -> &'a str {
        self.controller_url
            .as_deref()
            .unwrap_or(&certificate.device_api_url)
    }

    /// The control socket: `control_socket` when set, else `control.sock`
    /// in the state directory (which `--state-dir` may have replaced after
    /// parsing, hence computed here and not as a serde default).
    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join(CONTROL_SOCKET_FILE))
    }

    /// Bounds on router-side blocks.
    pub fn router_block_limits(&self) -> RouterBlockLimits {
        let per_sec = f64::from(self.local_block_rate.max(1));
        RouterBlockLimits {
            max_active: self.local_block_max,
            per_sec,
            burst: per_sec * 10.0,
        }
    }

    /// Who runs the dnsmasq that enforces the DNS policy (`dns_mode`).
    pub fn resolver_mode(&self) -> anyhow::Result<DnsMode> {
        match self.dns_mode.as_str() {
            "managed" => Ok(DnsMode::Managed),
            "conf-dir" => Ok(DnsMode::ConfDir),
            other => bail!("dns_mode is `managed` or `conf-dir`, not `{other}`"),
        }
    }

    /// The upstream servers (`dns_upstream`), port 53 unless given.
    pub fn upstream_servers(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let mut servers = Vec::with_capacity(self.dns_upstream.len());
        for text in &self.dns_upstream {
            match text.parse::<SocketAddr>() {
                Ok(addr) => servers.push(addr),
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => servers.push(SocketAddr::new(ip, 53)),
                    Err(_) => bail!("dns_upstream: `{text}` is not an address"),
                },
            }
        }
        Ok(servers)
    }

    /// The managed dnsmasq's directory (`dns_run_dir`).
    pub fn dnsmasq_run_dir(&self) -> PathBuf {
        self.dns_run_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("dnsmasq"))
    }

    /// What the tunnels need of the settings.
    pub fn tunnel_settings(&self) -> TunnelSettings {
        TunnelSettings {
            state_dir: self.state_dir.clone(),
            wireguard_go: self.wireguard_go.clone(),
            table_base: self.wireguard_table_base,
        }
    }
}

/// Parses Ed25519 public keys (hex or base64); refuses an empty list, with
/// which the agent would trust nothing.
pub fn parse_keys(keys: &[String]) -> anyhow::Result<isdf_api::TrustedKeys> {
    if keys.is_empty() {
        bail!("no signing public key: the agent would trust nothing");
    }
    let keys = keys
        .iter()
        .map(|k| isdf_api::TrustedKeys::parse_public_key(k).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(isdf_api::TrustedKeys::new(keys))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The public key of the Ed25519 secret key [7; 32], hex.
    const KEY: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";

    #[test]
    fn a_minimal_config_takes_everything_else_from_enrollment() {
        let s = Settings::parse("state_dir = \"/etc/isdf/state\"\n").unwrap();
        assert_eq!(s.controller_url, None);
        assert_eq!(s.enrollment_url, None);
        assert_eq!(s.ca_cert, None);
        assert!(s.signing_public_keys.is_empty());
        assert_eq!(s.enrollment_token_file, None);
        assert_eq!(s.backend, BackendChoice::Auto);
        assert_eq!(
            (
                s.poll_wait_secs,
                s.max_backoff_secs,
                s.wan_check,
                s.heartbeat_secs
            ),
            (30, 60, true, 300)
        );
    }

    #[test]
    fn every_key_parses() {
        let s = Settings::parse(&format!(
            r#"
            controller_url = "https://c.example:8443"
            enrollment_url = "https://c.example:8444"
            ca_cert = "/etc/isdf/ca.pem"
            signing_public_keys = ["{KEY}"]
            enrollment_token_file = "/etc/isdf/enrollment-token"
            state_dir = "/etc/isdf/state"
            backend = "iptables"
            poll_wait_secs = 20
            max_backoff_secs = 5
            wan_check = false
            heartbeat_secs = 60
            control_socket = "/var/run/isdf.sock"
            local_block_max = 100
            local_block_rate = 5
            "#
        ))
        .unwrap();
        assert_eq!(s.controller_url.as_deref(), Some("https://c.example:8443"));
        assert_eq!(s.enrollment_url.as_deref(), Some("https://c.example:8444"));
        assert_eq!(s.ca_cert.as_deref(), Some(Path::new("/etc/isdf/ca.pem")));
        assert_eq!(s.signing_public_keys, [KEY]);
        assert_eq!(
            s.enrollment_token_file.as_deref(),
            Some(Path::new("/etc/isdf/enrollment-token"))
        );
        assert_eq!(s.backend, BackendChoice::Iptables);
        assert_eq!(
            (
                s.poll_wait_secs,
                s.max_backoff_secs,
                s.wan_check,
                s.heartbeat_secs
            ),
            (20, 5, false, 60)
        );
        assert_eq!(s.control_socket_path(), Path::new("/var/run/isdf.sock"));
        assert_eq!(s.router_block_limits().max_active, 100);
        assert_eq!(s.router_block_limits().burst, 50.0);
    }

    #[test]
    fn the_control_socket_defaults_to_one_per_state_directory() {
        let a = Settings::parse("state_dir = \"/var/lib/isdf-a\"\n").unwrap();
        let mut b = Settings::parse("state_dir = \"/var/lib/isdf-b\"\n").unwrap();
        assert_eq!(
            a.control_socket_path(),
            Path::new("/var/lib/isdf-a/control.sock")
        );
        assert_ne!(a.control_socket_path(), b.control_socket_path());
        // `--state-dir` replaces the directory after parsing: the socket
        // follows it.
        b.state_dir = PathBuf::from("/srv/agent-b");
        assert_eq!(
            b.control_socket_path(),
            Path::new("/srv/agent-b/control.sock")
        );
        // An explicit setting stays where it says, whatever the directory.
        let mut pinned =
            Settings::parse("state_dir = \"/s\"\ncontrol_socket = \"/run/isdf-agent.sock\"\n")
                .unwrap();
        pinned.state_dir = PathBuf::from("/elsewhere");
        assert_eq!(
            pinned.control_socket_path(),
            Path::new("/run/isdf-agent.sock")
        );
    }

    /// The `dns_*` keys of `s`, to compare.
    #[allow(clippy::type_complexity)]
    fn dns_keys(s: &Settings) -> (&str, &Path, u16, &[String], Option<&Path>, &Path, &[String]) {
        (
            &s.dns_mode,
            &s.dns_dnsmasq,
            s.dns_port,
            &s.dns_upstream,
            s.dns_run_dir.as_deref(),
            &s.dns_conf_dir,
            &s.dns_reload_command,
        )
    }

    #[test]
    fn the_dns_keys_default_to_a_managed_dnsmasq() {
        let s = Settings::parse("state_dir = \"/s\"\n").unwrap();
        assert_eq!(
            dns_keys(&s),
            (
                "managed",
                Path::new("dnsmasq"),
                53,
                &[][..],
                None,
                Path::new("/tmp/dnsmasq.d"),
                &["/etc/init.d/dnsmasq".to_owned(), "restart".to_owned()][..],
            )
        );
        assert_eq!(s.resolver_mode().unwrap(), DnsMode::Managed);
        assert!(s.upstream_servers().unwrap().is_empty());
        assert_eq!(s.dnsmasq_run_dir(), Path::new("/s/dnsmasq"));

        let s = Settings::parse(
            r#"
            state_dir = "/s"
            lan_interfaces = ["br-lan", "wlan0.1"]
            dns_mode = "conf-dir"
            dns_dnsmasq = "/usr/sbin/dnsmasq"
            dns_port = 5353
            dns_upstream = ["192.0.2.53", "192.0.2.54:5353", "2001:db8::53", "[2001:db8::54]:5353"]
            dns_run_dir = "/run/isdf-dns"
            dns_conf_dir = "/tmp/dnsmasq.cfg01411c.d"
            dns_reload_command = ["/etc/init.d/dnsmasq", "reload"]
            "#,
        )
        .unwrap();
        assert_eq!(s.resolver_mode().unwrap(), DnsMode::ConfDir);
        assert_eq!(s.dns_dnsmasq, Path::new("/usr/sbin/dnsmasq"));
        assert_eq!(s.dns_port, 5353);
        let upstream: Vec<String> = s
            .upstream_servers()
            .unwrap()
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            upstream,
            [
                "192.0.2.53:53",
                "192.0.2.54:5353",
                "[2001:db8::53]:53",
                "[2001:db8::54]:5353"
            ]
        );
        assert_eq!(s.dnsmasq_run_dir(), Path::new("/run/isdf-dns"));
        assert_eq!(s.dns_conf_dir, Path::new("/tmp/dnsmasq.cfg01411c.d"));
        assert_eq!(s.dns_reload_command, ["/etc/init.d/dnsmasq", "reload"]);
    }

    #[test]
    fn the_wireguard_keys_default_and_parse() {
        let s = Settings::parse("state_dir = \"/s\"\n").unwrap();
        assert_eq!(
            (
                s.wireguard_listen_port,
                s.wireguard_probe_port,
                s.wireguard_facts_secs,
                s.wireguard_go.as_path(),
                s.wireguard_table_base
            ),
            (51820, 51821, 300, Path::new("wireguard-go"), 51820)
        );
        let s = Settings::parse(
            "state_dir = \"/s\"\nwireguard_listen_port = 4500\nwireguard_probe_port = 4501\n\
             wireguard_facts_secs = 60\nwireguard_go = \"/usr/bin/wireguard-go\"\n\
             wireguard_table_base = 1000\n",
        )
        .unwrap();
        let t = s.tunnel_settings();
        assert_eq!(
            (
                s.wireguard_listen_port,
                s.wireguard_probe_port,
                s.wireguard_facts_secs
            ),
            (4500, 4501, 60)
        );
        assert_eq!(
            (t.wireguard_go.as_path(), t.table_base),
            (Path::new("/usr/bin/wireguard-go"), 1000)
        );
        for bad in ["wireguard_table_base = 0", "wireguard_facts_secs = 1"] {
            assert!(
                Settings::parse(&format!("state_dir = \"/s\"\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_example_config_parses() {
        let s = Settings::parse(include_str!("../../../deploy/agent.toml.example")).unwrap();
        let defaults = Settings::parse(&format!("state_dir = {:?}\n", s.state_dir)).unwrap();
        assert_eq!(dns_keys(&s), dns_keys(&defaults));
    }

    #[test]
    fn the_dns_table_of_before_is_refused() {
        // The keys were in a `[dns]` table once: an old file must not
        // silently lose them.
        let err = Settings::parse("state_dir = \"/s\"\n[dns]\nmode = \"conf-dir\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn text_that_would_reach_dnsmasq_unchecked_is_refused() {
        for (text, needle) in [
            ("dns_upstream = [\"192.0.2.1\\nport=1\"]", "not an address"),
            ("dns_mode = \"system\"", "not `system`"),
            (
                "dns_mode = \"conf-dir\"\ndns_reload_command = []",
                "reload_command",
            ),
            (
                "lan_interfaces = [\"br-lan\\ninterface=eth0\"]",
                "not an interface name",
            ),
            (
                "wan_interfaces = [\"a-very-long-interface\"]",
                "not an interface name",
            ),
            ("lan_interfaces = [\"\"]", "not an interface name"),
        ] {
            let err = Settings::parse(&format!("state_dir = \"/s\"\n{text}\n")).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{text}: {err:#}");
        }
    }

    #[test]
    fn removed_and_unknown_keys_are_refused() {
        for key in [
            "device_id = \"7f0b3c1e-2f43-4a51-9a0e-6c1d2b3a4f50\"",
            "device_token_file = \"/etc/isdf/device-token\"",
            "signing_public_key = \"x\"",
        ] {
            let err = Settings::parse(&format!("state_dir = \"/s\"\n{key}\n")).unwrap_err();
            assert!(
                format!("{err:#}").contains("unknown field"),
                "{key}: {err:#}"
            );
        }
    }

    #[test]
    fn punycode_hosts_are_accepted_and_only_the_host_must_be_ascii() {
        for url in [
            "https://xn--bcher-kva.example:8443",
            "https://c.example:8443/bücher?q=é#à",
        ] {
            require_https("controller_url", url).unwrap();
        }
        let err = require_https("controller_url", "https://bücher.example").unwrap_err();
        assert!(err.to_string().contains("not ASCII"), "{err}");
    }

    #[test]
    fn clear_text_urls_and_bad_keys_are_refused() {
        for (text, needle) in [
            ("controller_url = \"http://c:8443\"", "controller_url"),
            ("enrollment_url = \"http://c:8444\"", "enrollment_url"),
            (
                "controller_url = \"https://bücher.example:8443/\"",
                "punycode",
            ),
            ("signing_public_keys = [\"nope\"]", "signing_public_keys"),
        ] {
            let err = Settings::parse(&format!("state_dir = \"/s\"\n{text}\n")).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{text}: {err:#}");
        }
    }
}
