//! `open_device_config`, the one function that decides whether a config may
//! be enforced, on envelope bytes as the agent reads them from the long
//! poll. Whatever it accepts is bound to this router, its trusted key, a
//! newer version and an unexpired time: the same bytes are refused under
//! another device, other keys, a higher enforced version or a later clock,
//! and the config is exactly the signed bytes, parsed. (Under other keys
//! the refusal is `unknown_key`, or `bad_signature` when a signature claims
//! one of them: the first signature naming a trusted key decides.)
#![no_main]

use isdf_api::{open_device_config, DeviceConfig, Envelope, OpenPolicy, TrustedKeys};
use isdf_api_fuzz::fixtures::{policy, stranger, trusted, OTHER_DEVICE};
use isdf_api_fuzz::properties::assert_round_trip;
use libfuzzer_sys::fuzz_target;

fn refusal(data: &[u8], trusted: &TrustedKeys, policy: &OpenPolicy<'_>) -> &'static str {
    match open_device_config(data, trusted, policy) {
        Ok(config) => panic!("opened under {policy:?}: {config:?}"),
        Err(e) => e.code(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(config) = open_device_config(data, trusted(), &policy()) else {
        return;
    };
    assert_eq!(
        open_device_config(data, trusted(), &policy()).as_ref(),
        Ok(&config)
    );
    let other_device = OpenPolicy {
        device_id: OTHER_DEVICE,
        ..policy()
    };
    assert_eq!(refusal(data, trusted(), &other_device), "wrong_device");
    let other_keys = refusal(data, stranger(), &policy());
    assert!(
        matches!(other_keys, "unknown_key" | "bad_signature"),
        "{other_keys}"
    );
    let enforced = OpenPolicy {
        enforced_version: Some(config.version),
        ..policy()
    };
    assert_eq!(refusal(data, trusted(), &enforced), "not_newer");
    let later = OpenPolicy {
        now: Some(config.expires_at),
        ..policy()
    };
    assert_eq!(refusal(data, trusted(), &later), "expired");

    let envelope: Envelope = serde_json::from_slice(data).expect("it opened");
    let signed = envelope.payload_bytes().expect("it opened");
    let parsed: DeviceConfig = serde_json::from_slice(&signed).expect("it opened");
    assert_eq!(parsed, config, "the config is not the signed bytes");
    assert_round_trip(&config);
});
