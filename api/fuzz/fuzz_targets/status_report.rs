//! Status reports as the controller reads them from a router (`POST
//! /device/v1/status`): the JSON body, then `StatusReport::check`. An
//! accepted report is stored as `jsonb` and shown to operators: it reads
//! back the same, and PostgreSQL can store it.
#![no_main]

use isdf_api::StatusReport;
use isdf_api_fuzz::properties::{assert_round_trip, storable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = serde_json::from_slice::<StatusReport>(data) else {
        return;
    };
    if report.check().is_err() {
        return;
    }
    assert_round_trip(&report);
    assert!(storable(&report), "accepted but not storable: {report:?}");
});
