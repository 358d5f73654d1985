//! The one way the agent replaces a file: a router loses power at any
//! moment, and whoever reads the file next (the agent after a reboot, a
//! dnsmasq reloading) must find either the old contents or the new ones,
//! whole.
//!
//! The bytes go to a temp file beside the target, which is synced before it
//! is renamed over the target (a rename is atomic within a directory), and
//! the directory is synced after, so the rename itself survives the power
//! cut. Everything the agent keeps in its state directory and every config
//! file it writes for another program goes through here (a test scans the
//! agent's code for any other writer: `every_file_is_written_through_here`).
//!
//! The steps go through the `Disk` trait so that tests can cut the power
//! after any one of them, or after any byte of the write
//! (`power_cut::every_state`); the agent only ever uses `RealDisk`. A write
//! that fails (a full disk) removes its temp file, so nothing half-written
//! stays behind and the target is untouched.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

/// The file system operations of a replacement, in the order
/// `write_atomically` makes them.
pub(crate) trait Disk {
    /// Removes `path`; a missing file is not an error.
    fn remove(&mut self, path: &Path) -> std::io::Result<()>;
    /// Creates `path`, which must not exist, with permissions `mode`.
    fn create_new(&mut self, path: &Path, mode: u32) -> std::io::Result<File>;
    fn write_all(&mut self, file: &mut File, bytes: &[u8]) -> std::io::Result<()>;
    fn sync(&mut self, file: &File) -> std::io::Result<()>;
    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()>;
    fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()>;
}

/// The file system itself.
pub(crate) struct RealDisk;

impl Disk for RealDisk {
    fn remove(&mut self, path: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn create_new(&mut self, path: &Path, mode: u32) -> std::io::Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
    }

    fn write_all(&mut self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        file.write_all(bytes)
    }

    fn sync(&mut self, file: &File) -> std::io::Result<()> {
        file.sync_all()
    }

    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }
}

/// Replaces `path` with `bytes`, with permissions `mode` (before the umask).
/// The temp file (`.<name>.tmp` in the same directory) is created afresh, so
/// a leftover from a crash cannot lend it wider permissions. The directory
/// must exist.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    write_atomically_on(&mut RealDisk, path, bytes, mode)
}

/// Appends `bytes` to a download in progress at `path` (created with mode
/// 0600 if missing), or empties it first when `restart`. The one writer
/// that is not atomic, on purpose: a cut download resumes from what the
/// file holds, and nothing uses the file before its size and SHA-256 are
/// checked against a signed manifest; the checked file is then put in place
/// with [`write_atomically`]'s rename.
pub fn append_to_download(path: &Path, bytes: &[u8], restart: bool) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(!restart)
        .write(true)
        .truncate(restart)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Moves the checked file `from` to `to` (same file system) with
/// permissions `mode`: a rename, atomic; the directory is synced after.
pub fn install_file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(from, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", from.display()))?;
    std::fs::rename(from, to)
        .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    sync_parent(to)
}

/// Points the symlink `link` at `target`: a new link renamed over it, so
/// a reader finds the old target or the new one.
pub fn switch_symlink(link: &Path, target: &Path) -> anyhow::Result<()> {
    let dir = link.parent().context("a link without directory")?;
    let name = link.file_name().context("a link without name")?;
    let temp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp)
        .with_context(|| format!("linking {}", temp.display()))?;
    std::fs::rename(&temp, link)
        .with_context(|| format!("switching {} to {}", link.display(), target.display()))?;
    sync_parent(link)
}

fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().context("a path without directory")?;
    RealDisk
        .sync_dir(dir)
        .with_context(|| format!("syncing {}", dir.display()))
}

/// `write_atomically` through `disk`.
pub(crate) fn write_atomically_on(
    disk: &mut dyn Disk,
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    let dir = path.parent().context("a file without directory")?;
    let name = path.file_name().context("a path without file name")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    disk.remove(&tmp)
        .with_context(|| format!("removing {}", tmp.display()))?;
    let mut file = disk
        .create_new(&tmp, mode)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = disk
        .write_all(&mut file, bytes)
        .and_then(|()| disk.sync(&file));
    drop(file);
    if let Err(e) = written {
        // A full disk: the target keeps its contents, and the space the
        // partial copy took is given back.
        let _ = disk.remove(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    disk.rename(&tmp, path)
        .with_context(|| format!("renaming to {}", path.display()))?;
    disk.sync_dir(dir)
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// A power cut at every point of a replacement, for tests.
#[cfg(test)]
pub(crate) mod power_cut {
    use std::path::{Path, PathBuf};

    use super::*;

    /// The file system until the power goes: every operation costs one
    /// unit of `budget`, every byte written one more; when it runs out the
    /// operation is left undone (a write stops at that byte) and every
    /// later one fails.
    pub(crate) struct PowerCut {
        budget: usize,
        /// Whether the power went.
        pub(crate) cut: bool,
        /// A rename the directory was not synced after: a power cut may
        /// undo it. The target's bytes before it (None: it did not exist).
        unsynced_rename: Option<(PathBuf, PathBuf, Option<Vec<u8>>)>,
    }

    impl PowerCut {
        pub(crate) fn after(budget: usize) -> Self {
            PowerCut {
                budget,
                cut: false,
                unsynced_rename: None,
            }
        }

        fn spend(&mut self) -> std::io::Result<()> {
            if self.cut || self.budget == 0 {
                self.cut = true;
                return Err(std::io::Error::other("power cut"));
            }
            self.budget -= 1;
            Ok(())
        }
    }

    impl Disk for PowerCut {
        fn remove(&mut self, path: &Path) -> std::io::Result<()> {
            self.spend()?;
            RealDisk.remove(path)
        }

        fn create_new(&mut self, path: &Path, mode: u32) -> std::io::Result<File> {
            self.spend()?;
            RealDisk.create_new(path, mode)
        }

        fn write_all(&mut self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
            self.spend()?;
            let n = bytes.len().min(self.budget);
            file.write_all(&bytes[..n])?;
            self.budget -= n;
            if n < bytes.len() {
                self.cut = true;
                return Err(std::io::Error::other("power cut"));
            }
            Ok(())
        }

        fn sync(&mut self, file: &File) -> std::io::Result<()> {
            self.spend()?;
            RealDisk.sync(file)
        }

        fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.spend()?;
            let before = std::fs::read(to).ok();
            RealDisk.rename(from, to)?;
            self.unsynced_rename = Some((from.to_owned(), to.to_owned(), before));
            Ok(())
        }

        fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
            self.spend()?;
            RealDisk.sync_dir(dir)?;
            self.unsynced_rename = None;
            Ok(())
        }
    }

    /// Every state the directory of `path` can be left in by a power cut
    /// while `write` replaces `path` (which holds `old`, or does not exist)
    /// with new contents: after each operation and each byte, and, while a
    /// rename is not yet synced, with that rename undone too. Other files
    /// of the directory are left alone. `check` is called on each (with a
    /// label saying where the power went) and must not write `path`.
    /// Returns how many states there were.
    pub(crate) fn every_state(
        path: &Path,
        old: Option<&[u8]>,
        mut write: impl FnMut(&mut dyn Disk) -> anyhow::Result<()>,
        mut check: impl FnMut(&str),
    ) -> usize {
        let dir = path.parent().expect("a directory");
        let mut states = 0;
        let name = path.file_name().unwrap().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp"));
        for budget in 0.. {
            // Start from the old state: the target as it was, no temp file.
            RealDisk.remove(&tmp).unwrap();
            match old {
                Some(old) => std::fs::write(path, old).unwrap(),
                None => RealDisk.remove(path).unwrap(),
            }
            let mut disk = PowerCut::after(budget);
            let result = write(&mut disk);
            if !disk.cut {
                result.expect("the write succeeds with the power on");
                check(&format!("after the whole write ({budget} steps)"));
                return states + 1;
            }
            assert!(result.is_err(), "a write cut off must fail");
            check(&format!("power cut after {budget} steps"));
            states += 1;
            if let Some((from, to, before)) = disk.unsynced_rename.take() {
                // The directory was not synced: the rename may be lost.
                std::fs::rename(&to, &from).unwrap();
                if let Some(before) = before {
                    std::fs::write(&to, before).unwrap();
                }
                check(&format!(
                    "power cut after {budget} steps, the unsynced rename lost"
                ));
                states += 1;
            }
        }
        unreachable!("the loop returns once the budget suffices")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::power_cut::{every_state, PowerCut};
    use super::*;

    /// The naive replacement: remove, then write in place. For showing
    /// that the power-cut sweep catches what it must.
    fn write_in_place(disk: &mut dyn Disk, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        disk.remove(path)?;
        let mut file = disk.create_new(path, 0o644)?;
        disk.write_all(&mut file, bytes)?;
        disk.sync(&file)?;
        Ok(())
    }

    #[test]
    fn a_power_cut_at_any_byte_leaves_the_old_file_or_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let new = br#"{"version": 2, "padding": "a new file longer than the old"}"#;
        for old in [None, Some(&br#"{"version": 1}"#[..])] {
            let mut seen = std::collections::BTreeSet::new();
            let states = every_state(
                &path,
                old,
                |disk| write_atomically_on(disk, &path, new, 0o600),
                |at| {
                    let read = std::fs::read(&path).ok();
                    assert!(
                        read.as_deref() == old || read.as_deref() == Some(&new[..]),
                        "{at}: the file holds {:?}",
                        read.map(|r| String::from_utf8_lossy(&r).into_owned())
                    );
                    seen.insert(read);
                },
            );
            // Every byte of the write was a state of its own, and both
            // outcomes happened.
            assert!(states > new.len(), "{states} states");
            assert_eq!(seen.len(), 2, "old and new both seen");
        }

        // The same sweep catches a writer that is not atomic.
        let old = &b"old contents"[..];
        let mut torn = 0;
        every_state(
            &path,
            Some(old),
            |disk| write_in_place(disk, &path, new),
            |_| {
                let read = std::fs::read(&path).ok();
                if read.as_deref() != Some(old) && read.as_deref() != Some(&new[..]) {
                    torn += 1;
                }
            },
        );
        assert!(torn > new.len(), "in-place writes tear: {torn}");
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"old", 0o644).unwrap();
        // The disk fills up in the middle of the write.
        struct Full;
        impl Disk for Full {
            fn remove(&mut self, path: &Path) -> std::io::Result<()> {
                RealDisk.remove(path)
            }
            fn create_new(&mut self, path: &Path, mode: u32) -> std::io::Result<File> {
                RealDisk.create_new(path, mode)
            }
            fn write_all(&mut self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
                file.write_all(&bytes[..bytes.len() / 2])?;
                Err(std::io::Error::from_raw_os_error(28))
            }
            fn sync(&mut self, file: &File) -> std::io::Result<()> {
                RealDisk.sync(file)
            }
            fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
                RealDisk.rename(from, to)
            }
            fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
                RealDisk.sync_dir(dir)
            }
        }
        let err = write_atomically_on(&mut Full, &path, b"new contents", 0o644).unwrap_err();
        assert!(format!("{err:#}").contains("No space left"), "{err:#}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temp file is left behind");
        // A power cut before anything happened changes nothing either.
        assert!(write_atomically_on(&mut PowerCut::after(0), &path, b"x", 0o644).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    /// Every file the agent writes goes through `write_atomically`: no other
    /// shipped file opens a file for writing. The exceptions: writes to
    /// `/proc/sys` (kernel settings, not files on a disk), and the file
    /// the managed dnsmasq's stderr goes to while it starts (dnsmasq writes
    /// it, the agent reads it back at once for the error and never again:
    /// a torn one costs a message, not state).
    #[test]
    fn every_file_is_written_through_here() {
        const EXCEPTIONS: &[(&str, &str)] = &[
            (
                "backend/nft/apply.rs",
                "/proc/sys/net/netfilter/nf_conntrack_acct",
            ),
            ("dns/dnsmasq.rs", "fn start_log_path"),
        ];
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(&src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let shipped = path.extension().is_some_and(|e| e == "rs")
                    && !rel.ends_with("tests.rs")
                    && !rel.contains("tests/")
                    && rel != "test_pki.rs"
                    && rel != "sys/atomic_write.rs";
                if !shipped {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Inline test modules come last in a file.
                let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
                for writer in [
                    "fs::write(",
                    "File::create(",
                    "OpenOptions::new()",
                    ".append(true)",
                ] {
                    if !code.contains(writer) {
                        continue;
                    }
                    let excused = EXCEPTIONS
                        .iter()
                        .any(|(file, why)| rel == *file && code.contains(why));
                    if !excused {
                        found.push(format!("{rel}: {writer}"));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "files written without write_atomically: {found:?}"
        );
    }
}
