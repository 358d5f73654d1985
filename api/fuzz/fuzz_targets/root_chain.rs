//! The root chain as the agent reads it: root 1 from the enrollment answer
//! (it signs itself), later roots from `GET /device/v1/roots`, walked one
//! version at a time. One envelope per line of the input: the first is
//! opened as root 1, the rest are walked. An accepted root names usable
//! signing keys, a walk moves at most one version per envelope, and walking
//! the same chain again from its end changes nothing.
#![no_main]

use isdf_api::root::RootDocument;
use isdf_api_fuzz::properties::{assert_round_trip, lines};
use libfuzzer_sys::fuzz_target;

/// More than any chain the controller serves in a test.
const MAX_ENVELOPES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut envelopes = lines(data, MAX_ENVELOPES);
    let Some(first) = envelopes.next() else {
        return;
    };
    let Ok(root) = RootDocument::open_first(first) else {
        return;
    };
    assert_eq!(root.version, 1);
    root.config_keys()
        .expect("root 1 names usable signing keys");
    let rest: Vec<&[u8]> = envelopes.collect();
    let Ok(latest) = root.walk(rest.iter().copied()) else {
        return;
    };
    assert!(
        (1..=1 + rest.len() as u64).contains(&latest.version),
        "root {} after {} envelopes",
        latest.version,
        rest.len()
    );
    latest
        .config_keys()
        .expect("the newest root names usable signing keys");
    assert_eq!(latest.walk(rest.iter().copied()).as_ref(), Ok(&latest));
    assert_round_trip(&latest);
});
