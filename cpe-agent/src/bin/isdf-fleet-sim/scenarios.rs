//! The scenarios run once the fleet is connected: each makes changes
//! through the operator API, knows when it made them, and waits on the
//! routers' own record of what they fetched and verified (`Fetch`), so a
//! latency is from the start of the operator's call to the moment the
//! router had the config's bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::operator::Operator;
use crate::router::{Fetch, RouterHandle};
use crate::stats::Stats;

pub struct Fleet {
    pub routers: Vec<RouterHandle>,
    pub operator: Operator,
    pub stats: Arc<Stats>,
    /// Names this run's devices (`fleet-sim=<run>`) and service.
    pub run_id: String,
    /// How long one change may take to reach its routers before they count
    /// as missed.
    pub change_timeout: Duration,
}

/// Waits until every router has fetched a version above its entry in
/// `floors` (none: any version), at most `timeout`; when each did, or None.
pub async fn wait_for_fleet(
    routers: &[RouterHandle],
    floors: &[u64],
    timeout: Duration,
) -> Vec<Option<Instant>> {
    let mut waits = JoinSet::new();
    for (index, (router, floor)) in routers.iter().zip(floors).enumerate() {
        let mut fetched = router.fetched.clone();
        let floor = *floor;
        waits.spawn(async move {
            let newer = |f: &Option<Fetch>| f.is_some_and(|f| f.version > floor);
            let at = tokio::time::timeout(timeout, fetched.wait_for(newer))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|f| (*f).map(|f| f.at));
            (index, at)
        });
    }
    let mut out = vec![None; routers.len()];
    while let Some(done) = waits.join_next().await {
        if let Ok((index, at)) = done {
            out[index] = at;
        }
    }
    out
}

/// The version each router holds now (0 before its first config).
fn versions(routers: &[RouterHandle]) -> Vec<u64> {
    routers
        .iter()
        .map(|r| r.fetched.borrow().map_or(0, |f| f.version))
        .collect()
}

/// `one-change`: `changes` times, a timed block on one router (a different
/// one each time, spread over the fleet), `interval` apart, each measured
/// until that router fetched the config version the API said carries it.
pub async fn one_change(fleet: &Fleet, changes: usize, interval: Duration) -> Value {
    let (mut made, mut fetched, mut missed) = (0u64, 0u64, 0u64);
    let count = fleet.routers.len();
    for n in 0..changes {
        // A stride coprime with most fleet sizes visits every router.
        let router = &fleet.routers[n.wrapping_mul(7919) % count];
        let mut watch = router.fetched.clone();
        let started = Instant::now();
        let carried = fleet.operator.block(&router.device_id, n).await;
        fleet
            .stats
            .with(|c| c.change_call.record(started.elapsed()));
        let version = match carried {
            Ok(Some(version)) => version,
            Ok(None) => {
                fleet.stats.with(|c| c.error("change:no_version".into()));
                continue;
            }
            Err(e) => {
                eprintln!("change {n}: {e:#}");
                fleet.stats.with(|c| c.error("change:refused".into()));
                continue;
            }
        };
        made += 1;
        let reached = |f: &Option<Fetch>| f.is_some_and(|f| f.version >= version);
        let at = tokio::time::timeout(fleet.change_timeout, watch.wait_for(reached))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|f| (*f).map(|f| f.at));
        match at {
            Some(at) => {
                fetched += 1;
                fleet.stats.with(|c| {
                    c.change_to_fetch
                        .record(at.saturating_duration_since(started))
                });
            }
            None => missed += 1,
        }
        tokio::time::sleep(interval).await;
    }
    json!({"made": made, "fetched": fetched, "missed": missed})
}

/// `fleet-change`: `rounds` times, a change for every simulated router (a
/// `flow-block` service assigned to the run's label selector, then the
/// assignment deleted, and again), each measured until every router
/// fetched its new config.
pub async fn fleet_change(fleet: &Fleet, rounds: usize) -> anyhow::Result<Value> {
    let service = fleet
        .operator
        .flow_block_service(&format!("fleet-sim-{}", fleet.run_id))
        .await?;
    let selector = format!("fleet-sim={}", fleet.run_id);
    let mut assignment: Option<String> = None;
    let mut out = Vec::new();
    let (mut made, mut fetched_total, mut missed_total) = (0u64, 0u64, 0u64);
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
        fleet.stats.with(|c| c.change_call.record(call));
        made += fleet.routers.len() as u64;
        let arrivals = wait_for_fleet(&fleet.routers, &floors, fleet.change_timeout).await;
        let fetched = arrivals.iter().flatten().count();
        let last = arrivals
            .iter()
            .flatten()
            .map(|at| at.saturating_duration_since(started))
            .max()
            .unwrap_or_default();
        fleet.stats.with(|c| {
            for at in arrivals.iter().flatten() {
                c.change_to_fetch
                    .record(at.saturating_duration_since(started));
            }
        });
        fetched_total += fetched as u64;
        missed_total += (fleet.routers.len() - fetched) as u64;
        out.push(json!({
            "round": round + 1,
            "change": change,
            "routers": fleet.routers.len(),
            "fetched": fetched,
            "missed": fleet.routers.len() - fetched,
            "call_ms": call.as_secs_f64() * 1000.0,
            "all_fetched_s": last.as_secs_f64(),
            "configs_per_s": fetched as f64 / last.as_secs_f64().max(1e-6),
        }));
    }
    Ok(json!({
        "made": made,
        "fetched": fetched_total,
        "missed": missed_total,
        "rounds": out,
    }))
}
