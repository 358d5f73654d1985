//! Durable file writes for keys and certificates in the data directory: the
//! controller's one atomic-write helper (temporary file, fsync, rename,
//! fsync of the directory), so a crash or a power cut leaves the old file
//! or the new one, never a torn one or none.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

/// A 32-byte secret kept hex-encoded in `path` (mode 0600), made at first use.
pub fn load_or_create_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .with_context(|| format!("{} is not hex", path.display()))?;
            bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} does not hold 32 bytes", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
            write_private_file(path, format!("{}\n", hex::encode(secret)).as_bytes())?;
            tracing::info!(path = %path.display(), "created a secret");
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of
/// the directory) with mode 0600.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_file_with_mode(path, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically with mode 0644 (certificates).
pub fn write_public_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_file_with_mode(path, bytes, 0o644)
}

fn write_file_with_mode(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    // The rename is durable only once the directory entry is.
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_replaced_file_has_the_new_bytes_its_mode_and_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_private_file(&path, b"old").unwrap();
        write_private_file(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key.pem"]);
    }

    #[test]
    fn a_secret_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portal.key");
        let made = load_or_create_secret(&path).unwrap();
        assert_eq!(load_or_create_secret(&path).unwrap(), made);
        std::fs::write(&path, "not hex").unwrap();
        assert!(load_or_create_secret(&path).is_err());
    }
}
