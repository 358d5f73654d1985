//! `rollouts`, `rollout_waves`, `rollout_devices`, `rollout_events`,
//! `rollout_samples`: staged assignment changes and their progress.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::rollout::plan::Policy;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutRow {
    pub id: Uuid,
    pub assignment_id: Uuid,
    pub service_id: Uuid,
    pub service_name: String,
    pub selector: String,
    pub from_revision: Option<i32>,
    pub to_revision: i32,
    pub state: String,
    pub pause_reason: Option<String>,
    pub current_wave: i32,
    pub policy: Json<Policy>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "r.id, r.assignment_id, r.service_id, s.name AS service_name, r.selector,
    r.from_revision, r.to_revision, r.state, r.pause_reason, r.current_wave, r.policy,
    r.created_by, r.created_at, r.updated_at, r.finished_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WaveRow {
    pub wave: i32,
    pub label: String,
    pub released_at: Option<DateTime<Utc>>,
    pub healthy_since: Option<DateTime<Utc>>,
    pub passed_at: Option<DateTime<Utc>>,
    pub accepted_failures: i32,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub wave: Option<i32>,
    pub actor: String,
    pub detail: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SampleRow {
    pub at: DateTime<Utc>,
    pub wave: i32,
    pub pending: i32,
    pub applied: i32,
    pub failed: i32,
    pub offline: i32,
}

pub struct NewRollout<'a> {
    pub id: Uuid,
    pub assignment_id: Uuid,
    pub service_id: Uuid,
    pub selector: &'a str,
    pub from_revision: Option<i32>,
    pub to_revision: i32,
    pub policy: Policy,
    pub created_by: &'a str,
}

/// Inserts a running rollout; a second active rollout of the same
/// assignment violates `rollouts_one_active_per_assignment`.
pub async fn insert(db: impl PgExecutor<'_>, new: &NewRollout<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rollouts (id, assignment_id, service_id, selector, from_revision,
                               to_revision, state, policy, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8)",
    )
    .bind(new.id)
    .bind(new.assignment_id)
    .bind(new.service_id)
    .bind(new.selector)
    .bind(new.from_revision)
    .bind(new.to_revision)
    .bind(Json(new.policy))
    .bind(new.created_by)
    .execute(db)
    .await
    .map(drop)
}

pub async fn insert_waves(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    labels: &[String],
) -> Result<(), sqlx::Error> {
    let waves: Vec<i32> = (0..labels.len() as i32).collect();
    sqlx::query(
        "INSERT INTO rollout_waves (rollout_id, wave, label)
         SELECT $1, w, l FROM UNNEST($2::int[], $3::text[]) AS t (w, l)",
    )
    .bind(rollout)
    .bind(&waves)
    .bind(labels)
    .execute(db)
    .await
    .map(drop)
}

pub async fn insert_devices(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    devices: &[(Uuid, u32)],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = devices.iter().map(|(id, _)| *id).collect();
    let waves: Vec<i32> = devices.iter().map(|(_, w)| *w as i32).collect();
    sqlx::query(
        "INSERT INTO rollout_devices (rollout_id, device_id, wave)
         SELECT $1, d, w FROM UNNEST($2::uuid[], $3::int[]) AS t (d, w)",
    )
    .bind(rollout)
    .bind(&ids)
    .bind(&waves)
    .execute(db)
    .await
    .map(drop)
}

pub async fn append_event(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    kind: &str,
    wave: Option<i32>,
    actor: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rollout_events (rollout_id, kind, wave, actor, detail)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(rollout)
    .bind(kind)
    .bind(wave)
    .bind(actor)
    .bind(detail)
    .execute(db)
    .await
    .map(drop)
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<RolloutRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rollouts r JOIN services s ON s.id = r.service_id WHERE r.id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The rollout row, locked until the transaction ends.
pub async fn get_for_update(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<RolloutRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rollouts r JOIN services s ON s.id = r.service_id
         WHERE r.id = $1 FOR UPDATE OF r"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Newest first; `after` is the (created_at, id) of the previous page's last.
pub async fn list(
    db: impl PgExecutor<'_>,
    state: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<RolloutRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rollouts r JOIN services s ON s.id = r.service_id
         WHERE ($1::text IS NULL OR r.state = $1)
           AND ($2::timestamptz IS NULL OR (r.created_at, r.id) < ($2, $3))
         ORDER BY r.created_at DESC, r.id DESC LIMIT $4"
    ))
    .bind(state)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Ids of the active (running or paused) rollouts: the driver follows
/// their progress; it advances only running ones.
pub async fn active_ids(db: impl PgExecutor<'_>) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM rollouts WHERE state IN ('running', 'paused') ORDER BY created_at",
    )
    .fetch_all(db)
    .await
}

/// Whether `assignment` has an active rollout.
pub async fn active_for_assignment(
    db: impl PgExecutor<'_>,
    assignment: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM rollouts WHERE assignment_id = $1 AND state IN ('running', 'paused')",
    )
    .bind(assignment)
    .fetch_optional(db)
    .await
}

pub async fn waves(db: impl PgExecutor<'_>, rollout: Uuid) -> Result<Vec<WaveRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT wave, label, released_at, healthy_since, passed_at, accepted_failures
         FROM rollout_waves WHERE rollout_id = $1 ORDER BY wave",
    )
    .bind(rollout)
    .fetch_all(db)
    .await
}

/// (wave, state, routers) for every wave and state present.
pub async fn counts(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
) -> Result<Vec<(i32, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT wave, state, count(*) FROM rollout_devices WHERE rollout_id = $1
         GROUP BY wave, state ORDER BY wave",
    )
    .bind(rollout)
    .fetch_all(db)
    .await
}

pub async fn events(db: impl PgExecutor<'_>, rollout: Uuid) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT at, kind, wave, actor, detail FROM rollout_events WHERE rollout_id = $1 ORDER BY id",
    )
    .bind(rollout)
    .fetch_all(db)
    .await
}

pub async fn samples(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
) -> Result<Vec<SampleRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT at, wave, pending, applied, failed, offline FROM rollout_samples
         WHERE rollout_id = $1 ORDER BY id",
    )
    .bind(rollout)
    .fetch_all(db)
    .await
}

pub async fn append_sample(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    sample: &SampleRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rollout_samples (rollout_id, at, wave, pending, applied, failed, offline)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(rollout)
    .bind(sample.at)
    .bind(sample.wave)
    .bind(sample.pending)
    .bind(sample.applied)
    .bind(sample.failed)
    .bind(sample.offline)
    .execute(db)
    .await
    .map(drop)
}

/// Sets the state (and reason); `finished` stamps `finished_at`.
pub async fn set_state(
    db: impl PgExecutor<'_>,
    id: Uuid,
    state: &str,
    pause_reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rollouts SET state = $2, pause_reason = $3, updated_at = now(),
             finished_at = CASE WHEN $2 IN ('completed', 'aborted') THEN now() END
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(pause_reason)
    .execute(db)
    .await
    .map(drop)
}

/// Releases `wave`: its routers become pending (their target version is
/// filled in once they are recompiled).
pub async fn release_wave(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    wave: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH r AS (UPDATE rollouts SET current_wave = $2, updated_at = now() WHERE id = $1),
              w AS (UPDATE rollout_waves SET released_at = now()
                    WHERE rollout_id = $1 AND wave = $2 AND released_at IS NULL)
         UPDATE rollout_devices SET state = 'pending', changed_at = now()
         WHERE rollout_id = $1 AND wave = $2 AND state = 'waiting'",
    )
    .bind(rollout)
    .bind(wave)
    .execute(db)
    .await
    .map(drop)
}

pub async fn set_wave_health(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    wave: i32,
    healthy_since: Option<DateTime<Utc>>,
    passed: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rollout_waves SET healthy_since = $3,
             passed_at = CASE WHEN $4 THEN now() ELSE passed_at END
         WHERE rollout_id = $1 AND wave = $2",
    )
    .bind(rollout)
    .bind(wave)
    .bind(healthy_since)
    .bind(passed)
    .execute(db)
    .await
    .map(drop)
}

/// Resuming accepts the current wave's failures so far.
pub async fn accept_failures(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    wave: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rollout_waves SET healthy_since = NULL, accepted_failures = (
             SELECT count(*) FROM rollout_devices
             WHERE rollout_id = $1 AND wave = $2 AND state = 'failed')
         WHERE rollout_id = $1 AND wave = $2",
    )
    .bind(rollout)
    .bind(wave)
    .execute(db)
    .await
    .map(drop)
}

/// Released routers without a target version yet (to recompile).
pub async fn untargeted(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT device_id FROM rollout_devices
         WHERE rollout_id = $1 AND state <> 'waiting' AND target_version IS NULL
         LIMIT $2",
    )
    .bind(rollout)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Targets `devices` at the config version they hold now (they were just
/// recompiled with the change), and at the agent version it asks them to
/// run, if it asks for one.
pub async fn set_targets(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    devices: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rollout_devices rd SET target_version = dc.version,
             target_agent_version = dc.agent_release_version
         FROM device_configs dc
         WHERE rd.rollout_id = $1 AND rd.device_id = ANY($2) AND dc.device_id = rd.device_id
           AND rd.target_version IS NULL",
    )
    .bind(rollout)
    .bind(devices)
    .execute(db)
    .await
    .map(drop)
}

/// Moves pending (and offline) routers to applied or failed from their last
/// status report; pending ones past the timeout to offline. Returns how
/// many rows changed. A router given an agent release is applied once it
/// reports running that version; a reverted upgrade is reported as
/// `rolled_back` and fails it.
pub async fn track_progress(
    db: &mut sqlx::PgConnection,
    rollout: Uuid,
    offline_timeout_secs: u32,
) -> Result<u64, sqlx::Error> {
    let reported = sqlx::query(
        "UPDATE rollout_devices rd SET changed_at = now(), state = CASE
             WHEN ds.outcome IN ('applied', 'stale')
                  AND (ds.report->>'enforced_version')::bigint >= rd.target_version
             THEN 'applied' ELSE 'failed' END
         FROM device_status ds
         WHERE rd.rollout_id = $1 AND rd.state IN ('pending', 'offline')
           AND rd.target_version IS NOT NULL AND ds.device_id = rd.device_id
           AND ((ds.outcome IN ('applied', 'stale')
                 AND (ds.report->>'enforced_version')::bigint >= rd.target_version
                 AND (rd.target_agent_version IS NULL
                      OR ds.report->>'agent_version' = rd.target_agent_version))
             OR (ds.outcome IN ('rolled_back', 'rejected')
                 AND (ds.report->>'attempted_version')::bigint >= rd.target_version))",
    )
    .bind(rollout)
    .execute(&mut *db)
    .await?
    .rows_affected();
    let timed_out = sqlx::query(
        "UPDATE rollout_devices rd SET state = 'offline', changed_at = now()
         FROM rollout_waves w
         WHERE rd.rollout_id = $1 AND rd.state = 'pending'
           AND w.rollout_id = rd.rollout_id AND w.wave = rd.wave
           AND w.released_at < now() - make_interval(secs => $2)",
    )
    .bind(rollout)
    .bind(f64::from(offline_timeout_secs))
    .execute(&mut *db)
    .await?
    .rows_affected();
    Ok(reported + timed_out)
}

/// Released routers (to recompile on abort).
pub async fn released_devices(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT device_id FROM rollout_devices WHERE rollout_id = $1 AND state <> 'waiting'",
    )
    .bind(rollout)
    .fetch_all(db)
    .await
}

/// An active rollout's assignment and what unreleased routers compile
/// instead: (assignment, kind, previous spec or None).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StagedRow {
    pub assignment_id: Uuid,
    pub kind: String,
    pub previous_spec: Option<Json<serde_json::Value>>,
}

pub async fn staged(db: impl PgExecutor<'_>) -> Result<Vec<StagedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.assignment_id, s.kind, rev.spec AS previous_spec
         FROM rollouts r
         JOIN services s ON s.id = r.service_id
         LEFT JOIN service_revisions rev
                ON rev.service_id = r.service_id AND rev.revision = r.from_revision
         WHERE r.state IN ('running', 'paused')",
    )
    .fetch_all(db)
    .await
}

/// (router, assignment) for the routers of `devices` (all when None)
/// released by an active rollout.
pub async fn released_pairs(
    db: impl PgExecutor<'_>,
    devices: Option<&[Uuid]>,
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT rd.device_id, r.assignment_id
         FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
         WHERE r.state IN ('running', 'paused') AND rd.state <> 'waiting'
           AND ($1::uuid[] IS NULL OR rd.device_id = ANY($1))",
    )
    .bind(devices)
    .fetch_all(db)
    .await
}

/// How many of a rollout's routers are in `state`.
pub async fn count_in_state(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    state: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM rollout_devices WHERE rollout_id = $1 AND state = $2")
        .bind(rollout)
        .bind(state)
        .fetch_one(db)
        .await
}

/// The first `limit` of a rollout's routers in `state`, by name: (id, name).
pub async fn devices_in_state(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
    state: &str,
    limit: i64,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id, d.name FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id
         WHERE rd.rollout_id = $1 AND rd.state = $2 ORDER BY d.name LIMIT $3",
    )
    .bind(rollout)
    .bind(state)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// At the end of a rollout: its routers that never reported the change
/// count as offline. Returns how many.
pub async fn unconfirmed_to_offline(
    db: impl PgExecutor<'_>,
    rollout: Uuid,
) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "UPDATE rollout_devices SET state = 'offline', changed_at = now()
         WHERE rollout_id = $1 AND state = 'pending'",
    )
    .bind(rollout)
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}
