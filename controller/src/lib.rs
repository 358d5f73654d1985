//! iSDF controller: the operator REST API, the pure compiler from services to
//! per-router configs, the signer, and the device API that serves signed
//! configs by long poll and takes status reports.

pub mod app;
pub mod auth;
pub mod billing_webhook;
pub mod bittorrent;
pub mod catalog;
pub mod cli;
pub mod compiler;
pub mod config_cache;
pub mod db;
pub mod domain;
pub mod embedded_pg;
pub mod error;
pub mod fs_util;
pub mod handlers;
pub mod limits;
pub mod live;
pub mod openapi;
pub mod pay_per_site;
pub mod payment;
pub mod pki;
pub mod portal_page;
pub mod purchases;
pub mod reconcile;
pub mod rollout;
pub mod rollout_driver;
pub mod roots;
pub mod routes;
pub mod secrets;
pub mod sessions;
pub mod signer;
pub mod state;
#[doc(hidden)]
pub mod test_support;
pub mod vpn;
pub mod vpn_admin;
pub mod wireguard_facts;

pub use app::{Application, Settings};
