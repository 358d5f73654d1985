//! The agent's state directory: the last good envelope (exact signed bytes)
//! and the status sequence counter, each written atomically (temp file,
//! fsync, rename, fsync of the directory), so a crash or power cut leaves
//! either the old file or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

const LAST_GOOD: &str = "last-good.envelope.json";
const SEQUENCE: &str = "status-sequence";

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        Ok(())
    }

    /// The envelope of the last config that was applied and verified.
    pub fn last_good(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.dir.join(LAST_GOOD);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save_last_good(&self, envelope: &[u8]) -> anyhow::Result<()> {
        self.write_atomically(LAST_GOOD, envelope)
    }

    /// The next status sequence number, persisted before it is used. Seeded
    /// from the clock (milliseconds) so a router whose state was wiped still
    /// reports above its old sequence.
    pub fn next_sequence(&self, now_millis: u64) -> anyhow::Result<u64> {
        let path = self.dir.join(SEQUENCE);
        let stored = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let next = stored.saturating_add(1).max(now_millis);
        self.write_atomically(SEQUENCE, next.to_string().as_bytes())?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_good_round_trips_and_sequence_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.last_good().unwrap(), None);
        state.save_last_good(b"abc").unwrap();
        assert_eq!(state.last_good().unwrap().as_deref(), Some(&b"abc"[..]));
        let a = state.next_sequence(10).unwrap();
        let b = state.next_sequence(5).unwrap();
        let c = state.next_sequence(100).unwrap();
        assert_eq!((a, b, c), (10, 11, 100));
        let reopened = StateDir::open(dir.path()).unwrap();
        assert_eq!(reopened.next_sequence(0).unwrap(), 101);
    }
}
