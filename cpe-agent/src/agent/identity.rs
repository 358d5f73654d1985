//! Who the router is and whom it trusts: the signing keys configs are
//! accepted from (pinned in the settings, or those of the newest root
//! reachable from the enrollment answer's root 1, each step verified), the
//! mutual-TLS client built from the identity, renewal of the certificate two
//! thirds through its life, and enrolling again with `enrollment_token_file`
//! once the certificate expired, the controller forgot the device or it
//! replaced this router's certificate (another router enrolled as it). Losing
//! the certificate never removes rules: a router that can no longer
//! authenticate keeps enforcing what it has.

use std::time::{Duration, Instant};

use isdf_api::root::RootDocument;
use isdf_api::TrustedKeys;

use super::{error_debug, error_failed, warn_failed, Agent};
use crate::controller::client::Client;
use crate::controller::enrollment;
use crate::sys::config_files;
use crate::sys::settings::Settings;
use crate::sys::state::{Identity, StateDir};
use crate::sys::time::backoff;

impl Agent {
    /// The keys configs may be signed with (`Settings::config_trust`), from
    /// the enrollment answer and the roots fetched since.
    pub(super) fn trust(
        settings: &Settings,
        identity: &Identity,
        state: &StateDir,
    ) -> anyhow::Result<(TrustedKeys, Option<RootDocument>)> {
        settings.config_trust(&identity.certificate, &state.roots()?)
    }

    /// After a config signed by an unknown key: fetches the controller's root
    /// chain and, if it verifies from the newest root held, moves to it.
    /// Returns whether the trusted keys changed.
    pub(super) async fn follow_roots(&mut self) -> bool {
        let Some(current) = self.root.clone() else {
            return false;
        };
        let chain = match self.client.roots().await {
            Ok(chain) => chain,
            Err(e) => {
                warn_failed("could not fetch the root chain", &e);
                return false;
            }
        };
        let latest = match current.walk(chain.iter().map(|e| e.as_bytes())) {
            Ok(latest) if latest.version > current.version => latest,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(code = e.code(), error = %e, "refused a root update; trust is unchanged");
                return false;
            }
        };
        let Ok(keys) = latest.config_keys() else {
            return false;
        };
        if let Err(e) = self.state.save_roots(&chain) {
            error_debug("persisting the root chain", &e);
        }
        tracing::info!(
            from = current.version,
            to = latest.version,
            "moved to a new root"
        );
        if let Some(floor) = latest.config_version_floor {
            self.version_floor = Some(floor);
        }
        self.trusted = keys;
        self.root = Some(latest);
        true
    }

    pub(super) fn connect(settings: &Settings, identity: &Identity) -> anyhow::Result<Client> {
        Client::new(
            settings.device_api_url(&identity.certificate),
            identity.certificate.ca_pem.as_bytes(),
            identity,
        )
    }

    /// Switches to a renewed or re-enrolled identity (already persisted).
    fn adopt(&mut self, identity: Identity) -> anyhow::Result<()> {
        let client = Self::connect(&self.settings, &identity)?;
        let (trusted, root) = Self::trust(&self.settings, &identity, &self.state)?;
        if identity.device_id() != self.identity.device_id() {
            // Enrolled again as another device: the enforced config stays in
            // the kernel (and is put back if a new one fails), but its
            // version says nothing about the new device's versions.
            tracing::warn!(
                old = self.identity.device_id(),
                new = identity.device_id(),
                "the device id changed"
            );
        }
        self.client = client;
        // Never step back to an older root than the one already followed.
        if root.as_ref().map(|r| r.version) >= self.root.as_ref().map(|r| r.version) {
            self.trusted = trusted;
            self.root = root;
        }
        self.identity = identity;
        Ok(())
    }

    /// Renews the certificate once it is two thirds through its life. A
    /// failed renewal is retried with backoff; the poll loop goes on
    /// meanwhile. When the certificate has expired (or the controller says
    /// the device is gone) renewal cannot work: the agent says the router
    /// must be enrolled again and, if `enrollment_token_file` is set, tries
    /// that token. The rules in the kernel stay in every case.
    pub(super) async fn maintain_identity(&mut self) {
        let now = self.now_secs();
        if (now < self.identity.certificate.renew_at() && !self.identity_refused)
            || self
                .identity_retry
                .is_some_and(|(_, at)| Instant::now() < at)
        {
            return;
        }
        // Renewal is tried even when the local clock says the certificate
        // has expired: a router's clock can be wrong, the controller's
        // verdict is the one that counts. An identity the controller
        // refused for good (see `run`) is not renewed: it would be refused.
        let error = if self.identity_refused {
            anyhow::anyhow!("the controller refuses this router's certificate")
        } else {
            match enrollment::renew(&self.client, &self.settings, &self.identity).await {
                Ok(identity) => return self.adopted(identity, "renewed the device certificate"),
                Err(e) => e,
            }
        };
        let expired = now > self.identity.certificate.not_after;
        let dead = expired || self.identity_refused || enrollment::is_identity_refused(&error);
        if !dead {
            warn_failed("certificate renewal failed; will retry", &error);
            return self.retry_identity_later(&error);
        }
        tracing::error!(
            device = self.identity.device_id(),
            not_after = self.identity.certificate.not_after,
            error = %format!("{error:#}"),
            "the device certificate has expired or was revoked: the controller refuses this \
             router until it is enrolled again with a new token (`isdf-agent enroll`, or a new \
             token in enrollment_token_file); the enforced rules stay"
        );
        let Some(token) = config_files::enrollment_token(&self.settings) else {
            return self.retry_identity_later(&error);
        };
        let enrolled = match token {
            Ok(token) => enrollment::enroll(&self.settings, &token).await,
            Err(e) => Err(e),
        };
        match enrolled {
            Ok(identity) => self.adopted(identity, "enrolled again"),
            Err(e) => {
                error_failed("enrolling again with enrollment_token_file failed", &e);
                self.retry_identity_later(&e);
            }
        }
    }

    /// How long until `maintain_identity` has something to do.
    pub(super) fn identity_due_in(&self) -> Duration {
        let renew_in = u64::try_from(
            self.identity
                .certificate
                .renew_at()
                .saturating_sub(self.now_secs()),
        )
        .map_or(Duration::ZERO, Duration::from_secs);
        let retry_in = self.identity_retry.map_or(Duration::ZERO, |(_, at)| {
            at.saturating_duration_since(Instant::now())
        });
        renew_in.max(retry_in)
    }

    fn adopted(&mut self, identity: Identity, what: &'static str) {
        let not_after = identity.certificate.not_after;
        match self.adopt(identity) {
            Ok(()) => {
                self.identity_retry = None;
                self.identity_refused = false;
                tracing::info!(device = self.identity.device_id(), not_after, "{what}");
                if self.identity.certificate.renew_at() <= self.now_secs() {
                    // Due again at once: the router's clock is far ahead of
                    // the controller's. Renewing in a loop would not help.
                    tracing::warn!(
                        not_before = self.identity.certificate.not_before,
                        now = self.now_secs(),
                        "the new certificate is already due for renewal; is the clock right?"
                    );
                    let pause = Duration::from_secs(self.settings.max_backoff_secs.max(60));
                    self.identity_retry = Some((0, Instant::now() + pause));
                }
            }
            Err(e) => {
                // Cannot happen for a checked answer; the new identity is
                // persisted, so a restart picks it up.
                error_debug("using the new device certificate", &e);
                self.retry_identity_later(&e);
            }
        }
    }

    fn retry_identity_later(&mut self, error: &anyhow::Error) {
        let failures = self.identity_retry.map_or(0, |(n, _)| n).saturating_add(1);
        let delay = if self.identity_refused || enrollment::is_permanent(error) {
            enrollment::PERMANENT_FAILURE_RETRY
        } else {
            backoff(
                failures,
                Duration::from_secs(self.settings.max_backoff_secs),
            )
        };
        self.identity_retry = Some((failures, Instant::now() + delay));
    }
}
