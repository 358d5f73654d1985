//! Router events as the controller reads them (`POST /device/v1/events`):
//! the JSON body, then `EventBatch::check`. An accepted batch is stored
//! event by event (the blocks as rows the operator API lists): it reads
//! back the same, and PostgreSQL can store it.
#![no_main]

use isdf_api::events::EventBatch;
use isdf_api_fuzz::properties::{assert_round_trip, storable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = serde_json::from_slice::<EventBatch>(data) else {
        return;
    };
    if batch.check().is_err() {
        return;
    }
    assert_round_trip(&batch);
    assert!(storable(&batch), "accepted but not storable: {batch:?}");
});
