//! Staged rollouts, the moving part: starting one (the assignment changes,
//! its routers are split into waves, the canary is released), operators'
//! pause, resume and abort, and the loop that follows progress from the
//! routers' status reports, releases the next wave when one passes and
//! pauses a rollout that breaches its policy. Decisions are `plan.rs`'s.
//!
//! Every step that changes a rollout takes its row lock and re-checks its
//! state, so an operator's pause and the loop's next wave never cross.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use super::plan::{empty_waves, judge, Counts, Verdict, WavePlan};
use crate::db;
use crate::db::audit::NewAuditEntry;
use crate::db::rollouts::{NewRollout, RolloutRow, SampleRow};
use crate::model::{Labels, Selector};
use crate::reconcile::live::{LiveUpdates, Topic};
use crate::reconcile::{Compiled, Reconciler, Resign};

/// Actor of the steps the controller takes on its own.
pub const CONTROLLER: &str = "controller";
/// Which released routers without a target version a transaction compiles.
enum Batch {
    All,
    /// At most this many.
    Chunk(usize),
    /// All when they are at most this many, else none.
    AllIfAtMost(usize),
}

/// A step compiles at most this many chunks of a released wave (the next
/// step goes on): 200,000 routers at the pass's chunk size.
const MAX_CHUNKS_PER_STEP: usize = 100;

/// What a rollout stages.
#[derive(Debug, Clone)]
pub enum Target {
    /// A new revision for this assignment.
    Existing(Uuid),
    /// A new assignment of this service to these routers.
    New {
        service_id: Uuid,
        selector: Selector,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error("{1}")]
    UnknownReference(&'static str, String),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("no rollout {0}")]
    NotFound(Uuid),
    /// A dry run reached the point where the change would be committed.
    #[error("dry run")]
    DryRun,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for RolloutError {
    fn from(e: sqlx::Error) -> Self {
        RolloutError::Internal(e.into())
    }
}

pub struct Rollouts {
    pool: PgPool,
    reconciler: Arc<Reconciler>,
    /// The dashboard hears of every committed change.
    live: Arc<LiveUpdates>,
    wake: tokio::sync::Notify,
    /// Last counts written to `rollout_samples`, per rollout and wave.
    sampled: Mutex<HashMap<(Uuid, i32), [i32; 4]>>,
}

impl Rollouts {
    pub fn new(pool: PgPool, reconciler: Arc<Reconciler>, live: Arc<LiveUpdates>) -> Self {
        Rollouts {
            pool,
            reconciler,
            live,
            wake: tokio::sync::Notify::new(),
            sampled: Mutex::default(),
        }
    }

    fn changed(&self, id: Uuid) {
        self.live.notify(Topic::Rollout(id));
    }

    /// Something a rollout watches happened (a status report): look soon.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Starts a rollout: changes the assignment, splits the routers its
    /// selector matches into waves and releases the canary. `audit` is the
    /// caller's entry, stored with the rollout (its target: the rollout).
    /// A wave that would start with no router is refused (the canary
    /// above all: an empty one would pass after its soak and release the
    /// change to everyone) unless `allow_empty_waves`.
    pub async fn start(
        &self,
        target: Target,
        revision: Option<i32>,
        plan: &WavePlan,
        allow_empty_waves: bool,
        actor: &str,
        audit: &NewAuditEntry<'_>,
    ) -> Result<Uuid, RolloutError> {
        let id = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        let target = match target {
            // A service already assigned on this selector: stage that
            // assignment rather than make a second one.
            Target::New {
                service_id,
                selector,
            } => match db::assignments::find(&mut *tx, service_id, &selector).await? {
                Some(existing) => Target::Existing(existing.id),
                None => Target::New {
                    service_id,
                    selector,
                },
            },
            existing => existing,
        };
        let (assignment_id, service_id, selector, from_revision, to_revision) = match target {
            Target::Existing(assignment) => {
                let row = db::assignments::get_for_update(&mut *tx, assignment)
                    .await?
                    .ok_or_else(|| {
                        RolloutError::UnknownReference(
                            "unknown_assignment",
                            format!("no assignment {assignment}"),
                        )
                    })?;
                if let Some(active) =
                    db::rollouts::active_for_assignment(&mut *tx, assignment).await?
                {
                    return Err(in_progress(assignment, active));
                }
                let to = self
                    .revision_or_latest(&mut tx, row.service_id, revision)
                    .await?;
                if to == row.revision {
                    return Err(RolloutError::Invalid(
                        "same_revision",
                        format!("assignment {assignment} already has revision {to}"),
                    ));
                }
                db::assignments::set_revision(&mut *tx, assignment, to).await?;
                (
                    assignment,
                    row.service_id,
                    row.selector,
                    Some(row.revision),
                    to,
                )
            }
            Target::New {
                service_id,
                selector,
            } => {
                let to = self
                    .revision_or_latest(&mut tx, service_id, revision)
                    .await?;
                let row = db::assignments::insert(
                    &mut *tx,
                    Uuid::new_v4(),
                    service_id,
                    to,
                    selector.as_str(),
                )
                .await?;
                (row.id, service_id, row.selector, None, to)
            }
        };
        let parsed = Selector::parse(&selector)
            .map_err(|e| anyhow::anyhow!("stored selector `{selector}`: {e}"))?;
        let ids = db::devices::matching_ids(&mut *tx, &parsed).await?;
        let routers: Vec<(Uuid, Labels)> = db::devices::labels_of(&mut *tx, Some(&ids))
            .await?
            .into_iter()
            .map(|(id, labels)| (id, Labels::parse(labels.0).unwrap_or_default()))
            .collect();
        let waves = plan.assign(id, &routers);
        let labels = plan.labels();
        // An empty canary would pass after its soak time unseen and release
        // the change to everyone. (A later percentage wave left empty by
        // rounding on a small fleet is not refused: routers before it were
        // seen.)
        let empty = empty_waves(&labels, &waves);
        if empty.first() == labels.first() && !allow_empty_waves {
            let message = if routers.is_empty() {
                format!("the selector `{selector}` matches no router: every wave would be empty; give `allow_empty_waves: true` to start it anyway")
            } else {
                format!(
                    "the canary `{}` matches none of the {} routers the selector `{selector}` matches: an empty canary passes unseen and the change goes on to the next wave; pick a canary that matches routers, or give `allow_empty_waves: true`",
                    labels[0],
                    routers.len()
                )
            };
            return Err(RolloutError::Conflict("empty_wave", message));
        }
        let new = NewRollout {
            id,
            assignment_id,
            service_id,
            selector: &selector,
            from_revision,
            to_revision,
            policy: plan.policy,
            created_by: actor,
        };
        db::rollouts::insert(&mut *tx, &new).await.map_err(|e| {
            if db::is_unique_violation_of(&e, "rollouts_one_active_per_assignment") {
                in_progress(assignment_id, Uuid::nil())
            } else {
                e.into()
            }
        })?;
        db::rollouts::insert_waves(&mut *tx, id, &labels).await?;
        db::rollouts::insert_devices(&mut *tx, id, &waves).await?;
        let from = from_revision.map_or("nothing".to_owned(), |r| format!("revision {r}"));
        db::rollouts::append_event(
            &mut *tx,
            id,
            "created",
            None,
            actor,
            &format!(
                "{from} -> revision {to_revision} on `{selector}`: {} routers in {} waves ({})",
                routers.len(),
                labels.len(),
                labels.join(", ")
            ),
        )
        .await?;
        let rollout = id.to_string();
        let entry = NewAuditEntry {
            target: Some(&rollout),
            ..audit.clone()
        };
        append_audit(&mut tx, &entry).await?;
        // The canary is released in the rollout's own transaction: a crash
        // leaves the rollout with its canary out, or no rollout at all,
        // never one waiting for reports from routers it never released.
        self.release_in(&mut tx, id, 0).await?;
        let compiled = self.target_released(&mut tx, id, Batch::All).await?;
        tx.commit().await.context("committing the new rollout")?;
        self.reconciler.publish(compiled);
        self.changed(id);
        // The charts start from the release: everything pending.
        let counts = wave_counts(&self.pool, id).await?;
        self.sample(id, 0, &counts).await?;
        self.nudge();
        Ok(id)
    }

    async fn revision_or_latest(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        service_id: Uuid,
        revision: Option<i32>,
    ) -> Result<i32, RolloutError> {
        let service = db::services::get(&mut **tx, service_id)
            .await?
            .ok_or_else(|| {
                RolloutError::UnknownReference(
                    "unknown_service",
                    format!("no service {service_id}"),
                )
            })?;
        let revision = revision.unwrap_or(service.latest_revision);
        db::services::get_revision(&mut **tx, service_id, revision)
            .await?
            .ok_or_else(|| {
                RolloutError::UnknownReference(
                    "unknown_revision",
                    format!("service {service_id} has no revision {revision}"),
                )
            })?;
        Ok(revision)
    }

    /// Moves a running rollout past the wave that passed, in one
    /// transaction under its row lock: records the pass, then releases the
    /// next wave or, after the last, completes the rollout.
    async fn advance(&self, id: Uuid, passed: Passed) -> Result<(), RolloutError> {
        let Some((mut tx, row)) = self.lock_running(id).await? else {
            return Ok(());
        };
        // The wave was judged before the lock was taken: if the rollout
        // moved on since, this step was taken already.
        if row.current_wave != passed.wave {
            return Ok(());
        }
        let healthy_since = passed.healthy_since.or(Some(Utc::now()));
        db::rollouts::set_wave_health(&mut *tx, id, passed.wave, healthy_since, true).await?;
        let c = passed.counts;
        let detail = format!(
            "{} applied, {} failed, {} offline of {}",
            c.applied, c.failed, c.offline, c.routers
        );
        db::rollouts::append_event(
            &mut *tx,
            id,
            "wave_passed",
            Some(passed.wave),
            CONTROLLER,
            &detail,
        )
        .await?;
        let next = passed.wave + 1;
        let compiled = if passed.last {
            db::rollouts::set_state(&mut *tx, id, "completed", None).await?;
            // Completed is not "everyone has it": the routers that had not
            // confirmed the change are offline, and said so.
            db::rollouts::unconfirmed_to_offline(&mut *tx, id).await?;
            let offline = db::rollouts::count_in_state(&mut *tx, id, "offline").await?;
            let detail = if offline > 0 {
                format!("completed with {offline} offline")
            } else {
                String::new()
            };
            db::rollouts::append_event(&mut *tx, id, "completed", None, CONTROLLER, &detail)
                .await?;
            append_controller_audit(
                &mut tx,
                id,
                "rollout.complete",
                serde_json::json!({ "offline": offline }),
            )
            .await?;
            // Routers that came to match the selector during the rollout
            // kept the previous revision until now.
            let selector = Selector::parse(&row.selector)
                .map_err(|e| anyhow::anyhow!("stored selector `{}`: {e}", row.selector))?;
            let selected = db::devices::matching_ids(&mut *tx, &selector)
                .await
                .context("selecting devices")?;
            self.reconciler
                .recompile_now_or_soon_in(&mut tx, &selected)
                .await?
                .now
        } else {
            // A small wave is compiled with its release; a large one by the
            // next steps, in chunks (see `step`), so the row lock is held
            // only for the release and a pause or abort never waits for it.
            self.release_in(&mut tx, id, next).await?;
            let at_once = self.reconciler.batching.at_once;
            self.target_released(&mut tx, id, Batch::AllIfAtMost(at_once))
                .await?
        };
        tx.commit().await.context("committing a rollout step")?;
        self.reconciler.publish(compiled);
        self.reconciler.poke();
        self.changed(id);
        if !passed.last {
            // The charts start from the release: everything pending.
            let counts = wave_counts(&self.pool, id).await?;
            self.sample(id, next, &counts).await?;
            self.nudge();
        }
        Ok(())
    }

    /// Releases `wave` in `tx` (the caller holds the rollout's row lock).
    /// Its routers have no target version until they are compiled (the
    /// canary in the start's own transaction, a wave of up to
    /// [`Batching::at_once`](crate::reconcile::soon::Batching) routers in the release's, a larger one by the next
    /// steps). The canary is covered by the operator's audit entry of the
    /// start; later waves are the controller's own steps.
    async fn release_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        id: Uuid,
        wave: i32,
    ) -> Result<(), RolloutError> {
        db::rollouts::release_wave(&mut **tx, id, wave).await?;
        db::rollouts::append_event(&mut **tx, id, "wave_released", Some(wave), CONTROLLER, "")
            .await?;
        if wave > 0 {
            let summary = serde_json::json!({"wave": wave});
            append_controller_audit(tx, id, "rollout.wave", summary).await?;
        }
        Ok(())
    }

    /// Recompiles, in `tx`, the released routers that have no target
    /// version yet (just released, or released before the controller
    /// stopped), at most `limit` of them, and records the version that
    /// carries the change.
    async fn target_released(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        id: Uuid,
        batch: Batch,
    ) -> anyhow::Result<Compiled> {
        let (limit, all_or_none) = match batch {
            Batch::All => (i64::MAX, false),
            Batch::Chunk(n) => (n as i64, false),
            Batch::AllIfAtMost(n) => (n as i64 + 1, true),
        };
        let devices = db::rollouts::untargeted(&mut **tx, id, limit)
            .await
            .context("loading released routers")?;
        if devices.is_empty() || (all_or_none && devices.len() as i64 == limit) {
            return Ok(Compiled::default());
        }
        let compiled = self
            .reconciler
            .recompile_in(tx, Some(&devices), Resign::IfChanged)
            .await?;
        db::rollouts::set_targets(&mut **tx, id, &devices)
            .await
            .context("recording target versions")?;
        Ok(compiled)
    }

    pub async fn pause(
        &self,
        id: Uuid,
        actor: &str,
        audit: &NewAuditEntry<'_>,
    ) -> Result<(), RolloutError> {
        let (mut tx, row) = self
            .lock_in(id, &["running"], "rollout_not_running")
            .await?;
        let reason = format!("paused by {actor}");
        db::rollouts::set_state(&mut *tx, id, "paused", Some(&reason)).await?;
        db::rollouts::append_event(&mut *tx, id, "paused", Some(row.current_wave), actor, "")
            .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.context("committing a pause")?;
        self.changed(id);
        Ok(())
    }

    /// Resumes a paused rollout; failures seen so far in the current wave
    /// are accepted (new ones still count).
    pub async fn resume(
        &self,
        id: Uuid,
        actor: &str,
        audit: &NewAuditEntry<'_>,
    ) -> Result<(), RolloutError> {
        let (mut tx, row) = self.lock_in(id, &["paused"], "rollout_not_paused").await?;
        db::rollouts::set_state(&mut *tx, id, "running", None).await?;
        db::rollouts::accept_failures(&mut *tx, id, row.current_wave).await?;
        db::rollouts::append_event(&mut *tx, id, "resumed", Some(row.current_wave), actor, "")
            .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.context("committing a resume")?;
        self.changed(id);
        self.nudge();
        Ok(())
    }

    /// Aborts: the assignment returns to the previous revision (a new one
    /// is removed) and every released router is recompiled.
    pub async fn abort(
        &self,
        id: Uuid,
        actor: &str,
        audit: &NewAuditEntry<'_>,
    ) -> Result<(), RolloutError> {
        let (mut tx, row) = self
            .lock_in(id, &["running", "paused"], "rollout_finished")
            .await?;
        db::rollouts::set_state(&mut *tx, id, "aborted", None).await?;
        match row.from_revision {
            Some(previous) => {
                db::assignments::set_revision(&mut *tx, row.assignment_id, previous).await?;
            }
            None => {
                db::assignments::delete(&mut *tx, row.assignment_id).await?;
            }
        }
        db::rollouts::append_event(
            &mut *tx,
            id,
            "aborted",
            Some(row.current_wave),
            actor,
            "routers return to the previous revision",
        )
        .await?;
        // A few released routers hold the previous revision again when the
        // abort answers; many (a large wave) within moments of it, compiled
        // in chunks, so the answer never waits for them.
        let released = db::rollouts::released_devices(&mut *tx, id).await?;
        let compiled = self
            .reconciler
            .recompile_now_or_soon_in(&mut tx, &released)
            .await?
            .now;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.context("committing an abort")?;
        self.reconciler.publish(compiled);
        self.reconciler.poke();
        self.changed(id);
        Ok(())
    }

    /// The rollout's row, locked in a new transaction.
    async fn lock(
        &self,
        id: Uuid,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, RolloutRow), RolloutError> {
        let mut tx = self.pool.begin().await?;
        let row = db::rollouts::get_for_update(&mut *tx, id)
            .await?
            .ok_or(RolloutError::NotFound(id))?;
        Ok((tx, row))
    }

    /// The rollout's row locked, if it is still running: the loop's steps
    /// give way to an operator's pause or abort that came first.
    async fn lock_running(
        &self,
        id: Uuid,
    ) -> Result<Option<(sqlx::Transaction<'static, sqlx::Postgres>, RolloutRow)>, RolloutError>
    {
        let (tx, row) = self.lock(id).await?;
        Ok((row.state == "running").then_some((tx, row)))
    }

    /// The rollout's row, locked in a new transaction, if its state is one
    /// of `from`; otherwise a conflict with `code`.
    async fn lock_in(
        &self,
        id: Uuid,
        from: &[&str],
        code: &'static str,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, RolloutRow), RolloutError> {
        let (tx, row) = self.lock(id).await?;
        if !from.contains(&row.state.as_str()) {
            return Err(RolloutError::Conflict(
                code,
                format!("rollout {id} is {}", row.state),
            ));
        }
        Ok((tx, row))
    }

    /// One pass over the active rollouts (only one replica at a time).
    pub async fn tick(&self) -> anyhow::Result<()> {
        let mut lock = self
            .pool
            .begin()
            .await
            .context("starting the driver lock")?;
        let ours = db::locks::try_rollout_driver(&mut lock)
            .await
            .context("taking the driver lock")?;
        if !ours {
            return Ok(());
        }
        for id in db::rollouts::active_ids(&self.pool)
            .await
            .context("listing active rollouts")?
        {
            if let Err(e) = self.step(id).await {
                tracing::warn!(rollout = %id, error = ?e, "rollout step failed");
            }
        }
        lock.rollback().await.context("releasing the driver lock")?;
        Ok(())
    }

    /// Follows one rollout's progress and takes the decision its current
    /// wave calls for.
    async fn step(&self, id: Uuid) -> Result<(), RolloutError> {
        let row = db::rollouts::get(&self.pool, id)
            .await?
            .ok_or(RolloutError::NotFound(id))?;
        // A released wave's routers, a chunk per transaction: other changes
        // (and the recompile lock's other users) go in between.
        for _ in 0..MAX_CHUNKS_PER_STEP {
            let mut tx = self.pool.begin().await?;
            let compiled = self
                .target_released(&mut tx, id, Batch::Chunk(self.reconciler.batching.chunk))
                .await?;
            tx.commit().await.context("committing target versions")?;
            let done = compiled.is_empty();
            self.reconciler.publish(compiled);
            if done {
                break;
            }
        }
        {
            let mut conn = self.pool.acquire().await.context("connection")?;
            db::rollouts::track_progress(&mut conn, id, row.policy.0.offline_timeout_secs)
                .await
                .context("tracking progress")?;
        }
        let counts = wave_counts(&self.pool, id).await?;
        self.sample(id, row.current_wave, &counts).await?;
        if row.state != "running" {
            return Ok(());
        }
        let waves = db::rollouts::waves(&self.pool, id).await?;
        let Some(wave) = waves.iter().find(|w| w.wave == row.current_wave) else {
            return Err(anyhow::anyhow!("rollout {id} has no wave {}", row.current_wave).into());
        };
        let current = counts.get(&wave.wave).copied().unwrap_or_default();
        let verdict = judge(
            wave.wave as u32,
            current,
            &row.policy.0,
            wave.accepted_failures as u32,
            wave.healthy_since,
            Utc::now(),
        );
        match verdict {
            Verdict::NotYet if wave.healthy_since.is_some() => {
                db::rollouts::set_wave_health(&self.pool, id, wave.wave, None, false).await?;
            }
            Verdict::NotYet => {}
            Verdict::Soaking { since } => {
                if wave.healthy_since != Some(since) {
                    db::rollouts::set_wave_health(&self.pool, id, wave.wave, Some(since), false)
                        .await?;
                }
            }
            Verdict::Breach(reason) => self.pause_on_breach(id, wave.wave, &reason).await?,
            Verdict::Pass => {
                let passed = Passed {
                    wave: wave.wave,
                    counts: current,
                    healthy_since: wave.healthy_since,
                    last: wave.wave + 1 >= waves.len() as i32,
                };
                self.advance(id, passed).await?;
            }
        }
        Ok(())
    }

    async fn pause_on_breach(&self, id: Uuid, wave: i32, reason: &str) -> Result<(), RolloutError> {
        let Some((mut tx, _)) = self.lock_running(id).await? else {
            return Ok(());
        };
        db::rollouts::set_state(&mut *tx, id, "paused", Some(reason)).await?;
        db::rollouts::append_event(&mut *tx, id, "breach", Some(wave), CONTROLLER, reason).await?;
        let summary = serde_json::json!({"reason": reason});
        append_controller_audit(&mut tx, id, "rollout.pause", summary).await?;
        tx.commit().await.context("committing a pause")?;
        self.changed(id);
        tracing::warn!(rollout = %id, reason, "rollout paused itself");
        Ok(())
    }

    /// Appends a progress sample for every released wave whose counts changed.
    async fn sample(
        &self,
        id: Uuid,
        current_wave: i32,
        counts: &HashMap<i32, Counts>,
    ) -> anyhow::Result<()> {
        let now = Utc::now();
        let mut fresh = Vec::new();
        {
            let mut sampled = self.sampled.lock().expect("sample map poisoned");
            for wave in 0..=current_wave {
                let c = counts.get(&wave).copied().unwrap_or_default();
                let values = [c.pending, c.applied, c.failed, c.offline].map(|v| v as i32);
                if sampled.insert((id, wave), values) != Some(values) {
                    fresh.push(SampleRow {
                        at: now,
                        wave,
                        pending: values[0],
                        applied: values[1],
                        failed: values[2],
                        offline: values[3],
                    });
                }
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        for sample in fresh {
            db::rollouts::append_sample(&self.pool, id, &sample)
                .await
                .context("appending a progress sample")?;
        }
        self.changed(id);
        Ok(())
    }

    /// The driver: a pass every second, or soon after a nudge.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(error = ?e, "rollout pass failed");
            }
            // Bursts of status reports make one pass, not one each.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A wave the loop found passed.
struct Passed {
    wave: i32,
    counts: Counts,
    healthy_since: Option<chrono::DateTime<Utc>>,
    /// The rollout's last wave: it completes.
    last: bool,
}

fn in_progress(assignment: Uuid, active: Uuid) -> RolloutError {
    let which = if active.is_nil() {
        String::new()
    } else {
        format!(" ({active})")
    };
    RolloutError::Conflict(
        "rollout_in_progress",
        format!("assignment {assignment} already has an active rollout{which}; pause, abort or let it finish first"),
    )
}

/// Each wave's routers by progress.
pub async fn wave_counts(pool: &PgPool, id: Uuid) -> Result<HashMap<i32, Counts>, RolloutError> {
    let mut out: HashMap<i32, Counts> = HashMap::new();
    for (wave, state, n) in db::rollouts::counts(pool, id).await? {
        out.entry(wave)
            .or_default()
            .add(&state, u32::try_from(n).unwrap_or(u32::MAX));
    }
    Ok(out)
}

/// Appends an operator's entry in the transaction of the change it made.
async fn append_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    entry: &NewAuditEntry<'_>,
) -> Result<(), RolloutError> {
    if entry.dry_run {
        // The caller's `?` drops `tx`, which rolls it back.
        return Err(RolloutError::DryRun);
    }
    db::audit::append(&mut **tx, entry)
        .await
        .context("appending the audit entry of a rollout change")?;
    Ok(())
}

/// Audits a step the controller took on its own, in its transaction.
async fn append_controller_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    action: &str,
    summary: serde_json::Value,
) -> Result<(), RolloutError> {
    let target = id.to_string();
    let entry = NewAuditEntry {
        dry_run: false,
        actor_id: None,
        actor: CONTROLLER,
        action,
        target: Some(&target),
        status: 200,
        summary,
    };
    append_audit(tx, &entry).await
}
