//! The fleet's state as gauges, read at scrape time: routers by health and
//! by agent version (the dashboard's overview query, 64 ms at 100,000
//! routers), rollouts by state and the current wave of each active one,
//! pay-per-site passes in force and purchases recorded.
//! The database is asked at most once per [`REFRESH`], whatever the number
//! of scrapers; the values in memory (long polls held, the config cache,
//! the database pool, leadership) are read at every scrape.
//!
//! Every replica exports the same fleet gauges (they come from the one
//! database): aggregate them with `max without (instance)`.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use super::{gauge_value, set_family, StateLabels};
use crate::db;

/// How old the fleet's gauges may get before a scrape reads them again.
pub const REFRESH: Duration = Duration::from_secs(10);

/// The states a rollout can be in (the `rollouts` table's check).
const ROLLOUT_STATES: [&str; 4] = ["running", "paused", "completed", "aborted"];

/// Agent versions exported one by one; the rest add up under `other`, so a
/// router reporting made-up versions cannot grow the series.
pub const MAX_AGENT_VERSIONS: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaveLabels {
    pub rollout: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

/// Who records a purchase (the `purchases` table's check).
const PURCHASE_SOURCES: [&str; 3] = ["operator", "webhook", "portal"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub state: &'static str,
}

/// What is read in memory at every scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Instantaneous {
    pub long_polls: u64,
    pub cached_routers: usize,
    pub cached_envelope_bytes: usize,
    pub leading: bool,
}

pub struct FleetGauges {
    routers: Family<StateLabels, Gauge>,
    failing: Gauge,
    versions: Family<VersionLabels, Gauge>,
    rollouts: Family<StateLabels, Gauge>,
    waves: Family<WaveLabels, Gauge>,
    long_polls: Gauge,
    cached_routers: Gauge,
    cached_bytes: Gauge,
    pool: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
    leader: Gauge,
    passes_active: Gauge,
    purchases: Family<SourceLabels, Gauge>,
    /// When the database was last read (None: never), one reader at a time.
    read_at: tokio::sync::Mutex<Option<Instant>>,
}

impl FleetGauges {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let gauges = FleetGauges {
            routers: Family::default(),
            failing: Gauge::default(),
            versions: Family::default(),
            rollouts: Family::default(),
            waves: Family::default(),
            long_polls: Gauge::default(),
            cached_routers: Gauge::default(),
            cached_bytes: Gauge::default(),
            pool: Family::default(),
            pool_max: Gauge::default(),
            leader: Gauge::default(),
            passes_active: Gauge::default(),
            purchases: Family::default(),
            read_at: tokio::sync::Mutex::new(None),
        };
        registry.register(
            "routers",
            "Routers by state: online (reported within 10 min), stale, never_reported",
            gauges.routers.clone(),
        );
        registry.register(
            "routers_failing",
            "Routers whose last report was a rollback or a refused config",
            gauges.failing.clone(),
        );
        registry.register(
            "routers_by_agent_version",
            "Routers by the agent version of their last report (the 20 most common; the rest as other)",
            gauges.versions.clone(),
        );
        registry.register(
            "rollouts",
            "Rollouts by state: running, paused, completed, aborted",
            gauges.rollouts.clone(),
        );
        registry.register(
            "rollout_current_wave_routers",
            "Routers of each active rollout's current wave by state: pending, applied, failed, offline",
            gauges.waves.clone(),
        );
        registry.register(
            "long_polls",
            "Config long polls held open on this replica",
            gauges.long_polls.clone(),
        );
        registry.register(
            "config_cache_routers",
            "Routers the config cache of this replica knows",
            gauges.cached_routers.clone(),
        );
        registry.register_with_unit(
            "config_cache_envelopes",
            "Signed configs held in memory to answer polls without the database",
            prometheus_client::registry::Unit::Bytes,
            gauges.cached_bytes.clone(),
        );
        registry.register(
            "database_pool_connections",
            "Database connections of this replica's pool: idle or in_use",
            gauges.pool.clone(),
        );
        registry.register(
            "database_pool_max_connections",
            "The most connections this replica's pool opens",
            gauges.pool_max.clone(),
        );
        registry.register(
            "leader",
            "1 on the replica running the background loops (rollouts, expiries), else 0",
            gauges.leader.clone(),
        );
        registry.register(
            "pay_per_site_passes_active",
            "Pay-per-site passes in force now (bought, started, not ended or cancelled)",
            gauges.passes_active.clone(),
        );
        registry.register(
            "pay_per_site_purchases",
            "Pay-per-site purchases recorded, by who recorded them: operator, webhook, portal",
            gauges.purchases.clone(),
        );
        gauges
    }

    /// Brings the gauges up to date for a scrape: the in-memory values
    /// always, the database's when older than [`REFRESH`]. A database that
    /// cannot be read leaves the last values (and says so in the log); the
    /// scrape still answers.
    pub async fn refresh(&self, pool: &PgPool, now: Instantaneous) -> Result<(), sqlx::Error> {
        self.long_polls.set(gauge_value(now.long_polls));
        self.cached_routers.set(gauge_value(now.cached_routers));
        self.cached_bytes
            .set(gauge_value(now.cached_envelope_bytes));
        self.leader.set(i64::from(now.leading));
        let size = pool.size();
        let idle = pool.num_idle() as u32;
        set_family(
            &self.pool,
            &[
                (PoolLabels { state: "idle" }, i64::from(idle)),
                (
                    PoolLabels { state: "in_use" },
                    i64::from(size.saturating_sub(idle)),
                ),
            ],
        );
        self.pool_max
            .set(i64::from(pool.options().get_max_connections()));
        let mut read_at = self.read_at.lock().await;
        if read_at.is_some_and(|at| at.elapsed() < REFRESH) {
            return Ok(());
        }
        self.read_fleet(pool).await?;
        *read_at = Some(Instant::now());
        Ok(())
    }

    async fn read_fleet(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let overview = db::fleet::overview(pool).await?;
        let totals = &overview.totals.0;
        set_family(
            &self.routers,
            &[
                (StateLabels { state: "online" }, totals.online),
                (StateLabels { state: "stale" }, totals.stale),
                (
                    StateLabels {
                        state: "never_reported",
                    },
                    totals.never_reported,
                ),
            ],
        );
        self.failing.set(totals.failing);
        let versions: Vec<(String, i64)> = overview
            .by_agent_version
            .0
            .iter()
            .map(|b| (b.value.clone(), b.count))
            .collect();
        let versions: Vec<(VersionLabels, i64)> = bounded_versions(versions)
            .into_iter()
            .map(|(version, count)| (VersionLabels { version }, count))
            .collect();
        set_family(&self.versions, &versions);
        // Every state, 0 included, so `isdf_rollouts{state="paused"} > 0`
        // has a series to compare.
        let counted = db::fleet::rollouts_by_state(pool).await?;
        let mut rollouts: Vec<(StateLabels, i64)> = ROLLOUT_STATES
            .iter()
            .map(|&state| (StateLabels { state }, 0))
            .collect();
        for (state, count) in counted {
            let state = known(&state, &ROLLOUT_STATES);
            match rollouts
                .iter_mut()
                .find(|(labels, _)| labels.state == state)
            {
                Some((_, n)) => *n += count,
                None => rollouts.push((StateLabels { state }, count)),
            }
        }
        set_family(&self.rollouts, &rollouts);
        let waves: Vec<(WaveLabels, i64)> = db::fleet::current_waves(pool)
            .await?
            .into_iter()
            .map(|(rollout, state, count)| {
                let state = known(
                    &state,
                    &["waiting", "pending", "applied", "failed", "offline"],
                );
                let rollout = rollout.to_string();
                (WaveLabels { rollout, state }, count)
            })
            .collect();
        set_family(&self.waves, &waves);
        let (active, by_source) = db::fleet::passes(pool).await?;
        self.passes_active.set(active);
        let purchases: Vec<(SourceLabels, i64)> = PURCHASE_SOURCES
            .iter()
            .map(|&source| {
                let count = by_source
                    .iter()
                    .filter(|(s, _)| known(s, &PURCHASE_SOURCES) == source)
                    .map(|(_, n)| n)
                    .sum();
                (SourceLabels { source }, count)
            })
            .collect();
        set_family(&self.purchases, &purchases);
        Ok(())
    }
}

/// `value` as the static string it equals in `known`, else `other`.
fn known(value: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .unwrap_or("other")
}

/// The [`MAX_AGENT_VERSIONS`] most common versions (`versions` comes most
/// common first) and the rest summed as `other`.
pub fn bounded_versions(versions: Vec<(String, i64)>) -> Vec<(String, i64)> {
    let mut kept: Vec<(String, i64)> = versions
        .iter()
        .take(MAX_AGENT_VERSIONS)
        .filter(|(v, _)| v != "other")
        .cloned()
        .collect();
    let kept_count: i64 = kept.iter().map(|(_, n)| n).sum();
    let all: i64 = versions.iter().map(|(_, n)| n).sum();
    if all > kept_count {
        kept.push(("other".to_owned(), all - kept_count));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_twenty_versions_and_the_rest_as_other() {
        let versions: Vec<(String, i64)> = (0..30).map(|i| (format!("0.{i}"), 100 - i)).collect();
        let bounded = bounded_versions(versions.clone());
        assert_eq!(bounded.len(), MAX_AGENT_VERSIONS + 1);
        assert_eq!(bounded[0], ("0.0".to_owned(), 100));
        let rest: i64 = versions[20..].iter().map(|(_, n)| n).sum();
        assert_eq!(bounded.last().unwrap(), &("other".to_owned(), rest));
        assert_eq!(
            bounded.iter().map(|(_, n)| n).sum::<i64>(),
            versions.iter().map(|(_, n)| n).sum::<i64>()
        );
        // A router naming its version "other" is counted there, once.
        let bounded = bounded_versions(vec![("1.0".into(), 5), ("other".into(), 2)]);
        assert_eq!(bounded, [("1.0".to_owned(), 5), ("other".to_owned(), 2)]);
        assert_eq!(bounded_versions(Vec::new()), []);
    }

    #[test]
    fn unknown_states_are_other() {
        assert_eq!(known("paused", &["running", "paused"]), "paused");
        assert_eq!(known("weird", &["running", "paused"]), "other");
    }
}
