//! The real HAProxy, with the shipped `deploy/haproxy/haproxy.cfg`, in
//! front of three controller replicas on one database (two in this process,
//! so the test can see what they hold; one the real binary, so it can be
//! SIGKILLed): routers' TLS passes through to the replicas (the controller,
//! not HAProxy, sees the client certificate), a change made through the
//! operator frontend wakes a long poll held through the device frontend,
//! and a killed replica is taken out by the health checks while every
//! request keeps succeeding. HAProxy listens only on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isdf_controller::test_support::{create_test_database, TestController, TestControllerOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::crash::process::{log_tail, ControllerProcess};
use crate::replicas::until;
use crate::support::trusting_the_ca;

/// The one configuration: what operators install and what runs here.
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy/haproxy.cfg");
/// Longest wait for anything here (it takes well under a second).
const PATIENCE: Duration = Duration::from_secs(20);
/// How often HAProxy checks each replica here (2 s in the shipped file).
const CHECK_INTERVAL: &str = "250ms";
/// The names of the servers in the shipped configuration, and its backends.
const SERVERS: [&str; 3] = ["ctl1", "ctl2", "ctl3"];
const BACKENDS: [&str; 4] = ["device", "enrollment", "operator", "portal"];
/// HAProxy's address as the replicas see it: its connections to the
/// device and enrollment listeners open with a PROXY header.
const LOAD_BALANCER: &str = "127.0.0.1/32";
/// Routers connect from another loopback address, so the replicas can
/// tell the router the header names from the load balancer.
const ROUTER_SOURCE: [u8; 4] = [127, 0, 0, 77];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_passes_router_tls_through_wakes_polls_and_takes_a_killed_replica_out() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let binary = require_haproxy();
    let data_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let front = FrontPorts::pick();
    let database_url = create_test_database().await.unwrap();

    // Three replicas sharing the database and the keys, their operator API
    // over HTTPS as it must be off loopback.
    let portal_public_url = format!("https://127.0.0.1:{}", front.portal);
    let options = || {
        let mut options = TestControllerOptions::new(data_dir.path());
        options.database_url = Some(database_url.clone());
        options.api_tls = true;
        options.portal_public_url = Some(portal_public_url.clone());
        options.proxy_protocol_from = vec![LOAD_BALANCER.parse().unwrap()];
        options
    };
    let one = TestController::start(options()).await.expect("replica 1");
    let two = TestController::start(options()).await.expect("replica 2");
    let controller_log = work.path().join("controller.log");
    let three = ControllerProcess::start_with(
        &database_url,
        data_dir.path(),
        &controller_log,
        &[
            "--api-tls",
            "--portal-public-url",
            &portal_public_url,
            "--proxy-protocol-from",
            LOAD_BALANCER,
        ],
    )
    .await;
    let replicas = [
        Backends::of(
            &one.api_url,
            &one.device_url,
            &one.enrollment_url,
            &one.portal_addr.to_string(),
        ),
        Backends::of(
            &two.api_url,
            &two.device_url,
            &two.enrollment_url,
            &two.portal_addr.to_string(),
        ),
        Backends::of(
            &three.listening.api,
            &three.listening.device,
            &three.listening.enrollment,
            &three.listening.portal,
        ),
    ];
    let lb_ca = write_frontend_certificate(work.path());
    let haproxy = HaProxy::start(&binary, &front, &replicas, data_dir.path(), work.path()).await;
    haproxy
        .until_servers("every replica is checked ready", |s| {
            s.status == "UP" && s.check.contains("L7OK")
        })
        .await;

    let operator = Operator {
        http: client(trusting_the_ca(&lb_ca).with_no_client_auth()),
        base: format!("https://127.0.0.1:{}", front.operator),
        token: one.operator_token.clone(),
    };
    let routers = Routers {
        ca_pem: one.ca_pem.clone(),
        device: format!("https://127.0.0.1:{}", front.device),
        enrollment: format!("https://127.0.0.1:{}", front.enrollment),
    };

    // 1. Enrollment and the device API through the TCP passthrough: the
    // router verifies the controller's own certificate (HAProxy has no key
    // for it) and the controller reads the router's identity from its
    // client certificate.
    let (id, router) = routers.register_and_enroll(&operator, "home-1").await;
    let device_id: Uuid = id.parse().unwrap();
    // The replica saw the router's own address in HAProxy's PROXY header
    // (its per-address enrollment limit and audit are the router's).
    let (_, audit) = operator
        .call(Method::GET, "/api/v1/audit?limit=20", None)
        .await
        .unwrap();
    let enrolled = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "device.enroll" && e["target"] == id.as_str())
        .unwrap_or_else(|| panic!("no device.enroll entry: {audit}"));
    assert_eq!(
        enrolled["summary"]["peer"],
        std::net::IpAddr::from(ROUTER_SOURCE).to_string(),
        "{enrolled}"
    );
    // From the load balancer's address a connection must open with the
    // header (it is closed without); from anywhere else none is read.
    let readyz = format!("{}/readyz", one.enrollment_url);
    let headerless = client(trusting_the_ca(&routers.ca_pem).with_no_client_auth())
        .get(&readyz)
        .send()
        .await;
    assert!(headerless.is_err(), "{headerless:?}");
    let direct = router_client(trusting_the_ca(&routers.ca_pem).with_no_client_auth())
        .get(&readyz)
        .send()
        .await
        .expect("a router's own connection, no header read");
    assert_eq!(direct.status(), StatusCode::OK);
    let version = operator.config_version(&id).await;
    let (status, etag, envelope) = routers.poll(&router, None, 0).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etag, Some(format!("\"{version}\"")));
    until("replica 1 serves the config", || async {
        one.state.cache.version(device_id) == Some(version)
    })
    .await;
    let served = one.state.cache.current(device_id).unwrap();
    assert_eq!(envelope, served.envelope.to_vec(), "this router's config");
    // Without a certificate the controller itself refuses, with its JSON.
    let anonymous = client(trusting_the_ca(&routers.ca_pem).with_no_client_auth());
    let refused = anonymous
        .get(format!(
            "{}{}",
            routers.device,
            isdf_api::paths::DEVICE_CONFIG
        ))
        .send()
        .await
        .expect("TLS with the controller through HAProxy");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    let portal = client(trusting_the_ca(&lb_ca).with_no_client_auth())
        .get(format!("{portal_public_url}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        portal.status(),
        StatusCode::OK,
        "the portal through HAProxy"
    );

    // 2. A change through the operator frontend wakes a poll held through
    // the device frontend, whichever replicas they reach.
    let held = routers.poll(&router, Some(version), 30);
    let change = async {
        // On replicas 1 and 2 the poll is seen held; on the process only
        // its connection is (a change arriving before the poll settles
        // answers it at once, with the same config).
        until("the long poll reaches a replica", || async {
            one.state.device_gate.polls_held(device_id)
                + two.state.device_gate.polls_held(device_id)
                == 1
                || haproxy
                    .servers()
                    .await
                    .iter()
                    .any(|s| s.backend == "device" && s.server == "ctl3" && s.sessions == 1)
        })
        .await;
        let service = operator
            .expect(
                Method::POST,
                "/api/v1/services",
                json!({"name": "block", "kind": "flow-block",
                       "spec": {"flows": [{"dst": "192.0.2.9/32"}]}}),
                StatusCode::CREATED,
            )
            .await;
        operator
            .expect(
                Method::POST,
                "/api/v1/assignments",
                json!({"service_id": service["id"], "selector": "region=north"}),
                StatusCode::CREATED,
            )
            .await;
    };
    let (woken, ()) = tokio::join!(held, change);
    let (status, etag, _) = woken.expect("the held poll answers");
    let after = operator.config_version(&id).await;
    assert!(after > version);
    assert_eq!(status, StatusCode::OK, "the change woke the poll");
    assert_eq!(etag, Some(format!("\"{after}\"")));

    // 3. SIGKILL of the replica that is a real process. Requests keep
    // succeeding (a refused connection is retried on another replica)...
    three.kill();
    let mut attempt = 0;
    let (second, second_router) = within("a router enrolls and polls", || {
        attempt += 1;
        let name = format!("home-2-{attempt}");
        let (routers, operator) = (&routers, &operator);
        async move {
            let (id, router) = routers.try_register_and_enroll(operator, &name).await?;
            let (status, _, _) = routers.poll(&router, None, 0).await.ok()?;
            (status == StatusCode::OK).then_some((id, router))
        }
    })
    .await;
    // ...and the checks mark it DOWN on every frontend.
    haproxy
        .until_servers("the killed replica is DOWN, the others UP", |s| {
            (s.server == "ctl3") == (s.status == "DOWN")
        })
        .await;
    let states = haproxy.servers().await;
    for backend in BACKENDS {
        let killed = states
            .iter()
            .find(|s| s.backend == backend && s.server == "ctl3")
            .unwrap();
        assert_eq!(killed.status, "DOWN", "{backend}: {killed:?}");
    }
    // Once it is out, every request succeeds at its first attempt.
    let (third, third_router) = routers.register_and_enroll(&operator, "home-3").await;
    for (id, router) in [(&second, &second_router), (&third, &third_router)] {
        let version = operator.config_version(id).await;
        let (status, etag, _) = routers.poll(router, None, 0).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(etag, Some(format!("\"{version}\"")));
    }
    assert!(
        !log_tail(&controller_log, 200).contains("panicked"),
        "{}",
        log_tail(&controller_log, 40)
    );
    drop(haproxy);
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

/// Where `haproxy` is on the PATH; fails (never skips) when it is not
/// installed.
fn require_haproxy() -> PathBuf {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| {
            Command::new(candidate)
                .arg("-v")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    found.unwrap_or_else(|| {
        panic!(
            "`haproxy` is not installed: this test runs the real HAProxy \
             (Debian package `haproxy`; scripts/test installs it)"
        )
    })
}

/// Retries `attempt` until it gives a value, at most [`PATIENCE`].
async fn within<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client(tls: rustls::ClientConfig) -> reqwest::Client {
    client_builder(tls).build().unwrap()
}

fn client_builder(tls: rustls::ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(60))
        // A new connection for every request, so each is balanced anew
        // (and a held poll is the only connection the stats count).
        .pool_max_idle_per_host(0)
}

/// A router's client: from [`ROUTER_SOURCE`].
fn router_client(tls: rustls::ClientConfig) -> reqwest::Client {
    client_builder(tls)
        .local_address(std::net::IpAddr::from(ROUTER_SOURCE))
        .build()
        .unwrap()
}

/// Free ports of 127.0.0.1 for HAProxy's frontends.
struct FrontPorts {
    operator: u16,
    device: u16,
    enrollment: u16,
    portal: u16,
    stats: u16,
}

impl FrontPorts {
    fn pick() -> Self {
        // Held together while picking, so the five differ.
        let listeners: Vec<std::net::TcpListener> = (0..5)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let port = |i: usize| listeners[i].local_addr().unwrap().port();
        FrontPorts {
            operator: port(0),
            device: port(1),
            enrollment: port(2),
            portal: port(3),
            stats: port(4),
        }
    }
}

/// One replica's four listeners as HAProxy's server addresses.
struct Backends {
    api: String,
    device: String,
    enrollment: String,
    portal: String,
}

impl Backends {
    fn of(api: &str, device: &str, enrollment: &str, portal: &str) -> Self {
        let address = |url: &str| {
            url.split_once("://")
                .map_or(url, |(_, rest)| rest)
                .trim_end_matches('/')
                .to_owned()
        };
        Backends {
            api: address(api),
            device: address(device),
            enrollment: address(enrollment),
            portal: address(portal),
        }
    }
}

/// Writes HAProxy's certificate for its browser frontends (a leaf for
/// 127.0.0.1 and its key, in one PEM file) and returns the PEM of the CA
/// that issued it, which the test's clients trust.
fn write_frontend_certificate(dir: &Path) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test load balancer CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::V4(
        std::net::Ipv4Addr::LOCALHOST,
    ))];
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    let pem = format!("{}{}", leaf.pem(), key.serialize_pem());
    std::fs::write(dir.join("frontend.pem"), pem).unwrap();
    ca.pem()
}

/// The real `haproxy` in the foreground; killed by PID when dropped.
struct HaProxy {
    child: Child,
    log: PathBuf,
    stats: String,
}

/// One server line of a backend, as the stats CSV shows it.
#[derive(Debug)]
struct ServerState {
    backend: String,
    server: String,
    /// `UP`, `DOWN`, or a transition such as `UP 1/2`.
    status: String,
    /// The last check's result, e.g. `L7OK`, `L4CON`.
    check: String,
    /// Connections open to it now.
    sessions: u64,
}

impl HaProxy {
    async fn start(
        binary: &Path,
        front: &FrontPorts,
        replicas: &[Backends],
        data_dir: &Path,
        work: &Path,
    ) -> Self {
        let log = work.join("haproxy.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let loopback = |port: u16| format!("127.0.0.1:{port}");
        let mut env: Vec<(String, String)> = vec![
            ("ISDF_CA_FILE".into(), path(&data_dir.join("ca.pem"))),
            ("ISDF_CONTROLLER_TLS_NAME".into(), "localhost".into()),
            ("ISDF_LB_CERT".into(), path(&work.join("frontend.pem"))),
            (
                "ISDF_LB_RUNTIME_SOCKET".into(),
                path(&work.join("admin.sock")),
            ),
            ("ISDF_LB_MAXCONN".into(), "1000".into()),
            ("ISDF_LB_CHECK_INTER".into(), CHECK_INTERVAL.into()),
            ("ISDF_LB_OPERATOR_BIND".into(), loopback(front.operator)),
            ("ISDF_LB_DEVICE_BIND".into(), loopback(front.device)),
            ("ISDF_LB_ENROLLMENT_BIND".into(), loopback(front.enrollment)),
            ("ISDF_LB_PORTAL_BIND".into(), loopback(front.portal)),
            ("ISDF_LB_STATS_BIND".into(), loopback(front.stats)),
        ];
        assert_eq!(replicas.len(), SERVERS.len());
        for (n, replica) in replicas.iter().enumerate() {
            let n = n + 1;
            env.push((format!("ISDF_CTL{n}_API"), replica.api.clone()));
            env.push((format!("ISDF_CTL{n}_DEVICE"), replica.device.clone()));
            env.push((
                format!("ISDF_CTL{n}_ENROLLMENT"),
                replica.enrollment.clone(),
            ));
            env.push((format!("ISDF_CTL{n}_PORTAL"), replica.portal.clone()));
        }
        let child = Command::new(binary)
            // In the foreground, one process: its PID is HAProxy.
            .arg("-db")
            .args(["-f", CONFIG])
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("starting haproxy");
        let mut haproxy = HaProxy {
            child,
            log,
            stats: format!("http://127.0.0.1:{}/stats;csv", front.stats),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(exit) = haproxy.child.try_wait().unwrap() {
                panic!("haproxy exited ({exit}):\n{}", log_tail(&haproxy.log, 40));
            }
            if reqwest::get(&haproxy.stats).await.is_ok() {
                return haproxy;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not answer on its stats port within {PATIENCE:?}:\n{}",
                log_tail(&haproxy.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every server of the four backends, from the stats CSV.
    async fn servers(&self) -> Vec<ServerState> {
        let csv = reqwest::get(&self.stats)
            .await
            .expect("haproxy's stats")
            .text()
            .await
            .unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .expect("a CSV header")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|c| *c == name).unwrap();
        let (px, sv, status, check, scur) = (
            column("pxname"),
            column("svname"),
            column("status"),
            column("check_status"),
            column("scur"),
        );
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| BACKENDS.contains(&f[px]) && SERVERS.contains(&f[sv]))
            .map(|f| ServerState {
                backend: f[px].to_owned(),
                server: f[sv].to_owned(),
                status: f[status].to_owned(),
                check: f[check].to_owned(),
                sessions: f[scur].parse().unwrap_or(0),
            })
            .collect()
    }

    /// Waits until all twelve servers satisfy `holds`.
    async fn until_servers(&self, what: &str, holds: impl Fn(&ServerState) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let servers = self.servers().await;
            if servers.len() == BACKENDS.len() * SERVERS.len() && servers.iter().all(&holds) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {PATIENCE:?}: {servers:#?}\n{}",
                log_tail(&self.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        // SIGKILL to this PID only, then reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 path").to_owned()
}

/// The operator API through HAProxy's operator frontend.
struct Operator {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Operator {
    /// A call: its status and JSON body, or the transport error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn expect(&self, method: Method, path: &str, body: Value, want: StatusCode) -> Value {
        let (status, body) = self.call(method, path, Some(body)).await.unwrap();
        assert_eq!(status, want, "{path}: {body}");
        body
    }

    async fn config_version(&self, id: &str) -> u64 {
        let (status, body) = self
            .call(Method::GET, &format!("/api/v1/devices/{id}/config"), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body["version"].as_u64().unwrap()
    }
}

/// Routers' side: enrollment and the device API through HAProxy.
struct Routers {
    ca_pem: String,
    device: String,
    enrollment: String,
}

impl Routers {
    async fn register_and_enroll(
        &self,
        operator: &Operator,
        name: &str,
    ) -> (String, reqwest::Client) {
        self.try_register_and_enroll(operator, name)
            .await
            .unwrap_or_else(|| panic!("{name}: registering or enrolling through HAProxy failed"))
    }

    /// Registers a device through the operator frontend and enrolls it
    /// through the enrollment frontend: its id and a client presenting its
    /// certificate; `None` if a step failed.
    async fn try_register_and_enroll(
        &self,
        operator: &Operator,
        name: &str,
    ) -> Option<(String, reqwest::Client)> {
        let (status, device) = operator
            .call(
                Method::POST,
                "/api/v1/devices",
                Some(json!({"name": name, "labels": {"region": "north"}})),
            )
            .await
            .ok()?;
        if status != StatusCode::CREATED {
            return None;
        }
        let id = device["device"]["id"].as_str()?.to_owned();
        let token = device["enrollment_token"].as_str()?;
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(vec!["ignored.example".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let enrolled = router_client(trusting_the_ca(&self.ca_pem).with_no_client_auth())
            .post(format!("{}{}", self.enrollment, isdf_api::paths::ENROLL))
            .json(&json!({"token": token, "csr_pem": csr}))
            .send()
            .await
            .ok()?;
        assert_eq!(enrolled.status(), StatusCode::OK, "enrollment of {name}");
        let certificate: isdf_api::enrollment::DeviceCertificate = enrolled.json().await.ok()?;
        assert_eq!(certificate.device_id, id);
        let certs = rustls_pemfile::certs(&mut certificate.certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key.serialize_pem().as_bytes())
            .unwrap()
            .unwrap();
        let tls = trusting_the_ca(&self.ca_pem)
            .with_client_auth_cert(certs, key)
            .unwrap();
        Some((id, router_client(tls)))
    }

    /// A long poll through the device frontend: (status, ETag, body).
    async fn poll(
        &self,
        router: &reqwest::Client,
        enforced: Option<u64>,
        wait: u64,
    ) -> Result<(StatusCode, Option<String>, Vec<u8>), reqwest::Error> {
        let mut request = router.get(format!(
            "{}{}?wait={wait}",
            self.device,
            isdf_api::paths::DEVICE_CONFIG
        ));
        if let Some(v) = enforced {
            request = request.header("if-none-match", format!("\"{v}\""));
        }
        let response = request.send().await?;
        let status = response.status();
        let etag = response
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok((status, etag, response.bytes().await?.to_vec()))
    }
}
