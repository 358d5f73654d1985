//! One crash test's world: its own database (from the migrated template),
//! data directory (CA, keys, the controller's log) and controller process,
//! the operator API as the test calls it, and the test's own read-only
//! view of the database, which it reads while the controller is down.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use isdf_controller::test_support::create_test_database;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::process::{log_path, log_tail, ControllerProcess, Listening};

/// The test's database sessions call themselves this, so the sessions of
/// a killed controller can be told apart and waited for.
const CHECKER: &str = "isdf-crash-check";
/// Longest wait for PostgreSQL to end a killed controller's sessions.
const SESSIONS_GONE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct World {
    /// First, so it is dropped first: the controller is killed before its
    /// data directory is removed.
    controller: Option<ControllerProcess>,
    pub name: &'static str,
    dir: tempfile::TempDir,
    database_url: String,
    /// The test's own sessions (never the controller's).
    pub db: PgPool,
    pub ca_pem: String,
    operator_token: String,
}

/// The operator API of the running controller, cheap to clone into the
/// task that runs an operation while the test waits to kill it.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    token: String,
    pub listening: Listening,
}

/// What became of a call made while the controller may be killed.
#[derive(Debug)]
pub enum CallError {
    /// No answer: the connection failed or broke (the controller died).
    Transport(String),
    /// An answer that is not a success: a bug, whenever it comes.
    Status(StatusCode, Value),
}

impl World {
    /// A fresh database and data directory, and the controller started.
    pub async fn start(name: &'static str) -> World {
        // reqwest is built without a default TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let database_url = create_test_database().await.expect("a test database");
        let options: PgConnectOptions = database_url.parse().expect("database URL");
        let db = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.application_name(CHECKER))
            .await
            .expect("connecting to the test database");
        let dir = tempfile::tempdir().expect("a data directory");
        let controller =
            ControllerProcess::start(&database_url, dir.path(), &log_path(dir.path())).await;
        let operator_token = controller
            .listening
            .operator_token
            .clone()
            .expect("the first start prints the operator token");
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca.pem");
        World {
            controller: Some(controller),
            name,
            dir,
            database_url,
            db,
            ca_pem,
            operator_token,
        }
    }

    pub fn log(&self) -> PathBuf {
        log_path(self.dir.path())
    }

    /// The tail of the controller's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log(), 60)
    }

    pub fn api(&self) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("HTTP client"),
            token: self.operator_token.clone(),
            listening: self
                .controller
                .as_ref()
                .expect("the controller is running")
                .listening
                .clone(),
        }
    }

    /// SIGKILL, then waits until PostgreSQL has ended the dead process's
    /// sessions: until then a COMMIT it sent just before dying may still
    /// land, and the state the crash left is not final yet.
    pub async fn kill(&mut self) -> Instant {
        let at = self
            .controller
            .take()
            .expect("the controller is running")
            .kill();
        let deadline = Instant::now() + SESSIONS_GONE_TIMEOUT;
        loop {
            let others: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND backend_type = 'client backend'
                   AND application_name <> $1",
            )
            .bind(CHECKER)
            .fetch_one(&self.db)
            .await
            .expect("listing sessions");
            if others == 0 {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "{others} sessions of the killed controller still open after {SESSIONS_GONE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the controller again on the same database and data directory.
    pub async fn restart(&mut self) {
        assert!(self.controller.is_none(), "restart after a kill only");
        self.controller =
            Some(ControllerProcess::start(&self.database_url, self.dir.path(), &self.log()).await);
    }
}

impl Api {
    /// An operator call; Err when there is no answer or it is not a success.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CallError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.listening.api))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Transport(format!("{e:?}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CallError::Transport(format!("{e:?}")))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(body)
        } else {
            Err(CallError::Status(status, body))
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, CallError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, CallError> {
        self.call(Method::GET, path, None).await
    }

    /// A call that must succeed (setup and checks, with the controller up).
    pub async fn must(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        self.call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"))
    }
}

impl CallError {
    /// A refusal or failure the controller answered is a bug whether or not
    /// it is killed later; a missing answer is expected after the kill only.
    pub fn expect_transport(self, what: &str) -> String {
        match self {
            CallError::Transport(e) => e,
            CallError::Status(status, body) => panic!("{what}: answered {status}: {body}"),
        }
    }
}
