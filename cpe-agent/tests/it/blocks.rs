//! Timed flow blocks end to end: operator blocks through the controller and
//! local blocks through the agent's socket, against real traffic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::harness::{blocking, in_wan, serve_greeting, wait_until, wan, AgentProcess, Stage};
use crate::netns::Topology;

const ECHO_PORT: u16 = 9100;
const GREETING_PORT: u16 = 9102;

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An echo server: what an interactive session (SSH) looks like.
async fn serve_echo(port: u16) {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// A session from the LAN host that echoes a byte every 50 ms and records
/// when the last echo came back. Stops when `stop` is set (or after 60 s).
struct Session {
    last_echo: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
    /// Joined on drop: the thread holds the topology, whose namespaces are
    /// deleted only when the last holder lets go (before the process exits).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Session {
    fn start(topo: &Arc<Topology>) -> Self {
        let last_echo = Arc::new(Mutex::new(Instant::now()));
        let stop = Arc::new(AtomicBool::new(false));
        let (last, halt, topo) = (last_echo.clone(), stop.clone(), topo.clone());
        let thread = std::thread::spawn(move || {
            topo.lan.enter(move || {
                let mut stream =
                    TcpStream::connect_timeout(&wan(ECHO_PORT), Duration::from_secs(2)).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let started = Instant::now();
                while !halt.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    let mut byte = [0u8; 1];
                    if stream.write_all(b"x").is_ok() && stream.read_exact(&mut byte).is_ok() {
                        *last.lock().unwrap() = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        });
        Session {
            last_echo,
            stop,
            thread: Some(thread),
        }
    }

    fn last_echo(&self) -> Instant {
        *self.last_echo.lock().unwrap()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether a connection from the LAN host to the WAN greeting port works
/// now (short attempts, so the moment a block ends is seen within ~150 ms).
async fn greeting_works(topo: &Arc<Topology>, port: u16) -> bool {
    let topo = topo.clone();
    blocking(move || topo.lan.tcp_works(wan(port), Duration::from_millis(100))).await
}

/// Polls until the greeting port opens; returns the Unix ms it did.
async fn wait_open(topo: &Arc<Topology>, port: u16, deadline: Duration) -> i64 {
    let started = Instant::now();
    loop {
        if greeting_works(topo, port).await {
            return unix_ms();
        }
        assert!(started.elapsed() < deadline, "port {port} never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tracked_connections(topo: &Topology, port: u16) -> usize {
    let out = topo.router.exec(
        "conntrack",
        &["-L", "-p", "tcp", "--dport", &port.to_string()],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ESTABLISHED"))
        .count()
}

#[test]
fn operator_blocks_cut_established_flows_survive_a_crash_and_end_on_time() {
    in_wan("tbk", |topo, work| async move {
        serve_echo(ECHO_PORT).await;
        serve_greeting(GREETING_PORT).await;
        serve_greeting(crate::harness::OPEN_PORT).await;
        let stage = Stage::prepare(&work, None).await;
        let agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
        stage.operator.wait_applied(&stage.device, 1).await;

        // The router's own stateful firewall, as OpenWrt's fw4 has: it
        // tracks connections and accepts established ones early.
        topo.router.run(
            "nft",
            &["add table inet fw4; add chain inet fw4 forward { type filter hook forward priority 0; policy accept; }; add rule inet fw4 forward ct state established,related accept"],
        );
        let session = Session::start(&topo);
        wait_until("the session echoes", Duration::from_secs(5), || {
            session.last_echo().elapsed() < Duration::from_millis(100)
        });
        assert_eq!(tracked_connections(&topo, ECHO_PORT), 1);

        let asked = Instant::now();
        let created = stage
            .operator
            .post(
                &format!("/api/v1/devices/{}/blocks", stage.device),
                json!({
                    "flows": [
                        {"protocol": "tcp", "src": "192.0.2.2", "dst": "198.51.100.2", "dport": ECHO_PORT},
                        {"protocol": "tcp", "src": "192.0.2.2", "dst": "198.51.100.2", "dport": GREETING_PORT}
                    ],
                    "duration_secs": 8,
                    "reason": "test"
                }),
            )
            .await;
        let expires_at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(created["items"][0]["expires_at"].clone()).unwrap();
        let version = created["config_version"].as_u64().unwrap();
        stage.operator.wait_applied(&stage.device, version).await;
        // The established session stops at once: its tracking entry is gone,
        // so not even an offloaded copy of the flow would survive.
        let cut = wait_until("the session stops", Duration::from_secs(3), || {
            session.last_echo() < Instant::now() - Duration::from_millis(300)
        });
        assert_eq!(tracked_connections(&topo, ECHO_PORT), 0);
        assert!(!greeting_works(&topo, GREETING_PORT).await);
        assert!(greeting_works(&topo, crate::harness::OPEN_PORT).await);
        let cut_after = session.last_echo().saturating_duration_since(asked);
        eprintln!(
            "block applied and session cut {cut_after:?} after the API call (waited {cut:?})"
        );

        // A crash and a reboot that wiped the ruleset: the agent puts the
        // block back from its state, with the time left.
        agent.kill();
        topo.router.run("nft", &["delete", "table", "inet", "isdf"]);
        assert!(greeting_works(&topo, GREETING_PORT).await);
        let _agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
        let restored = Instant::now();
        loop {
            if !greeting_works(&topo, GREETING_PORT).await {
                break;
            }
            assert!(
                restored.elapsed() < Duration::from_secs(5),
                "the block never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            unix_ms() < expires_at.timestamp_millis() - 1000,
            "the test was too slow to see the block end"
        );

        let opened = wait_open(&topo, GREETING_PORT, Duration::from_secs(15)).await;
        let error_ms = opened - expires_at.timestamp_millis();
        eprintln!("block asked to end at {expires_at}; traffic passed again {error_ms} ms later");
        assert!(
            error_ms.abs() < 1000,
            "ended {error_ms} ms from the asked time"
        );
        drop(session);
    });
}

fn agent_cli(args: &[&str], socket: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_isdf-agent"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

/// Runs the agent's command line and asserts it succeeded.
fn agent_cli_ok(args: &[&str], socket: &Path) -> std::process::Output {
    let out = agent_cli(args, socket);
    assert!(
        out.status.success(),
        "isdf-agent {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn local_blocks_from_the_cli_are_enforced_bounded_and_reach_the_controller() {
    in_wan("lbk", |topo, work| async move {
        for port in [9103, 9104, crate::harness::OPEN_PORT] {
            serve_greeting(port).await;
        }
        let stage = Stage::prepare(&work, None).await;
        // One request per second sustained, ten at once.
        let mut config = std::fs::read_to_string(&stage.config_path).unwrap();
        config.push_str("local_block_rate = 1\n");
        std::fs::write(&stage.config_path, config).unwrap();
        let socket = stage.config_path.with_file_name("agent.sock");
        let _agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
        stage.operator.wait_applied(&stage.device, 1).await;

        agent_cli_ok(
            &[
                "block",
                "tcp",
                "192.0.2.2",
                "any",
                "198.51.100.2",
                "9103",
                "--for",
                "3s",
                "--reason",
                "zeek: scan",
            ],
            &socket,
        );
        // Enforced when the command returns.
        assert!(!greeting_works(&topo, 9103).await);
        assert!(greeting_works(&topo, crate::harness::OPEN_PORT).await);
        let listed = agent_cli(&["blocks", "--json"], &socket);
        let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(listed[0]["reason"], "zeek: scan");
        let expires_at_ms = listed[0]["expires_at_ms"].as_i64().unwrap();

        // The controller hears of it.
        let path = format!("/api/v1/devices/{}/blocks", stage.device);
        let started = Instant::now();
        loop {
            let blocks = stage.operator.get(&path).await;
            if blocks
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["origin"] == "local" && b["reason"] == "zeek: scan")
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the controller never saw the local block: {blocks}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "local block visible in the controller after {:?}",
            started.elapsed()
        );

        let opened = wait_open(&topo, 9103, Duration::from_secs(10)).await;
        let error_ms = opened - expires_at_ms;
        eprintln!("local block ended {error_ms} ms from its asked end");
        assert!(
            error_ms.abs() < 1000,
            "ended {error_ms} ms from the asked time"
        );

        // Ending a block early.
        agent_cli_ok(
            &[
                "block",
                "tcp",
                "192.0.2.2",
                "any",
                "198.51.100.2",
                "9104",
                "--for",
                "1h",
            ],
            &socket,
        );
        assert!(!greeting_works(&topo, 9104).await);
        let listed: Value =
            serde_json::from_slice(&agent_cli(&["blocks", "--json"], &socket).stdout).unwrap();
        let id = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["flow"]["dport"] == "9104")
            .unwrap()["id"]
            .to_string();
        assert!(agent_cli(&["unblock", &id], &socket).status.success());
        assert!(greeting_works(&topo, 9104).await);

        // Bad requests and floods are refused with a reason; nothing changes.
        let bad = agent_cli(
            &[
                "block",
                "tcp",
                "192.0.2.2",
                "any",
                "2001:db8:2::2",
                "80",
                "--for",
                "5s",
            ],
            &socket,
        );
        assert!(!bad.status.success());
        let bad = agent_cli(
            &[
                "block",
                "tcp",
                "192.0.2.2",
                "any",
                "198.51.100.2",
                "80",
                "--for",
                "40d",
            ],
            &socket,
        );
        assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_duration"));
        // Requests in a row: the bucket (ten, then one a second) runs dry
        // whatever this machine's speed, unless each request took over a
        // second; bounded in count and time.
        let (mut refused, mut sent) = (0, 0);
        let started = Instant::now();
        while refused < 3 && sent < 60 && started.elapsed() < Duration::from_secs(60) {
            let port = (9200 + sent).to_string();
            sent += 1;
            let out = agent_cli(
                &[
                    "block",
                    "udp",
                    "192.0.2.2",
                    "any",
                    "198.51.100.2",
                    &port,
                    "--for",
                    "1m",
                ],
                &socket,
            );
            if !out.status.success() {
                assert!(String::from_utf8_lossy(&out.stderr).contains("rate_limited"));
                refused += 1;
            }
        }
        assert!(
            refused >= 3,
            "only {refused} of {sent} requests in a row were refused ({:?})",
            started.elapsed()
        );

        let events = stage
            .operator
            .get(&format!("/api/v1/devices/{}/events", stage.device))
            .await;
        eprintln!("controller event totals: {}", events["totals"]);
    });
}
