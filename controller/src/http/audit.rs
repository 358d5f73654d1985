//! The audit trail: who changed what, committed with the change itself, and
//! a tally of what unauthenticated callers were refused.
//!
//! A change and its audit entry are one transaction: [`authorize_and_audit`]
//! puts an [`AuditTrail`] on every mutating operator request, and the
//! handler appends the entry in the transaction of its change with
//! [`AuditTrail::commit`]: both are stored or neither is, and a request whose
//! entry cannot be written changes nothing. A refused request changes
//! nothing, so its entry is appended afterwards by the middleware.
//!
//! Unauthenticated callers (a bad or missing operator token, an unsigned
//! billing webhook) do not get a row each in the append-only log: their
//! refusals are counted per source, kind and reason ([`Refusals`]) and
//! written as one row per tally every [`REFUSAL_FLUSH_EVERY`], and a source
//! that keeps being refused is answered 429 before any work is done.
//!
//! [`authorize_and_audit`]: crate::http::auth::authorize_and_audit

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::db;
use crate::db::audit::{without_nul, NewAuditEntry};
use crate::http::error::{ApiError, ApiResult};
use crate::http::limits::RateLimiter;

/// The audit entry of one mutating operator request, written by its
/// handler inside the transaction of the change.
#[derive(Clone)]
pub struct AuditTrail(Arc<Trail>);

struct Trail {
    actor_id: Uuid,
    actor: String,
    action: String,
    path: String,
    summary: serde_json::Value,
    written: AtomicBool,
    dry_run: bool,
}

impl AuditTrail {
    pub(crate) fn new(
        actor_id: Uuid,
        actor: String,
        action: String,
        path: String,
        summary: serde_json::Value,
    ) -> Self {
        AuditTrail(Arc::new(Trail {
            actor_id,
            actor,
            action,
            path,
            summary,
            written: AtomicBool::new(false),
            dry_run: false,
        }))
    }

    /// The trail of a dry run (`?dry_run=true`): where the real call would
    /// commit, [`AuditTrail::commit`] and [`AuditTrail::append`] roll the
    /// transaction back and answer [`ApiError::DryRun`] instead, so every
    /// check of the real call runs and nothing is stored or published.
    pub(crate) fn for_dry_run(mut self) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("a trail is made a dry run's before it is shared")
            .dry_run = true;
        self
    }

    /// The operator making the change (the name the audit log shows).
    pub fn actor(&self) -> &str {
        &self.0.actor
    }

    pub fn is_dry_run(&self) -> bool {
        self.0.dry_run
    }

    /// Appends the entry in `tx` and commits: the change and its entry are
    /// stored together or not at all. `target` is the id of what the call
    /// created; None takes the id the path names.
    pub async fn commit(
        &self,
        mut tx: Transaction<'_, Postgres>,
        status: StatusCode,
        target: Option<String>,
    ) -> ApiResult<()> {
        self.append(&mut tx, status, target).await?;
        tx.commit()
            .await
            .context("committing a change and its audit entry")?;
        self.0.written.store(true, Ordering::Release);
        Ok(())
    }

    /// Appends the entry in `tx`, whose caller commits it (a change made by
    /// a service that owns its transaction). The entry counts as written
    /// once the caller reports the commit with [`AuditTrail::committed`].
    pub async fn append(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        status: StatusCode,
        target: Option<String>,
    ) -> ApiResult<()> {
        if self.0.dry_run {
            // The caller's `?` drops `tx`, which rolls it back.
            return Err(ApiError::DryRun { status, target });
        }
        let target = target.or_else(|| target_in_path(&self.0.path));
        let entry = self.entry(status, target.as_deref(), self.0.summary.clone());
        db::audit::append(&mut **tx, &entry)
            .await
            .context("appending the audit entry of a change")?;
        Ok(())
    }

    /// Says the transaction [`AuditTrail::append`] wrote in was committed.
    pub fn committed(&self) {
        self.0.written.store(true, Ordering::Release);
    }

    /// Whether the handler committed the entry with its change.
    pub(crate) fn written(&self) -> bool {
        self.0.written.load(Ordering::Acquire)
    }

    /// An entry of this request with the given outcome.
    pub(crate) fn entry<'a>(
        &'a self,
        status: StatusCode,
        target: Option<&'a str>,
        summary: serde_json::Value,
    ) -> NewAuditEntry<'a> {
        NewAuditEntry {
            dry_run: self.0.dry_run,
            actor_id: Some(self.0.actor_id),
            actor: &self.0.actor,
            action: &self.0.action,
            target,
            status: status.as_u16(),
            summary,
        }
    }

    pub(crate) fn action(&self) -> &str {
        &self.0.action
    }

    pub(crate) fn path(&self) -> &str {
        &self.0.path
    }

    pub(crate) fn summary(&self) -> &serde_json::Value {
        &self.0.summary
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuditTrail {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // Put there by `authorize_and_audit` on every mutating call; a
        // handler reached without one must not change anything.
        parts
            .extensions
            .get::<AuditTrail>()
            .cloned()
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("a change was routed outside the audit"))
            })
    }
}

/// The id a path names: `/api/v1/devices/{id}/...` gives `{id}`.
pub(crate) fn target_in_path(path: &str) -> Option<String> {
    path.strip_prefix("/api/v1/")?
        .split('/')
        .nth(1)
        .map(str::to_owned)
}

/// The address a request came from, when its listener records it.
pub fn source_address(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    crate::http::proxy_protocol::ClientAddr::of(extensions).map(|a| a.ip())
}

/// Largest part of a request body kept as the audit summary.
const SUMMARY_BYTES: usize = 2048;

/// A summary of a request body: the JSON itself when small, else its start;
/// NUL replaced, so any body can be recorded.
pub(crate) fn summarize(body: &[u8]) -> serde_json::Value {
    if body.is_empty() {
        return serde_json::Value::Null;
    }
    let summary = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) if body.len() <= SUMMARY_BYTES => value,
        _ => {
            let cut = String::from_utf8_lossy(&body[..body.len().min(SUMMARY_BYTES)]).into_owned();
            serde_json::json!({"truncated": cut, "bytes": body.len()})
        }
    };
    without_nul(summary)
}

/// The audit summary of a binary body (an agent release): its size and
/// SHA-256.
pub(crate) fn summarize_binary(body: &[u8]) -> serde_json::Value {
    use sha2::Digest;
    serde_json::json!({"bytes": body.len(), "sha256": hex::encode(sha2::Sha256::digest(body))})
}

/// How often the tally of refused unauthenticated calls is written.
pub const REFUSAL_FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Distinct (source, kind, reason) tallies kept between two flushes; more
/// sources are counted together under no source.
const MAX_TALLIES: usize = 1024;

/// Refusals of unauthenticated callers: rate limited per source and
/// tallied for the audit log (see the module doc).
pub struct Refusals {
    budget: RateLimiter<IpAddr>,
    tallies: Mutex<HashMap<RefusalKey, Tally>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefusalKey {
    /// The source address (an IPv6 address by its /64: one host has many).
    source: Option<IpAddr>,
    actor: &'static str,
    action: String,
    code: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Copy)]
struct Tally {
    count: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

impl Default for Refusals {
    fn default() -> Self {
        // 20 refusals at once, then one a second, per source.
        Refusals::new(1.0, 20)
    }
}

impl Refusals {
    pub fn new(per_sec: f64, burst: u32) -> Self {
        Refusals {
            budget: RateLimiter::new(per_sec, burst),
            tallies: Mutex::default(),
        }
    }

    /// Answers 429 to a source that used up its refusals, before any work.
    pub fn admit(&self, source: Option<IpAddr>) -> ApiResult<()> {
        let Some(source) = source.map(network_of) else {
            return Ok(());
        };
        self.budget
            .peek(source)
            .map_err(|retry_after| ApiError::TooManyRequests {
                code: "rate_limited",
                message: format!(
                    "too many refused calls from this address; retry in {retry_after} s"
                ),
                retry_after,
            })
    }

    /// Counts one refusal of an unauthenticated call.
    pub fn note(
        &self,
        source: Option<IpAddr>,
        actor: &'static str,
        action: String,
        error: &ApiError,
        now: DateTime<Utc>,
    ) {
        let source = source.map(network_of);
        if let Some(source) = source {
            // Spends the budget `admit` checks; already empty is fine.
            let _ = self.budget.admit(source);
        }
        let (status, code) = error.status_and_code();
        let mut tallies = self.tallies.lock().expect("refusal tallies");
        let mut key = RefusalKey {
            source,
            actor,
            action,
            code,
            status: status.as_u16(),
        };
        if tallies.len() >= MAX_TALLIES && !tallies.contains_key(&key) {
            key.source = None;
        }
        let tally = tallies.entry(key).or_insert(Tally {
            count: 0,
            first: now,
            last: now,
        });
        tally.count += 1;
        tally.last = now;
    }

    /// Writes one audit row per tally and starts new tallies. A failed
    /// write puts the tallies back for the next flush.
    pub async fn flush(&self, pool: &PgPool) -> anyhow::Result<usize> {
        let tallies = std::mem::take(&mut *self.tallies.lock().expect("refusal tallies"));
        if tallies.is_empty() {
            return Ok(0);
        }
        let written = tallies.len();
        let result = async {
            let mut tx = pool.begin().await?;
            for (key, tally) in &tallies {
                let source = key.source.map(|s| s.to_string());
                let entry = NewAuditEntry {
                    dry_run: false,
                    actor_id: None,
                    actor: key.actor,
                    action: &key.action,
                    target: source.as_deref(),
                    status: key.status,
                    summary: serde_json::json!({
                        "refused": tally.count,
                        "code": key.code,
                        "source": source.as_deref().unwrap_or("many sources"),
                        "first_at": tally.first,
                        "last_at": tally.last,
                    }),
                };
                db::audit::append(&mut *tx, &entry).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            let mut current = self.tallies.lock().expect("refusal tallies");
            for (key, tally) in tallies {
                current
                    .entry(key)
                    .and_modify(|t| {
                        t.count += tally.count;
                        t.first = t.first.min(tally.first);
                    })
                    .or_insert(tally);
            }
            return Err(e).context("writing the tally of refused calls to the audit log");
        }
        Ok(written)
    }
}

/// An IPv4 address, or the /64 an IPv6 address is in.
fn network_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Writes the refusal tallies every [`REFUSAL_FLUSH_EVERY`] (a background loop).
pub async fn flush_refusals_loop(refusals: Arc<Refusals>, pool: PgPool) {
    let start = tokio::time::Instant::now() + REFUSAL_FLUSH_EVERY;
    let mut tick = tokio::time::interval_at(start, REFUSAL_FLUSH_EVERY);
    loop {
        tick.tick().await;
        match refusals.flush(&pool).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(
                rows,
                "refused unauthenticated calls written to the audit log"
            ),
            Err(e) => tracing::warn!(error = ?e, "refusal tallies kept for the next flush"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_id_a_path_names() {
        assert_eq!(target_in_path("/api/v1/devices/abc"), Some("abc".into()));
        assert_eq!(
            target_in_path("/api/v1/devices/abc/config"),
            Some("abc".into())
        );
        assert_eq!(target_in_path("/api/v1/services"), None);
        assert_eq!(target_in_path("/ui/login"), None);
    }

    #[test]
    fn summaries_keep_small_json_and_cut_the_rest() {
        assert_eq!(
            summarize(br#"{"name":"a"}"#),
            serde_json::json!({"name": "a"})
        );
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(5000));
        let s = summarize(big.as_bytes());
        assert_eq!(s["bytes"], big.len());
        assert_eq!(s["truncated"].as_str().unwrap().len(), SUMMARY_BYTES);
        assert_eq!(summarize(b""), serde_json::Value::Null);
        assert_eq!(
            summarize(b"{\"reason\":\"a\\u0000b\"}"),
            serde_json::json!({"reason": "a\u{FFFD}b"})
        );
        assert_eq!(summarize(b"x\0y")["truncated"], "x\u{FFFD}y");
    }

    #[test]
    fn refusals_are_tallied_per_source_network_and_then_limited() {
        let refusals = Refusals::new(0.001, 3);
        let now = Utc::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let error = ApiError::Unauthorized;
        for source in [a, b, a] {
            assert!(refusals.admit(Some(source)).is_ok());
            refusals.note(
                Some(source),
                "unauthenticated",
                "GET /x".into(),
                &error,
                now,
            );
        }
        // One /64: three refusals spent its burst.
        assert!(refusals.admit(Some(a)).is_err());
        assert!(refusals
            .admit(Some("2001:db8:0:1::1".parse().unwrap()))
            .is_ok());
        let tallies = refusals.tallies.lock().unwrap();
        assert_eq!(tallies.len(), 1);
        assert_eq!(tallies.values().next().unwrap().count, 3);
    }

    #[test]
    fn tallies_are_bounded() {
        let refusals = Refusals::default();
        let now = Utc::now();
        for i in 0..(MAX_TALLIES as u32 + 100) {
            let source = IpAddr::V4(i.into());
            refusals.note(Some(source), "x", "y".into(), &ApiError::Unauthorized, now);
        }
        let tallies = refusals.tallies.lock().unwrap();
        assert_eq!(tallies.len(), MAX_TALLIES + 1);
        let pooled = tallies
            .iter()
            .find(|(k, _)| k.source.is_none())
            .map(|(_, t)| t.count);
        assert_eq!(pooled, Some(100));
    }
}
