//! The target triple the agent reports (`ISDF_AGENT_TARGET`), and link
//! options that keep the agent binary small: routers hold it in a few MB of
//! flash (see `release-small` in the workspace manifest).
//!
//! They are given only where the linker is known to be rustc's bundled
//! `rust-lld` and the C library glibc: `x86_64-unknown-linux-gnu` without a
//! configured linker. Other targets and linkers keep their defaults.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ISDF_AGENT_VERSION");
    // The target triple the agent was built for: it reports it, and the
    // controller gives it only releases built for the same.
    println!(
        "cargo:rustc-env=ISDF_AGENT_TARGET={}",
        env::var("TARGET").expect("cargo sets TARGET for build scripts")
    );
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let bundled_lld = env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
        && env::var_os("RUSTC_LINKER").is_none()
        && !env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| flags.contains("linker"));
    if !bundled_lld {
        return;
    }
    // Relative relocations packed as a bitmap (DT_RELR) instead of 24 bytes
    // each: about 140 KB less. The binary then asks for glibc 2.36 by
    // version (GLIBC_ABI_DT_RELR), so an older glibc refuses it at start
    // rather than running it unrelocated.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // Identical code folding: the many generic instances that compile to
    // the same machine code are kept once (about 40 KB). Rust promises no
    // distinct addresses for distinct functions, so nothing may rely on them.
    println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
    // No `.eh_frame_hdr` (the index of the unwind tables, 52 KB) in the
    // size-optimised build, which aborts on panic and so never unwinds: the
    // index serves only the backtraces a panic prints with RUST_BACKTRACE
    // set, which a stripped binary cannot name anyway. Keyed on the
    // optimisation level because a build script does not see the profile's
    // panic strategy (CARGO_CFG_PANIC is the target's default); `opt-level =
    // "z"` is only `release-small`, which has `panic = "abort"`.
    if env::var("OPT_LEVEL").as_deref() == Ok("z") {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
    }
}
