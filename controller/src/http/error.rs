//! Errors at the HTTP edge.
//!
//! Tiers: `anyhow` in `main`, background tasks and start-up; `sqlx::Error` in
//! `db/`; [`ApiError`] at the HTTP edge, the only error a handler returns. It
//! renders as the stable body `{"error": {"code": "...", "message": "..."}}`,
//! and every extractor rejection (bad JSON, unknown fields, oversized body,
//! bad path or query) goes through the same shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::rollout::driver::RolloutError;
use crate::shop::purchases::PurchaseError;
use crate::vpn::membership::MembershipError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    /// Something the request body names does not exist (`unknown_customer`,
    /// `unknown_site`, ...); what the path names is [`ApiError::NotFound`].
    #[error("{message}")]
    UnknownReference { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// Refused credentials with a precise reason (enrollment tokens, device
    /// certificates).
    #[error("{message}")]
    Denied { code: &'static str, message: String },
    #[error("{0}")]
    Forbidden(String),
    /// Refused with a precise reason (`csrf`).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after: u64,
    },
    /// A byte range outside the body (`Range` of a release download):
    /// 416 with `Content-Range: bytes */<size>`.
    #[error("{message}")]
    RangeNotSatisfiable { size: i64, message: String },
    #[error("request body is larger than the limit")]
    PayloadTooLarge,
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// Not able to serve now, with the reason (`not_ready`): 503.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// Not an error: a dry run (`?dry_run=true`) reached the point where
    /// the real call commits. Its transaction was rolled back; the answer
    /// is 200 with [`DryRunBody`].
    #[error("dry run: the change would be answered {status}")]
    DryRun {
        status: StatusCode,
        target: Option<String>,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The answer of a dry run that passed every check of the real call.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DryRunBody {
    /// Always true.
    pub dry_run: bool,
    /// The status the real call would answer.
    pub status: u16,
    /// The id the call would create or change.
    pub target: Option<String>,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::bad_request("invalid_request", message)
    }

    pub fn unknown(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::UnknownReference {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::UnknownReference { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Denied { code, .. } => (StatusCode::UNAUTHORIZED, code),

            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Refused { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::TooManyRequests { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            ApiError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::DryRun { .. } => (StatusCode::OK, "dry_run"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The stable code of an error answer, kept in the response's extensions
/// for the request metrics (`metrics/http.rs`), which count refusals by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// Marks an answer that failed on the database (`isdf_database_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseFailure;

/// The stable error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, stable: `invalid_request`, `malformed_json`, `not_found`, ...
    pub code: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::DryRun { status, target } = self {
            let body = DryRunBody {
                dry_run: true,
                status: status.as_u16(),
                target,
            };
            return (StatusCode::OK, Json(body)).into_response();
        }
        let (status, code) = self.status_and_code();
        let database =
            matches!(&self, ApiError::Internal(e) if e.chain().any(|c| c.is::<sqlx::Error>()));
        let message = match &self {
            // Never leak internals; the log has the chain.
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        if database {
            response.extensions_mut().insert(DatabaseFailure);
        }
        if let ApiError::RangeNotSatisfiable { size, .. } = &self {
            if let Ok(value) = format!("bytes */{size}").parse() {
                response
                    .headers_mut()
                    .insert(axum::http::header::CONTENT_RANGE, value);
            }
        }
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, (*retry_after).into());
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl From<PurchaseError> for ApiError {
    fn from(e: PurchaseError) -> Self {
        use PurchaseError as E;
        let message = e.to_string();
        match e {
            E::UnknownCustomer(_) => ApiError::unknown("unknown_customer", message),
            E::UnknownSite(_) => ApiError::unknown("unknown_site", message),
            E::UnknownPass { .. } => ApiError::bad_request("unknown_pass", message),
            E::CurrencyMismatch { .. } => ApiError::bad_request("currency_mismatch", message),
            E::InvalidPrice(_) | E::InvalidPaymentId(_) => ApiError::invalid(message),
            E::DuplicatePayment { .. } => ApiError::conflict("duplicate_payment", message),
            E::NotInForce(_) => ApiError::NotFound(message),
            E::Database(e) => e.into(),
            E::Recompile { source, .. } => ApiError::Internal(source.context(message)),
        }
    }
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Invalid(code, message) => ApiError::BadRequest { code, message },
            RolloutError::UnknownReference(code, message) => {
                ApiError::UnknownReference { code, message }
            }
            RolloutError::Conflict(code, message) => ApiError::Conflict { code, message },
            RolloutError::NotFound(id) => ApiError::NotFound(format!("no rollout {id}")),
            RolloutError::DryRun => ApiError::DryRun {
                status: StatusCode::OK,
                target: None,
            },
            RolloutError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<MembershipError> for ApiError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::Invalid(code, message) => ApiError::BadRequest { code, message },
            MembershipError::Conflict(code, message) => ApiError::Conflict { code, message },
            MembershipError::Database(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                // serde's message names the field and the problem, e.g.
                // "unknown field `x`, expected one of ..." or "invalid value".
                ApiError::bad_request("invalid_body", e.body_text())
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::bad_request("malformed_json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::UnsupportedMediaType("expected `Content-Type: application/json`".into())
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge
            }
            other => ApiError::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

/// A JSON body whose rejections are [`ApiError`]s. Strings holding NUL
/// (`\u0000`) are refused before parsing: PostgreSQL cannot store them in
/// text, and nothing we accept needs them.
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected `Content-Type: application/json`".into(),
            ));
        }
        let bytes =
            <axum::body::Bytes as axum::extract::FromRequest<S>>::from_request(request, state)
                .await
                .map_err(|e| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::PayloadTooLarge
                    } else {
                        ApiError::bad_request("invalid_body", e.body_text())
                    }
                })?;
        refuse_nul_escapes(&bytes)?;
        let Json(value) = Json::<T>::from_bytes(&bytes)?;
        Ok(ApiJson(value))
    }
}

/// `application/json` or any `application/*+json`, parameters aside.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some(subtype) = essence
        .get(..12)
        .filter(|t| t.eq_ignore_ascii_case("application/"))
        .map(|_| &essence[12..])
    else {
        return false;
    };
    subtype.eq_ignore_ascii_case("json")
        || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json")
}

/// The stable refusal of text holding NUL.
pub fn nul_refused(what: &str) -> ApiError {
    ApiError::bad_request(
        "nul_character",
        format!("{what} holds a NUL character (U+0000), which is not accepted"),
    )
}

/// Refuses a JSON text with a `\u0000` escape (an escape, not an escaped
/// backslash followed by `u0000`). A raw NUL byte is not valid JSON at all
/// and is left to the parser.
pub fn refuse_nul_escapes(json: &[u8]) -> Result<(), ApiError> {
    const ESCAPE: &[u8] = b"u0000";
    let mut backslashes = 0usize;
    for (i, &byte) in json.iter().enumerate() {
        if byte == b'\\' {
            backslashes += 1;
            continue;
        }
        if backslashes % 2 == 1 && json[i..].starts_with(ESCAPE) {
            return Err(nul_refused("the request body"));
        }
        backslashes = 0;
    }
    Ok(())
}

/// `axum::extract::Path` whose rejections are [`ApiError`]s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(refuse_nul_escapes(br#"{"a":"x\u0000y"}"#).is_err());
        assert!(refuse_nul_escapes(br#"{"a\u0000":1}"#).is_err());
        assert!(refuse_nul_escapes(br#"{"a":"\\\u0000"}"#).is_err());
        assert!(refuse_nul_escapes(br#"{"a":"\\u0000"}"#).is_ok());
        assert!(refuse_nul_escapes(br#"{"a":"\u00001"}"#).is_err());
        assert!(refuse_nul_escapes(br#"{"a":"\u0001 u0000"}"#).is_ok());
    }

    #[test]
    fn json_content_types() {
        let headers = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::CONTENT_TYPE, v.parse().unwrap());
            h
        };
        assert!(is_json(&headers("application/json")));
        assert!(is_json(&headers("Application/JSON; charset=utf-8")));
        assert!(is_json(&headers("application/merge-patch+json")));
        assert!(!is_json(&headers("text/json")));
        assert!(!is_json(&headers("application/jsonx")));
        assert!(!is_json(&headers("application/+json")));
        assert!(!is_json(&axum::http::HeaderMap::new()));
    }
}
