//! The end-to-end scenario, run once per firewall backend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use isdf_api::{DeviceConfig, Envelope, Outcome, CONFIG_PAYLOAD_TYPE};
use isdf_controller::reconcile::signer::{ConfigSigner, FileSigner};
use isdf_controller::test_support::{TestController, TestControllerOptions};
use serde_json::{json, Value};

use crate::netns::{Netns, Topology, WAN_HOST};
use crate::rogue_controller::RogueController;

const BLOCKED_PORT: u16 = 9000;
pub(crate) const OPEN_PORT: u16 = 9001;
pub(crate) const ATTEMPT: Duration = Duration::from_millis(300);

#[test]
fn nftables_backend_end_to_end() {
    end_to_end("nftables");
}

#[test]
fn iptables_backend_end_to_end() {
    end_to_end("iptables");
}

/// The real agent binary running in the router namespace; killed on drop.
pub(crate) struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    pub(crate) fn start(router: &Netns, config: &Path, backend: &str, log: &Path) -> Self {
        Self::start_with_env(router, config, backend, log, &[])
    }

    /// Like `start`, with a `/run/wireguard` of its own: wireguard-go and
    /// `wg` find tunnels by socket there, and every router of a test names
    /// its tunnel alike (separate machines in real life).
    pub(crate) fn start_with_own_run(router: &Netns, config: &Path, log: &Path) -> Self {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &router.name, "sh", "-c"])
            .arg(
                "mkdir -p /run/wireguard && mount -t tmpfs -o mode=0700 isdf-wg /run/wireguard \
                 && exec \"$0\" \"$@\"",
            )
            .arg(env!("CARGO_BIN_EXE_isdf-agent"));
        Self::spawn(command, config, "nftables", log)
    }

    /// Runs a program in the agent's network and mount namespaces (where
    /// its `/run/wireguard` is).
    pub(crate) fn exec_beside(&self, program: &str, args: &[&str]) -> String {
        let pid = self.child.id().to_string();
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-m", "-n", program])
            .args(args)
            .output()
            .expect("nsenter (util-linux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn start_with_env(
        router: &Netns,
        config: &Path,
        backend: &str,
        log: &Path,
        env: &[(&str, &Path)],
    ) -> Self {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &router.name,
                env!("CARGO_BIN_EXE_isdf-agent"),
            ])
            .envs(env.iter().copied());
        Self::spawn(command, config, backend, log)
    }

    /// Runs `command` (which ends in the agent binary) with the agent's
    /// arguments, its output appended to `log`.
    fn spawn(mut command: Command, config: &Path, backend: &str, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = command
            .args(["run", "--config"])
            .arg(config)
            .args(["--backend", backend])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting the agent");
        AgentProcess {
            child,
            log: log.to_owned(),
        }
    }

    /// Kills the agent without warning, as a crash or power cut would.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    /// Asks the agent to stop (SIGTERM), so it ends what it started (its
    /// wireguard-go processes), then kills it if it has not within 5 s.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel ruleset the backend manages, without counters and timers, so
/// two snapshots are equal exactly when rules, sets and elements are.
pub(crate) fn ruleset(router: &Netns, backend: &str) -> String {
    let raw = match backend {
        "nftables" => {
            let out = router.exec("nft", &["-s", "list", "table", "inet", "isdf"]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        _ => {
            let mut all = String::new();
            for (program, args) in [
                ("iptables-save", &["-t", "filter"][..]),
                ("ip6tables-save", &["-t", "filter"][..]),
                ("ipset", &["save"][..]),
            ] {
                all.push_str(&router.run(program, args));
            }
            all
        }
    };
    raw.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            // Drop counters ([p:b]), element timers and expiry countdowns.
            let l = match l.find(" [") {
                Some(i) if l.starts_with(':') => &l[..i],
                _ => l,
            };
            l.split(" expires ")
                .next()
                .unwrap()
                .split(" timeout ")
                .next()
                .unwrap()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn wait_until(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn wan(port: u16) -> SocketAddr {
    format!("{WAN_HOST}:{port}").parse().unwrap()
}

pub(crate) struct Operator {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Operator {
    pub(crate) fn new(url: &str, token: &str) -> Self {
        Operator {
            http: reqwest::Client::new(),
            url: url.to_owned(),
            token: token.to_owned(),
        }
    }

    /// A GET that may fail: the body of a success, None otherwise.
    pub(crate) async fn try_get(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Value {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a `flow-block` service with `flows` and assigns it to every
    /// device; returns the service.
    async fn block_everywhere(&self, flows: Value) -> Value {
        self.assign_everywhere("flow-block", json!({ "flows": flows }))
            .await
    }

    /// Creates a service of `kind` with `spec` and assigns it to every
    /// device; returns the service.
    pub(crate) async fn assign_everywhere(&self, kind: &str, spec: Value) -> Value {
        let service = self
            .post(
                "/api/v1/services",
                json!({"name": format!("{kind}-everywhere"), "kind": kind, "spec": spec}),
            )
            .await;
        self.post(
            "/api/v1/assignments",
            json!({"service_id": service["id"], "selector": "*"}),
        )
        .await;
        service
    }

    /// Waits until the device's latest report satisfies `done`; returns it.
    pub(crate) async fn wait_status(&self, device: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let response = self
                .http
                .get(format!("{}/api/v1/devices/{device}/status", self.url))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap();
            if response.status().is_success() {
                let status: Value = response.json().await.unwrap();
                if done(&status["report"]) {
                    return status["report"].clone();
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the device never reported the expected status"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the device reports `version` applied.
    pub(crate) async fn wait_applied(&self, device: &str, version: u64) {
        self.wait_status(device, |r| {
            r["enforced_version"] == json!(version) && r["outcome"] == "applied"
        })
        .await;
    }
}

pub(crate) async fn serve_greeting(port: u16) {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(b"ok\n").await;
            });
        }
    });
}

/// Runs blocking `f` without stalling the runtime.
pub(crate) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Runs the future `scenario` makes (given a fresh work directory) on a
/// two-thread runtime inside `ns`: every socket it opens lives there.
pub(crate) fn block_on_in<F>(ns: &Netns, scenario: impl FnOnce(PathBuf) -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let work = tempfile::tempdir().unwrap();
    let work_path = work.path().to_owned();
    ns.enter(move || {
        let _ = rustls::crypto::ring::default_provider().install_default();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario(work_path))
    });
    drop(work);
}

/// Runs `scenario` inside the WAN namespace: servers, the controller and
/// operator calls live there; the agent runs in the router namespace.
pub(crate) fn in_wan<F>(
    tag: &str,
    scenario: impl FnOnce(std::sync::Arc<Topology>, PathBuf) -> F + Send + 'static,
) where
    F: std::future::Future<Output = ()>,
{
    let topo = std::sync::Arc::new(Topology::create(tag));
    let topo_inner = topo.clone();
    block_on_in(&topo.wan, move |work| scenario(topo_inner, work));
}

fn end_to_end(backend: &'static str) {
    in_wan(&backend[..3], move |topo, work| {
        scenario(topo, backend, work)
    });
}

/// A controller in the WAN namespace with one registered router and the
/// router's agent files written.
pub(crate) struct Stage {
    pub(crate) controller: TestController,
    pub(crate) controller_dir: PathBuf,
    pub(crate) device_addr: SocketAddr,
    pub(crate) operator: Operator,
    pub(crate) device: String,
    pub(crate) config_path: PathBuf,
    pub(crate) log: PathBuf,
}

impl Stage {
    /// `trusted_key` overrides the signing key the agent trusts (else the
    /// one from its enrollment answer).
    pub(crate) async fn prepare(work: &Path, trusted_key: Option<&str>) -> Self {
        Self::prepare_with(work, trusted_key, |_| {}).await
    }

    /// Like `prepare`, with the controller's options adjusted by `adjust`.
    pub(crate) async fn prepare_with(
        work: &Path,
        trusted_key: Option<&str>,
        adjust: impl FnOnce(&mut TestControllerOptions),
    ) -> Self {
        let controller_dir = work.join("controller");
        let mut options = TestControllerOptions::new(&controller_dir);
        options.device_listen = wan(0);
        options.device_tls_names = vec![WAN_HOST.to_owned()];
        adjust(&mut options);
        let controller = TestController::start(options)
            .await
            .expect("controller starts");
        let device_addr: SocketAddr = controller
            .device_url
            .trim_start_matches("https://")
            .parse()
            .unwrap();
        let operator = Operator {
            http: reqwest::Client::new(),
            url: controller.api_url.clone(),
            token: controller.operator_token.clone(),
        };
        // Pre-register the router; it enrolls itself at first start with the
        // token (zero-touch), making its key pair on the router.
        let created = operator
            .post(
                "/api/v1/devices",
                json!({"name": "home-1", "labels": {"plan": "family"}}),
            )
            .await;
        let device = created["device"]["id"].as_str().unwrap().to_owned();
        let agent_dir = work.join("agent");
        std::fs::create_dir_all(&agent_dir).unwrap();
        std::fs::write(
            agent_dir.join("enrollment-token"),
            created["enrollment_token"].as_str().unwrap(),
        )
        .unwrap();
        std::fs::write(
            agent_dir.join("ca.pem"),
            created["ca_pem"].as_str().unwrap(),
        )
        .unwrap();
        let config_path = agent_dir.join("agent.toml");
        let keys = trusted_key.map_or_else(String::new, |k| {
            format!("signing_public_keys = [\"{k}\"]\n")
        });
        std::fs::write(
            &config_path,
            format!(
                "enrollment_url = \"{url}\"\nca_cert = \"{dir}/ca.pem\"\n\
                 enrollment_token_file = \"{dir}/enrollment-token\"\nstate_dir = \"{dir}/state\"\n\
                 control_socket = \"{dir}/agent.sock\"\n\
                 poll_wait_secs = 20\nmax_backoff_secs = 2\n{keys}",
                url = controller.enrollment_url,
                dir = agent_dir.display(),
            ),
        )
        .unwrap();
        Stage {
            controller,
            controller_dir,
            device_addr,
            operator,
            device,
            config_path,
            log: agent_dir.join("agent.log"),
        }
    }
}

async fn scenario(topo: std::sync::Arc<Topology>, backend: &'static str, work: PathBuf) {
    serve_greeting(BLOCKED_PORT).await;
    serve_greeting(OPEN_PORT).await;
    let Stage {
        controller,
        controller_dir,
        device_addr,
        operator,
        device,
        config_path,
        log,
    } = Stage::prepare(&work, None).await;
    let agent = AgentProcess::start(&topo.router, &config_path, backend, &log);
    operator.wait_applied(&device, 1).await;

    let lan = |port| {
        let topo = topo.clone();
        blocking(move || topo.lan.tcp_works(wan(port), ATTEMPT))
    };
    assert!(
        lan(BLOCKED_PORT).await && lan(OPEN_PORT).await,
        "both ports work before any service"
    );

    // Assign a flow block: the LAN host's connections to port 9000 fail within 2 s.
    let service = operator
        .post(
            "/api/v1/services",
            json!({"name": "block-9000", "kind": "flow-block",
                   "spec": {"flows": [{"protocol": "tcp", "dst": WAN_HOST, "dport": BLOCKED_PORT}]}}),
        )
        .await;
    let service_id = service["id"].as_str().unwrap();
    let assigned_at = Instant::now();
    let assignment = operator
        .post(
            "/api/v1/assignments",
            json!({"service_id": service_id, "selector": "plan=family"}),
        )
        .await;
    let topo2 = topo.clone();
    blocking(move || {
        wait_until(
            "port 9000 is blocked",
            Duration::from_secs(2).saturating_sub(assigned_at.elapsed()),
            || !topo2.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT),
        )
    })
    .await;
    assert!(
        lan(OPEN_PORT).await,
        "port 9001 still works while 9000 is blocked"
    );
    operator.wait_applied(&device, 2).await;
    let older_envelope = operator
        .get(&format!("/api/v1/devices/{device}/config"))
        .await["envelope"]
        .to_string();

    // Unassign: port 9000 works again.
    operator
        .delete(&format!(
            "/api/v1/assignments/{}",
            assignment["id"].as_str().unwrap()
        ))
        .await;
    let topo2 = topo.clone();
    blocking(move || {
        wait_until("port 9000 works again", Duration::from_secs(5), || {
            topo2.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT)
        })
    })
    .await;
    operator.wait_applied(&device, 3).await;

    // Block again, then attack the agent with bad envelopes.
    operator
        .post(
            "/api/v1/assignments",
            json!({"service_id": service_id, "selector": "*"}),
        )
        .await;
    operator.wait_applied(&device, 4).await;
    assert!(!lan(BLOCKED_PORT).await);
    let enforced = ruleset(&topo.router, backend);
    assert!(!enforced.trim().is_empty(), "the backend shows a ruleset");

    let current: Envelope = serde_json::from_value(
        operator
            .get(&format!("/api/v1/devices/{device}/config"))
            .await["envelope"]
            .clone(),
    )
    .unwrap();
    let other = operator
        .post("/api/v1/devices", json!({"name": "home-2"}))
        .await;
    let foreign = operator
        .get(&format!(
            "/api/v1/devices/{}/config",
            other["device"]["id"].as_str().unwrap()
        ))
        .await["envelope"]
        .to_string();
    let signer = FileSigner::load_or_create(&controller_dir.join("signing-key.pem")).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&current.payload)
        .unwrap();
    let config: DeviceConfig = serde_json::from_slice(&payload).unwrap();
    let now = chrono::Utc::now().timestamp();
    let expired = DeviceConfig {
        version: config.version + 10,
        issued_at: now - 100,
        expires_at: now - 10,
        ..config.clone()
    };
    let stranger = FileSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[42; 32]));
    let newer = DeviceConfig {
        version: config.version + 10,
        firewall: Default::default(),
        ..config.clone()
    };
    let mut tampered = current.clone();
    let altered = String::from_utf8(payload.clone())
        .unwrap()
        .replace("9000", "9002");
    tampered.payload = base64::engine::general_purpose::STANDARD.encode(altered);
    let sign = |signer: &FileSigner, c: &DeviceConfig| {
        signer
            .sign(CONFIG_PAYLOAD_TYPE, &serde_json::to_vec(c).unwrap())
            .unwrap()
            .to_json()
    };
    let same_version_other_content = DeviceConfig {
        firewall: Default::default(),
        ..config.clone()
    };
    let mut with_unknown_field = serde_json::to_value(&newer).unwrap();
    with_unknown_field["firewall"]["dns"] = json!({"redirect": "198.51.100.66"});
    let current_bytes = current.to_json();
    let mut oversized = current_bytes.clone();
    oversized.resize(isdf_api::MAX_ENVELOPE_BYTES + 1, b' ');
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("bad_signature", tampered.to_json()),
        ("not_newer", older_envelope.into_bytes()),
        ("not_newer", sign(&signer, &same_version_other_content)),
        ("wrong_device", foreign.into_bytes()),
        ("expired", sign(&signer, &expired)),
        ("unknown_key", sign(&stranger, &newer)),
        (
            "wrong_payload_type",
            signer
                .sign("application/json", &serde_json::to_vec(&newer).unwrap())
                .unwrap()
                .to_json(),
        ),
        (
            "malformed_config",
            signer
                .sign(
                    CONFIG_PAYLOAD_TYPE,
                    with_unknown_field.to_string().as_bytes(),
                )
                .unwrap()
                .to_json(),
        ),
        (
            "malformed_envelope",
            current_bytes[..current_bytes.len() / 2].to_vec(),
        ),
        ("too_large", oversized),
    ];

    // Stop the controller: the block stays.
    controller.stop().await.unwrap();
    assert!(
        !lan(BLOCKED_PORT).await,
        "the block stays while the controller is down"
    );
    assert!(lan(OPEN_PORT).await);

    let mut rogue = RogueController::start(device_addr, &controller_dir).await;
    for (code, envelope) in attacks {
        eprintln!("attack: {code}");
        rogue.serve_next(envelope);
        let report = loop {
            let report = rogue
                .next_report(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "no report after the {code} attack; agent log:\n{}",
                        agent.log()
                    )
                });
            if report.outcome == Outcome::Rejected {
                break report;
            }
        };
        assert!(
            report.errors[0].starts_with(code),
            "expected {code}, got {:?}",
            report.errors
        );
        assert_eq!(
            report.enforced_version,
            Some(4),
            "{code}: the enforced version is unchanged"
        );
        assert_eq!(
            ruleset(&topo.router, backend),
            enforced,
            "{code}: the kernel ruleset is unchanged"
        );
    }
    assert!(!lan(BLOCKED_PORT).await);
    rogue.stop();

    // Crash the agent and wipe its rules as a reboot would; with the
    // controller still down, the restarted agent puts the block back from
    // its state directory before any network call.
    agent.kill();
    match backend {
        "nftables" => drop(topo.router.run("nft", &["delete", "table", "inet", "isdf"])),
        _ => {
            for program in ["iptables", "ip6tables"] {
                for chain in ["FORWARD", "INPUT", "OUTPUT"] {
                    topo.router.run(program, &["-F", chain]);
                }
            }
        }
    }
    assert!(
        lan(BLOCKED_PORT).await,
        "the simulated reboot removed the block"
    );
    let restarted = AgentProcess::start(&topo.router, &config_path, backend, &log);
    let topo2 = topo.clone();
    blocking(move || {
        wait_until(
            "the restarted agent blocks again",
            Duration::from_secs(10),
            || !topo2.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT),
        )
    })
    .await;
    assert_eq!(ruleset(&topo.router, backend), enforced);
    let log = restarted.log();
    let restored_at = log
        .rfind("enforced the last good config")
        .expect("the agent logged the restore");
    let first_poll_failure_after = log[..restored_at].rfind("starting").unwrap_or(0);
    assert!(
        !log[first_poll_failure_after..restored_at].contains("poll failed"),
        "the restore came before any network call:\n{log}"
    );
    drop(restarted);
}

/// A config the agent refuses is not fetched again and again: the agent
/// waits for a newer version (and retries the same one only minutes later).
#[test]
fn a_refused_config_is_not_fetched_in_a_loop() {
    in_wan("ref", |topo, work| async move {
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
        let stranger: String = stranger
            .verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let stage = Stage::prepare(&work, Some(&stranger)).await;
        let _agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
        let (operator, device) = (&stage.operator, &stage.device);
        let report = operator
            .wait_status(device, |r| r["outcome"] == "rejected")
            .await;
        assert!(
            report["errors"][0]
                .as_str()
                .unwrap()
                .starts_with("unknown_key"),
            "{report}"
        );
        // Watch for a few seconds: a hot loop would post a report per fetch.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let history = operator
            .get(&format!("/api/v1/devices/{device}/status/history"))
            .await;
        assert_eq!(
            history.as_array().unwrap().len(),
            1,
            "the refused config was fetched again: {history}"
        );
        stage.controller.stop().await.unwrap();
    });
}

/// A config that applies but then fails the kernel check is rolled back: the
/// previous ruleset is restored in the kernel and `rolled_back` is reported
/// with the reason. The failure is real: a wrapper around `nft` flushes our
/// forward chain right after one apply (armed by a flag file, once).
#[test]
fn a_config_failing_its_kernel_check_is_rolled_back() {
    in_wan("rb", |topo, work| async move {
        serve_greeting(BLOCKED_PORT).await;
        serve_greeting(OPEN_PORT).await;
        let stage = Stage::prepare(&work, None).await;
        let flag = work.join("sabotage-next-apply");
        let wrapper = work.join("nft-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nif [ -e '{flag}' ] && [ \"$1\" = -f ]; then\n  rm -f '{flag}'\n  nft \"$@\" && exec nft flush chain inet isdf forward\nfi\nexec nft \"$@\"\n",
                flag = flag.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _agent = AgentProcess::start_with_env(
            &topo.router,
            &stage.config_path,
            "nftables",
            &stage.log,
            &[("ISDF_NFT", &wrapper)],
        );
        let (operator, device) = (&stage.operator, &stage.device);
        let service = operator
            .block_everywhere(json!([{"protocol": "tcp", "dst": WAN_HOST, "dport": BLOCKED_PORT}]))
            .await;
        operator.wait_applied(device, 2).await;
        let before = ruleset(&topo.router, "nftables");

        std::fs::write(&flag, "").unwrap();
        let r2 = operator
            .post(&format!("/api/v1/services/{}/revisions", service["id"].as_str().unwrap()),
                json!({"spec": {"flows": [{"protocol": "tcp", "dst": WAN_HOST, "dport": OPEN_PORT}]}}))
            .await;
        let assignments = operator.get("/api/v1/assignments").await;
        let id = assignments["items"][0]["id"].as_str().unwrap();
        operator
            .call(
                reqwest::Method::PATCH,
                &format!("/api/v1/assignments/{id}"),
                Some(json!({"revision": r2["revision"]})),
            )
            .await;

        let report = operator
            .wait_status(device, |r| r["outcome"] == "rolled_back")
            .await;
        assert_eq!(report["attempted_version"], 3);
        assert_eq!(report["enforced_version"], 2);
        let reason = report["errors"][0].as_str().unwrap();
        assert!(
            reason.starts_with("apply_failed") && reason.contains("chains differ"),
            "{reason}"
        );
        assert!(!flag.exists(), "the sabotage ran");
        assert_eq!(
            ruleset(&topo.router, "nftables"),
            before,
            "the previous ruleset is back"
        );
        let topo2 = topo.clone();
        let (blocked, open) = blocking(move || {
            (
                topo2.lan.tcp_works(wan(BLOCKED_PORT), ATTEMPT),
                topo2.lan.tcp_works(wan(OPEN_PORT), ATTEMPT),
            )
        })
        .await;
        assert!(!blocked && open, "traffic follows the restored config");
        stage.controller.stop().await.unwrap();
    });
}

/// The agent renews its certificate over mutual TLS before it expires and
/// keeps working with the new one.
#[test]
fn the_agent_renews_its_certificate_before_expiry() {
    in_wan("rn", |topo, work| async move {
        let stage = Stage::prepare_with(&work, None, |o| {
            o.device_cert_lifetime = Duration::from_secs(12)
        })
        .await;
        let _agent = AgentProcess::start(&topo.router, &stage.config_path, "nftables", &stage.log);
        let (operator, device) = (&stage.operator, &stage.device);
        operator.wait_applied(device, 1).await;
        let first = operator.get(&format!("/api/v1/devices/{device}")).await
            ["certificate_expires_at"]
            .clone();
        assert!(first.is_string(), "enrolled: {first}");
        let started = Instant::now();
        loop {
            let now = operator.get(&format!("/api/v1/devices/{device}")).await
                ["certificate_expires_at"]
                .clone();
            if now != first {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the certificate was never renewed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The renewed certificate works: a change still reaches the router.
        operator
            .block_everywhere(json!([{"protocol": "udp", "dport": 53}]))
            .await;
        operator.wait_applied(device, 2).await;
        stage.controller.stop().await.unwrap();
    });
}

/// Rotating the config-signing key under a new root, with a running agent:
/// the agent follows the root chain and takes configs signed with the new
/// key; the old key is refused from then on. No re-enrollment.
#[test]
fn signing_key_rotation_with_a_running_agent() {
    in_wan("rot", |topo, work| async move {
        serve_greeting(BLOCKED_PORT).await;
        let Stage {
            controller,
            controller_dir,
            device_addr,
            operator,
            device,
            config_path,
            log,
        } = Stage::prepare(&work, None).await;
        let agent = AgentProcess::start(&topo.router, &config_path, "nftables", &log);
        operator
            .block_everywhere(json!([{"protocol": "tcp", "dst": WAN_HOST, "dport": BLOCKED_PORT}]))
            .await;
        operator.wait_applied(&device, 2).await;
        let old_key = FileSigner::load_or_create(&controller_dir.join("signing-key.pem")).unwrap();

        // Offline: a new signing key, and root 2 certifying only it.
        let new_key_path = controller_dir.join("new-signing-key.pem");
        let new_key = isdf_controller::trust::roots::generate_key(&new_key_path).unwrap();
        let root_key =
            isdf_controller::trust::roots::read_key(&controller_dir.join("root-key.pem")).unwrap();
        let new_hex = isdf_controller::trust::roots::public_hex(&new_key);
        isdf_controller::trust::roots::RootChain::rotate(
            &controller_dir,
            &root_key,
            None,
            vec![new_hex],
            None,
        )
        .unwrap();
        // Swap the key and restart: the controller re-signs every config.
        let database_url = controller.database_url.clone();
        controller.stop().await.unwrap();
        std::fs::rename(&new_key_path, controller_dir.join("signing-key.pem")).unwrap();
        let mut options = TestControllerOptions::new(&controller_dir);
        options.device_listen = device_addr;
        options.device_tls_names = vec![WAN_HOST.to_owned()];
        options.database_url = Some(database_url);
        let controller = TestController::start(options)
            .await
            .expect("controller restarts");
        let operator = Operator {
            http: reqwest::Client::new(),
            url: controller.api_url.clone(),
            token: controller.operator_token.clone(),
        };
        operator.wait_applied(&device, 3).await;
        assert!(
            agent.log().contains("moved to a new root"),
            "{}",
            agent.log()
        );
        let enforced = ruleset(&topo.router, "nftables");

        // The old key is refused now, even for a much higher version.
        controller.stop().await.unwrap();
        let now = chrono::Utc::now().timestamp();
        let config: DeviceConfig =
            serde_json::from_value(json!({"device_id": device, "version": 100,
            "issued_at": now - 5, "expires_at": now + 3600, "firewall": {}}))
            .unwrap();
        let forged = old_key
            .sign(CONFIG_PAYLOAD_TYPE, &serde_json::to_vec(&config).unwrap())
            .unwrap()
            .to_json();
        let mut rogue = RogueController::start(device_addr, &controller_dir).await;
        rogue.serve_roots(
            isdf_controller::trust::roots::RootChain::load(&controller_dir)
                .unwrap()
                .envelopes,
        );
        let rejected = next_rejection(&mut rogue, &agent, forged).await;
        assert!(
            rejected.errors[0].starts_with("unknown_key"),
            "{:?}",
            rejected.errors
        );
        assert_eq!(rejected.enforced_version, Some(3));
        assert_eq!(
            ruleset(&topo.router, "nftables"),
            enforced,
            "the kernel ruleset is unchanged"
        );

        // A root rotation signed by the wrong key is not followed: the
        // attacker's signing key stays unknown.
        let attacker_root = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
        let attacker_online =
            FileSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[67; 32]));
        let fake_root = isdf_api::root::RootDocument {
            version: 3,
            root_keys: vec![isdf_controller::trust::roots::public_hex(&attacker_root)],
            signing_keys: vec![hex_of(&attacker_online)],
            config_version_floor: Some(1),
        };
        let fake_root = isdf_api::root::seal_with_all(
            isdf_api::root::ROOT_PAYLOAD_TYPE,
            &serde_json::to_vec(&fake_root).unwrap(),
            &[&attacker_root],
        );
        let mut chain = isdf_controller::trust::roots::RootChain::load(&controller_dir)
            .unwrap()
            .envelopes;
        chain.push(String::from_utf8(fake_root.to_json()).unwrap());
        rogue.serve_roots(chain);
        let signed = |signer: &FileSigner, version: u64| {
            let c = DeviceConfig {
                version,
                ..config.clone()
            };
            signer
                .sign(CONFIG_PAYLOAD_TYPE, &serde_json::to_vec(&c).unwrap())
                .unwrap()
                .to_json()
        };
        let rejected = next_rejection(&mut rogue, &agent, signed(&attacker_online, 101)).await;
        assert!(
            rejected.errors[0].starts_with("unknown_key"),
            "{:?}",
            rejected.errors
        );
        assert!(
            agent.log().contains("root_not_signed_by_current_root"),
            "{}",
            agent.log()
        );
        assert_eq!(
            ruleset(&topo.router, "nftables"),
            enforced,
            "the kernel ruleset is unchanged"
        );

        // Recovery from a compromised signing key that signed a huge version:
        // root 3 drops it and sets a version floor, so the controller's
        // ordinary next version is accepted again.
        let compromised = FileSigner::from_key(new_key.clone());
        rogue.serve_next(signed(&compromised, 1_000_000));
        wait_report(&mut rogue, &agent, |r| {
            r.outcome == Outcome::Applied && r.enforced_version == Some(1_000_000)
        })
        .await;
        let recovery_key = ed25519_dalek::SigningKey::from_bytes(&[68; 32]);
        isdf_controller::trust::roots::RootChain::rotate(
            &controller_dir,
            &root_key,
            None,
            vec![isdf_controller::trust::roots::public_hex(&recovery_key)],
            Some(4),
        )
        .unwrap();
        rogue.serve_roots(
            isdf_controller::trust::roots::RootChain::load(&controller_dir)
                .unwrap()
                .envelopes,
        );
        rogue.serve_next(signed(&FileSigner::from_key(recovery_key), 4));
        wait_report(&mut rogue, &agent, |r| {
            r.outcome == Outcome::Applied && r.enforced_version == Some(4)
        })
        .await;
        // And the compromised key is refused from then on.
        let rejected = next_rejection(&mut rogue, &agent, signed(&compromised, 2_000_000)).await;
        assert!(
            rejected.errors[0].starts_with("unknown_key"),
            "{:?}",
            rejected.errors
        );
        rogue.stop();
        drop(agent);
    });
}

fn hex_of(signer: &FileSigner) -> String {
    signer
        .public_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Waits for a report from the agent that satisfies `done`; a rejection
/// on the way fails the test.
async fn wait_report(
    rogue: &mut RogueController,
    agent: &AgentProcess,
    done: impl Fn(&isdf_api::StatusReport) -> bool,
) {
    loop {
        let report = rogue
            .next_report(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("no report; agent log:\n{}", agent.log()));
        assert_ne!(
            report.outcome,
            Outcome::Rejected,
            "{:?}\n{}",
            report.errors,
            agent.log()
        );
        if done(&report) {
            return;
        }
    }
}

/// Serves `envelope` and waits for the agent's rejection report.
async fn next_rejection(
    rogue: &mut RogueController,
    agent: &AgentProcess,
    envelope: Vec<u8>,
) -> isdf_api::StatusReport {
    rogue.serve_next(envelope);
    loop {
        let report = rogue
            .next_report(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("no report; agent log:\n{}", agent.log()));
        if report.outcome == Outcome::Rejected {
            return report;
        }
    }
}
