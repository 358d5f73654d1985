//! In-memory index of what the device API serves: each device's latest
//! config version, with a change notification per device, the version each
//! device last reported enforcing (the portal waits on it), and which client
//! certificates the device may present. A device that is not here (deleted)
//! is refused by the device API.
//!
//! Signed envelopes are held within a byte budget ([`DEFAULT_ENVELOPE_BUDGET`]
//! unless set): those this replica just published first, the oldest let go
//! when the budget is full. A router that polls for a version whose envelope
//! is not held gets it from the database (`Reconciler::served_config`), so
//! a replica's memory does not grow with the fleet's configs, only with its
//! devices (a slot of a few hundred bytes each).
//!
//! This is what keeps the poll hot path free of database queries and signing:
//! a poll that finds no change is a hash, two map lookups and a 304. The
//! database stays the source of truth; the cache is filled at start and
//! updated after every committed recompile, and a device's certificates
//! after every committed change to them, on every replica: what another
//! replica commits arrives through the replicas' bus (`crate::cluster`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
    /// The latest version stored (0: none yet).
    version: u64,
    /// That version's envelope, while it is held (see [`HeldEnvelopes`]).
    envelope: Option<Arc<ServedConfig>>,
    /// Carries the latest version; long polls wait on it.
    changed: watch::Sender<u64>,
    /// The version the device last reported applied (0: none yet).
    enforced: watch::Sender<u64>,
    /// Its certificates, and the generation (in the database) they are of.
    certificates: (i64, AcceptedCertificates),
}

/// Bytes of envelopes held when no budget is set: 256 MiB, the envelopes
/// of some 100,000 routers with a few dozen rules each.
pub const DEFAULT_ENVELOPE_BUDGET: usize = 256 << 20;

/// Which envelopes are held, oldest first, and their bytes. An entry whose
/// envelope was replaced since still counts until it comes off the front,
/// so the count may be above what is held, never below.
struct HeldEnvelopes {
    order: VecDeque<(Uuid, u64, usize)>,
    bytes: usize,
    budget: usize,
}

pub struct ConfigCache {
    devices: RwLock<HashMap<Uuid, DeviceSlot>>,
    held: Mutex<HeldEnvelopes>,
    /// Filled from the database (devices, configs, certificates) at start.
    loaded: AtomicBool,
    /// Told of every published config (the dashboard's live updates).
    pub live: Arc<crate::reconcile::live::LiveUpdates>,
}

impl Default for ConfigCache {
    fn default() -> Self {
        ConfigCache::new(Arc::default(), DEFAULT_ENVELOPE_BUDGET)
    }
}

impl ConfigCache {
    /// A cache that tells `live` of every published config and holds at
    /// most `envelope_budget` bytes of envelopes.
    pub fn new(live: Arc<crate::reconcile::live::LiveUpdates>, envelope_budget: usize) -> Self {
        ConfigCache {
            devices: RwLock::default(),
            held: Mutex::new(HeldEnvelopes {
                order: VecDeque::new(),
                bytes: 0,
                budget: envelope_budget,
            }),
            loaded: AtomicBool::new(false),
            live,
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
                version: 0,
                envelope: None,
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
        if self.replace(id, config.version, Some(config)) {
            self.live.notify(crate::reconcile::live::Topic::Config(id));
        }
    }

    /// Holds a config read from the database (stored by another replica,
    /// or let go here): served, and newer polls woken, if it is newer.
    pub fn publish_heard(&self, id: Uuid, config: ServedConfig) {
        self.add_device(id);
        self.replace(id, config.version, Some(config));
    }

    /// Another replica stored `version` for the device: polls waiting for
    /// a newer config wake and fetch it (from the database: the envelope is
    /// not here yet). A device new here is added.
    pub fn announce(&self, id: Uuid, version: u64) {
        self.add_device(id);
        self.replace(id, version, None);
    }

    /// Makes `version` the device's latest (with its envelope, if given)
    /// if it is newer than what the slot has; whether it was. The same
    /// version's envelope is held if the slot had none.
    fn replace(&self, id: Uuid, version: u64, config: Option<ServedConfig>) -> bool {
        let mut devices = self.devices.write().expect("lock");
        let Some(slot) = devices.get_mut(&id) else {
            return false;
        };
        let newer = version > slot.version;
        // The envelope of the version already announced, read since.
        let fills_in = version == slot.version && slot.envelope.is_none() && config.is_some();
        if !newer && !fills_in {
            return false;
        }
        if newer {
            slot.version = version;
            slot.envelope = None;
        }
        if let Some(config) = config {
            let bytes = config.envelope.len();
            slot.envelope = Some(Arc::new(config));
            self.hold(&mut devices, id, version, bytes);
        }
        if newer {
            if let Some(slot) = devices.get(&id) {
                slot.changed.send_replace(version);
            }
        }
        newer
    }

    /// Counts a newly held envelope and lets the oldest go while the
    /// budget is exceeded.
    fn hold(&self, devices: &mut HashMap<Uuid, DeviceSlot>, id: Uuid, version: u64, bytes: usize) {
        let mut held = self.held.lock().expect("lock");
        held.order.push_back((id, version, bytes));
        held.bytes += bytes;
        while held.bytes > held.budget {
            let Some((old, old_version, old_bytes)) = held.order.pop_front() else {
                break;
            };
            held.bytes -= old_bytes;
            if let Some(slot) = devices.get_mut(&old) {
                if slot
                    .envelope
                    .as_ref()
                    .is_some_and(|e| e.version == old_version)
                {
                    slot.envelope = None;
                }
            }
        }
    }

    /// Bytes of envelopes counted as held (at most the budget).
    pub fn envelope_bytes(&self) -> usize {
        self.held.lock().expect("lock").bytes
    }

    /// The device's latest config, if its envelope is held here.
    pub fn current(&self, id: Uuid) -> Option<Arc<ServedConfig>> {
        self.devices
            .read()
            .expect("lock")
            .get(&id)
            .and_then(|s| s.envelope.clone())
    }

    /// The version served to the device (None: unknown device or no
    /// config yet).
    pub fn version(&self, id: Uuid) -> Option<u64> {
        self.devices
            .read()
            .expect("lock")
            .get(&id)
            .map(|s| s.version)
            .filter(|v| *v > 0)
    }

    /// Every device known here.
    pub fn device_ids(&self) -> Vec<Uuid> {
        self.devices.read().expect("lock").keys().copied().collect()
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

    fn config(version: u64, bytes: usize) -> ServedConfig {
        ServedConfig {
            version,
            envelope: Bytes::from(vec![b'x'; bytes]),
        }
    }

    #[test]
    fn envelopes_are_held_within_the_budget_and_versions_always() {
        let cache = ConfigCache::new(Arc::default(), 250);
        let devices: Vec<Uuid> = (0..4).map(|n| Uuid::from_u128(n + 1)).collect();
        for (n, id) in devices.iter().enumerate() {
            cache.add_device(*id);
            cache.publish(*id, config(n as u64 + 1, 100));
        }
        assert!(cache.envelope_bytes() <= 250);
        // The two oldest were let go; every version is still known.
        assert!(cache.current(devices[0]).is_none());
        assert!(cache.current(devices[1]).is_none());
        assert_eq!(cache.current(devices[3]).unwrap().version, 4);
        for (n, id) in devices.iter().enumerate() {
            assert_eq!(cache.version(*id), Some(n as u64 + 1));
        }
        // Read back from the database, it is held again.
        cache.publish_heard(devices[0], config(1, 100));
        assert_eq!(cache.current(devices[0]).unwrap().version, 1);
        assert!(cache.envelope_bytes() <= 250);
    }

    #[tokio::test]
    async fn an_announced_version_wakes_polls_and_drops_the_older_envelope() {
        let cache = ConfigCache::default();
        let id = Uuid::from_u128(7);
        cache.add_device(id);
        cache.publish(id, config(1, 10));
        let mut polls = cache.subscribe(id).unwrap();
        cache.announce(id, 2);
        polls.changed().await.unwrap();
        assert_eq!(*polls.borrow(), 2);
        assert_eq!(cache.version(id), Some(2));
        assert!(cache.current(id).is_none(), "version 1 is not served for 2");
        // An older or equal announcement changes nothing.
        cache.announce(id, 1);
        cache.announce(id, 2);
        assert!(!polls.has_changed().unwrap());
        cache.publish_heard(id, config(2, 10));
        assert_eq!(cache.current(id).unwrap().version, 2);
        assert!(!polls.has_changed().unwrap(), "filling in wakes nobody");
        // A device another replica created is added by its announcement.
        let new = Uuid::from_u128(8);
        cache.announce(new, 1);
        assert!(cache.contains(new));
        assert_eq!(cache.version(new), Some(1));
    }
}
