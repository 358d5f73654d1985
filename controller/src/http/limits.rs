//! Limits on the device listener: a request rate per device and a bound on
//! its concurrent long polls, both keyed on the device identity rather than
//! the source address (home routers share addresses behind carrier-grade
//! NAT), plus the timeouts and poll pacing both listeners use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use uuid::Uuid;

use crate::http::error::ApiError;

/// Largest operator request body (a service spec with 10,000 flows fits).
pub const OPERATOR_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Largest billing webhook body (one payment).
pub const WEBHOOK_BODY_LIMIT: usize = 64 * 1024;
/// Largest device request body (a status report).
pub const DEVICE_BODY_LIMIT: usize = 256 * 1024;
/// Largest enrollment request (a token and a CSR).
pub const ENROLLMENT_BODY_LIMIT: usize = 16 * 1024;
/// Portal forms are tiny.
pub const PORTAL_BODY_LIMIT: usize = 4 * 1024;
/// The one operator route whose body may be larger: an agent release's
/// binary (the audit keeps its size and digest, not its bytes).
pub const RELEASE_UPLOAD_ROUTE: &str = "/api/v1/agent-releases/{id}/binary";
/// Largest agent release binary uploaded there.
pub const RELEASE_BODY_LIMIT: usize = isdf_api::release::MAX_RELEASE_BYTES as usize;

/// Tunable limits; the defaults suit a large fleet of home routers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
    /// A request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// Sustained device API requests per second per device.
    pub device_requests_per_sec: f64,
    /// Requests a device may make in a burst above the sustained rate.
    pub device_burst: u32,
    /// Long polls one device may hold open at once.
    pub max_polls_per_device: u32,
    /// Upper bound for a long poll's wait.
    pub max_poll_wait: Duration,
    /// How long an agent waits before its next poll; jittered by up to half.
    pub poll_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            device_requests_per_sec: 2.0,
            device_burst: 20,
            max_polls_per_device: 2,
            max_poll_wait: Duration::from_secs(60),
            poll_delay: Duration::ZERO,
        }
    }
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// A token bucket per key: `burst` requests at once, then `rate` per second.
pub struct RateLimiter<K> {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    pub fn new(rate: f64, burst: u32) -> Self {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `key`, or says in how many seconds one is available.
    pub fn admit(&self, key: K) -> Result<(), u64> {
        self.refill(key, true)
    }

    /// Whether `key` has a token, without taking it.
    pub fn peek(&self, key: K) -> Result<(), u64> {
        self.refill(key, false)
    }

    fn refill(&self, key: K, take: bool) -> Result<(), u64> {
        let now = Instant::now();
        let burst = f64::from(self.burst);
        let mut buckets = self.buckets.lock().expect("lock");
        // Bound the memory an attacker cycling keys can make us hold.
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.refilled).as_secs_f64() * self.rate < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.refilled).as_secs_f64() * self.rate)
            .min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            return Ok(());
        }
        Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
    }
}

/// Admission for device API calls.
pub struct DeviceGate {
    limits: Limits,
    rate: RateLimiter<Uuid>,
    polls: Mutex<HashMap<Uuid, u32>>,
}

/// Admission for enrollment: per source address and per token, so neither
/// guessing tokens from one place nor hammering one token gets far.
pub struct EnrollmentGate {
    per_address: RateLimiter<std::net::IpAddr>,
    per_token: RateLimiter<[u8; 32]>,
}

impl Default for EnrollmentGate {
    fn default() -> Self {
        EnrollmentGate {
            per_address: RateLimiter::new(1.0, 10),
            per_token: RateLimiter::new(0.1, 3),
        }
    }
}

impl EnrollmentGate {
    pub fn admit(&self, address: std::net::IpAddr, token_hash: [u8; 32]) -> Result<(), ApiError> {
        self.per_address
            .admit(address)
            .and_then(|()| self.per_token.admit(token_hash))
            .map_err(|retry_after| ApiError::TooManyRequests {
                code: "rate_limited",
                message: format!("too many enrollment attempts; retry in {retry_after} s"),
                retry_after,
            })
    }
}

/// Holds one of a device's long-poll slots until dropped.
pub struct PollSlot {
    gate: Arc<DeviceGate>,
    device: Uuid,
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        let mut polls = self.gate.polls.lock().expect("lock");
        if let Some(n) = polls.get_mut(&self.device) {
            *n -= 1;
            if *n == 0 {
                polls.remove(&self.device);
            }
        }
    }
}

impl DeviceGate {
    pub fn new(limits: Limits) -> Self {
        DeviceGate {
            rate: RateLimiter::new(limits.device_requests_per_sec, limits.device_burst),
            limits,
            polls: Mutex::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes one token from the device's bucket, or refuses with 429.
    pub fn admit(&self, device: Uuid) -> Result<(), ApiError> {
        self.rate
            .admit(device)
            .map_err(|retry_after| ApiError::TooManyRequests {
                code: "rate_limited",
                message: format!("too many requests from this device; retry in {retry_after} s"),
                retry_after,
            })
    }

    /// Long polls the device holds open now.
    pub fn polls_held(&self, device: Uuid) -> usize {
        self.polls
            .lock()
            .expect("lock")
            .get(&device)
            .map_or(0, |&open| open as usize)
    }

    /// Long polls held open now, all devices together.
    pub fn all_polls_held(&self) -> u64 {
        let polls = self.polls.lock().expect("lock");
        polls.values().map(|&open| u64::from(open)).sum()
    }

    /// Takes a long-poll slot, or refuses with 429 when the device already
    /// holds the maximum.
    pub fn begin_poll(self: &Arc<Self>, device: Uuid) -> Result<PollSlot, ApiError> {
        let mut polls = self.polls.lock().expect("lock");
        let open = polls.entry(device).or_insert(0);
        if *open >= self.limits.max_polls_per_device {
            return Err(ApiError::TooManyRequests {
                code: "too_many_polls",
                message: format!("this device already holds {open} long polls"),
                retry_after: 1,
            });
        }
        *open += 1;
        Ok(PollSlot {
            gate: self.clone(),
            device,
        })
    }

    /// The wait a poll gets: what the agent asked for, capped, minus up to a
    /// fifth at random so a fleet's reconnections spread out.
    pub fn poll_wait(&self, requested: Duration) -> Duration {
        let capped = requested.min(self.limits.max_poll_wait);
        capped.mul_f64(rand::thread_rng().gen_range(0.8..=1.0))
    }

    /// The delay before the agent's next poll, jittered by up to half.
    pub fn next_poll_delay(&self) -> Duration {
        let base = self.limits.poll_delay;
        base + base.mul_f64(rand::thread_rng().gen_range(0.0..=0.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(rate: f64, burst: u32, polls: u32) -> Arc<DeviceGate> {
        Arc::new(DeviceGate::new(Limits {
            device_requests_per_sec: rate,
            device_burst: burst,
            max_polls_per_device: polls,
            ..Limits::default()
        }))
    }

    #[test]
    fn a_device_gets_its_burst_then_is_limited_and_others_are_not() {
        let g = gate(0.001, 3, 2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for _ in 0..3 {
            g.admit(a).unwrap();
        }
        assert!(matches!(
            g.admit(a),
            Err(ApiError::TooManyRequests {
                code: "rate_limited",
                ..
            })
        ));
        g.admit(b).unwrap();
    }

    #[test]
    fn long_poll_slots_are_bounded_and_released() {
        let g = gate(1.0, 1, 2);
        let d = Uuid::new_v4();
        let first = g.begin_poll(d).unwrap();
        let _second = g.begin_poll(d).unwrap();
        assert!(g.begin_poll(d).is_err());
        drop(first);
        let _third = g.begin_poll(d).unwrap();
    }

    #[test]
    fn waits_are_capped_and_jittered_down() {
        let g = gate(1.0, 1, 1);
        for _ in 0..100 {
            let w = g.poll_wait(Duration::from_secs(600));
            assert!(
                w <= Duration::from_secs(60) && w >= Duration::from_secs(48),
                "{w:?}"
            );
        }
    }
}
