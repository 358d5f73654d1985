//! The OpenAPI documents, generated from the handlers' annotations: one per
//! listener, since each is reached at its own address with its own
//! credentials. The operator listener's (`/api/v1/openapi.json`: the
//! operator API, the billing webhook, health) is the one clients are
//! generated from; the device listener's (mutual TLS) and the enrollment
//! listener's are served beside it with `servers` naming where routers reach
//! them.
//!
//! The error answers every operation shares (the extractors' 400, the
//! authentication middleware's 401, 403 and 429, the body limit's 413, the
//! JSON body's 415, 500) are added by [`CommonErrors`] from what each
//! operation is (its listener, method, parameters and body), so that an
//! annotation lists only the answers of its own handler.

use axum::extract::State;
use axum::Json;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder, Server};
use utoipa::OpenApi;

use crate::handlers::{
    assignments, billing, blocks, customers, device_api, device_labels, devices, enrollment,
    exports, fleet, health, metrics, operators, purchases, releases, rollouts, services, sites,
    stream, vpns, wireguard,
};
use crate::http::state::AppState;

/// The operator listener: `/api/v1` (bearer token or dashboard session),
/// the billing webhook (its own signature) and health.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "iSDF operator API",
        description = "The operator API (`/api/v1`), the billing webhook and health, served on the \
            operator listener (`--api-listen`). Every error answer has the body \
            `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`. The device API and \
            enrollment are served on their own listeners: see `/api/v1/openapi/device.json` \
            and `/api/v1/openapi/enrollment.json`."
    ),
    paths(
        devices::create, devices::list, devices::get, devices::delete, devices::config,
        devices::status, devices::status_history, devices::history, devices::create_enrollment_token,
        devices::services, device_labels::update, device_labels::matching,
        device_labels::relabel, exports::devices, exports::audit,
        enrollment::create_tokens,
        services::create, services::list, services::get, services::update, services::delete,
        services::create_revision,
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
        wireguard::get, wireguard::rotate,
        rollouts::create, rollouts::list, rollouts::get, rollouts::history, rollouts::samples,
        rollouts::pause, rollouts::resume, rollouts::abort,
        services::diff_revisions, operators::whoami, fleet::overview, fleet::history, stream::stream,
        health::healthz, health::readyz, metrics::serve,
        releases::create, releases::list, releases::get, releases::upload,
    ),
    components(schemas(
        crate::http::error::ErrorBody, crate::http::error::DryRunBody, crate::services::FlowBlockSpec, crate::services::FlowSpec,
        crate::services::BlockAction, crate::services::ServiceKind, crate::model::Role,
        crate::services::BittorrentBlockSpec, crate::services::AgentReleaseSpec, crate::services::pay_per_site::catalog::Pass, crate::services::pay_per_site::catalog::PassInput,
        crate::shop::purchases::PurchaseSource, crate::vpn::Topology,
    )),
    modifiers(&BearerAuth, &OPERATOR_ERRORS),
    security(("bearer" = [])),
)]
pub struct OperatorApiDoc;

/// The device listener: routers with their client certificate.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "iSDF device API",
        description = "What routers call on the device listener (`--device-listen`, HTTPS with \
            mutual TLS: the client certificate issued at enrollment names the router). Health \
            is answered without a certificate, for load balancers."
    ),
    paths(
        device_api::poll_config, device_api::report_status, device_api::report_events,
        device_api::ping, device_api::roots, device_api::probe, device_api::wireguard_facts,
        enrollment::renew, releases::download, health::healthz, health::readyz,
    ),
    components(schemas(crate::http::error::ErrorBody)),
    modifiers(&MutualTls, &DEVICE_ERRORS),
    security(("mutual_tls" = [])),
)]
pub struct DeviceApiDoc;

/// The enrollment listener: routers trading an enrollment token for their
/// client certificate.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "iSDF enrollment",
        description = "The enrollment listener (`--enrollment-listen`, HTTPS, server-authenticated \
            only: routers have no certificate yet). The enrollment token in the body is the \
            credential."
    ),
    paths(enrollment::enroll, health::healthz, health::readyz),
    components(schemas(crate::http::error::ErrorBody)),
    modifiers(&ENROLLMENT_ERRORS),
)]
pub struct EnrollmentApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An operator token (`isdf_op_...`) with a role: `viewer` reads, \
                         `operator` also changes, `admin` also manages tokens.",
                    ))
                    .build(),
            ),
        );
    }
}

struct MutualTls;

impl utoipa::Modify for MutualTls {
    fn modify(&self, openapi: &mut Document) {
        use utoipa::openapi::security::SecurityScheme;
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "mutual_tls",
            SecurityScheme::MutualTls {
                description: Some(
                    "The router's client certificate, issued by the controller CA at enrollment."
                        .into(),
                ),
                extensions: None,
            },
        );
    }
}

/// Which listener a document describes: each has its own middleware, and so
/// its own answers no handler gives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Operator,
    Device,
    Enrollment,
}

/// Adds to every operation the error answers that come from outside its
/// handler (see the module doc), where the operation can get them.
struct CommonErrors(Listener);

const OPERATOR_ERRORS: CommonErrors = CommonErrors(Listener::Operator);
const DEVICE_ERRORS: CommonErrors = CommonErrors(Listener::Device);
const ENROLLMENT_ERRORS: CommonErrors = CommonErrors(Listener::Enrollment);

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut Document) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    self.add(path, method, operation);
                }
            }
        }
    }
}

impl CommonErrors {
    fn add(&self, path: &str, method: &str, operation: &mut Operation) {
        // Handlers of different resources share names (`list`, `get`):
        // prefixed with their tag, operation ids are unique, as clients
        // generated from the document need.
        if let (Some(tag), Some(id)) = (
            operation.tags.as_ref().and_then(|t| t.first()),
            operation.operation_id.as_mut(),
        ) {
            if !id.starts_with(tag.as_str()) {
                *id = format!("{tag}_{id}");
            }
        }
        let health = path == "/healthz" || path == "/readyz";
        let mutating = method != "get";
        let json_body = operation.request_body.as_ref().is_some_and(|body| {
            body.content
                .keys()
                .any(|t| t.starts_with("application/json"))
        });
        let has_path_params = operation
            .parameters
            .iter()
            .flatten()
            .any(|p| matches!(p.parameter_in, ParameterIn::Path));
        // An operation with `security: []` takes no credentials.
        let authenticated = operation
            .security
            .as_ref()
            .is_none_or(|s| !s.iter().all(|r| *r == Default::default()));
        let mut answers: Vec<(u16, &str)> = vec![(
            400,
            "Refused input: `nul_character` (a NUL in the path or query), `invalid_path`, \
             `invalid_query`, `invalid_body`, `malformed_json`, or the handler's own code",
        )];
        if !health {
            answers.push((
                500,
                "`internal`: an unexpected failure (the log has the cause)",
            ));
        }
        if has_path_params {
            answers.push((404, "`not_found`: nothing has this id"));
        }
        if mutating {
            answers.push((
                413,
                "`payload_too_large`: the body is over the listener's limit",
            ));
        }
        // The webhook reads its body raw (the signature covers the bytes).
        if json_body && path != billing::PATH {
            answers.push((
                415,
                "`unsupported_media_type`: the body is not `application/json`",
            ));
        }
        if self.0 == Listener::Operator && authenticated && mutating {
            add_dry_run(operation);
        }
        match self.0 {
            Listener::Operator if authenticated && !health => {
                answers.push((401, "`unauthorized`: no valid operator token or session"));
                answers.push((
                    403,
                    "`forbidden`: the token's role is not enough for this call; `csrf`: a \
                     change made with a dashboard session without its CSRF header",
                ));
                answers.push((
                    429,
                    "`rate_limited`: too many calls without valid credentials from this \
                     address (valid credentials always get through)",
                ));
            }
            Listener::Operator if path == billing::PATH => {
                answers.push((
                    429,
                    "`rate_limited`: too many unsigned calls from this address",
                ));
            }
            Listener::Device if !health => {
                answers.push((
                    401,
                    "`unauthorized` (no client certificate), `device_unknown` (deleted) or \
                     `certificate_superseded` (replaced by a newer certificate)",
                ));
                answers.push((
                    429,
                    "`rate_limited`: over the router's request rate (with `Retry-After`)",
                ));
            }
            Listener::Enrollment if !health => {
                answers.push((401, "`token_unknown`, `token_used` or `token_expired`"));
                answers.push((
                    429,
                    "`rate_limited`: too many attempts from this address or with this token",
                ));
            }
            _ => {}
        }
        for (status, description) in answers {
            operation
                .responses
                .responses
                .entry(status.to_string())
                .or_insert_with(|| RefOr::T(error_response(description)));
        }
    }
}

/// Every change under `/api/v1` takes `?dry_run=true` (see
/// `crate::http::auth`): the same checks, nothing stored, and a 200
/// [`DryRunBody`](crate::http::error::DryRunBody) where the real call
/// would succeed.
fn add_dry_run(operation: &mut Operation) {
    use utoipa::openapi::path::ParameterBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    use utoipa::openapi::Required;
    let parameter = ParameterBuilder::new()
        .name("dry_run")
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(
            "Check the change as the real call would, store nothing: a success answers 200 \
             with `{\"dry_run\": true, \"status\", \"target\"}`, a refusal as the real call.",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::Boolean)))
        .build();
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .push(parameter);
    let dry_run = RefOr::Ref(utoipa::openapi::Ref::from_schema_name("DryRunBody"));
    match operation.responses.responses.get_mut("200") {
        // The real call answers 200 too: either body.
        Some(RefOr::T(response)) => {
            for content in response.content.values_mut() {
                if let Some(schema) = content.schema.take() {
                    content.schema = Some(RefOr::T(Schema::OneOf(
                        OneOfBuilder::new()
                            .item(schema)
                            .item(dry_run.clone())
                            .build(),
                    )));
                }
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            operation.responses.responses.insert(
                "200".to_owned(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description("A dry run (`?dry_run=true`) that passed every check")
                        .content(
                            "application/json",
                            ContentBuilder::new().schema(Some(dry_run)).build(),
                        )
                        .build(),
                ),
            );
        }
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build()
}

/// `GET /api/v1/openapi.json`: the operator listener's document.
pub async fn serve() -> Json<Document> {
    Json(OperatorApiDoc::openapi())
}

/// `GET /api/v1/openapi/device.json`: the device listener's document, with
/// the URL routers are given.
pub async fn serve_device(State(state): State<AppState>) -> Json<Document> {
    let mut document = DeviceApiDoc::openapi();
    document.servers = Some(vec![Server::new(&state.agent_bootstrap.device_api_url)]);
    Json(document)
}

/// `GET /api/v1/openapi/enrollment.json`: the enrollment listener's
/// document, with the URL routers are given.
pub async fn serve_enrollment(State(state): State<AppState>) -> Json<Document> {
    let mut document = EnrollmentApiDoc::openapi();
    document.servers = Some(vec![Server::new(&state.agent_bootstrap.enrollment_url)]);
    Json(document)
}
