//! An operator's daily jobs through the API: a router changes plans
//! (relabelled alone or with its whole selection, previewed first), a
//! mistyped service is archived or deleted, a change is checked by a dry
//! run before it is made, a second assignment of the same thing is
//! refused, and the fleet and the audit log are exported as CSV.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{error_code, Harness};

/// The destinations the router's compiled config blocks (its sets).
async fn blocked(h: &Harness, device: &str) -> String {
    let r = h.get(&format!("/api/v1/devices/{device}/config")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["config"]["firewall"]["sets"].to_string()
}

async fn audit_actions(h: &Harness) -> Vec<String> {
    let r = h.get("/api/v1/audit?limit=500").await;
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_router_that_changes_plans_is_relabelled_and_only_it_is_recompiled() {
    let h = Harness::start().await;
    let (a, _) = h.register("home-a", json!({"plan": "basic"})).await;
    let (b, _) = h.register("home-b", json!({"plan": "basic"})).await;
    let gold = h
        .flow_block("gold-only", json!({"flows": [{"dst": "192.0.2.77/32"}]}))
        .await;
    assert_eq!(
        h.assign(&gold, "plan=gold").await.status,
        StatusCode::CREATED
    );
    assert!(!blocked(&h, &a).await.contains("192.0.2.77"));
    let b_version = h.config_version(&b).await;

    let patched = h
        .call(
            Method::PATCH,
            &format!("/api/v1/devices/{a}"),
            Some(json!({"labels": {"plan": "gold", "region": "north"}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(
        patched.body["labels"],
        json!({"plan": "gold", "region": "north"})
    );
    assert_eq!(patched.body["recompiled"]["devices"], 1);
    assert_eq!(patched.body["recompiled"]["changed"], 1);
    assert!(blocked(&h, &a).await.contains("192.0.2.77"));
    assert_eq!(h.config_version(&b).await, b_version, "b untouched");

    // What it runs now, with the revision in force.
    let services = h.get(&format!("/api/v1/devices/{a}/services")).await;
    assert_eq!(services.body["items"][0]["service_name"], "gold-only");
    assert_eq!(services.body["items"][0]["type"], "flow-block");
    assert_eq!(services.body["items"][0]["revision"], 1);
    let none = h.get(&format!("/api/v1/devices/{b}/services")).await;
    assert_eq!(none.body["items"], json!([]));

    // Renamed; a taken name and bad labels are refused and change nothing.
    let renamed = h
        .call(
            Method::PATCH,
            &format!("/api/v1/devices/{a}"),
            Some(json!({"name": "home-a2"})),
        )
        .await;
    assert_eq!(renamed.body["name"], "home-a2", "{}", renamed.body);
    assert_eq!(renamed.body["labels"]["plan"], "gold", "labels kept");
    for (body, code) in [
        (json!({"name": "home-b"}), "name_taken"),
        (json!({"labels": {"bad key": "x"}}), "invalid_body"),
        (json!({}), "invalid_request"),
        (
            json!({"labels": {"plan": "x"}, "owner": "y"}),
            "invalid_body",
        ),
    ] {
        let r = h
            .call(
                Method::PATCH,
                &format!("/api/v1/devices/{a}"),
                Some(body.clone()),
            )
            .await;
        assert!(r.status.is_client_error(), "{body}: {}", r.body);
        assert_eq!(error_code(&r), code, "{body}: {}", r.body);
    }
    let unknown = h
        .call(
            Method::PATCH,
            "/api/v1/devices/6d1f6a4e-0000-4000-8000-000000000000",
            Some(json!({"labels": {}})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let now = h.get(&format!("/api/v1/devices/{a}")).await;
    assert_eq!(now.body["name"], "home-a2");
    assert_eq!(
        now.body["labels"],
        json!({"plan": "gold", "region": "north"})
    );
}

#[tokio::test]
async fn a_selection_is_relabelled_in_one_audited_call_after_a_preview() {
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let region = if i < 3 { "north" } else { "south" };
        let (id, _) = h
            .register(&format!("r{i}"), json!({"region": region, "plan": "basic"}))
            .await;
        ids.push(id);
    }
    let (_, _) = h
        .register("r5", json!({"region": "north", "plan": "gold"}))
        .await;
    let gold = h
        .flow_block("gold-only", json!({"flows": [{"dst": "192.0.2.78/32"}]}))
        .await;
    h.assign(&gold, "plan=gold").await;

    let preview = h
        .get("/api/v1/devices/matching?selector=region%3Dnorth,plan%3Dbasic&sample=2")
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    assert_eq!(preview.body["matched"], 3);
    assert_eq!(preview.body["selector"], "plan=basic,region=north");
    let sample: Vec<&str> = preview.body["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(sample, ["r0", "r1"]);

    let done = h
        .post(
            "/api/v1/devices/labels",
            json!({"selector": "region=north,plan=basic", "set": {"plan": "gold"}, "remove": ["region"]}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["matched"], 3);
    assert_eq!(done.body["changed"], 3);
    assert_eq!(done.body["recompiled"]["devices"], 3);
    for id in &ids[..3] {
        let d = h.get(&format!("/api/v1/devices/{id}")).await;
        assert_eq!(d.body["labels"], json!({"plan": "gold"}), "{id}");
        assert!(blocked(&h, id).await.contains("192.0.2.78"));
    }
    for id in &ids[3..] {
        let d = h.get(&format!("/api/v1/devices/{id}")).await;
        assert_eq!(
            d.body["labels"],
            json!({"region": "south", "plan": "basic"})
        );
    }
    let relabels = audit_actions(&h)
        .await
        .into_iter()
        .filter(|a| a == "POST /api/v1/devices/labels")
        .count();
    assert_eq!(relabels, 1, "one call, one entry");

    // Again: matched, but nothing left to change.
    let again = h
        .post(
            "/api/v1/devices/labels",
            json!({"selector": "plan=gold", "set": {"plan": "gold"}}),
        )
        .await;
    assert_eq!(again.body["matched"], 4, "{}", again.body);
    assert_eq!(again.body["changed"], 0);

    for body in [
        json!({"selector": "plan=gold"}),
        json!({"selector": "plan=gold", "set": {"a": "1"}, "remove": ["a"]}),
        json!({"selector": "plan=", "set": {"a": "1"}}),
        json!({"selector": "*", "remove": ["bad key"]}),
    ] {
        let r = h.post("/api/v1/devices/labels", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
    }
    let unchanged = h.get("/api/v1/devices/matching?selector=plan%3Dgold").await;
    assert_eq!(unchanged.body["matched"], 4);
}

#[tokio::test]
async fn a_dry_run_checks_everything_and_changes_nothing() {
    let h = Harness::start().await;
    let (device, _) = h.register("home-a", json!({"plan": "basic"})).await;
    let audit_before = audit_actions(&h).await.len();

    // The same refusals as the real call.
    let typo = h
        .post(
            "/api/v1/services?dry_run=true",
            json!({"name": "x", "type": "flow-blok", "spec": {"flows": []}}),
        )
        .await;
    assert_eq!(error_code(&typo), "unknown_kind", "{}", typo.body);
    let reversed = h
        .post(
            "/api/v1/services?dry_run=true",
            json!({"name": "x", "type": "flow-block",
                   "spec": {"flows": [{"dst": "192.0.2.1/32", "protocol": "tcp", "dport": "90-80"}]}}),
        )
        .await;
    assert_eq!(error_code(&reversed), "invalid_spec", "{}", reversed.body);

    // What passes answers what the real call would, and stores nothing.
    let fine = h
        .post(
            "/api/v1/services?dry_run=true",
            json!({"name": "x", "type": "flow-block", "spec": {"flows": [{"dst": "192.0.2.1/32"}]}}),
        )
        .await;
    assert_eq!(fine.status, StatusCode::OK, "{}", fine.body);
    assert_eq!(fine.body["dry_run"], true);
    assert_eq!(fine.body["status"], 201);
    assert_eq!(h.get("/api/v1/services").await.body["items"], json!([]));

    let version = h.config_version(&device).await;
    let relabel = h
        .call(
            Method::PATCH,
            &format!("/api/v1/devices/{device}?dry_run=true"),
            Some(json!({"labels": {"plan": "gold"}})),
        )
        .await;
    assert_eq!(relabel.body["dry_run"], true, "{}", relabel.body);
    let d = h.get(&format!("/api/v1/devices/{device}")).await;
    assert_eq!(d.body["labels"], json!({"plan": "basic"}));
    assert_eq!(h.config_version(&device).await, version);

    let gone = h
        .call(
            Method::DELETE,
            &format!("/api/v1/devices/{device}?dry_run=1"),
            None,
        )
        .await;
    assert_eq!(gone.body["status"], 204, "{}", gone.body);
    assert_eq!(
        h.get(&format!("/api/v1/devices/{device}")).await.status,
        StatusCode::OK
    );

    let service = h
        .flow_block("blocklist", json!({"flows": [{"dst": "192.0.2.1/32"}]}))
        .await;
    let audit_with_service = audit_actions(&h).await.len();
    assert_eq!(
        audit_with_service,
        audit_before + 1,
        "dry runs are not audited"
    );
    let rollout = h
        .post(
            "/api/v1/rollouts?dry_run=true",
            json!({"service_id": service, "selector": "plan=basic", "canary": {"percent": 50}}),
        )
        .await;
    assert_eq!(rollout.body["status"], 201, "{}", rollout.body);
    assert_eq!(h.get("/api/v1/rollouts").await.body["items"], json!([]));
    assert_eq!(h.get("/api/v1/assignments").await.body["items"], json!([]));

    let bad = h
        .post("/api/v1/services?dry_run=maybe", json!({"name": "y"}))
        .await;
    assert_eq!(error_code(&bad), "invalid_query", "{}", bad.body);
    assert_eq!(
        audit_actions(&h).await.len(),
        audit_with_service + 1,
        "the refusal"
    );
}

#[tokio::test]
async fn services_are_archived_or_deleted_when_nothing_assigns_them() {
    let h = Harness::start().await;
    h.register("home-a", json!({"plan": "basic"})).await;
    // The former field name still works, with a warning.
    let old = h
        .post(
            "/api/v1/services",
            json!({"name": "old-style", "kind": "flow-block", "spec": {"flows": [{"dst": "192.0.2.9/32"}]}}),
        )
        .await;
    assert_eq!(old.status, StatusCode::CREATED, "{}", old.body);
    assert_eq!(old.body["type"], "flow-block");
    assert_eq!(old.body["kind"], "flow-block");
    assert!(old.body["warnings"][0]
        .as_str()
        .unwrap()
        .contains("deprecated"));
    let both = h
        .post(
            "/api/v1/services",
            json!({"name": "both", "kind": "flow-block", "type": "flow-block", "spec": {"flows": [{"dst": "192.0.2.9/32"}]}}),
        )
        .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);

    let typo = h
        .flow_block("blocklsit", json!({"flows": [{"dst": "192.0.2.1/32"}]}))
        .await;
    let assigned = h.assign(&typo, "plan=basic").await;
    let assignment = assigned.body["id"].as_str().unwrap().to_owned();

    let refused = h
        .call(Method::DELETE, &format!("/api/v1/services/{typo}"), None)
        .await;
    assert_eq!(error_code(&refused), "service_assigned", "{}", refused.body);
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&assignment) && message.contains("plan=basic"),
        "{message}"
    );

    let path = format!("/api/v1/services/{typo}");
    let archive =
        |archived: bool| h.call(Method::PATCH, &path, Some(json!({ "archived": archived })));
    let refused = archive(true).await;
    assert_eq!(error_code(&refused), "service_assigned", "{}", refused.body);

    let unassigned = h
        .call(
            Method::DELETE,
            &format!("/api/v1/assignments/{assignment}"),
            None,
        )
        .await;
    assert_eq!(unassigned.status, StatusCode::OK);

    // Archived: hidden, no new revisions or assignments, back when asked.
    let archived = archive(true).await;
    assert_eq!(archived.body["archived"], true, "{}", archived.body);
    let listed: Vec<Value> = h.get("/api/v1/services").await.body["items"]
        .as_array()
        .unwrap()
        .clone();
    assert!(listed.iter().all(|s| s["id"] != json!(typo)));
    let with_archived = h.get("/api/v1/services?archived=true").await;
    assert!(with_archived.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == json!(typo)));
    let revision = h
        .post(
            &format!("/api/v1/services/{typo}/revisions"),
            json!({"spec": {"flows": [{"dst": "192.0.2.9/32"}]}}),
        )
        .await;
    assert_eq!(error_code(&revision), "service_archived");
    let assign = h.assign(&typo, "plan=gold").await;
    assert_eq!(error_code(&assign), "service_archived");
    let back = archive(false).await;
    assert_eq!(back.body["archived"], false, "{}", back.body);

    let deleted = h
        .call(Method::DELETE, &format!("/api/v1/services/{typo}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert_eq!(
        h.get(&format!("/api/v1/services/{typo}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_second_assignment_of_the_same_service_and_selector_is_refused() {
    let h = Harness::start().await;
    h.register("home-a", json!({"plan": "basic"})).await;
    let service = h
        .flow_block("blocklist", json!({"flows": [{"dst": "192.0.2.1/32"}]}))
        .await;
    let first = h.assign(&service, "plan=basic").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body["matched"], 1);
    assert!(first.body.get("warnings").is_none(), "{}", first.body);

    // The same selector written differently is the same selector.
    let second = h.assign(&service, " plan = basic ").await;
    assert_eq!(error_code(&second), "assignment_exists", "{}", second.body);
    assert!(second.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(first.body["id"].as_str().unwrap()));

    // Matching nothing is allowed, and said.
    let nobody = h.assign(&service, "plan=platinum").await;
    assert_eq!(nobody.status, StatusCode::CREATED, "{}", nobody.body);
    assert_eq!(nobody.body["matched"], 0);
    assert_eq!(
        nobody.body["warnings"][0],
        "selector `plan=platinum` matches no router"
    );
    let all = h.get("/api/v1/assignments").await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
}

/// Parses a CSV body into rows of fields (quoted fields may hold commas).
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn the_fleet_and_the_audit_log_export_as_csv_with_the_lists_filters() {
    let h = Harness::start().await;
    for i in 0..3 {
        h.register(
            &format!("r{i}"),
            json!({"region": "north", "plan": "basic"}),
        )
        .await;
    }
    h.register("s0", json!({"region": "south"})).await;
    // A refused call is audited with the target it named, whatever it was.
    let odd = h.call(Method::DELETE, "/api/v1/devices/=1+1", None).await;
    assert!(odd.status.is_client_error());

    let (status, content_type, text) = h
        .get_text(
            "/api/v1/exports/devices.csv",
            Some(&h.controller.operator_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let rows = csv_rows(&text);
    assert_eq!(rows[0][..4], ["id", "name", "labels", "state"]);
    assert_eq!(rows.len(), 5, "{text}");
    assert_eq!(rows[1][1], "r0");
    assert_eq!(rows[1][2], "plan=basic,region=north");
    assert_eq!(rows[1][3], "never_reported");

    let (_, _, north) = h
        .get_text(
            "/api/v1/exports/devices.csv?selector=region%3Dnorth&q=r1",
            Some(&h.controller.operator_token),
        )
        .await;
    let rows = csv_rows(&north);
    assert_eq!(rows.len(), 2, "{north}");
    assert_eq!(rows[1][1], "r1");
    let (status, _, bad) = h
        .get_text(
            "/api/v1/exports/devices.csv?state=asleep",
            Some(&h.controller.operator_token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");

    // The audit log, filtered as its list is.
    let filtered = h
        .get("/api/v1/audit?action=POST%20/api/v1/devices&actor=nobody")
        .await;
    assert_eq!(filtered.body["items"], json!([]), "{}", filtered.body);
    let mine = h.get("/api/v1/audit?action=POST%20/api/v1/devices").await;
    assert_eq!(
        mine.body["items"].as_array().unwrap().len(),
        4,
        "{}",
        mine.body
    );
    let actor = mine.body["items"][0]["actor"].as_str().unwrap().to_owned();
    let (_, _, audit) = h
        .get_text(
            &format!("/api/v1/exports/audit.csv?actor={actor}&action=POST%20/api/v1/devices"),
            Some(&h.controller.operator_token),
        )
        .await;
    let rows = csv_rows(&audit);
    assert_eq!(
        rows[0],
        ["id", "at", "actor", "action", "target", "status", "summary"]
    );
    assert_eq!(rows.len(), 5, "{audit}");
    assert!(rows[1..]
        .iter()
        .all(|r| r[3] == "POST /api/v1/devices" && r[5] == "201"));
    let (_, _, refused) = h
        .get_text(
            "/api/v1/exports/audit.csv?action=DELETE",
            Some(&h.controller.operator_token),
        )
        .await;
    let rows = csv_rows(&refused);
    assert_eq!(
        rows[1][4], "'=1+1",
        "a formula-looking field is defused: {refused}"
    );
    let future = h.get("/api/v1/audit?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future.body["items"], json!([]));
    let backwards = h
        .get("/api/v1/audit?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z")
        .await;
    assert_eq!(error_code(&backwards), "invalid_query");
}
