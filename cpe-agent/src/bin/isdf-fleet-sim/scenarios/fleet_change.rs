//! `fleet-change`: a change for every router of the run, assigned and
//! unassigned.

use std::time::Instant;

use serde_json::{json, Value};

use super::{
    dport, fleet_arrivals, merge, millis, versions, wait_for_fleet, ChangeLatencies, Fleet,
};

/// `fleet-change`: `rounds` times, a change for every simulated router (a
/// `flow-block` service assigned to the run's label selector, then the
/// assignment deleted, and again), each measured until every router
/// fetched its new config.
pub async fn run(fleet: &Fleet, rounds: usize) -> anyhow::Result<Value> {
    let service = fleet
        .operator
        .flow_block_service(&fleet.service_name("fleet-change"), dport::FLEET_CHANGE)
        .await?;
    let selector = fleet.selector();
    let mut latencies = ChangeLatencies::new();
    let mut assignment: Option<String> = None;
    let mut out = Vec::new();
    let (mut made, mut fetched_total) = (0usize, 0usize);
    for round in 0..rounds {
        // Each round starts on a quiet fleet: the previous round's status
        // reports (one per router) answered.
        fleet.stats.settle(fleet.change_timeout).await;
        let floors = versions(&fleet.routers);
        let started = Instant::now();
        let change = match assignment.take() {
            None => {
                assignment = Some(fleet.operator.assign(&service, &selector).await?);
                "assign"
            }
            Some(id) => {
                fleet.operator.unassign(&id).await?;
                "unassign"
            }
        };
        let call = started.elapsed();
        latencies.call.record(call);
        made += fleet.routers.len();
        let arrivals = wait_for_fleet(&fleet.routers, &floors, fleet.change_timeout).await;
        latencies.arrivals(&arrivals, started);
        fetched_total += arrivals.iter().flatten().count();
        let mut this = json!({"round": round + 1, "change": change, "call_ms": millis(call)});
        merge(&mut this, fleet_arrivals(&arrivals, started));
        out.push(this);
    }
    let mut result = json!({
        "made": made,
        "fetched": fetched_total,
        "missed": made - fetched_total,
        "rounds": out,
    });
    merge(&mut result, latencies.to_json());
    Ok(result)
}
