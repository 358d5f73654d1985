//! Payments reported by the billing webhook: recorded once, and refused
//! (storing nothing) when signed badly, stale or malformed.

use super::*;

#[tokio::test]
async fn catalog_a_replayed_webhook_records_the_payment_once() {
    let h = Harness::start().await;
    let (r1, _) = h.register("r1", json!({})).await;
    let household = customer(&h, "Smith family", Some("cus_42"), &[&r1]).await;
    let stream = site(&h, stream_site()).await;

    let body = payment("pi_123", stream);
    let accepted = signed_webhook(&h, &body).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.body);
    assert_eq!(accepted.body["source"], "webhook");
    assert_eq!(accepted.body["customer_id"], household.as_str());
    assert_eq!(accepted.body["payment_id"], "pi_123");
    // The amount paid, not the catalog price.
    assert_eq!(accepted.body["price"], 150);
    assert_eq!(
        accepted.body["device_versions"][0]["device_id"],
        r1.as_str()
    );
    let purchase_id = accepted.body["id"].as_str().unwrap().to_owned();

    // The billing system retries (a new signature, the same payment), and
    // again naming the household by our id.
    let mut by_id = body.clone();
    by_id["customer_external_ref"] = Value::Null;
    by_id
        .as_object_mut()
        .unwrap()
        .remove("customer_external_ref");
    by_id["customer_id"] = json!(household);
    for replay in [&body, &by_id] {
        let r = signed_webhook(&h, replay).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert_eq!(error_code(&r), "duplicate_payment");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&purchase_id),
            "{}",
            r.body
        );
    }
    assert_eq!(rows(&h, "purchases").await, 1);

    // Many deliveries at once: still one purchase.
    let burst = payment("pi_burst", stream);
    let results = futures_util::future::join_all((0..6).map(|_| signed_webhook(&h, &burst))).await;
    let created = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(
        created,
        1,
        "{:?}",
        results.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    assert!(results
        .iter()
        .filter(|r| r.status != StatusCode::CREATED)
        .all(|r| error_code(r) == "duplicate_payment"));
    assert_eq!(rows(&h, "purchases").await, 2);
    // The two passes of one household and site were queued, not overlapped.
    let ends: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT starts_at, ends_at FROM purchases ORDER BY starts_at")
            .fetch_all(&h.controller.state.pool)
            .await
            .unwrap();
    assert_eq!(ends[1].0, ends[0].1);

    // Every call is audited as billing-webhook, accepted or refused.
    let audit = webhook_audit(&h).await;
    assert_eq!(audit.len(), 9);
    assert_eq!(audit[0].0, 201);
    assert_eq!(audit[0].1.as_deref(), Some(purchase_id.as_str()));
    assert_eq!(audit[0].2["payment_id"], "pi_123");
    assert_eq!(audit[1].0, 409);
    assert_eq!(audit[1].1.as_deref(), Some("pi_123"));
    assert_eq!(audit[1].2["error"]["code"], "duplicate_payment");
}

#[tokio::test]
async fn catalog_webhooks_with_bad_signatures_stale_timestamps_or_bad_payments_store_nothing() {
    let h = Harness::start().await;
    customer(&h, "Smith family", Some("cus_42"), &[]).await;
    let stream = site(&h, stream_site()).await;
    let key = webhook_key(&h);
    let body = payment("pi_1", stream);
    let bytes = serde_json::to_vec(&body).unwrap();
    let now = Utc::now().timestamp();
    let other_key = hex::encode([7u8; 32]);
    let mut tampered = body.clone();
    tampered["amount"] = json!(1);
    let unsigned_cases = [
        None,
        Some("".to_owned()),
        Some("t=,v1=".to_owned()),
        Some(format!("t={now}")),
        Some(signature(&other_key, now, &bytes)),
        Some(signature(&key, now - 301, &bytes)),
        // A minute past the window: the clock may tick between here and the
        // request, which would bring `now + 301` back inside it.
        Some(signature(&key, now + 361, &bytes)),
        // A valid signature of another body.
        Some(signature(
            &key,
            now,
            &serde_json::to_vec(&tampered).unwrap(),
        )),
    ];
    let count = unsigned_cases.len();
    for header in unsigned_cases {
        let r = webhook(&h, &body, header.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{header:?}: {}", r.body);
        assert_eq!(error_code(&r), "bad_signature", "{header:?}");
    }
    let stale = webhook(&h, &body, Some(signature(&key, now - 301, &bytes))).await;
    assert!(stale.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("300 s"));

    // Signed, but not a payment we can record.
    let with = |field: &str, value: Value| {
        let mut b = body.clone();
        b[field] = value;
        b
    };
    let signed_cases = [
        (with("currency", json!("USD")), "currency_mismatch"),
        (with("currency", json!("usd")), "invalid_request"),
        (with("amount", json!(0)), "invalid_request"),
        (with("amount", json!(-150)), "invalid_request"),
        (with("amount", json!(1.5)), "invalid_body"),
        (with("duration_secs", json!(7200)), "unknown_pass"),
        (with("site_id", json!(999)), "unknown_site"),
        (
            with("customer_external_ref", json!("cus_nobody")),
            "unknown_customer",
        ),
        (
            with("customer_id", json!(uuid::Uuid::new_v4())),
            "invalid_request",
        ),
        (with("payment_id", json!("")), "invalid_request"),
        (with("extra", json!(1)), "invalid_body"),
    ];
    let signed_count = signed_cases.len();
    for (b, code) in signed_cases {
        let r = signed_webhook(&h, &b).await;
        assert_eq!(error_code(&r), code, "{b}: {}", r.body);
    }
    let mut by_unknown_id = body.clone();
    by_unknown_id
        .as_object_mut()
        .unwrap()
        .remove("customer_external_ref");
    by_unknown_id["customer_id"] = json!(uuid::Uuid::new_v4());
    let r = signed_webhook(&h, &by_unknown_id).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "unknown_customer");

    assert_eq!(rows(&h, "purchases").await, 0);
    // Signed calls have an entry each; unsigned ones are tallied.
    let state = &h.controller.state;
    state.refusals.flush(&state.pool).await.unwrap();
    let audit = webhook_audit(&h).await;
    assert_eq!(audit.len(), signed_count + 1 + 1, "{audit:?}");
    let tallies: Vec<_> = audit
        .iter()
        .filter(|(status, _, _)| *status == 401)
        .collect();
    assert_eq!(tallies.len(), 1, "{tallies:?}");
    let (_, target, summary) = tallies[0];
    // Unauthenticated bytes are not kept: only where from and how many.
    assert_eq!(target.as_deref(), Some("127.0.0.1"));
    assert_eq!(summary["refused"], count + 1);
    assert_eq!(summary["code"], "bad_signature");
    assert!(summary.get("request").is_none(), "{summary}");
    // The webhook does not accept operator tokens instead of a signature.
    let with_token = h
        .http
        .post(format!("{}/webhooks/v1/billing", h.controller.api_url))
        .bearer_auth(&h.controller.operator_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(rows(&h, "purchases").await, 0);
}
