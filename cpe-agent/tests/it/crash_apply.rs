//! SIGKILL in the middle of an apply, for both backends (issue 15).
//!
//! In a network namespace of its own, a child process (this test binary
//! again, running `apply_child`, which drives the real backend code) moves
//! the kernel from ruleset A to ruleset B and back, and is killed with
//! SIGKILL: one time in ten while it starts, otherwise at a random point
//! between the moment it says it applies and a little past the apply's
//! duration (the median of the last complete applies, as the machine's load
//! changes). After each kill the kernel must enforce exactly A or exactly B
//! (what the packet path sees, normalised: `kernel_state.rs`), never a mix
//! and never nothing; then a restarted apply must converge to B, leaving
//! nothing of the interrupted one behind.
//!
//! The namespace has a LAN interface with an IPv4 and an IPv6 prefix, so
//! the anti-spoofing rules (in iptables, a chain of each generation) are
//! part of what A and B enforce and must survive every kill too.
//!
//! Half the kills take the child's whole process group (the agent and the
//! tool it is running, as a power cut would); the other half only the child,
//! so the tool it started (`ipset restore`, `iptables-restore`, `nft`) runs
//! on with whatever part of its script it had received, as after an OOM kill.
//!
//! The draws come from a seeded generator: the seed is printed, and
//! `ISDF_CRASH_SEED=<seed>` replays the same draws (where they land still
//! depends on the machine's timing; the invariant is checked either way).
//! The run is bounded in count and time, and reports how many kills landed
//! before, during (and in which tool) and after the apply.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isdf_agent::backend::iptables::IptablesBackend;
use isdf_agent::backend::nft::NftBackend;
use isdf_agent::backend::{FirewallBackend, Interfaces};
use serde_json::{json, Value};

use crate::kernel_state::Snapshot;
use crate::netns::Netns;

/// Kills per backend.
const RUNS: usize = 100;
/// Kills that must land between the start and the end of the apply; if the
/// first `RUNS` fall short (a machine much faster or slower than the
/// calibration), more runs are made, up to `MAX_RUNS`.
const MIN_MID_APPLY: usize = 50;
const MAX_RUNS: usize = 250;
/// The whole test, calibration included.
const BUDGET: Duration = Duration::from_secs(180);
/// Elements in the biggest set: enough that the apply lasts long enough
/// for kills to land inside it.
const ELEMENTS: u32 = 1000;

const CHILD_ENV: &str = "ISDF_CRASH_APPLY_CHILD";
const APPLYING: &str = "isdf-crash: applying";
const APPLIED: &str = "isdf-crash: applied";
const VERIFIED: &str = "isdf-crash: verified";

#[test]
fn nftables_sigkill_mid_apply_leaves_old_or_new_ruleset() {
    sigkill_mid_apply("nftables");
}

#[test]
fn iptables_sigkill_mid_apply_leaves_old_or_new_ruleset() {
    sigkill_mid_apply("iptables");
}

/// The process the tests above start and kill. It does nothing unless
/// started by them (`ISDF_CRASH_APPLY_CHILD=<backend> <firewall file>`).
#[test]
#[ignore = "the process crash_apply's tests start and kill; does nothing on its own"]
fn apply_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (backend, path) = spec.split_once(' ').expect("<backend> <file>");
    let firewall: isdf_api::Firewall =
        serde_json::from_slice(&std::fs::read(path).expect("firewall file")).expect("firewall");
    let mut backend = backend_named(backend);
    let now = isdf_agent::sys::time::unix_millis();
    println!("{APPLYING}");
    backend
        .apply(&firewall, now)
        .unwrap_or_else(|e| panic!("apply: {e:#}"));
    println!("{APPLIED}");
    backend
        .verify(&firewall, now)
        .unwrap_or_else(|e| panic!("verify: {e:#}"));
    println!("{VERIFIED}");
}

/// The router's LAN interface, made by `with_lan`.
const LAN: &str = "lan";

fn backend_named(name: &str) -> Box<dyn FirewallBackend> {
    let interfaces = Interfaces {
        lan: vec![LAN.into()],
        wan: Vec::new(),
    };
    match name {
        "nftables" => Box::new(NftBackend::with_interfaces(interfaces)),
        "iptables" => Box::new(IptablesBackend::with_interfaces(interfaces)),
        other => panic!("unknown backend {other}"),
    }
}

/// Gives `ns` a LAN interface (one end of a veth pair, the other end in
/// `ns` too) with a prefix of each family, so anti-spoofing has prefixes.
fn with_lan(ns: &Netns) {
    ns.run(
        "ip",
        &[
            "link", "add", LAN, "type", "veth", "peer", "name", "lan-peer",
        ],
    );
    ns.run("ip", &["addr", "add", "192.0.2.1/24", "dev", LAN]);
    ns.run(
        "ip",
        &["-6", "addr", "add", "2001:db8:1::1/64", "dev", LAN, "nodad"],
    );
    for dev in [LAN, "lan-peer"] {
        ns.run("ip", &["link", "set", dev, "up"]);
    }
}

/// splitmix64: small, seeded, good enough to spread kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Ruleset A or B: sets whose contents differ, a set only in each, a set
/// that changes family (and so type) between them, timed elements, and
/// rules of both families in a different order, so any mix of the two
/// shows. The bulk is what each backend loads fastest from a plan that is
/// cheap to make (exact 5-tuples in an nft hash set, `hash:net` and
/// `hash:net,port,net` ipsets), so the kernel's work dominates the apply.
fn ruleset_json(which: char, backend: &str) -> Value {
    let (second, only, shape_key, shape_addr) = match which {
        'a' => (0u32, "only_a", "ipv4-addr", "203.0.113.0/24"),
        _ => (1, "only_b", "ipv6-addr", "2001:db8:ff::/48"),
    };
    let timed = |i: u32| 4_000_000_000i64 + i64::from(i);
    let (hosts_count, flows): (u32, Vec<Value>) = match backend {
        "nftables" => (
            30,
            (0..ELEMENTS)
                .map(|i| {
                    json!({"flow": {"protocol": "tcp", "src": format!("192.0.2.{}", i % 200 + 1),
                        "sport": 20_000 + i / 200, "dst": format!("198.51.{}.{}", 100 + second, i % 250 + 1),
                        "dport": 443}, "expires_at": timed(i)})
                })
                .collect(),
        ),
        _ => (
            ELEMENTS,
            (0..ELEMENTS)
                .map(|i| {
                    json!({"flow": {"protocol": "tcp", "src": "0.0.0.0/0",
                        "dst": format!("198.51.{}.{}", 100 + second, i % 250 + 1),
                        "dport": 1000 + i / 250 + 100 * second}, "expires_at": timed(i)})
                })
                .collect(),
        ),
    };
    let hosts: Vec<Value> = (0..hosts_count)
        .map(|i| {
            let addr = format!("10.{second}.{}.{}", i / 250, i % 250 + 1);
            if i % 3 == 0 {
                json!({"addr": addr, "expires_at": timed(i)})
            } else {
                json!({"addr": addr})
            }
        })
        .collect();
    let hosts6: Vec<Value> = (0..10)
        .map(|i| json!({"addr": format!("2001:db8:{second}::{:x}", i + 1)}))
        .collect();
    let mut rules = vec![
        json!({"id": format!("hosts-{which}"), "chain": "forward", "match": {"dst_in_set": "hosts"}, "action": "drop"}),
        json!({"id": format!("hosts6-{which}"), "chain": "forward", "match": {"src_in_set": "hosts6", "protocol": "tcp"}, "action": "reject"}),
        json!({"id": format!("flows-{which}"), "chain": "forward", "match": {"flow_in_set": "flows"}, "action": "drop"}),
        json!({"id": format!("only-{which}"), "chain": "forward", "match": {"src_in_set": only}, "action": "drop"}),
        json!({"id": format!("shape-{which}"), "chain": "input", "match": {"src_in_set": "shape"}, "action": "drop"}),
        json!({"id": format!("count-{which}"), "chain": "output", "match": {}, "action": "count"}),
    ];
    // Rules of no family: one per family in iptables, so a window between
    // the IPv4 and IPv6 transactions would show.
    for i in 0..40u16 {
        rules.push(json!({"id": format!("port-{which}-{i}"), "chain": "input",
            "match": {"protocol": "tcp", "dport": 20_000 + 2 * i + u16::from(which == 'b')}, "action": "drop"}));
    }
    if which == 'b' {
        rules.reverse();
    }
    json!({
        "sets": [
            {"name": "hosts", "key": "ipv4-addr", "elements": hosts},
            {"name": "hosts6", "key": "ipv6-addr", "elements": hosts6},
            {"name": "flows", "key": "ipv4-flow", "elements": flows},
            {"name": only, "key": "ipv4-addr", "elements": [{"addr": format!("192.0.2.{}", 10 + second)}]},
            {"name": "shape", "key": shape_key, "elements": [{"addr": shape_addr}]}
        ],
        "rules": rules
    })
}

/// How a child run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    /// Killed before it started to apply.
    Before,
    /// Killed while applying.
    During,
    /// Killed after the apply returned (while verifying or exiting), or not
    /// at all.
    After,
}

struct ChildRun {
    child: Child,
    started: Instant,
    /// What it printed so far.
    seen: String,
}

impl ChildRun {
    /// Reads what the child prints until `marker` appears (true) or it
    /// closes its output (false).
    fn read_until(&mut self, marker: &str) -> bool {
        let Some(stdout) = self.child.stdout.as_mut() else {
            return self.seen.contains(marker);
        };
        let mut buf = [0u8; 4096];
        while !self.seen.contains(marker) {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        true
    }
}

fn spawn_child(ns: &Netns, backend: &str, firewall: &Path) -> ChildRun {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().expect("the test binary");
    let started = Instant::now();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(exe)
        .args([
            "--exact",
            "crash_apply::apply_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, format!("{backend} {}", firewall.display()))
        // Its own process group, so a kill can take it and its tools.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the apply child (`ip netns exec`: needs root and iproute2)");
    ChildRun {
        child,
        started,
        seen: String::new(),
    }
}

/// The live processes (zombies aside) of group `pgid`: (pid, command name).
fn group_members(pgid: i32) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp ...
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            (fields.len() > 2 && fields[2] == pgid.to_string() && !matches!(fields[0], "Z" | "X"))
                .then_some((pid, comm))
        })
        .collect()
}

fn group_alive(pgid: i32) -> bool {
    !group_members(pgid).is_empty()
}

/// Waits (bounded) until nothing of the child's group runs any more.
fn wait_group_gone(pgid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "processes of group {pgid} still run 20 s after the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads what the child printed (it has exited: the pipe is at its end).
fn output(run: &mut ChildRun) -> (String, String) {
    let mut out = std::mem::take(&mut run.seen);
    let mut err = String::new();
    if let Some(mut stdout) = run.child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    if let Some(mut stderr) = run.child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    (out, err)
}

/// Runs the child to its end: the apply must succeed and verify. Returns
/// how long it took to start applying, and how long the apply took.
fn apply_fully(ns: &Netns, backend: &str, firewall: &Path) -> (Duration, Duration) {
    let mut run = spawn_child(ns, backend, firewall);
    run.read_until(APPLYING);
    let applying = run.started.elapsed();
    run.read_until(APPLIED);
    let applied = run.started.elapsed();
    let status = run.child.wait().unwrap();
    let (out, err) = output(&mut run);
    assert!(
        status.success() && out.contains(VERIFIED),
        "the {backend} apply of {} failed ({status}):\n{out}\n{err}",
        firewall.display()
    );
    (applying, applied.saturating_sub(applying))
}

/// The median of the last few timings (the machine's load changes).
struct Recent(std::collections::VecDeque<Duration>);

impl Recent {
    fn push(&mut self, d: Duration) {
        if self.0.len() == 5 {
            self.0.pop_front();
        }
        self.0.push_back(d);
    }

    fn median(&self) -> Duration {
        let mut sorted: Vec<Duration> = self.0.iter().copied().collect();
        sorted.sort();
        sorted[sorted.len() / 2]
    }
}

fn sigkill_mid_apply(backend: &'static str) {
    let seed = std::env::var("ISDF_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("{backend}: ISDF_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let test_started = Instant::now();
    let ns = Netns::create(format!(
        "isdf-crash-{}-{}",
        &backend[..3],
        std::process::id()
    ));
    with_lan(&ns);
    let dir = tempfile::tempdir().unwrap();
    let files = [dir.path().join("a.json"), dir.path().join("b.json")];
    for (file, which) in files.iter().zip(['a', 'b']) {
        std::fs::write(file, ruleset_json(which, backend).to_string()).unwrap();
    }

    // Calibration: apply A, B and A again to the end; what the kernel
    // holds after each is what a kill may leave. How long the child takes
    // to start applying and how long the apply takes decide where kills
    // land; every later complete apply updates both.
    let mut effective = [String::new(), String::new()];
    let mut full = [String::new(), String::new()];
    let mut startup = Recent(Default::default());
    let mut apply = Recent(Default::default());
    for (round, target) in [0usize, 1, 0].into_iter().enumerate() {
        let (applying, took) = apply_fully(&ns, backend, &files[target]);
        let snapshot = Snapshot::take(&ns, backend);
        effective[target] = snapshot.effective;
        full[target] = snapshot.full;
        if round > 0 {
            startup.push(applying);
            apply.push(took);
        }
    }
    assert_ne!(effective[0], effective[1], "A and B must differ");
    for (held, which) in effective.iter().zip(["A", "B"]) {
        assert!(
            held.contains("agent-antispoof"),
            "{backend}: {which} has no anti-spoofing rule:\n{held}"
        );
    }
    println!(
        "{backend}: the child starts applying after {:?}, applies in {:?}",
        startup.median(),
        apply.median()
    );

    let mut landed = [0usize; 3];
    let mut in_tool = std::collections::BTreeMap::new();
    let mut runs = 0;
    // The kernel holds A; run i moves it to the other one.
    while runs < RUNS || (landed[1] < MIN_MID_APPLY && runs < MAX_RUNS) {
        assert!(
            test_started.elapsed() < BUDGET,
            "{backend}: out of time after {runs} runs (seed {seed}); landed before/during/after: {landed:?}"
        );
        let (from, to) = if runs % 2 == 0 { (0, 1) } else { (1, 0) };
        // One kill in ten while the child starts; the others from the
        // moment it says it applies, across the apply's recent duration
        // and a little beyond.
        let before = rng.unit() < 0.1;
        let fraction = rng.unit();
        let whole_group = rng.next() & 1 == 0;
        let mut run = spawn_child(&ns, backend, &files[to]);
        let pgid = run.child.id() as i32;
        let delay = if before {
            let delay = startup.median().mul_f64(fraction);
            std::thread::sleep(delay.saturating_sub(run.started.elapsed()));
            delay
        } else {
            run.read_until(APPLYING);
            let delay = apply.median().mul_f64(fraction * 1.15);
            std::thread::sleep(delay);
            run.started.elapsed()
        };
        // Which tool the apply was running when the kill came.
        let tools: Vec<String> = group_members(pgid)
            .into_iter()
            .filter(|(pid, _)| *pid != pgid)
            .map(|(_, comm)| comm)
            .collect();
        let target = nix::unistd::Pid::from_raw(pgid);
        if whole_group {
            let _ = nix::sys::signal::killpg(target, nix::sys::signal::Signal::SIGKILL);
        } else {
            let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = run.child.wait();
        wait_group_gone(pgid);
        let (out, err) = output(&mut run);
        let when = if !out.contains(APPLYING) {
            Landed::Before
        } else if !out.contains(APPLIED) {
            Landed::During
        } else {
            Landed::After
        };
        landed[when as usize] += 1;
        if when == Landed::During {
            for tool in &tools {
                *in_tool.entry(tool.clone()).or_insert(0usize) += 1;
            }
        }
        let holds = Snapshot::take(&ns, backend).effective;
        let context = || {
            format!(
                "{backend} run {runs} (seed {seed}): killed {} {delay:?} after its start, {when:?} the apply \
                 of {} over {} (running: {tools:?})",
                if whole_group { "the group" } else { "the child alone" },
                ["A", "B"][to],
                ["A", "B"][from],
            )
        };
        if holds != effective[0] && holds != effective[1] {
            panic!(
                "{}: the kernel holds neither A nor B:\n{}\nchild output:\n{out}\n{err}",
                context(),
                first_difference(&holds, &effective[from], &effective[to]),
            );
        }
        if when == Landed::After {
            assert_eq!(holds, effective[to], "{}: applied, yet not B", context());
        }
        if when == Landed::Before {
            assert_eq!(
                holds,
                effective[from],
                "{}: killed before applying, yet not A",
                context()
            );
        }
        // The agent starts again and enforces B.
        let (applying, took) = apply_fully(&ns, backend, &files[to]);
        startup.push(applying);
        apply.push(took);
        let converged = Snapshot::take(&ns, backend);
        assert_eq!(
            converged.effective,
            effective[to],
            "{}: the restarted apply did not converge",
            context()
        );
        assert!(
            converged.full == full[to],
            "{}: the restarted apply left something of the interrupted one:\n{}",
            context(),
            first_difference(&converged.full, &full[to], &full[to]),
        );
        runs += 1;
    }
    println!(
        "{backend}: {runs} SIGKILLs (seed {seed}): {} before the apply, {} during ({in_tool:?} \
         while a tool ran), {} after; each left A or B, each restart converged; {:.1} s",
        landed[0],
        landed[1],
        landed[2],
        test_started.elapsed().as_secs_f64()
    );
    assert!(
        landed[1] >= MIN_MID_APPLY,
        "{backend}: only {} of {runs} kills landed mid-apply (seed {seed}); make the apply bigger",
        landed[1]
    );
}

/// The first line where `holds` differs from the nearer of `a` and `b`.
fn first_difference(holds: &str, a: &str, b: &str) -> String {
    let describe = |other: &str, name: &str| {
        let (h, o): (Vec<&str>, Vec<&str>) = (holds.lines().collect(), other.lines().collect());
        let at = h
            .iter()
            .zip(&o)
            .position(|(x, y)| x != y)
            .unwrap_or(h.len().min(o.len()));
        format!(
            "against {name}, line {at}: kernel `{}`, {name} `{}` ({} vs {} lines)",
            h.get(at).unwrap_or(&"<end>"),
            o.get(at).unwrap_or(&"<end>"),
            h.len(),
            o.len()
        )
    };
    format!("{}\n{}", describe(a, "old"), describe(b, "new"))
}
