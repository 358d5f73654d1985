//! One simulated router: it enrolls as the agent does (a key pair and CSR
//! made here by `controller::csr`, the answer checked by `check_answer`,
//! the config keys from `config_trust`), then runs the agent's loop without
//! a kernel: long poll with `If-None-Match`, `open_device_config` with the
//! agent's own `opening_policy`, an optional simulated apply delay, a status
//! report with a growing sequence, and again.
//!
//! Requests are strictly one after another, so each router's client (its
//! own TLS identity) keeps exactly one connection open. What a router keeps
//! between polls is small on purpose: its client, its keys, its versions.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use isdf_agent::agent::opening_policy;
use isdf_agent::controller::client::{Client, ControllerError, Poll};
use isdf_agent::controller::enrollment::{
    check_answer, enrollment_client, is_identity_refused, request_certificate,
    PERMANENT_FAILURE_RETRY,
};
use isdf_agent::sys::settings::Settings;
use isdf_agent::sys::state::Identity;
use isdf_agent::sys::time::backoff;
use isdf_api::root::RootDocument;
use isdf_api::{open_device_config, DeviceConfig, OpenError, Outcome, StatusReport, TrustedKeys};
use tokio::sync::{watch, Semaphore};

use crate::stats::Stats;

/// What every router shares.
pub struct Common {
    /// The controller CA the enrollment listener is trusted with (the
    /// agent's `ca_cert`).
    pub ca_pem: Vec<u8>,
    /// Agent settings as a router would have them: only what enrollment
    /// checks and config trust read.
    pub settings: Settings,
    pub stats: Arc<Stats>,
    /// Long-poll wait asked of the server (the agent's `poll_wait_secs`).
    pub wait: Duration,
    /// Time a simulated apply takes before the status report.
    pub apply_delay: Duration,
    /// Enrollment requests in flight at once.
    pub enrollment_slots: Semaphore,
}

/// Where one router connects, and from which loopback address.
#[derive(Clone)]
pub struct Target {
    pub enrollment_url: String,
    pub device_url: String,
    pub source: Option<IpAddr>,
}

/// The last config a router fetched and verified, and when it arrived.
#[derive(Clone, Copy, Debug)]
pub struct Fetch {
    pub version: u64,
    pub at: Instant,
    /// The first 64 bits of the firewall's digest: equal for equal
    /// content whatever the version (a rollout aborted restores it).
    pub content: u64,
}

/// What the scenario keeps of a running router.
pub struct RouterHandle {
    pub device_id: String,
    pub fetched: watch::Receiver<Option<Fetch>>,
    /// Polls that failed so far (a replica gone, a timeout...).
    pub poll_failures: Arc<AtomicU32>,
}

/// A router's state in its loop.
struct Router {
    common: Arc<Common>,
    device_id: String,
    client: Client,
    trusted: TrustedKeys,
    root: Option<RootDocument>,
    version_floor: Option<u64>,
    enforced: Option<(u64, String)>,
    /// A version refused here: poll for anything newer instead.
    held_back: Option<u64>,
    last_sequence: u64,
    fetched: watch::Sender<Option<Fetch>>,
    poll_failures: Arc<AtomicU32>,
}

/// The kind of a failed request, for the error counts:
/// `<what>:<code>` for a controller refusal, else the transport failure.
pub fn error_kind(what: &str, error: &anyhow::Error) -> String {
    if let Some(e) = error.downcast_ref::<ControllerError>() {
        let code = e
            .code
            .clone()
            .unwrap_or_else(|| e.status.as_str().to_owned());
        return format!("{what}:{code}");
    }
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<reqwest::Error>() {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "transport"
            };
            return format!("{what}:{kind}");
        }
    }
    format!("{what}:other")
}

/// The first 64 bits of a hex digest (0 if it is not hex).
fn digest_prefix(digest: &str) -> u64 {
    digest
        .get(..16)
        .and_then(|prefix| u64::from_str_radix(prefix, 16).ok())
        .unwrap_or(0)
}

fn is_rate_limited(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ControllerError>()
        .is_some_and(|e| e.status == reqwest::StatusCode::TOO_MANY_REQUESTS)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Enrolls one router with `token` and starts its loop; None when it could
/// not enroll (counted in the errors).
pub async fn enroll_and_run(
    common: Arc<Common>,
    target: Target,
    token: String,
) -> Option<RouterHandle> {
    let router = match enroll(&common, &target, &token).await {
        Ok(router) => router,
        Err(e) => {
            common.stats.with(|c| c.error(error_kind("enroll", &e)));
            return None;
        }
    };
    let handle = RouterHandle {
        device_id: router.device_id.clone(),
        fetched: router.fetched.subscribe(),
        poll_failures: Arc::clone(&router.poll_failures),
    };
    tokio::spawn(router.run());
    Some(handle)
}

/// The agent's enrollment without its state directory: the rate limit of
/// the enrollment listener (per source address) is waited out and tried
/// again, anything else ends the router.
async fn enroll(common: &Arc<Common>, target: &Target, token: &str) -> anyhow::Result<Router> {
    let http = enrollment_client(&common.ca_pem, target.source)?;
    let mut refusals = 0u32;
    let (answer, key_pem, took) = loop {
        let slot = common.enrollment_slots.acquire().await?;
        let started = Instant::now();
        let result = request_certificate(&http, &target.enrollment_url, token).await;
        let took = started.elapsed();
        drop(slot);
        match result {
            Ok((answer, key_pem)) => break (answer, key_pem, took),
            Err(e) if is_rate_limited(&e) && refusals < 120 => {
                refusals += 1;
                common.stats.with(|c| c.error("enroll:rate_limited".into()));
                // The listener refills one attempt a second per address.
                tokio::time::sleep(Duration::from_secs(1) + backoff(1, Duration::from_secs(1)))
                    .await;
            }
            Err(e) => return Err(e),
        }
    };
    // The agent's checks, in its order: the answer, then the keys configs
    // are verified with, then a client the certificate must fit.
    check_answer(&common.settings, &answer)?;
    let (trusted, root) = common.settings.config_trust(&answer, &[])?;
    let identity = Identity {
        certificate: answer,
        key_pem,
    };
    let client = Client::from_source(
        &target.device_url,
        identity.certificate.ca_pem.as_bytes(),
        &identity,
        target.source,
    )?;
    common.stats.with(|c| c.enrollment.record(took));
    let (fetched, _) = watch::channel(None);
    Ok(Router {
        common: Arc::clone(common),
        device_id: identity.certificate.device_id.clone(),
        client,
        trusted,
        root,
        version_floor: None,
        enforced: None,
        held_back: None,
        last_sequence: 0,
        fetched,
        poll_failures: Arc::default(),
    })
}

impl Router {
    /// The agent's loop without a kernel, until the task is dropped.
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let enforced = self.enforced.as_ref().map(|(v, _)| *v);
            let poll_for = enforced.max(self.held_back);
            let started = Instant::now();
            let result = self.client.poll(poll_for, self.common.wait).await;
            if failures > 0 {
                self.common.stats.record_reconnect(started, result.is_ok());
            }
            let pace = match result {
                Ok((poll, pace)) => {
                    failures = 0;
                    match poll {
                        Poll::NotModified => self.common.stats.with(|c| c.not_modified += 1),
                        Poll::Newer {
                            envelope,
                            version_hint,
                        } => self.handle_envelope(&envelope, version_hint).await,
                        Poll::TooLarge { size, version_hint } => {
                            let e = OpenError::TooLarge {
                                size: usize::try_from(size).unwrap_or(usize::MAX),
                                limit: isdf_api::MAX_ENVELOPE_BYTES,
                            };
                            self.reject(&e, version_hint).await;
                        }
                    }
                    pace
                }
                Err(e) => {
                    self.common.stats.with(|c| c.error(error_kind("poll", &e)));
                    self.poll_failures.fetch_add(1, Ordering::Relaxed);
                    failures = failures.saturating_add(1);
                    if is_identity_refused(&e) {
                        // As the agent: no retry soon can help (it would
                        // enroll again with a token it had).
                        PERMANENT_FAILURE_RETRY
                    } else {
                        backoff(failures, Duration::from_secs(60))
                    }
                }
            };
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    }

    /// Verifies as the agent does (following the root chain once for an
    /// unknown key), "applies" and reports.
    async fn handle_envelope(&mut self, envelope: &[u8], version_hint: Option<u64>) {
        let arrived = Instant::now();
        let mut opened = self.open(envelope);
        if matches!(&opened, Err(OpenError::UnknownKey(_))) && self.follow_roots().await {
            opened = self.open(envelope);
        }
        let config = match opened {
            Ok(config) => config,
            Err(e) => return self.reject(&e, version_hint).await,
        };
        let version = config.version;
        let digest = config.firewall.digest();
        self.fetched.send_replace(Some(Fetch {
            version,
            at: arrived,
            content: digest_prefix(&digest),
        }));
        self.common.stats.with(|c| c.configs_received += 1);
        if !self.common.apply_delay.is_zero() {
            tokio::time::sleep(self.common.apply_delay).await;
        }
        self.enforced = Some((version, digest));
        self.held_back = None;
        self.report(Outcome::Applied, Some(version), vec![]).await;
    }

    fn open(&self, envelope: &[u8]) -> Result<DeviceConfig, OpenError> {
        let policy = opening_policy(
            &self.device_id,
            self.enforced.as_ref().map(|(v, _)| *v),
            self.version_floor,
            unix_now(),
        );
        open_device_config(envelope, &self.trusted, &policy)
    }

    /// The agent's `follow_roots`: fetch the chain, walk it from the root
    /// held, take the newest's keys and floor.
    async fn follow_roots(&mut self) -> bool {
        let Some(current) = self.root.clone() else {
            return false;
        };
        let chain = match self.client.roots().await {
            Ok(chain) => chain,
            Err(e) => {
                self.common.stats.with(|c| c.error(error_kind("roots", &e)));
                return false;
            }
        };
        let Ok(latest) = current.walk(chain.iter().map(|e| e.as_bytes())) else {
            return false;
        };
        if latest.version <= current.version {
            return false;
        }
        let Ok(keys) = latest.config_keys() else {
            return false;
        };
        if let Some(floor) = latest.config_version_floor {
            self.version_floor = Some(floor);
        }
        self.trusted = keys;
        self.root = Some(latest);
        true
    }

    async fn reject(&mut self, e: &OpenError, version_hint: Option<u64>) {
        self.common.stats.with(|c| c.verification_failure(e.code()));
        self.held_back = version_hint;
        self.report(Outcome::Rejected, None, vec![format!("{}: {e}", e.code())])
            .await;
    }

    /// A status report as the agent makes it; the sequence grows and is at
    /// least the clock in milliseconds, as the agent's does.
    async fn report(&mut self, outcome: Outcome, attempted: Option<u64>, errors: Vec<String>) {
        let now_millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_sequence = self.last_sequence.saturating_add(1).max(now_millis);
        let report = StatusReport {
            sequence: self.last_sequence,
            enforced_version: self.enforced.as_ref().map(|(v, _)| *v),
            enforced_digest: self.enforced.as_ref().map(|(_, d)| d.clone()),
            outcome,
            attempted_version: attempted,
            errors,
            counters: vec![],
            tunnels: vec![],
            backend: "simulated".to_owned(),
            agent_version: concat!("fleet-sim-", env!("CARGO_PKG_VERSION")).to_owned(),
            agent_target: None,
            agent_counters: None,
        };
        self.common.stats.with(|c| c.reports_started += 1);
        let started = Instant::now();
        let result = self.client.report(&report).await;
        let took = started.elapsed();
        self.common.stats.with(|c| {
            c.reports_finished += 1;
            match result {
                Ok(()) => c.status_round_trip.record(took),
                Err(e) => c.error(error_kind("status", &e)),
            }
        });
    }
}
