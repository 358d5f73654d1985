//! What the packet thread does with a LAN host's packets for pay-per-site
//! (`inspect.rs`): the name reader over a flow's packets in any order
//! (`sitename::flows::FlowReader`, which joins segments and QUIC Initials
//! in bounded memory), the portal's forged answer to each packet
//! (`portal_inject::forge`), and the router's resolver's answers
//! (`dns::lookup::answers`). The input is packets over time
//! (`isdf_agent_fuzz::packets`). Whatever the bytes: no panic, a name found
//! is normalised, and a
//! forged answer is two well-formed IP packets of the lengths they claim.
#![no_main]

use isdf_agent::dns::lookup::answers;
use isdf_agent::portal_inject::forge;
use isdf_agent::sitename::flows::{FlowReader, Read};
use isdf_agent::sitename::{normalise, Sighting};
use isdf_agent_fuzz::packets::decode;
use libfuzzer_sys::fuzz_target;

const ANSWER: &[u8] =
    b"HTTP/1.1 302 Found\r\nLocation: https://portal.test/\r\nContent-Length: 0\r\n\r\n";

/// The length an IP packet's header gives it.
fn claimed_length(packet: &[u8]) -> usize {
    match packet[0] >> 4 {
        4 => usize::from(u16::from_be_bytes([packet[2], packet[3]])),
        _ => 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]])),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut reader = FlowReader::new();
    let mut now_ms = 0;
    for (step_ms, packet) in decode(data) {
        now_ms += step_ms;
        if packet.is_empty() {
            continue;
        }
        if let Read::Decided(Sighting::Name { name, .. }) = reader.packet(packet, now_ms) {
            assert_eq!(normalise(name.as_bytes()).as_deref(), Some(name.as_str()));
        }
        if let Some(forged) = forge(packet, ANSWER) {
            for answer in [&forged.to_client, &forged.to_server] {
                assert_eq!(claimed_length(answer), answer.len());
            }
        }
        let _ = answers(packet, 0x1234);
    }
});
