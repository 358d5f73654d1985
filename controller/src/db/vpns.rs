//! `vpns`, `vpn_members` and `vpn_relays`: customers' site-to-site VPNs,
//! their member routers with tunnel addresses and LAN prefixes, and the ISP
//! routers that may relay. Writers of a VPN's members hold the VPN's row
//! lock ([`lock`]), so tunnel addresses and prefix checks are decided one
//! change at a time. `wireguard_facts` and `vpn_relay_slots` are only read
//! here.
//!
//! Addresses travel as text (`cidr`/`inet` cast in SQL): the sqlx build has
//! no network-type feature, and the values are parsed by `vpn_admin`.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VpnRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    /// `auto`, `mesh` or `hub` ([`crate::vpn::Topology`]).
    pub topology: String,
    /// Set exactly when the topology is `hub`.
    pub hub_device_id: Option<Uuid>,
    /// IPv4 prefix text.
    pub address_pool: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, customer_id, name, topology, hub_device_id, \
     address_pool::text AS address_pool, created_at, updated_at";

/// Constraint names, to tell which unique value was taken.
pub const NAME_KEY: &str = "vpns_customer_id_name_key";
pub const MEMBER_DEVICE_KEY: &str = "vpn_members_device_id_key";

pub struct NewVpn<'a> {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: &'a str,
    pub topology: &'a str,
    pub hub_device_id: Option<Uuid>,
    pub address_pool: &'a str,
}

pub async fn insert(db: impl PgExecutor<'_>, vpn: &NewVpn<'_>) -> Result<VpnRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO vpns (id, customer_id, name, topology, hub_device_id, address_pool)
         VALUES ($1, $2, $3, $4, $5, $6::cidr) RETURNING {COLUMNS}"
    ))
    .bind(vpn.id)
    .bind(vpn.customer_id)
    .bind(vpn.name)
    .bind(vpn.topology)
    .bind(vpn.hub_device_id)
    .bind(vpn.address_pool)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<VpnRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM vpns WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The VPN, locked until the end of the caller's transaction: its members,
/// their addresses and its topology change one writer at a time.
pub async fn lock(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<VpnRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM vpns WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// A VPN in a list, with its number of members.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VpnListRow {
    #[sqlx(flatten)]
    pub vpn: VpnRow,
    pub member_count: i64,
}

/// One page of VPNs ordered by id, after the id `after`, of one customer or all.
pub async fn list(
    db: impl PgExecutor<'_>,
    customer_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<VpnListRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS},
             (SELECT count(*) FROM vpn_members m WHERE m.vpn_id = vpns.id) AS member_count
         FROM vpns
         WHERE ($1::uuid IS NULL OR customer_id = $1) AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3"
    ))
    .bind(customer_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Sets the topology and hub (None unless the topology is `hub`).
pub async fn update_topology(
    db: impl PgExecutor<'_>,
    id: Uuid,
    topology: &str,
    hub_device_id: Option<Uuid>,
) -> Result<VpnRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE vpns SET topology = $2, hub_device_id = $3, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(topology)
    .bind(hub_device_id)
    .fetch_one(db)
    .await
}

/// Marks the VPN changed (its members did).
pub async fn touch(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vpns SET updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
        .map(drop)
}

/// Deletes a VPN; its members and relay slot go with it.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM vpns WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How many VPNs a customer has.
pub async fn count_of_customer(
    db: impl PgExecutor<'_>,
    customer_id: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM vpns WHERE customer_id = $1")
        .bind(customer_id)
        .fetch_one(db)
        .await
}

/// A member router with its name and, if it reported them, its WireGuard facts.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRow {
    pub device_id: Uuid,
    pub device_name: String,
    /// The address without its `/32`.
    pub tunnel_address: String,
    /// `cidr` texts, as stored.
    pub prefixes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub public_key: Option<String>,
    /// Where a controller probe reached it, without a prefix length.
    pub reachable_address: Option<String>,
}

/// The members of a VPN, by tunnel address.
pub async fn members(db: impl PgExecutor<'_>, vpn_id: Uuid) -> Result<Vec<MemberRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.device_id, d.name AS device_name, host(m.tunnel_address) AS tunnel_address,
             m.prefixes::text[] AS prefixes, m.created_at,
             f.public_key, host(f.reachable_address) AS reachable_address
         FROM vpn_members m
         JOIN devices d ON d.id = m.device_id
         LEFT JOIN wireguard_facts f ON f.device_id = m.device_id
         WHERE m.vpn_id = $1 ORDER BY m.tunnel_address",
    )
    .bind(vpn_id)
    .fetch_all(db)
    .await
}

pub async fn insert_member(
    db: impl PgExecutor<'_>,
    vpn_id: Uuid,
    device_id: Uuid,
    tunnel_address: std::net::Ipv4Addr,
    prefixes: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vpn_members (vpn_id, device_id, tunnel_address, prefixes)
         VALUES ($1, $2, $3::inet, $4::cidr[])",
    )
    .bind(vpn_id)
    .bind(device_id)
    .bind(tunnel_address.to_string())
    .bind(prefixes)
    .execute(db)
    .await
    .map(drop)
}

/// Replaces a member's prefixes; false if the router is not a member.
pub async fn update_member_prefixes(
    db: impl PgExecutor<'_>,
    vpn_id: Uuid,
    device_id: Uuid,
    prefixes: &[String],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE vpn_members SET prefixes = $3::cidr[] WHERE vpn_id = $1 AND device_id = $2",
    )
    .bind(vpn_id)
    .bind(device_id)
    .bind(prefixes)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a member (its tunnel address is free again); false if it was not one.
pub async fn delete_member(
    db: impl PgExecutor<'_>,
    vpn_id: Uuid,
    device_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM vpn_members WHERE vpn_id = $1 AND device_id = $2")
        .bind(vpn_id)
        .bind(device_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The VPN a router is a member of, if any.
pub async fn vpn_of_device(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
) -> Result<Option<VpnRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM vpns
         WHERE id = (SELECT vpn_id FROM vpn_members WHERE device_id = $1)"
    ))
    .bind(device_id)
    .fetch_optional(db)
    .await
}

/// The relay the controller gave a VPN, if any.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RelaySlotRow {
    pub relay_device_id: Uuid,
    pub relay_name: String,
    pub slot: i32,
}

pub async fn relay_slot(
    db: impl PgExecutor<'_>,
    vpn_id: Uuid,
) -> Result<Option<RelaySlotRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.relay_device_id, d.name AS relay_name, s.slot
         FROM vpn_relay_slots s JOIN devices d ON d.id = s.relay_device_id
         WHERE s.vpn_id = $1",
    )
    .bind(vpn_id)
    .fetch_optional(db)
    .await
}

/// The routers whose configs a change to this VPN can touch: its members
/// and the relay in its slot, if any.
pub async fn affected_devices(
    db: impl PgExecutor<'_>,
    vpn_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT device_id FROM vpn_members WHERE vpn_id = $1
         UNION
         SELECT relay_device_id FROM vpn_relay_slots WHERE vpn_id = $1
         ORDER BY 1",
    )
    .bind(vpn_id)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RelayRow {
    pub device_id: Uuid,
    pub device_name: String,
    pub created_at: DateTime<Utc>,
    /// How many VPNs it relays now.
    pub slots: i64,
}

const RELAY_QUERY: &str = "SELECT r.device_id, d.name AS device_name, r.created_at,
         (SELECT count(*) FROM vpn_relay_slots s WHERE s.relay_device_id = r.device_id) AS slots
     FROM vpn_relays r JOIN devices d ON d.id = r.device_id";

/// Makes a router a relay; false if it already was one.
pub async fn insert_relay(db: impl PgExecutor<'_>, device_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("INSERT INTO vpn_relays (device_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(device_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get_relay(
    db: impl PgExecutor<'_>,
    device_id: Uuid,
) -> Result<Option<RelayRow>, sqlx::Error> {
    sqlx::query_as(&format!("{RELAY_QUERY} WHERE r.device_id = $1"))
        .bind(device_id)
        .fetch_optional(db)
        .await
}

/// One page of relays ordered by device id, after the id `after`.
pub async fn list_relays(
    db: impl PgExecutor<'_>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<RelayRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{RELAY_QUERY} WHERE $1::uuid IS NULL OR r.device_id > $1 ORDER BY r.device_id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The VPNs a relay serves now (their slots go when it stops being one).
pub async fn vpns_relayed_by(
    db: impl PgExecutor<'_>,
    relay_device_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT vpn_id FROM vpn_relay_slots WHERE relay_device_id = $1 ORDER BY 1")
        .bind(relay_device_id)
        .fetch_all(db)
        .await
}

/// Stops a router being a relay (its slots go with it); false if it was not one.
pub async fn delete_relay(db: impl PgExecutor<'_>, device_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM vpn_relays WHERE device_id = $1")
        .bind(device_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}
