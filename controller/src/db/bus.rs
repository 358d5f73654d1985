//! The replicas' bus: PostgreSQL `NOTIFY` on one channel. What a replica
//! changes, the others hear of within milliseconds, whichever replica a
//! router or an operator reached.
//!
//! A message about stored state (new configs, a status report, a deleted
//! device) is sent inside the transaction that stores it: PostgreSQL
//! delivers it at commit, in commit order, and never for a change rolled
//! back. The dashboard's live topics are sent after their commit, a batch at
//! a time (see `cluster::forward_live`). A notification may still be lost
//! to a listener that was disconnected; each replica then reloads what it
//! may have missed (`cluster::follow`), so nothing depends on every message
//! arriving.
//!
//! A payload is one line of text: the sender's replica id (so a replica
//! skips its own), a kind and its fields, at most [`MAX_PAYLOAD`] bytes
//! (PostgreSQL's limit is 8,000); a long list is split over several.

use std::fmt::Write;

use sqlx::postgres::PgListener;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// The one channel every replica listens on.
pub const CHANNEL: &str = "isdf_fleet";

/// Longest payload sent.
pub const MAX_PAYLOAD: usize = 7_900;

/// Which replica sent a message: random per process start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplicaId(pub u64);

impl ReplicaId {
    pub fn random() -> Self {
        ReplicaId(rand::random())
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A dashboard topic as the bus carries it (`reconcile::live::Topic`
/// without the replica's own `Resync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveTopic {
    Device(Uuid),
    Rollout(Uuid),
    Config(Uuid),
    Audit,
}

/// What one replica tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// These devices' configs were stored at these versions.
    Configs(Vec<(Uuid, u64)>),
    /// A device reported its status; the version it enforces, if any.
    Status { device: Uuid, enforced: Option<u64> },
    /// These devices were deleted.
    Removed(Vec<Uuid>),
    /// Dashboard topics that changed.
    Live(Vec<LiveTopic>),
}

impl Message {
    /// The payloads that carry this message from `sender`, each at most
    /// [`MAX_PAYLOAD`] bytes (none for an empty list).
    pub fn encode(&self, sender: ReplicaId) -> Vec<String> {
        let (kind, items): (&str, Vec<String>) = match self {
            Message::Configs(configs) => (
                "c",
                configs.iter().map(|(d, v)| format!("{d}:{v}")).collect(),
            ),
            Message::Status { device, enforced } => (
                "s",
                vec![match enforced {
                    Some(v) => format!("{device}:{v}"),
                    None => device.to_string(),
                }],
            ),
            Message::Removed(devices) => ("r", devices.iter().map(Uuid::to_string).collect()),
            Message::Live(topics) => ("l", topics.iter().map(live_item).collect()),
        };
        let head = format!("{sender} {kind}");
        let mut payloads = Vec::new();
        let mut current = head.clone();
        for item in items {
            if current.len() + 1 + item.len() > MAX_PAYLOAD && current.len() > head.len() {
                payloads.push(std::mem::replace(&mut current, head.clone()));
            }
            let _ = write!(current, " {item}");
        }
        if current.len() > head.len() {
            payloads.push(current);
        }
        payloads
    }

    /// A payload read back: its sender and message; None for anything else
    /// (another version's message is skipped, never misread).
    pub fn decode(payload: &str) -> Option<(ReplicaId, Message)> {
        let mut words = payload.split(' ');
        let sender = ReplicaId(u64::from_str_radix(words.next()?, 16).ok()?);
        let kind = words.next()?;
        let message = match kind {
            "c" => Message::Configs(words.map(device_version).collect::<Option<_>>()?),
            "s" => {
                let item = words.next()?;
                let (device, enforced) = match item.split_once(':') {
                    Some((d, v)) => (d.parse().ok()?, Some(v.parse().ok()?)),
                    None => (item.parse().ok()?, None),
                };
                Message::Status { device, enforced }
            }
            "r" => Message::Removed(words.map(|w| w.parse().ok()).collect::<Option<_>>()?),
            "l" => Message::Live(words.map(parse_live).collect::<Option<_>>()?),
            _ => return None,
        };
        Some((sender, message))
    }
}

fn device_version(item: &str) -> Option<(Uuid, u64)> {
    let (device, version) = item.split_once(':')?;
    Some((device.parse().ok()?, version.parse().ok()?))
}

fn live_item(topic: &LiveTopic) -> String {
    match topic {
        LiveTopic::Device(id) => format!("d:{id}"),
        LiveTopic::Rollout(id) => format!("r:{id}"),
        LiveTopic::Config(id) => format!("c:{id}"),
        LiveTopic::Audit => "a".to_owned(),
    }
}

fn parse_live(item: &str) -> Option<LiveTopic> {
    if item == "a" {
        return Some(LiveTopic::Audit);
    }
    let (kind, id) = item.split_once(':')?;
    let id = id.parse().ok()?;
    match kind {
        "d" => Some(LiveTopic::Device(id)),
        "r" => Some(LiveTopic::Rollout(id)),
        "c" => Some(LiveTopic::Config(id)),
        _ => None,
    }
}

/// Sends `message` from `sender`: inside a transaction, at its commit.
pub async fn send(
    db: &mut sqlx::PgConnection,
    sender: ReplicaId,
    message: &Message,
) -> Result<(), sqlx::Error> {
    for payload in message.encode(sender) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut *db)
            .await?;
    }
    Ok(())
}

/// Sends `message` at once, outside any transaction.
pub async fn send_now(
    db: impl PgExecutor<'_> + Copy,
    sender: ReplicaId,
    message: &Message,
) -> Result<(), sqlx::Error> {
    let payloads = message.encode(sender);
    if payloads.is_empty() {
        return Ok(());
    }
    // One statement for every payload: they arrive together.
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(payloads)
        .execute(db)
        .await
        .map(drop)
}

/// A connection listening on the bus and on `also` (other channels).
pub async fn listen(pool: &PgPool, also: &[&str]) -> Result<PgListener, sqlx::Error> {
    // On a lost connection, `try_recv` listens again on a new one, then
    // gives None: the follower then reloads what it may have missed.
    let mut listener = PgListener::connect_with(pool).await?;
    let channels: Vec<&str> = std::iter::once(CHANNEL)
        .chain(also.iter().copied())
        .collect();
    listener.listen_all(channels).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn every_message_reads_back_from_its_payloads() {
        let sender = ReplicaId(0xfeed_0000_0000_0001);
        for message in [
            Message::Configs(vec![(id(1), 3), (id(2), u64::MAX)]),
            Message::Status {
                device: id(3),
                enforced: Some(7),
            },
            Message::Status {
                device: id(3),
                enforced: None,
            },
            Message::Removed(vec![id(4), id(5)]),
            Message::Live(vec![
                LiveTopic::Device(id(6)),
                LiveTopic::Rollout(id(7)),
                LiveTopic::Config(id(8)),
                LiveTopic::Audit,
            ]),
        ] {
            let payloads = message.encode(sender);
            assert_eq!(payloads.len(), 1, "{message:?}");
            assert_eq!(
                Message::decode(&payloads[0]),
                Some((sender, message.clone()))
            );
        }
    }

    #[test]
    fn a_long_list_is_split_into_payloads_postgresql_takes() {
        let sender = ReplicaId(1);
        let configs: Vec<(Uuid, u64)> = (0..1_000).map(|n| (id(n), n as u64 + 1)).collect();
        let payloads = Message::Configs(configs.clone()).encode(sender);
        assert!(payloads.len() > 1);
        let mut read = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            let Some((from, Message::Configs(part))) = Message::decode(payload) else {
                panic!("{payload}");
            };
            assert_eq!(from, sender);
            read.extend(part);
        }
        assert_eq!(read, configs);
        assert!(Message::Configs(vec![]).encode(sender).is_empty());
    }

    #[test]
    fn anything_else_is_skipped_not_misread() {
        for payload in [
            "",
            "zz c",
            "1 x 00000000-0000-0000-0000-000000000001",
            "1 c 00000000-0000-0000-0000-000000000001",
            "1 c nope:1",
            "1 s",
            "1 l q:00000000-0000-0000-0000-000000000001",
        ] {
            assert_eq!(Message::decode(payload), None, "{payload:?}");
        }
    }
}
