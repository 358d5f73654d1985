//! `replica-kill`: a replica killed under load; its routers reconnect to
//! the others and none falls behind.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    dport, fleet_arrivals, merge, millis, run_command, versions, wait_for_fleet, ChangeLatencies,
    Fleet,
};
use crate::stats::ReconnectSecond;

/// The bound: no router behind this long after a replica died.
const CAUGHT_UP_AFTER_KILL: Duration = Duration::from_secs(60);
/// Seconds of reconnections reported from the kill on.
const RECONNECT_SERIES_SECS: usize = 30;

/// `replica-kill`: `command` kills a replica under load; at once a change
/// for the whole fleet is made (through any API URL that answers). Its
/// routers reconnect to the others: every router must fetch the change,
/// and none may be behind a minute after the kill.
pub async fn run(fleet: &Fleet, command: &str) -> anyhow::Result<Value> {
    fleet.stats.settle(fleet.change_timeout).await;
    let service = fleet
        .operator
        .flow_block_service(&fleet.service_name("replica-kill"), dport::REPLICA_KILL)
        .await?;
    let floors = versions(&fleet.routers);
    let failures_before: Vec<u32> = fleet
        .routers
        .iter()
        .map(|r| r.poll_failures.load(Ordering::Relaxed))
        .collect();
    let killed_at = Instant::now();
    let command_took = run_command(command).await?;
    fleet.operator.forget_connections()?;
    let call_started = Instant::now();
    let selector = fleet.selector();
    if let Err(e) = fleet.operator.assign(&service, &selector).await {
        // A replica killed a moment ago may still take a connection while
        // the kernel tears it down, then reset it: it processed nothing, so
        // the call goes to the next replica (a refused one is passed over
        // by the operator client already).
        if !is_transport_error(&e) {
            return Err(e);
        }
        fleet.operator.forget_connections()?;
        fleet.operator.assign(&service, &selector).await?;
    }
    let call = call_started.elapsed();
    let arrivals = wait_for_fleet(&fleet.routers, &floors, fleet.change_timeout).await;
    let mut latencies = ChangeLatencies::new();
    latencies.call.record(call);
    latencies.arrivals(&arrivals, killed_at);
    let behind_at_a_minute = arrivals
        .iter()
        .filter(|at| {
            at.is_none_or(|at| at.saturating_duration_since(killed_at) > CAUGHT_UP_AFTER_KILL)
        })
        .count();
    // The series' seconds are over, and the polls started in them answered
    // (a poll is held up to the long-poll wait).
    let series_end =
        killed_at + Duration::from_secs(RECONNECT_SERIES_SECS as u64 + 1) + fleet.poll_wait;
    tokio::time::sleep_until(series_end.into()).await;
    let saw_poll_error = fleet
        .routers
        .iter()
        .zip(&failures_before)
        .filter(|(r, before)| r.poll_failures.load(Ordering::Relaxed) > **before)
        .count();
    let first_second = fleet.stats.second_of(killed_at);
    let series: Vec<ReconnectSecond> = fleet.stats.with(|c| {
        (first_second..first_second + RECONNECT_SERIES_SECS)
            .map(|s| c.reconnects.get(s).copied().unwrap_or_default())
            .collect()
    });
    let attempts_peak = series.iter().map(|s| s.attempts).max().unwrap_or(0);
    let succeeded_peak = series.iter().map(|s| s.succeeded).max().unwrap_or(0);
    let per_second: Vec<[u32; 2]> = series.iter().map(|s| [s.attempts, s.succeeded]).collect();
    let mut out = json!({
        "kill_command_s": command_took.as_secs_f64(),
        "change_call_ms": millis(call),
        "routers_with_a_poll_error": saw_poll_error,
        "behind_a_minute_after_kill": behind_at_a_minute,
        "reconnect_attempts_peak_per_s": attempts_peak,
        "reconnects_succeeded_peak_per_s": succeeded_peak,
        "reconnects_per_s": per_second,
        "note": "all_fetched_s and change_to_fetch: from the kill; reconnects_per_s: \
                 [attempts, succeeded] started in each second of the run from the one the \
                 kill fell in, an attempt being a poll right after a failed request (a new \
                 connection); routers_with_a_poll_error: from the kill until the series \
                 ended; behind_a_minute_after_kill: routers without the change 60 s after \
                 the kill",
    });
    merge(&mut out, fleet_arrivals(&arrivals, killed_at));
    merge(&mut out, latencies.to_json());
    Ok(out)
}

/// Whether the call failed on the way (no HTTP answer), not by the API's
/// refusal.
fn is_transport_error(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<reqwest::Error>()
            .is_some_and(|e| e.status().is_none())
    })
}
