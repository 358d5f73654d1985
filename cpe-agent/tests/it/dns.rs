//! The router's resolver with real dnsmasq: an upstream dnsmasq on the WAN
//! host, the agent's managed dnsmasq in the router namespace (driven
//! through `Dnsmasq` directly, from a thread in that namespace), `dig`
//! from the LAN host, the sets in the router's nft table. And the portal
//! redirect answering `curl` from the LAN host.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use isdf_agent::dns::{Dnsmasq, Resolver};
use isdf_agent::sys::settings::Settings;
use isdf_api::DnsPolicy;

use crate::harness::wait_until;
use crate::netns::{Netns, Topology};

/// The WAN host's resolver: the names the LAN host looks up, with a TTL of
/// an hour (what the router caps).
const UPSTREAM: &str = "\
port=53
listen-address=198.51.100.2
bind-interfaces
no-resolv
no-hosts
host-record=video.test,www.video.test,198.51.100.10,2001:db8:2::10,3600
keep-in-foreground
log-facility=-
pid-file=
";

/// A process in a namespace, killed (by its id) when dropped.
struct Process(Child);

impl Process {
    fn start(ns: &Netns, program: &str, args: &[&str], log: &Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        Process(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs dig in `ns` (one try, 2 s) and returns its output.
fn dig(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "dig", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The (TTL, address) of each answer record of `dig +noall +answer`.
fn answers(output: &str) -> Vec<(u32, String)> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [_, ttl, "IN", "A" | "AAAA", addr] => Some((ttl.parse().ok()?, addr.to_owned())),
                _ => None,
            }
        })
        .collect()
}

fn run(ns: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn policy(local_address: &str, max_ttl: u32) -> DnsPolicy {
    serde_json::from_value(serde_json::json!({
        "max_ttl_secs": max_ttl,
        "fill_sets": [{"domains": ["video.test"], "ipv4_set": "site_v4", "ipv6_set": "site_v6"}],
        "local_answers": [
            {"domain": "use-application-dns.net"},
            {"domain": "portal.isp.test", "addresses": [local_address]}
        ]
    }))
    .unwrap()
}

fn settings(dir: &Path, extra: &str) -> Settings {
    Settings::parse(&format!(
        "state_dir = {:?}\nlan_interfaces = [\"lan\"]\n{extra}",
        dir.join("state")
    ))
    .unwrap()
}

fn alive(pid: u32) -> bool {
    isdf_agent::sys::processes::process_runs(&pid.to_string())
}

/// The sets dnsmasq fills, as the nft backend lays out address sets today.
const SETS: &str = "table inet isdf {
    set site_v4 { type ipv4_addr; flags interval; }
    set site_v6 { type ipv6_addr; flags interval; }
}
";

#[test]
fn the_managed_dnsmasq_fills_sets_caps_ttls_and_answers_locally() {
    let topo = Arc::new(Topology::create("dns"));
    let work = tempfile::tempdir().unwrap();
    topo.wan
        .run("ip", &["addr", "add", "198.51.100.10/32", "dev", "eth0"]);
    topo.wan.run(
        "ip",
        &["addr", "add", "2001:db8:2::10/128", "dev", "eth0", "nodad"],
    );
    std::fs::write(work.path().join("upstream.conf"), UPSTREAM).unwrap();
    let conf = format!(
        "--conf-file={}",
        work.path().join("upstream.conf").display()
    );
    let _upstream = Process::start(
        &topo.wan,
        "dnsmasq",
        &[&conf],
        &work.path().join("upstream.log"),
    );
    let router = topo.router.name.clone();
    wait_until(
        "the upstream dnsmasq answers",
        Duration::from_secs(10),
        || dig(&router, &["@198.51.100.2", "+short", "video.test"]).contains("198.51.100.10"),
    );
    std::fs::write(work.path().join("sets.nft"), SETS).unwrap();
    topo.router.run(
        "nft",
        &["-f", &work.path().join("sets.nft").to_string_lossy()],
    );

    let settings = settings(work.path(), "dns_upstream = [\"198.51.100.2\"]\n");
    let t = topo.clone();
    topo.router.enter(move || {
        let lan = t.lan.name.as_str();
        let router = t.router.name.as_str();
        let mut dnsmasq = Dnsmasq::new(&settings);
        dnsmasq.apply(Some(&policy("192.0.2.1", 30))).unwrap();
        let first = dnsmasq.pid().expect("a managed dnsmasq runs");

        // The gated name resolves, over IPv4 and IPv6, with the TTL capped
        // although upstream said an hour...
        let a = answers(&dig(
            lan,
            &["@192.0.2.1", "+noall", "+answer", "www.video.test", "A"],
        ));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].1, "198.51.100.10");
        assert!(a[0].0 <= 30, "TTL {} above the cap", a[0].0);
        let aaaa = answers(&dig(
            lan,
            &["@2001:db8:1::1", "+noall", "+answer", "video.test", "AAAA"],
        ));
        assert_eq!(aaaa.len(), 1, "{aaaa:?}");
        assert_eq!(aaaa[0].1, "2001:db8:2::10");
        assert!(aaaa[0].0 <= 30, "TTL {} above the cap", aaaa[0].0);
        // ... also from dnsmasq's cache.
        let again = answers(&dig(
            lan,
            &["@192.0.2.1", "+noall", "+answer", "www.video.test", "A"],
        ));
        assert!(again[0].0 <= 30, "{again:?}");

        // ... and both addresses are in the firewall's sets.
        let v4 = run(router, "nft", &["list", "set", "inet", "isdf", "site_v4"]);
        assert!(v4.contains("198.51.100.10"), "{v4}");
        let v6 = run(router, "nft", &["list", "set", "inet", "isdf", "site_v6"]);
        assert!(v6.contains("2001:db8:2::10"), "{v6}");

        // Names the router answers itself.
        let nx = dig(lan, &["@192.0.2.1", "use-application-dns.net"]);
        assert!(nx.contains("status: NXDOMAIN"), "{nx}");
        let local = dig(lan, &["@192.0.2.1", "+short", "portal.isp.test"]);
        assert_eq!(local.trim(), "192.0.2.1");
        let no_v6 = dig(lan, &["@192.0.2.1", "portal.isp.test", "AAAA"]);
        assert!(
            no_v6.contains("status: NOERROR") && no_v6.contains("ANSWER: 0"),
            "other types are answered empty, not forwarded: {no_v6}"
        );

        // The same policy again: the running dnsmasq stays.
        dnsmasq.apply(Some(&policy("192.0.2.1", 30))).unwrap();
        assert_eq!(dnsmasq.pid(), Some(first), "not restarted for nothing");

        // A new policy: a new dnsmasq, and the new answers.
        dnsmasq.apply(Some(&policy("192.0.2.53", 10))).unwrap();
        let second = dnsmasq.pid().unwrap();
        assert_ne!(second, first);
        assert!(!alive(first), "the old dnsmasq is gone");
        let local = dig(lan, &["@192.0.2.1", "+short", "portal.isp.test"]);
        assert_eq!(local.trim(), "192.0.2.53");
        let a = answers(&dig(
            lan,
            &["@192.0.2.1", "+noall", "+answer", "video.test", "A"],
        ));
        assert!(a.len() == 1 && a[0].0 <= 10, "{a:?}");

        // A dnsmasq that died is started again by the periodic repair.
        run(router, "kill", &["-9", &second.to_string()]);
        wait_until("dnsmasq is gone", Duration::from_secs(5), || {
            dnsmasq.repair().is_ok() && dnsmasq.pid() != Some(second)
        });
        let local = dig(lan, &["@192.0.2.1", "+short", "portal.isp.test"]);
        assert_eq!(local.trim(), "192.0.2.53");

        // No policy: no dnsmasq.
        let third = dnsmasq.pid().unwrap();
        dnsmasq.apply(None).unwrap();
        assert_eq!(dnsmasq.pid(), None);
        assert!(!alive(third));
    });
}

#[test]
fn a_dnsmasq_that_cannot_start_names_the_reason_and_a_running_one_is_adopted() {
    let ns = Netns::create(format!("isdf-dnsfail-{}", std::process::id()));
    let work = tempfile::tempdir().unwrap();
    let settings = settings(
        work.path(),
        "dns_port = 5353\ndns_upstream = [\"192.0.2.9\"]\n",
    );
    ns.enter(move || {
        let taken = std::net::UdpSocket::bind("127.0.0.1:5353").unwrap();
        let mut dnsmasq = Dnsmasq::new(&settings);
        let e = format!(
            "{:#}",
            dnsmasq.apply(Some(&policy("192.0.2.1", 30))).unwrap_err()
        );
        assert!(
            e.contains("dnsmasq exited") && e.contains("Address already in use"),
            "{e}"
        );
        assert_eq!(dnsmasq.pid(), None);

        // The port is free again: the periodic repair starts it.
        drop(taken);
        dnsmasq.repair().unwrap();
        let running = dnsmasq.pid().unwrap();

        // The agent ends (or crashes): its dnsmasq keeps answering, and
        // the next agent adopts it rather than start another.
        drop(dnsmasq);
        assert!(alive(running), "dnsmasq outlives the agent");
        let mut next = Dnsmasq::new(&settings);
        next.repair().unwrap();
        assert!(
            alive(running),
            "nothing is decided before the policy is known"
        );
        next.apply(Some(&policy("192.0.2.1", 30))).unwrap();
        assert_eq!(next.pid(), Some(running), "adopted, not restarted");

        // A config dnsmasq refuses (here: a missing program for the check)
        // never stops the one that answers.
        let broken = Settings {
            dns_dnsmasq: "/nonexistent/dnsmasq".into(),
            ..settings.clone()
        };
        let mut refused = Dnsmasq::new(&broken);
        assert!(refused.apply(Some(&policy("192.0.2.53", 30))).is_err());
        assert!(alive(running), "still answering");

        // Another config replaces it; `apply(None)` (uninstall) ends it.
        next.apply(Some(&policy("192.0.2.53", 30))).unwrap();
        let replaced = next.pid().unwrap();
        assert_ne!(replaced, running);
        assert!(!alive(running), "the old dnsmasq ended");
        drop(next);
        let mut last = Dnsmasq::new(&settings);
        last.apply(None).unwrap();
        assert!(!alive(replaced), "uninstalling ends the running dnsmasq");
        assert_eq!(last.pid(), None);
    });
}

#[test]
fn conf_dir_mode_drives_the_system_dnsmasq() {
    let ns = Netns::create(format!("isdf-dnsdir-{}", std::process::id()));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // The "system" dnsmasq: a daemon reading the conf-dir, restarted by
    // the reload command, which also counts its runs.
    std::fs::create_dir(dir.join("conf.d")).unwrap();
    std::fs::write(
        dir.join("system.conf"),
        format!(
            "port=5353\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n\
             pid-file={0}/system.pid\nconf-dir={0}/conf.d\n",
            dir.display()
        ),
    )
    .unwrap();
    let reload = format!(
        "echo run >> {0}/reloads; [ -s {0}/system.pid ] && kill $(cat {0}/system.pid); \
         for i in $(seq 50); do case $(cut -d\\  -f3 /proc/$(cat {0}/system.pid)/stat 2>/dev/null) in ''|Z) break;; esac; sleep 0.05; done; \
         dnsmasq --conf-file={0}/system.conf",
        dir.display()
    );
    let settings = settings(
        dir,
        &format!(
            "dns_mode = \"conf-dir\"\ndns_port = 5353\ndns_conf_dir = {:?}\ndns_reload_command = [\"sh\", \"-c\", {reload:?}]\n",
            dir.join("conf.d")
        ),
    );
    let work_dir = dir.to_owned();
    let ns_name = ns.name.clone();
    ns.enter(move || {
        let dir = work_dir.as_path();
        let reloads = || {
            std::fs::read_to_string(dir.join("reloads"))
                .unwrap_or_default()
                .lines()
                .count()
        };
        let mut dnsmasq = Dnsmasq::new(&settings);
        dnsmasq.apply(Some(&policy("192.0.2.1", 30))).unwrap();
        assert_eq!(reloads(), 1);
        let local = dig(
            &ns_name,
            &["@127.0.0.1", "-p", "5353", "+short", "portal.isp.test"],
        );
        assert_eq!(local.trim(), "192.0.2.1");

        // The agent restarts: the file is the same and dnsmasq answers
        // with it, so nothing is reloaded.
        drop(dnsmasq);
        let mut dnsmasq = Dnsmasq::new(&settings);
        dnsmasq.apply(Some(&policy("192.0.2.1", 30))).unwrap();
        assert_eq!(reloads(), 1, "no reload for the config in force");

        dnsmasq.apply(Some(&policy("192.0.2.53", 30))).unwrap();
        assert_eq!(reloads(), 2);
        let local = dig(
            &ns_name,
            &["@127.0.0.1", "-p", "5353", "+short", "portal.isp.test"],
        );
        assert_eq!(local.trim(), "192.0.2.53");

        // Someone removed the file: the periodic repair puts it back.
        std::fs::remove_file(dir.join("conf.d/isdf.conf")).unwrap();
        dnsmasq.repair().unwrap();
        assert!(dir.join("conf.d/isdf.conf").exists());
        assert_eq!(reloads(), 3);

        dnsmasq.apply(None).unwrap();
        assert!(!dir.join("conf.d/isdf.conf").exists());
        assert_eq!(reloads(), 4);
        let gone = dig(&ns_name, &["@127.0.0.1", "-p", "5353", "portal.isp.test"]);
        assert!(!gone.contains("192.0.2.53"), "{gone}");
    });
    // The system dnsmasq is a daemon: end it by its pid file.
    let pid = std::fs::read_to_string(dir.join("system.pid")).unwrap();
    let pid = pid.trim();
    let _ = Command::new("kill").arg(pid).status();
    wait_until("the system dnsmasq ends", Duration::from_secs(5), || {
        !isdf_agent::sys::processes::process_runs(pid)
    });
}
