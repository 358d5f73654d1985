//! `db-restart`: PostgreSQL restarted under load; no change lost.

use std::time::Instant;

use serde_json::{json, Value};

use super::{
    dport, fleet_arrivals, merge, run_command, versions, wait_for_fleet, ChangeLatencies, Fleet,
};

/// Timed blocks made before and again after the database outage.
const BLOCKS_AROUND_OUTAGE: usize = 5;

/// `db-restart`: PostgreSQL restarted under load by `command`. Timed
/// blocks are made on a few routers just before (not waited for); during
/// the command the polls keep being answered (304 from the replicas'
/// memory); after it those blocks, a few more and a change for the whole
/// fleet must all arrive.
pub async fn run(fleet: &Fleet, command: &str) -> anyhow::Result<Value> {
    fleet.stats.settle(fleet.change_timeout).await;
    let service = fleet
        .operator
        .flow_block_service(&fleet.service_name("db-restart"), dport::DB_RESTART)
        .await?;
    let mut latencies = ChangeLatencies::new();
    let mut before = Vec::new();
    for _ in 0..BLOCKS_AROUND_OUTAGE {
        before.extend(fleet.block_next(&mut latencies).await);
    }
    let at_start = fleet.stats.snapshot();
    let command_took = run_command(command).await?;
    let during = fleet.stats.snapshot().since(&at_start);
    let fetched_before = fleet.wait_for_blocks(&before, &mut latencies).await;

    let mut after = Vec::new();
    for _ in 0..BLOCKS_AROUND_OUTAGE {
        after.extend(fleet.block_next(&mut latencies).await);
    }
    let fetched_after = fleet.wait_for_blocks(&after, &mut latencies).await;
    fleet.stats.settle(fleet.change_timeout).await;
    let floors = versions(&fleet.routers);
    let started = Instant::now();
    fleet.operator.assign(&service, &fleet.selector()).await?;
    latencies.call.record(started.elapsed());
    let arrivals = wait_for_fleet(&fleet.routers, &floors, fleet.change_timeout).await;
    let fleet_change = fleet_arrivals(&arrivals, started);
    let refused_blocks = 2 * BLOCKS_AROUND_OUTAGE - before.len() - after.len();
    let missed = (before.len() - fetched_before)
        + (after.len() - fetched_after)
        + fleet_change["missed"].as_u64().unwrap_or(0) as usize
        + refused_blocks;
    let mut out = json!({
        "command_s": command_took.as_secs_f64(),
        "during_command": during,
        "blocks_before": {"made": before.len(), "fetched": fetched_before},
        "blocks_after": {"made": after.len(), "fetched": fetched_after},
        "blocks_refused": refused_blocks,
        "fleet_change_after": fleet_change,
        "missed": missed,
        "note": "during_command.not_modified: polls answered 304 while the command ran \
                 (from the replicas' memory); missed: blocks refused or not fetched, and \
                 routers the fleet change did not reach, within the change timeout",
    });
    merge(&mut out, latencies.to_json());
    Ok(out)
}
