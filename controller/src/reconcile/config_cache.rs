//! In-memory index of what the device API serves: each device's latest signed
//! envelope, with a change notification per device, and the version each
//! device last reported enforcing (the portal waits on it). A device that is
//! not here (deleted) is refused by the device API.
//!
//! This is what keeps the poll hot path free of database queries and signing:
//! a poll that finds no change is a hash, two map lookups and a 304. The
//! database stays the source of truth; the cache is filled at start and
//! updated after every committed recompile.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use tokio::sync::watch;
use uuid::Uuid;

/// A signed config ready to serve.
#[derive(Debug)]
pub struct ServedConfig {
    pub version: u64,
    pub envelope: Bytes,
}

struct DeviceSlot {
    current: Option<Arc<ServedConfig>>,
    /// Carries the latest version; long polls wait on it.
    changed: watch::Sender<u64>,
    /// The version the device last reported applied (0: none yet).
    enforced: watch::Sender<u64>,
}

#[derive(Default)]
pub struct ConfigCache {
    devices: RwLock<HashMap<Uuid, DeviceSlot>>,
    /// Told of every published config (the dashboard's live updates).
    pub live: Arc<crate::reconcile::live::LiveUpdates>,
}

impl ConfigCache {
    /// A cache that tells `live` of every published config.
    pub fn with_live(live: Arc<crate::reconcile::live::LiveUpdates>) -> Self {
        ConfigCache {
            live,
            ..ConfigCache::default()
        }
    }

    pub fn add_device(&self, id: Uuid) {
        let (changed, _) = watch::channel(0);
        let (enforced, _) = watch::channel(0);
        self.devices
            .write()
            .expect("lock")
            .entry(id)
            .or_insert(DeviceSlot {
                current: None,
                changed,
                enforced,
            });
    }

    pub fn remove_device(&self, id: Uuid) {
        self.devices.write().expect("lock").remove(&id);
    }

    /// Whether the device exists (a deleted device's certificate is refused).
    pub fn contains(&self, id: Uuid) -> bool {
        self.devices.read().expect("lock").contains_key(&id)
    }

    /// Publishes a newer config and wakes the device's waiting polls.
    pub fn publish(&self, id: Uuid, config: ServedConfig) {
        let mut devices = self.devices.write().expect("lock");
        if let Some(slot) = devices.get_mut(&id) {
            if slot
                .current
                .as_ref()
                .is_some_and(|c| c.version >= config.version)
            {
                return;
            }
            let version = config.version;
            slot.current = Some(Arc::new(config));
            slot.changed.send_replace(version);
            self.live.notify(crate::reconcile::live::Topic::Config(id));
        }
    }

    pub fn current(&self, id: Uuid) -> Option<Arc<ServedConfig>> {
        self.devices
            .read()
            .expect("lock")
            .get(&id)
            .and_then(|s| s.current.clone())
    }

    /// A receiver that changes when the device's config does (None: unknown device).
    pub fn subscribe(&self, id: Uuid) -> Option<watch::Receiver<u64>> {
        self.devices
            .read()
            .expect("lock")
            .get(&id)
            .map(|s| s.changed.subscribe())
    }

    /// Records the version a device reports applied and wakes whoever
    /// waits for it.
    pub fn report_enforced(&self, id: Uuid, version: u64) {
        if let Some(slot) = self.devices.read().expect("lock").get(&id) {
            slot.enforced.send_if_modified(|v| {
                let newer = version > *v;
                if newer {
                    *v = version;
                }
                newer
            });
        }
    }

    /// The version the device last reported enforcing (0: none yet).
    pub fn enforced(&self, id: Uuid) -> u64 {
        self.devices
            .read()
            .expect("lock")
            .get(&id)
            .map_or(0, |s| *s.enforced.borrow())
    }

    /// Waits until the device reports enforcing `version` or newer; false
    /// when `timeout` passes first or the device is unknown.
    pub async fn wait_enforced(
        &self,
        id: Uuid,
        version: u64,
        timeout: std::time::Duration,
    ) -> bool {
        let receiver = self
            .devices
            .read()
            .expect("lock")
            .get(&id)
            .map(|s| s.enforced.subscribe());
        let Some(mut receiver) = receiver else {
            return false;
        };
        tokio::time::timeout(timeout, receiver.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn device_count(&self) -> usize {
        self.devices.read().expect("lock").len()
    }
}
