//! iSDF controller: the operator REST API, the pure compiler from services to
//! per-router configs, the signer, and the device API that serves signed
//! configs by long poll and takes status reports.
//!
//! One folder per concern (ARCHITECTURE.md maps them): `model` and
//! `services` are pure; `reconcile`, `rollout`, `vpn` and `shop` act on the
//! database; `http` and `handlers` are the HTTP edge, `metrics` what Prometheus scrapes; `db` holds every SQL
//! statement; `trust` the keys and certificates; `cli` is `isdfctl`.

pub mod app;
pub mod cli;
pub mod cluster;
pub mod db;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod rollout;
pub mod services;
pub mod shop;
#[doc(hidden)]
pub mod test_support;
pub mod trust;
pub mod vpn;

pub use app::{Application, Settings};
