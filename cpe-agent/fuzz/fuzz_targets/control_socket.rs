//! The local control socket as the agent serves it: one request line per
//! connection (at most 4 KiB), decoded by `Request::decode` and applied to
//! the router's blocks by `Request::apply`, then enforced in front of the
//! config. One line of the input per connection, a second apart. The
//! answer reads back as the client reads it; every block the router makes
//! is an event the controller accepts (else the router's outbox would stick
//! on it); the ruleset with the blocks in front plans with nftables after
//! every change; and the persisted blocks read back the same.
#![no_main]

use isdf_agent::backend::nft;
use isdf_agent::control::{Applied, Request, Response, MAX_REQUEST_BYTES};
use isdf_agent::router_blocks::{Persisted, RouterBlocks};
use isdf_agent_fuzz::router::settings;
use isdf_api::events::{EventBatch, MAX_EVENTS_PER_BATCH};
use isdf_api_fuzz::fixtures::{sample_config, NOW};
use isdf_api_fuzz::properties::{assert_round_trip, lines, storable};
use libfuzzer_sys::fuzz_target;

/// Connections in one input: enough to fill, extend and end blocks.
const MAX_REQUESTS: usize = 32;

fuzz_target!(|data: &[u8]| {
    let config = sample_config();
    let mut blocks = RouterBlocks::new(Persisted::default(), settings().router_block_limits());
    let mut now_ms = NOW * 1000;
    for line in lines(data, MAX_REQUESTS) {
        now_ms += 1000;
        let line = &line[..line.len().min(MAX_REQUEST_BYTES as usize)];
        let mut changed = false;
        let response = match Request::decode(line) {
            Err(e) => Response::error("invalid_request", e, now_ms),
            Ok(request) => match request.apply(&mut blocks, now_ms) {
                Ok(Applied::Listed(listed)) => Response::ok(listed, now_ms),
                Ok(Applied::Changed { block, .. }) => {
                    changed = true;
                    Response::ok(vec![block], now_ms)
                }
                Err(refusal) => Response::error(refusal.code, refusal.message, now_ms),
            },
        };
        let text = serde_json::to_vec(&response).expect("an answer serialises");
        let read: Response = serde_json::from_slice(&text).expect("the client reads the answer");
        assert_eq!(read, response);

        let events = blocks.pending_events(MAX_EVENTS_PER_BATCH);
        let batch = EventBatch { events };
        if let Err(e) = batch.check() {
            panic!("the controller refuses an event the router made: {e}: {batch:?}");
        }
        assert!(
            storable(&batch),
            "an event PostgreSQL cannot store: {batch:?}"
        );
        if let Some(last) = batch.events.last() {
            blocks.delivered(last.sequence);
        }
        // A change is enforced at once (the agent loop applies the merged ruleset).
        if changed {
            let merged = blocks.merged_into(&config.firewall, now_ms);
            if let Err(e) = nft::plan(&merged, now_ms) {
                panic!("the router's blocks do not plan: {e:#}");
            }
        }
    }
    assert_round_trip(blocks.persisted());
});
