//! Site-to-site tunnels: the router's WireGuard key pairs, its interfaces
//! (kernel WireGuard, else a supervised `wireguard-go`), their addresses,
//! routes and policy rules, the rotation watcher, status and the facts the
//! router reports. **The only module that runs `wg`, `wireguard-go` and `ip`
//! for tunnels.**
//!
//! Each tunnel gets a routing table of its own (`wireguard_table_base` plus
//! its index) holding its peers' prefixes, and `ip rule`s sending traffic
//! from the router's exported prefixes, from its tunnel address and from the
//! tunnel into that table. Linux goes on to the next rule when a table has
//! no route, so the LAN's other traffic is unaffected, and a relay can carry
//! several customers' VPNs whose prefixes overlap. The firewall side (what a
//! tunnel may carry) is in the nft planner.
//!
//! Private keys never leave the state directory: `wg` reads them on stdin.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use isdf_api::wireguard::{PeerStatus, Tunnel, TunnelStatus, WgKey, Wireguard, WireguardFacts};
use isdf_api::Prefix;
use serde::{Deserialize, Serialize};

use crate::sys::processes;
use crate::sys::settings::TunnelSettings;
use crate::sys::state::StateDir;

/// The key store, in the state directory (0600).
pub const KEYS_FILE: &str = "wireguard-keys.json";
/// The priority of the agent's `ip rule`s (below the `main` table's 32766,
/// above fw4's and mwan3's marks, which use lower numbers).
pub const RULE_PRIORITY: u32 = 5180;
/// How often the rotation watcher looks at handshakes while a peer has an
/// alternate key.
pub const WATCH_EVERY: Duration = Duration::from_millis(150);
/// How long the agent waits for the controller's probe datagram.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);
/// Where `wireguard-go` (and `wg`) keep the UAPI sockets.
const UAPI_DIR: &str = "/var/run/wireguard";
/// How long a new `wireguard-go` has to open its UAPI socket.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// The keepalive that re-arms a peer without one after a key switch (it is
/// turned off again in the same `wg set`).
const REARM_KEEPALIVE: &str = "25";

/// One of the router's key pairs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub generation: u32,
    /// Base64, as `wg` writes it.
    pub private: String,
    pub public: WgKey,
}

/// The private half stays out of logs.
impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredKey({}, {})", self.generation, self.public)
    }
}

/// The generation of the key to make for a config asking for
/// `key_generation`, given the keys held: the first key
/// (generation at least 1), or a rotation when the config asks for a newer
/// generation than the newest held. None: nothing to make.
pub fn generation_to_make(held: &[StoredKey], key_generation: u32) -> Option<u32> {
    match held.iter().map(|k| k.generation).max() {
        None => Some(key_generation.max(1)),
        Some(newest) if key_generation > newest => Some(key_generation),
        Some(_) => None,
    }
}

/// The router's key pairs, oldest first, persisted at every change.
pub struct KeyStore {
    state: StateDir,
    keys: Vec<StoredKey>,
}

impl KeyStore {
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let state = StateDir::open(state_dir)?;
        let keys = match state.read_optional(KEYS_FILE)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", state_dir.join(KEYS_FILE).display()))?,
            None => Vec::new(),
        };
        Ok(KeyStore { state, keys })
    }

    pub fn keys(&self) -> &[StoredKey] {
        &self.keys
    }

    pub fn newest(&self) -> Option<&StoredKey> {
        self.keys.iter().max_by_key(|k| k.generation)
    }

    pub fn find(&self, public: WgKey) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.public == public)
    }

    /// Makes the key `key_generation` calls for (see `generation_to_make`)
    /// with `make`, and persists it before it is used.
    pub fn ensure(
        &mut self,
        key_generation: u32,
        make: impl FnOnce() -> anyhow::Result<(String, WgKey)>,
    ) -> anyhow::Result<()> {
        let Some(generation) = generation_to_make(&self.keys, key_generation) else {
            return Ok(());
        };
        let (private, public) = make()?;
        self.keys.push(StoredKey {
            generation,
            private,
            public,
        });
        self.save()?;
        tracing::info!(generation, public = %public, "made a WireGuard key pair");
        Ok(())
    }

    /// Once an applied config names the newest key, the older ones are
    /// forgotten (no config can name them any more without a rollback to
    /// one that already did).
    pub fn keep_from(&mut self, in_use: WgKey) -> anyhow::Result<()> {
        let newest = self.newest().map(|k| k.public);
        if newest != Some(in_use) || self.keys.len() == 1 {
            return Ok(());
        }
        self.keys.retain(|k| k.public == in_use);
        self.save()
    }

    fn save(&self) -> anyhow::Result<()> {
        self.state
            .write_atomically(KEYS_FILE, &serde_json::to_vec(&self.keys)?, 0o600)
    }
}

/// A new key pair from `wg genkey` and `wg pubkey` (the private key only
/// ever on pipes).
pub fn generate_key() -> anyhow::Result<(String, WgKey)> {
    let private = processes::run("wg", &["genkey"], "")?.trim().to_owned();
    let public = processes::run("wg", &["pubkey"], &format!("{private}\n"))?;
    let public = WgKey::parse(&public).map_err(anyhow::Error::msg)?;
    Ok((private, public))
}

/// The key fields of the facts: the key in use (the one the applied config
/// names; before any, the newest), the newest when it is not in use yet, and
/// the newest generation. None before the first key.
pub fn key_facts(keys: &[StoredKey], in_use: Option<WgKey>) -> Option<(WgKey, Option<WgKey>, u32)> {
    let newest = keys.iter().max_by_key(|k| k.generation)?;
    let current = in_use
        .filter(|k| keys.iter().any(|s| s.public == *k))
        .unwrap_or(newest.public);
    let next = (newest.public != current).then_some(newest.public);
    Some((current, next, newest.generation))
}

/// Which of a rotating peer's keys holds its allowed prefixes: the one with
/// the newer handshake (Unix seconds, 0 for none). Handshakes count whole
/// seconds, so on a tie the key whose handshake changed since the `before`
/// look wins; otherwise the holder stays.
pub fn choose_holder(
    holder: WgKey,
    primary: WgKey,
    alternate: WgKey,
    before: &BTreeMap<WgKey, i64>,
    now: &BTreeMap<WgKey, i64>,
) -> WgKey {
    let at = |m: &BTreeMap<WgKey, i64>, k| m.get(&k).copied().unwrap_or(0);
    let (p, a) = (at(now, primary), at(now, alternate));
    if a > p {
        return alternate;
    }
    if p > a {
        return primary;
    }
    let p_new = p != at(before, primary);
    let a_new = a != at(before, alternate);
    match (p_new, a_new) {
        (false, true) if a > 0 => alternate,
        (true, false) => primary,
        _ => holder,
    }
}

/// The `wg setconf` file of `tunnel` with `private_key`. A rotating peer is
/// two peers; its prefixes go to the key `holder` names (by default the
/// primary key).
pub fn render_conf(
    tunnel: &Tunnel,
    private_key: &str,
    holder: impl Fn(WgKey) -> Option<WgKey>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[Interface]\nPrivateKey = {private_key}\nListenPort = {}",
        tunnel.listen_port
    );
    for peer in &tunnel.peers {
        let holds = holder(peer.public_key).unwrap_or(peer.public_key);
        for key in std::iter::once(peer.public_key).chain(peer.alternate_public_key) {
            let _ = writeln!(s, "\n[Peer]\n# {}\nPublicKey = {key}", peer.name);
            if key == holds {
                let _ = writeln!(s, "AllowedIPs = {}", join(&peer.allowed_prefixes));
            }
            if let Some(endpoint) = peer.endpoint {
                let _ = writeln!(s, "Endpoint = {endpoint}");
            }
            if let Some(secs) = peer.keepalive_secs {
                let _ = writeln!(s, "PersistentKeepalive = {secs}");
            }
        }
    }
    s
}

fn join(prefixes: &[Prefix]) -> String {
    let texts: Vec<String> = prefixes.iter().map(Prefix::to_string).collect();
    texts.join(", ")
}

/// The policy rules all `tunnels` need, per family (`false`: IPv4), as `ip
/// rule` arguments after the priority: `from <prefix> table T` and `iif
/// <interface> table T`.
pub fn wanted_rules(tunnels: &[Tunnel], table_base: u32) -> BTreeSet<(bool, String)> {
    let mut rules = BTreeSet::new();
    for (index, tunnel) in tunnels.iter().enumerate() {
        let table = table_base + index as u32;
        for prefix in std::iter::once(&tunnel.address).chain(&tunnel.local_prefixes) {
            // With its length always: `ip -j rule show` lists it so.
            let (network, len) = (prefix.net().network(), prefix.net().prefix_len());
            rules.insert((is_v6(prefix), format!("from {network}/{len} table {table}")));
        }
        for v6 in [false, true] {
            rules.insert((v6, format!("iif {} table {table}", tunnel.interface)));
        }
    }
    rules
}

fn is_v6(prefix: &Prefix) -> bool {
    prefix.net().addr().is_ipv6()
}

/// The agent's rules in an `ip -j rule show` listing, in `wanted_rules`'
/// form.
fn listed_rules(json: &serde_json::Value, v6: bool) -> BTreeSet<(bool, String)> {
    let rules = json.as_array().into_iter().flatten();
    rules
        .filter(|r| r["priority"].as_u64() == Some(u64::from(RULE_PRIORITY)))
        .filter_map(|r| {
            let table = r["table"].as_str()?;
            // `iif` rules list their source as "all".
            let src = r["src"].as_str().filter(|s| *s != "all");
            let selector = match (src, r["iif"].as_str()) {
                // A host prefix is listed without its length.
                (Some(src), _) => {
                    let len = r["srclen"].as_u64().unwrap_or(if v6 { 128 } else { 32 });
                    format!("from {src}/{len}")
                }
                (None, Some(iif)) => format!("iif {iif}"),
                _ => return None,
            };
            Some((v6, format!("{selector} table {table}")))
        })
        .collect()
}

/// The destinations of an `ip -j route show table T` listing.
fn listed_routes(json: &serde_json::Value) -> Vec<String> {
    let routes = json.as_array().into_iter().flatten();
    routes
        .filter_map(|r| r["dst"].as_str())
        .map(str::to_owned)
        .collect()
}

/// Whether a listed route destination (`10.0.0.1`, `10.0.0.0/24`) is `prefix`.
fn same_prefix(listed: &str, prefix: &Prefix) -> bool {
    match listed.parse::<IpAddr>() {
        Ok(addr) => {
            prefix.net().addr() == addr
                && prefix.net().prefix_len() == prefix.net().max_prefix_len()
        }
        Err(_) => Prefix::parse(listed).is_ok_and(|p| p == *prefix),
    }
}

/// The global addresses of an `ip -j addr show` listing (link-local ones
/// left out).
pub fn listed_addresses(json: &serde_json::Value) -> Vec<(IpAddr, u8)> {
    let infos = json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|link| link["addr_info"].as_array())
        .flatten();
    infos
        .filter(|a| a["scope"] != "link" && a["scope"] != "host")
        .filter_map(|a| {
            let addr = a["local"].as_str()?.parse().ok()?;
            let len = u8::try_from(a["prefixlen"].as_u64()?).ok()?;
            Some((addr, len))
        })
        .collect()
}

/// The addresses on the router's WAN interfaces (absent interfaces have none).
pub fn wan_addresses(interfaces: &[String]) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for name in interfaces {
        if let Some(json) = ip_json(&["addr", "show", "dev", name]) {
            addresses.extend(listed_addresses(&json).into_iter().map(|(a, _)| a));
        }
    }
    addresses
}

/// The nonce of a probe datagram (`PROBE_PREFIX` and 32 hex digits).
pub fn probe_nonce(datagram: &[u8]) -> Option<String> {
    let nonce = datagram.strip_prefix(isdf_api::wireguard::PROBE_PREFIX)?;
    let nonce = std::str::from_utf8(nonce).ok()?.trim_end();
    (nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit())).then(|| nonce.to_owned())
}

/// Peers of a `wg show <if> dump` listing (the interface line skipped).
pub fn parse_dump(dump: &str) -> Vec<PeerStatus> {
    dump.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 8 {
                return None;
            }
            Some(PeerStatus {
                public_key: WgKey::parse(f[0]).ok()?,
                endpoint: f[2].parse().ok(),
                latest_handshake: f[4].parse().ok().filter(|&t: &i64| t > 0),
                rx_bytes: f[5].parse().unwrap_or(0),
                tx_bytes: f[6].parse().unwrap_or(0),
            })
        })
        .collect()
}

/// `wg show <if> latest-handshakes`, by key.
fn parse_handshakes(text: &str) -> BTreeMap<WgKey, i64> {
    text.lines()
        .filter_map(|line| {
            let (key, at) = line.split_once('\t')?;
            Some((WgKey::parse(key).ok()?, at.trim().parse().ok()?))
        })
        .collect()
}

/// Runs `ip args` and parses its JSON; None when it fails (no such device).
fn ip_json(args: &[&str]) -> Option<serde_json::Value> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = processes::run("ip", &all, "").ok()?;
    serde_json::from_slice(out.as_bytes()).ok()
}

/// Runs `ip` commands (one per line) in one process, for one family.
fn ip_batch(v6: bool, lines: &[String]) -> anyhow::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let family = if v6 { "-6" } else { "-4" };
    processes::run("ip", &[family, "-batch", "-"], &(lines.join("\n") + "\n")).map(drop)
}

/// Whether the interface exists in this thread's network namespace
/// (`/sys/class/net` shows the namespace sysfs was mounted in).
fn link_exists(name: &str) -> bool {
    std::fs::read_to_string("/proc/thread-self/net/dev").is_ok_and(|dev| {
        dev.lines()
            .filter_map(|l| l.split_once(':'))
            .any(|(n, _)| n.trim() == name)
    })
}

/// How an interface is driven.
enum Driver {
    Kernel,
    /// A `wireguard-go` the agent started.
    Child(Child),
    /// A `wireguard-go` someone else started (a previous agent without a
    /// pid file): kept while its link lives.
    Adopted,
}

/// The router's tunnels: what the kernel holds and the processes behind it.
pub struct Tunnels {
    settings: TunnelSettings,
    keys: KeyStore,
    /// What the last `apply` put in place (None: no tunnel side).
    applied: Option<Wireguard>,
    /// The private key the tunnels use.
    in_use: Option<WgKey>,
    drivers: BTreeMap<String, Driver>,
    /// Per (interface, primary key) of a rotating peer, the key holding its
    /// prefixes now (absent: the primary).
    holders: BTreeMap<(String, WgKey), WgKey>,
    /// The handshakes of the watcher's last look, per interface.
    seen: BTreeMap<String, BTreeMap<WgKey, i64>>,
    /// Leftovers of a previous agent were looked for.
    swept: bool,
}

impl Tunnels {
    pub fn new(settings: TunnelSettings) -> anyhow::Result<Self> {
        Ok(Tunnels {
            keys: KeyStore::open(&settings.state_dir)?,
            settings,
            applied: None,
            in_use: None,
            drivers: BTreeMap::new(),
            holders: BTreeMap::new(),
            seen: BTreeMap::new(),
            swept: false,
        })
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Whether the last applied config had a tunnel side (facts are due).
    pub fn configured(&self) -> bool {
        self.applied.is_some()
    }

    fn run_dir(&self) -> PathBuf {
        self.settings.state_dir.join("wireguard")
    }

    fn pid_path(&self, interface: &str) -> PathBuf {
        self.run_dir().join(format!("{interface}.pid"))
    }

    /// Makes the router's tunnels those of `wireguard` (None: none), making
    /// keys it asks for first. A config naming a key the router does not
    /// hold is refused before anything changes.
    pub fn apply(&mut self, wireguard: Option<&Wireguard>) -> anyhow::Result<()> {
        let (tunnels, key) = match wireguard {
            Some(wg) => {
                self.keys.ensure(wg.key_generation, generate_key)?;
                let key = match wg.public_key {
                    Some(public) => Some(self.keys.find(public).cloned().with_context(|| {
                        format!("the config names WireGuard key {public}, which this router does not hold")
                    })?),
                    None => None,
                };
                (&wg.tunnels[..], key)
            }
            None => (&[][..], None),
        };
        if !self.swept {
            self.swept = true;
            self.sweep(tunnels);
        }
        let wanted: BTreeSet<&str> = tunnels.iter().map(|t| t.interface.as_str()).collect();
        let stale: Vec<String> = self
            .drivers
            .keys()
            .filter(|i| !wanted.contains(i.as_str()))
            .cloned()
            .collect();
        for interface in stale {
            self.remove_interface(&interface);
        }
        self.holders.retain(|(interface, primary), _| {
            tunnels.iter().any(|t| {
                t.interface == *interface
                    && t.peers
                        .iter()
                        .any(|p| p.public_key == *primary && p.alternate_public_key.is_some())
            })
        });
        let switched = key.as_ref().map(|k| k.public) != self.in_use && self.in_use.is_some();
        // Recorded before the tunnels: a later failure must not leave the
        // next apply thinking an old key is configured.
        self.applied = wireguard.cloned();
        if !tunnels.is_empty() {
            let key = key.context("tunnels need the router's public_key")?;
            for (index, tunnel) in tunnels.iter().enumerate() {
                self.apply_tunnel(index, tunnel, &key.private)
                    .with_context(|| format!("tunnel {}", tunnel.interface))?;
            }
            self.in_use = Some(key.public);
        } else {
            self.in_use = None;
        }
        self.sync_rules(tunnels)?;
        if switched && !tunnels.is_empty() {
            self.rearm(tunnels);
        }
        Ok(())
    }

    /// After a config naming the newest key was applied (with everything
    /// else): the older keys are deleted.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        match self.in_use {
            Some(key) => self.keys.keep_from(key),
            None => Ok(()),
        }
    }

    /// Removes every tunnel, rule and process of the agent.
    pub fn remove(&mut self) -> anyhow::Result<()> {
        self.apply(None)
    }

    fn apply_tunnel(&mut self, index: usize, tunnel: &Tunnel, private: &str) -> anyhow::Result<()> {
        let interface = tunnel.interface.as_str();
        self.ensure_interface(interface)?;
        let holders = &self.holders;
        let conf = render_conf(tunnel, private, |primary| {
            holders.get(&(interface.to_owned(), primary)).copied()
        });
        processes::run("wg", &["syncconf", interface, "/dev/stdin"], &conf)?;
        // Addresses: exactly the tunnel's.
        let listed = ip_json(&["addr", "show", "dev", interface])
            .map(|j| listed_addresses(&j))
            .unwrap_or_default();
        for v6 in [false, true] {
            let mut lines = Vec::new();
            for (addr, len) in &listed {
                let same = tunnel.address.net().addr() == *addr
                    && tunnel.address.net().prefix_len() == *len;
                if addr.is_ipv6() == v6 && !same {
                    lines.push(format!("addr del {addr}/{len} dev {interface}"));
                }
            }
            if is_v6(&tunnel.address) == v6 {
                lines.push(format!("addr replace {} dev {interface}", tunnel.address));
            }
            ip_batch(v6, &lines)?;
        }
        processes::run("ip", &["link", "set", interface, "up"], "")?;
        // Routes: the peers' prefixes in the tunnel's table, and nothing else.
        let table = (self.settings.table_base + index as u32).to_string();
        let wanted: Vec<&Prefix> = tunnel
            .peers
            .iter()
            .flat_map(|p| &p.allowed_prefixes)
            .collect();
        for v6 in [false, true] {
            let family = if v6 { "-6" } else { "-4" };
            let listed = ip_json(&[family, "route", "show", "table", &table])
                .map(|j| listed_routes(&j))
                .unwrap_or_default();
            let mut lines: Vec<String> = listed
                .iter()
                .filter(|dst| !wanted.iter().any(|p| same_prefix(dst, p)))
                .map(|dst| format!("route del {dst} table {table}"))
                .collect();
            lines.extend(
                wanted
                    .iter()
                    .filter(|p| is_v6(p) == v6)
                    .map(|p| format!("route replace {p} dev {interface} table {table}")),
            );
            ip_batch(v6, &lines)?;
        }
        Ok(())
    }

    /// Makes the policy rules exactly those `tunnels` need.
    fn sync_rules(&self, tunnels: &[Tunnel]) -> anyhow::Result<()> {
        let wanted = wanted_rules(tunnels, self.settings.table_base);
        for v6 in [false, true] {
            let family = if v6 { "-6" } else { "-4" };
            let listed = ip_json(&[family, "rule", "show"])
                .map(|j| listed_rules(&j, v6))
                .unwrap_or_default();
            let mut lines: Vec<String> = listed
                .difference(&wanted)
                .map(|(_, r)| format!("rule del priority {RULE_PRIORITY} {r}"))
                .collect();
            lines.extend(
                wanted
                    .difference(&listed)
                    .filter(|(f, _)| *f == v6)
                    .map(|(_, r)| format!("rule add priority {RULE_PRIORITY} {r}")),
            );
            ip_batch(v6, &lines)?;
        }
        Ok(())
    }

    /// Makes `interface` exist as a WireGuard interface: kernel WireGuard
    /// when the kernel has it, else a `wireguard-go` the agent supervises.
    fn ensure_interface(&mut self, interface: &str) -> anyhow::Result<()> {
        let alive = match self.drivers.get_mut(interface) {
            Some(Driver::Child(child)) => {
                matches!(child.try_wait(), Ok(None)) && link_exists(interface)
            }
            Some(_) => link_exists(interface),
            None => false,
        };
        if alive {
            return Ok(());
        }
        if self.drivers.contains_key(interface) {
            tracing::warn!(interface, "a tunnel interface went away; making it again");
            self.remove_interface(interface);
        }
        self.kill_leftover(interface);
        if link_exists(interface) {
            let kernel = ip_json(&["-d", "link", "show", "dev", interface])
                .is_some_and(|j| j[0]["linkinfo"]["info_kind"] == "wireguard");
            let uapi = Path::new(UAPI_DIR).join(format!("{interface}.sock"));
            if kernel || uapi.exists() {
                // Left by a previous agent: configured afresh below.
                let driver = if kernel {
                    Driver::Kernel
                } else {
                    Driver::Adopted
                };
                self.drivers.insert(interface.to_owned(), driver);
                return Ok(());
            }
            processes::run("ip", &["link", "del", interface], "")?;
        }
        if processes::works("ip", &["link", "add", interface, "type", "wireguard"]) {
            self.drivers.insert(interface.to_owned(), Driver::Kernel);
            return Ok(());
        }
        let child = self.spawn_wireguard_go(interface)?;
        self.drivers
            .insert(interface.to_owned(), Driver::Child(child));
        Ok(())
    }

    fn spawn_wireguard_go(&self, interface: &str) -> anyhow::Result<Child> {
        let program = &self.settings.wireguard_go;
        let mut child = Command::new(program)
            .arg(interface)
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (this kernel has no WireGuard; install wireguard-go)",
                    program.display()
                )
            })?;
        std::fs::create_dir_all(self.run_dir())
            .and_then(|()| std::fs::write(self.pid_path(interface), child.id().to_string()))
            .context("recording wireguard-go's pid")?;
        let uapi = Path::new(UAPI_DIR).join(format!("{interface}.sock"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let _ = std::fs::remove_file(self.pid_path(interface));
                bail!(
                    "{} {interface} exited ({status}); run it by hand to see why",
                    program.display()
                );
            }
            if uapi.exists() && link_exists(interface) {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} {interface} did not start in time", program.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends a `wireguard-go` a previous agent started for `interface` (its
    /// pid file names it, and it still runs that interface).
    fn kill_leftover(&self, interface: &str) {
        let path = self.pid_path(interface);
        let Ok(pid) = std::fs::read_to_string(&path) else {
            return;
        };
        let pid = pid.trim();
        let ours = pid.bytes().all(|b| b.is_ascii_digit())
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg == interface.as_bytes())
            });
        if ours {
            tracing::warn!(
                pid,
                interface,
                "ending the wireguard-go a previous agent left"
            );
            processes::terminate_and_wait(pid);
        }
        let _ = std::fs::remove_file(path);
    }

    /// Takes down `interface` and what drives it (its routes go with it).
    fn remove_interface(&mut self, interface: &str) {
        match self.drivers.remove(interface) {
            Some(Driver::Child(child)) => {
                stop(child, interface);
                let _ = std::fs::remove_file(self.pid_path(interface));
            }
            Some(Driver::Kernel) | Some(Driver::Adopted) | None => {}
        }
        self.kill_leftover(interface);
        if link_exists(interface) {
            let _ = processes::run("ip", &["link", "del", interface], "");
        }
        self.seen.remove(interface);
    }

    /// At the first apply: ends the tunnels a previous agent left that no
    /// longer exist (those that do are taken over by `ensure_interface`).
    fn sweep(&mut self, tunnels: &[Tunnel]) {
        let Ok(entries) = std::fs::read_dir(self.run_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(interface) = name.strip_suffix(".pid") else {
                continue;
            };
            if !tunnels.iter().any(|t| t.interface == interface) {
                let interface = interface.to_owned();
                self.kill_leftover(&interface);
                if link_exists(&interface) {
                    let _ = processes::run("ip", &["link", "del", &interface], "");
                }
            }
        }
    }

    /// After the router switched its private key: every peer handshakes
    /// again at once (turning a keepalive on sends one), rather than at
    /// the next packet after the old sessions expire.
    fn rearm(&self, tunnels: &[Tunnel]) {
        for tunnel in tunnels {
            let mut args = vec!["set".to_owned(), tunnel.interface.clone()];
            for peer in &tunnel.peers {
                let key = peer.public_key.to_string();
                let (first, then) = match peer.keepalive_secs {
                    Some(secs) => ("off".to_owned(), secs.to_string()),
                    None => (REARM_KEEPALIVE.to_owned(), "off".to_owned()),
                };
                for value in [first, then] {
                    args.extend(["peer".to_owned(), key.clone()]);
                    args.extend(["persistent-keepalive".to_owned(), value]);
                }
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = processes::run("wg", &args, "") {
                tracing::warn!(error = %format!("{e:#}"), "re-arming handshakes");
            }
        }
    }

    /// Whether a peer rotates (the watcher must run).
    pub fn has_alternates(&self) -> bool {
        self.applied.as_ref().is_some_and(|wg| {
            wg.tunnels
                .iter()
                .flat_map(|t| &t.peers)
                .any(|p| p.alternate_public_key.is_some())
        })
    }

    /// One look of the rotation watcher: a rotating peer's prefixes move to
    /// whichever of its keys completed the newer handshake.
    pub fn watch_rotation(&mut self) -> anyhow::Result<()> {
        let Some(wg) = self.applied.clone() else {
            return Ok(());
        };
        for tunnel in &wg.tunnels {
            let rotating: Vec<_> = tunnel
                .peers
                .iter()
                .filter_map(|p| Some((p, p.alternate_public_key?)))
                .collect();
            if rotating.is_empty() {
                continue;
            }
            let interface = tunnel.interface.as_str();
            let now = parse_handshakes(&processes::run(
                "wg",
                &["show", interface, "latest-handshakes"],
                "",
            )?);
            let before = self.seen.insert(interface.to_owned(), now.clone());
            let before = before.unwrap_or_default();
            for (peer, alternate) in rotating {
                let slot = (interface.to_owned(), peer.public_key);
                let holder = self.holders.get(&slot).copied().unwrap_or(peer.public_key);
                let chosen = choose_holder(holder, peer.public_key, alternate, &before, &now);
                if chosen == holder {
                    continue;
                }
                let list: Vec<String> = peer
                    .allowed_prefixes
                    .iter()
                    .map(Prefix::to_string)
                    .collect();
                processes::run(
                    "wg",
                    &[
                        "set",
                        interface,
                        "peer",
                        &chosen.to_string(),
                        "allowed-ips",
                        &list.join(","),
                    ],
                    "",
                )?;
                tracing::info!(interface, peer = %peer.name, key = %chosen, "peer moved to its other key");
                self.holders.insert(slot, chosen);
            }
        }
        Ok(())
    }

    /// The periodic pass: an interface that went away or a `wireguard-go`
    /// that died is made again, with everything on it.
    pub fn repair(&mut self) -> anyhow::Result<()> {
        let Some(wg) = self.applied.clone() else {
            return Ok(());
        };
        let broken = wg.tunnels.iter().any(|t| {
            let alive = match self.drivers.get_mut(&t.interface) {
                Some(Driver::Child(child)) => matches!(child.try_wait(), Ok(None)),
                Some(_) => true,
                None => false,
            };
            !alive || !link_exists(&t.interface)
        });
        if broken {
            tracing::warn!("a tunnel interface is gone; making the tunnels again");
            self.apply(Some(&wg))?;
        }
        Ok(())
    }

    /// What the tunnels look like now, for the status report.
    pub fn status(&self) -> Vec<TunnelStatus> {
        let Some(wg) = &self.applied else {
            return Vec::new();
        };
        let Some(public_key) = self.in_use else {
            return Vec::new();
        };
        wg.tunnels
            .iter()
            .filter_map(|t| {
                let dump = processes::run("wg", &["show", &t.interface, "dump"], "").ok()?;
                Some(TunnelStatus {
                    interface: t.interface.clone(),
                    public_key,
                    peers: parse_dump(&dump),
                })
            })
            .collect()
    }

    /// The facts to report (without a probe nonce); None before any key.
    pub fn facts(&self, listen_port: u16, wan_addresses: Vec<IpAddr>) -> Option<WireguardFacts> {
        let named = self.applied.as_ref().and_then(|w| w.public_key);
        let (public_key, next_public_key, key_generation) =
            key_facts(self.keys.keys(), self.in_use.or(named))?;
        Some(WireguardFacts {
            public_key,
            next_public_key,
            key_generation,
            listen_port,
            wan_addresses,
            probe_nonce: None,
        })
    }
}

impl Drop for Tunnels {
    /// The `wireguard-go` processes end with the agent (their links go with
    /// them): tunnels, unlike firewall rules, hold no protection to keep.
    fn drop(&mut self) {
        for (interface, driver) in std::mem::take(&mut self.drivers) {
            if let Driver::Child(child) = driver {
                stop(child, &interface);
                let _ = std::fs::remove_file(self.pid_path(&interface));
            }
        }
    }
}

/// Ends a `wireguard-go` the agent started: asked to stop (it removes its
/// UAPI socket and link), killed if it has not within two seconds.
fn stop(mut child: Child, interface: &str) {
    processes::terminate(&child.id().to_string());
    let deadline = Instant::now() + Duration::from_secs(2);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{interface}.sock")));
}

/// The socket the probe arrives on: dual-stack where the router has IPv6.
pub fn probe_socket(port: u16) -> anyhow::Result<std::net::UdpSocket> {
    let any6 = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let any4 = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
    std::net::UdpSocket::bind(any6)
        .or_else(|_| std::net::UdpSocket::bind(any4))
        .with_context(|| format!("binding UDP port {port} for the probe"))
}

/// Waits up to `PROBE_WAIT` on `socket` for the controller's probe; its
/// nonce, or None. Blocking: the agent loop pauses for at most that long
/// every `wireguard_facts_secs` (std's socket costs the small binary less
/// than tokio's).
pub fn receive_probe(socket: &std::net::UdpSocket) -> Option<String> {
    let deadline = Instant::now() + PROBE_WAIT;
    let mut buf = [0u8; 128];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        if let Some(nonce) = probe_nonce(&buf[..n]) {
            return Some(nonce);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isdf_api::wireguard::Peer;

    fn key(n: u8) -> WgKey {
        WgKey([n; 32])
    }

    fn stored(generation: u32, n: u8) -> StoredKey {
        StoredKey {
            generation,
            private: format!("private-{n}"),
            public: key(n),
        }
    }

    fn p(text: &str) -> Prefix {
        Prefix::parse(text).unwrap()
    }

    #[test]
    fn the_first_key_and_rotations_are_made_when_the_generation_asks() {
        assert_eq!(generation_to_make(&[], 0), Some(1));
        assert_eq!(generation_to_make(&[], 4), Some(4));
        let held = [stored(1, 1), stored(2, 2)];
        assert_eq!(generation_to_make(&held, 0), None);
        assert_eq!(generation_to_make(&held, 2), None);
        assert_eq!(generation_to_make(&held, 3), Some(3));
    }

    #[test]
    fn the_store_persists_0600_and_forgets_old_keys_once_the_newest_is_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path()).unwrap();
        store.ensure(0, || Ok(("a".into(), key(1)))).unwrap();
        store.ensure(1, || panic!("no new key")).unwrap();
        store.ensure(2, || Ok(("b".into(), key(2)))).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEYS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut store = KeyStore::open(dir.path()).unwrap();
        assert_eq!(
            store.keys(),
            [stored(1, 1), stored(2, 2)].map(|mut k| {
                k.private = if k.generation == 1 {
                    "a".into()
                } else {
                    "b".into()
                };
                k
            })
        );
        store.keep_from(key(1)).unwrap();
        assert_eq!(store.keys().len(), 2, "the old key is in use: both stay");
        store.keep_from(key(2)).unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        assert_eq!(store.keys().len(), 1);
        assert_eq!(store.newest().unwrap().public, key(2));
    }

    #[test]
    fn facts_name_the_key_in_use_and_the_next_one() {
        assert_eq!(key_facts(&[], None), None);
        let held = [stored(1, 1), stored(2, 2)];
        assert_eq!(key_facts(&held, None), Some((key(2), None, 2)));
        assert_eq!(
            key_facts(&held, Some(key(1))),
            Some((key(1), Some(key(2)), 2))
        );
        assert_eq!(key_facts(&held, Some(key(2))), Some((key(2), None, 2)));
        // A key the router does not hold is not reported as in use.
        assert_eq!(key_facts(&held, Some(key(9))), Some((key(2), None, 2)));
    }

    #[test]
    fn prefixes_follow_the_newer_handshake() {
        let (p_, a) = (key(1), key(2));
        let hs = |pairs: &[(WgKey, i64)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        let none = hs(&[]);
        assert_eq!(
            choose_holder(p_, p_, a, &none, &none),
            p_,
            "no handshake yet"
        );
        assert_eq!(choose_holder(p_, p_, a, &none, &hs(&[(p_, 100)])), p_);
        assert_eq!(
            choose_holder(p_, p_, a, &none, &hs(&[(p_, 100), (a, 101)])),
            a
        );
        assert_eq!(
            choose_holder(a, p_, a, &none, &hs(&[(p_, 102), (a, 101)])),
            p_
        );
        // Same second: the one that just changed wins, else nothing moves.
        let before = hs(&[(p_, 100)]);
        let now = hs(&[(p_, 100), (a, 100)]);
        assert_eq!(choose_holder(p_, p_, a, &before, &now), a);
        assert_eq!(choose_holder(a, p_, a, &now, &now), a);
        assert_eq!(choose_holder(p_, p_, a, &now, &now), p_);
        let before = hs(&[(p_, 99), (a, 100)]);
        assert_eq!(choose_holder(a, p_, a, &before, &now), p_);
    }

    fn tunnel() -> Tunnel {
        Tunnel {
            interface: "isdf0".into(),
            listen_port: 51820,
            address: p("10.99.0.1/32"),
            local_prefixes: vec![p("10.1.0.0/24"), p("2001:db8:1::/64")],
            peers: vec![
                Peer {
                    name: "b".into(),
                    public_key: key(2),
                    alternate_public_key: Some(key(3)),
                    endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                    allowed_prefixes: vec![p("10.2.0.0/24"), p("10.99.0.2/32")],
                    keepalive_secs: Some(25),
                },
                Peer {
                    name: "c".into(),
                    public_key: key(4),
                    alternate_public_key: None,
                    endpoint: None,
                    allowed_prefixes: vec![p("10.3.0.0/24")],
                    keepalive_secs: None,
                },
            ],
        }
    }

    #[test]
    fn the_wg_config_has_both_keys_of_a_rotating_peer() {
        let t = tunnel();
        insta::assert_snapshot!(render_conf(&t, "PRIVATE", |_| None));
        let moved = render_conf(&t, "PRIVATE", |k| (k == key(2)).then_some(key(3)));
        let b_new = moved.split("[Peer]").nth(2).unwrap();
        assert!(
            b_new.contains(&key(3).to_string())
                && b_new.contains("AllowedIPs = 10.2.0.0/24, 10.99.0.2"),
            "{moved}"
        );
        let b_old = moved.split("[Peer]").nth(1).unwrap();
        assert!(!b_old.contains("AllowedIPs"), "{moved}");
    }

    #[test]
    fn rules_cover_exported_prefixes_the_address_and_the_interface() {
        let rules: Vec<_> = wanted_rules(&[tunnel()], 51820).into_iter().collect();
        insta::assert_debug_snapshot!(rules);
    }

    #[test]
    fn listings_parse() {
        let rules: serde_json::Value = serde_json::from_str(
            r#"[{"priority":0,"src":"all","table":"local"},
                {"priority":5180,"src":"10.1.0.0","srclen":24,"table":"51820"},
                {"priority":5180,"src":"all","iif":"isdf0","table":"51820"},
                {"priority":32766,"src":"all","table":"main"}]"#,
        )
        .unwrap();
        let listed: Vec<_> = listed_rules(&rules, false).into_iter().collect();
        assert_eq!(
            listed,
            [
                (false, "from 10.1.0.0/24 table 51820".to_owned()),
                (false, "iif isdf0 table 51820".to_owned())
            ]
        );
        let routes: serde_json::Value = serde_json::from_str(
            r#"[{"dst":"10.2.0.0/24","dev":"isdf0"},{"dst":"10.99.0.2","dev":"isdf0"}]"#,
        )
        .unwrap();
        let dsts = listed_routes(&routes);
        assert!(same_prefix(&dsts[0], &p("10.2.0.0/24")));
        assert!(same_prefix(&dsts[1], &p("10.99.0.2/32")));
        assert!(!same_prefix(&dsts[1], &p("10.99.0.0/24")));
        let addrs: serde_json::Value = serde_json::from_str(
            r#"[{"ifname":"wan","addr_info":[{"family":"inet","local":"198.51.100.1","prefixlen":24,"scope":"global"},
                {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},
                {"family":"inet6","local":"2001:db8::1","prefixlen":64,"scope":"global"}]}]"#,
        )
        .unwrap();
        assert_eq!(
            listed_addresses(&addrs),
            [
                ("198.51.100.1".parse().unwrap(), 24),
                ("2001:db8::1".parse().unwrap(), 64)
            ]
        );
    }

    #[test]
    fn probe_datagrams_and_dumps_parse() {
        let nonce = "0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            probe_nonce(format!("ISDF-PROBE {nonce}").as_bytes()).as_deref(),
            Some(nonce)
        );
        assert_eq!(probe_nonce(b"ISDF-PROBE 123"), None);
        assert_eq!(probe_nonce(format!("OTHER {nonce}").as_bytes()), None);
        let dump = format!(
            "PRIV\t{}\t51820\toff\n{}\t(none)\t192.0.2.2:51820\t10.2.0.0/24\t1700000000\t100\t200\t25\n{}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n",
            key(1), key(2), key(3)
        );
        let peers = parse_dump(&dump);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(
            (
                peers[0].latest_handshake,
                peers[0].rx_bytes,
                peers[0].tx_bytes
            ),
            (Some(1_700_000_000), 100, 200)
        );
        assert_eq!((peers[1].endpoint, peers[1].latest_handshake), (None, None));
        let hs = parse_handshakes(&format!("{}\t5\n{}\t0\n", key(2), key(3)));
        assert_eq!(hs.get(&key(2)), Some(&5));
    }
}
