//! The tunnels on the system: WireGuard interfaces (kernel WireGuard when
//! `ip link add … type wireguard` works, else a supervised `wireguard-go`,
//! ended by PID, one left by a crashed agent ended and recreated), each
//! configured with `wg syncconf`, with its address, its routing table and
//! the agent's `ip rule`s; stale routes, rules and interfaces removed. The
//! periodic pass remakes a vanished link or a dead `wireguard-go`.
//!
//! Rotation: a rotating peer is two peers; its prefixes move to the key with
//! the newer handshake (`plan::choose_holder`), looked at every `WATCH_EVERY`
//! only while a peer has an alternate key. When the router switches its own
//! key, every peer's keepalive is toggled so a handshake starts at once.
//! Status (`wg show dump`) and facts (keys, WAN addresses from `ip -j addr`)
//! come from here too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use isdf_api::wireguard::WgKey;
use isdf_api::wireguard::{Tunnel, TunnelStatus, Wireguard, WireguardFacts};
use isdf_api::Prefix;

use super::keys::{generate_key, key_facts, KeyStore};
use super::listing::{
    listed_addresses, listed_routes, listed_rules, parse_dump, parse_handshakes, same_prefix,
};
use super::plan::{choose_holder, is_v6, render_conf, wanted_rules, RULE_PRIORITY};
use crate::sys::atomic_write::write_atomically;
use crate::sys::processes;
use crate::sys::settings::TunnelSettings;

/// How often the rotation watcher looks at handshakes while a peer has an
/// alternate key.
pub const WATCH_EVERY: Duration = Duration::from_millis(150);
/// Where `wireguard-go` (and `wg`) keep the UAPI sockets.
const UAPI_DIR: &str = "/var/run/wireguard";
/// How long a new `wireguard-go` has to open its UAPI socket.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// The keepalive that re-arms a peer without one after a key switch (it is
/// turned off again in the same `wg set`).
const REARM_KEEPALIVE: &str = "25";

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
        // Atomic, like every file of the state directory: a power cut
        // must not leave a torn pid for the next agent to act on. The mode
        // is the one `std::fs::write` gave it.
        std::fs::create_dir_all(self.run_dir())
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                let pid = child.id().to_string();
                write_atomically(&self.pid_path(interface), pid.as_bytes(), 0o666)
            })
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
