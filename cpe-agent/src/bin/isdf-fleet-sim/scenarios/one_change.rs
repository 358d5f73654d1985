//! `one-change`: the latency of one router's change, one at a time.

use std::time::Duration;

use serde_json::{json, Value};

use super::{merge, ChangeLatencies, Fleet};

/// `one-change`: `changes` times, a timed block on one router (a different
/// one each time, spread over the fleet), `interval` apart, each measured
/// until that router fetched the config version the API said carries it.
pub async fn run(fleet: &Fleet, changes: usize, interval: Duration) -> Value {
    let mut latencies = ChangeLatencies::new();
    let (mut made, mut fetched) = (0usize, 0usize);
    for _ in 0..changes {
        if let Some(block) = fleet.block_next(&mut latencies).await {
            made += 1;
            fetched += fleet.wait_for_blocks(&[block], &mut latencies).await;
        }
        tokio::time::sleep(interval).await;
    }
    let mut out = json!({
        "made": made,
        "refused": changes - made,
        "fetched": fetched,
        "missed": changes - fetched,
        "note": "missed: changes refused by the API or not fetched within the change timeout",
    });
    merge(&mut out, latencies.to_json());
    out
}
