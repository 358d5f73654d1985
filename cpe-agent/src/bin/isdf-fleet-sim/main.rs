//! `isdf-fleet-sim`: N simulated routers in one process and one thread,
//! against a real controller (or replicas, or a load balancer in front of
//! them), to measure what a fleet sees: enrollment, a change reaching one
//! router, a change reaching all of them, and what idle long polls cost.
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
use stats::{cpu_percent, mib, sample, Stats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Enroll the routers, hold their long polls for `--hold` seconds:
    /// memory and CPU while idle.
    Connect,
    /// A timed block on one router at a time: until that router fetched it.
    OneChange,
    /// A service assigned to every simulated router (then unassigned...):
    /// until all fetched their new config.
    FleetChange,
}

/// N simulated routers against a real iSDF controller: enrollment with
/// batch tokens, mutual-TLS long polls, configs verified exactly as the
/// agent does, status reports, latency histograms.
#[derive(Parser, Debug)]
#[command(name = "isdf-fleet-sim", version)]
struct Args {
    #[arg(long, value_enum, default_value = "connect")]
    scenario: Scenario,
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
    /// A controller process to measure too (RSS, CPU); repeatable.
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
    /// Allow targets outside loopback (the project's own test namespaces only).
    #[arg(long)]
    allow_non_loopback: bool,
    /// Print the summary as one JSON document instead of text.
    #[arg(long)]
    json: bool,
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
            "scenario": args.scenario.to_possible_value().map(|v| v.get_name().to_owned()),
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
    };
    let watched = |pid: u32| sample(&pid.to_string());
    let before: Vec<_> = args.watch_pids.iter().map(|p| watched(*p)).collect();
    let phase_start = Instant::now();
    let result = match args.scenario {
        Scenario::Connect => {
            tokio::time::sleep(Duration::from_secs(args.hold)).await;
            json!({"held_s": args.hold})
        }
        Scenario::OneChange => {
            scenarios::one_change(
                &fleet,
                args.changes,
                Duration::from_millis(args.change_interval_ms),
            )
            .await
        }
        Scenario::FleetChange => scenarios::fleet_change(&fleet, args.rounds).await?,
    };
    let phase = phase_start.elapsed();
    // The reports of the last configs fetched belong to the run.
    stats.settle(Duration::from_secs(30)).await;
    let after = sample("self").context("reading /proc/self")?;
    let mut processes = vec![json!({
        "process": "isdf-fleet-sim",
        "rss_bytes": after.rss_bytes,
        "rss_per_router_bytes": after.rss_bytes.saturating_sub(base.rss_bytes) / connected.max(1) as u64,
        "cpu_percent": cpu_percent(after_connect, after, phase),
        "open_files": after.open_files,
    })];
    for (pid, before) in args.watch_pids.iter().zip(before) {
        if let (Some(before), Some(now)) = (before, watched(*pid)) {
            processes.push(json!({
                "process": format!("pid {pid}"),
                "rss_bytes": now.rss_bytes,
                "rss_per_router_bytes": now.rss_bytes / connected.max(1) as u64,
                "cpu_percent": cpu_percent(before, now, phase),
                "open_files": now.open_files,
            }));
        }
    }
    record(summary, "scenario", result);
    record(
        summary,
        "processes",
        json!({"phase_s": phase.as_secs_f64(), "list": processes}),
    );
    Ok(())
}

/// The run's own pass criteria: every router enrolled and connected, no
/// envelope refused, every change fetched.
fn checks_pass(summary: &Map<String, Value>) -> bool {
    let routers = summary["setup"]["routers"].as_u64();
    let fleet = &summary["fleet"];
    let counts = &summary["counts"];
    let scenario = summary.get("scenario").cloned().unwrap_or(Value::Null);
    fleet["enrolled"].as_u64() == routers
        && fleet["connected"].as_u64() == routers
        && counts["verification_failures"].as_u64() == Some(0)
        && scenario["missed"].as_u64().unwrap_or(0) == 0
}

fn print_text(summary: &Map<String, Value>, stats: &Stats) {
    let get = |k: &str| summary.get(k).cloned().unwrap_or(Value::Null);
    let (setup, fleet, scenario) = (get("setup"), get("fleet"), get("scenario"));
    println!(
        "isdf-fleet-sim: scenario {}, {} routers over {} device URL(s), {} source address(es), \
         open-file limit {}",
        setup["scenario"].as_str().unwrap_or("?"),
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
    if !scenario.is_null() {
        println!("scenario: {scenario}");
    }
    if let Some(list) = summary.get("processes").and_then(|p| p["list"].as_array()) {
        for p in list {
            println!(
                "{}: RSS {:.1} MiB ({:.1} KiB per router), CPU {:.1} % of a core during the \
                 scenario, {} open files",
                p["process"].as_str().unwrap_or("?"),
                mib(p["rss_bytes"].as_u64().unwrap_or(0)),
                p["rss_per_router_bytes"].as_u64().unwrap_or(0) as f64 / 1024.0,
                p["cpu_percent"].as_f64().unwrap_or(0.0),
                p["open_files"],
            );
        }
    }
    for line in stats.lines() {
        println!("{line}");
    }
    for key in ["error", "timed_out"] {
        if let Some(v) = summary.get(key) {
            println!("{key}: {v}");
        }
    }
    println!(
        "{}",
        if summary["passed"].as_bool() == Some(true) {
            "passed: every router enrolled and connected, 0 verification failures, every change fetched"
        } else {
            "FAILED: see above"
        }
    );
}
