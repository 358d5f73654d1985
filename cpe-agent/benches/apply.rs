//! Apply time for 10,000 timed 5-tuple set elements, side by side in one run:
//! the agent's nftables backend, raw `nft -f` of the same script, the agent's
//! iptables backend, and one `iptables` process per rule as the 2013 script
//! did (at 1,000 and 5,000 rules). Medians of several runs.
//!
//! Needs root: it works in a network namespace it creates and deletes.
//! Run: `cargo bench -p isdf-agent --bench apply`

use std::process::Command;
use std::time::{Duration, Instant};

use isdf_agent::backend::iptables::IptablesBackend;
use isdf_agent::backend::nft::{self, NftBackend};
use isdf_agent::backend::FirewallBackend;
use isdf_api::{
    Action, Chain, ElementValue, FlowPattern, Match, PortRange, Prefix, Protocol, Rule, Set,
    SetElement, SetKey, SetName,
};

const RUNS: usize = 5;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(status.success(), "{args:?}");
}

fn host(a: u32) -> Prefix {
    Prefix::parse(&std::net::Ipv4Addr::from(a).to_string()).unwrap()
}

/// `count` distinct TCP 5-tuples, each blocked for an hour.
fn timed_five_tuples(count: usize, now: i64) -> isdf_api::Firewall {
    let elements = (0..count as u32)
        .map(|i| SetElement {
            value: ElementValue::Flow(FlowPattern {
                protocol: Some(Protocol::Tcp),
                src: host(0xC000_0200 + (i % 200)),
                sport: PortRange::single(20_000 + (i % 40_000) as u16),
                dst: host(0xC633_6400 + (i / 200)),
                dport: PortRange::single(443),
            }),
            expires_at: Some(now + 3600),
        })
        .collect();
    let name = SetName::parse("flow_drop_v4").unwrap();
    isdf_api::Firewall {
        sets: vec![Set {
            name: name.clone(),
            key: SetKey::Ipv4Flow,
            elements,
        }],
        rules: vec![Rule {
            id: SetName::parse("flow-drop-v4").unwrap(),
            chain: Chain::Forward,
            matches: Match {
                flow_in_set: Some(name),
                ..Match::default()
            },
            action: Action::Drop,
            add_endpoints_to: None,
        }],
        ..isdf_api::Firewall::default()
    }
}

fn time(mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// One `iptables -A` process per rule, as the 2013 blog script did.
fn iptables_per_rule(rules: usize) -> Duration {
    sh(&["iptables", "-w", "-F", "FORWARD"]);
    let elapsed = time(|| {
        for i in 0..rules as u32 {
            let src = std::net::Ipv4Addr::from(0xC000_0200 + (i % 200)).to_string();
            let dst = std::net::Ipv4Addr::from(0xC633_6400 + (i / 200)).to_string();
            let sport = (20_000 + i % 40_000).to_string();
            sh(&[
                "iptables", "-w", "-A", "FORWARD", "-p", "tcp", "-s", &src, "--sport", &sport,
                "-d", &dst, "--dport", "443", "-j", "DROP",
            ]);
        }
    });
    sh(&["iptables", "-w", "-F", "FORWARD"]);
    elapsed
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let ns = format!("isdf-bench-{}", std::process::id());
    sh(&["ip", "netns", "add", &ns]);
    let ns_for_thread = ns.clone();
    let rows = std::thread::spawn(move || {
        enter(&ns_for_thread);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let firewall = timed_five_tuples(10_000, now);
        let now_ms = now * 1000;
        let script = nft::plan(&firewall, now_ms).expect("the benchmark config plans");
        let script_file = std::env::temp_dir().join(format!("{ns_for_thread}.nft"));
        std::fs::write(&script_file, &script).unwrap();

        let mut nft_backend = NftBackend::new();
        let mut ipt_backend = IptablesBackend::new();
        let (mut agent, mut agent_verify, mut raw, mut ipt) = (vec![], vec![], vec![], vec![]);
        for _ in 0..RUNS {
            raw.push(time(|| sh(&["nft", "-f", script_file.to_str().unwrap()])));
            agent.push(time(|| nft_backend.apply(&firewall, now_ms).unwrap()));
            agent_verify.push(time(|| {
                nft_backend.apply(&firewall, now_ms).unwrap();
                nft_backend.verify(&firewall, now_ms).unwrap();
            }));
        }
        nft_backend.remove().unwrap();
        for _ in 0..RUNS {
            ipt.push(time(|| ipt_backend.apply(&firewall, now_ms).unwrap()));
        }
        ipt_backend.remove().unwrap();
        let mut agent_at = |count: usize| {
            let smaller = timed_five_tuples(count, now);
            let took = median(
                (0..RUNS)
                    .map(|_| time(|| nft_backend.apply(&smaller, now_ms).unwrap()))
                    .collect(),
            );
            nft_backend.remove().unwrap();
            took
        };
        let (agent_1k, agent_5k) = (agent_at(1_000), agent_at(5_000));
        let per_rule_1k = median((0..3).map(|_| iptables_per_rule(1_000)).collect());
        let per_rule_5k = iptables_per_rule(5_000);
        let _ = std::fs::remove_file(&script_file);
        let raw = median(raw);
        vec![
            (
                "raw `nft -f` of the planned script, 10,000 elements".to_owned(),
                raw,
            ),
            (
                "agent nftables apply (plan + `nft -c` + `nft -f`), 10,000 elements".to_owned(),
                median(agent),
            ),
            (
                "agent nftables apply + verify, 10,000 elements".to_owned(),
                median(agent_verify),
            ),
            (
                "agent iptables+ipset apply, 10,000 elements".to_owned(),
                median(ipt),
            ),
            ("agent nftables apply, 1,000 elements".to_owned(), agent_1k),
            (
                "one `iptables` process per rule, 1,000 rules".to_owned(),
                per_rule_1k,
            ),
            ("agent nftables apply, 5,000 elements".to_owned(), agent_5k),
            (
                "one `iptables` process per rule, 5,000 rules".to_owned(),
                per_rule_5k,
            ),
        ]
    })
    .join();
    sh(&["ip", "netns", "del", &ns]);
    let rows = rows.expect("benchmark thread");
    let raw = rows[0].1;
    println!("| what | median | vs raw `nft -f` |\n|---|---:|---:|");
    for (what, took) in rows {
        println!(
            "| {what} | {:.3} s | {:.2}x |",
            took.as_secs_f64(),
            took.as_secs_f64() / raw.as_secs_f64()
        );
    }
}
