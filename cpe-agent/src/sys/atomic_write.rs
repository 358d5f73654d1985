//! The one way the agent replaces a file: a router loses power at any
//! moment, and whoever reads the file next (the agent after a reboot, a
//! dnsmasq reloading) must find either the old contents or the new ones,
//! whole.
//!
//! The bytes go to a temp file beside the target, which is synced before it
//! is renamed over the target (a rename is atomic within a directory), and
//! the directory is synced after, so the rename itself survives the power
//! cut. Everything the agent keeps in its state directory and every config
//! file it writes for another program goes through here.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

/// Replaces `path` with `bytes`, with permissions `mode` (before the umask).
/// The temp file (`.<name>.tmp` in the same directory) is created afresh, so
/// a leftover from a crash cannot lend it wider permissions. The directory
/// must exist.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file without directory")?;
    let name = path.file_name().context("a path without file name")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", tmp.display())),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}
