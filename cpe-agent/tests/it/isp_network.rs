//! The ISP network the VPN and rollout tests share: a bridge with the
//! controller's address, routers on it (directly or behind a NAT that lets
//! in only answers), each with a LAN host, all in namespaces the test
//! creates; and an agent config for one of its routers.
//!
//! ```text
//!   a1h ─ a1 ─┐
//!   a2h ─ a2 ─┤
//!             ├─ br0 (isp: the controller, 203.0.113.1) ─ nat ─ a3 ─ a3h
//!   b1h ─ b1 ─┘
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::netns::Netns;

pub(crate) const ISP: &str = "203.0.113.1";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip -n <ns> <args>` (`args` split at spaces).
pub(crate) fn ip_in(ns: &Netns, args: &str) {
    let mut all = vec!["-n", ns.name.as_str()];
    all.extend(args.split(' '));
    ip(&all);
}

/// How a router reaches the ISP network.
#[derive(Clone, Copy)]
pub(crate) enum Wan {
    /// On the ISP bridge with this address (/24).
    Direct(&'static str),
    /// Behind the NAT, on its own inside link.
    BehindNat,
}

/// A router of the test: its WAN and, for a customer site, its LAN (the
/// /24 prefix; the router is .1, the LAN host .2).
pub(crate) struct SiteSpec {
    pub(crate) name: &'static str,
    pub(crate) wan: Wan,
    pub(crate) lan: Option<&'static str>,
}

/// A router namespace with its LAN host.
pub(crate) struct Site {
    pub(crate) name: &'static str,
    pub(crate) router: Netns,
    /// None for a relay (no LAN).
    host: Option<Netns>,
    /// The LAN host's address and the LAN prefix.
    pub(crate) host_addr: String,
    pub(crate) lan: &'static str,
}

impl Site {
    pub(crate) fn host(&self) -> &Netns {
        self.host.as_ref().expect("a site with a LAN")
    }
}

pub(crate) struct Network {
    pub(crate) isp: Netns,
    _nat: Netns,
    pub(crate) sites: Vec<Site>,
}

impl Network {
    pub(crate) fn site(&self, name: &str) -> &Site {
        self.sites.iter().find(|s| s.name == name).unwrap()
    }

    /// The ISP bridge (the controller at 203.0.113.1), a NAT on it at
    /// 203.0.113.254 that lets in only answers, and the routers.
    pub(crate) fn create(tag: &str, specs: &[SiteSpec]) -> Self {
        let tag = format!("isdf-{tag}-{}", std::process::id());
        let isp = Netns::create(format!("{tag}-isp"));
        let nat = Netns::create(format!("{tag}-nat"));
        ip_in(&isp, "link add br0 type bridge");
        ip_in(&isp, &format!("addr add {ISP}/24 dev br0"));
        ip_in(&isp, "link set br0 up");
        // Every router's WAN (and the NAT's outside) is a port of br0.
        let plug = |ns: &Netns, port: &str, addr: &str| {
            ip_in(
                &isp,
                &format!("link add {port} type veth peer name wan netns {}", ns.name),
            );
            ip_in(&isp, &format!("link set {port} master br0 up"));
            ip_in(ns, &format!("addr add {addr} dev wan"));
            ip_in(ns, "link set wan up");
        };
        plug(&nat, "p-nat", "203.0.113.254/24");
        nat.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        let mut sites = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let router = Netns::create(format!("{tag}-{}", spec.name));
            match spec.wan {
                Wan::Direct(addr) => plug(&router, &format!("p-{}", spec.name), addr),
                Wan::BehindNat => {
                    // 192.168.<index>.2, default via the NAT's .1.
                    let inside = format!("in-{}", spec.name);
                    ip_in(
                        &nat,
                        &format!(
                            "link add {inside} type veth peer name wan netns {}",
                            router.name
                        ),
                    );
                    ip_in(&nat, &format!("addr add 192.168.{index}.1/24 dev {inside}"));
                    ip_in(&nat, &format!("link set {inside} up"));
                    ip_in(&router, &format!("addr add 192.168.{index}.2/24 dev wan"));
                    ip_in(&router, "link set wan up");
                    ip_in(&router, &format!("route add default via 192.168.{index}.1"));
                }
            }
            router.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            let (host, host_addr) = match spec.lan {
                Some(lan) => {
                    let host = Netns::create(format!("{tag}-{}h", spec.name));
                    let base = lan.trim_end_matches(".0/24");
                    ip_in(
                        &router,
                        &format!("link add lan type veth peer name eth0 netns {}", host.name),
                    );
                    ip_in(&router, &format!("addr add {base}.1/24 dev lan"));
                    ip_in(&router, "link set lan up");
                    ip_in(&host, &format!("addr add {base}.2/24 dev eth0"));
                    ip_in(&host, "link set eth0 up");
                    ip_in(&host, &format!("route add default via {base}.1"));
                    (Some(host), format!("{base}.2"))
                }
                None => (None, String::new()),
            };
            sites.push(Site {
                name: spec.name,
                router,
                host,
                host_addr,
                lan: spec.lan.unwrap_or(""),
            });
        }
        // The NAT masquerades what leaves through its outside and lets in
        // only answers: nothing reaches a router behind it unasked.
        let rules = "table ip nat {\n chain outgoing {\n type nat hook postrouting priority 100;\n \
                     oifname \"wan\" masquerade\n }\n}\n\
                     table ip filter {\n chain through {\n type filter hook forward priority 0; policy drop;\n \
                     ct state established,related accept\n oifname \"wan\" accept\n }\n}\n";
        let out = Command::new("ip")
            .args(["netns", "exec", &nat.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(rules.as_bytes())?;
                child.wait_with_output()
            })
            .expect("nft in the NAT namespace");
        assert!(out.status.success(), "NAT rules");
        Network {
            isp,
            _nat: nat,
            sites,
        }
    }
}

/// Agent config for one router. No `control_socket`: every router of a
/// network runs on this one host, each with the default socket, `control.sock`
/// in its own state directory, so the tests with several agents show they
/// do not clash there.
pub(crate) fn agent_toml(dir: &Path, enrollment_url: &str, token: &str, ca_pem: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("enrollment-token"), token).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "enrollment_url = \"{enrollment_url}\"\nca_cert = \"{d}/ca.pem\"\n\
             enrollment_token_file = \"{d}/enrollment-token\"\nstate_dir = \"{d}/state\"\n\
             poll_wait_secs = 20\nmax_backoff_secs = 2\n\
             lan_interfaces = [\"lan\"]\nwan_interfaces = [\"wan\"]\n",
            d = dir.display()
        ),
    )
    .unwrap();
    path
}

/// A router of the network registered on the controller, its agent's files
/// written under the test's work directory.
pub(crate) struct Registered {
    pub(crate) name: &'static str,
    pub(crate) device: String,
    /// `<work>/<name>`: the agent's config, state and log.
    pub(crate) dir: PathBuf,
    pub(crate) config: PathBuf,
}

/// Starts the controller on the ISP address and registers every router of
/// `net`, `canary` labelled `canary=true`: the fleet the rollout tests run.
pub(crate) async fn isp_fleet(
    net: &Network,
    work: &Path,
    canary: &str,
) -> (
    isdf_controller::test_support::TestController,
    crate::harness::Operator,
    Vec<Registered>,
) {
    use isdf_controller::test_support::{TestController, TestControllerOptions};
    let mut options = TestControllerOptions::new(&work.join("controller"));
    options.device_listen = format!("{ISP}:0").parse().unwrap();
    options.device_tls_names = vec![ISP.to_owned()];
    let controller = TestController::start(options).await.expect("controller");
    let operator = crate::harness::Operator::new(&controller.api_url, &controller.operator_token);
    let mut routers = Vec::new();
    for site in &net.sites {
        let labels = if site.name == canary {
            serde_json::json!({"canary": "true"})
        } else {
            serde_json::json!({})
        };
        let created = operator
            .post(
                "/api/v1/devices",
                serde_json::json!({"name": site.name, "labels": labels}),
            )
            .await;
        let dir = work.join(site.name);
        let config = agent_toml(
            &dir,
            &controller.enrollment_url,
            created["enrollment_token"].as_str().unwrap(),
            created["ca_pem"].as_str().unwrap(),
        );
        routers.push(Registered {
            name: site.name,
            device: created["device"]["id"].as_str().unwrap().to_owned(),
            dir,
            config,
        });
    }
    (controller, operator, routers)
}
