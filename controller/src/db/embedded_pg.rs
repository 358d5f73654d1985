//! The embedded default database: a private PostgreSQL cluster started from
//! the machine's own server binaries inside the data directory.
//!
//! It listens only on a Unix socket in its own directory (no TCP), trusts
//! local connections (the socket directory's permissions are the guard), and
//! is stopped cleanly when the controller exits. PostgreSQL refuses to run as
//! root, so when the controller is root the cluster runs as the `postgres`
//! system user (created by Debian's package), which owns the cluster directory.
//!
//! While the controller serves, a [`Supervisor`] watches the postmaster
//! (its pid in `postmaster.pid`, every [`CHECK_EVERY`]) and starts it again
//! on the same directory when it died, retrying with a backoff bounded by
//! [`MAX_RESTART_BACKOFF`] and logging every death, attempt and restart.
//! Meanwhile `/readyz` answers 503 and the pool reconnects by itself.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
const DATABASE: &str = "isdf";
const ROLE: &str = "isdf";

/// A running private cluster. Stopped on drop if this process owns it: it
/// started it, or (the controller) adopted it; a CLI command that found it
/// already running leaves it to its owner.
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    cluster_dir: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<nix::unistd::User>,
    owned: bool,
}

/// Finds a directory holding `initdb`, `pg_ctl` and `postgres`: first on
/// PATH, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_server_binaries() -> Option<PathBuf> {
    let has_all = |dir: &Path| SERVER_BINARIES.iter().all(|b| dir.join(b).is_file());
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|dir| dir.join("pg_ctl").canonicalize().ok())
        .filter_map(|pg_ctl| pg_ctl.parent().map(Path::to_path_buf))
        .find(|dir| has_all(dir));
    from_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, dir)| has_all(dir))
            .collect();
        versions.sort();
        versions.pop().map(|(_, dir)| dir)
    })
}

impl EmbeddedPostgres {
    /// Initialises (first time) and starts the cluster under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin_dir = find_server_binaries().context(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or under \
             /usr/lib/postgresql/*/bin. Install them (Debian: `apt-get install postgresql`) \
             or point the controller at a database with --database-url / ISDF_DATABASE_URL",
        )?;
        let cluster_dir = dir.join("postgres");
        let socket_dir = dir.join("postgres-socket");
        let run_as = if nix::unistd::geteuid().is_root() {
            Some(
                nix::unistd::User::from_name("postgres")
                    .context("looking up the postgres user")?
                    .context(
                        "running as root, but PostgreSQL refuses root and there is no `postgres` \
                         user to run it as; create one or run the controller as a normal user",
                    )?,
            )
        } else {
            None
        };
        for d in [&cluster_dir, &socket_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            set_mode(d, 0o700)?;
            if let Some(user) = &run_as {
                nix::unistd::chown(d.as_path(), Some(user.uid), Some(user.gid))
                    .with_context(|| format!("giving {} to the postgres user", d.display()))?;
            }
        }
        let mut pg = EmbeddedPostgres {
            bin_dir,
            cluster_dir,
            socket_dir,
            run_as,
            owned: false,
        };
        pg.check_reachable_by_server_user(dir)?;
        if !pg.cluster_dir.join("PG_VERSION").exists() {
            pg.run(
                "initdb",
                &[
                    "-D".as_ref(),
                    pg.cluster_dir.as_os_str(),
                    "-U".as_ref(),
                    ROLE.as_ref(),
                    "--auth=trust".as_ref(),
                    "-E".as_ref(),
                    "UTF8".as_ref(),
                    "--no-instructions".as_ref(),
                ],
            )?;
        }
        if !pg.is_running() {
            pg.start_server()?;
            pg.owned = true;
        }
        Ok(pg)
    }

    /// Starts the server on the cluster (`pg_ctl start`, waiting until it
    /// accepts connections). A lock file left by a server that died is
    /// PostgreSQL's to clear; it refuses while processes of the old server
    /// still hold its shared memory.
    fn start_server(&self) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c max_connections=200",
            self.socket_dir.display()
        );
        let log = self.cluster_dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.cluster_dir.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )
        .with_context(|| format!("starting PostgreSQL; see {}", log.display()))
    }

    /// Whether the postmaster named in the cluster's lock file is alive.
    fn postmaster_alive(&self) -> bool {
        use nix::errno::Errno;
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        use nix::unistd::Pid;
        let pid = std::fs::read_to_string(self.cluster_dir.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 0);
        let Some(pid) = pid.map(Pid::from_raw) else {
            return false;
        };
        // When the controller is PID 1 (a container), the orphaned
        // postmaster is its child: reap it, or it would linger as a zombie
        // that signals still reach.
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) => return false,
            Err(_) => {} // Not our child: ask the kernel.
        }
        match nix::sys::signal::kill(pid, None) {
            Ok(()) | Err(Errno::EPERM) => {}
            Err(_) => return false,
        }
        // The pid may belong to another program by now.
        std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |comm| {
            matches!(comm.trim(), "postgres" | "postmaster")
        })
    }

    /// Watches the cluster and restarts it when it dies, until
    /// [`Supervisor::stop`]. Needs a tokio runtime.
    pub fn supervise(self) -> Supervisor {
        let pg = std::sync::Arc::new(std::sync::Mutex::new(self));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(watch(pg.clone(), stopped));
        Supervisor {
            pg,
            stop,
            task: Some(task),
        }
    }

    /// The connection URL for the controller's database.
    pub fn database_url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of the maintenance database, used to create the controller's.
    pub fn maintenance_url(&self) -> String {
        self.url_for("postgres")
    }

    fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{ROLE}@localhost/{database}?host={}",
            self.socket_dir.display()
        )
    }

    /// Creates the controller's database in the cluster unless it exists.
    pub async fn create_database_if_missing(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.maintenance_url())
            .await
            .context("connecting to the private PostgreSQL")?;
        if !super::databases::exists(&mut conn, DATABASE).await? {
            super::databases::apply(
                &mut conn,
                super::databases::DatabaseChange::Create(DATABASE),
            )
            .await?;
        }
        Ok(())
    }

    pub fn database_name() -> &'static str {
        DATABASE
    }

    fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.cluster_dir)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Takes ownership of a cluster found running (left by a crashed
    /// controller), so it is stopped when this process ends.
    pub fn adopt(&mut self) {
        self.owned = true;
    }

    /// Stops the cluster if this process owns it (fast shutdown: running
    /// transactions are rolled back, committed data is safe).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.owned {
            return Ok(());
        }
        self.owned = false;
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.cluster_dir.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    fn check_reachable_by_server_user(&self, dir: &Path) -> anyhow::Result<()> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let status = self
            .command("test")
            .arg("-x")
            .arg(&self.cluster_dir)
            .status()
            .context("running test(1)")?;
        if !status.success() {
            bail!(
                "the `{}` user cannot reach {}: a parent directory is not searchable. \
                 Choose a --data-dir under a searchable path (e.g. /var/lib/isdf) or use --database-url",
                user.name,
                dir.display()
            );
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let path = if program == "test" {
            PathBuf::from("test")
        } else {
            self.bin_dir.join(program)
        };
        let mut cmd = Command::new(path);
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            cmd.env("HOME", &user.dir);
            // The cluster's processes must not inherit root's working directory.
            cmd.current_dir("/");
        }
        cmd
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let output = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        Ok(())
    }
}

/// How often the supervisor looks at the postmaster.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two restart attempts.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(10);

/// The embedded cluster under watch (see the module doc). Dropping it ends
/// the watch; the cluster is stopped with the last reference to it.
pub struct Supervisor {
    pg: std::sync::Arc<std::sync::Mutex<EmbeddedPostgres>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Supervisor {
    /// Ends the watch (after a restart in progress), then stops the cluster.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.await.context("the PostgreSQL supervisor")?;
        }
        let pg = self.pg.clone();
        tokio::task::spawn_blocking(move || pg.lock().expect("lock").stop())
            .await
            .context("stopping PostgreSQL")?
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The supervisor's loop: look every [`CHECK_EVERY`]; when the postmaster
/// is gone, start it again until it runs, with a bounded backoff.
async fn watch(
    pg: std::sync::Arc<std::sync::Mutex<EmbeddedPostgres>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    // Waits `delay`; false when told to stop meanwhile.
    async fn pause(stopped: &mut tokio::sync::watch::Receiver<bool>, delay: Duration) -> bool {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
    let blocking = |pg: &std::sync::Arc<std::sync::Mutex<EmbeddedPostgres>>, restart: bool| {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || {
            let pg = pg.lock().expect("lock");
            if restart {
                pg.start_server().map(|()| true)
            } else {
                Ok(pg.postmaster_alive())
            }
        })
    };
    while pause(&mut stopped, CHECK_EVERY).await {
        if !matches!(blocking(&pg, false).await, Ok(Ok(false))) {
            continue;
        }
        tracing::error!("embedded PostgreSQL died; restarting it");
        for attempt in 1u32.. {
            match blocking(&pg, true).await {
                Ok(Ok(_)) => {
                    tracing::warn!(attempt, "embedded PostgreSQL restarted");
                    break;
                }
                Ok(Err(e)) => {
                    let delay = (Duration::from_millis(500) * 2u32.saturating_pow(attempt - 1))
                        .min(MAX_RESTART_BACKOFF);
                    tracing::warn!(attempt, error = %format!("{e:#}"), retry_in = ?delay,
                        "restarting the embedded PostgreSQL failed");
                    if !pause(&mut stopped, delay).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the PostgreSQL supervisor's task failed");
                    return;
                }
            }
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping the embedded PostgreSQL");
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))
}
