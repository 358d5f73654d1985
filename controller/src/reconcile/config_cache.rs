//! In-memory index of what the device API serves: each device's latest signed
//! envelope, with a change notification per device, the version each
//! device last reported enforcing (the portal waits on it), and which client
//! certificates the device may present. A device that is not here (deleted)
//! is refused by the device API.
//!
//! This is what keeps the poll hot path free of database queries and signing:
//! a poll that finds no change is a hash, two map lookups and a 304. The
//! database stays the source of truth; the cache is filled at start and
//! updated after every committed recompile, and a device's certificates
//! after every committed change to them, on every replica: what another
//! replica commits arrives through the replicas' bus (`crate::cluster`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// SHA-256 of a client certificate's DER.
pub type CertificateFingerprint = [u8; 32];

/// Which client certificates a device may present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AcceptedCertificates {
    /// None recorded (enrolled before certificates were): any certificate
    /// of our CA naming the device, until its next one is issued.
    #[default]
    Unrecorded,
    /// Those not revoked, newest (the current one) first; the others are
    /// the certificate that renewed, until the current one is first used.
    Pinned(Vec<CertificateFingerprint>),
}

/// What a presented certificate is to its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStanding {
    /// Accepted, nothing to record.
    Accepted,
    /// The current certificate while an older one is still accepted: its
    /// first use, which retires the older ones.
    FirstUse,
    /// Not among those this replica knows: revoked, or issued by another
    /// replica a moment ago (the database decides).
    Unknown,
}

impl AcceptedCertificates {
    pub fn standing(&self, presented: &CertificateFingerprint) -> CertificateStanding {
        match self {
            AcceptedCertificates::Unrecorded => CertificateStanding::Accepted,
            AcceptedCertificates::Pinned(accepted) => {
                match accepted.iter().position(|f| f == presented) {
                    Some(0) if accepted.len() > 1 => CertificateStanding::FirstUse,
                    Some(_) => CertificateStanding::Accepted,
                    None => CertificateStanding::Unknown,
                }
            }
        }
    }
}

struct DeviceSlot {
    current: Option<Arc<ServedConfig>>,
    /// Carries the latest version; long polls wait on it.
    changed: watch::Sender<u64>,
    /// The version the device last reported applied (0: none yet).
    enforced: watch::Sender<u64>,
    /// Its certificates, and the generation (in the database) they are of.
    certificates: (i64, AcceptedCertificates),
}

#[derive(Default)]
pub struct ConfigCache {
    devices: RwLock<HashMap<Uuid, DeviceSlot>>,
    /// Filled from the database (devices, configs, certificates) at start.
    loaded: AtomicBool,
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
                certificates: (0, AcceptedCertificates::Unrecorded),
            });
    }

    /// What `presented` is to the device's certificates; None when the
    /// device is unknown (deleted).
    pub fn certificate_standing(
        &self,
        id: Uuid,
        presented: &CertificateFingerprint,
    ) -> Option<CertificateStanding> {
        self.devices
            .read()
            .expect("lock")
            .get(&id)
            .map(|s| s.certificates.1.standing(presented))
    }

    /// Replaces the device's certificates with those of `generation`,
    /// unless the cache already holds a newer generation.
    pub fn set_certificates(&self, id: Uuid, generation: i64, accepted: AcceptedCertificates) {
        if let Some(slot) = self.devices.write().expect("lock").get_mut(&id) {
            if generation >= slot.certificates.0 {
                slot.certificates = (generation, accepted);
            }
        }
    }

    /// Marks the cache filled from the database (readiness waits for it).
    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn remove_device(&self, id: Uuid) {
        self.devices.write().expect("lock").remove(&id);
    }

    /// Whether the device exists (a deleted device's certificate is refused).
    pub fn contains(&self, id: Uuid) -> bool {
        self.devices.read().expect("lock").contains_key(&id)
    }

    /// Publishes a newer config stored by this replica and wakes the
    /// device's waiting polls (and the dashboards, here and elsewhere).
    pub fn publish(&self, id: Uuid, config: ServedConfig) {
        if self.replace(id, config) {
            self.live.notify(crate::reconcile::live::Topic::Config(id));
        }
    }

    /// Publishes a newer config another replica stored (its dashboards
    /// are told by that replica); the device is added if it is new here.
    pub fn publish_heard(&self, id: Uuid, config: ServedConfig) {
        self.add_device(id);
        self.replace(id, config);
    }

    /// Serves `config` if it is newer than the device's; whether it was.
    fn replace(&self, id: Uuid, config: ServedConfig) -> bool {
        let mut devices = self.devices.write().expect("lock");
        let Some(slot) = devices.get_mut(&id) else {
            return false;
        };
        if slot
            .current
            .as_ref()
            .is_some_and(|c| c.version >= config.version)
        {
            return false;
        }
        let version = config.version;
        slot.current = Some(Arc::new(config));
        slot.changed.send_replace(version);
        true
    }

    /// The version served to the device (None: unknown device or no
    /// config yet).
    pub fn version(&self, id: Uuid) -> Option<u64> {
        self.devices
            .read()
            .expect("lock")
            .get(&id)
            .and_then(|s| s.current.as_ref().map(|c| c.version))
    }

    /// Every device known here.
    pub fn device_ids(&self) -> Vec<Uuid> {
        self.devices.read().expect("lock").keys().copied().collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_stands_by_its_place_among_those_accepted() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let unrecorded = AcceptedCertificates::Unrecorded;
        assert_eq!(unrecorded.standing(&a), CertificateStanding::Accepted);
        let alone = AcceptedCertificates::Pinned(vec![a]);
        assert_eq!(alone.standing(&a), CertificateStanding::Accepted);
        assert_eq!(alone.standing(&b), CertificateStanding::Unknown);
        let renewed = AcceptedCertificates::Pinned(vec![b, a]);
        assert_eq!(renewed.standing(&b), CertificateStanding::FirstUse);
        assert_eq!(renewed.standing(&a), CertificateStanding::Accepted);
        assert_eq!(renewed.standing(&c), CertificateStanding::Unknown);
        let none = AcceptedCertificates::Pinned(vec![]);
        assert_eq!(none.standing(&a), CertificateStanding::Unknown);
    }

    #[test]
    fn an_older_generation_never_replaces_a_newer_one() {
        let cache = ConfigCache::default();
        let id = Uuid::new_v4();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(cache.certificate_standing(id, &a), None);
        cache.add_device(id);
        cache.set_certificates(id, 2, AcceptedCertificates::Pinned(vec![b]));
        cache.set_certificates(id, 1, AcceptedCertificates::Pinned(vec![a]));
        assert_eq!(
            cache.certificate_standing(id, &a),
            Some(CertificateStanding::Unknown)
        );
        assert_eq!(
            cache.certificate_standing(id, &b),
            Some(CertificateStanding::Accepted)
        );
    }
}
