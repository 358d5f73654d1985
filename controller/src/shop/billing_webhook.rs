//! The billing webhook's shared secret and its signatures, after Stripe's:
//! `Isdf-Signature: t=<unix secs>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
//!
//! The timestamp is signed with the body, so a captured request cannot be
//! replayed after [`TOLERANCE_SECS`]; within that window a replay is caught
//! by the payment id, which purchases store once.

use std::path::Path;

use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The request header carrying the signature.
pub const SIGNATURE_HEADER: &str = "isdf-signature";
/// Largest difference between the signed timestamp and our clock.
pub const TOLERANCE_SECS: i64 = 300;
/// The key file's name in the data directory.
pub const KEY_FILE: &str = "billing-webhook.key";
/// Most `v1=` signatures one header may carry (one per secret being rotated).
const MAX_SIGNATURES: usize = 4;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret: 32 random bytes, stored as hex with mode 0600.
#[derive(Clone)]
pub struct WebhookKey([u8; 32]);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(..)")
    }
}

/// Why a signature was refused (the reason is logged, never sent back in detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Isdf-Signature header")]
    Missing,
    #[error("the Isdf-Signature header is not `t=<unix secs>,v1=<hex>`")]
    Malformed,
    #[error("the signed timestamp is more than {TOLERANCE_SECS} s from the controller's clock")]
    Stale,
    #[error("no signature matches the body")]
    Mismatch,
}

impl WebhookKey {
    /// Reads the key at `path`, or creates it (0600) at first start.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        crate::trust::key_files::load_or_create_secret(path)
            .map(WebhookKey)
            .context("billing webhook key")
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        WebhookKey(bytes)
    }

    fn mac(&self, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The header value for `body` signed at `timestamp` (what the billing
    /// system sends; used by tests and integrators' examples).
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(&timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("t={timestamp},v1={}", hex::encode(tag))
    }

    /// Checks `header` against `body` at `now` (unix seconds). The HMAC is
    /// compared in constant time; any one of the `v1` signatures may match.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) if timestamp.is_none() => timestamp = Some(t),
                Some(("t", _)) => return Err(SignatureError::Malformed),
                Some(("v1", hex)) if signatures.len() < MAX_SIGNATURES => {
                    signatures.push(hex::decode(hex).map_err(|_| SignatureError::Malformed)?);
                }
                // Other schemes (a future v2) are ignored, as Stripe does.
                Some(_) => {}
                None => return Err(SignatureError::Malformed),
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
        let seconds: i64 = timestamp
            .parse()
            .ok()
            .filter(|_| timestamp.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed);
        }
        if (now - seconds).abs() > TOLERANCE_SECS {
            return Err(SignatureError::Stale);
        }
        let expected = self.mac(timestamp, body);
        if signatures
            .iter()
            .any(|s| expected.clone().verify_slice(s).is_ok())
        {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key() -> WebhookKey {
        WebhookKey::from_bytes([9; 32])
    }

    #[test]
    fn a_signed_body_verifies_within_the_window() {
        let body = br#"{"payment_id":"pi_1"}"#;
        let header = key().sign(NOW - 299, body);
        assert_eq!(key().verify(Some(&header), body, NOW), Ok(()));
        // A second signature (secret rotation) may come first.
        let rotated = format!(
            "t={NOW},v1={},{}",
            "00".repeat(32),
            &key().sign(NOW, body)[13..]
        );
        assert_eq!(key().verify(Some(&rotated), body, NOW), Ok(()));
    }

    #[test]
    fn everything_else_is_refused() {
        let body = b"{}";
        let good = key().sign(NOW, body);
        let cases = [
            (None, SignatureError::Missing),
            (Some("garbage".to_owned()), SignatureError::Malformed),
            (Some(format!("t={NOW}")), SignatureError::Malformed),
            (Some(format!("t=+{NOW},v1=00")), SignatureError::Malformed),
            (Some(format!("t={NOW},v1=zz")), SignatureError::Malformed),
            (Some(key().sign(NOW - 301, body)), SignatureError::Stale),
            (Some(key().sign(NOW + 301, body)), SignatureError::Stale),
            (
                Some(WebhookKey::from_bytes([1; 32]).sign(NOW, body)),
                SignatureError::Mismatch,
            ),
            (
                Some(good.replace(&NOW.to_string(), &(NOW - 1).to_string())),
                SignatureError::Mismatch,
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(
                key().verify(header.as_deref(), body, NOW),
                Err(expected),
                "{header:?}"
            );
        }
        assert_eq!(
            key().verify(Some(&good), b"{} ", NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let first = WebhookKey::load_or_create(&path).unwrap();
        let again = WebhookKey::load_or_create(&path).unwrap();
        assert_eq!(first.0, again.0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim().len(), 64);
    }
}
