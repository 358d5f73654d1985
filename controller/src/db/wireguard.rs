//! `wireguard_facts` (what routers report of their WireGuard side and the
//! controller's key decisions) and what the VPN compiler loads: VPNs with
//! their members, facts and relay.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FactsRow {
    pub device_id: Uuid,
    pub public_key: String,
    pub next_public_key: Option<String>,
    pub key_generation: i32,
    pub listen_port: i32,
    pub wan_addresses: Vec<String>,
    pub reachable_address: Option<String>,
    pub requested_generation: i32,
    pub active_public_key: String,
    pub alternate_public_key: Option<String>,
    pub rotation_stage: Option<String>,
    /// {device id: config version} the peers must enforce.
    pub rotation_waits_for: Option<Json<std::collections::BTreeMap<Uuid, i64>>>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "device_id, public_key, next_public_key, key_generation, listen_port, \
    ARRAY(SELECT host(a) FROM unnest(wan_addresses) a) AS wan_addresses, \
    host(reachable_address) AS reachable_address, requested_generation, active_public_key, \
    alternate_public_key, rotation_stage, rotation_waits_for, updated_at";

/// The device's facts, locked until the end of the transaction.
pub async fn lock(db: impl PgExecutor<'_>, device: Uuid) -> Result<Option<FactsRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM wireguard_facts WHERE device_id = $1 FOR UPDATE"
    ))
    .bind(device)
    .fetch_optional(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, device: Uuid) -> Result<Option<FactsRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM wireguard_facts WHERE device_id = $1"
    ))
    .bind(device)
    .fetch_optional(db)
    .await
}

pub async fn upsert(db: impl PgExecutor<'_>, row: &FactsRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO wireguard_facts (device_id, public_key, next_public_key, key_generation, \
         listen_port, wan_addresses, reachable_address, requested_generation, active_public_key, \
         alternate_public_key, rotation_stage, rotation_waits_for, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6::inet[], $7::inet, $8, $9, $10, $11, $12, now()) \
         ON CONFLICT (device_id) DO UPDATE SET public_key = $2, next_public_key = $3, \
         key_generation = $4, listen_port = $5, wan_addresses = $6::inet[], \
         reachable_address = $7::inet, requested_generation = $8, active_public_key = $9, \
         alternate_public_key = $10, rotation_stage = $11, rotation_waits_for = $12, \
         updated_at = now()",
    )
    .bind(row.device_id)
    .bind(&row.public_key)
    .bind(&row.next_public_key)
    .bind(row.key_generation)
    .bind(row.listen_port)
    .bind(&row.wan_addresses)
    .bind(&row.reachable_address)
    .bind(row.requested_generation)
    .bind(&row.active_public_key)
    .bind(&row.alternate_public_key)
    .bind(&row.rotation_stage)
    .bind(&row.rotation_waits_for)
    .execute(db)
    .await?;
    Ok(())
}

/// Asks for a new key (operator rotation): the generation the router is
/// told to make. None when the router has reported no facts yet.
pub async fn request_rotation(
    db: impl PgExecutor<'_>,
    device: Uuid,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE wireguard_facts SET requested_generation = GREATEST(requested_generation, \
         key_generation) + 1, updated_at = now() WHERE device_id = $1 \
         RETURNING requested_generation",
    )
    .bind(device)
    .fetch_optional(db)
    .await
}

/// Rotations announced to the peers that still wait for `device` to
/// enforce a version: (rotating device, the version it waits for).
pub async fn rotations_waiting_on(
    db: impl PgExecutor<'_>,
    device: Uuid,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT device_id, (rotation_waits_for ->> $1::text)::bigint FROM wireguard_facts \
         WHERE rotation_stage = 'announced' AND rotation_waits_for ? $1::text",
    )
    .bind(device)
    .fetch_all(db)
    .await
}

/// Announced rotations older than `before` (peers that never confirmed do
/// not hold a rotation up forever).
pub async fn rotations_announced_before(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT device_id FROM wireguard_facts WHERE rotation_stage = 'announced' \
         AND updated_at < $1",
    )
    .bind(before)
    .fetch_all(db)
    .await
}

/// The VPNs these devices are in, as members or as their relay (every VPN
/// when None).
pub async fn vpns_of_devices(
    db: impl PgExecutor<'_>,
    devices: Option<&[Uuid]>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT vpn_id FROM vpn_members WHERE $1::uuid[] IS NULL OR device_id = ANY($1) \
         UNION SELECT vpn_id FROM vpn_relay_slots \
         WHERE $1::uuid[] IS NULL OR relay_device_id = ANY($1)",
    )
    .bind(devices)
    .fetch_all(db)
    .await
}

/// The routers a change to `device`'s WireGuard side can touch: every
/// member and the relay of the VPNs it is in or relays, itself included.
pub async fn devices_sharing_vpns_with(
    db: impl PgExecutor<'_>,
    device: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH v AS (SELECT vpn_id FROM vpn_members WHERE device_id = $1 \
                    UNION SELECT vpn_id FROM vpn_relay_slots WHERE relay_device_id = $1) \
         SELECT device_id FROM vpn_members WHERE vpn_id IN (SELECT vpn_id FROM v) \
         UNION SELECT relay_device_id FROM vpn_relay_slots WHERE vpn_id IN (SELECT vpn_id FROM v) \
         UNION SELECT $1",
    )
    .bind(device)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VpnRow {
    pub id: Uuid,
    pub topology: String,
    pub hub_device_id: Option<Uuid>,
    /// The pool as text (`100.64.0.0/16`).
    pub address_pool: String,
}

/// A member with its device name and facts (facts columns NULL when none).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRow {
    pub vpn_id: Uuid,
    pub device_id: Uuid,
    pub name: String,
    pub tunnel_address: String,
    pub prefixes: Vec<String>,
    pub active_public_key: Option<String>,
    pub alternate_public_key: Option<String>,
    pub listen_port: Option<i32>,
    pub reachable_address: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RelaySlotRow {
    pub vpn_id: Uuid,
    pub relay_device_id: Uuid,
    pub name: String,
    pub slot: i32,
    pub active_public_key: Option<String>,
    pub alternate_public_key: Option<String>,
    pub listen_port: Option<i32>,
    pub reachable_address: Option<String>,
}

pub async fn vpns(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<VpnRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, topology, hub_device_id, address_pool::text AS address_pool FROM vpns \
         WHERE id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

pub async fn members_of(
    db: impl PgExecutor<'_>,
    vpn_ids: &[Uuid],
) -> Result<Vec<MemberRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.vpn_id, m.device_id, d.name, host(m.tunnel_address) AS tunnel_address, \
         m.prefixes::text[] AS prefixes, f.active_public_key, f.alternate_public_key, \
         f.listen_port, host(f.reachable_address) AS reachable_address \
         FROM vpn_members m JOIN devices d ON d.id = m.device_id \
         LEFT JOIN wireguard_facts f ON f.device_id = m.device_id \
         WHERE m.vpn_id = ANY($1) ORDER BY m.vpn_id, m.tunnel_address",
    )
    .bind(vpn_ids)
    .fetch_all(db)
    .await
}

pub async fn relay_slots_of(
    db: impl PgExecutor<'_>,
    vpn_ids: &[Uuid],
) -> Result<Vec<RelaySlotRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.vpn_id, s.relay_device_id, d.name, s.slot, f.active_public_key, \
         f.alternate_public_key, f.listen_port, host(f.reachable_address) AS reachable_address \
         FROM vpn_relay_slots s JOIN devices d ON d.id = s.relay_device_id \
         LEFT JOIN wireguard_facts f ON f.device_id = s.relay_device_id \
         WHERE s.vpn_id = ANY($1)",
    )
    .bind(vpn_ids)
    .fetch_all(db)
    .await
}

/// Gives `vpn` a relay: the reachable relay serving the fewest VPNs, on its
/// lowest free slot. None when no relay is reachable.
pub async fn assign_relay(
    db: impl PgExecutor<'_>,
    vpn: Uuid,
) -> Result<Option<(Uuid, i32)>, sqlx::Error> {
    sqlx::query_as(
        "WITH candidate AS ( \
           SELECT r.device_id FROM vpn_relays r \
           JOIN wireguard_facts f ON f.device_id = r.device_id \
           WHERE f.reachable_address IS NOT NULL \
           ORDER BY (SELECT count(*) FROM vpn_relay_slots s WHERE s.relay_device_id = r.device_id), \
                    r.device_id LIMIT 1), \
         free AS ( \
           SELECT c.device_id, (SELECT min(n) FROM generate_series(1, 1000) n \
              WHERE NOT EXISTS (SELECT 1 FROM vpn_relay_slots s \
                                WHERE s.relay_device_id = c.device_id AND s.slot = n)) AS slot \
           FROM candidate c) \
         INSERT INTO vpn_relay_slots (vpn_id, relay_device_id, slot) \
         SELECT $1, device_id, slot FROM free WHERE slot IS NOT NULL \
         ON CONFLICT (vpn_id) DO NOTHING RETURNING relay_device_id, slot",
    )
    .bind(vpn)
    .fetch_optional(db)
    .await
}

/// Takes the relay away from `vpn` (a site became reachable). True when it had one.
pub async fn release_relay(db: impl PgExecutor<'_>, vpn: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM vpn_relay_slots WHERE vpn_id = $1")
        .bind(vpn)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// For the devices among `devices` (all when None) that are VPN members or
/// relays: the key they are told to use (None before their first facts) and
/// the key generation asked of them.
pub async fn own_sides(
    db: impl PgExecutor<'_>,
    devices: Option<&[Uuid]>,
) -> Result<Vec<(Uuid, Option<String>, Option<i32>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id, f.active_public_key, f.requested_generation FROM devices d \
         LEFT JOIN wireguard_facts f ON f.device_id = d.id \
         WHERE ($1::uuid[] IS NULL OR d.id = ANY($1)) \
         AND (EXISTS (SELECT 1 FROM vpn_members m WHERE m.device_id = d.id) \
              OR EXISTS (SELECT 1 FROM vpn_relays r WHERE r.device_id = d.id))",
    )
    .bind(devices)
    .fetch_all(db)
    .await
}

/// The current config version of each of `devices` that has one.
pub async fn config_versions(
    db: impl PgExecutor<'_>,
    devices: &[Uuid],
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT device_id, version FROM device_configs WHERE device_id = ANY($1)")
        .bind(devices)
        .fetch_all(db)
        .await
}

/// Members of auto VPNs without a relay in which at least two members have
/// reported facts and none is reachable, when some relay is reachable.
pub async fn members_of_vpns_wanting_relay(
    db: impl PgExecutor<'_>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH wanting AS ( \
           SELECT v.id FROM vpns v JOIN vpn_members m ON m.vpn_id = v.id \
           JOIN wireguard_facts f ON f.device_id = m.device_id \
           WHERE v.topology = 'auto' \
             AND NOT EXISTS (SELECT 1 FROM vpn_relay_slots s WHERE s.vpn_id = v.id) \
           GROUP BY v.id \
           HAVING count(*) >= 2 AND bool_and(f.reachable_address IS NULL)) \
         SELECT m.device_id FROM vpn_members m WHERE m.vpn_id IN (SELECT id FROM wanting) \
         AND EXISTS (SELECT 1 FROM vpn_relays r JOIN wireguard_facts f \
                     ON f.device_id = r.device_id WHERE f.reachable_address IS NOT NULL)",
    )
    .fetch_all(db)
    .await
}

pub async fn is_relay(db: impl PgExecutor<'_>, device: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM vpn_relays WHERE device_id = $1)")
        .bind(device)
        .fetch_one(db)
        .await
}
