//! Running the firewall tools: a script on stdin, stderr in the error.

use std::io::Write;
use std::process::{Command, Stdio};

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
