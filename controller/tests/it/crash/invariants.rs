//! The invariants a crash must never break, read straight from the
//! database (while the controller is down, the state the crash left) and
//! from the device API (after the restart, what routers are served).
//!
//! "Committed together" is checked exactly: PostgreSQL's `now()` is the
//! transaction's start, so a row and the audit entry written in its
//! transaction carry the same timestamp. An object whose entry has another
//! timestamp was stored by another transaction, and a crash between the two
//! would have left one without the other.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};
use sqlx::PgPool;
use uuid::Uuid;

use super::routers::Router;
use super::world::{Api, CallError, World};

/// One invariant: what breaking it means, and a query listing the rows
/// that break it (empty when it holds).
const CHECKS: &[(&str, &str)] = &[
    (
        "a device without its config",
        "SELECT d.id::text FROM devices d
         WHERE NOT EXISTS (SELECT 1 FROM device_configs c WHERE c.device_id = d.id)",
    ),
    (
        "a device without the audit entry of the transaction that created it",
        "SELECT d.id::text FROM devices d WHERE NOT EXISTS (
             SELECT 1 FROM audit_log a WHERE a.target = d.id::text AND a.at = d.created_at
               AND a.status BETWEEN 200 AND 299
               AND a.action IN ('POST /api/v1/devices', 'device.enroll'))",
    ),
    (
        "a device without the token it was registered with or enrolled by",
        "SELECT d.id::text FROM devices d WHERE NOT EXISTS (
             SELECT 1 FROM enrollment_tokens t WHERE t.device_id = d.id OR t.used_by = d.id)",
    ),
    (
        "a used enrollment token whose device was not created with it",
        "SELECT t.id::text FROM enrollment_tokens t
         LEFT JOIN devices d ON d.id = t.used_by
         WHERE t.used_at IS NOT NULL AND t.device_id IS NULL
           AND (d.id IS NULL OR d.created_at <> t.used_at OR d.cert_serial IS NULL)",
    ),
    (
        "an enrolled device without the certificate its enrollment issued",
        "SELECT t.id::text FROM enrollment_tokens t
         WHERE t.used_at IS NOT NULL AND NOT EXISTS (
             SELECT 1 FROM device_certificates c WHERE c.device_id = t.used_by
               AND c.issued_by = 'enrollment' AND c.issued_at = t.used_at)",
    ),
    (
        "an enrollment batch stored in part, or without its audit entry",
        "WITH batches AS (
             SELECT created_at, count(*) AS tokens FROM enrollment_tokens
             WHERE device_id IS NULL GROUP BY created_at)
         SELECT b.created_at::text || ': ' || b.tokens || ' tokens' FROM batches b
         WHERE NOT EXISTS (
             SELECT 1 FROM audit_log a WHERE a.at = b.created_at AND a.status = 201
               AND a.action = 'POST /api/v1/enrollment-tokens'
               AND coalesce((a.summary->>'count')::bigint, 1) = b.tokens)",
    ),
    (
        "an audited enrollment batch without its tokens",
        "SELECT a.id::text FROM audit_log a
         WHERE a.action = 'POST /api/v1/enrollment-tokens' AND a.status = 201
           AND NOT EXISTS (SELECT 1 FROM enrollment_tokens t
                           WHERE t.created_at = a.at AND t.device_id IS NULL)",
    ),
    (
        "a service without its audit entry",
        "SELECT s.id::text FROM services s WHERE NOT EXISTS (
             SELECT 1 FROM audit_log a WHERE a.target = s.id::text AND a.at = s.created_at
               AND a.status = 201 AND a.action = 'POST /api/v1/services')",
    ),
    (
        "a service revision without its audit entry",
        "SELECT r.service_id::text || ' revision ' || r.revision FROM service_revisions r
         WHERE r.revision > 1 AND NOT EXISTS (
             SELECT 1 FROM audit_log a WHERE a.target = r.service_id::text AND a.at = r.created_at
               AND a.status = 201 AND a.action = 'POST /api/v1/services/{id}/revisions')",
    ),
    (
        "an assignment without its audit entry",
        "SELECT x.id::text FROM assignments x WHERE NOT EXISTS (
             SELECT 1 FROM audit_log a WHERE a.at = x.created_at AND a.status BETWEEN 200 AND 299
               AND ((a.action = 'POST /api/v1/assignments' AND a.target = x.id::text)
                 OR (a.action = 'POST /api/v1/rollouts' AND a.target IN (
                         SELECT r.id::text FROM rollouts r WHERE r.assignment_id = x.id))))",
    ),
    (
        "a customer without its audit entry",
        "SELECT c.id::text FROM customers c WHERE NOT EXISTS (
             SELECT 1 FROM audit_log a WHERE a.target = c.id::text AND a.at = c.created_at
               AND a.status = 201 AND a.action = 'POST /api/v1/customers')",
    ),
    (
        "a VPN without its audit entry",
        "SELECT v.id::text FROM vpns v WHERE NOT EXISTS (
             SELECT 1 FROM audit_log a WHERE a.target = v.id::text AND a.at = v.created_at
               AND a.status = 201 AND a.action = 'POST /api/v1/vpns')",
    ),
    (
        "a VPN member without the audit entry of its joining",
        "SELECT m.vpn_id::text || ' member ' || m.device_id FROM vpn_members m WHERE NOT EXISTS (
             SELECT 1 FROM audit_log a WHERE a.target = m.vpn_id::text AND a.at = m.created_at
               AND a.status BETWEEN 200 AND 299
               AND a.action IN ('POST /api/v1/vpns', 'PUT /api/v1/vpns/{id}/members/{device_id}'))",
    ),
    (
        "a VPN member without a tunnel address of its VPN's pool",
        "SELECT m.vpn_id::text || ' member ' || m.device_id FROM vpn_members m
         JOIN vpns v ON v.id = m.vpn_id
         WHERE m.tunnel_address IS NULL OR NOT (m.tunnel_address << v.address_pool)",
    ),
    (
        "a rollout without its audit entry",
        "SELECT r.id::text FROM rollouts r WHERE NOT EXISTS (
             SELECT 1 FROM audit_log a WHERE a.target = r.id::text AND a.at = r.created_at
               AND a.status = 201 AND a.action = 'POST /api/v1/rollouts')",
    ),
    (
        "a rollout without its waves or routers, or past its last wave",
        "SELECT r.id::text FROM rollouts r
         WHERE NOT EXISTS (SELECT 1 FROM rollout_devices rd WHERE rd.rollout_id = r.id)
            OR r.current_wave >= (SELECT count(*) FROM rollout_waves w WHERE w.rollout_id = r.id)",
    ),
    (
        // The canary is released with the rollout: a rollout stored without
        // it would never move (the loop waits for reports from its routers).
        "a rollout whose released waves are not exactly the canary to its current wave",
        "SELECT r.id::text || ' wave ' || w.wave FROM rollouts r
         JOIN rollout_waves w ON w.rollout_id = r.id
         WHERE (w.wave <= r.current_wave) <> (w.released_at IS NOT NULL)",
    ),
    (
        "a released wave with a router that has no target version, or a config below it",
        "SELECT rd.rollout_id::text || ' router ' || rd.device_id FROM rollout_devices rd
         JOIN rollout_waves w ON w.rollout_id = rd.rollout_id AND w.wave = rd.wave
         LEFT JOIN device_configs c ON c.device_id = rd.device_id
         WHERE w.released_at IS NOT NULL
           AND (rd.state = 'waiting' OR rd.target_version IS NULL
                OR c.version IS NULL OR c.version < rd.target_version)",
    ),
    (
        "a router of a wave not released that is not waiting",
        "SELECT rd.rollout_id::text || ' router ' || rd.device_id FROM rollout_devices rd
         JOIN rollout_waves w ON w.rollout_id = rd.rollout_id AND w.wave = rd.wave
         WHERE w.released_at IS NULL AND (rd.state <> 'waiting' OR rd.target_version IS NOT NULL)",
    ),
    (
        "a rollout event recorded twice",
        "SELECT rollout_id::text || ' ' || kind || ' wave ' || coalesce(wave, -1) || ': '
                || count(*) || ' times'
         FROM rollout_events WHERE kind IN ('created', 'wave_released', 'wave_passed', 'completed')
         GROUP BY rollout_id, kind, wave HAVING count(*) > 1",
    ),
    (
        "a wave released or passed without its event in the same transaction",
        "SELECT w.rollout_id::text || ' wave ' || w.wave FROM rollout_waves w
         WHERE (w.released_at IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM rollout_events e WHERE e.rollout_id = w.rollout_id
                      AND e.kind = 'wave_released' AND e.wave = w.wave AND e.at = w.released_at))
            OR (w.passed_at IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM rollout_events e WHERE e.rollout_id = w.rollout_id
                      AND e.kind = 'wave_passed' AND e.wave = w.wave AND e.at = w.passed_at))",
    ),
    (
        "a rollout completed without every wave released and passed, or the other way round",
        "SELECT r.id::text FROM rollouts r
         WHERE (r.state = 'completed') <> EXISTS (
                   SELECT 1 FROM rollout_events e WHERE e.rollout_id = r.id AND e.kind = 'completed')
            OR (r.state = 'completed' AND EXISTS (
                   SELECT 1 FROM rollout_waves w WHERE w.rollout_id = r.id
                     AND (w.released_at IS NULL OR w.passed_at IS NULL)))",
    ),
    (
        "a step the controller took (a wave released, a rollout completed) without its audit entry",
        "SELECT e.rollout_id::text || ' ' || e.kind || ' wave ' || coalesce(e.wave, -1)
         FROM rollout_events e
         WHERE ((e.kind = 'wave_released' AND e.wave > 0) OR e.kind = 'completed')
           AND NOT EXISTS (
               SELECT 1 FROM audit_log a WHERE a.at = e.at AND a.actor = 'controller'
                 AND a.target = e.rollout_id::text AND a.status = 200
                 AND ((e.kind = 'completed' AND a.action = 'rollout.complete')
                   OR (a.action = 'rollout.wave' AND (a.summary->>'wave')::int = e.wave)))",
    ),
    (
        "an audit entry of the controller's steps without the step",
        "SELECT a.id::text || ' ' || a.action FROM audit_log a
         WHERE a.actor = 'controller' AND a.action IN ('rollout.wave', 'rollout.complete')
           AND NOT EXISTS (
               SELECT 1 FROM rollout_events e WHERE e.at = a.at AND e.rollout_id::text = a.target
                 AND e.kind = CASE a.action WHEN 'rollout.wave' THEN 'wave_released'
                                            ELSE 'completed' END)",
    ),
];

/// Every invariant `CHECKS` lists and every stored config's content
/// (signed for its device, at its row's version): what is broken, if anything.
pub async fn database_violations(db: &PgPool) -> Vec<String> {
    let mut found = Vec::new();
    for (what, query) in CHECKS {
        let rows: Vec<String> = sqlx::query_scalar(query)
            .fetch_all(db)
            .await
            .unwrap_or_else(|e| panic!("checking `{what}`: {e}"));
        if !rows.is_empty() {
            found.push(format!("{what}: {}", rows.join(", ")));
        }
    }
    for (device, version, envelope) in configs(db).await {
        let config = device_config(&envelope);
        if config.device_id != device.to_string() || config.version != version as u64 {
            found.push(format!(
                "device {device}: the stored config is for {} at version {}, its row says {version}",
                config.device_id, config.version
            ));
        }
    }
    found
}

/// (device, version, envelope) of every stored config.
pub async fn configs(db: &PgPool) -> Vec<(Uuid, i64, Vec<u8>)> {
    sqlx::query_as("SELECT device_id, version, envelope FROM device_configs")
        .fetch_all(db)
        .await
        .expect("reading configs")
}

/// Every device's config version.
pub async fn versions(db: &PgPool) -> HashMap<Uuid, i64> {
    sqlx::query_as("SELECT device_id, version FROM device_configs")
        .fetch_all(db)
        .await
        .expect("reading versions")
        .into_iter()
        .collect()
}

/// The config an envelope carries (the test trusts its own database; the
/// signature is the agent's business).
pub fn device_config(envelope: &[u8]) -> isdf_api::DeviceConfig {
    let envelope: isdf_api::Envelope = serde_json::from_slice(envelope).expect("an envelope");
    serde_json::from_slice(&envelope.payload_bytes().expect("base64 payload"))
        .expect("a device config")
}

/// Devices whose version went down from `before` to `after`, or that
/// disappeared.
pub fn versions_went_back(
    before: &HashMap<Uuid, i64>,
    after: &HashMap<Uuid, i64>,
    when: &str,
) -> Vec<String> {
    before
        .iter()
        .filter_map(|(device, was)| match after.get(device) {
            Some(now) if now >= was => None,
            now => Some(format!(
                "{when}: device {device} had version {was}, now {now:?}"
            )),
        })
        .collect()
}

/// Each router is served (device API, its certificate) exactly the config
/// stored last for it: same version, same envelope bytes.
pub async fn served_violations(api: &Api, db: &PgPool, routers: &[Router]) -> Vec<String> {
    let stored: HashMap<Uuid, (i64, Vec<u8>)> = configs(db)
        .await
        .into_iter()
        .map(|(device, version, envelope)| (device, (version, envelope)))
        .collect();
    stream::iter(routers)
        .map(|router| {
            let stored = stored.get(&router.id);
            async move {
                let served = router.served(api).await;
                match (served, stored) {
                    (Ok((version, body)), Some((v, envelope)))
                        if version == *v as u64 && body == *envelope =>
                    {
                        None
                    }
                    (Ok((version, _)), stored) => Some(format!(
                        "router {} is served version {version}, the database has {:?}",
                        router.id,
                        stored.map(|s| s.0)
                    )),
                    (Err(CallError::Transport(e)), _) => {
                        Some(format!("router {}: no answer: {e}", router.id))
                    }
                    (Err(CallError::Status(status, body)), _) => {
                        Some(format!("router {}: served {status}: {body}", router.id))
                    }
                }
            }
        })
        .buffer_unordered(8)
        .filter_map(|v| async move { v })
        .collect()
        .await
}

/// Fails the test with every violation found, and the controller's log.
pub fn assert_holds(world: &World, when: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{}: {when}: {} invariants broken:\n  {}\n{}",
        world.name,
        violations.len(),
        violations.join("\n  "),
        world.log_tail()
    );
}
