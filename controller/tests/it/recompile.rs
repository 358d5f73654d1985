//! Recompilation: versions move only when content changes, and a change
//! recompiles only the devices it touches.

use reqwest::{Method, StatusCode};
use serde_json::json;

use isdf_controller::reconcile::soon::Batching;

use crate::replicas::until;
use crate::support::Harness;

#[tokio::test]
async fn version_increases_only_when_compiled_content_changes() {
    let h = Harness::start().await;
    let (prod, _) = h.register("prod", json!({"env": "prod"})).await;
    let (lab, _) = h.register("lab", json!({"env": "lab"})).await;
    assert_eq!(
        (h.config_version(&prod).await, h.config_version(&lab).await),
        (1, 1)
    );

    let service = h
        .flow_block("b", json!({"flows": [{"protocol": "tcp", "dport": 9000}]}))
        .await;
    let assigned = h.assign(&service, "env=prod").await;
    assert_eq!(
        assigned.body["recompiled"],
        json!({"devices": 1, "changed": 1, "pending": 0})
    );
    assert_eq!(
        (h.config_version(&prod).await, h.config_version(&lab).await),
        (2, 1)
    );

    let config = h.get(&format!("/api/v1/devices/{prod}/config")).await;
    let elements = &config.body["config"]["firewall"]["sets"];
    assert_eq!(
        elements.as_array().unwrap().len(),
        2,
        "v4 and v6 sets: {elements}"
    );

    // The same content assigned twice (on the same routers by another
    // selector) compiles to the same firewall.
    let twice = h.assign(&service, "env in (prod)").await;
    assert_eq!(
        twice.body["recompiled"],
        json!({"devices": 1, "changed": 0, "pending": 0})
    );
    assert_eq!(h.config_version(&prod).await, 2);

    // A new revision changes nothing until an assignment points at it.
    let r2 = h
        .post(
            &format!("/api/v1/services/{service}/revisions"),
            json!({"spec": {"flows": [{"protocol": "udp", "dport": 53}]}}),
        )
        .await;
    assert_eq!(r2.status, StatusCode::CREATED);
    assert_eq!(h.config_version(&prod).await, 2);
    let id = assigned.body["id"].as_str().unwrap();
    let moved = h
        .call(
            Method::PATCH,
            &format!("/api/v1/assignments/{id}"),
            Some(json!({"revision": 2})),
        )
        .await;
    assert_eq!(moved.body["recompiled"]["changed"], 1);
    assert_eq!(h.config_version(&prod).await, 3);

    // Removing the revision-2 assignment brings back revision 1's content
    // (version 4); removing the last one empties the firewall (version 5).
    let deleted = h
        .call(Method::DELETE, &format!("/api/v1/assignments/{id}"), None)
        .await;
    assert_eq!(deleted.body["recompiled"]["changed"], 1);
    assert_eq!(h.config_version(&prod).await, 4);
    let other = twice.body["id"].as_str().unwrap();
    h.call(
        Method::DELETE,
        &format!("/api/v1/assignments/{other}"),
        None,
    )
    .await;
    assert_eq!(h.config_version(&prod).await, 5);
    let empty = h.get(&format!("/api/v1/devices/{prod}/config")).await;
    assert_eq!(
        empty.body["config"]["firewall"],
        json!({"sets": [], "rules": []})
    );
    assert_eq!(h.config_version(&lab).await, 1);
}

#[tokio::test]
async fn a_change_recompiles_only_the_devices_it_selects() {
    let h = Harness::start().await;
    for i in 0..30 {
        let region = if i % 3 == 0 { "eu" } else { "us" };
        h.register(&format!("r{i:02}"), json!({"region": region}))
            .await;
    }
    let service = h
        .flow_block("b", json!({"flows": [{"dst": "203.0.113.0/24"}]}))
        .await;
    let assigned = h.assign(&service, "region=eu").await;
    assert_eq!(
        assigned.body["recompiled"],
        json!({"devices": 10, "changed": 10, "pending": 0})
    );
    let everyone = h.assign(&service, "*").await;
    assert_eq!(
        everyone.body["recompiled"],
        json!({"devices": 30, "changed": 20, "pending": 0})
    );
}

#[tokio::test]
async fn sql_and_in_memory_selectors_agree() {
    use isdf_controller::model::{Labels, Selector};
    let h = Harness::start().await;
    let label_sets = [
        json!({}),
        json!({"env": "prod"}),
        json!({"env": "lab", "beta": "yes"}),
        json!({"env": "prod", "region": "eu"}),
        json!({"region": "us", "beta": "no"}),
    ];
    for (i, labels) in label_sets.iter().enumerate() {
        h.register(&format!("d{i}"), labels.clone()).await;
    }
    let selectors = [
        "*",
        "env=prod",
        "env!=prod",
        "beta",
        "!beta",
        "region in (eu,us)",
        "region notin (eu)",
        "env=prod,region",
        "env!=lab,!beta",
    ];
    for text in selectors {
        let selector = Selector::parse(text).unwrap();
        let expected: Vec<String> = label_sets
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                selector.matches(&serde_json::from_value::<Labels>((*l).clone()).unwrap())
            })
            .map(|(i, _)| format!("d{i}"))
            .collect();
        let query: String = url_encode(text);
        let listed = h.get(&format!("/api/v1/devices?selector={query}")).await;
        let names: Vec<String> = listed.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, expected, "selector {text}");
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An assignment selecting more routers than one change compiles at once
/// answers before they are compiled, says how many are pending, and the
/// recompile pass gives each its new config within moments.
#[tokio::test]
async fn an_assignment_over_many_routers_answers_first_and_reaches_them_all() {
    let h = Harness::batching(Batching {
        at_once: 2,
        chunk: 2,
    })
    .await;
    let mut routers = Vec::new();
    for i in 0..5 {
        let (id, _) = h
            .register(&format!("r{i}"), json!({"plan": "family"}))
            .await;
        let version = h.config_version(&id).await;
        routers.push((id, version));
    }
    let service = h
        .flow_block("b", json!({"flows": [{"dst": "203.0.113.0/24"}]}))
        .await;
    let assigned = h.assign(&service, "plan=family").await;
    assert_eq!(
        assigned.body["recompiled"],
        json!({"devices": 0, "changed": 0, "pending": 5})
    );
    for (id, before) in &routers {
        until(&format!("{id} compiled with the assignment"), || async {
            h.config_version(id).await > *before
        })
        .await;
    }
}
