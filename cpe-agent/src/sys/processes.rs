//! The processes the agent runs and ends: the short-lived tools (`nft`,
//! `iptables-restore`, `ipset`, `conntrack`, `wg`, `ip`), each given a
//! script on stdin with its stderr in the error, and the ending of a process
//! by its id (a dnsmasq being replaced, a `wireguard-go` a crashed agent
//! left running).
//!
//! The long-lived processes the agent supervises are started beside the code
//! that watches them: dnsmasq in `dns::dnsmasq`, `wireguard-go` in
//! `wireguard::interfaces`. What a tool is asked to do is decided by its
//! caller (only `backend/` runs the firewall tools, only `wireguard/` runs
//! `wg` and `ip` for tunnels); this module only runs it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Runs `program args` with `stdin` and returns its stdout.
pub fn run(program: &str, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} (is it installed?)"))?;
    let mut input = child.stdin.take().context("stdin")?;
    // Write on another thread so a tool that answers before reading all of
    // its input cannot deadlock us on a full pipe.
    let bytes = stdin.as_bytes().to_vec();
    let writer = std::thread::spawn(move || input.write_all(&bytes));
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    let _ = writer.join();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            stderr.trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{program} printed non-UTF-8"))
}

/// Runs `command` with `sh -c` until it exits, its output to stderr and
/// not through a pipe (a daemon it starts, a restarted PostgreSQL, would
/// hold a pipe open long after); an error when it fails. For the fleet
/// simulator's scenario hooks (`kill -9`, a database restart).
pub fn run_shell_to_stderr(command: &str) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stderr")?;
    let status = Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .stdout(stderr)
        .status()
        .with_context(|| format!("running `{command}`"))?;
    if !status.success() {
        bail!("`{command}` exited {status} (its output went to stderr)");
    }
    Ok(())
}

/// Whether `program args` runs successfully.
pub fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether process `pid` exists and has not exited (a zombie holds no
/// port).
pub fn process_runs(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// Asks process `pid` to end (SIGTERM, through `kill`).
pub fn terminate(pid: &str) {
    let _ = Command::new("kill").arg(pid).status();
}

/// Asks process `pid` to end and waits up to two seconds until it has: a
/// leftover of a crashed agent, which may hold a port or an interface.
pub fn terminate_and_wait(pid: &str) {
    terminate(pid);
    let deadline = Instant::now() + Duration::from_secs(2);
    while process_runs(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
