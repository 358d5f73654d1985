//! The error contract at the edge of the operator, device and enrollment
//! listeners, for what no handler sees: every error answer carries the
//! stable JSON body of [`ApiError`] (axum's own 405, a body over the limit
//! refused before extraction, a timeout), and a URI holding an encoded NUL
//! is refused before routing, since PostgreSQL cannot store NUL in text.

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::{nul_refused, ErrorBody, ErrorCode, ErrorDetail};

/// Refuses a request whose path or query holds `%00`.
pub async fn refuse_nul_in_uri(request: Request, next: Next) -> Response {
    let uri = request.uri();
    if holds_encoded_nul(uri.path()) {
        return nul_refused("the path").into_response();
    }
    if uri.query().is_some_and(holds_encoded_nul) {
        return nul_refused("the query").into_response();
    }
    next.run(request).await
}

fn holds_encoded_nul(text: &str) -> bool {
    text.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// Longest non-JSON error body kept as the message.
const MESSAGE_BYTES: usize = 512;

/// Gives an error answer that is not JSON the stable JSON body, keeping its
/// status and headers (a 405 keeps its `Allow`).
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, MESSAGE_BYTES)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|t| !t.is_empty());
    let message = text.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned()
    });
    let body = ErrorBody {
        error: ErrorDetail {
            code: code_of(status).to_owned(),
            message,
        },
    };
    let bytes = serde_json::to_vec(&body).expect("an error body serialises");
    parts.extensions.insert(ErrorCode(code_of(status)));
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(
        CONTENT_TYPE,
        "application/json".parse().expect("a valid header"),
    );
    Response::from_parts(parts, Body::from(bytes))
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The stable code of an error status no handler chose a code for.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        s if s.is_server_error() => "internal",
        _ => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_nul_is_found_in_any_case_of_its_hex() {
        assert!(holds_encoded_nul("/api/v1/devices/a%00b"));
        assert!(holds_encoded_nul("q=%00"));
        assert!(holds_encoded_nul("a=1&b=%00"));
        assert!(!holds_encoded_nul("q=%2500"));
        assert!(!holds_encoded_nul("q=100%25"));
    }

    #[test]
    fn every_error_status_has_a_code() {
        assert_eq!(
            code_of(StatusCode::METHOD_NOT_ALLOWED),
            "method_not_allowed"
        );
        assert_eq!(code_of(StatusCode::PAYLOAD_TOO_LARGE), "payload_too_large");
        assert_eq!(code_of(StatusCode::BAD_GATEWAY), "internal");
        assert_eq!(code_of(StatusCode::GONE), "refused");
    }
}
