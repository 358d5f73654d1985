//! Following the other replicas: one listening connection per replica on
//! the replicas' bus (and the device certificates' channel), what it hears
//! applied to this replica's cache (new config versions wake the polls
//! held here, which read the envelope from the database), and a catch-up
//! from the database every
//! time the connection is made, since a notification sent while a replica
//! was not listening is lost. Also the sending side of the dashboard's live
//! topics ([`forward_live`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::db;
use crate::db::bus::{LiveTopic, Message, ReplicaId};
use crate::reconcile::config_cache::ConfigCache;
use crate::reconcile::live::{LiveUpdates, Topic};
use crate::rollout::driver::Rollouts;
use crate::trust::device_certificates;

/// How long the live topics of one replica are gathered before they are
/// sent to the others in one notification.
const FORWARD_EVERY: Duration = Duration::from_millis(50);
/// Most topics in one forwarded batch.
const MAX_FORWARDED: usize = 2_000;

/// What a replica needs to follow the others.
pub struct Follower {
    pub pool: PgPool,
    pub replica: ReplicaId,
    pub cache: Arc<ConfigCache>,
    pub live: Arc<LiveUpdates>,
    pub rollouts: Arc<Rollouts>,
}

/// What catching up found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CaughtUp {
    pub configs: usize,
    pub removed: usize,
}

impl Follower {
    /// Listens, catches up, applies what it hears; on a lost connection,
    /// listens again and catches up again (with a bounded backoff while
    /// the database is away). Runs until aborted.
    pub async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            if failures > 0 {
                // 0.5 s, 1 s, ... at most 30 s.
                let delay =
                    Duration::from_millis(500 << failures.min(6)).min(Duration::from_secs(30));
                tokio::time::sleep(delay).await;
            }
            let mut listener =
                match db::bus::listen(&self.pool, &[device_certificates::CHANNEL]).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(error = %e, "listening to the other replicas; retrying");
                        continue;
                    }
                };
            loop {
                // Listening first: what commits from now on is heard, what
                // committed before is in the database.
                match self.catch_up().await {
                    Ok(caught) if caught != CaughtUp::default() => {
                        tracing::info!(
                            configs = caught.configs,
                            removed = caught.removed,
                            "caught up with the other replicas"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(error = ?e, "catching up with the other replicas; retrying");
                        break;
                    }
                }
                failures = 0;
                if let Err(e) = self.hear_until_lost(&mut listener).await {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "hearing the other replicas; listening again");
                    break;
                }
            }
        }
    }

    /// Applies what arrives until the connection is lost (it then listens
    /// again on a new one) or something heard could not be applied: Ok,
    /// and the caller catches up. Err when listening again failed.
    async fn hear_until_lost(&self, listener: &mut PgListener) -> Result<(), sqlx::Error> {
        loop {
            let Some(notification) = listener.try_recv().await? else {
                tracing::warn!("lost the connection hearing the other replicas; catching up");
                return Ok(());
            };
            let heard = if notification.channel() == device_certificates::CHANNEL {
                match notification.payload().parse::<Uuid>() {
                    Ok(device) => device_certificates::refresh(&self.pool, &self.cache, device)
                        .await
                        .context("reloading a device's certificates"),
                    Err(_) => Ok(()),
                }
            } else {
                match Message::decode(notification.payload()) {
                    Some((sender, message)) if sender != self.replica => self.hear(message).await,
                    _ => Ok(()),
                }
            };
            if let Err(e) = heard {
                tracing::warn!(error = ?e, "applying what another replica did; catching up");
                return Ok(());
            }
        }
    }

    /// Applies one message from another replica.
    async fn hear(&self, message: Message) -> anyhow::Result<()> {
        match message {
            Message::Configs(versions) => {
                for (device, version) in versions {
                    self.announce(device, version).await?;
                }
            }
            Message::Status { device, enforced } => {
                if let Some(version) = enforced {
                    self.cache.report_enforced(device, version);
                }
                self.rollouts.nudge();
            }
            Message::Removed(devices) => {
                for device in devices {
                    self.cache.remove_device(device);
                }
            }
            Message::Live(topics) => {
                for topic in topics {
                    self.live.deliver(Topic::from(topic));
                }
            }
        }
        Ok(())
    }

    /// Another replica stored `version` for `device`: polls waiting here
    /// wake and read it from the database. A device new here gets its
    /// certificates too.
    async fn announce(&self, device: Uuid, version: u64) -> anyhow::Result<()> {
        let new_here = !self.cache.contains(device);
        self.cache.announce(device, version);
        if new_here {
            device_certificates::refresh(&self.pool, &self.cache, device)
                .await
                .context("loading a new device's certificates")?;
        }
        Ok(())
    }

    /// Brings this replica up to the database: devices deleted or added,
    /// configs newer than those served, certificates, the versions routers
    /// report enforcing; then the rollout loop looks again and every page
    /// refetches.
    pub async fn catch_up(&self) -> anyhow::Result<CaughtUp> {
        let in_database: HashSet<Uuid> = db::devices::all_ids(&self.pool)
            .await
            .context("listing devices")?
            .into_iter()
            .collect();
        let mut caught = CaughtUp::default();
        for device in self.cache.device_ids() {
            if !in_database.contains(&device) {
                self.cache.remove_device(device);
                caught.removed += 1;
            }
        }
        for device in &in_database {
            self.cache.add_device(*device);
        }
        for (device, version) in db::configs::all_versions(&self.pool)
            .await
            .context("listing config versions")?
        {
            let Ok(version) = u64::try_from(version) else {
                continue;
            };
            if self.cache.version(device) < Some(version) {
                self.announce(device, version).await?;
                caught.configs += 1;
            }
        }
        device_certificates::load_all(&self.pool, &self.cache)
            .await
            .context("loading device certificates")?;
        for (device, version) in db::status::enforced_versions(&self.pool)
            .await
            .context("loading the versions routers enforce")?
        {
            if let Ok(version) = u64::try_from(version) {
                self.cache.report_enforced(device, version);
            }
        }
        self.rollouts.nudge();
        self.live.deliver(Topic::Everything);
        Ok(caught)
    }
}

/// Sends this replica's dashboard topics to the others, gathered for
/// [`FORWARD_EVERY`] into one notification (outside any transaction: they
/// are told after their change committed). Runs until the hub is dropped.
pub async fn forward_live(pool: PgPool, replica: ReplicaId, mut outbox: mpsc::Receiver<LiveTopic>) {
    while let Some(first) = outbox.recv().await {
        let mut topics = vec![first];
        let mut seen = HashSet::from([first]);
        let deadline = tokio::time::Instant::now() + FORWARD_EVERY;
        while topics.len() < MAX_FORWARDED {
            match tokio::time::timeout_at(deadline, outbox.recv()).await {
                Ok(Some(topic)) => {
                    if seen.insert(topic) {
                        topics.push(topic);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(e) = db::bus::send_now(&pool, replica, &Message::Live(topics)).await {
            // The other replicas' pages miss these; they refetch at the next.
            tracing::warn!(error = %e, "telling the other replicas' dashboards");
        }
    }
}
