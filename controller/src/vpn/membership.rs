//! Who may be in a VPN, and with which prefixes: the rules every change to
//! a VPN's members meets. The handlers (`handlers/vpns.rs`) run them inside
//! one transaction holding the VPN's row lock and the rows of the routers
//! it admits, so two writers never hand out the same tunnel address or both
//! pass the prefix checks; a refused change writes nothing.
//!
//! Each refusal has a stable code (the API's error `code`): 400 for a
//! request that is wrong whatever the database holds, 409 for a conflict
//! with what it holds.

use std::collections::BTreeSet;

use isdf_api::wireguard::first_overlap;
use isdf_api::Prefix;
use sqlx::PgConnection;
use uuid::Uuid;

use super::addresses::{AddressPool, LanPrefixes, PrefixError};
use super::plan::Topology;
use crate::db;

/// Why a change to a VPN's members was refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Wrong whatever the database holds (400).
    #[error("{1}")]
    Invalid(&'static str, String),
    /// In conflict with what the database holds (409).
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub type MembershipResult<T> = Result<T, MembershipError>;

/// A site's prefixes, refused as `invalid_prefix` or `too_many_prefixes`.
pub fn parse_prefixes(texts: &[String], site: &str) -> MembershipResult<LanPrefixes> {
    LanPrefixes::parse(texts, site).map_err(|e| match e {
        PrefixError::Invalid(m) => MembershipError::Invalid("invalid_prefix", m),
        PrefixError::Count(m) => MembershipError::Invalid("too_many_prefixes", m),
    })
}

/// The hub a topology needs: one with `hub`, none otherwise.
pub fn check_hub(topology: Topology, hub: Option<Uuid>) -> MembershipResult<()> {
    match (topology, hub) {
        (Topology::Hub, None) => Err(MembershipError::Invalid(
            "hub_required",
            "topology `hub` needs `hub`: the member every site connects through".into(),
        )),
        (Topology::Auto | Topology::Mesh, Some(hub)) => Err(MembershipError::Invalid(
            "unexpected_hub",
            format!(
                "`hub` ({hub}) is only for topology `hub`; topology `{}` chooses its own paths",
                topology.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

pub fn hub_not_member(hub: Uuid, vpn: &str) -> MembershipError {
    MembershipError::Invalid(
        "hub_not_member",
        format!("hub {hub} is not a member of VPN `{vpn}`; add it as a member first"),
    )
}

/// One site of the VPN as it will be: name and prefixes.
pub struct Site<'a> {
    pub name: &'a str,
    pub prefixes: &'a [Prefix],
}

/// Refuses prefixes inside the address pool and prefixes of two sites (or
/// of one) that overlap, naming both.
pub fn check_prefixes(pool: &AddressPool, sites: &[Site<'_>]) -> MembershipResult<()> {
    for site in sites {
        if let Some(prefix) = site.prefixes.iter().find(|p| pool.overlaps(p)) {
            return Err(MembershipError::Conflict(
                "prefix_in_address_pool",
                format!(
                    "prefix {prefix} of `{}` overlaps the VPN's address pool {pool}; tunnel \
                     addresses come from there",
                    site.name
                ),
            ));
        }
    }
    let items: Vec<(&Prefix, &str)> = sites
        .iter()
        .flat_map(|s| s.prefixes.iter().map(move |p| (p, s.name)))
        .collect();
    if let Some(((a, a_site), (b, b_site))) = first_overlap(&items) {
        return Err(MembershipError::Conflict(
            "overlapping_prefixes",
            format!(
                "prefix {a} of `{a_site}` overlaps {b} of `{b_site}`; the sites of one VPN \
                 need distinct LAN prefixes"
            ),
        ));
    }
    Ok(())
}

/// A router that may join a VPN: its name, and whether it is a member of
/// that VPN already.
pub struct Admitted {
    pub name: String,
    pub member_here: bool,
}

/// Locks a router about to join `vpn` and checks it may: it belongs to the
/// VPN's customer, is in no other VPN and is no relay. None when the router
/// does not exist (the caller says how that is refused).
pub async fn admit(
    tx: &mut PgConnection,
    vpn: &db::vpns::VpnRow,
    customer: &db::customers::CustomerRow,
    device_id: Uuid,
) -> MembershipResult<Option<Admitted>> {
    let Some(household) = db::devices::household_for_update(&mut *tx, device_id).await? else {
        return Ok(None);
    };
    let name = household.device_name;
    if household.customer_id != Some(customer.id) {
        let owner = match (household.customer_id, household.customer_name) {
            (Some(id), Some(other)) => format!("household `{other}` ({id})"),
            _ => "no household".to_owned(),
        };
        return Err(MembershipError::Conflict(
            "device_not_of_customer",
            format!(
                "device `{name}` ({device_id}) belongs to {owner}; VPN `{}` joins routers of \
                 `{}` only",
                vpn.name, customer.name
            ),
        ));
    }
    let member_here = match db::vpns::vpn_of_device(&mut *tx, device_id).await? {
        Some(other) if other.id != vpn.id => {
            return Err(in_other_vpn(&name, device_id, &other.name, other.id));
        }
        Some(_) => true,
        None => false,
    };
    if db::vpns::get_relay(&mut *tx, device_id).await?.is_some() {
        return Err(MembershipError::Conflict(
            "device_is_relay",
            format!("device `{name}` ({device_id}) is an ISP relay; relays are not VPN members"),
        ));
    }
    Ok(Some(Admitted { name, member_here }))
}

fn in_other_vpn(name: &str, device_id: Uuid, vpn: &str, vpn_id: Uuid) -> MembershipError {
    MembershipError::Conflict(
        "device_in_vpn",
        format!(
            "device `{name}` ({device_id}) is a member of VPN `{vpn}` ({vpn_id}); a router is \
             in one VPN at a time, remove it there first"
        ),
    )
}

pub fn exhausted(vpn: &str, pool: &AddressPool) -> MembershipError {
    MembershipError::Conflict(
        "address_pool_exhausted",
        format!(
            "VPN `{vpn}`'s address pool {pool} holds {} members and has no free address; \
             remove a member or create the VPN with a larger pool",
            pool.capacity()
        ),
    )
}

/// A unique violation on the member's device: a concurrent writer put the
/// router in another VPN first.
pub fn member_taken(e: sqlx::Error, name: &str, device_id: Uuid) -> MembershipError {
    if db::is_unique_violation_of(&e, db::vpns::MEMBER_DEVICE_KEY) {
        MembershipError::Conflict(
            "device_in_vpn",
            format!(
                "device `{name}` ({device_id}) joined another VPN meanwhile; a router is in \
                 one VPN at a time"
            ),
        )
    } else {
        e.into()
    }
}

/// The routers a change touches: those of the VPN before and after it.
pub fn sorted_union(a: Vec<Uuid>, b: Vec<Uuid>) -> Vec<Uuid> {
    a.into_iter()
        .chain(b)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
