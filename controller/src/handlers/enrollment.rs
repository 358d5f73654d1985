//! Enrollment: operators create single-use enrollment tokens; a router trades
//! one, with a CSR for a key it made itself, for a client certificate naming
//! the device id the controller chose, and every earlier certificate of the
//! device is revoked. Renewal trades the current certificate (mutual TLS)
//! for a new one, which replaces it once used.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use isdf_api::enrollment::{DeviceCertificate, EnrollRequest, RenewRequest};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db;
use crate::http::audit::AuditTrail;
use crate::http::auth::{Device, Operator, PresentedCertificate};
use crate::http::error::{ApiError, ApiJson, ApiResult};
use crate::http::proxy_protocol::ClientAddr;
use crate::http::state::AppState;
use crate::model::{parse_name, Labels};
use crate::reconcile::{Compiled, Resign};
use crate::trust::device_certificates::{self, Issue, Recorded};
use crate::trust::pki::IssuedCertificate;
use crate::trust::tokens::{hash_token, new_token};

pub const ENROLLMENT_TOKEN_PREFIX: &str = "isdf_enr_";
/// Default and longest lifetime of an enrollment token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
pub const MAX_TOKENS_PER_CALL: u32 = 1000;

/// Creates one enrollment token (shared by device registration and batches)
/// in the caller's transaction.
pub async fn create_token(
    tx: &mut sqlx::PgConnection,
    device: Option<Uuid>,
    labels: &BTreeMap<String, String>,
    name_prefix: &str,
    ttl: Duration,
    created_by: &str,
) -> anyhow::Result<(String, DateTime<Utc>)> {
    let token = new_token(ENROLLMENT_TOKEN_PREFIX);
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl)?;
    db::enrollment::insert(
        tx,
        Uuid::new_v4(),
        &hash_token(&token),
        device,
        labels,
        name_prefix,
        expires_at,
        created_by,
    )
    .await?;
    Ok((token, expires_at))
}

/// An enrollment token bound to an existing device.
pub async fn create_device_token(
    tx: &mut sqlx::PgConnection,
    device: Uuid,
    ttl: Duration,
    created_by: &str,
) -> anyhow::Result<(String, DateTime<Utc>)> {
    create_token(
        tx,
        Some(device),
        &BTreeMap::new(),
        "router",
        ttl,
        created_by,
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentTokens {
    /// How many tokens (1 to 1000), e.g. one per router of a shipment.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000)]
    pub count: u32,
    /// Seconds until the tokens expire (60 s to 90 days; default 7 days).
    #[schema(minimum = 60, maximum = 7_776_000)]
    pub expires_in_secs: Option<u64>,
    /// Labels of the devices these tokens create.
    #[serde(default)]
    pub labels: Labels,
    /// Name prefix of the devices these tokens create: `<prefix>-<12 hex
    /// digits of the id>`, or `<prefix><hex>` when the prefix already ends
    /// in `-`, `.` or `_` (`home-` names them `home-<hex>`). Default
    /// `router`; at most 51 characters, so the name fits in 64.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,51}$")]
    pub name_prefix: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnrollmentTokensCreated {
    /// The tokens; shown once, only their hashes are stored.
    pub tokens: Vec<String>,
    pub expires_at: DateTime<Utc>,
    /// A ready agent config file (TOML), the same for every router of the
    /// batch: each gets its own token beside it.
    pub agent_config: String,
    /// The controller CA the agents must pin (PEM).
    pub ca_pem: String,
}

/// Hex digits of the device id in a name made from a prefix.
const NAME_ID_DIGITS: usize = 12;
/// Longest name prefix: with its separator and the id's digits, a device
/// name stays within the 64 characters names have.
pub const MAX_NAME_PREFIX: usize = 64 - 1 - NAME_ID_DIGITS;

/// The name of a device a batch token creates: the prefix, a `-` unless the
/// prefix ends in a separator of its own (`-`, `.`, `_`), and the first
/// digits of the device id.
pub fn device_name(prefix: &str, device: Uuid) -> String {
    let digits = &device.simple().to_string()[..NAME_ID_DIGITS];
    if prefix.ends_with(['-', '.', '_']) {
        format!("{prefix}{digits}")
    } else {
        format!("{prefix}-{digits}")
    }
}

pub fn token_ttl(expires_in_secs: Option<u64>) -> ApiResult<Duration> {
    let ttl = expires_in_secs.map_or(DEFAULT_TOKEN_TTL, Duration::from_secs);
    if ttl < Duration::from_secs(60) || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::invalid("expires_in_secs must be 60 s to 90 days"));
    }
    Ok(ttl)
}

#[utoipa::path(post, path = "/api/v1/enrollment-tokens", request_body = CreateEnrollmentTokens, tag = "enrollment",
    responses((status = 201, body = EnrollmentTokensCreated), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn create_tokens(
    operator: Operator,
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateEnrollmentTokens>,
) -> ApiResult<(StatusCode, Json<EnrollmentTokensCreated>)> {
    if !(1..=MAX_TOKENS_PER_CALL).contains(&body.count) {
        return Err(ApiError::invalid(format!(
            "count must be 1 to {MAX_TOKENS_PER_CALL}"
        )));
    }
    let ttl = token_ttl(body.expires_in_secs)?;
    let prefix = parse_name(
        body.name_prefix.as_deref().unwrap_or("router"),
        "name prefix",
    )
    .map_err(ApiError::invalid)?;
    if prefix.len() > MAX_NAME_PREFIX {
        return Err(ApiError::invalid(format!(
            "name_prefix is at most {MAX_NAME_PREFIX} characters (the device name adds \
             {} and must fit in 64)",
            NAME_ID_DIGITS + 1
        )));
    }
    // All of the batch or none of it.
    let mut tx = state.pool.begin().await?;
    let mut tokens = Vec::new();
    let mut expires_at = Utc::now();
    for _ in 0..body.count {
        let (token, expiry) = create_token(
            &mut tx,
            None,
            body.labels.as_map(),
            &prefix,
            ttl,
            &operator.name,
        )
        .await?;
        tokens.push(token);
        expires_at = expiry;
    }
    audit.commit(tx, StatusCode::CREATED, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentTokensCreated {
            tokens,
            expires_at,
            agent_config: state.agent_bootstrap.agent_toml(),
            ca_pem: state.agent_bootstrap.ca_pem.clone(),
        }),
    ))
}

/// Issues a certificate for `device` from the router's CSR; returns the
/// answer and what the caller records in its own transaction.
fn issue(
    state: &AppState,
    csr_pem: &str,
    device: Uuid,
) -> ApiResult<(DeviceCertificate, IssuedCertificate)> {
    let issued = state
        .pki
        .issue_device_certificate(csr_pem, device, state.device_cert_lifetime)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_csr",
                format!("the certificate signing request is not usable: {e}"),
            )
        })?;
    let certificate = DeviceCertificate {
        device_id: device.to_string(),
        certificate_pem: issued.pem.clone(),
        ca_pem: state.agent_bootstrap.ca_pem.clone(),
        signing_public_keys: vec![state.agent_bootstrap.signing_public_key_hex.clone()],
        device_api_url: state.agent_bootstrap.device_api_url.clone(),
        roots: state.agent_bootstrap.roots.clone(),
        not_before: issued.not_before,
        not_after: issued.not_after,
    };
    Ok((certificate, issued))
}

/// Records `issued` in `tx` (the device's earlier certificates retired as
/// [`device_certificates::record_issue`] says) and as the device's current
/// one; how many earlier certificates were revoked.
async fn record(
    tx: &mut sqlx::PgConnection,
    device: Uuid,
    issued: &IssuedCertificate,
    how: Issue,
) -> ApiResult<u64> {
    let revoked = match device_certificates::record_issue(tx, device, issued, how).await? {
        Recorded::Done { revoked } => revoked,
        Recorded::NoDevice => return Err(denied("device_unknown", "this device was deleted")),
        Recorded::RenewerRevoked => return Err(denied(
            "certificate_superseded",
            "this certificate was replaced; only enrolling again with a new token restores access",
        )),
    };
    let not_after = DateTime::from_timestamp(issued.not_after, 0).unwrap_or_default();
    db::enrollment::record_certificate(&mut *tx, device, &issued.serial, not_after).await?;
    Ok(revoked)
}

fn denied(code: &'static str, message: &str) -> ApiError {
    ApiError::Denied {
        code,
        message: message.to_owned(),
    }
}

#[utoipa::path(post, path = "/enroll/v1", tag = "enrollment", security(()),
    request_body = isdf_api::enrollment::EnrollRequest,
    responses((status = 200, body = isdf_api::enrollment::DeviceCertificate),
        (status = 400, body = crate::http::error::ErrorBody, description = "A CSR that cannot be used, or a malformed body")))]
/// `POST /enroll/v1` on the enrollment listener.
pub async fn enroll(
    State(state): State<AppState>,
    ClientAddr(peer): ClientAddr,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> ApiResult<Json<DeviceCertificate>> {
    let token_hash = hash_token(&request.token);
    // Per source address and per token: guessing and hammering both stop here.
    state.enrollment_gate.admit(peer.ip(), token_hash)?;
    // The recompile lock first, as every change that writes device rows:
    // a change holding routers' rows (a VPN admitting them) while it waits
    // for the lock, and an enrollment holding its router's row while it
    // waits for it, would deadlock.
    let mut tx = state.reconciler.begin_change().await?;
    let row = db::enrollment::lock_by_hash(&mut tx, &token_hash)
        .await?
        .ok_or_else(|| denied("token_unknown", "unknown enrollment token"))?;
    if row.used_at.is_some() {
        return Err(denied(
            "token_used",
            "this enrollment token was already used",
        ));
    }
    if row.expires_at <= Utc::now() {
        return Err(denied("token_expired", "this enrollment token has expired"));
    }
    let (device, created) = match row.device_id {
        Some(device) => (device, false),
        None => {
            let device = Uuid::new_v4();
            let name = device_name(&row.name_prefix, device);
            db::devices::insert(&mut *tx, device, &name, &row.labels.0).await?;
            (device, true)
        }
    };
    // A CSR we cannot use fails here and leaves the token unused.
    let (certificate, issued) = issue(&state, &request.csr_pem, device)?;
    db::enrollment::mark_used(&mut tx, row.id, device).await?;
    // Every earlier certificate of the device is revoked with it: a
    // replaced router is refused from its next request.
    let revoked = record(&mut tx, device, &issued, Issue::Enrollment).await?;
    // A new device, its first config and the audit entry are stored in the
    // token's transaction: a crash leaves either all of them or none (and
    // the token unused).
    let compiled = if created {
        state
            .reconciler
            .recompile_in(&mut tx, Some(&[device]), Resign::IfChanged)
            .await?
    } else {
        Compiled::default()
    };
    let entry = db::audit::NewAuditEntry {
        dry_run: false,
        actor_id: None,
        actor: "enrollment",
        action: "device.enroll",
        target: Some(&certificate.device_id),
        status: 200,
        summary: serde_json::json!({"token_id": row.id, "created_device": created,
            "peer": peer.ip().to_string(), "revoked_certificates": revoked}),
    };
    db::audit::append(&mut *tx, &entry).await?;
    tx.commit().await?;
    if created {
        state.cache.add_device(device);
    }
    device_certificates::refresh(&state.pool, &state.cache, device).await?;
    state.reconciler.publish(compiled);
    tracing::info!(device = %device, created, revoked, "device enrolled");
    Ok(Json(certificate))
}

#[utoipa::path(post, path = "/device/v1/renew", tag = "device",
    request_body = isdf_api::enrollment::RenewRequest,
    responses((status = 200, body = isdf_api::enrollment::DeviceCertificate, description = "The new device certificate"),
        (status = 400, body = crate::http::error::ErrorBody, description = "A CSR that cannot be used, or a malformed body")))]
/// `POST /device/v1/renew` on the device listener (mutual TLS). The
/// certificate that renews stays usable until the new one is first used.
pub async fn renew(
    Device(device): Device,
    PresentedCertificate(by): PresentedCertificate,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RenewRequest>,
) -> ApiResult<Json<DeviceCertificate>> {
    let (certificate, issued) = issue(&state, &request.csr_pem, device)?;
    let mut tx = state.reconciler.begin_change().await?;
    let revoked = record(&mut tx, device, &issued, Issue::Renewal { by }).await?;
    tx.commit().await?;
    device_certificates::refresh(&state.pool, &state.cache, device).await?;
    tracing::info!(device = %device, revoked, "device certificate renewed");
    Ok(Json(certificate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ending_in_a_separator_gets_no_second_one() {
        let id = Uuid::parse_str("0123456789ab4def8123456789abcdef").unwrap();
        assert_eq!(device_name("router", id), "router-0123456789ab");
        assert_eq!(device_name("home-", id), "home-0123456789ab");
        assert_eq!(device_name("lab.", id), "lab.0123456789ab");
        assert_eq!(device_name("cpe_", id), "cpe_0123456789ab");
        let longest = "p".repeat(MAX_NAME_PREFIX);
        let name = device_name(&longest, id);
        assert_eq!(name.len(), 64);
        assert!(crate::model::parse_name(&name, "device").is_ok());
    }
}
