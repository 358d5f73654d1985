//! Authentication extractors for both listeners.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::db;
use crate::error::ApiError;
use crate::secrets::{bearer, hash_token};
use crate::state::AppState;

/// An authenticated operator (bearer token from `operator_tokens`).
#[derive(Debug, Clone)]
pub struct Operator {
    pub id: Uuid,
    pub name: String,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts.headers.get(AUTHORIZATION)).ok_or(ApiError::Unauthorized)?;
        let (id, name) = db::operators::find_active(&state.pool, &hash_token(token))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(Operator { id, name })
    }
}

/// The device making a device-API call, from its token. No database query:
/// the token index lives in the config cache.
#[derive(Debug, Clone, Copy)]
pub struct Device(pub Uuid);

impl FromRequestParts<AppState> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts.headers.get(AUTHORIZATION)).ok_or(ApiError::Unauthorized)?;
        state
            .cache
            .authenticate(&hash_token(token))
            .map(Device)
            .ok_or(ApiError::Unauthorized)
    }
}
