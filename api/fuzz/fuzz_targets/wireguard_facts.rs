//! A router's WireGuard facts as the controller reads them (`PUT
//! /device/v1/wireguard/facts`): the JSON body (keys, port, WAN addresses,
//! probe nonce), then `WireguardFacts::check`. Accepted facts read back the
//! same, and their keys in WireGuard's own base64.
#![no_main]

use isdf_api::{WgKey, WireguardFacts};
use isdf_api_fuzz::properties::assert_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(facts) = serde_json::from_slice::<WireguardFacts>(data) else {
        return;
    };
    if facts.check().is_err() {
        return;
    }
    assert_ne!(facts.listen_port, 0);
    assert_ne!(facts.next_public_key, Some(facts.public_key));
    for key in std::iter::once(facts.public_key).chain(facts.next_public_key) {
        assert_eq!(WgKey::parse(&key.to_string()), Ok(key));
    }
    assert_round_trip(&facts);
});
