//! `rollout`: a rollout in waves to completion, then one paused and
//! aborted with its 50% wave out.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{
    contents, dport, fleet_arrivals, last_arrival_s, merge, millis, versions, wait_for_each,
    wait_for_fleet, ChangeLatencies, Fleet,
};
use crate::router::RouterHandle;

/// How often a rollout's state is read while waiting on it.
const ROLLOUT_POLL: Duration = Duration::from_millis(250);

/// The plan of the rollout that runs to completion.
fn staged_rollout(service: &str, selector: &str) -> Value {
    json!({
        "service_id": service,
        "selector": selector,
        "canary": {"percent": 1},
        "waves": [10, 50, 100],
        "min_applied_share": 0.95,
        "max_failed_share": 0.02,
        "soak_secs": 0,
        "offline_timeout_secs": 300,
    })
}

/// Reads the wave at `index` of a rollout answer.
fn wave(view: &Value, index: usize) -> &Value {
    &view["waves"][index]
}

fn state(view: &Value) -> &str {
    view["state"].as_str().unwrap_or("?")
}

/// `rollout`: (1) a new `flow-block` service rolled out as a new
/// assignment to the run's routers, canary 1% then waves of 10, 50 and 100%
/// without soak, followed until it completes and every router fetched its
/// new config; (2) a second one (canary 1%, waves 50 and 100%) paused and
/// aborted once its 50% wave is released, followed until every router that
/// took it holds its previous config again.
///
/// The second rollout soaks `abort_soak` at each wave: the canary passes
/// after it and the 50% wave cannot pass before it, which leaves that long
/// to pause while the 50% wave is out (a soak of hours would hold the
/// canary, and the 50% wave would never be released).
pub async fn run(fleet: &Fleet, abort_soak: Duration) -> anyhow::Result<Value> {
    let staged = staged_rollout_to_completion(fleet).await?;
    let aborted = rollout_paused_and_aborted(fleet, abort_soak).await?;
    let missed = staged["missed"].as_u64().unwrap_or(0) + aborted["missed"].as_u64().unwrap_or(0);
    Ok(json!({"missed": missed, "completed": staged, "aborted": aborted}))
}

async fn staged_rollout_to_completion(fleet: &Fleet) -> anyhow::Result<Value> {
    fleet.stats.settle(fleet.change_timeout).await;
    let service = fleet
        .operator
        .flow_block_service(&fleet.service_name("rollout"), dport::ROLLOUT)
        .await?;
    let floors = versions(&fleet.routers);
    let started = Instant::now();
    let mut view = fleet
        .operator
        .start_rollout(staged_rollout(&service, &fleet.selector()))
        .await
        .context("starting the rollout")?;
    let create_call = started.elapsed();
    let id = view["id"]
        .as_str()
        .with_context(|| format!("no rollout id in {view}"))?
        .to_owned();
    let waves = view["waves"].as_array().map_or(0, Vec::len);
    // Each wave is given the change timeout to pass.
    let deadline = started + fleet.change_timeout * waves.max(1) as u32;
    let mut released_seen = vec![None; waves];
    let mut passed_seen = vec![None; waves];
    let mut read_errors = 0u64;
    loop {
        let now = started.elapsed();
        for index in 0..waves {
            let wave = wave(&view, index);
            if released_seen[index].is_none() && !wave["released_at"].is_null() {
                released_seen[index] = Some(now);
            }
            if passed_seen[index].is_none() && !wave["passed_at"].is_null() {
                passed_seen[index] = Some(now);
            }
        }
        if state(&view) != "running" || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(ROLLOUT_POLL).await;
        match fleet.operator.rollout(&id).await {
            Ok(fresh) => view = fresh,
            Err(e) => {
                read_errors += 1;
                eprintln!("reading rollout {id}: {e:#}");
            }
        }
    }
    let ended_seen = started.elapsed();
    let final_state = state(&view).to_owned();
    let arrivals = wait_for_fleet(&fleet.routers, &floors, fleet.change_timeout).await;
    let mut latencies = ChangeLatencies::new();
    latencies.call.record(create_call);
    latencies.arrivals(&arrivals, started);
    let waves_out: Vec<Value> = (0..waves)
        .map(|index| {
            let wave = wave(&view, index);
            json!({
                "index": wave["index"],
                "label": wave["label"],
                "routers": wave["routers"],
                "applied": wave["applied"],
                "failed": wave["failed"],
                "offline": wave["offline"],
                "released_seen_s": released_seen[index].map(|d| d.as_secs_f64()),
                "passed_seen_s": passed_seen[index].map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    let mut out = json!({
        "rollout_id": id,
        "state": final_state,
        "create_call_ms": millis(create_call),
        "ended_seen_s": ended_seen.as_secs_f64(),
        "rollout_read_errors": read_errors,
        "waves": waves_out,
        "note": "*_seen_s: from the create call's start until a read of the rollout (every \
                 250 ms) showed it; all_fetched_s: until the last router fetched its new config",
    });
    merge(&mut out, fleet_arrivals(&arrivals, started));
    merge(&mut out, latencies.to_json());
    if final_state != "completed" {
        bail!("rollout {id} ended {final_state}, not completed: {out}");
    }
    Ok(out)
}

async fn rollout_paused_and_aborted(fleet: &Fleet, soak: Duration) -> anyhow::Result<Value> {
    fleet.stats.settle(fleet.change_timeout).await;
    let service = fleet
        .operator
        .flow_block_service(
            &fleet.service_name("rollout-aborted"),
            dport::ROLLOUT_ABORTED,
        )
        .await?;
    let before = contents(&fleet.routers);
    let started = Instant::now();
    let mut request = staged_rollout(&service, &fleet.selector());
    request["waves"] = json!([50, 100]);
    request["soak_secs"] = json!(soak.as_secs());
    let mut view = fleet
        .operator
        .start_rollout(request)
        .await
        .context("starting the rollout to abort")?;
    let id = view["id"]
        .as_str()
        .with_context(|| format!("no rollout id in {view}"))?
        .to_owned();
    // The canary soaks, passes, and the 50% wave is released.
    let deadline = started + soak + fleet.change_timeout;
    while wave(&view, 1)["released_at"].is_null() {
        if state(&view) != "running" || Instant::now() >= deadline {
            bail!(
                "rollout {id}: its 50% wave was not released within {:?}: {view}",
                deadline - started
            );
        }
        tokio::time::sleep(ROLLOUT_POLL).await;
        if let Ok(fresh) = fleet.operator.rollout(&id).await {
            view = fresh;
        }
    }
    let released_seen = started.elapsed();
    let pause_started = Instant::now();
    let paused = fleet
        .operator
        .rollout_action(&id, "pause")
        .await
        .context("pausing the rollout")?;
    let pause_call = pause_started.elapsed();
    if state(&paused) != "paused" {
        bail!("rollout {id}: the pause answered state {}", state(&paused));
    }
    let holding_at_pause = changed_since(&fleet.routers, &before);
    let abort_started = Instant::now();
    let aborted = fleet
        .operator
        .rollout_action(&id, "abort")
        .await
        .context("aborting the rollout")?;
    let abort_call = abort_started.elapsed();
    if state(&aborted) != "aborted" {
        bail!("rollout {id}: the abort answered state {}", state(&aborted));
    }
    let released_routers: u64 = aborted["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| !w["released_at"].is_null())
        .filter_map(|w| w["routers"].as_u64())
        .sum();
    // Back: the firewall content each router had before the rollout. The
    // released routers may be recompiled after the abort answers, not in it.
    let arrivals = wait_for_each(
        fleet.routers.iter().zip(before.iter().copied()),
        fleet.change_timeout,
        |f, content| f.content == content,
    )
    .await;
    fleet.stats.settle(fleet.change_timeout).await;
    let not_back = changed_since(&fleet.routers, &before);
    let timed_out = arrivals.iter().filter(|a| a.is_none()).count();
    Ok(json!({
        "rollout_id": id,
        "soak_s": soak.as_secs(),
        "wave_50_released_seen_s": released_seen.as_secs_f64(),
        "pause_call_ms": millis(pause_call),
        "abort_call_ms": millis(abort_call),
        "released_routers": released_routers,
        "routers_changed_when_paused": holding_at_pause,
        "returned_s": last_arrival_s(&arrivals, abort_started),
        "missed": timed_out.max(not_back),
        "note": "released_routers: in the waves the abort's answer shows released; \
                 routers_changed_when_paused: whose firewall differed from before the \
                 rollout when the pause answered; returned_s: from the abort call's start \
                 until every router held its firewall from before the rollout again; \
                 missed: routers not back to it within the change timeout",
    }))
}

/// Routers whose firewall content differs from `before`.
fn changed_since(routers: &[RouterHandle], before: &[u64]) -> usize {
    contents(routers)
        .iter()
        .zip(before)
        .filter(|(now, then)| now != then)
        .count()
}
