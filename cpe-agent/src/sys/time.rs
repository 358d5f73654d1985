//! The wall clock as the agent reads it, and the retry backoff its loops
//! share.
//!
//! Only the impure edges read the clock: the planners and the classifier take
//! `now` as a parameter, so the same input gives the same output. The agent
//! loop reads it through `Clock`, so tests can step it (a clock jumping an
//! hour back or forth) while time goes on; the monotonic reading beside the
//! wall clock is what shows a step.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The clocks the agent loop reads.
pub trait Clock: Send + Sync {
    /// Unix milliseconds on the wall clock (which NTP or an operator may
    /// step).
    fn unix_millis(&self) -> i64;

    /// Milliseconds on a clock that only goes forward at a steady rate,
    /// from an arbitrary origin.
    fn monotonic_millis(&self) -> i64;

    /// Unix seconds on the wall clock.
    fn unix_now(&self) -> i64 {
        self.unix_millis().div_euclid(1000)
    }
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_millis(&self) -> i64 {
        unix_millis()
    }

    fn monotonic_millis(&self) -> i64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock for tests: time passes when told (`advance`), and the wall
/// clock can be stepped without the monotonic one (`step`).
#[cfg(test)]
pub(crate) struct FakeClock {
    wall: std::sync::atomic::AtomicI64,
    monotonic: std::sync::atomic::AtomicI64,
}

#[cfg(test)]
impl FakeClock {
    pub(crate) fn at(unix_millis: i64) -> std::sync::Arc<FakeClock> {
        std::sync::Arc::new(FakeClock {
            wall: unix_millis.into(),
            monotonic: 0.into(),
        })
    }

    /// `ms` pass, on both clocks.
    pub(crate) fn advance(&self, ms: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.wall.fetch_add(ms, Relaxed);
        self.monotonic.fetch_add(ms, Relaxed);
    }

    /// Unix seconds on the wall clock.
    pub(crate) fn unix_now_for_test(&self) -> i64 {
        Clock::unix_now(self)
    }

    /// The wall clock jumps by `ms` (negative: back).
    pub(crate) fn step(&self, ms: i64) {
        self.wall
            .fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn unix_millis(&self) -> i64 {
        self.wall.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn monotonic_millis(&self) -> i64 {
        self.monotonic.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Unix seconds now (0 on a clock before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix milliseconds now (0 on a clock before 1970).
pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A number in [0, 1) that differs between calls and between routers: std's
/// randomly keyed SipHash over a counter. Good enough for jitter, and it
/// spares the router a random number generator crate (binary size).
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Exponential backoff with full jitter between half and all of the step,
/// so a fleet that lost its controller does not come back in lockstep.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let step = Duration::from_secs(1u64 << failures.min(16).saturating_sub(1)).min(max);
    let jitter = 0.5 + 0.5 * unit_random();
    step.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_spread_over_the_unit_interval() {
        let draws: Vec<f64> = (0..1000).map(|_| unit_random()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((350..650).contains(&low), "{low} of 1000 below one half");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(60);
        for (failures, ceiling) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let d = backoff(failures, max);
            assert!(d <= Duration::from_secs(ceiling), "{failures}: {d:?}");
            assert!(d >= Duration::from_secs(ceiling) / 2, "{failures}: {d:?}");
        }
    }
}
