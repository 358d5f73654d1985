//! Device configs in signed envelopes ([`crate::dsse`]): the agent verifies
//! the signature before it parses the payload, then parses exactly the bytes
//! that were signed. [`open_device_config`] is the one place that decides
//! whether a config may be enforced; every rejection has a stable code that
//! the agent reports to the controller.

use crate::config::DeviceConfig;
pub(crate) use crate::dsse::{decode, verify_signature};
pub use crate::dsse::{pae, seal, Envelope, EnvelopeSignature, KeyId, OpenError, TrustedKeys};

/// Payload type of a device config envelope.
pub const CONFIG_PAYLOAD_TYPE: &str = "application/vnd.isdf.device-config+json";

/// Largest envelope an agent reads. Checked before the body is read in full.
pub const MAX_ENVELOPE_BYTES: usize = 8 * 1024 * 1024;

/// What an agent requires of a config before enforcing it.
#[derive(Debug, Clone)]
pub struct OpenPolicy<'a> {
    /// This router's id; a config for any other device is refused.
    pub device_id: &'a str,
    /// The version the agent enforces now; the config must be strictly newer.
    pub enforced_version: Option<u64>,
    /// Current Unix time for the expiry check; `None` skips it (used only to
    /// re-enforce the persisted last good config at start, which never opens
    /// the firewall).
    pub now: Option<i64>,
}

/// Verifies an envelope and returns the config inside, or why not.
///
/// Order matters: size, then signature, and only then are the signed bytes
/// parsed; device, version and expiry are checked on the parsed config.
pub fn open_device_config(
    envelope_bytes: &[u8],
    trusted: &TrustedKeys,
    policy: &OpenPolicy<'_>,
) -> Result<DeviceConfig, OpenError> {
    let (envelope, payload) = decode(envelope_bytes, CONFIG_PAYLOAD_TYPE, MAX_ENVELOPE_BYTES)?;
    verify_signature(&envelope, &payload, trusted)?;

    let config: DeviceConfig =
        serde_json::from_slice(&payload).map_err(|e| OpenError::MalformedConfig(e.to_string()))?;
    config
        .validate()
        .map_err(|e| OpenError::InvalidConfig(e.0))?;
    if config.device_id != policy.device_id {
        return Err(OpenError::WrongDevice {
            got: config.device_id,
            expected: policy.device_id.to_owned(),
        });
    }
    if let Some(enforced) = policy.enforced_version {
        if config.version <= enforced {
            return Err(OpenError::NotNewer {
                got: config.version,
                enforced,
            });
        }
    }
    if let Some(now) = policy.now {
        if config.expires_at <= now {
            return Err(OpenError::Expired {
                expires_at: config.expires_at,
                now,
            });
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine;
    use ed25519_dalek::SigningKey;

    /// The shared test vector: a fixed key, a fixed config, the exact envelope.
    /// The controller's signer tests check they produce these same bytes.
    const VECTOR_SEED: [u8; 32] = [7; 32];
    const SAMPLE: &str = include_str!("../tests/vectors/config-sample.json");
    const SAMPLE_DEVICE: &str = "7f0b3c1e-2f43-4a51-9a0e-6c1d2b3a4f50";
    const SAMPLE_NOW: i64 = 1_795_000_100;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&VECTOR_SEED)
    }

    fn sample_payload() -> Vec<u8> {
        let config: DeviceConfig = serde_json::from_str(SAMPLE).unwrap();
        serde_json::to_vec(&config).unwrap()
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::new([key().verifying_key()])
    }

    fn policy() -> OpenPolicy<'static> {
        OpenPolicy {
            device_id: SAMPLE_DEVICE,
            enforced_version: Some(2),
            now: Some(SAMPLE_NOW),
        }
    }

    fn sealed(payload: &[u8]) -> Vec<u8> {
        seal(CONFIG_PAYLOAD_TYPE, payload, &key()).to_json()
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    /// Compares with a committed vector file; `UPDATE_VECTORS=1` rewrites it.
    fn check_vector(file: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors")
            .join(file);
        if std::env::var_os("UPDATE_VECTORS").is_some() {
            std::fs::write(&path, format!("{actual}\n")).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            actual,
            expected.trim(),
            "{file} differs; UPDATE_VECTORS=1 rewrites it"
        );
    }

    #[test]
    fn envelope_matches_the_committed_vector() {
        let envelope = String::from_utf8(sealed(&sample_payload())).unwrap();
        check_vector("envelope-sample.json", &envelope);
        check_vector(
            "public-key.hex",
            &hex::encode(key().verifying_key().as_bytes()),
        );
    }

    #[test]
    fn a_good_envelope_opens() {
        let config = open_device_config(&sealed(&sample_payload()), &trusted(), &policy()).unwrap();
        assert_eq!(config.version, 3);
    }

    fn rejection(bytes: &[u8]) -> &'static str {
        open_device_config(bytes, &trusted(), &policy())
            .unwrap_err()
            .code()
    }

    #[test]
    fn every_rejection_has_its_code() {
        let payload = sample_payload();
        let good: Envelope = serde_json::from_slice(&sealed(&payload)).unwrap();

        let too_big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(rejection(&too_big), "too_large");
        assert_eq!(rejection(b"{not json"), "malformed_envelope");

        let mut extra = serde_json::to_value(&good).unwrap();
        extra["extra"] = 1.into();
        assert_eq!(
            rejection(extra.to_string().as_bytes()),
            "malformed_envelope"
        );

        let mut wrong_type = good.clone();
        wrong_type.payload_type = "application/json".into();
        assert_eq!(rejection(&wrong_type.to_json()), "wrong_payload_type");

        let stranger = SigningKey::from_bytes(&[9; 32]);
        assert_eq!(
            rejection(&seal(CONFIG_PAYLOAD_TYPE, &payload, &stranger).to_json()),
            "unknown_key"
        );

        // Same key id, signature over other bytes: a forgery.
        let mut tampered = good.clone();
        let mut altered = payload.clone();
        let at = altered.iter().position(|b| *b == b'9').unwrap();
        altered[at] = b'8';
        tampered.payload = BASE64.encode(&altered);
        assert_eq!(rejection(&tampered.to_json()), "bad_signature");

        let mut garbage_sig = good.clone();
        garbage_sig.signatures[0].sig = BASE64.encode([0u8; 64]);
        assert_eq!(rejection(&garbage_sig.to_json()), "bad_signature");

        assert_eq!(rejection(&sealed(b"[]")), "malformed_config");

        let mut doc: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        doc["unexpected"] = true.into();
        assert_eq!(
            rejection(&sealed(doc.to_string().as_bytes())),
            "malformed_config"
        );

        let mut doc: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        doc["firewall"]["rules"][0]["match"]["flow_in_set"] = "missing".into();
        assert_eq!(
            rejection(&sealed(doc.to_string().as_bytes())),
            "invalid_config"
        );

        let mut doc: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        doc["device_id"] = "someone-else".into();
        assert_eq!(
            rejection(&sealed(doc.to_string().as_bytes())),
            "wrong_device"
        );

        let mut doc: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        doc["version"] = 2.into();
        assert_eq!(rejection(&sealed(doc.to_string().as_bytes())), "not_newer");

        let mut doc: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        doc["expires_at"] = (SAMPLE_NOW - 1).into();
        assert_eq!(rejection(&sealed(doc.to_string().as_bytes())), "expired");
    }

    #[test]
    fn expiry_is_not_checked_when_re_enforcing_at_start() {
        let mut doc: serde_json::Value = serde_json::from_slice(&sample_payload()).unwrap();
        doc["expires_at"] = (SAMPLE_NOW - 1).into();
        let bytes = sealed(doc.to_string().as_bytes());
        let at_start = OpenPolicy {
            now: None,
            enforced_version: None,
            ..policy()
        };
        assert!(open_device_config(&bytes, &trusted(), &at_start).is_ok());
    }

    #[test]
    fn public_keys_parse_from_hex_and_base64() {
        let k = key().verifying_key();
        assert_eq!(
            TrustedKeys::parse_public_key(&hex::encode(k.as_bytes())),
            Ok(k)
        );
        assert_eq!(
            TrustedKeys::parse_public_key(&BASE64.encode(k.as_bytes())),
            Ok(k)
        );
        assert!(TrustedKeys::parse_public_key("abcd").is_err());
    }
}
