//! `pages`: the operator's fleet overview and device list, timed.

use std::time::Instant;

use serde_json::{json, Value};

use super::Fleet;
use crate::stats::Latencies;

/// `pages`: the operator's pages read `requests` times each, one after
/// another: the fleet overview, the device list's first page, its next
/// page (from the first's cursor), and the list of this run's routers.
pub async fn run(fleet: &Fleet, requests: usize, page_limit: usize) -> Value {
    let limit = page_limit.to_string();
    let selector = fleet.selector();
    let mut failed = 0usize;
    let cursor = match fleet
        .operator
        .page("/api/v1/devices", &[("limit", &limit)])
        .await
    {
        Ok(first) => first["next_cursor"].as_str().map(str::to_owned),
        Err(e) => {
            failed += 1;
            eprintln!("the device list: {e:#}");
            None
        }
    };
    let mut pages = vec![
        ("fleet_overview", "/api/v1/fleet/overview", vec![]),
        (
            "devices_first_page",
            "/api/v1/devices",
            vec![("limit", limit.as_str())],
        ),
    ];
    if let Some(cursor) = &cursor {
        pages.push((
            "devices_next_page",
            "/api/v1/devices",
            vec![("limit", limit.as_str()), ("cursor", cursor.as_str())],
        ));
    }
    pages.push((
        "devices_of_this_run",
        "/api/v1/devices",
        vec![("limit", limit.as_str()), ("selector", selector.as_str())],
    ));
    let mut out = json!({
        "requests_per_page": requests,
        "limit": page_limit,
        "next_page": if cursor.is_some() { "read" } else { "none: one page holds every device" },
    });
    for (name, path, query) in pages {
        let mut latencies = Latencies::new();
        let mut last = Value::Null;
        for _ in 0..requests {
            let started = Instant::now();
            match fleet.operator.page(path, &query).await {
                Ok(answer) => {
                    latencies.record(started.elapsed());
                    last = answer;
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("{name}: {e:#}");
                }
            }
        }
        let mut figures = latencies.to_json();
        // What the page showed, so a fast empty answer is seen for what it is.
        match last["items"].as_array() {
            Some(items) => figures["items"] = json!(items.len()),
            None => figures["devices"] = last["devices"].clone(),
        }
        out[name] = figures;
    }
    out["missed"] = json!(failed);
    out
}
