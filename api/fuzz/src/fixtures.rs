//! The fixed world the targets verify in: the signing key of the shared
//! test vector (`api/tests/vectors/`), its device, the version an agent
//! enforces before it and a time at which it is valid. Keys are derived
//! once: a fuzz target runs the same code path millions of times.

use std::sync::LazyLock;

use ed25519_dalek::SigningKey;
use isdf_api::{DeviceConfig, OpenPolicy, TrustedKeys};

/// The device of the sample config.
pub const DEVICE: &str = "7f0b3c1e-2f43-4a51-9a0e-6c1d2b3a4f50";
/// Any other device.
pub const OTHER_DEVICE: &str = "00000000-0000-4000-8000-000000000001";
/// A time within the sample config's validity (Unix seconds).
pub const NOW: i64 = 1_795_000_100;
/// The version the agent enforces: the sample (version 3) is newer.
pub const ENFORCED_VERSION: u64 = 2;

/// The sample config and its envelope, signed by [`signing_key`].
pub const SAMPLE_CONFIG: &str = include_str!("../../tests/vectors/config-sample.json");
pub const SAMPLE_ENVELOPE: &str = include_str!("../../tests/vectors/envelope-sample.json");

static SAMPLE: LazyLock<DeviceConfig> =
    LazyLock::new(|| serde_json::from_str(SAMPLE_CONFIG).expect("the sample config parses"));
static SIGNING_KEY: LazyLock<SigningKey> = LazyLock::new(|| key(7));
static TRUSTED: LazyLock<TrustedKeys> =
    LazyLock::new(|| TrustedKeys::new([SIGNING_KEY.verifying_key()]));
static STRANGER: LazyLock<TrustedKeys> =
    LazyLock::new(|| TrustedKeys::new([key(9).verifying_key()]));

/// The sample config, parsed.
pub fn sample_config() -> &'static DeviceConfig {
    &SAMPLE
}

/// The Ed25519 key whose secret is 32 bytes of `seed`, as the tests make them.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// The controller's config-signing key in the test vectors.
pub fn signing_key() -> &'static SigningKey {
    &SIGNING_KEY
}

/// What the agent trusts: the signing key only.
pub fn trusted() -> &'static TrustedKeys {
    &TRUSTED
}

/// Keys of someone else.
pub fn stranger() -> &'static TrustedKeys {
    &STRANGER
}

/// The agent's policy for a config arriving by long poll.
pub fn policy() -> OpenPolicy<'static> {
    OpenPolicy {
        device_id: DEVICE,
        enforced_version: Some(ENFORCED_VERSION),
        now: Some(NOW),
    }
}
