//! The leader's resolution of the catalog's names, against a real dnsmasq
//! on loopback (the test's own resolver; tests never ask the machine's):
//! a site's addresses reach its routers' site sets as the config's own
//! elements; answers that do not change recompile nothing; a changed answer
//! adds the new addresses and keeps the old ones until they age out of the
//! keep window; a resolver that is down changes nothing.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use isdf_controller::cluster::site_resolution::{resolve_all, resolver};

use crate::support::{find_program, Harness};

/// A dnsmasq answering `addresses` for `video.example` and every name
/// under it, on a loopback port; killed on drop.
struct Dns {
    child: Child,
    addr: SocketAddr,
}

impl Dns {
    fn start(port: Option<u16>, addresses: &[&str]) -> Dns {
        let dnsmasq = find_program("dnsmasq")
            .or_else(|| find_program("/usr/sbin/dnsmasq"))
            .unwrap_or_else(|| "/usr/sbin/dnsmasq".into());
        assert!(
            dnsmasq.exists(),
            "dnsmasq (Debian package dnsmasq-base) is needed"
        );
        let port = port.unwrap_or_else(|| {
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let mut command = Command::new(dnsmasq);
        command
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
            ])
            .args([
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--pid-file=",
            ])
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for address in addresses {
            command.arg(format!("--address=/video.example/{address}"));
        }
        let child = command.spawn().expect("dnsmasq starts");
        let dns = Dns {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        // Bounded: until it answers on TCP (it listens on both).
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(dns.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq never listened on {}",
                dns.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        dns
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap() + chrono::Duration::minutes(minutes)
}

/// The elements of the router's site sets, v4 then v6.
async fn gated(h: &Harness, device: &str, site: i64) -> (Value, Value) {
    let config = h
        .get(&format!("/api/v1/devices/{device}/config"))
        .await
        .body;
    let set = |family: &str| {
        config["config"]["firewall"]["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == format!("pps{site}_{family}"))
            .map(|s| s["elements"].clone())
            .unwrap_or(Value::Null)
    };
    (set("v4"), set("v6"))
}

async fn wait_gated(h: &Harness, device: &str, site: i64, want: (Value, Value)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = gated(h, device, site).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sets never became {want:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn addrs(list: &[&str]) -> Value {
    Value::Array(list.iter().map(|a| json!({ "addr": a })).collect())
}

#[tokio::test]
async fn the_controller_resolves_the_catalog_and_routers_gate_the_answers_from_boot() {
    let h = Harness::start().await;
    let site = super::video_gated_everywhere(&h).await;
    let (device, _) = h.register("home", json!({})).await;
    assert_eq!(
        gated(&h, &device, site).await,
        (json!([]), json!([])),
        "nothing known yet"
    );

    let reconciler = h.controller.state.reconciler.clone();
    let keep = Duration::from_secs(3600);
    let dns = Dns::start(None, &["203.0.113.7", "2001:db8::7"]);
    let ask = resolver(Some(dns.addr)).unwrap();
    let changed = resolve_all(&reconciler, &ask, at(0), keep).await.unwrap();
    assert_eq!(changed, vec![site]);
    wait_gated(
        &h,
        &device,
        site,
        (addrs(&["203.0.113.7"]), addrs(&["2001:db8::7"])),
    )
    .await;

    // The same answers: nothing changes, no new config.
    let version = h.config_version(&device).await;
    assert!(resolve_all(&reconciler, &ask, at(10), keep)
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.config_version(&device).await, version);

    // The site moves: the new address is added, the old one kept a while.
    let port = dns.addr.port();
    drop(dns);
    let dns = Dns::start(Some(port), &["198.51.100.9"]);
    assert_eq!(
        resolve_all(&reconciler, &ask, at(20), keep).await.unwrap(),
        vec![site]
    );
    wait_gated(
        &h,
        &device,
        site,
        (
            addrs(&["198.51.100.9", "203.0.113.7"]),
            addrs(&["2001:db8::7"]),
        ),
    )
    .await;
    // Past the keep window, what was not seen again is forgotten.
    assert_eq!(
        resolve_all(&reconciler, &ask, at(120), keep).await.unwrap(),
        vec![site]
    );
    wait_gated(&h, &device, site, (addrs(&["198.51.100.9"]), json!([]))).await;

    // The resolver is down: what is known stays.
    drop(dns);
    assert!(resolve_all(&reconciler, &ask, at(300), keep)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        gated(&h, &device, site).await,
        (addrs(&["198.51.100.9"]), json!([]))
    );
    let rows: Vec<(String,)> = sqlx::query_as("SELECT host(address) FROM site_addresses")
        .fetch_all(&h.controller.state.pool)
        .await
        .unwrap();
    assert_eq!(rows, vec![("198.51.100.9".to_owned(),)]);
    // Operators see the lookups: four answered passes of two names, then
    // a failed one.
    let metrics = h.controller.state.metrics.encode();
    let count = |result: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("isdf_site_lookups_total{{result=\"{result}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("answered"), 8, "{metrics}");
    assert_eq!(count("failed"), 2, "{metrics}");
}
