//! The scenarios run once the fleet is connected, one after another on the
//! same routers, one file each (its `run`, one `Scenario` arm in main.rs):
//! each makes changes through the operator API, knows when it made them,
//! and waits on the routers' own record of what they fetched and verified
//! (`Fetch`), so a latency is from the start of the operator's call (or of
//! the outage) to the moment the router had the config's bytes. Here: what
//! they share (the fleet, waiting on routers, timed blocks, commands).
//!
//! Every result has a `missed` count (routers a change did not reach in
//! time, requests that failed) that must be 0; the other figures are
//! measurements, named for exactly what they time.

pub mod db_restart;
pub mod fleet_change;
pub mod one_change;
pub mod pages;
pub mod replica_kill;
pub mod rollout;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::operator::Operator;
use crate::router::{Fetch, RouterHandle};
use crate::stats::{Latencies, Stats};

pub struct Fleet {
    pub routers: Vec<RouterHandle>,
    pub operator: Operator,
    pub stats: Arc<Stats>,
    /// Names this run's devices (`fleet-sim=<run>`) and services.
    pub run_id: String,
    /// How long one change may take to reach its routers before they count
    /// as missed.
    pub change_timeout: Duration,
    /// Timed blocks made so far in the run: each is a new flow, on the
    /// next router of a stride over the fleet.
    pub blocks_made: AtomicUsize,
    /// The long-poll wait the routers ask for: a poll's answer may take
    /// that long.
    pub poll_wait: Duration,
}

/// The TCP port each scenario's `flow-block` service drops (203.0.113.0/24):
/// a different flow, so a different config, for each.
mod dport {
    pub const FLEET_CHANGE: u16 = 25;
    pub const ROLLOUT: u16 = 26;
    pub const ROLLOUT_ABORTED: u16 = 27;
    pub const DB_RESTART: u16 = 28;
    pub const REPLICA_KILL: u16 = 29;
}

/// A timed block made on one router.
#[derive(Clone, Copy)]
struct Block {
    /// The router's index in the fleet.
    router: usize,
    /// The config version the API said carries it.
    version: u64,
    /// When the call that made it started.
    made_at: Instant,
}

/// A scenario's change latencies: the operator call, and the call's start
/// until a router fetched the change.
struct ChangeLatencies {
    call: Latencies,
    to_fetch: Latencies,
}

impl ChangeLatencies {
    fn new() -> Self {
        ChangeLatencies {
            call: Latencies::new(),
            to_fetch: Latencies::new(),
        }
    }

    /// Records every router's arrival after `since`.
    fn arrivals(&mut self, arrivals: &[Option<Instant>], since: Instant) {
        for at in arrivals.iter().flatten() {
            self.to_fetch.record(at.saturating_duration_since(since));
        }
    }

    fn to_json(&self) -> Value {
        json!({"change_call": self.call.to_json(), "change_to_fetch": self.to_fetch.to_json()})
    }
}

/// Waits until every router in `waits` has fetched a config `reached`
/// accepts for its target, at most `timeout`; when each did (the arrival of
/// the config that did it, so possibly before the wait), or None.
async fn wait_for_each<'a, T: Copy + Send + Sync + 'static>(
    waits: impl IntoIterator<Item = (&'a RouterHandle, T)>,
    timeout: Duration,
    reached: fn(&Fetch, T) -> bool,
) -> Vec<Option<Instant>> {
    let mut tasks = JoinSet::new();
    let mut count = 0;
    for (index, (router, target)) in waits.into_iter().enumerate() {
        let mut fetched = router.fetched.clone();
        count += 1;
        tasks.spawn(async move {
            let at = tokio::time::timeout(
                timeout,
                fetched.wait_for(|f| f.is_some_and(|f| reached(&f, target))),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|f| (*f).map(|f| f.at));
            (index, at)
        });
    }
    let mut out = vec![None; count];
    while let Some(done) = tasks.join_next().await {
        if let Ok((index, at)) = done {
            out[index] = at;
        }
    }
    out
}

/// Waits until every router has fetched a version above its entry in
/// `floors`, at most `timeout`; when each did, or None.
pub async fn wait_for_fleet(
    routers: &[RouterHandle],
    floors: &[u64],
    timeout: Duration,
) -> Vec<Option<Instant>> {
    wait_for_each(
        routers.iter().zip(floors.iter().copied()),
        timeout,
        |f, floor| f.version > floor,
    )
    .await
}

/// The version each router holds now (0 before its first config).
fn versions(routers: &[RouterHandle]) -> Vec<u64> {
    routers
        .iter()
        .map(|r| r.fetched.borrow().map_or(0, |f| f.version))
        .collect()
}

/// What each router's firewall holds now (its digest's prefix; 0 before
/// its first config).
fn contents(routers: &[RouterHandle]) -> Vec<u64> {
    routers
        .iter()
        .map(|r| r.fetched.borrow().map_or(0, |f| f.content))
        .collect()
}

/// Seconds from `since` until the last of `arrivals` (0 if none).
fn last_arrival_s(arrivals: &[Option<Instant>], since: Instant) -> f64 {
    arrivals
        .iter()
        .flatten()
        .map(|at| at.saturating_duration_since(since))
        .max()
        .unwrap_or_default()
        .as_secs_f64()
}

/// A change for the whole fleet: routers it reached within the timeout,
/// the ones it missed, and from `since` until the last had it.
fn fleet_arrivals(arrivals: &[Option<Instant>], since: Instant) -> Value {
    let fetched = arrivals.iter().flatten().count();
    let last = last_arrival_s(arrivals, since);
    json!({
        "routers": arrivals.len(),
        "fetched": fetched,
        "missed": arrivals.len() - fetched,
        "all_fetched_s": last,
        "configs_per_s": fetched as f64 / last.max(1e-6),
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Fleet {
    fn selector(&self) -> String {
        format!("fleet-sim={}", self.run_id)
    }

    fn service_name(&self, scenario: &str) -> String {
        format!("fleet-sim-{}-{scenario}", self.run_id)
    }

    /// A timed block on the next router of the stride (a new flow each
    /// time), or None (counted as an error) when the call failed.
    async fn block_next(&self, latencies: &mut ChangeLatencies) -> Option<Block> {
        let n = self.blocks_made.fetch_add(1, Ordering::Relaxed);
        // A stride coprime with most fleet sizes visits every router.
        let index = n.wrapping_mul(7919) % self.routers.len();
        let started = Instant::now();
        let carried = self.operator.block(&self.routers[index].device_id, n).await;
        latencies.call.record(started.elapsed());
        match carried {
            Ok(Some(version)) => Some(Block {
                router: index,
                version,
                made_at: started,
            }),
            Ok(None) => {
                self.stats.with(|c| c.error("change:no_version".into()));
                None
            }
            Err(e) => {
                eprintln!("block {n}: {e:#}");
                self.stats.with(|c| c.error("change:refused".into()));
                None
            }
        }
    }

    /// Waits until each block's router fetched the version carrying it;
    /// each block's latency from its call, and how many were fetched.
    async fn wait_for_blocks(&self, blocks: &[Block], latencies: &mut ChangeLatencies) -> usize {
        let arrivals = wait_for_each(
            blocks.iter().map(|b| (&self.routers[b.router], b.version)),
            self.change_timeout,
            |f, version| f.version >= version,
        )
        .await;
        for (block, at) in blocks.iter().zip(&arrivals) {
            if let Some(at) = at {
                latencies
                    .to_fetch
                    .record(at.saturating_duration_since(block.made_at));
            }
        }
        arrivals.iter().flatten().count()
    }
}

/// Runs `command` with `sh -c` on a blocking thread (the routers keep
/// running meanwhile) until it exits; how long it took.
async fn run_command(command: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let owned = command.to_owned();
    tokio::task::spawn_blocking(move || isdf_agent::sys::processes::run_shell_to_stderr(&owned))
        .await
        .context("the command's thread")??;
    Ok(started.elapsed())
}

/// Adds `extra`'s fields to `into` (both objects).
fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}
