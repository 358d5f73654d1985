//! `/api/v1/agent-releases`: agent builds the routers can be asked to run.
//! A release is created from its manifest, which a release key signed
//! offline (`isdfctl releases sign`), and completed by uploading the binary
//! the manifest names. Both are checked before anything is written: a
//! manifest not signed by a release key of the newest root (a config key's
//! signature among them) or naming an unsafe version or target is refused,
//! and so is a binary of another size or digest.
//!
//! `/device/v1/releases/{sha256}`: routers download an uploaded binary over
//! mutual TLS, in ranges if they like (a cut download resumes).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use isdf_api::envelope::Envelope;
use isdf_api::release::{open_release, ReleaseError, ReleaseManifest};

use crate::db;
use crate::http::audit::AuditTrail;
use crate::http::auth::{Device, Operator};
use crate::http::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::http::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRelease {
    /// The release manifest envelope (payload type
    /// `application/vnd.isdf.agent-release+json`), signed by a release key.
    #[schema(value_type = Object)]
    pub manifest: Envelope,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReleaseView {
    pub id: Uuid,
    pub version: String,
    pub target: String,
    pub sha256: String,
    pub size: i64,
    /// Whether the binary is uploaded (routers can be given the release).
    pub uploaded: bool,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub uploaded_at: Option<DateTime<Utc>>,
    /// Where routers download it (device API).
    pub path: String,
}

impl From<db::releases::ReleaseRow> for ReleaseView {
    fn from(row: db::releases::ReleaseRow) -> Self {
        ReleaseView {
            path: isdf_api::release::release_path(&row.sha256),
            id: row.id,
            version: row.version,
            target: row.target,
            sha256: row.sha256,
            size: row.size,
            uploaded: row.uploaded_at.is_some(),
            created_at: row.created_at,
            created_by: row.created_by,
            uploaded_at: row.uploaded_at,
        }
    }
}

fn refused(e: ReleaseError) -> ApiError {
    ApiError::bad_request(e.code(), e.to_string())
}

/// Creates a release from its signed manifest; the binary follows
/// (`PUT /api/v1/agent-releases/{id}/binary`).
#[utoipa::path(post, path = "/api/v1/agent-releases", request_body = CreateRelease, tag = "releases",
    responses((status = 201, body = ReleaseView), (status = 400, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn create(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateRelease>,
) -> ApiResult<(StatusCode, Json<ReleaseView>)> {
    let manifest = opened(&state, &body.manifest)?;
    let mut tx = state.pool.begin().await?;
    let new = db::releases::NewRelease {
        id: Uuid::new_v4(),
        manifest: &manifest,
        envelope: &body.manifest,
        created_by: audit.actor(),
    };
    let row = db::releases::insert(&mut *tx, &new)
        .await
        .map_err(|e| taken(e, &manifest))?;
    audit
        .commit(tx, StatusCode::CREATED, Some(row.id.to_string()))
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// The manifest, verified against the newest root's release keys.
fn opened(state: &AppState, envelope: &Envelope) -> ApiResult<ReleaseManifest> {
    let keys = &state.agent_bootstrap.release_keys;
    if keys.is_empty() {
        return Err(ApiError::conflict(
            "no_release_keys",
            "the newest root names no release key: sign a root with \
             `isdf-controller root rotate --release-key ...` first",
        ));
    }
    open_release(&envelope.to_json(), keys).map_err(refused)
}

fn taken(e: sqlx::Error, manifest: &ReleaseManifest) -> ApiError {
    if db::is_unique_violation_of(&e, db::releases::VERSION_TARGET_KEY) {
        ApiError::conflict(
            "release_exists",
            format!(
                "a release {} for {} exists",
                manifest.version, manifest.target
            ),
        )
    } else if db::is_unique_violation_of(&e, db::releases::SHA256_KEY) {
        ApiError::conflict(
            "release_exists",
            format!("a release with SHA-256 {} exists", manifest.sha256),
        )
    } else {
        e.into()
    }
}

/// Uploads the binary a release's manifest names: refused unless its size
/// and SHA-256 are the manifest's, and stored once.
#[utoipa::path(put, path = "/api/v1/agent-releases/{id}/binary", tag = "releases",
    params(("id" = Uuid, Path, description = "The release's id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = ReleaseView), (status = 400, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn upload(
    audit: AuditTrail,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    binary: Bytes,
) -> ApiResult<Json<ReleaseView>> {
    let row = db::releases::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no release {id}")))?;
    if row.uploaded_at.is_some() {
        return Err(already_uploaded(id));
    }
    let manifest = open_release(
        &row.manifest.0.to_json(),
        &state.agent_bootstrap.release_keys,
    )
    .map_err(refused)?;
    manifest.check_binary(&binary).map_err(refused)?;
    let mut tx = state.reconciler.begin_change().await?;
    if !db::releases::store_content(&mut *tx, id, &binary).await? {
        return Err(already_uploaded(id));
    }
    let row = db::releases::get(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no release {id}")))?;
    // Routers that want this version and were waiting for their target's
    // build get it now.
    let waiting = db::configs::missing_release(&mut *tx, &row.version).await?;
    super::commit_recompiled_now_or_soon(&state, &audit, tx, &waiting, StatusCode::OK, None)
        .await?;
    Ok(Json(row.into()))
}

fn already_uploaded(id: Uuid) -> ApiError {
    ApiError::conflict(
        "release_uploaded",
        format!("release {id} has its binary; a release never changes"),
    )
}

#[utoipa::path(get, path = "/api/v1/agent-releases", tag = "releases",
    responses((status = 200, body = Vec<ReleaseView>)))]
pub async fn list(
    _operator: Operator,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<ReleaseView>>> {
    let rows = db::releases::list(&state.pool).await?;
    Ok(Json(rows.into_iter().map(ReleaseView::from).collect()))
}

#[utoipa::path(get, path = "/api/v1/agent-releases/{id}", tag = "releases",
    params(("id" = Uuid, Path, description = "The release's id")),
    responses((status = 200, body = ReleaseView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    _operator: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<ReleaseView>> {
    let row = db::releases::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no release {id}")))?;
    Ok(Json(row.into()))
}

/// Bytes read from the database at a time while answering a download:
/// what one answer holds in memory, whatever its size.
pub const CHUNK_BYTES: i64 = 256 * 1024;

/// A release binary for an enrolled router: the whole of it (200) or the
/// one range it asks for (206, `Range: bytes=FROM-[TO]` or `bytes=-N`),
/// streamed from the database a chunk at a time.
#[utoipa::path(get, path = "/device/v1/releases/{sha256}", tag = "device",
    params(("sha256" = String, Path, description = "The release's SHA-256")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = crate::http::error::ErrorBody), (status = 416, body = crate::http::error::ErrorBody)))]
pub async fn download(
    _device: Device,
    State(state): State<AppState>,
    ApiPath(sha256): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let size = db::releases::uploaded_size(&state.pool, &sha256)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no release with SHA-256 {sha256}")))?;
    let asked = headers
        .get(header::RANGE)
        .map(|v| parse_range(v.to_str().unwrap_or(""), size))
        .transpose()
        .map_err(|message| ApiError::RangeNotSatisfiable { size, message })?;
    let (from, to) = asked.unwrap_or((0, size - 1));
    let mut response = Response::builder()
        .status(if asked.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, to - from + 1)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{sha256}\""));
    if asked.is_some() {
        response = response.header(header::CONTENT_RANGE, format!("bytes {from}-{to}/{size}"));
    }
    let pool = state.pool.clone();
    let chunks = futures_util::stream::try_unfold(from, move |at| {
        let (pool, sha256) = (pool.clone(), sha256.clone());
        async move {
            if at > to {
                return Ok::<_, std::io::Error>(None);
            }
            let length = CHUNK_BYTES.min(to - at + 1);
            let (bytes, _) = db::releases::read_range(&pool, &sha256, at, length)
                .await
                .map_err(|e| {
                    // The answer is cut; the router resumes from what it has.
                    tracing::warn!(%sha256, at, error = %e, "reading a release for a download");
                    std::io::Error::other(e)
                })?
                .ok_or_else(|| std::io::Error::other("the release went away"))?;
            if bytes.is_empty() {
                return Err(std::io::Error::other(
                    "the release is shorter than its size",
                ));
            }
            let next = at + bytes.len() as i64;
            Ok(Some((Bytes::from(bytes), next)))
        }
    });
    Ok(response
        .body(Body::from_stream(chunks))
        .map_err(|e| anyhow::anyhow!("building a release answer: {e}"))?
        .into_response())
}

/// One `bytes=FROM-[TO]` range of a body of `size` bytes, as inclusive
/// offsets within it; a suffix range (`bytes=-N`) too. Several ranges, or
/// one beyond the end, are refused (416).
pub fn parse_range(value: &str, size: i64) -> Result<(i64, i64), String> {
    let spec = value
        .strip_prefix("bytes=")
        .ok_or_else(|| format!("range {value:?}: only bytes ranges"))?;
    if spec.contains(',') {
        return Err("one range at a time".into());
    }
    let (first, last) = spec
        .split_once('-')
        .ok_or_else(|| format!("range {value:?} has no '-'"))?;
    let number = |text: &str| {
        text.trim()
            .parse::<i64>()
            .map_err(|_| format!("range {value:?}: {text:?} is not a byte offset"))
    };
    let (from, to) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => {
            let suffix = number(last)?.min(size);
            (size - suffix, size - 1)
        }
        (false, true) => (number(first)?, size - 1),
        (false, false) => (number(first)?, number(last)?.min(size - 1)),
        (true, true) => return Err(format!("range {value:?} names no byte")),
    };
    if from < 0 || from > to || from >= size {
        return Err(format!("range {value:?} is outside the {size} bytes"));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_are_one_within_the_body() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok((0, 99)));
        assert_eq!(parse_range("bytes=500-", 1000), Ok((500, 999)));
        assert_eq!(parse_range("bytes=900-5000", 1000), Ok((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Ok((900, 999)));
        assert_eq!(parse_range("bytes=-5000", 1000), Ok((0, 999)));
        for refused in [
            "bytes=1000-",
            "bytes=5-4",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=-0",
        ] {
            assert!(parse_range(refused, 1000).is_err(), "{refused}");
        }
    }
}
