//! The wall clock as the agent reads it, and the retry backoff its loops
//! share.
//!
//! Only the impure edges read the clock: the planners and the classifier take
//! `now` as a parameter, so the same input gives the same output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
