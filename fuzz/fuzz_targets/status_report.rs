//! Fuzzes the controller's parser of status reports from devices.
//! Run: `cargo +nightly fuzz run status_report` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = serde_json::from_slice::<isdf_api::StatusReport>(data) {
        let again = serde_json::to_vec(&report).unwrap();
        assert_eq!(serde_json::from_slice::<isdf_api::StatusReport>(&again).unwrap(), report);
    }
});
