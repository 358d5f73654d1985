//! `/api/v1/vpns` and `/api/v1/vpn-relays`: customers' site-to-site VPNs,
//! their member routers, and the ISP routers that may relay.
//!
//! Every change is one transaction holding the VPN's row lock (and the
//! rows of the routers it admits), so two writers never hand out the same
//! tunnel address or both pass the prefix checks; a refused change writes
//! nothing. After the commit exactly the routers the change can touch are
//! recompiled: the VPN's members and relay before the change and after it.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db;
use crate::handlers::{commit_recompiled, commit_recompiled_soon};
use crate::handlers::{page, Page, PageParams};
use crate::http::audit::AuditTrail;
use crate::http::auth::Operator;
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::state::AppState;
use crate::model::names::DisplayName;
use crate::vpn::addresses::{parse_tunnel_address, AddressPool, LanPrefixes};
use crate::vpn::membership::{
    admit, check_hub, check_prefixes, exhausted, hub_not_member, member_taken, parse_prefixes,
    sorted_union, Admitted, Site,
};
use crate::vpn::Topology;

/// Most members named when creating a VPN.
pub const MAX_MEMBERS_AT_CREATION: usize = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVpn {
    /// The household whose routers the VPN joins.
    pub customer_id: Uuid,
    /// Unique per customer: 1 to 100 printable characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
    )]
    pub name: String,
    pub topology: Topology,
    /// The hub router (a member): required with topology `hub`, refused otherwise.
    pub hub: Option<Uuid>,
    /// IPv4 prefix, /8 to /30, tunnel addresses come from (default `100.64.0.0/16`).
    pub address_pool: Option<String>,
    /// Up to 1000 routers of the customer, given tunnel addresses in this order.
    #[serde(default)]
    pub members: Vec<MemberInput>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberInput {
    pub device_id: Uuid,
    /// The site's LAN prefixes (1 to 256, no host bits, IPv4 or IPv6).
    pub prefixes: Vec<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVpn {
    /// A new topology; leaving `hub` sets the hub to none.
    pub topology: Option<Topology>,
    /// The hub (a member): with topology `hub`, or alone to move the hub of
    /// a VPN whose topology is `hub`.
    pub hub: Option<Uuid>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutMember {
    /// The site's LAN prefixes (1 to 256, no host bits, IPv4 or IPv6).
    pub prefixes: Vec<String>,
}

/// What a router reported of its WireGuard side (read-only).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberFacts {
    /// The key its tunnels use now.
    pub public_key: String,
    /// Where a controller probe reached it (inbound UDP works there); absent
    /// behind NAT or a filter.
    pub reachable_address: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    pub device_id: Uuid,
    pub name: String,
    /// Its address inside the VPN, kept until it leaves.
    pub tunnel_address: String,
    pub prefixes: Vec<String>,
    /// Absent until the router reports them.
    pub facts: Option<MemberFacts>,
    /// How the controller connects it now, from the facts: `mesh`, `hub`,
    /// `spoke` (through its hub), `relay_client` (through the ISP relay),
    /// `waiting` (no facts yet).
    pub role: crate::vpn::Role,
    pub joined_at: DateTime<Utc>,
}

/// The relay the controller gave the VPN (sites that reach no other site).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RelayAssignment {
    pub device_id: Uuid,
    pub name: String,
    /// Its tunnel for this VPN listens on its port plus this.
    pub slot: i32,
    /// The pool's highest usable address, which members never get.
    pub tunnel_address: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VpnView {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    pub topology: Topology,
    pub hub: Option<Uuid>,
    pub address_pool: String,
    /// By tunnel address.
    pub members: Vec<MemberView>,
    pub relay: Option<RelayAssignment>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VpnSummary {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    pub topology: Topology,
    pub hub: Option<Uuid>,
    pub address_pool: String,
    pub member_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RelayView {
    pub device_id: Uuid,
    pub name: String,
    /// How many VPNs it relays now.
    pub vpns: i64,
    pub created_at: DateTime<Utc>,
}

impl From<db::vpns::RelayRow> for RelayView {
    fn from(row: db::vpns::RelayRow) -> Self {
        RelayView {
            device_id: row.device_id,
            name: row.device_name,
            vpns: row.slots,
            created_at: row.created_at,
        }
    }
}

fn topology_of(row: &db::vpns::VpnRow) -> ApiResult<Topology> {
    Topology::parse(&row.topology)
        .ok_or_else(|| anyhow::anyhow!("stored topology `{}`", row.topology).into())
}

fn pool_of(row: &db::vpns::VpnRow) -> ApiResult<AddressPool> {
    AddressPool::parse(&row.address_pool)
        .map_err(|e| anyhow::anyhow!("stored address pool of VPN {}: {e}", row.id).into())
}

async fn view(db: &mut PgConnection, vpn: db::vpns::VpnRow) -> ApiResult<VpnView> {
    let members = db::vpns::members(&mut *db, vpn.id).await?;
    let relay = db::vpns::relay_slot(&mut *db, vpn.id).await?;
    let pool = pool_of(&vpn)?;
    let roles = crate::vpn::inputs::roles(&mut *db, &vpn).await?;
    Ok(VpnView {
        id: vpn.id,
        customer_id: vpn.customer_id,
        topology: topology_of(&vpn)?,
        hub: vpn.hub_device_id,
        address_pool: pool.to_string(),
        members: members
            .into_iter()
            .map(|m| MemberView {
                device_id: m.device_id,
                name: m.device_name,
                tunnel_address: m.tunnel_address,
                prefixes: LanPrefixes::from_stored(&m.prefixes).to_texts(),
                facts: m.public_key.map(|public_key| MemberFacts {
                    public_key,
                    reachable_address: m.reachable_address,
                }),
                role: roles
                    .get(&m.device_id)
                    .copied()
                    .unwrap_or(crate::vpn::Role::Waiting),
                joined_at: m.created_at,
            })
            .collect(),
        relay: relay.map(|r| RelayAssignment {
            device_id: r.relay_device_id,
            name: r.relay_name,
            slot: r.slot,
            tunnel_address: pool.relay_address().to_string(),
        }),
        name: vpn.name,
        created_at: vpn.created_at,
        updated_at: vpn.updated_at,
    })
}

fn no_vpn(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no VPN {id}"))
}

#[utoipa::path(post, path = "/api/v1/vpns", request_body = CreateVpn, tag = "vpns",
    responses((status = 201, body = VpnView), (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
/// Creates a customer's VPN, optionally with its members (all or nothing).
pub async fn create(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateVpn>,
) -> ApiResult<(StatusCode, Json<VpnView>)> {
    let name = DisplayName::parse(&body.name, "VPN").map_err(ApiError::invalid)?;
    let pool = match &body.address_pool {
        Some(text) => AddressPool::parse(text)
            .map_err(|e| ApiError::bad_request("invalid_address_pool", e))?,
        None => AddressPool::default_pool(),
    };
    check_hub(body.topology, body.hub)?;
    if body.members.len() > MAX_MEMBERS_AT_CREATION {
        return Err(ApiError::invalid(format!(
            "at most {MAX_MEMBERS_AT_CREATION} members at creation; add more afterwards"
        )));
    }
    let mut seen = HashSet::new();
    let mut members = Vec::with_capacity(body.members.len());
    for member in &body.members {
        if !seen.insert(member.device_id) {
            return Err(ApiError::bad_request(
                "duplicate_member",
                format!("device {} is named twice in `members`", member.device_id),
            ));
        }
        let prefixes = parse_prefixes(&member.prefixes, &member.device_id.to_string())?;
        members.push((member.device_id, prefixes));
    }
    if let Some(hub) = body.hub.filter(|h| !seen.contains(h)) {
        return Err(hub_not_member(hub, name.as_str()).into());
    }
    if members.len() > pool.capacity() as usize {
        return Err(exhausted(name.as_str(), &pool).into());
    }

    let mut tx = state.reconciler.begin_change().await?;
    let customer = db::customers::lock(&mut *tx, body.customer_id)
        .await?
        .ok_or_else(|| {
            ApiError::unknown(
                "unknown_customer",
                format!("no customer {}", body.customer_id),
            )
        })?;
    // The hub is one of the members (checked above); an unknown one is
    // reported as such rather than as the row's foreign-key violation.
    if let Some(hub) = body.hub {
        db::devices::get(&mut *tx, hub)
            .await?
            .ok_or_else(|| ApiError::unknown("unknown_device", format!("no device {hub}")))?;
    }
    let pool_text = pool.to_string();
    let vpn = db::vpns::insert(
        &mut *tx,
        &db::vpns::NewVpn {
            id: Uuid::new_v4(),
            customer_id: customer.id,
            name: name.as_str(),
            topology: body.topology.as_str(),
            hub_device_id: body.hub,
            address_pool: &pool_text,
        },
    )
    .await
    .map_err(|e| name_taken(e, name.as_str(), &customer.name))?;

    // Routers are locked in id order (as everywhere) so concurrent writers
    // cannot deadlock; addresses follow the request's order.
    let mut by_id: Vec<Uuid> = members.iter().map(|(id, _)| *id).collect();
    by_id.sort();
    let mut names = HashMap::new();
    for device_id in by_id {
        let admitted = admit(&mut tx, &vpn, &customer, device_id)
            .await?
            .ok_or_else(|| ApiError::unknown("unknown_device", format!("no device {device_id}")))?;
        names.insert(device_id, admitted.name);
    }
    let sites: Vec<Site<'_>> = members
        .iter()
        .map(|(id, prefixes)| Site {
            name: &names[id],
            prefixes: prefixes.as_slice(),
        })
        .collect();
    check_prefixes(&pool, &sites)?;
    let mut taken = Vec::new();
    for (device_id, prefixes) in &members {
        let address = pool
            .lowest_free(&taken)
            .ok_or_else(|| exhausted(&vpn.name, &pool))?;
        db::vpns::insert_member(
            &mut *tx,
            vpn.id,
            *device_id,
            address,
            &prefixes.to_cidr_texts(),
        )
        .await
        .map_err(|e| member_taken(e, &names[device_id], *device_id))?;
        taken.push(address);
    }
    let affected = db::vpns::affected_devices(&mut *tx, vpn.id).await?;
    let view = view(&mut tx, vpn).await?;
    let created = Some(view.id.to_string());
    commit_recompiled(
        &state,
        &audit,
        tx,
        Some(&affected),
        StatusCode::CREATED,
        created,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

fn name_taken(e: sqlx::Error, name: &str, customer: &str) -> ApiError {
    if db::is_unique_violation_of(&e, db::vpns::NAME_KEY) {
        ApiError::conflict(
            "name_taken",
            format!("customer `{customer}` has a VPN named `{name}`"),
        )
    } else {
        e.into()
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListVpns {
    /// Only this customer's VPNs.
    pub customer_id: Option<Uuid>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/vpns", params(ListVpns), tag = "vpns",
    responses((status = 200, body = Page<VpnSummary>), (status = 400, body = crate::http::error::ErrorBody)))]
/// VPNs by id, of one customer or all.
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListVpns>,
) -> ApiResult<Json<Page<VpnSummary>>> {
    let paging = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = paging.limit()?;
    let after = paging.after_parsed::<Uuid>()?;
    let rows = db::vpns::list(&state.pool, query.customer_id, after, limit).await?;
    let items = rows
        .into_iter()
        .map(|r| {
            Ok(VpnSummary {
                id: r.vpn.id,
                customer_id: r.vpn.customer_id,
                topology: topology_of(&r.vpn)?,
                hub: r.vpn.hub_device_id,
                address_pool: r.vpn.address_pool,
                member_count: r.member_count,
                name: r.vpn.name,
                created_at: r.vpn.created_at,
                updated_at: r.vpn.updated_at,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |v| v.id.to_string(), |v| v)))
}

#[utoipa::path(get, path = "/api/v1/vpns/{id}", tag = "vpns", params(("id" = Uuid, Path, description = "The VPN's id")),
    responses((status = 200, body = VpnView), (status = 404, body = crate::http::error::ErrorBody)))]
/// A VPN with its members (their tunnel addresses, prefixes and reported
/// facts) and its relay.
pub async fn get(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<VpnView>> {
    let mut conn = state.pool.acquire().await?;
    let vpn = db::vpns::get(&mut *conn, id)
        .await?
        .ok_or_else(|| no_vpn(id))?;
    Ok(Json(view(&mut conn, vpn).await?))
}

#[utoipa::path(patch, path = "/api/v1/vpns/{id}", request_body = UpdateVpn, tag = "vpns", params(("id" = Uuid, Path, description = "The VPN's id")),
    responses((status = 200, body = VpnView), (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody)))]
/// Changes a VPN's topology or hub.
pub async fn update(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateVpn>,
) -> ApiResult<Json<VpnView>> {
    let mut tx = state.reconciler.begin_change().await?;
    let vpn = db::vpns::lock(&mut *tx, id)
        .await?
        .ok_or_else(|| no_vpn(id))?;
    let current = topology_of(&vpn)?;
    let topology = body.topology.unwrap_or(current);
    let hub = match (topology, body.hub) {
        // Staying a hub VPN without naming one keeps the hub it has.
        (Topology::Hub, None) if current == Topology::Hub => vpn.hub_device_id,
        (_, hub) => hub,
    };
    check_hub(topology, hub)?;
    if (topology, hub) == (current, vpn.hub_device_id) {
        let view = view(&mut tx, vpn).await?;
        audit.commit(tx, StatusCode::OK, None).await?;
        return Ok(Json(view));
    }
    if let Some(hub) = hub {
        let in_vpn = db::vpns::vpn_of_device(&mut *tx, hub).await?;
        if in_vpn.is_none_or(|v| v.id != id) {
            return Err(hub_not_member(hub, &vpn.name).into());
        }
    }
    let before = db::vpns::affected_devices(&mut *tx, id).await?;
    let vpn = db::vpns::update_topology(&mut *tx, id, topology.as_str(), hub).await?;
    let after = db::vpns::affected_devices(&mut *tx, id).await?;
    let view = view(&mut tx, vpn).await?;
    let affected = sorted_union(before, after);
    commit_recompiled(&state, &audit, tx, Some(&affected), StatusCode::OK, None).await?;
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/api/v1/vpns/{id}", tag = "vpns", params(("id" = Uuid, Path, description = "The VPN's id")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody)))]
/// Deletes a VPN: its members' tunnels go.
pub async fn delete(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.reconciler.begin_change().await?;
    db::vpns::lock(&mut *tx, id)
        .await?
        .ok_or_else(|| no_vpn(id))?;
    let before = db::vpns::affected_devices(&mut *tx, id).await?;
    db::vpns::delete(&mut *tx, id).await?;
    commit_recompiled(
        &state,
        &audit,
        tx,
        Some(&before),
        StatusCode::NO_CONTENT,
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/vpns/{id}/members/{device_id}", request_body = PutMember,
    tag = "vpns", params(("id" = Uuid, Path, description = "The VPN's id"), ("device_id" = Uuid, Path, description = "The router's id")),
    responses((status = 201, description = "added", body = VpnView),
        (status = 200, description = "prefixes replaced", body = VpnView),
        (status = 400, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
/// Adds a router of the VPN's customer (it gets the lowest free tunnel
/// address) or replaces a member's prefixes (its address stays).
pub async fn put_member(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath((id, device_id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<PutMember>,
) -> ApiResult<(StatusCode, Json<VpnView>)> {
    let prefixes = parse_prefixes(&body.prefixes, &device_id.to_string())?;
    let mut tx = state.reconciler.begin_change().await?;
    let vpn = db::vpns::lock(&mut *tx, id)
        .await?
        .ok_or_else(|| no_vpn(id))?;
    let pool = pool_of(&vpn)?;
    let customer = db::customers::get(&mut *tx, vpn.customer_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("VPN {id} without its customer"))?;
    let Admitted {
        name,
        member_here: member,
    } = admit(&mut tx, &vpn, &customer, device_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device {device_id}")))?;

    let others = db::vpns::members(&mut *tx, id).await?;
    let other_prefixes: Vec<(String, LanPrefixes)> = others
        .iter()
        .filter(|m| m.device_id != device_id)
        .map(|m| (m.device_name.clone(), LanPrefixes::from_stored(&m.prefixes)))
        .collect();
    let sites: Vec<Site<'_>> = std::iter::once(Site {
        name: &name,
        prefixes: prefixes.as_slice(),
    })
    .chain(other_prefixes.iter().map(|(n, p)| Site {
        name: n,
        prefixes: p.as_slice(),
    }))
    .collect();
    check_prefixes(&pool, &sites)?;

    let before = db::vpns::affected_devices(&mut *tx, id).await?;
    let status = if member {
        let unchanged = others
            .iter()
            .any(|m| m.device_id == device_id && LanPrefixes::from_stored(&m.prefixes) == prefixes);
        if unchanged {
            let view = view(&mut tx, vpn).await?;
            audit.commit(tx, StatusCode::OK, None).await?;
            return Ok((StatusCode::OK, Json(view)));
        }
        db::vpns::update_member_prefixes(&mut *tx, id, device_id, &prefixes.to_cidr_texts())
            .await?;
        StatusCode::OK
    } else {
        let mut taken: Vec<Ipv4Addr> = others
            .iter()
            .map(|m| {
                parse_tunnel_address(&m.tunnel_address)
                    .ok_or_else(|| anyhow::anyhow!("stored tunnel address `{}`", m.tunnel_address))
            })
            .collect::<Result<_, _>>()?;
        taken.sort();
        let address = pool
            .lowest_free(&taken)
            .ok_or_else(|| exhausted(&vpn.name, &pool))?;
        db::vpns::insert_member(&mut *tx, id, device_id, address, &prefixes.to_cidr_texts())
            .await
            .map_err(|e| member_taken(e, &name, device_id))?;
        StatusCode::CREATED
    };
    db::vpns::touch(&mut *tx, id).await?;
    let after = db::vpns::affected_devices(&mut *tx, id).await?;
    let vpn = db::vpns::get(&mut *tx, id)
        .await?
        .ok_or_else(|| no_vpn(id))?;
    let view = view(&mut tx, vpn).await?;
    let affected = sorted_union(before, after);
    if status == StatusCode::CREATED {
        // A joining router gets its tunnels at once; its peers add it
        // within a moment, once per burst of joins. (A leaving router and
        // changed prefixes are in force everywhere before the answer.)
        commit_recompiled_soon(&state, &audit, tx, &[device_id], &affected, status).await?;
    } else {
        commit_recompiled(&state, &audit, tx, Some(&affected), status, None).await?;
    }
    Ok((status, Json(view)))
}

#[utoipa::path(delete, path = "/api/v1/vpns/{id}/members/{device_id}", tag = "vpns", params(("id" = Uuid, Path, description = "The VPN's id"), ("device_id" = Uuid, Path, description = "The router's id")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
/// Removes a member (not the hub): its tunnels go and its address is free
/// for the next router that joins.
pub async fn delete_member(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath((id, device_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    let mut tx = state.reconciler.begin_change().await?;
    let vpn = db::vpns::lock(&mut *tx, id)
        .await?
        .ok_or_else(|| no_vpn(id))?;
    if vpn.hub_device_id == Some(device_id) {
        return Err(ApiError::conflict(
            "member_is_hub",
            format!(
                "device {device_id} is the hub of VPN `{}`; choose another hub or topology first",
                vpn.name
            ),
        ));
    }
    let before = db::vpns::affected_devices(&mut *tx, id).await?;
    if !db::vpns::delete_member(&mut *tx, id, device_id).await? {
        return Err(ApiError::NotFound(format!(
            "device {device_id} is not a member of VPN `{}`",
            vpn.name
        )));
    }
    db::vpns::touch(&mut *tx, id).await?;
    let after = db::vpns::affected_devices(&mut *tx, id).await?;
    let affected = sorted_union(before, after);
    commit_recompiled(
        &state,
        &audit,
        tx,
        Some(&affected),
        StatusCode::NO_CONTENT,
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/vpn-relays", params(PageParams), tag = "vpns",
    responses((status = 200, body = Page<RelayView>), (status = 400, body = crate::http::error::ErrorBody)))]
/// The ISP routers the controller may use as VPN relays, by device id.
pub async fn list_relays(
    _operator: Operator,
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<RelayView>>> {
    let limit = paging.limit()?;
    let after = paging.after_parsed::<Uuid>()?;
    let rows = db::vpns::list_relays(&state.pool, after, limit).await?;
    Ok(Json(page(
        rows,
        limit,
        |r| r.device_id.to_string(),
        RelayView::from,
    )))
}

#[utoipa::path(put, path = "/api/v1/vpn-relays/{device_id}", tag = "vpns", params(("device_id" = Uuid, Path, description = "The router's id")),
    responses((status = 201, description = "made a relay", body = RelayView),
        (status = 200, description = "already a relay", body = RelayView),
        (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
/// Lets the controller use an ISP router (one of no household) as a relay
/// for VPN sites that reach no other site.
pub async fn put_relay(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(device_id): ApiPath<Uuid>,
) -> ApiResult<(StatusCode, Json<RelayView>)> {
    let mut tx = state.reconciler.begin_change().await?;
    let household = db::devices::household_for_update(&mut *tx, device_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device {device_id}")))?;
    if let (Some(customer_id), customer) = (household.customer_id, household.customer_name) {
        return Err(ApiError::conflict(
            "device_has_customer",
            format!(
                "device `{}` ({device_id}) belongs to household `{}` ({customer_id}); a relay \
                 carries other customers' tunnels, so it is one of the ISP's routers",
                household.device_name,
                customer.unwrap_or_default()
            ),
        ));
    }
    let created = db::vpns::insert_relay(&mut *tx, device_id).await?;
    let relay = db::vpns::get_relay(&mut *tx, device_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("relay {device_id} vanished"))?;
    let (status, recompile): (_, &[Uuid]) = if created {
        (StatusCode::CREATED, &[device_id])
    } else {
        (StatusCode::OK, &[])
    };
    commit_recompiled(&state, &audit, tx, Some(recompile), status, None).await?;
    Ok((status, Json(relay.into())))
}

#[utoipa::path(delete, path = "/api/v1/vpn-relays/{device_id}", tag = "vpns", params(("device_id" = Uuid, Path, description = "The router's id")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody)))]
/// Stops using a router as a relay: the VPNs it relayed lose it (their
/// members are recompiled and may be given another relay).
pub async fn delete_relay(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(device_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.reconciler.begin_change().await?;
    let mut affected = vec![device_id];
    for vpn_id in db::vpns::vpns_relayed_by(&mut *tx, device_id).await? {
        db::vpns::lock(&mut *tx, vpn_id).await?;
        affected.extend(db::vpns::affected_devices(&mut *tx, vpn_id).await?);
    }
    if !db::vpns::delete_relay(&mut *tx, device_id).await? {
        return Err(ApiError::NotFound(format!(
            "device {device_id} is not a relay"
        )));
    }
    affected.sort();
    affected.dedup();
    commit_recompiled(
        &state,
        &audit,
        tx,
        Some(&affected),
        StatusCode::NO_CONTENT,
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
