//! Every route of the four listeners, in one place.

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn;
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::handlers::{
    assignments, billing, blocks, customers, dashboard, device_api, device_labels, devices,
    enrollment, exports, fleet, health, metrics, operators, portal, purchases, releases, rollouts,
    services, sites, stream, vpns, wireguard,
};
use crate::http::auth::authorize_and_audit;
use crate::http::contract::{json_errors, refuse_nul_in_uri};
use crate::http::limits::{
    DEVICE_BODY_LIMIT, ENROLLMENT_BODY_LIMIT, OPERATOR_BODY_LIMIT, PORTAL_BODY_LIMIT,
    RELEASE_BODY_LIMIT, RELEASE_UPLOAD_ROUTE, WEBHOOK_BODY_LIMIT,
};
use crate::http::openapi;
use crate::http::state::AppState;
use crate::metrics::http::CountLayer;

/// The operator API, under `/api/v1`. Every `/api/v1` route sits behind
/// [`authorize_and_audit`] (authentication, role check, audit log).
pub fn operator_router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/devices", post(devices::create).get(devices::list))
        .route(
            "/api/v1/devices/{id}",
            get(devices::get)
                .patch(device_labels::update)
                .delete(devices::delete),
        )
        .route("/api/v1/devices/matching", get(device_labels::matching))
        .route("/api/v1/devices/labels", post(device_labels::relabel))
        .route("/api/v1/devices/{id}/services", get(devices::services))
        .route("/api/v1/devices/{id}/config", get(devices::config))
        .route("/api/v1/devices/{id}/status", get(devices::status))
        .route(
            "/api/v1/devices/{id}/status/history",
            get(devices::status_history),
        )
        .route("/api/v1/devices/{id}/history", get(devices::history))
        .route(
            "/api/v1/devices/{id}/blocks",
            post(blocks::create).get(blocks::list),
        )
        .route(
            "/api/v1/devices/{id}/blocks/{block_id}",
            axum::routing::delete(blocks::delete),
        )
        .route("/api/v1/devices/{id}/events", get(blocks::events))
        .route(
            "/api/v1/devices/{id}/enrollment-token",
            post(devices::create_enrollment_token),
        )
        .route("/api/v1/enrollment-tokens", post(enrollment::create_tokens))
        .route(
            "/api/v1/services",
            post(services::create).get(services::list),
        )
        .route(
            "/api/v1/services/{id}",
            get(services::get)
                .patch(services::update)
                .delete(services::delete),
        )
        .route(
            "/api/v1/services/{id}/revisions",
            post(services::create_revision).get(services::list_revisions),
        )
        .route(
            "/api/v1/services/{id}/revisions/{revision}",
            get(services::get_revision),
        )
        .route(
            "/api/v1/services/{id}/revisions/{revision}/diff/{other}",
            get(services::diff_revisions),
        )
        .route(
            "/api/v1/assignments",
            post(assignments::create).get(assignments::list),
        )
        .route(
            "/api/v1/assignments/{id}",
            get(assignments::get)
                .patch(assignments::update)
                .delete(assignments::delete),
        )
        .route(
            "/api/v1/rollouts",
            post(rollouts::create).get(rollouts::list),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::get))
        .route("/api/v1/rollouts/{id}/history", get(rollouts::history))
        .route("/api/v1/rollouts/{id}/samples", get(rollouts::samples))
        .route("/api/v1/rollouts/{id}/pause", post(rollouts::pause))
        .route("/api/v1/rollouts/{id}/resume", post(rollouts::resume))
        .route("/api/v1/rollouts/{id}/abort", post(rollouts::abort))
        .route(
            "/api/v1/operator-tokens",
            post(operators::create).get(operators::list),
        )
        .route(
            "/api/v1/operator-tokens/{id}",
            axum::routing::delete(operators::revoke),
        )
        .route("/api/v1/audit", get(operators::audit))
        .route("/api/v1/exports/devices.csv", get(exports::devices))
        .route("/api/v1/exports/audit.csv", get(exports::audit))
        .route("/api/v1/whoami", get(operators::whoami))
        .route("/api/v1/fleet/overview", get(fleet::overview))
        .route("/api/v1/fleet/history", get(fleet::history))
        .route("/metrics", get(metrics::serve))
        .route("/api/v1/stream", get(stream::stream))
        .route(
            "/api/v1/customers",
            post(customers::create).get(customers::list),
        )
        .route(
            "/api/v1/customers/{id}",
            get(customers::get).delete(customers::delete),
        )
        .route(
            "/api/v1/customers/{id}/devices/{device_id}",
            axum::routing::put(customers::attach_device).delete(customers::detach_device),
        )
        .route("/api/v1/devices/{id}/wireguard", get(wireguard::get))
        .route(
            "/api/v1/devices/{id}/wireguard/rotate",
            post(wireguard::rotate),
        )
        .route("/api/v1/sites", post(sites::create).get(sites::list))
        .route(
            "/api/v1/sites/{id}",
            get(sites::get).put(sites::update).delete(sites::delete),
        )
        .route(
            "/api/v1/purchases",
            post(purchases::create).get(purchases::list),
        )
        .route(
            "/api/v1/purchases/{id}",
            axum::routing::delete(purchases::cancel),
        )
        .route("/api/v1/vpns", post(vpns::create).get(vpns::list))
        .route(
            "/api/v1/vpns/{id}",
            get(vpns::get).patch(vpns::update).delete(vpns::delete),
        )
        .route(
            "/api/v1/vpns/{id}/members/{device_id}",
            axum::routing::put(vpns::put_member).delete(vpns::delete_member),
        )
        .route(
            "/api/v1/agent-releases",
            post(releases::create).get(releases::list),
        )
        .route("/api/v1/agent-releases/{id}", get(releases::get))
        .route(
            RELEASE_UPLOAD_ROUTE,
            put(releases::upload).layer(DefaultBodyLimit::max(RELEASE_BODY_LIMIT)),
        )
        .route("/api/v1/vpn-relays", get(vpns::list_relays))
        .route(
            "/api/v1/vpn-relays/{device_id}",
            axum::routing::put(vpns::put_relay).delete(vpns::delete_relay),
        )
        // Inside the audit: a refused change is still recorded.
        .route_layer(from_fn(refuse_nul_in_uri))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize_and_audit,
        ));
    Router::new()
        .merge(api)
        // Outside the operator-token middleware: signed by the billing
        // system, and audited by its handler.
        .route(
            billing::PATH,
            post(billing::webhook).layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        )
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/api/v1/openapi/device.json", get(openapi::serve_device))
        .route(
            "/api/v1/openapi/enrollment.json",
            get(openapi::serve_enrollment),
        )
        // The dashboard: static files and its login, outside the API
        // middleware (the page then calls the API with its session).
        .route("/", get(dashboard::to_dashboard))
        .route("/ui", get(dashboard::to_dashboard))
        .route("/ui/", get(dashboard::index))
        .route("/ui/app.js", get(dashboard::app_js))
        .route("/ui/app.css", get(dashboard::app_css))
        .route("/ui/login", post(dashboard::login))
        .route("/ui/logout", post(dashboard::logout))
        .route("/ui/session", get(dashboard::session))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(OPERATOR_BODY_LIMIT))
        .layer(from_fn(refuse_nul_in_uri))
        .layer(from_fn(json_errors))
        .layer(TraceLayer::new_for_http())
        // Outermost: the request metrics see the answer as it leaves.
        .layer(CountLayer::new(state.metrics.clone(), "operator"))
        .with_state(state)
}

/// The device API, served over HTTPS on its own listener.
pub fn device_router(state: AppState) -> Router {
    Router::new()
        .route(isdf_api::paths::DEVICE_CONFIG, get(device_api::poll_config))
        .route(
            isdf_api::paths::DEVICE_STATUS,
            post(device_api::report_status),
        )
        .route(
            isdf_api::paths::DEVICE_EVENTS,
            post(device_api::report_events),
        )
        .route(isdf_api::paths::DEVICE_PING, get(device_api::ping))
        .route(
            isdf_api::paths::DEVICE_WIREGUARD_PROBE,
            post(device_api::probe),
        )
        .route(
            isdf_api::paths::DEVICE_WIREGUARD_FACTS,
            put(device_api::wireguard_facts),
        )
        .route(isdf_api::paths::DEVICE_RENEW, post(enrollment::renew))
        .route(isdf_api::paths::DEVICE_ROOTS, get(device_api::roots))
        .route(
            &format!("{}/{{sha256}}", isdf_api::paths::DEVICE_RELEASES),
            get(releases::download),
        )
        // For a load balancer in front of this port: answered without a
        // client certificate (every device route above needs one).
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(DEVICE_BODY_LIMIT))
        .layer(from_fn(refuse_nul_in_uri))
        .layer(from_fn(json_errors))
        .layer(CountLayer::new(state.metrics.clone(), "device"))
        .with_state(state)
}

/// The enrollment listener: routers without a certificate yet.
pub fn enrollment_router(state: AppState) -> Router {
    Router::new()
        .route(isdf_api::paths::ENROLL, post(enrollment::enroll))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(ENROLLMENT_BODY_LIMIT))
        .layer(from_fn(refuse_nul_in_uri))
        .layer(from_fn(json_errors))
        .layer(CountLayer::new(state.metrics.clone(), "enrollment"))
        .with_state(state)
}

/// The customer-facing portal (its own listener): gated sites' pages,
/// paying for a pass, waiting for the router to open the site.
pub fn portal_router(state: AppState) -> Router {
    Router::new()
        .route("/p/{device}", get(portal::device_page))
        .route("/p/{device}/{site}", get(portal::site_page))
        .route("/p/{device}/{site}/buy", post(portal::buy))
        .route("/p/{device}/{site}/wait", get(portal::wait_page))
        .route("/p/{device}/{site}/open", get(portal::open))
        // For a load balancer in front of this port.
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .layer(DefaultBodyLimit::max(PORTAL_BODY_LIMIT))
        .layer(CountLayer::new(state.metrics.clone(), "portal"))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> crate::http::error::ApiError {
    crate::http::error::ApiError::NotFound(format!("no route for {}", uri.path()))
}
