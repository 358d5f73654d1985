//! Pay-per-site from the router's start (issue 21): the controller resolves
//! the catalog's names itself (against the WAN side's DNS server) and ships
//! the answers in the config, so a router that just started, whose
//! resolver was never asked for the site, gates a hard-coded address of it
//! over HTTP (to the portal), HTTPS (reset) and QUIC (dropped), on IPv4
//! and IPv6, and after a lookup through a DNS-over-HTTPS server on no list;
//! an ordinary site at its own address still works.
//!
//! And gated by the name the flow carries (issue 21, part 1): both sites
//! served at one address that no DNS answer names (a CDN's), where the gated
//! one is gated over HTTP, HTTPS and QUIC (a real QUIC client) and the
//! ordinary one works by its name, on IPv4 and IPv6.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use isdf_controller::cluster::site_resolution::SiteResolution;

use crate::harness::{blocking, in_wan, AgentProcess};
use crate::netns::Topology;
use crate::pay_per_site::{
    curl, quic_answers, Shop, CDN_V4, CDN_V6, NEWS_V4, NEWS_V6, TLS_RESET, UNLISTED_DOH_V4,
    UPSTREAM, VIDEO_V4, VIDEO_V6,
};

#[test]
fn a_hard_coded_address_is_gated_right_after_the_router_starts() {
    in_wan("ppb", scenario);
}

async fn scenario(topo: Arc<Topology>, work: PathBuf) {
    let mut shop = Shop::open_with(&topo, &work, |options| {
        options.site_resolution = SiteResolution {
            resolver: Some(format!("{UPSTREAM}:53").parse().unwrap()),
            every: Duration::from_secs(1),
            keep_for: Duration::from_secs(3600),
        };
    })
    .await;
    let (stage, site) = (&shop.stage, shop.site_id);
    let op = &stage.operator;
    // The controller's answers reach the router's config and are applied.
    let config_path = format!("/api/v1/devices/{}/config", stage.device);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let version = loop {
        let config = op.get(&config_path).await;
        let sets = config["config"]["firewall"]["sets"].to_string();
        if sets.contains(VIDEO_V4) && sets.contains(VIDEO_V6) {
            break config["version"].as_u64().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the controller's answers never reached the config: {sets}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    op.wait_applied(&stage.device, version).await;

    // A power cut: the agent and its dnsmasq gone, the kernel's table too.
    shop.agent.take().unwrap().kill();
    let pid_file = work.join("agent/state/dnsmasq/dnsmasq.pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status();
    }
    topo.router.run("nft", &["delete", "table", "inet", "isdf"]);
    // The router starts: the agent enforces its last good config.
    let agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
    let (waiting, set) = (topo.clone(), format!("pps{site}_v4"));
    blocking(move || {
        crate::harness::wait_until("the table is back", Duration::from_secs(20), || {
            let listed = waiting
                .router
                .exec("nft", &["list", "set", "inet", "isdf", &set]);
            listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains(VIDEO_V4)
        })
    })
    .await;

    let portal_prefix = format!(
        "{}/p/{}/{site}?sig=",
        stage.controller.portal_url, stage.device
    );
    let (topo2, ca, prefix) = (topo.clone(), shop.ca.clone(), portal_prefix.clone());
    blocking(move || {
        let (lan, portal_prefix) = (&topo2.lan, prefix);
        for (video, news) in [(VIDEO_V4, NEWS_V4), (VIDEO_V6, NEWS_V6)] {
            let literal = |ip: &str| {
                if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_owned()
                }
            };
            let resolve =
                |name: &str, port: u16, ip: &str| format!("{name}:{port}:{}", literal(ip));
            // No LAN host asked the router for video.test: the address is
            // hard-coded.
            // The kernel gates at once; the portal responder answers once
            // the agent started it: until then the request fails, and it
            // never reaches the site.
            let started = std::time::Instant::now();
            let http = loop {
                let http = curl(
                    lan,
                    &ca,
                    &[
                        "--resolve",
                        &resolve("video.test", 80, video),
                        "http://video.test/",
                    ],
                );
                assert_ne!(
                    http.body, "site video.test",
                    "{video}: HTTP reached the gated site"
                );
                if http.status == 302 || started.elapsed() > Duration::from_secs(15) {
                    break http;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            assert_eq!(
                http.status, 302,
                "{video}: HTTP goes to the portal (exit {})",
                http.exit
            );
            assert!(
                http.location.starts_with(&portal_prefix),
                "{video}: {}",
                http.location
            );
            let https = curl(
                lan,
                &ca,
                &[
                    "--resolve",
                    &resolve("video.test", 443, video),
                    "https://video.test/",
                ],
            );
            assert_eq!(
                https.exit, TLS_RESET,
                "{video}: HTTPS is reset in its handshake, got exit {}",
                https.exit
            );
            assert!(
                !quic_answers(lan, &ca, "video.test", video),
                "{video}: QUIC is dropped"
            );
            // The ordinary site at its own address works.
            let ordinary = curl(
                lan,
                &ca,
                &[
                    "--resolve",
                    &resolve("news.test", 443, news),
                    "https://news.test/",
                ],
            );
            assert_eq!(
                (ordinary.status, ordinary.body.as_str()),
                (200, "site news.test"),
                "{news}"
            );
            assert!(
                quic_answers(lan, &ca, "news.test", news),
                "{news}: QUIC passes"
            );
        }
        // DNS over HTTPS through a server on no list: it answers (an
        // ordinary site loads by it), and the gated site stays gated.
        let doh = format!("https://{UNLISTED_DOH_V4}/dns-query");
        for family in ["-4", "-6"] {
            let ordinary = curl(lan, &ca, &[family, "--doh-url", &doh, "https://news.test/"]);
            assert_eq!(
                (ordinary.status, ordinary.body.as_str()),
                (200, "site news.test"),
                "{family} news.test through the unlisted DoH server (exit {})",
                ordinary.exit
            );
            let https = curl(
                lan,
                &ca,
                &[family, "--doh-url", &doh, "https://video.test/"],
            );
            assert_eq!(
                https.exit, TLS_RESET,
                "{family} HTTPS after a DoH lookup is reset in its handshake, got exit {}",
                https.exit
            );
            let http = curl(lan, &ca, &[family, "--doh-url", &doh, "http://video.test/"]);
            assert_eq!(
                http.status, 302,
                "{family} HTTP after a DoH lookup goes to the portal"
            );
        }
    })
    .await;
    let (topo2, ca) = (topo.clone(), shop.ca.clone());
    blocking(move || one_cdn_address_for_both_sites(&topo2, &ca, site, &portal_prefix)).await;
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Two sites at one address (a CDN's) that DNS names for the ordinary one
/// only (`shop.test`): each flow is judged by the name it carries. The gated
/// site (catalog id `site`) is gated over HTTP, HTTPS and QUIC there; the
/// ordinary one works over all three, before and after the gated site's
/// flows taught the router the address. A flow that names nothing there
/// (TLS without SNI) is judged by the address, as learned; and the ordinary
/// name put in front of the gated site's own address (domain fronting) does
/// not resolve there, so it is the gated site's flow.
fn one_cdn_address_for_both_sites(topo: &Topology, ca: &Path, site: i64, portal_prefix: &str) {
    let lan = &topo.lan;
    let literal = |ip: &str| {
        if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        }
    };
    for (cdn, video) in [(CDN_V4, VIDEO_V4), (CDN_V6, VIDEO_V6)] {
        let fetch = |name: &str, scheme: &str, port: u16| {
            let at = format!("{name}:{port}:{}", literal(cdn));
            curl(lan, ca, &["--resolve", &at, &format!("{scheme}://{name}/")])
        };
        let ordinary_works = |when: &str| {
            for (scheme, port) in [("http", 80), ("https", 443)] {
                let shop = fetch("shop.test", scheme, port);
                assert_eq!(
                    (shop.status, shop.body.as_str()),
                    (200, "site shop.test"),
                    "{cdn} {scheme} {when}: the ordinary site works by its name (exit {})",
                    shop.exit
                );
            }
            assert!(
                quic_answers(lan, ca, "shop.test", cdn),
                "{cdn} QUIC {when}: the ordinary site works by its name"
            );
        };
        ordinary_works("first");
        // First, while no flow has taught the router the address: the
        // ClientHello in the SYN (TCP Fast Open) is read, the SYN reset.
        let at = format!("video.test:443:{}", literal(cdn));
        let fast_open = ["--tcp-fastopen", "--resolve", &at, "https://video.test/"];
        let fast_open = curl(lan, ca, &fast_open);
        assert_ne!(
            fast_open.status, 200,
            "{cdn}: HTTPS with the ClientHello in the SYN is gated (exit {})",
            fast_open.exit
        );
        let at = format!("shop.test:443:{}", literal(cdn));
        let ordinary = curl(
            lan,
            ca,
            &["--tcp-fastopen", "--resolve", &at, "https://shop.test/"],
        );
        assert_eq!(
            ordinary.status, 200,
            "{cdn}: the ordinary site with TCP Fast Open works (exit {})",
            ordinary.exit
        );
        let http = fetch("video.test", "http", 80);
        assert_eq!(
            (http.status, http.location.starts_with(portal_prefix)),
            (302, true),
            "{cdn}: HTTP to the gated site goes to its portal page ({} {})",
            http.status,
            http.location
        );
        let https = fetch("video.test", "https", 443);
        assert_eq!(
            https.exit, TLS_RESET,
            "{cdn}: HTTPS to the gated site is reset"
        );
        assert!(
            !quic_answers(lan, ca, "video.test", cdn),
            "{cdn}: QUIC to the gated site is dropped"
        );
        // The gated site's flows taught the router the address.
        let family = if cdn.contains(':') { "v6" } else { "v4" };
        let set = format!("pps{site}_{family}");
        let listed = topo
            .router
            .run("nft", &["list", "set", "inet", "isdf", &set]);
        assert!(listed.contains(cdn), "{cdn} learned into {set}: {listed}");
        ordinary_works("after the address was learned");
        // No name to read: judged by the address, which is the gated site's.
        let nameless = curl(
            lan,
            ca,
            &["--insecure", &format!("https://{}/", literal(cdn))],
        );
        assert_eq!(
            nameless.exit, TLS_RESET,
            "{cdn}: TLS without SNI is gated by the address (status {})",
            nameless.status
        );
        // The ordinary name in front of the gated site's own address.
        let fronted = curl(
            lan,
            ca,
            &[
                "--insecure",
                "--resolve",
                &format!("shop.test:443:{}", literal(video)),
                "-H",
                "Host: video.test",
                "https://shop.test/",
            ],
        );
        assert_eq!(
            fronted.exit, TLS_RESET,
            "{video}: shop.test's name in front of the gated address is gated ({} {})",
            fronted.status, fronted.body
        );
        assert!(
            !quic_answers(lan, ca, "shop.test", video),
            "{video}: QUIC naming shop.test at the gated address is dropped"
        );
    }
}
