//! The OpenAPI contract: the listeners' documents describe what the
//! controller serves. schemathesis (every check, deterministic, bounded)
//! runs against a real controller from each listener's document (the
//! device listener's with an enrolled router's client certificate) and
//! finds nothing; a client generated from the operator document by
//! openapi-python-client drives the operator's first steps
//! (`openapi_contract/smoke.py`); every `{name}` of every path is declared
//! as a parameter; 405 answers carry the JSON error body on every listener.
//!
//! The tools are installed, pinned, by `scripts/install-api-tools` (which
//! `scripts/test` runs) into `ISDF_API_TOOLS` (default
//! `/var/tmp/isdf-api-tools`); a missing one fails the test with its name,
//! never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use isdf_controller::test_support::TestControllerOptions;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::Harness;

/// Test cases per operation and phase: enough to reach every documented
/// answer, few enough for about two minutes on two busy cores.
const MAX_EXAMPLES: &str = "12";
/// A run that takes longer than this is stopped and fails the test.
const RUN_DEADLINE: Duration = Duration::from_secs(420);

fn contract_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/openapi_contract")
}

/// A program of the pinned tools' virtual environment; a missing one fails
/// the test with what to run.
fn tool(name: &str) -> PathBuf {
    let tools = std::env::var_os("ISDF_API_TOOLS")
        .map_or_else(|| PathBuf::from("/var/tmp/isdf-api-tools"), PathBuf::from);
    let program = tools.join("bin").join(name);
    assert!(
        program.is_file(),
        "`{name}` is not installed: the OpenAPI contract test needs schemathesis and \
         openapi-python-client; scripts/install-api-tools installs both, pinned, into {} \
         (scripts/test runs it)",
        tools.display()
    );
    program
}

/// Runs `command` off the async workers (the controller answers meanwhile),
/// killing it past [`RUN_DEADLINE`].
async fn run(mut command: Command) -> Output {
    let what = format!("{command:?}");
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // Drain the pipes while waiting, so a chatty child never blocks.
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let read = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > RUN_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} ran over {RUN_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Output {
            status,
            stdout: out.join().expect("reader"),
            stderr: err.join().expect("reader"),
        }
    })
    .await
    .expect("the tool's thread")
}

/// A controller whose refusal budget lets schemathesis probe every
/// operation without credentials (it expects 401 each time, where the
/// controller would answer 429 after a burst of 20 from one address).
async fn contract_harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut options = TestControllerOptions::new(dir.path());
    options.refusal_budget = Some((1000.0, 100_000));
    Harness::start_from(options, dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_the_operator_api_and_enrollment() {
    let schemathesis = tool("schemathesis");
    let h = contract_harness().await;
    // Something to find: the stateful phase follows links from these.
    let (device, _) = h.register("contract-1", json!({"site": "a"})).await;
    let service = h
        .flow_block(
            "contract-block",
            json!({"flows": [{"protocol": "tcp", "dport": 9000}]}),
        )
        .await;
    assert_eq!(
        h.assign(&service, "site=a").await.status,
        StatusCode::CREATED
    );

    let api = &h.controller.api_url;
    let bearer = format!("Authorization: Bearer {}", h.controller.operator_token);
    let mut command = schemathesis_run(&schemathesis, &format!("{api}/api/v1/openapi.json"), api);
    command.args(["-H", &bearer]);
    expect_nothing_found(command, &format!("the operator API (device {device})")).await;

    // The enrollment listener, from its own document (TLS with our CA).
    let work = tempfile::tempdir().unwrap();
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, &h.controller.ca_pem).unwrap();
    let mut command = schemathesis_run(
        &schemathesis,
        &format!("{api}/api/v1/openapi/enrollment.json"),
        &h.controller.enrollment_url,
    );
    command.arg("--tls-verify").arg(&ca);
    expect_nothing_found(command, "enrollment").await;
}

/// The device listener, with an enrolled router's certificate: its wire
/// types (status reports, events, WireGuard facts, probes, renewal) are
/// the `isdf-api` crate's, their schemas derived from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_the_device_api() {
    let schemathesis = tool("schemathesis");
    let dir = tempfile::tempdir().unwrap();
    let mut options = TestControllerOptions::new(dir.path());
    // One router makes every request: no rate limit in the way, and a long
    // poll that waits at most a second (polls answer at once anyway: the
    // run sends no `If-None-Match`, and the router has a config).
    options.limits.device_requests_per_sec = 100_000.0;
    options.limits.device_burst = 100_000;
    options.limits.max_polls_per_device = 100;
    options.limits.max_poll_wait = Duration::from_secs(1);
    let h = Harness::start_from(options, dir).await;
    let (id, device) = h.device("contract-router", json!({"site": "a"})).await;

    let work = tempfile::tempdir().unwrap();
    let [ca, certificate, key] =
        ["ca.pem", "device.pem", "device.key"].map(|f| work.path().join(f));
    std::fs::write(&ca, &h.controller.ca_pem).unwrap();
    std::fs::write(&certificate, &device.certificate.certificate_pem).unwrap();
    std::fs::write(&key, &device.key_pem).unwrap();
    let api = &h.controller.api_url;
    let mut command = schemathesis_run(
        &schemathesis,
        &format!("{api}/api/v1/openapi/device.json"),
        &h.controller.device_url,
    );
    command.arg("--tls-verify").arg(&ca);
    command.arg("--request-cert").arg(&certificate);
    command.arg("--request-cert-key").arg(&key);
    let started = Instant::now();
    expect_nothing_found(command, &format!("the device API (router {id})")).await;
    // Bounded: the long poll never held the run up.
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
}

/// `schemathesis run` of `document` against `base` with every check and the
/// contract's settings (`openapi_contract/`).
fn schemathesis_run(schemathesis: &Path, document: &str, base: &str) -> Command {
    let mut command = Command::new(schemathesis);
    command
        .current_dir(std::env::temp_dir())
        .env("NO_COLOR", "1")
        .env("PYTHONPATH", contract_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SCHEMATHESIS_HOOKS", "isdf_contract_hooks")
        .arg("--config-file")
        .arg(contract_dir().join("schemathesis.toml"))
        .args(["run", document, "--url", base])
        // Every check: `[checks] enabled = true` in the config file, not
        // `--checks all`, which would also override the per-operation
        // exceptions there.
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--workers", "1", "--no-color"])
        .args(["--request-timeout", "20"])
        // A connection the loaded CI machine drops (once: TLS EOF on
        // POST /enroll/v1, the suite's last test) is asked again; an
        // answer that breaks the contract still fails the run.
        .args(["--request-retries", "2"]);
    command
}

async fn expect_nothing_found(command: Command, what: &str) {
    let output = run(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems in {what}:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation was tested, none skipped for a schema error.
    assert!(stdout.contains("Tested: "), "{stdout}");
    assert!(!stdout.contains("Schema Error"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_document_registers_assigns_and_reads_the_config() {
    let generator = tool("openapi-python-client");
    let python = tool("python");
    let h = Harness::start().await;
    let work = tempfile::tempdir().unwrap();
    let document = h.get("/api/v1/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    std::fs::write(
        work.path().join("openapi.json"),
        serde_json::to_vec(&document.body).unwrap(),
    )
    .unwrap();
    // The generator's defaults, but no formatter run on the output (the
    // code is generated, imported and thrown away).
    std::fs::write(
        work.path().join("generator.json"),
        json!({"project_name_override": "isdf-client",
               "package_name_override": "isdf_client", "post_hooks": []})
        .to_string(),
    )
    .unwrap();
    let mut command = Command::new(generator);
    command
        .current_dir(work.path())
        .args([
            "generate",
            "--path",
            "openapi.json",
            "--config",
            "generator.json",
        ])
        .args(["--output-path", "isdf_client", "--meta", "none"]);
    let generated = run(command).await;
    let report = |o: &Output| {
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(generated.status.success(), "{}", report(&generated));
    // The generator warns about what it could not turn into code.
    let said = report(&generated);
    assert!(!said.contains("Warning"), "{said}");

    let mut command = Command::new(python);
    command
        .current_dir(work.path())
        .env("PYTHONPATH", work.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("ISDF_API_URL", &h.controller.api_url)
        .env("ISDF_TOKEN", &h.controller.operator_token)
        .arg(contract_dir().join("smoke.py"));
    let smoke = run(command).await;
    assert!(smoke.status.success(), "{}", report(&smoke));
    assert!(
        report(&smoke).contains("smoke flow: ok"),
        "{}",
        report(&smoke)
    );

    // What the generated client did is what the API holds.
    let devices = h.get("/api/v1/devices?selector=site%3Dsmoke").await;
    let items = devices.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", devices.body);
    let id = items[0]["id"].as_str().unwrap();
    let config = h.get(&format!("/api/v1/devices/{id}/config")).await;
    assert_eq!(config.status, StatusCode::OK, "{}", config.body);
    assert!(
        config.body["config"].to_string().contains("9000"),
        "{}",
        config.body
    );
}

/// Every `{name}` in a path is declared as a path parameter of each of its
/// operations, and operation ids are unique, in each listener's document.
#[tokio::test]
async fn every_document_declares_its_path_parameters_and_unique_operation_ids() {
    let h = Harness::start().await;
    for document in [
        "/api/v1/openapi.json",
        "/api/v1/openapi/device.json",
        "/api/v1/openapi/enrollment.json",
    ] {
        let doc = h.get(document).await;
        assert_eq!(doc.status, StatusCode::OK, "{document}");
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc.body["paths"].as_object().unwrap() {
            let names: Vec<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|rest| rest.split('}').next())
                .collect();
            for (method, operation) in item.as_object().unwrap() {
                let declared: Vec<&str> = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                assert_eq!(declared, names, "{document}: {method} {path}");
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    assert!(
                        parameter["in"] != "path" || parameter["required"] == true,
                        "{document}: {method} {path}: {parameter}"
                    );
                }
                let id = operation["operationId"].as_str().unwrap().to_owned();
                assert!(ids.insert(id.clone()), "{document}: {id} twice");
                // Every error answer is documented with the error body.
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{document}: {method} {path} {status}"
                        );
                    }
                }
            }
        }
    }
    // The router listeners' documents name where routers reach them.
    let device = h.get("/api/v1/openapi/device.json").await;
    assert_eq!(device.body["servers"][0]["url"], h.controller.device_url);
    // Its bodies are the wire types' schemas, not plain objects.
    for (path, method, schema) in [
        ("/device/v1/status", "post", "StatusReport"),
        ("/device/v1/events", "post", "EventBatch"),
        ("/device/v1/wireguard/facts", "put", "WireguardFacts"),
        ("/device/v1/wireguard/probe", "post", "ProbeRequest"),
    ] {
        let body = &device.body["paths"][path][method]["requestBody"];
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}"),
            "{path}: {body}"
        );
        assert_eq!(
            device.body["components"]["schemas"][schema]["additionalProperties"], false,
            "{schema}"
        );
    }
    let enrollment = h.get("/api/v1/openapi/enrollment.json").await;
    assert_eq!(
        enrollment.body["servers"][0]["url"],
        h.controller.enrollment_url
    );
    let operator = h.get("/api/v1/openapi.json").await;
    let paths = operator.body["paths"].as_object().unwrap();
    assert!(paths
        .keys()
        .all(|p| !p.starts_with("/device/") && !p.starts_with("/enroll/")));
    // Every operator route routes.rs lists is in the document (a handler
    // annotated but not listed in `OperatorApiDoc` is not).
    let routes =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/routes.rs"))
            .unwrap();
    let listed: Vec<&str> = routes
        .split('"')
        .filter(|s| s.starts_with("/api/v1/") && !s.starts_with("/api/v1/openapi"))
        .collect();
    assert!(listed.len() > 40, "{listed:?}");
    for route in listed {
        assert!(
            paths.contains_key(route),
            "{route} is served but not in /api/v1/openapi.json: list its handlers in \
             controller/src/http/openapi.rs"
        );
    }
}

/// 405 answers, like every error, carry the JSON error body and `Allow`, on
/// each listener that speaks JSON.
#[tokio::test]
async fn method_not_allowed_has_the_json_error_body_on_every_listener() {
    let h = Harness::start().await;
    let (_, device) = h.device("r405", json!({})).await;
    let answers = [
        h.http
            .request(
                Method::PUT,
                format!("{}/api/v1/devices", h.controller.api_url),
            )
            .bearer_auth(&h.controller.operator_token)
            .send()
            .await
            .unwrap(),
        // Without credentials too: the method is refused before them.
        h.http
            .request(
                Method::PATCH,
                format!("{}/api/v1/openapi.json", h.controller.api_url),
            )
            .send()
            .await
            .unwrap(),
        device
            .http
            .put(device.url(isdf_api::paths::DEVICE_CONFIG))
            .send()
            .await
            .unwrap(),
        h.device_http
            .delete(format!(
                "{}{}",
                h.controller.enrollment_url,
                isdf_api::paths::ENROLL
            ))
            .send()
            .await
            .unwrap(),
    ];
    for answer in answers {
        let url = answer.url().to_string();
        assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED, "{url}");
        assert!(answer.headers().contains_key("allow"), "{url}");
        assert_eq!(
            answer.headers()["content-type"],
            "application/json",
            "{url}"
        );
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed", "{url}: {body}");
        assert!(body["error"]["message"].is_string(), "{url}: {body}");
    }
}

/// Found by schemathesis: a request body holding the largest float made
/// every later read of the audit log answer 500 (PostgreSQL prints it back
/// as 309 digits, which serde_json did not parse back without
/// `float_roundtrip`).
#[tokio::test]
async fn the_audit_log_reads_back_bodies_holding_extreme_numbers() {
    let h = Harness::start().await;
    for number in [
        "1.7976931348623157e308",
        "-1.7976931348623157e308",
        "5e-324",
    ] {
        let refused = h
            .http
            .post(format!("{}/api/v1/services", h.controller.api_url))
            .bearer_auth(&h.controller.operator_token)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"name": "x", "type": "flow-block", "spec": {{"a": {number}}}}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
    let audit = h.get("/api/v1/audit").await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    let numbers: Vec<&Value> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["summary"]["spec"]["a"])
        .collect();
    assert_eq!(
        numbers,
        [&json!(5e-324), &json!(-f64::MAX), &json!(f64::MAX)],
        "{}",
        audit.body
    );
}
