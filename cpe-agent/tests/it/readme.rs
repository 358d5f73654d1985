//! The README's "Connect a real router", followed as a new operator would:
//! the real `isdf-controller` binary started with the embedded default and
//! the two public-URL flags (nothing else but a data directory), its
//! printed lines read for the URLs and the operator token, a router
//! registered through the API, the answer's three values written as files,
//! and the real agent started with `isdf-agent run --config FILE` in the
//! router's namespace, reaching `applied`; then the README's flow block,
//! and the router moved off its plan and back by its labels.
//!
//! The controller runs in the WAN namespace, where the routers' side knows
//! it as `WAN_HOST` (198.51.100.2); its operator API stays on that
//! namespace's 127.0.0.1:8080, as by default. The one liberty taken: the
//! files the README puts in `/etc/isdf/` and the state the agent keeps in
//! `/var/lib/isdf-agent` go under the test's directory (the agent config's
//! paths moved with them), since the agent shares this machine's disk.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{
    blocking, in_wan, serve_greeting, wait_until, wan, AgentProcess, Operator, ATTEMPT, OPEN_PORT,
};
use crate::netns::{Topology, WAN_HOST};

/// The port the README's example service blocks.
const BLOCKED_PORT: u16 = 9000;
/// Longest the controller may take to start (initdb of its private
/// PostgreSQL, migrations) on a busy machine; also how long it is given to
/// stop its cluster.
const START: Duration = Duration::from_secs(120);
/// The router's address on its LAN.
const ROUTER_LAN: &str = "192.0.2.1";

/// `isdf-controller` of this build: beside the agent binary (cargo builds
/// every binary of the workspace for its tests; `-p isdf-agent` alone does
/// not build it).
fn controller_binary() -> PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_isdf-agent"));
    let controller = agent.with_file_name("isdf-controller");
    assert!(
        controller.is_file(),
        "{} is missing: build it (`cargo build -p isdf-controller`), or run the tests of the \
         whole workspace as scripts/test does",
        controller.display()
    );
    controller
}

/// The controller process: stopped with SIGTERM when dropped (it stops its
/// private PostgreSQL on the way out), killed if it has not within [`START`].
struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < START {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the controller printed at start, line by line (`  Name: value`).
struct Printed(Vec<String>);

impl Printed {
    /// The text after `label` on the first line that starts with it.
    fn after(&self, label: &str) -> &str {
        self.0
            .iter()
            .find_map(|line| line.trim_start().strip_prefix(label))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{}", self.0.join("\n")))
    }
}

/// Starts the controller as the README says (in this thread's namespace)
/// and returns it with what it printed up to its last start line (`Next:`).
async fn start_controller(data_dir: &Path, log: &Path, args: &[&str]) -> (Controller, Printed) {
    let mut log_file = std::fs::File::create(log).unwrap();
    let child = Command::new(controller_binary())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        // Nothing from the test's environment (ISDF_DATABASE_URL, ...):
        // the embedded default, as on a clean machine.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file.try_clone().unwrap())
        .spawn()
        .expect("starting isdf-controller");
    let mut controller = Controller {
        child,
        log: log.to_owned(),
    };
    let stdout = controller.child.stdout.take().unwrap();
    // Every line goes to the log for the process's life (it logs to
    // stdout too, which must never fill); the start lines come back.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log_file, "{line}");
            let _ = lines_tx.send(line);
        }
    });
    let deadline = tokio::time::Instant::now() + START;
    let mut printed = Vec::new();
    let mut running = false;
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the controller exited:\n{}", controller.log()),
            Err(_) => panic!(
                "the controller did not start in time:\n{}",
                controller.log()
            ),
        };
        running |= line.starts_with("iSDF controller is running.");
        if running {
            let last = line.trim_start().starts_with("Next:");
            printed.push(line);
            if last {
                return (controller, Printed(printed));
            }
        }
    }
}

/// A greeting server (`ok\n` to each connection) on `port` of the router
/// itself, in its namespace, for as long as the test runs.
fn serve_greeting_on_router(topo: &Topology, port: u16) {
    let listener = topo.router.enter(move || {
        std::net::TcpListener::bind(("0.0.0.0", port)).expect("listening on the router")
    });
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let _ = stream.write_all(b"ok\n");
        }
    });
}

#[test]
fn a_router_in_its_own_namespace_connects_through_the_printed_urls() {
    in_wan("rdm", scenario);
}

async fn scenario(topo: Arc<Topology>, work: PathBuf) {
    // The embedded PostgreSQL runs as `postgres` when the tests run as
    // root: it must reach the data directory.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // "Connect a real router": the controller with the routers' address.
    let device_url = format!("https://{WAN_HOST}:8443");
    let enrollment_url = format!("https://{WAN_HOST}:8444");
    let (controller, printed) = start_controller(
        &work.join("isdf-data"),
        &work.join("controller.log"),
        &[
            "--device-public-url",
            &device_url,
            "--enrollment-public-url",
            &enrollment_url,
        ],
    )
    .await;
    // What it prints: the dashboard, the operator API and token, the two
    // URLs routers are given and the names their certificate holds.
    assert_eq!(printed.after("Device API:"), device_url);
    assert_eq!(printed.after("Enrollment:"), enrollment_url);
    let names: Vec<&str> = printed
        .after("TLS names:")
        .split("  ")
        .next()
        .unwrap()
        .split(", ")
        .collect();
    assert!(
        names.contains(&WAN_HOST),
        "the certificate names the public URLs' host: {names:?}"
    );
    assert!(printed
        .after("Dashboard:")
        .starts_with("http://127.0.0.1:8080/ui/"));
    let api = printed
        .after("Operator API:")
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches("/api/v1")
        .to_owned();
    assert_eq!(api, "http://127.0.0.1:8080");
    let token = printed
        .after("Operator token (shown once, keep it):")
        .to_owned();
    assert!(token.starts_with("isdf_op_"), "{token}");
    let operator = Operator::new(&api, &token);
    let ready = operator.http.clone();
    let started = Instant::now();
    while !ready
        .get(format!("{api}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            started.elapsed() < START,
            "never ready:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Step 1: register the router; the answer holds what it needs.
    let created = operator
        .post(
            "/api/v1/devices",
            json!({"name": "home-1042", "labels": {"plan": "family", "region": "north"}}),
        )
        .await;
    let device = created["device"]["id"].as_str().unwrap().to_owned();
    let agent_config = created["agent_config"].as_str().unwrap();
    assert!(
        agent_config.contains(&format!("enrollment_url = \"{enrollment_url}\""))
            && agent_config.contains(&format!("controller_url = \"{device_url}\"")),
        "the agent config names the printed URLs:\n{agent_config}"
    );

    // Step 2: the three files, and the agent started with them.
    let root = work.join("router");
    let etc = root.join("etc/isdf");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("enrollment-token"),
        created["enrollment_token"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(etc.join("ca.pem"), created["ca_pem"].as_str().unwrap()).unwrap();
    let moved = agent_config
        .replace("\"/etc/isdf/", &format!("\"{}/", etc.display()))
        .replace(
            "\"/var/lib/isdf-agent\"",
            &format!("\"{}\"", root.join("var/lib/isdf-agent").display()),
        );
    assert!(
        !moved.contains("\"/etc/") && !moved.contains("\"/var/"),
        "every path of the config moved:\n{moved}"
    );
    let config = etc.join("agent.toml");
    std::fs::write(&config, moved).unwrap();
    let log = work.join("agent.log");
    let agent = AgentProcess::start_as_documented(&topo.router, &config, &log);
    wait_applied(&operator, &device, 1, &agent, &controller).await;
    // Its control socket is the default one, in its state directory.
    assert!(
        root.join("var/lib/isdf-agent/control.sock").exists(),
        "agent:\n{}",
        agent.log()
    );

    // Step 3: the README's service, assigned by label; the router enforces
    // it on what it forwards only.
    serve_greeting(BLOCKED_PORT).await;
    serve_greeting(OPEN_PORT).await;
    serve_greeting_on_router(&topo, BLOCKED_PORT);
    let service = operator
        .post(
            "/api/v1/services",
            json!({"name": "block-9000", "type": "flow-block",
                   "spec": {"action": "drop", "flows": [{"protocol": "tcp", "dport": BLOCKED_PORT}]}}),
        )
        .await;
    operator
        .post(
            "/api/v1/assignments",
            json!({"service_id": service["id"], "selector": "plan=family"}),
        )
        .await;
    wait_applied(&operator, &device, 2, &agent, &controller).await;
    let status = operator
        .get(&format!("/api/v1/devices/{device}/status"))
        .await;
    assert_eq!(status["report"]["outcome"], "applied", "{status}");
    let topo2 = topo.clone();
    blocking(move || {
        wait_until(
            "the LAN's port 9000 is blocked",
            Duration::from_secs(5),
            || !topo2.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT),
        );
        assert!(
            topo2.lan.tcp_works(wan(OPEN_PORT), ATTEMPT),
            "other ports still pass"
        );
        // Not forwarded, so not blocked: the router's own connection out,
        // and the LAN's connection to the router itself.
        assert!(
            topo2.router.tcp_works(wan(BLOCKED_PORT), ATTEMPT),
            "the router's own traffic is not blocked"
        );
        let router_lan = format!("{ROUTER_LAN}:{BLOCKED_PORT}").parse().unwrap();
        assert!(
            topo2.lan.tcp_works(router_lan, ATTEMPT),
            "traffic to the router itself is not blocked"
        );
    })
    .await;

    // Step 4: the router moves to another plan; the flow block follows
    // the label away, and back with a change of every router in a region.
    operator
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/devices/{device}"),
            Some(json!({"labels": {"plan": "basic", "region": "north"}})),
        )
        .await;
    wait_applied(&operator, &device, 3, &agent, &controller).await;
    let topo2 = topo.clone();
    blocking(move || {
        wait_until(
            "the LAN's port 9000 works again",
            Duration::from_secs(5),
            || topo2.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT),
        )
    })
    .await;
    let relabelled = operator
        .post(
            "/api/v1/devices/labels",
            json!({"selector": "region=north", "set": {"plan": "family"}}),
        )
        .await;
    assert_eq!(
        (
            relabelled["matched"].as_i64(),
            relabelled["changed"].as_i64()
        ),
        (Some(1), Some(1)),
        "{relabelled}"
    );
    wait_applied(&operator, &device, 4, &agent, &controller).await;
    let topo2 = topo.clone();
    blocking(move || {
        wait_until(
            "the LAN's port 9000 is blocked again",
            Duration::from_secs(5),
            || !topo2.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT),
        )
    })
    .await;
    drop(agent);
    drop(controller);
}

/// Waits (bounded by [`START`]) until the router reports `version`
/// applied; on failure shows both logs.
async fn wait_applied(
    operator: &Operator,
    device: &str,
    version: u64,
    agent: &AgentProcess,
    controller: &Controller,
) {
    let started = Instant::now();
    loop {
        let report = operator
            .try_get(&format!("/api/v1/devices/{device}/status"))
            .await
            .map(|status| status["report"].clone())
            .unwrap_or(Value::Null);
        if report["enforced_version"] == json!(version) && report["outcome"] == "applied" {
            return;
        }
        assert!(
            started.elapsed() < START,
            "the router never reported version {version} applied (last report {report}); \
             agent:\n{}\ncontroller:\n{}",
            agent.log(),
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
