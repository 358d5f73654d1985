//! The enrollment (or renewal) answer as the agent reads it from the
//! controller: the JSON body, the checks made before anything is persisted
//! (`check_answer`), then what the agent does with an accepted answer: the
//! keys it trusts configs from (pinned, named, or those of root 1 and the
//! chain, `Settings::config_trust`) and when it renews. An accepted answer
//! is one the agent can run with: its trust resolves, its renewal falls
//! within its validity, and it reads back the same (it is persisted).
#![no_main]

use isdf_agent::controller::enrollment::check_answer;
use isdf_agent_fuzz::router::settings;
use isdf_api::enrollment::DeviceCertificate;
use isdf_api_fuzz::properties::assert_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = serde_json::from_slice::<DeviceCertificate>(data) else {
        return;
    };
    let settings = settings();
    if check_answer(&settings, &answer).is_err() {
        return;
    }
    if let Err(e) = settings.config_trust(&answer, &[]) {
        panic!("an accepted answer gives no keys to check configs with: {e:#}");
    }
    let renew_at = answer.renew_at();
    assert!(
        (answer.not_before..answer.not_after).contains(&renew_at),
        "renewal at {renew_at}, outside {}..{}",
        answer.not_before,
        answer.not_after
    );
    assert_round_trip(&answer);
});
