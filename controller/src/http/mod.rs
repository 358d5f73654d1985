//! The HTTP edge: every route of the four listeners (`routes.rs`), the
//! operator authentication, authorisation and audit middleware and the
//! device identity from client certificates (`auth.rs`), dashboard sessions
//! and the login's cross-site checks (`login_csrf.rs`), the audit trail a
//! change is committed with (`audit.rs`), rate limits and body limits,
//! readiness (`readiness.rs`), the PROXY protocol of the router listeners
//! behind a load balancer (`proxy_protocol.rs`), the one error type (every domain error's
//! conversion to it is in `error.rs`) and the contract every error answer
//! keeps (`contract.rs`), the bounded slots CPU-heavy request work runs in
//! (`offload.rs`), the OpenAPI document, and the state handlers share.
//! Handlers themselves are in `crate::handlers`.

pub mod audit;
pub mod auth;
pub mod contract;
pub mod error;
pub mod limits;
pub mod login_csrf;
pub mod offload;
pub mod openapi;
pub mod proxy_protocol;
pub mod readiness;
pub mod routes;
pub mod sessions;
pub mod state;
