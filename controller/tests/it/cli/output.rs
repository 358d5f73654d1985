//! Every command's `-o json` output parses; whoami, the fleet overview and
//! revision diffs.

use super::*;

#[tokio::test]
async fn cli_json_output_of_every_command_parses() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    ctl.ok(&["apply", "-f", &ctl.file("fleet.yaml", FLEET)])
        .await;
    reporting_router(&h, "r1").await;
    let spec = ctl.file(
        "spec.json",
        r#"{"flows": [{"protocol": "udp", "dport": 53}]}"#,
    );
    let spec2 = ctl.file("spec2.yaml", "flows:\n  - {protocol: udp, dport: 5353}\n");

    for kind in [
        "devices",
        "services",
        "assignments",
        "customers",
        "sites",
        "vpns",
        "operator-tokens",
    ] {
        assert!(ctl.json(&["get", kind, "--all"]).await.is_array(), "{kind}");
    }
    assert!(ctl.json(&["get", "audit", "--limit", "3"]).await.is_array());
    for (kind, name) in [
        ("devices", "home-hq"),
        ("services", "block-telnet"),
        ("customers", "Smith household"),
        ("sites", "main/Stream+"),
        ("vpns", "offices"),
    ] {
        assert_eq!(
            ctl.json(&["get", kind, name]).await["name"],
            name.rsplit('/').next().unwrap()
        );
    }

    // Devices.
    let family = ctl
        .json(&["devices", "list", "-l", "plan=family", "--all"])
        .await;
    assert_eq!(family.as_array().unwrap().len(), 2);
    assert_eq!(
        ctl.json(&["devices", "list", "--limit", "1"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ctl.json(&["devices", "get", "r1"]).await;
    let extra = ctl
        .json(&["devices", "create", "extra", "--label", "a=b"])
        .await;
    assert!(extra["enrollment_token"].is_string());
    ctl.json(&["devices", "create", "relay-1"]).await;
    ctl.json(&["devices", "config", "r1"]).await;
    ctl.json(&["devices", "status", "r1"]).await;
    assert!(ctl.json(&["devices", "history", "r1"]).await.is_array());
    ctl.json(&["devices", "enrollment-token", "home-hq"]).await;
    ctl.json(&["devices", "events", "r1"]).await;
    ctl.json(&["devices", "wireguard", "get", "r1"]).await;
    ctl.json(&["devices", "wireguard", "rotate", "r1"]).await;
    let tokens = ctl
        .json(&[
            "enrollment-tokens",
            "create",
            "--count",
            "2",
            "--label",
            "plan=bulk",
        ])
        .await;
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 2);

    // Services, revisions, assignments.
    ctl.json(&[
        "services",
        "create",
        "dns",
        "--kind",
        "flow-block",
        "--spec",
        &spec,
    ])
    .await;
    ctl.json(&["services", "list"]).await;
    ctl.json(&["services", "get", "dns"]).await;
    assert_eq!(
        ctl.json(&["services", "revisions", "create", "dns", "--spec", &spec2])
            .await["revision"],
        2
    );
    assert_eq!(
        ctl.json(&["services", "revisions", "list", "dns"])
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    ctl.json(&["services", "revisions", "get", "dns", "1"])
        .await;
    let assignment = ctl
        .json(&[
            "assignments",
            "create",
            "--service",
            "dns",
            "--selector",
            "plan=lab",
        ])
        .await;
    let assignment_id = assignment["id"].as_str().unwrap();
    assert_eq!(assignment["revision"], 2);
    assert_eq!(
        ctl.json(&["assignments", "list", "--service", "dns"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ctl.json(&["assignments", "get", assignment_id]).await;
    assert_eq!(
        ctl.json(&["assignments", "set-revision", assignment_id, "1"])
            .await["revision"],
        1
    );
    ctl.json(&["assignments", "delete", assignment_id]).await;

    // Operator tokens and the audit log.
    assert!(ctl
        .json(&["operator-tokens", "create", "bot", "--role", "viewer"])
        .await["token"]
        .is_string());
    ctl.json(&["operator-tokens", "list"]).await;
    assert!(ctl.json(&["operator-tokens", "revoke", "bot"]).await["revoked_at"].is_string());
    ctl.json(&["audit", "list", "--limit", "5"]).await;

    // Customers, sites, purchases.
    ctl.json(&[
        "customers",
        "create",
        "Jones",
        "--external-ref",
        "crm-7",
        "--device",
        "extra",
    ])
    .await;
    ctl.json(&["customers", "list"]).await;
    ctl.json(&["customers", "get", "Jones"]).await;
    ctl.json(&["customers", "detach", "Jones", "extra"]).await;
    ctl.json(&["customers", "attach", "Jones", "extra"]).await;
    let music = [
        "--name",
        "Music",
        "--domain",
        "music.example",
        "--currency",
        "EUR",
    ];
    ctl.json(&[&["sites", "create"][..], &music, &["--pass", "3600:100"]].concat())
        .await;
    ctl.json(&["sites", "list", "--catalog", "main"]).await;
    ctl.json(&["sites", "get", "main/Music"]).await;
    ctl.json(
        &[
            &["sites", "update", "main/Music"][..],
            &music,
            &["--pass", "7200:150"],
        ]
        .concat(),
    )
    .await;
    let purchase = ctl
        .json(&[
            "purchases",
            "create",
            "--customer",
            "Jones",
            "--site",
            "Music",
            "--duration",
            "7200",
        ])
        .await;
    let purchase_id = purchase["id"].as_str().unwrap();
    let active = ctl
        .json(&[
            "purchases",
            "list",
            "--customer",
            "Jones",
            "--active",
            "true",
        ])
        .await;
    assert_eq!(active.as_array().unwrap().len(), 1);
    ctl.json(&["purchases", "cancel", purchase_id]).await;
    ctl.json(&["sites", "delete", "main/Music"]).await;

    // VPNs and relays.
    ctl.json(&[
        "vpns",
        "create",
        "jones-vpn",
        "--customer",
        "Jones",
        "--member",
        "extra=10.9.0.0/24",
    ])
    .await;
    ctl.json(&["vpns", "list", "--customer", "Jones"]).await;
    ctl.json(&["vpns", "get", "jones-vpn"]).await;
    ctl.json(&["vpns", "update", "jones-vpn", "--topology", "mesh"])
        .await;
    ctl.json(&[
        "vpns",
        "members",
        "put",
        "jones-vpn",
        "extra",
        "--prefix",
        "10.9.1.0/24",
    ])
    .await;
    ctl.json(&["vpns", "members", "delete", "jones-vpn", "extra"])
        .await;
    ctl.json(&["vpns", "delete", "jones-vpn"]).await;
    ctl.json(&["vpn-relays", "add", "relay-1"]).await;
    assert_eq!(
        ctl.json(&["vpn-relays", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ctl.json(&["vpn-relays", "remove", "relay-1"]).await;

    // Blocks.
    let blocks = ctl
        .json(&[
            "blocks",
            "create",
            "r1",
            "--flow",
            "{protocol: tcp, dport: 22}",
            "--duration",
            "60",
        ])
        .await;
    let block_id = blocks["items"][0]["id"].as_str().unwrap();
    assert!(ctl.json(&["blocks", "list", "r1"]).await.is_array());
    ctl.json(&["blocks", "delete", "r1", block_id]).await;

    // Deletions last; then the API document.
    ctl.json(&["customers", "delete", "Jones"]).await;
    ctl.json(&["devices", "delete", "extra"]).await;
    assert!(ctl.json(&["openapi"]).await["paths"].is_object());
    // Tables print too.
    let table = ctl.ok(&["get", "devices"]).await;
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
}

/// `whoami`, `fleet overview` and `services diff` answer JSON that parses,
/// and the diff's text shows the changed port.
#[tokio::test]
async fn cli_whoami_fleet_overview_and_revision_diff() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    ctl.ok(&["apply", "-f", &ctl.file("fleet.yaml", FLEET)])
        .await;
    let changed = ctl.file("changed.yaml", &FLEET.replace("dport: 23}", "dport: 2323}"));
    ctl.ok(&["apply", "-f", &changed]).await;
    assert!(ctl.json(&["whoami"]).await.is_object());
    assert!(ctl.json(&["fleet", "overview"]).await.is_object());
    let diff = ctl
        .json(&["services", "diff", "block-telnet", "1", "2"])
        .await;
    assert!(diff["unified"].is_string());
    let text = ctl
        .ok(&["services", "diff", "block-telnet", "1", "2"])
        .await;
    assert!(text.stdout.contains("2323"), "{}", text.stdout);
}
