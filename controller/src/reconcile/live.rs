//! Live updates for the dashboard: a broadcast hub that every change in the
//! controller notifies, and that each `/api/v1/stream` connection (Server-Sent
//! Events) follows. What is notified here is also handed to the other
//! replicas (`cluster::forward_live`), and what they notify is delivered
//! here, so a page follows the whole fleet whichever replica serves it.
//!
//! Notifications carry only what changed (a topic and an id), never data:
//! the page refetches what it shows through the same API, with the same
//! role checks. Sending never blocks and never fails; a slow listener that
//! falls behind is told to refetch everything (see [`Change::Resync`]).

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::db::bus::LiveTopic;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A router reported its status (or was added or removed).
    Device(Uuid),
    /// A rollout moved: a wave released or passed, paused, resumed, aborted,
    /// or its counts changed. The rollout code calls
    /// `state.live.notify(Topic::Rollout(id))` after each committed change.
    Rollout(Uuid),
    /// A router's signed config was published.
    Config(Uuid),
    /// An entry was appended to the audit log.
    Audit,
    /// Anything may have changed (this replica lost touch with the others
    /// for a while): refetch everything.
    Everything,
}

impl Topic {
    /// The topic as the replicas' bus carries it (None: this replica's own).
    pub fn on_the_bus(self) -> Option<LiveTopic> {
        match self {
            Topic::Device(id) => Some(LiveTopic::Device(id)),
            Topic::Rollout(id) => Some(LiveTopic::Rollout(id)),
            Topic::Config(id) => Some(LiveTopic::Config(id)),
            Topic::Audit => Some(LiveTopic::Audit),
            Topic::Everything => None,
        }
    }
}

impl From<LiveTopic> for Topic {
    fn from(topic: LiveTopic) -> Self {
        match topic {
            LiveTopic::Device(id) => Topic::Device(id),
            LiveTopic::Rollout(id) => Topic::Rollout(id),
            LiveTopic::Config(id) => Topic::Config(id),
            LiveTopic::Audit => Topic::Audit,
        }
    }
}

/// One event on the stream: `{"topic": "device", "id": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Change {
    pub topic: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
}

impl Change {
    /// Sent when a listener missed notifications: refetch everything.
    pub const RESYNC: Change = Change {
        topic: "resync",
        id: None,
    };
}

impl From<Topic> for Change {
    fn from(topic: Topic) -> Self {
        let (topic, id) = match topic {
            Topic::Device(id) => ("device", Some(id)),
            Topic::Rollout(id) => ("rollout", Some(id)),
            Topic::Config(id) => ("config", Some(id)),
            Topic::Audit => ("audit", None),
            Topic::Everything => return Change::RESYNC,
        };
        Change { topic, id }
    }
}

/// Notifications kept for a listener that is momentarily behind; beyond
/// that it gets one resync instead.
const BACKLOG: usize = 1024;

/// Topics waiting to be handed to the other replicas; beyond that they are
/// dropped (their pages refetch at the next change anyway).
const OUTBOX: usize = 4096;

/// The hub. Cheap to notify with nobody listening (one lock, no allocation
/// kept).
pub struct LiveUpdates {
    sender: broadcast::Sender<Topic>,
    /// To the other replicas (none in a hub of its own).
    outbox: Option<mpsc::Sender<LiveTopic>>,
}

impl Default for LiveUpdates {
    fn default() -> Self {
        LiveUpdates {
            sender: broadcast::channel(BACKLOG).0,
            outbox: None,
        }
    }
}

impl LiveUpdates {
    /// A hub that also hands what it is told to the other replicas: through
    /// the receiver, which `cluster::forward_live` drains.
    pub fn shared() -> (Self, mpsc::Receiver<LiveTopic>) {
        let (outbox, receiver) = mpsc::channel(OUTBOX);
        let hub = LiveUpdates {
            outbox: Some(outbox),
            ..LiveUpdates::default()
        };
        (hub, receiver)
    }

    /// Tells every listener, here and on the other replicas, that `topic`
    /// changed. Call it after the change is committed, so a listener that
    /// refetches sees it.
    pub fn notify(&self, topic: Topic) {
        self.deliver(topic);
        if let (Some(outbox), Some(topic)) = (&self.outbox, topic.on_the_bus()) {
            // Full or closed: the other replicas' pages miss this one.
            let _ = outbox.try_send(topic);
        }
    }

    /// Tells this replica's listeners only (what another replica notified).
    pub fn deliver(&self, topic: Topic) {
        // An error only means nobody is listening.
        let _ = self.sender.send(topic);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Topic> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_serialize_as_topic_and_id() {
        let id = Uuid::nil();
        assert_eq!(
            serde_json::to_value(Change::from(Topic::Rollout(id))).unwrap(),
            serde_json::json!({"topic": "rollout", "id": id})
        );
        assert_eq!(
            serde_json::to_value(Change::from(Topic::Audit)).unwrap(),
            serde_json::json!({"topic": "audit"})
        );
    }

    #[test]
    fn everything_is_a_resync_and_stays_on_its_replica() {
        assert_eq!(Change::from(Topic::Everything), Change::RESYNC);
        assert_eq!(Topic::Everything.on_the_bus(), None);
        let id = Uuid::nil();
        for topic in [
            Topic::Device(id),
            Topic::Rollout(id),
            Topic::Config(id),
            Topic::Audit,
        ] {
            assert_eq!(topic.on_the_bus().map(Topic::from), Some(topic));
        }
    }

    #[tokio::test]
    async fn what_is_notified_goes_to_the_other_replicas_and_what_they_notify_does_not() {
        let (live, mut outbox) = LiveUpdates::shared();
        let mut here = live.subscribe();
        live.notify(Topic::Audit);
        live.deliver(Topic::Rollout(Uuid::nil()));
        assert_eq!(here.recv().await.unwrap(), Topic::Audit);
        assert_eq!(here.recv().await.unwrap(), Topic::Rollout(Uuid::nil()));
        assert_eq!(outbox.recv().await, Some(LiveTopic::Audit));
        assert!(outbox.try_recv().is_err());
    }

    #[tokio::test]
    async fn listeners_get_what_is_notified_after_they_subscribe() {
        let live = LiveUpdates::default();
        live.notify(Topic::Audit);
        let mut rx = live.subscribe();
        live.notify(Topic::Device(Uuid::nil()));
        assert_eq!(rx.recv().await.unwrap(), Topic::Device(Uuid::nil()));
    }
}
