//! The BitTorrent classifier on the packet path: IP packets as NFQUEUE
//! hands them over (at most 1,024 bytes each), one input a conversation of
//! several packets over time (`isdf_agent_fuzz::packets`), classified by
//! one `Classifier` as `inspect.rs` runs it. A detection names the packet's
//! own flow; what it learns from hostile answers never includes ports below
//! 1024 or multicast, loopback, broadcast and unspecified addresses; a
//! forgotten peer is forgotten.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use isdf_agent::classify::{Classifier, Verdict};
use isdf_agent_fuzz::packets;
use isdf_agent_fuzz::router::classifier_limits;
use libfuzzer_sys::fuzz_target;

/// Packets of one conversation: more than the flow table holds.
const MAX_PACKETS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut classifier = Classifier::new(classifier_limits());
    let mut now_ms = 0u64;
    for (advance_ms, packet) in packets::decode(data).take(MAX_PACKETS) {
        now_ms += advance_ms;
        if let Verdict::BitTorrent(detection) = classifier.packet(packet, now_ms) {
            let flow = detection.flow;
            assert!(
                [flow.initiator, flow.responder].contains(&detection.peer.addr),
                "the peer of {detection:?} is not in its flow"
            );
            assert_eq!(detection.peer.protocol, flow.protocol);
        }
    }
    let learned: Vec<_> = classifier.learned_peers(now_ms).collect();
    for (peer, _) in &learned {
        let ip = peer.ip();
        let broadcast = ip == IpAddr::V4(Ipv4Addr::BROADCAST);
        assert!(
            peer.port() >= 1024
                && !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || broadcast),
            "learned {peer}, which cannot be a peer"
        );
    }
    for (peer, _) in learned {
        classifier.forget_peer(peer);
        assert!(
            classifier.learned_peers(now_ms).all(|(p, _)| p != peer),
            "{peer} is still learned after it was forgotten"
        );
    }
});
