//! The state every handler shares (`AppState`): the database pool, the
//! reconciler and config cache, limits, the live-update hub, the CA, the
//! rollout driver, the portal's links and payment provider, and what a new
//! router is told at enrollment.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::http::limits::{DeviceGate, EnrollmentGate};
use crate::reconcile::config_cache::ConfigCache;
use crate::shop::billing_webhook::WebhookKey;
use crate::trust::pki::Pki;

use crate::reconcile::Reconciler;
use crate::services::pay_per_site::PortalLinks;
use crate::shop::payment::PaymentProvider;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub cache: Arc<ConfigCache>,
    pub reconciler: Arc<Reconciler>,
    pub agent_bootstrap: Arc<AgentBootstrap>,
    /// Rate and long-poll limits of the device API.
    pub device_gate: Arc<DeviceGate>,
    /// Rate limits of the enrollment listener.
    pub enrollment_gate: Arc<EnrollmentGate>,
    /// The CA that issues device certificates.
    pub pki: Arc<Pki>,
    /// Lifetime of a device certificate (agents renew at two thirds).
    pub device_cert_lifetime: Duration,
    /// The shared secret that signs billing webhooks.
    pub billing_webhook_key: Arc<WebhookKey>,
    pub portal: Arc<Portal>,
    /// UDP probes sent to routers and not yet redeemed.
    pub probes: Arc<crate::vpn::probes::Probes>,
    /// Staged rollouts (start, pause, resume, abort; the driver loop).
    pub rollouts: Arc<crate::rollout::driver::Rollouts>,
    /// Tells the dashboard's open pages what changed: call
    /// `state.live.notify(Topic::...)` after committing a change.
    pub live: Arc<crate::reconcile::live::LiveUpdates>,
    /// Refusals of unauthenticated callers: limited per source, tallied
    /// for the audit log.
    pub refusals: Arc<crate::http::audit::Refusals>,
    /// Slots for CPU-heavy request work (diffs), off the async workers.
    pub cpu_work: Arc<crate::http::offload::CpuWork>,
    /// Dashboard sessions' settings and login limits.
    pub dashboard: Arc<crate::http::sessions::Dashboard>,
    /// Whether this replica can serve (`/readyz`), checked at most once a second.
    pub readiness: Arc<crate::http::readiness::Readiness>,
    /// Whether this replica runs the background loops now.
    pub leadership: Arc<crate::cluster::leader::Leadership>,
    /// What `/metrics` exports (the reconciler holds the same).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How long the fleet's minute samples are kept.
    pub fleet_history_retention: Duration,
}

/// The customer-facing portal: its signed links and how it takes payment.
pub struct Portal {
    pub links: PortalLinks,
    pub payments: Arc<dyn PaymentProvider>,
    /// Payments per router: a LAN host cannot make its household pay in a
    /// loop.
    pub charges: crate::http::limits::RateLimiter<uuid::Uuid>,
}

/// What an agent needs to enroll and to trust the controller.
pub struct AgentBootstrap {
    pub device_api_url: String,
    pub enrollment_url: String,
    pub ca_pem: String,
    pub signing_public_key_hex: String,
    /// The root chain (envelopes, oldest first), given to agents.
    pub roots: Vec<String>,
    /// The newest root's release keys: an agent release is accepted only
    /// with a manifest one of them signed.
    pub release_keys: isdf_api::TrustedKeys,
}

impl AgentBootstrap {
    /// A ready-to-use agent config file (TOML): the router enrolls with the
    /// token in `enrollment_token_file` at first start.
    pub fn agent_toml(&self) -> String {
        format!(
            "# iSDF agent configuration\n\
             enrollment_url = \"{enroll}\"\n\
             controller_url = \"{url}\"\n\
             ca_cert = \"/etc/isdf/ca.pem\"\n\
             enrollment_token_file = \"/etc/isdf/enrollment-token\"\n\
             state_dir = \"/var/lib/isdf-agent\"\n\
             backend = \"auto\"\n",
            enroll = self.enrollment_url,
            url = self.device_api_url,
        )
    }
}
