//! Live updates for the dashboard: a broadcast hub that every change in the
//! controller notifies, and that each `/api/v1/stream` connection (Server-Sent
//! Events) follows.
//!
//! Notifications carry only what changed (a topic and an id), never data:
//! the page refetches what it shows through the same API, with the same
//! role checks. Sending never blocks and never fails; a slow listener that
//! falls behind is told to refetch everything (see [`Change::Resync`]).

use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

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
        };
        Change { topic, id }
    }
}

/// Notifications kept for a listener that is momentarily behind; beyond
/// that it gets one resync instead.
const BACKLOG: usize = 1024;

/// The hub. Cheap to notify with nobody listening (one lock, no allocation
/// kept).
pub struct LiveUpdates {
    sender: broadcast::Sender<Topic>,
}

impl Default for LiveUpdates {
    fn default() -> Self {
        LiveUpdates {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl LiveUpdates {
    /// Tells every listener that `topic` changed. Call it after the change
    /// is committed, so a listener that refetches sees it.
    pub fn notify(&self, topic: Topic) {
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

    #[tokio::test]
    async fn listeners_get_what_is_notified_after_they_subscribe() {
        let live = LiveUpdates::default();
        live.notify(Topic::Audit);
        let mut rx = live.subscribe();
        live.notify(Topic::Device(Uuid::nil()));
        assert_eq!(rx.recv().await.unwrap(), Topic::Device(Uuid::nil()));
    }
}
