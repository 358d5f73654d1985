//! The agent's state directory: the device identity (key and certificate),
//! the last good envelope (exact signed bytes), the root chain and the status
//! sequence counter, each written atomically (`write_atomically`: temp file,
//! fsync, rename, fsync of the directory), so a crash or power cut leaves
//! either the old file or the new one.
//!
//! Other parts of the agent keep their own files here through the same two
//! primitives (`read_optional`, `write_atomically`): the router's own blocks
//! (`router_blocks::persist`) and the WireGuard keys (`wireguard::keys`).
//! This module knows nothing of their contents, so it imports nothing of
//! theirs.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use isdf_api::enrollment::DeviceCertificate;
use serde::{Deserialize, Serialize};

use super::atomic_write::write_atomically;

pub(crate) const LAST_GOOD: &str = "last-good.envelope.json";
pub(crate) const SEQUENCE: &str = "status-sequence";
pub(crate) const ROOTS: &str = "roots.json";
/// The device identity: one file holding the certificate answer and the
/// private key, mode 0600.
///
/// One file rather than a key file next to a certificate file because a
/// renewal replaces both, and only a single rename is atomic: with two files
/// a crash between the renames would leave a key that does not match the
/// certificate, and the router locked out until someone re-enrolls it. With
/// one file the router holds either the old pair or the new one, never a mix,
/// and no recovery logic is needed.
pub const IDENTITY: &str = "identity.json";

/// Who this router is to the controller: its certificate (with the CA, the
/// signing keys and the device API URL that came with it) and the private key
/// that was generated on the router and never left it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub certificate: DeviceCertificate,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
}

impl Identity {
    pub fn device_id(&self) -> &str {
        &self.certificate.device_id
    }
}

/// The key stays out of logs and panics.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.certificate.device_id)
            .field("not_after", &self.certificate.not_after)
            .finish_non_exhaustive()
    }
}

pub struct StateDir {
    dir: PathBuf,
    /// The last status sequence number handed out, persisted or not.
    last_sequence: AtomicU64,
}

impl StateDir {
    /// Opens `dir`, creating it (mode 0700: it holds the device key) if it
    /// does not exist.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_owned(),
            last_sequence: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `name` atomically with permissions `mode` (before the umask);
    /// see `write_atomically`.
    pub(crate) fn write_atomically(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
    ) -> anyhow::Result<()> {
        write_atomically(&self.dir.join(name), bytes, mode)
    }

    pub(crate) fn read_optional(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The persisted identity, or None before enrollment.
    pub fn identity(&self) -> anyhow::Result<Option<Identity>> {
        let Some(bytes) = self.read_optional(IDENTITY)? else {
            return Ok(None);
        };
        let identity = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", self.dir.join(IDENTITY).display()))?;
        Ok(Some(identity))
    }

    /// Stores `identity`, replacing the previous one in a single rename.
    pub fn save_identity(&self, identity: &Identity) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(identity).context("serialising the identity")?;
        self.write_atomically(IDENTITY, &json, 0o600)
    }

    /// The envelope of the last config that was applied and verified.
    pub fn last_good(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.read_optional(LAST_GOOD)
    }

    pub fn save_last_good(&self, envelope: &[u8]) -> anyhow::Result<()> {
        self.write_atomically(LAST_GOOD, envelope, 0o644)
    }

    /// Root documents fetched after enrollment (envelopes, oldest first).
    pub fn roots(&self) -> anyhow::Result<Vec<String>> {
        let path = self.dir.join(ROOTS);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Persists the chain the agent walked (verified before it is saved).
    pub fn save_roots(&self, envelopes: &[String]) -> anyhow::Result<()> {
        self.write_atomically(ROOTS, &serde_json::to_vec(envelopes)?, 0o644)
    }

    /// The last status sequence number persisted (0: none, or unreadable;
    /// the clock seeds the next one then).
    pub(crate) fn stored_sequence(&self) -> u64 {
        std::fs::read_to_string(self.dir.join(SEQUENCE))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    }

    /// The next status sequence number, above the last one handed out and
    /// the one persisted, and persisted before it is used. Seeded from the
    /// clock (milliseconds) so a router whose state was wiped still reports
    /// above its old sequence. When it cannot be persisted (a full disk) the
    /// number is still good to use, and the error says why it was not
    /// saved: a restart seeds from the clock again.
    pub fn next_sequence(&self, now_millis: u64) -> (u64, anyhow::Result<()>) {
        let last = self.last_sequence.load(Ordering::Relaxed);
        let next = self
            .stored_sequence()
            .max(last)
            .saturating_add(1)
            .max(now_millis);
        self.last_sequence.store(next, Ordering::Relaxed);
        let saved = self.write_atomically(SEQUENCE, next.to_string().as_bytes(), 0o644);
        (next, saved)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn last_good_round_trips_and_sequence_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.last_good().unwrap(), None);
        state.save_last_good(b"abc").unwrap();
        assert_eq!(state.last_good().unwrap().as_deref(), Some(&b"abc"[..]));
        let next = |state: &StateDir, now| {
            let (n, saved) = state.next_sequence(now);
            saved.unwrap();
            n
        };
        let a = next(&state, 10);
        let b = next(&state, 5);
        let c = next(&state, 100);
        assert_eq!((a, b, c), (10, 11, 100));
        let reopened = StateDir::open(dir.path()).unwrap();
        assert_eq!(next(&reopened, 0), 101);
    }

    #[test]
    fn the_sequence_grows_when_it_cannot_be_saved() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let (a, saved) = state.next_sequence(10);
        saved.unwrap();
        std::fs::remove_dir_all(state.path()).unwrap();
        let (b, saved) = state.next_sequence(5);
        assert!(saved.is_err());
        let (c, _) = state.next_sequence(5);
        assert_eq!((a, b, c), (10, 11, 12));
    }

    fn identity(device_id: &str, key: &str) -> Identity {
        Identity {
            certificate: DeviceCertificate {
                device_id: device_id.into(),
                certificate_pem: format!("cert for {key}"),
                ca_pem: "ca".into(),
                signing_public_keys: vec!["00".repeat(32)],
                device_api_url: "https://controller.test:8443".into(),
                roots: Vec::new(),
                not_before: 1_000,
                not_after: 4_000,
            },
            key_pem: key.into(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_identity_round_trips_with_mode_0600_and_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.identity().unwrap(), None);

        let first = identity("dev-1", "key one");
        state.save_identity(&first).unwrap();
        assert_eq!(state.identity().unwrap().as_ref(), Some(&first));
        assert_eq!(mode(&dir.path().join(IDENTITY)), 0o600);
        // The file is the `Identity` document: the whole certificate answer
        // under "certificate", the key next to it.
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(IDENTITY)).unwrap()).unwrap();
        assert_eq!(json["certificate"]["device_id"], "dev-1");
        assert_eq!(json["key_pem"], "key one");

        // A crash left a world-readable temp file behind: the next write
        // does not inherit its permissions, and leaves no temp file.
        let tmp = dir.path().join(format!(".{IDENTITY}.tmp"));
        std::fs::write(&tmp, "junk").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        let renewed = identity("dev-1", "key two");
        state.save_identity(&renewed).unwrap();
        assert_eq!(mode(&dir.path().join(IDENTITY)), 0o600);
        assert!(!tmp.exists());
        let loaded = StateDir::open(dir.path())
            .unwrap()
            .identity()
            .unwrap()
            .unwrap();
        assert_eq!(loaded, renewed, "key and certificate change together");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [IDENTITY]);
    }

    #[test]
    fn a_corrupt_identity_is_an_error_not_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY), "{").unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(state.identity().is_err());
    }

    #[test]
    fn the_debug_form_hides_the_key() {
        let shown = format!("{:?}", identity("dev-1", "SECRET"));
        assert!(
            shown.contains("dev-1") && !shown.contains("SECRET"),
            "{shown}"
        );
    }
}
