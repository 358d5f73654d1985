//! What the end-to-end tests share: the agent as a real process in the
//! router namespace, an operator driving the real controller's API, a
//! controller staged for a topology, traffic helpers and bounded waits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isdf_controller::test_support::{TestController, TestControllerOptions};
use serde_json::{json, Value};

use crate::kernel_state::Snapshot;
use crate::netns::{Netns, Topology, WAN_HOST};

pub(crate) const OPEN_PORT: u16 = 9001;

pub(crate) const ATTEMPT: Duration = Duration::from_millis(300);

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

    /// The agent as the README starts it: `isdf-agent run --config FILE`,
    /// nothing more (the backend its config says, `auto` by default).
    pub(crate) fn start_as_documented(router: &Netns, config: &Path, log: &Path) -> Self {
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            &router.name,
            env!("CARGO_BIN_EXE_isdf-agent"),
        ]);
        Self::spawn_with(command, config, None, log)
    }

    /// Runs `command` (which ends in the agent binary) with the agent's
    /// arguments, its output appended to `log`.
    fn spawn(command: Command, config: &Path, backend: &str, log: &Path) -> Self {
        Self::spawn_with(command, config, Some(backend), log)
    }

    fn spawn_with(mut command: Command, config: &Path, backend: Option<&str>, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = command
            .args(["run", "--config"])
            .arg(config)
            .args(backend.map(|b| ["--backend", b]).into_iter().flatten())
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

    /// Stops the agent as a service manager does (SIGTERM) and returns how
    /// it ended (killed if it has not within 5 s).
    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // Ended already (killed, or stopped before the drop): its pid may
        // be another process's by now.
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let _ = self.child.kill();
        self.child.wait().expect("waiting for the agent")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    /// Asks the agent to stop (SIGTERM), so it ends what it started (its
    /// wireguard-go processes), then kills it if it has not within 5 s.
    /// What outlives it by design (its dnsmasq) ends with the namespace.
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The kernel ruleset the backend manages, without counters and timers, so
/// two snapshots are equal exactly when rules, sets and elements are (and,
/// for iptables, whichever of its two generations is live).
pub(crate) fn ruleset(router: &Netns, backend: &str) -> String {
    Snapshot::take(router, backend).full
}

/// The packets counted by the rules of the agent's nft table commented
/// `comment`, in `router`'s namespace.
pub(crate) fn nft_counter(router: &Netns, comment: &str) -> u64 {
    let listing: Value =
        serde_json::from_str(&router.run("nft", &["-j", "list", "table", "inet", "isdf"]))
            .expect("nft -j output");
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["rule"]["comment"] == comment)
        .flat_map(|item| item["rule"]["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|expr| expr["counter"]["packets"].as_u64())
        .sum()
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
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) token: String,
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
    pub(crate) async fn block_everywhere(&self, flows: Value) -> Value {
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

    /// The device's latest status report (null before its first).
    pub(crate) async fn latest_report(&self, device: &str) -> Value {
        self.try_get(&format!("/api/v1/devices/{device}/status"))
            .await
            .map(|s| s["report"].clone())
            .unwrap_or(Value::Null)
    }

    /// The version of the device's compiled config.
    pub(crate) async fn config_version(&self, device: &str) -> u64 {
        self.get(&format!("/api/v1/devices/{device}/config")).await["version"]
            .as_u64()
            .unwrap()
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
    /// Starts the agent (nftables backend) on `router`, waits for its first
    /// config, then assigns `bittorrent-block` (600 s blocks) to every
    /// router and waits until this one enforces it. Returns the agent and
    /// the service.
    pub(crate) async fn start_with_bittorrent_block(
        &self,
        router: &Netns,
    ) -> (AgentProcess, Value) {
        let agent = AgentProcess::start(router, &self.config_path, "nftables", &self.log);
        self.operator.wait_applied(&self.device, 1).await;
        let service = self
            .operator
            .assign_everywhere("bittorrent-block", json!({"block_secs": 600}))
            .await;
        self.operator.wait_applied(&self.device, 2).await;
        (agent, service)
    }

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
                 metrics_textfile = \"{dir}/isdf_agent.prom\"\n\
                 lan_interfaces = [\"lan\"]\nwan_interfaces = [\"wan\"]\n\
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

/// Where `program` is on the PATH; fails (never skips) naming the Debian
/// package that has it when it is missing.
pub fn required_program(program: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("`{program}` is not installed: install the Debian package `{package}` (scripts/test does)")
        })
}
