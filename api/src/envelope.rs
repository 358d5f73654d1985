//! The signed envelope (DSSE): an Ed25519 signature over the pre-authentication
//! encoding of `payloadType` and the exact payload bytes.
//!
//! The agent verifies the signature before it parses the payload, then parses
//! exactly the bytes that were signed. [`open_device_config`] is the one place
//! that decides whether a config may be enforced; every rejection has a stable
//! code that the agent reports to the controller.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::DeviceConfig;

/// Payload type of a device config envelope.
pub const CONFIG_PAYLOAD_TYPE: &str = "application/vnd.isdf.device-config+json";

/// Largest envelope an agent reads. Checked before the body is read in full.
pub const MAX_ENVELOPE_BYTES: usize = 8 * 1024 * 1024;

/// A DSSE envelope as it travels over the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 (standard alphabet, padded) of the exact signed bytes.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    pub keyid: String,
    /// Base64 of the 64-byte Ed25519 signature.
    pub sig: String,
}

/// Identifies a public key: `ed25519:` and the first 16 hex digits of the
/// SHA-256 of the raw key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(pub String);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        KeyId(format!("ed25519:{}", &hex::encode(digest)[..16]))
    }
}

/// DSSE pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(
        format!(
            "DSSEv1 {} {} {} ",
            payload_type.len(),
            payload_type,
            payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Builds an envelope from a signature made elsewhere (a KMS, an HSM).
    pub fn from_signature(
        payload_type: &str,
        payload: &[u8],
        keyid: &KeyId,
        sig: &[u8; 64],
    ) -> Self {
        Envelope {
            payload_type: payload_type.to_owned(),
            payload: BASE64.encode(payload),
            signatures: vec![EnvelopeSignature {
                keyid: keyid.0.clone(),
                sig: BASE64.encode(sig),
            }],
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelope serialises")
    }

    /// The signed bytes, *unverified*: for the controller reading back what
    /// it signed itself. Agents go through [`open_device_config`].
    pub fn payload_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        BASE64.decode(&self.payload)
    }
}

/// Signs `payload` with a key held in memory.
pub fn seal(payload_type: &str, payload: &[u8], key: &SigningKey) -> Envelope {
    let sig = key.sign(&pae(payload_type, payload));
    Envelope::from_signature(
        payload_type,
        payload,
        &KeyId::of(&key.verifying_key()),
        &sig.to_bytes(),
    )
}

/// The public keys an agent accepts signatures from.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(KeyId, VerifyingKey)>,
}

impl TrustedKeys {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        TrustedKeys {
            keys: keys.into_iter().map(|k| (KeyId::of(&k), k)).collect(),
        }
    }

    /// Parses a public key written as 64 hex digits or base64 of the 32 raw bytes.
    pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| BASE64.decode(text).ok())
            .ok_or_else(|| "public key is neither hex nor base64".to_string())?;
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "an Ed25519 public key is 32 bytes".to_string())?;
        VerifyingKey::from_bytes(&raw).map_err(|e| format!("invalid Ed25519 public key: {e}"))
    }

    /// Whether no key is trusted (nothing verifies).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn find(&self, keyid: &str) -> Option<&VerifyingKey> {
        self.keys
            .iter()
            .find(|(id, _)| id.0 == keyid)
            .map(|(_, k)| k)
    }
}

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

/// Why an envelope was refused. [`OpenError::code`] is stable and reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("envelope is {size} bytes, above the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(String),
    #[error("payload type `{0}` is not a device config")]
    WrongPayloadType(String),
    #[error("no signature by a trusted key (key ids: {0})")]
    UnknownKey(String),
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    #[error("malformed config: {0}")]
    MalformedConfig(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("config is for device {got}, this is {expected}")]
    WrongDevice { got: String, expected: String },
    #[error("config version {got} is not above the enforced version {enforced}")]
    NotNewer { got: u64, enforced: u64 },
    #[error("config expired at {expires_at} (now {now})")]
    Expired { expires_at: i64, now: i64 },
}

impl OpenError {
    pub fn code(&self) -> &'static str {
        match self {
            OpenError::TooLarge { .. } => "too_large",
            OpenError::MalformedEnvelope(_) => "malformed_envelope",
            OpenError::WrongPayloadType(_) => "wrong_payload_type",
            OpenError::UnknownKey(_) => "unknown_key",
            OpenError::BadSignature(_) => "bad_signature",
            OpenError::MalformedConfig(_) => "malformed_config",
            OpenError::InvalidConfig(_) => "invalid_config",
            OpenError::WrongDevice { .. } => "wrong_device",
            OpenError::NotNewer { .. } => "not_newer",
            OpenError::Expired { .. } => "expired",
        }
    }
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

/// The first steps of opening any envelope, before its signature: at most
/// `limit` bytes, an envelope, of `payload_type`, with a base64 payload.
/// Returns the envelope and its payload's bytes (nothing verified yet).
pub(crate) fn decode(
    envelope_bytes: &[u8],
    payload_type: &str,
    limit: usize,
) -> Result<(Envelope, Vec<u8>), OpenError> {
    if envelope_bytes.len() > limit {
        return Err(OpenError::TooLarge {
            size: envelope_bytes.len(),
            limit,
        });
    }
    let envelope: Envelope = serde_json::from_slice(envelope_bytes)
        .map_err(|e| OpenError::MalformedEnvelope(e.to_string()))?;
    if envelope.payload_type != payload_type {
        return Err(OpenError::WrongPayloadType(envelope.payload_type));
    }
    let payload = BASE64
        .decode(&envelope.payload)
        .map_err(|e| OpenError::MalformedEnvelope(format!("payload is not base64: {e}")))?;
    Ok((envelope, payload))
}

pub(crate) fn verify_signature(
    envelope: &Envelope,
    payload: &[u8],
    trusted: &TrustedKeys,
) -> Result<(), OpenError> {
    let signed = pae(&envelope.payload_type, payload);
    let mut seen = Vec::new();
    for signature in &envelope.signatures {
        let Some(key) = trusted.find(&signature.keyid) else {
            seen.push(signature.keyid.clone());
            continue;
        };
        let bad = || OpenError::BadSignature(signature.keyid.clone());
        let raw = BASE64.decode(&signature.sig).map_err(|_| bad())?;
        let sig = Signature::from_slice(&raw).map_err(|_| bad())?;
        // verify_strict refuses weak keys and non-canonical signatures.
        return key.verify_strict(&signed, &sig).map_err(|_| bad());
    }
    Err(OpenError::UnknownKey(if seen.is_empty() {
        "none".into()
    } else {
        seen.join(", ")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
