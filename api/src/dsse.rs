//! The signed envelope (DSSE): an Ed25519 signature over the pre-authentication
//! encoding of `payloadType` and the exact payload bytes, and the steps every
//! envelope is opened by (size, type, base64, then the signature) whatever it
//! carries: device configs (`envelope.rs`), root documents (`root.rs`) and
//! release manifests (`release.rs`). It knows none of them, so a config can
//! carry a signed release manifest without a cycle.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
