//! What the simulated fleet measured: latency histograms (microseconds,
//! three significant digits, so p50/p99/max cost no per-sample memory),
//! counts, errors by kind, reconnections per second, and the process's own
//! RSS, open files and CPU read from `/proc` (of this process, and of the
//! controller processes the caller names).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// One latency distribution.
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Self {
        // 1 µs to one hour; longer samples are clamped to an hour.
        Latencies(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds"))
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    fn millis(&self, quantile: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn max_millis(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count(),
            "p50_ms": self.millis(0.5),
            "p99_ms": self.millis(0.99),
            "max_ms": self.max_millis(),
        })
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} n={:<8} p50={:>9.2} ms  p99={:>9.2} ms  max={:>9.2} ms",
            self.count(),
            self.millis(0.5),
            self.millis(0.99),
            self.max_millis()
        )
    }
}

/// Everything the routers and the scenario count, behind one lock (the
/// runtime has one thread: the lock is never contended, only required by
/// `tokio::spawn`).
pub struct Counts {
    /// Enrollment request to checked answer, per router (the successful try).
    pub enrollment: Latencies,
    /// A status report's request and answer.
    pub status_round_trip: Latencies,
    pub configs_received: u64,
    pub not_modified: u64,
    /// Status reports started and answered (or failed): the summary waits
    /// until they are equal, so every report of the scenario is counted.
    pub reports_started: u64,
    pub reports_finished: u64,
    /// Envelopes `open_device_config` refused, by its code.
    pub verification_failures: BTreeMap<String, u64>,
    /// Failed requests, by kind (`poll:timeout`, `enroll:rate_limited`...).
    pub errors: BTreeMap<String, u64>,
    /// Per second since the run started: polls that were a router's first
    /// attempt after a failed request, each on a new TCP and TLS connection
    /// (the client drops a connection a request failed on), in the second
    /// they started.
    pub reconnects: Vec<ReconnectSecond>,
}

/// Reconnections in one second of the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReconnectSecond {
    pub attempts: u32,
    /// Those answered (a config or a 304), once answered.
    pub succeeded: u32,
}

impl Counts {
    fn new() -> Self {
        Counts {
            enrollment: Latencies::new(),
            status_round_trip: Latencies::new(),
            configs_received: 0,
            not_modified: 0,
            reports_started: 0,
            reports_finished: 0,
            verification_failures: BTreeMap::new(),
            errors: BTreeMap::new(),
            reconnects: Vec::new(),
        }
    }

    pub fn reconnect_attempts(&self) -> u64 {
        self.reconnects.iter().map(|s| u64::from(s.attempts)).sum()
    }

    pub fn reconnect_attempts_peak_per_s(&self) -> u32 {
        self.reconnects
            .iter()
            .map(|s| s.attempts)
            .max()
            .unwrap_or(0)
    }

    pub fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn verification_failure(&mut self, code: &str) {
        *self
            .verification_failures
            .entry(code.to_owned())
            .or_default() += 1;
    }
}

/// The shared counters, and when the run started (the reconnection
/// series counts seconds from it).
pub struct Stats {
    counts: Mutex<Counts>,
    started: Instant,
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            counts: Mutex::new(Counts::new()),
            started: Instant::now(),
        }
    }

    /// Runs `f` on the counters.
    pub fn with<T>(&self, f: impl FnOnce(&mut Counts) -> T) -> T {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The second of the run `at` falls in.
    pub fn second_of(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.started).as_secs() as usize
    }

    /// Counts a poll that reconnected (the first after a failed request)
    /// in the second it `started`.
    pub fn record_reconnect(&self, started: Instant, succeeded: bool) {
        let second = self.second_of(started);
        self.with(|c| {
            if c.reconnects.len() <= second {
                c.reconnects.resize(second + 1, ReconnectSecond::default());
            }
            let slot = &mut c.reconnects[second];
            slot.attempts += 1;
            slot.succeeded += u32::from(succeeded);
        });
    }

    /// The counters a scenario's figures are the difference of.
    pub fn snapshot(&self) -> CounterSnapshot {
        self.with(|c| CounterSnapshot {
            configs_received: c.configs_received,
            not_modified: c.not_modified,
            errors: c.errors.clone(),
        })
    }

    /// Waits (at most `limit`) until every status report started has its
    /// answer.
    pub async fn settle(&self, limit: std::time::Duration) {
        let until = tokio::time::Instant::now() + limit;
        while self.with(|c| c.reports_started != c.reports_finished)
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The counters as JSON (the summary's `counts`).
    pub fn to_json(&self) -> Value {
        self.with(|c| {
            json!({
                "enrollment": c.enrollment.to_json(),
                "status_round_trip": c.status_round_trip.to_json(),
                "configs_received": c.configs_received,
                "not_modified": c.not_modified,
                "verification_failures": c.verification_failures.values().sum::<u64>(),
                "verification_failures_by_code": c.verification_failures,
                "errors": c.errors,
                "reconnect_attempts": c.reconnect_attempts(),
                "reconnect_attempts_peak_per_s": c.reconnect_attempts_peak_per_s(),
            })
        })
    }

    /// The counters as text lines.
    pub fn lines(&self) -> Vec<String> {
        self.with(|c| {
            let errors = if c.errors.is_empty() {
                "none".to_owned()
            } else {
                c.errors
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                c.enrollment.line("enrollment"),
                c.status_round_trip.line("status report round trip"),
                format!(
                    "configs received {}, not modified (304) {}, verification failures {}{}",
                    c.configs_received,
                    c.not_modified,
                    c.verification_failures.values().sum::<u64>(),
                    if c.verification_failures.is_empty() {
                        String::new()
                    } else {
                        format!(" {:?}", c.verification_failures)
                    }
                ),
                format!("errors: {errors}"),
                format!(
                    "reconnections (polls right after a failed request): {}, \
                     at most {} started in a second",
                    c.reconnect_attempts(),
                    c.reconnect_attempts_peak_per_s(),
                ),
            ]
        })
    }
}

/// The running totals at one moment.
#[derive(Clone, Debug)]
pub struct CounterSnapshot {
    pub configs_received: u64,
    pub not_modified: u64,
    pub errors: BTreeMap<String, u64>,
}

impl CounterSnapshot {
    /// What was counted from `earlier` to this snapshot, as JSON: configs
    /// received, polls answered 304, failed requests by kind.
    pub fn since(&self, earlier: &CounterSnapshot) -> Value {
        let errors: BTreeMap<&String, u64> = self
            .errors
            .iter()
            .map(|(kind, n)| (kind, n - earlier.errors.get(kind).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        json!({
            "configs_received": self.configs_received - earlier.configs_received,
            "not_modified": self.not_modified - earlier.not_modified,
            "errors": errors,
        })
    }
}

/// Memory and CPU of one process, from `/proc/<pid>/`.
#[derive(Clone, Copy, Debug)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub open_files: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`: 100 on Linux for
/// every architecture the project runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// Samples a process (`self` or a pid).
pub fn sample(pid: &str) -> Option<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcessSample {
        rss_bytes: rss_kib * 1024,
        cpu_ticks: utime + stime,
        open_files,
    })
}

/// CPU use between two samples taken `over` apart, in percent of one core.
pub fn cpu_percent(before: ProcessSample, after: ProcessSample, over: Duration) -> f64 {
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64;
    100.0 * ticks / TICKS_PER_SEC / over.as_secs_f64().max(1e-9)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
