//! Fuzzes the agent's only parser of network bytes before enforcement:
//! `open_device_config` must reject garbage with an error, never panic.
//! Run: `cargo +nightly fuzz run open_envelope` (from `fuzz/`).
#![no_main]

use isdf_api::{open_device_config, OpenPolicy, TrustedKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let trusted = TrustedKeys::new([key.verifying_key()]);
    let policy = OpenPolicy { device_id: "7f0b3c1e-2f43-4a51-9a0e-6c1d2b3a4f50", enforced_version: Some(1), now: Some(0) };
    let _ = open_device_config(data, &trusted, &policy);
    // Also past the signature check: the payload parser on signed garbage.
    let sealed = isdf_api::seal(isdf_api::CONFIG_PAYLOAD_TYPE, data, &key).to_json();
    if let Ok(config) = open_device_config(&sealed, &trusted, &policy) {
        // A config that opens must re-serialise and open again identically.
        let again = serde_json::to_vec(&config).unwrap();
        let resealed = isdf_api::seal(isdf_api::CONFIG_PAYLOAD_TYPE, &again, &key).to_json();
        assert_eq!(open_device_config(&resealed, &trusted, &policy).unwrap(), config);
    }
});
