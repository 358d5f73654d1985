//! The pay-per-site primitives of the nftables backend against the real
//! kernel, in a LAN host — router — WAN host topology of namespaces: sets the
//! resolver fills keep what it added when the ruleset is replaced, a rule
//! with `until` stops matching at that second with no agent involved, and a
//! prerouting redirect sends the LAN's HTTP to a port on the router.
//!
//! The backend library runs in the router namespace (`Netns::enter`); set
//! elements are added with `nft add element`, as dnsmasq's `nftset` does.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use isdf_agent::backend::nft::NftBackend;
use isdf_agent::backend::{FirewallBackend, Interfaces};
use isdf_api::Firewall;

use crate::netns::{Netns, Topology, WAN_HOST};

/// Addresses of a gated site and of another one, both on the WAN host.
const GATED: &str = "203.0.113.7";
const OPEN: &str = "203.0.113.8";
/// Added with a timeout, as a resolver with timeouts would.
const GATED_TIMED: &str = "203.0.113.10";
/// In the config's own elements of the DNS-filled set.
const CONFIGURED: &str = "203.0.113.9";

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// The router's interfaces in `Topology`.
fn interfaces() -> Interfaces {
    Interfaces {
        lan: vec!["lan".into()],
        wan: vec!["wan".into()],
    }
}

/// A topology whose WAN host also answers for the site addresses.
fn site_topology(tag: &str) -> Topology {
    let topo = Topology::create(tag);
    for addr in [GATED, OPEN, GATED_TIMED, CONFIGURED] {
        topo.wan
            .run("ip", &["addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
    }
    topo.router
        .run("ip", &["route", "add", "203.0.113.0/24", "via", WAN_HOST]);
    topo
}

/// Applies `firewall` with the backend in the router namespace and checks
/// the kernel holds it, as the agent does.
fn apply(topo: &Topology, firewall: &Firewall, now_ms: i64) {
    let firewall = firewall.clone();
    topo.router
        .enter(move || -> anyhow::Result<()> {
            let mut backend = NftBackend::with_interfaces(interfaces());
            backend.apply(&firewall, now_ms)?;
            backend.verify(&firewall, now_ms)
        })
        .unwrap_or_else(|e| panic!("apply and verify: {e:#}"));
}

/// A TCP server in a namespace that greets every connection with its tag
/// and a newline, so a client knows which server it reached. Stopped (and
/// its thread joined) on drop.
struct Greeter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Greeter {
    fn start(ns: &Netns, port: u16, tag: &'static str) -> Self {
        // `[::]` takes IPv4 too (Linux's default dual-stack sockets).
        let listener = ns.enter(move || TcpListener::bind(("::", port)).expect("bind greeter"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.write_all(format!("{tag}\n").as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        });
        Greeter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a TCP client got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// The tag of the server that answered.
    Greeting(String),
    /// A reset (our `reject`) at once.
    Refused,
    /// Nothing in time, or another error.
    Nothing(String),
}

/// Connects from `ns` to `addr` and reads the greeting.
fn connect(ns: &Netns, addr: SocketAddr) -> Answer {
    ns.enter(move || {
        let limit = Duration::from_millis(800);
        match TcpStream::connect_timeout(&addr, limit) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(limit));
                let mut line = String::new();
                match BufReader::new(stream).read_line(&mut line) {
                    Ok(n) if n > 0 => Answer::Greeting(line.trim().to_owned()),
                    other => Answer::Nothing(format!("no greeting: {other:?}")),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Answer::Refused,
            Err(e) => Answer::Nothing(e.to_string()),
        }
    })
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Polls `ready` every 20 ms until it holds; fails after `limit`.
fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts a connection to `to` is refused, and at once (a reset, not a
/// timeout).
fn assert_refused_at_once(topo: &Topology, to: SocketAddr) {
    let started = Instant::now();
    assert_eq!(connect(&topo.lan, to), Answer::Refused, "{to}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{to}: refused only after {:?}",
        started.elapsed()
    );
}

/// A site gated by a DNS-filled set pair: TCP to its addresses is rejected.
/// `extra` rules go in front of the gate.
fn gated_firewall(extra: serde_json::Value) -> Firewall {
    let mut rules = extra.as_array().cloned().unwrap_or_default();
    rules.push(serde_json::json!({"id": "gate", "chain": "forward",
        "match": {"dst_in_set": "site_v4", "protocol": "tcp"}, "action": "reject"}));
    serde_json::from_value(serde_json::json!({
        "sets": [
            {"name": "site_v4", "key": "ipv4-addr", "elements": [{"addr": CONFIGURED}]},
            {"name": "site_v6", "key": "ipv6-addr"}
        ],
        "rules": rules,
        "dns": {"max_ttl_secs": 30, "fill_sets": [
            {"domains": ["video.test"], "ipv4_set": "site_v4", "ipv6_set": "site_v6"}]}
    }))
    .unwrap()
}

/// One element of a listed set: address, seconds left, comment.
type Listed = (String, Option<u64>, Option<String>);

fn listed_elements(topo: &Topology, set: &str) -> Vec<Listed> {
    let out = topo
        .router
        .run("nft", &["-j", "list", "set", "inet", "isdf", set]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["nftables"][1]["set"]["elem"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| match e.get("elem") {
            Some(d) => (
                d["val"].as_str().unwrap().to_owned(),
                d["expires"].as_u64(),
                d["comment"].as_str().map(str::to_owned),
            ),
            None => (e.as_str().unwrap().to_owned(), None, None),
        })
        .collect()
}

#[test]
fn dns_filled_elements_survive_a_replacement_and_still_gate() {
    let topo = site_topology("dnsa");
    let _server = Greeter::start(&topo.wan, 8080, "wan");
    apply(&topo, &gated_firewall(serde_json::json!([])), now_ms());
    // The set is still empty of resolver answers: the site is open (this
    // also waits for the neighbours to be resolved).
    wait_for("the site to be reachable", Duration::from_secs(10), || {
        connect(&topo.lan, addr(GATED, 8080)) == Answer::Greeting("wan".into())
    });
    assert_refused_at_once(&topo, addr(CONFIGURED, 8080));

    // The resolver adds an answer, one without and one with a timeout.
    for element in [
        format!("{{ {GATED} }}"),
        format!("{{ {GATED_TIMED} timeout 600s }}"),
    ] {
        topo.router.run(
            "nft",
            &["add", "element", "inet", "isdf", "site_v4", &element],
        );
    }
    assert_refused_at_once(&topo, addr(GATED, 8080));

    // A new config (one more rule) replaces the whole table.
    let changed = gated_firewall(serde_json::json!([{"id": "count-lan", "chain": "forward",
        "match": {"in_interface": "lan"}, "action": "count"}]));
    apply(&topo, &changed, now_ms());

    let elements = listed_elements(&topo, "site_v4");
    let find = |a: &str| {
        let found: Vec<&Listed> = elements.iter().filter(|e| e.0 == a).collect();
        assert_eq!(found.len(), 1, "{a} once in {elements:?}");
        found[0].clone()
    };
    assert_eq!(find(GATED), (GATED.to_owned(), None, None));
    let (_, left, comment) = find(GATED_TIMED);
    assert!(
        left.is_some_and(|s| (590..=600).contains(&s)),
        "the timeout keeps running: {left:?}"
    );
    assert_eq!(comment, None);
    assert_eq!(find(CONFIGURED).2.as_deref(), Some("config"));

    // The gate still holds for what the resolver added, and only for that.
    assert_refused_at_once(&topo, addr(GATED, 8080));
    assert_refused_at_once(&topo, addr(GATED_TIMED, 8080));
    assert_eq!(
        connect(&topo.lan, addr(OPEN, 8080)),
        Answer::Greeting("wan".into())
    );
    let counters = topo.router.enter(|| {
        NftBackend::with_interfaces(interfaces())
            .counters()
            .unwrap()
    });
    assert!(
        counters
            .iter()
            .any(|c| c.rule_id == "count-lan" && c.packets > 0),
        "in_interface lan matched the LAN's packets: {counters:?}"
    );

    // A third apply carries them again (what was carried is the resolver's,
    // not the config's).
    apply(&topo, &changed, now_ms());
    assert_eq!(listed_elements(&topo, "site_v4").len(), 3);
    assert_refused_at_once(&topo, addr(GATED, 8080));
}

#[test]
fn until_ends_a_rule_in_the_kernel_without_a_reapply() {
    let topo = site_topology("dnsb");
    let _server = Greeter::start(&topo.wan, 8080, "wan");
    let now = now_ms();
    // Two to three seconds from now, on a whole second.
    let until = now.div_euclid(1000) + 3;
    let firewall = gated_firewall(serde_json::json!([{"id": "paid", "chain": "forward",
        "match": {"dst_in_set": "site_v4", "until": until}, "action": "accept"}]));
    apply(&topo, &firewall, now);
    topo.router.run(
        "nft",
        &[
            "add",
            "element",
            "inet",
            "isdf",
            "site_v4",
            &format!("{{ {GATED} }}"),
        ],
    );
    let next = topo.router.enter({
        let firewall = firewall.clone();
        move || NftBackend::with_interfaces(interfaces()).next_reapply(&firewall, now)
    });
    assert_eq!(next, Some(until), "the agent re-plans at until");

    // Paid: the site works until `until`.
    let until_ms = until * 1000;
    wait_for("the paid site to work", Duration::from_secs(10), || {
        assert!(now_ms() < until_ms - 100, "never reached before until");
        connect(&topo.lan, addr(GATED, 8080)) == Answer::Greeting("wan".into())
    });

    // Then refused within a second of `until`, with nothing re-applied.
    loop {
        let answer = connect(&topo.lan, addr(GATED, 8080));
        let at = now_ms();
        match answer {
            Answer::Refused => {
                assert!(at >= until_ms, "refused {} ms early", until_ms - at);
                assert!(
                    at < until_ms + 1000,
                    "refused {} ms after until",
                    at - until_ms
                );
                break;
            }
            Answer::Greeting(_) => assert!(
                at < until_ms + 1000,
                "still open {} ms after until",
                at - until_ms
            ),
            Answer::Nothing(why) => panic!("no answer: {why}"),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let forward = topo
        .router
        .run("nft", &["list", "chain", "inet", "isdf", "forward"]);
    assert!(
        forward.contains("comment \"paid\""),
        "the kernel alone stopped matching: {forward}"
    );
    // The agent's drift check does not mistake the ended rule for drift.
    topo.router
        .enter(move || NftBackend::with_interfaces(interfaces()).verify(&firewall, now_ms()))
        .expect("verify after until");
}

#[test]
fn lan_http_is_redirected_to_the_router_and_wan_traffic_is_not() {
    let topo = Topology::create("dnsc");
    let _wan = Greeter::start(&topo.wan, 80, "wan");
    let _lan = Greeter::start(&topo.lan, 80, "lan");
    let _portal = Greeter::start(&topo.router, 8042, "router");
    let wan_v4 = addr(WAN_HOST, 80);
    let wan_v6 = addr("2001:db8:2::2", 80);
    // Before: the LAN reaches the WAN servers (and neighbours are resolved).
    for to in [wan_v4, wan_v6] {
        wait_for(&format!("{to} to answer"), Duration::from_secs(10), || {
            connect(&topo.lan, to) == Answer::Greeting("wan".into())
        });
    }
    let firewall: Firewall = serde_json::from_value(serde_json::json!({"rules": [
        {"id": "portal-http", "chain": "prerouting",
         "match": {"protocol": "tcp", "dport": 80, "in_interface": "lan"},
         "action": {"redirect": {"port": 8042}}}
    ]}))
    .unwrap();
    apply(&topo, &firewall, now_ms());

    for to in [wan_v4, wan_v6] {
        assert_eq!(
            connect(&topo.lan, to),
            Answer::Greeting("router".into()),
            "{to} from the LAN goes to the router's port 8042"
        );
    }
    // Another port is not redirected.
    let _other = Greeter::start(&topo.wan, 8080, "wan");
    assert_eq!(
        connect(&topo.lan, addr(WAN_HOST, 8080)),
        Answer::Greeting("wan".into())
    );
    // Port 80 coming in from the WAN side is routed to the LAN host.
    for to in [addr("192.0.2.2", 80), addr("2001:db8:1::2", 80)] {
        wait_for(
            &format!("{to} to answer from the WAN"),
            Duration::from_secs(10),
            || connect(&topo.wan, to) == Answer::Greeting("lan".into()),
        );
    }
    let counters = topo.router.enter(|| {
        NftBackend::with_interfaces(interfaces())
            .counters()
            .unwrap()
    });
    assert!(
        counters
            .iter()
            .any(|c| c.rule_id == "portal-http" && c.packets >= 2),
        "the redirect counts: {counters:?}"
    );
}
