//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::OpenApi;

use crate::handlers::{
    assignments, billing, blocks, customers, device_api, devices, enrollment, fleet, health,
    operators, purchases, rollouts, services, sites, stream, vpns, wireguard,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "iSDF controller API", description = "Operator API (/api/v1) and device API (/device/v1)."),
    paths(
        devices::create, devices::list, devices::get, devices::delete, devices::config,
        devices::status, devices::status_history, devices::create_enrollment_token,
        enrollment::create_tokens,
        services::create, services::list, services::get, services::create_revision,
        services::list_revisions, services::get_revision,
        assignments::create, assignments::list, assignments::get, assignments::update,
        assignments::delete,
        operators::create, operators::list, operators::revoke, operators::audit,
        blocks::create, blocks::list, blocks::delete, blocks::events,
        customers::create, customers::list, customers::get, customers::attach_device,
        customers::detach_device, customers::delete,
        sites::create, sites::list, sites::get, sites::update, sites::delete,
        purchases::create, purchases::list, purchases::cancel, billing::webhook,
        vpns::create, vpns::list, vpns::get, vpns::update, vpns::delete, vpns::put_member,
        vpns::delete_member, vpns::list_relays, vpns::put_relay, vpns::delete_relay,
        device_api::poll_config, device_api::report_status, device_api::report_events,
        device_api::probe, device_api::wireguard_facts,
        wireguard::get, wireguard::rotate,
        rollouts::create, rollouts::list, rollouts::get, rollouts::history, rollouts::samples,
        rollouts::pause, rollouts::resume, rollouts::abort,
        services::diff_revisions, operators::whoami, fleet::overview, stream::stream,
        health::healthz, health::readyz,
    ),
    components(schemas(
        crate::http::error::ErrorBody, crate::services::FlowBlockSpec, crate::services::FlowSpec,
        crate::services::BlockAction, crate::services::ServiceKind, crate::model::Role,
        crate::services::BittorrentBlockSpec, crate::services::pay_per_site::catalog::Pass, crate::services::pay_per_site::catalog::PassInput,
        crate::shop::purchases::PurchaseSource, crate::vpn::Topology,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
