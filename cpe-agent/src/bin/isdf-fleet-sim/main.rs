//! `isdf-fleet-sim`: N simulated routers in one process and one thread,
//! against a real controller (or replicas, or a load balancer in front of
//! them), to measure what a fleet sees: enrollment, a change reaching one
//! router, a change reaching all of them, a rollout, the operator's pages,
//! a database restart and a replica killed under load, and what idle long
//! polls cost. The fleet is enrolled once; the scenarios asked for run on
//! it one after another.
//!
//! Each router is a distinct TLS client identity with its own key, enrolled
//! with a token of an operator's batch, and verifies every envelope with the
//! agent's own code (`router.rs`); nothing touches a kernel. It is a
//! benchmark tool, not shipped to routers, and it targets this machine only:
//! loopback addresses unless `--allow-non-loopback` (the project's own test
//! namespaces), bounded by `--duration` and `--routers`.
//!
//! Docs: docs/benchmarks.md, "Fleet simulator"; `scripts/fleet-bench` runs it.

mod operator;
mod router;
mod scenarios;
mod stats;

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use isdf_agent::sys::settings::Settings;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use operator::Operator;
use router::{Common, Target};
use scenarios::Fleet;
use stats::{cpu_percent, mib, sample, ProcessSample, Stats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Hold the routers' long polls for `--hold` seconds: memory and CPU
    /// while idle.
    Connect,
    /// A timed block on one router at a time: until that router fetched it.
    OneChange,
    /// A service assigned to every simulated router (then unassigned...):
    /// until all fetched their new config.
    FleetChange,
    /// A rollout in waves to completion, then one paused and aborted.
    Rollout,
    /// The fleet overview and device list pages, timed.
    Pages,
    /// PostgreSQL restarted by `--db-restart-command` under load.
    DbRestart,
    /// A replica killed by `--kill-command` under load.
    ReplicaKill,
}

impl Scenario {
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }
}

/// N simulated routers against a real iSDF controller: enrollment with
/// batch tokens, mutual-TLS long polls, configs verified exactly as the
/// agent does, status reports, latency histograms.
#[derive(Parser, Debug)]
#[command(name = "isdf-fleet-sim", version)]
struct Args {
    /// Scenarios to run, in order, on the fleet enrolled once
    /// (comma-separated).
    #[arg(
        long = "scenario",
        value_enum,
        value_delimiter = ',',
        default_value = "connect"
    )]
    scenarios: Vec<Scenario>,
    /// Simulated routers.
    #[arg(long, default_value_t = 1000)]
    routers: usize,
    /// Operator API base URL (repeat for replicas: calls take turns).
    #[arg(long = "api-url", required = true)]
    api_urls: Vec<String>,
    /// Device API URL, an address not a host name (repeat: routers are spread over them).
    #[arg(long = "device-url", required = true)]
    device_urls: Vec<String>,
    /// Enrollment URL, an address not a host name (repeat: routers are spread over them).
    #[arg(long = "enrollment-url", required = true)]
    enrollment_urls: Vec<String>,
    /// The controller CA (PEM) that enrollment trusts, as the agent's `ca_cert`.
    #[arg(long)]
    ca_file: PathBuf,
    /// Operator token (role operator or admin); else ISDF_TOKEN.
    #[arg(long)]
    token: Option<String>,
    /// Hard limit on the whole run, in seconds; past it the figures so far are printed.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// `connect`: seconds to hold the idle long polls while measuring.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// `one-change`: how many changes.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// `one-change`: pause between changes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    change_interval_ms: u64,
    /// `fleet-change`: how many fleet-wide changes (assign, unassign, ...).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds a change (or the first config) may take to reach a router
    /// before it counts as missed.
    #[arg(long, default_value_t = 120)]
    change_timeout: u64,
    /// `rollout`: the soak of the rollout that is paused and aborted, in
    /// seconds. Its canary passes after it, then its 50% wave is released
    /// and cannot pass for as long: the time there is to pause it.
    #[arg(long, default_value_t = 30)]
    abort_soak_secs: u64,
    /// `pages`: how many times each page is read.
    #[arg(long, default_value_t = 50)]
    page_requests: usize,
    /// `pages`: the device list's page size (`limit`).
    #[arg(long, default_value_t = 50)]
    page_limit: usize,
    /// `db-restart`: the command (`sh -c`) that restarts PostgreSQL and
    /// returns once it accepts connections again.
    #[arg(long)]
    db_restart_command: Option<String>,
    /// `replica-kill`: the command (`sh -c`) that kills one replica.
    #[arg(long)]
    kill_command: Option<String>,
    /// Long-poll wait asked of the server, in seconds (the agent's default).
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// Simulated apply time before each status report, in milliseconds.
    #[arg(long, default_value_t = 0)]
    apply_delay_ms: u64,
    /// Enrollment requests in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// Routers starting enrollment per second (default: no limit but the concurrency).
    #[arg(long)]
    enroll_rate: Option<f64>,
    /// Loopback source addresses (127.64.x.y) to spread routers over: the
    /// enrollment listener rate-limits per address, and one address has
    /// ~28k ephemeral ports. Default: one per 5 routers, 1 to 4096.
    #[arg(long)]
    sources: Option<usize>,
    /// A controller process (or load balancer, database...) to measure
    /// too: RSS, CPU, open files over each scenario; repeatable.
    #[arg(long = "watch-pid", value_name = "[NAME=]PID", value_parser = parse_watched_process)]
    watch_pids: Vec<WatchedProcess>,
    /// Allow targets outside loopback (the project's own test namespaces only).
    #[arg(long)]
    allow_non_loopback: bool,
    /// Print the summary as one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the summary as one JSON document to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let outcome = main_checked(args);
    match outcome {
        Ok(passed) => std::process::exit(if passed { 0 } else { 2 }),
        Err(e) => {
            eprintln!("isdf-fleet-sim: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Whether the run passed its own checks (all enrolled, nothing refused,
/// every change fetched).
fn main_checked(args: Args) -> anyhow::Result<bool> {
    let token = match args.token.clone() {
        Some(t) => t,
        None => std::env::var("ISDF_TOKEN").context("no --token and no ISDF_TOKEN")?,
    };
    if args.routers == 0 {
        bail!("--routers must be at least 1");
    }
    check_scenarios(&args)?;
    for url in &args.api_urls {
        target_address(url, "--api-url", args.allow_non_loopback, false)?;
    }
    let mut device_ips = Vec::new();
    for url in args.device_urls.iter().chain(&args.enrollment_urls) {
        device_ips.push(target_address(
            url,
            "--device-url/--enrollment-url",
            args.allow_non_loopback,
            true,
        )?);
    }
    let open_files = raise_open_files(args.routers as u64 * 2 + 1024)?;
    if open_files < args.routers as u64 + 256 {
        bail!(
            "the open-file limit is {open_files}, too few for {} routers (one socket each): \
             run as root, or with fewer routers per process",
            args.routers
        );
    }
    let run_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let run_id = run_millis.to_string();
    // Source addresses only where every target is IPv4 loopback: a
    // namespace's address is reached from the kernel's choice. Each run
    // takes its own block of them, so the enrollment listener's buckets
    // of an earlier run against the same controller are not drained.
    let all_v4_loopback = device_ips
        .iter()
        .all(|ip| matches!(ip, IpAddr::V4(v4) if v4.is_loopback()));
    let sources = if all_v4_loopback {
        let wanted = args
            .sources
            .unwrap_or((args.routers / 5).clamp(1, 4096))
            .max(args.routers.div_ceil(20_000));
        loopback_sources(wanted, (run_millis % 997) as u32 * 4096)
    } else {
        vec![]
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let summary = Arc::new(std::sync::Mutex::new(Map::new()));
    let stats = Arc::new(Stats::new());
    let limit = Duration::from_secs(args.duration);
    let json = args.json;
    let json_out = args.json_out.clone();
    let finished = runtime.block_on(async {
        tokio::time::timeout(
            limit,
            run(args, token, run_id, sources, open_files, &summary, &stats),
        )
        .await
    });
    let mut summary = summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
    summary.insert("counts".into(), stats.to_json());
    let passed = match finished {
        Ok(Ok(())) => checks_pass(&summary),
        Ok(Err(e)) => {
            summary.insert("error".into(), json!(format!("{e:#}")));
            false
        }
        Err(_) => {
            summary.insert("timed_out".into(), json!(true));
            false
        }
    };
    summary.insert("passed".into(), json!(passed));
    if let Some(path) = json_out {
        let document = Value::Object(summary.clone()).to_string();
        // Whole or not at all, as every file this package writes.
        isdf_agent::sys::atomic_write::write_atomically(&path, (document + "\n").as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        println!("{}", Value::Object(summary));
    } else {
        print_text(&summary, &stats);
    }
    // The routers' tasks are left to the process's exit.
    Ok(passed)
}

/// Checks a target URL: its address (resolving a host name only where
/// allowed) must be loopback unless `allow_non_loopback`.
fn target_address(
    url: &str,
    what: &str,
    allow_non_loopback: bool,
    address_only: bool,
) -> anyhow::Result<IpAddr> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{what} {url}"))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = parsed.host_str().unwrap_or_default();
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = match literal.parse::<IpAddr>() {
        Ok(address) => vec![address],
        Err(_) if !address_only && !host.is_empty() => (host, port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .map(|a| a.ip())
            .collect(),
        Err(_) => bail!(
            "{what} {url}: give an address (https://127.0.0.1:8443), not a host name: \
             routers connect from chosen loopback addresses"
        ),
    };
    if !allow_non_loopback {
        if let Some(other) = addresses.iter().find(|a| !a.is_loopback()) {
            bail!(
                "{what} {url} is {other}, not a loopback address: the simulator targets this \
                 machine only (--allow-non-loopback for the project's own test namespaces)"
            );
        }
    }
    addresses
        .first()
        .copied()
        .with_context(|| format!("{what} {url} has no address"))
}

/// Raises the open-file limit: to `wanted` where allowed (root may raise
/// the hard limit), else to the hard limit. Returns the limit in force.
fn raise_open_files(wanted: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if wanted <= soft {
        return Ok(soft);
    }
    if wanted > hard && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return Ok(wanted);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    Ok(hard)
}

/// `count` addresses of 127.64.0.0/10 from `offset` on, none ending in .0
/// or .255.
fn loopback_sources(count: usize, offset: u32) -> Vec<IpAddr> {
    (offset + 1..(1 << 22))
        .map(|n| Ipv4Addr::from((127 << 24) | (64 << 16) | n))
        .filter(|a| !matches!(a.octets()[3], 0 | 255))
        .take(count)
        .map(IpAddr::V4)
        .collect()
}

fn record(summary: &std::sync::Mutex<Map<String, Value>>, key: &str, value: Value) {
    summary
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.into(), value);
}

async fn run(
    args: Args,
    token: String,
    run_id: String,
    sources: Vec<IpAddr>,
    open_files: u64,
    summary: &std::sync::Mutex<Map<String, Value>>,
    stats: &Arc<Stats>,
) -> anyhow::Result<()> {
    let base = sample("self").context("reading /proc/self")?;
    let ca_pem = std::fs::read(&args.ca_file)
        .with_context(|| format!("reading {}", args.ca_file.display()))?;
    record(
        summary,
        "setup",
        json!({
            "scenarios": args.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "routers": args.routers,
            "device_urls": args.device_urls,
            "source_addresses": sources.len(),
            "open_file_limit": open_files,
            "run_id": run_id,
        }),
    );
    let operator = Operator::new(args.api_urls.clone(), &ca_pem, token)?;
    let tokens = operator
        .enrollment_tokens(args.routers, &json!({"fleet-sim": run_id}))
        .await
        .context("creating the batch enrollment tokens")?;

    // Settings as a router's: the device URL given here overrides the one
    // the answer names, as the agent's `controller_url` does.
    let settings = Settings::parse(&format!(
        "state_dir = \"/nonexistent/isdf-fleet-sim\"\ncontroller_url = {:?}\n",
        args.device_urls[0]
    ))
    .context("the simulated routers' settings")?;
    let common = Arc::new(Common {
        ca_pem,
        settings,
        stats: Arc::clone(stats),
        wait: Duration::from_secs(args.wait),
        apply_delay: Duration::from_millis(args.apply_delay_ms),
        enrollment_slots: Semaphore::new(args.enroll_concurrency.max(1)),
    });

    // Enrollment: every router at once, held to the concurrency (and rate).
    let started = Instant::now();
    let mut enrolling = JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let target = Target {
            enrollment_url: args.enrollment_urls[i % args.enrollment_urls.len()].clone(),
            device_url: args.device_urls[i % args.device_urls.len()].clone(),
            source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
        };
        let delay = args
            .enroll_rate
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(i as f64 / r));
        let common = Arc::clone(&common);
        enrolling.spawn(async move {
            tokio::time::sleep(delay).await;
            (i, router::enroll_and_run(common, target, token).await)
        });
    }
    let mut slots: Vec<_> = (0..args.routers).map(|_| None).collect();
    while let Some(done) = enrolling.join_next().await {
        let (i, handle) = done.context("an enrollment task")?;
        slots[i] = handle;
    }
    let routers: Vec<_> = slots.into_iter().flatten().collect();
    let enrolled_in = started.elapsed();
    let change_timeout = Duration::from_secs(args.change_timeout);
    let first = scenarios::wait_for_fleet(&routers, &vec![0; routers.len()], change_timeout).await;
    let connected = first.iter().flatten().count();
    let connected_in = started.elapsed();
    let after_connect = sample("self").context("reading /proc/self")?;
    let per_router =
        after_connect.rss_bytes.saturating_sub(base.rss_bytes) / connected.max(1) as u64;
    record(
        summary,
        "fleet",
        json!({
            "enrolled": routers.len(),
            "enrollment_s": enrolled_in.as_secs_f64(),
            "enrollments_per_s": routers.len() as f64 / enrolled_in.as_secs_f64().max(1e-6),
            "connected": connected,
            "connected_s": connected_in.as_secs_f64(),
            "rss_bytes": after_connect.rss_bytes,
            "rss_per_router_bytes": per_router,
            "open_files": after_connect.open_files,
            "open_files_per_router": after_connect.open_files.saturating_sub(base.open_files) as f64
                / connected.max(1) as f64,
        }),
    );
    if routers.is_empty() {
        bail!("no router enrolled");
    }

    let fleet = Fleet {
        routers,
        operator,
        stats: Arc::clone(stats),
        run_id,
        change_timeout,
        blocks_made: AtomicUsize::new(0),
        poll_wait: Duration::from_secs(args.wait),
    };
    let watched = Watched {
        processes: args.watch_pids.clone(),
        routers: connected.max(1) as u64,
        base_rss: base.rss_bytes,
    };
    for scenario in &args.scenarios {
        let name = scenario.name();
        let before = watched.sample_all();
        let counters = stats.snapshot();
        let started = Instant::now();
        let outcome = run_scenario(*scenario, &fleet, &args).await;
        // The reports of the last configs fetched belong to the scenario.
        stats.settle(Duration::from_secs(30)).await;
        let phase = started.elapsed();
        let mut result = match outcome {
            Ok(Value::Object(fields)) => fields,
            Ok(other) => Map::from_iter([("result".to_owned(), other)]),
            Err(e) => Map::from_iter([("error".to_owned(), json!(format!("{e:#}")))]),
        };
        result.insert("phase_s".into(), json!(phase.as_secs_f64()));
        result.insert("counts".into(), stats.snapshot().since(&counters));
        result.insert("processes".into(), watched.figures(&before, phase));
        record_scenario(summary, &name, Value::Object(result));
    }
    Ok(())
}

/// Refuses, before the fleet is enrolled, a scenario list that cannot run.
fn check_scenarios(args: &Args) -> anyhow::Result<()> {
    for (i, scenario) in args.scenarios.iter().enumerate() {
        if args.scenarios[..i].contains(scenario) {
            bail!("--scenario {} is given twice", scenario.name());
        }
    }
    if args.scenarios.contains(&Scenario::DbRestart) && args.db_restart_command.is_none() {
        bail!("--scenario db-restart needs --db-restart-command");
    }
    if args.scenarios.contains(&Scenario::ReplicaKill) && args.kill_command.is_none() {
        bail!("--scenario replica-kill needs --kill-command");
    }
    Ok(())
}

async fn run_scenario(scenario: Scenario, fleet: &Fleet, args: &Args) -> anyhow::Result<Value> {
    match scenario {
        Scenario::Connect => {
            tokio::time::sleep(Duration::from_secs(args.hold)).await;
            Ok(json!({"held_s": args.hold}))
        }
        Scenario::OneChange => Ok(scenarios::one_change::run(
            fleet,
            args.changes,
            Duration::from_millis(args.change_interval_ms),
        )
        .await),
        Scenario::FleetChange => scenarios::fleet_change::run(fleet, args.rounds).await,
        Scenario::Rollout => {
            scenarios::rollout::run(fleet, Duration::from_secs(args.abort_soak_secs)).await
        }
        Scenario::Pages => {
            Ok(scenarios::pages::run(fleet, args.page_requests, args.page_limit).await)
        }
        Scenario::DbRestart => {
            let command = args.db_restart_command.as_deref();
            scenarios::db_restart::run(fleet, command.context("no --db-restart-command")?).await
        }
        Scenario::ReplicaKill => {
            let command = args.kill_command.as_deref();
            scenarios::replica_kill::run(fleet, command.context("no --kill-command")?).await
        }
    }
}

/// Adds one scenario's result to the summary's `scenarios`.
fn record_scenario(summary: &std::sync::Mutex<Map<String, Value>>, name: &str, result: Value) {
    let mut summary = summary.lock().unwrap_or_else(|e| e.into_inner());
    let scenarios = summary
        .entry("scenarios")
        .or_insert_with(|| Value::Object(Map::new()));
    scenarios[name] = result;
}

/// A process `--watch-pid` names: `replica1=4242`, or `4242` (named `pid 4242`).
#[derive(Clone, Debug)]
struct WatchedProcess {
    name: String,
    pid: u32,
}

fn parse_watched_process(text: &str) -> Result<WatchedProcess, String> {
    let (name, pid) = match text.split_once('=') {
        Some((name, pid)) => (Some(name), pid),
        None => (None, text),
    };
    let pid: u32 = pid
        .parse()
        .map_err(|e| format!("`{pid}` is not a process id: {e}"))?;
    Ok(WatchedProcess {
        name: name.map_or_else(|| format!("pid {pid}"), |n| format!("{n} (pid {pid})")),
        pid,
    })
}

/// The processes measured over each scenario: this one and the `--watch-pid`s.
struct Watched {
    processes: Vec<WatchedProcess>,
    /// Connected routers, for the per-router figures.
    routers: u64,
    /// This process's RSS before the routers existed.
    base_rss: u64,
}

impl Watched {
    /// This process first, then each watched pid (None once it is gone).
    fn sample_all(&self) -> Vec<Option<ProcessSample>> {
        std::iter::once(sample("self"))
            .chain(self.processes.iter().map(|p| sample(&p.pid.to_string())))
            .collect()
    }

    /// RSS, open files and CPU over `phase` since `before`, one entry per
    /// process. Per-router figures divide by the whole fleet (a replica
    /// holds only its share of it); this process's leave out its RSS from
    /// before the routers.
    fn figures(&self, before: &[Option<ProcessSample>], phase: Duration) -> Value {
        let names = std::iter::once("isdf-fleet-sim".to_owned())
            .chain(self.processes.iter().map(|p| p.name.clone()));
        let list: Vec<Value> = names
            .zip(before.iter().zip(self.sample_all()))
            .enumerate()
            .map(|(i, (name, (before, now)))| match (before, now) {
                (Some(before), Some(now)) => {
                    let own = if i == 0 { self.base_rss } else { 0 };
                    json!({
                        "process": name,
                        "rss_bytes": now.rss_bytes,
                        "rss_per_router_bytes": now.rss_bytes.saturating_sub(own) / self.routers,
                        "cpu_percent": cpu_percent(*before, now, phase),
                        "open_files": now.open_files,
                    })
                }
                // Killed (replica-kill), restarted (db-restart), or never there.
                _ => json!({"process": name, "gone": true}),
            })
            .collect();
        Value::Array(list)
    }
}

/// The run's own pass criteria: every router enrolled and connected, no
/// envelope refused, and every scenario ran without an error and missed
/// nothing (no latency: those depend on the machine).
fn checks_pass(summary: &Map<String, Value>) -> bool {
    let routers = summary["setup"]["routers"].as_u64();
    let fleet = &summary["fleet"];
    let counts = &summary["counts"];
    let asked = summary["setup"]["scenarios"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let scenarios = summary.get("scenarios").cloned().unwrap_or(Value::Null);
    let scenario_passed = |name: &Value| {
        let result = &scenarios[name.as_str().unwrap_or_default()];
        result.is_object()
            && result.get("error").is_none()
            && result["missed"].as_u64().unwrap_or(0) == 0
    };
    fleet["enrolled"].as_u64() == routers
        && fleet["connected"].as_u64() == routers
        && counts["verification_failures"].as_u64() == Some(0)
        && asked.iter().all(scenario_passed)
}

fn print_text(summary: &Map<String, Value>, stats: &Stats) {
    let get = |k: &str| summary.get(k).cloned().unwrap_or(Value::Null);
    let (setup, fleet, scenarios) = (get("setup"), get("fleet"), get("scenarios"));
    let names: Vec<&str> = setup["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "isdf-fleet-sim: scenarios {}; {} routers over {} device URL(s), {} source address(es), \
         open-file limit {}",
        names.join(", "),
        setup["routers"],
        setup["device_urls"].as_array().map_or(0, Vec::len),
        setup["source_addresses"],
        setup["open_file_limit"],
    );
    if !fleet.is_null() {
        println!(
            "enrolled {} in {:.1} s ({:.0}/s); connected (first config fetched) {} after {:.1} s",
            fleet["enrolled"],
            fleet["enrollment_s"].as_f64().unwrap_or(0.0),
            fleet["enrollments_per_s"].as_f64().unwrap_or(0.0),
            fleet["connected"],
            fleet["connected_s"].as_f64().unwrap_or(0.0),
        );
        println!(
            "simulator once connected: RSS {:.1} MiB, {:.1} KiB per router; open files {} \
             ({:.2} per router)",
            mib(fleet["rss_bytes"].as_u64().unwrap_or(0)),
            fleet["rss_per_router_bytes"].as_u64().unwrap_or(0) as f64 / 1024.0,
            fleet["open_files"],
            fleet["open_files_per_router"].as_f64().unwrap_or(0.0),
        );
    }
    for name in names {
        let result = &scenarios[name];
        if result.is_null() {
            println!("== {name}: not run (the run ended first)");
            continue;
        }
        println!(
            "== {name} ({:.1} s)",
            result["phase_s"].as_f64().unwrap_or(0.0)
        );
        print_result(result, "   ");
    }
    println!("== whole run");
    for line in stats.lines() {
        println!("   {line}");
    }
    for key in ["error", "timed_out"] {
        if let Some(v) = summary.get(key) {
            println!("{key}: {v}");
        }
    }
    println!(
        "{}",
        if summary["passed"].as_bool() == Some(true) {
            "passed: every router enrolled and connected, 0 verification failures, every \
             scenario ran and missed nothing"
        } else {
            "FAILED: see above"
        }
    );
}

/// One scenario's result as text: its plain figures on one line, then a
/// line per latency, per process, per element of a list and per object.
fn print_result(result: &Value, indent: &str) {
    let Some(fields) = result.as_object() else {
        println!("{indent}{result}");
        return;
    };
    let plain: Vec<String> = fields
        .iter()
        .filter(|(k, v)| {
            !v.is_object() && !v.is_array() && !matches!(k.as_str(), "note" | "phase_s")
        })
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !plain.is_empty() {
        println!("{indent}{}", plain.join(", "));
    }
    for (key, value) in fields {
        match value {
            Value::Object(o) if o.contains_key("p50_ms") => println!(
                "{indent}{key:<28} n={:<8} p50={:>9.2} ms  p99={:>9.2} ms  max={:>9.2} ms{}",
                value["count"],
                value["p50_ms"].as_f64().unwrap_or(0.0),
                value["p99_ms"].as_f64().unwrap_or(0.0),
                value["max_ms"].as_f64().unwrap_or(0.0),
                o.get("items")
                    .or(o.get("devices"))
                    .map_or(String::new(), |n| format!("  ({n} shown)")),
            ),
            Value::Object(_) if key == "counts" || key == "during_command" => println!(
                "{indent}{key}: configs received {}, not modified (304) {}, errors {}",
                value["configs_received"], value["not_modified"], value["errors"],
            ),
            Value::Array(list) if key == "processes" => {
                for p in list {
                    print_process(p, indent);
                }
            }
            Value::Array(list) if list.iter().all(|v| v.is_object()) => {
                println!("{indent}{key}:");
                for item in list {
                    println!("{indent}  {item}");
                }
            }
            Value::Object(_) if key == "completed" || key == "aborted" => {
                println!("{indent}{key}:");
                print_result(value, &format!("{indent}  "));
            }
            Value::Object(_) | Value::Array(_) => println!("{indent}{key}: {value}"),
            _ => {}
        }
    }
    if let Some(note) = fields.get("note").and_then(Value::as_str) {
        println!("{indent}({note})");
    }
}

fn print_process(p: &Value, indent: &str) {
    if p["gone"] == true {
        println!(
            "{indent}{}: not running (killed, restarted or never there)",
            p["process"].as_str().unwrap_or("?")
        );
        return;
    }
    println!(
        "{indent}{}: RSS {:.1} MiB ({:.2} KiB per router of the fleet), CPU {:.1} % of a core, \
         {} open files",
        p["process"].as_str().unwrap_or("?"),
        mib(p["rss_bytes"].as_u64().unwrap_or(0)),
        p["rss_per_router_bytes"].as_u64().unwrap_or(0) as f64 / 1024.0,
        p["cpu_percent"].as_f64().unwrap_or(0.0),
        p["open_files"],
    );
}
