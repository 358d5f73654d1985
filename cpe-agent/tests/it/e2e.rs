//! The end-to-end scenario, run once per firewall backend.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use isdf_api::{DeviceConfig, Envelope, Outcome, CONFIG_PAYLOAD_TYPE};
use isdf_controller::reconcile::signer::{ConfigSigner, FileSigner};
use isdf_controller::test_support::{TestController, TestControllerOptions};
use serde_json::json;

use crate::harness::{
    blocking, in_wan, ruleset, serve_greeting, wait_until, wan, AgentProcess, Operator, Stage,
    ATTEMPT, OPEN_PORT,
};
use crate::netns::{Topology, WAN_HOST};
use crate::rogue_controller::RogueController;

const BLOCKED_PORT: u16 = 9000;

#[test]
fn nftables_backend_end_to_end() {
    end_to_end("nftables");
}

#[test]
fn iptables_backend_end_to_end() {
    end_to_end("iptables");
}

fn end_to_end(backend: &'static str) {
    in_wan(&backend[..3], move |topo, work| {
        scenario(topo, backend, work)
    });
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
    let attack_count = attacks.len() as u64;
    let mut last_report = None;
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
        last_report = Some(report);
    }
    assert!(!lan(BLOCKED_PORT).await);
    rogue.stop();
    agent_counters_and_textfile(&config_path, &last_report.unwrap(), attack_count);

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

/// What the agent counted, as the last report carries it and as its
/// node-exporter textfile says (which `promtool check metrics` accepts):
/// the four configs applied, every attack rejected, the blocked port's
/// dropped packets.
fn agent_counters_and_textfile(
    config_path: &std::path::Path,
    report: &isdf_api::StatusReport,
    attacks: u64,
) {
    assert_eq!(
        report.agent_target.as_deref(),
        Some(isdf_agent::AGENT_TARGET),
        "the report names the agent's target"
    );
    let counters = report
        .agent_counters
        .as_ref()
        .expect("the report carries the agent's counters");
    assert_eq!(counters.configs_applied, 4, "{counters:?}");
    assert_eq!(counters.configs_rejected, attacks, "{counters:?}");
    assert!(
        counters.blocked_packets > 0 && counters.blocked_bytes > counters.blocked_packets,
        "{counters:?}"
    );
    assert!(
        counters.polls_failed >= 1,
        "the controller was stopped: {counters:?}"
    );
    let path = config_path.with_file_name("isdf_agent.prom");
    let text = std::fs::read_to_string(&path).expect("the agent wrote its metrics textfile");
    for line in [
        format!("isdf_agent_configs_rejected_total {attacks}"),
        format!(
            "isdf_agent_blocked_packets_total {}",
            counters.blocked_packets
        ),
        "isdf_agent_last_outcome{outcome=\"rejected\"} 1".to_owned(),
        "isdf_agent_enforced_config_version 4".to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} is not in the textfile:\n{text}"
        );
    }
    let promtool = crate::harness::required_program("promtool", "prometheus");
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics refuses the textfile: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
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
        let certified = isdf_controller::trust::roots::NextRoot {
            signing_keys: vec![new_hex],
            config_version_floor: None,
            release_keys: None,
        };
        isdf_controller::trust::roots::RootChain::rotate(
            &controller_dir,
            &root_key,
            None,
            certified,
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
            release_keys: Vec::new(),
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
        let certified = isdf_controller::trust::roots::NextRoot {
            signing_keys: vec![isdf_controller::trust::roots::public_hex(&recovery_key)],
            config_version_floor: Some(4),
            release_keys: None,
        };
        isdf_controller::trust::roots::RootChain::rotate(
            &controller_dir,
            &root_key,
            None,
            certified,
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
