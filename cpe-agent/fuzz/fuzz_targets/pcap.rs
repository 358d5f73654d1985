//! The classic pcap reader of the classifier's benchmark and nDPI
//! comparison (`classify::pcap`), on whole capture files, its packets fed
//! to a classifier as `examples/classify_pcaps.rs` does. Every packet lies
//! within the file, and each record consumes at least its 16-byte header,
//! so the iteration ends.
#![no_main]

use isdf_agent::classify::{pcap, Classifier};
use isdf_agent_fuzz::router::classifier_limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|file: &[u8]| {
    let Some(packets) = pcap::packets(file) else {
        return;
    };
    let mut classifier = Classifier::new(classifier_limits());
    let within = file.as_ptr_range();
    let records = file.len().saturating_sub(24) / 16;
    let mut count = 0;
    for captured in packets {
        count += 1;
        assert!(count <= records, "more packets than records fit the file");
        let packet = captured.ip_packet.as_ptr_range();
        assert!(within.start <= packet.start && packet.end <= within.end);
        classifier.packet(captured.ip_packet, captured.time_ms);
    }
});
