//! The real `isdf-controller` binary as a child process of the test, so a
//! crash is a real SIGKILL: started on port 0 (its printed URLs say where
//! it listens), waited for by polling `/readyz`, killed and reaped by PID,
//! and always killed when dropped (a failing test leaves no controller
//! behind). Its output goes to a log file whose tail a failure shows.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a start may take (migrations, loading the cache, the catch-up
/// recompile of the whole fleet) on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// `/readyz` is asked at most this many times, this far apart.
const READINESS_POLLS: u32 = 200;
const READINESS_INTERVAL: Duration = Duration::from_millis(25);

/// Where a started controller listens.
#[derive(Debug, Clone)]
pub struct Listening {
    /// `http://127.0.0.1:<port>` (the operator API is under `/api/v1`).
    pub api: String,
    /// `https://127.0.0.1:<port>`, mutual TLS.
    pub device: String,
    /// `https://127.0.0.1:<port>`.
    pub enrollment: String,
    /// Where the portal listens: `127.0.0.1:<port>`.
    pub portal: String,
    /// Printed on the first start only.
    pub operator_token: Option<String>,
}

/// A running controller process; killed and reaped when dropped.
pub struct ControllerProcess {
    child: Child,
    pub listening: Listening,
}

impl ControllerProcess {
    /// Starts `isdf-controller serve` on `database_url` and `data_dir`,
    /// every listener on a free port of 127.0.0.1, and waits until its
    /// operator API answers.
    pub async fn start(database_url: &str, data_dir: &Path, log: &Path) -> Self {
        Self::start_with(database_url, data_dir, log, &[]).await
    }

    /// [`ControllerProcess::start`] with more arguments for `serve`
    /// (`--api-tls`: its readiness is then asked over HTTPS, trusting the
    /// controller CA in `data_dir`).
    pub async fn start_with(
        database_url: &str,
        data_dir: &Path,
        log: &Path,
        extra_args: &[&str],
    ) -> Self {
        let mut log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("controller log");
        writeln!(log_file, "==> starting the controller").expect("log");
        let stderr = log_file.try_clone().expect("log");
        let loopback_any = "127.0.0.1:0";
        let mut child = Command::new(env!("CARGO_BIN_EXE_isdf-controller"))
            .arg("serve")
            .args(["--database-url", database_url])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api-listen", loopback_any])
            .args(["--device-listen", loopback_any])
            .args(["--enrollment-listen", loopback_any])
            .args(["--portal-listen", loopback_any])
            // Simulated routers report as fast as the test drives them.
            .args(["--device-rate", "1000", "--device-burst", "1000"])
            // Tests never ask the machine's resolvers.
            .args(["--site-resolve-secs", "0"])
            .args(extra_args)
            // Nothing from the test's environment (ISDF_* settings) leaks in.
            .env_clear()
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("starting the controller binary");
        let stdout = child.stdout.take().expect("piped stdout");
        // The controller logs to stdout too: it is drained to the log file
        // for the process's whole life, so it never blocks on a full pipe.
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_file, "{line}");
                let _ = lines_tx.send(line);
            }
        });
        let mut process = ControllerProcess {
            child,
            listening: Listening {
                api: String::new(),
                device: String::new(),
                enrollment: String::new(),
                portal: String::new(),
                operator_token: None,
            },
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let line = match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => panic!(
                    "the controller exited while starting:\n{}",
                    log_tail(log, 40)
                ),
                Err(_) => panic!(
                    "the controller did not start within {START_TIMEOUT:?}:\n{}",
                    log_tail(log, 40)
                ),
            };
            let listening = &mut process.listening;
            if let Some(rest) = line.trim_start().strip_prefix("Operator API:") {
                let url = rest.split_whitespace().next().expect("an URL");
                listening.api = url.trim_end_matches("/api/v1").to_owned();
            } else if let Some(rest) = line.trim_start().strip_prefix("Device API:") {
                listening.device = rest.trim().to_owned();
            } else if let Some(rest) = line.trim_start().strip_prefix("Enrollment:") {
                listening.enrollment = rest.trim().to_owned();
            } else if let Some(rest) = line.trim_start().strip_prefix("Portal:") {
                // `<URL>  (...; listening on <address>)`
                let address = rest.rsplit(' ').next().expect("an address");
                listening.portal = address.trim_end_matches(')').to_owned();
            } else if let Some(rest) = line.trim_start().strip_prefix("Operator token") {
                // The last line printed: `(shown once, keep it): <token>` on
                // the first start, `: created on first start ...` later.
                listening.operator_token = rest
                    .split_whitespace()
                    .last()
                    .filter(|t| t.starts_with("isdf_op_"))
                    .map(str::to_owned);
                break;
            }
        }
        let listening = &process.listening;
        assert!(
            !listening.api.is_empty()
                && !listening.device.is_empty()
                && !listening.enrollment.is_empty(),
            "the controller did not print its URLs: {listening:?}\n{}",
            log_tail(log, 40)
        );
        // Ready: the database answers and the config cache is loaded.
        let health = format!("{}/readyz", listening.api);
        let http = if health.starts_with("https:") {
            let ca = std::fs::read_to_string(data_dir.join("ca.pem")).expect("the controller CA");
            let tls = crate::support::trusting_the_ca(&ca).with_no_client_auth();
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .build()
                .expect("an HTTPS client")
        } else {
            reqwest::Client::new()
        };
        for _ in 0..READINESS_POLLS {
            let ready = http
                .get(&health)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return process;
            }
            tokio::time::sleep(READINESS_INTERVAL).await;
        }
        panic!(
            "the controller never answered {health}:\n{}",
            log_tail(log, 40)
        );
    }

    /// SIGKILL, then reaps the process: no chance to finish anything.
    pub fn kill(mut self) -> Instant {
        let at = Instant::now();
        self.kill_and_reap();
        at
    }

    fn kill_and_reap(&mut self) {
        // `Child::kill` is SIGKILL on Unix, sent to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// The last `lines` lines of the log, to explain a failure.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("--- last lines of {} ---\n{tail}", log.display())
}

/// The log file of a world's controller runs.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("controller.log")
}
