//! Crash consistency of the controller: the real binary, killed with
//! SIGKILL at random points while it commits a fleet-wide recompile, a
//! batch enrollment, VPN joins and a rollout's waves, then restarted on the
//! same database. After every kill the state the crash left is checked
//! (with the controller down), and after every restart what routers are
//! served: no half-created objects, every change with its audit entry,
//! configs that are the latest committed ones, versions that only grow,
//! rollouts that resume.
//!
//! Each test first runs its operation once unkilled to measure how long it
//! takes, then kills it `ISDF_CRASH_KILLS` times (14 by default; four tests
//! make 56 kills) after a delay drawn uniformly from [0, 1.2 × that]. The
//! delays come from a seeded RNG: the seed is printed, and
//! `ISDF_CRASH_SEED=<seed>` draws the same delays again. A kill may land
//! before the operation's first commit, between its commits or after the
//! last; every case must pass, and the output says how many landed where.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod enrollment;
mod fleet;
mod invariants;
pub mod process;
mod rollout;
mod routers;
mod vpn;
mod world;

/// Seeds the kill delays (any u64); printed by every test.
pub const SEED_ENV: &str = "ISDF_CRASH_SEED";
/// Kills per test (each test is one operation).
pub const KILLS_ENV: &str = "ISDF_CRASH_KILLS";
const DEFAULT_KILLS: usize = 14;
/// Kills are drawn over this many times the unkilled operation's duration,
/// so some land after it committed.
const DELAY_SPAN: f64 = 1.2;
/// Longest an operation may go on after its controller was killed (its
/// calls fail at once: the kernel closed the sockets).
const AFTER_KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a kill landed, from what the database holds after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landed {
    /// Before the operation's first commit: none of it is stored.
    Before,
    /// Between its first and last commit, or after the last commit but
    /// before its answer: part of it is stored, or all of it unacknowledged.
    During,
    /// After its last commit was acknowledged.
    After,
}

struct Run {
    delay: Duration,
    committed: usize,
    acknowledged: usize,
    landed: Landed,
}

/// One test's kills: their delays and where they landed.
pub struct Campaign {
    operation: &'static str,
    /// Commits one operation makes.
    steps: usize,
    seed: u64,
    rng: StdRng,
    pub kills: usize,
    span: Duration,
    runs: Vec<Run>,
    started: Instant,
}

impl Campaign {
    pub fn new(operation: &'static str, steps: usize) -> Self {
        let seed = std::env::var(SEED_ENV)
            .ok()
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| panic!("{SEED_ENV}={s} is not a u64"))
            })
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_nanos() as u64
            });
        let kills = std::env::var(KILLS_ENV)
            .ok()
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| panic!("{KILLS_ENV}={s} is not a count"))
            })
            .unwrap_or(DEFAULT_KILLS);
        // Each test draws its own delays from the one seed.
        let mixed = operation.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        eprintln!(
            "{operation}: seed {seed} ({SEED_ENV}={seed} draws these delays again), {kills} kills"
        );
        Campaign {
            operation,
            steps,
            seed,
            rng: StdRng::seed_from_u64(mixed),
            kills,
            span: Duration::ZERO,
            runs: Vec::new(),
            started: Instant::now(),
        }
    }

    /// The unkilled operation took `took`: kills are drawn over 1.2 × that.
    pub fn calibrate(&mut self, took: Duration) {
        self.span = took.mul_f64(DELAY_SPAN);
        eprintln!(
            "{}: the unkilled operation took {} ms; kills drawn from [0, {} ms]",
            self.operation,
            took.as_millis(),
            self.span.as_millis()
        );
    }

    pub fn next_delay(&mut self) -> Duration {
        assert!(!self.span.is_zero(), "calibrate first");
        self.span.mul_f64(self.rng.gen_range(0.0..=1.0))
    }

    /// Records a kill after `delay`: `committed` of the operation's commits
    /// were stored, `acknowledged` of them answered before the kill.
    pub fn record(&mut self, delay: Duration, committed: usize, acknowledged: usize) -> Landed {
        assert!(
            acknowledged <= committed && committed <= self.steps,
            "{}: {acknowledged} acknowledged, {committed} committed of {} steps",
            self.operation,
            self.steps
        );
        let landed = match committed {
            0 => Landed::Before,
            c if c == self.steps && acknowledged == self.steps => Landed::After,
            _ => Landed::During,
        };
        eprintln!(
            "{}: kill {} after {:>5} ms: {committed}/{} commits stored, {acknowledged} answered: {landed:?}",
            self.operation,
            self.runs.len() + 1,
            delay.as_millis(),
            self.steps
        );
        self.runs.push(Run {
            delay,
            committed,
            acknowledged,
            landed,
        });
        landed
    }

    /// Prints where the kills landed.
    pub fn report(&self) {
        let count = |l: Landed| self.runs.iter().filter(|r| r.landed == l).count();
        let longest = self.runs.iter().map(|r| r.delay).max().unwrap_or_default();
        let partial = self
            .runs
            .iter()
            .filter(|r| r.committed > 0 && r.committed < self.steps)
            .count();
        let unanswered = self
            .runs
            .iter()
            .filter(|r| r.acknowledged < r.committed)
            .count();
        eprintln!(
            "{}: {} kills (seed {}): {} before the first commit, {} during ({partial} with part \
             of the operation stored, {unanswered} with a commit unanswered), {} after; longest \
             delay {} ms; {} s in all",
            self.operation,
            self.runs.len(),
            self.seed,
            count(Landed::Before),
            count(Landed::During),
            count(Landed::After),
            longest.as_millis(),
            self.started.elapsed().as_secs()
        );
        assert_eq!(self.runs.len(), self.kills, "every kill is recorded");
    }
}

/// Waits for an operation cut short by a kill, passing its panic on.
pub async fn finish<T>(task: tokio::task::JoinHandle<T>) -> T {
    match tokio::time::timeout(AFTER_KILL_TIMEOUT, task).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("the operation's task: {e}"),
        Err(_) => panic!("the operation went on {AFTER_KILL_TIMEOUT:?} after the kill"),
    }
}
