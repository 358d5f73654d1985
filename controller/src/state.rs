//! Shared state of both listeners.

use std::sync::Arc;

use sqlx::PgPool;

use crate::config_cache::ConfigCache;
use crate::limits::DeviceGate;

use crate::reconcile::Reconciler;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub cache: Arc<ConfigCache>,
    pub reconciler: Arc<Reconciler>,
    pub agent_bootstrap: Arc<AgentBootstrap>,
    /// Rate and long-poll limits of the device API.
    pub device_gate: Arc<DeviceGate>,
}

/// What an agent needs besides its token: shown when a device is registered.
pub struct AgentBootstrap {
    pub device_api_url: String,
    pub ca_pem: String,
    pub signing_public_key_hex: String,
}

impl AgentBootstrap {
    /// A ready-to-use agent config file (TOML) for one device.
    pub fn agent_toml(&self, device_id: &str) -> String {
        format!(
            "# iSDF agent configuration for device {device_id}\n\
             controller_url = \"{url}\"\n\
             device_id = \"{device_id}\"\n\
             device_token_file = \"/etc/isdf/device-token\"\n\
             ca_cert = \"/etc/isdf/ca.pem\"\n\
             signing_public_keys = [\"{key}\"]\n\
             state_dir = \"/var/lib/isdf-agent\"\n\
             backend = \"auto\"\n",
            url = self.device_api_url,
            key = self.signing_public_key_hex,
        )
    }
}
