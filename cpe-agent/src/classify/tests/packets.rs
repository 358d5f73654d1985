//! IPv6 (extension headers too), fragments and malformed packets, the bounds
//! on undecided flows and tables, reason names, and the capture reader.

use super::*;

#[test]
fn ipv6_handshake_and_utp() {
    let mut c = classifier();
    let (client, peer) = ("[2001:db8::10]:50000", "[2001:db8:1::5]:6881");
    let verdicts = tcp_flow(&mut c, client, peer, &[&handshake()], &[]);
    let Verdict::BitTorrent(detection) = last(&verdicts) else {
        panic!("{verdicts:?}")
    };
    assert_eq!(detection.reason, Reason::TcpHandshake);
    assert_eq!(detection.peer.addr, addr(peer));
    c.packet(
        &udp(
            client,
            "[2001:db8:1::6]:6881",
            &utp_header(UTP_SYN, 0, 1, 1, 0),
        ),
        1,
    );
    let verdict = c.packet(
        &udp(
            "[2001:db8:1::6]:6881",
            client,
            &utp_header(UTP_STATE, 0, 1, 1, 1),
        ),
        1,
    );
    assert_eq!(reason(verdict), Some(Reason::UtpSyn));
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let mut packet = tcp(
        "[2001:db8::10]:50000",
        "[2001:db8:1::5]:6881",
        ACK,
        1,
        &handshake(),
    );
    packet[6] = 0; // hop-by-hop options, 8 bytes, then TCP
    let length = u16::from_be_bytes([packet[4], packet[5]]) + 8;
    packet[4..6].copy_from_slice(&length.to_be_bytes());
    packet.splice(40..40, [6, 0, 1, 4, 0, 0, 0, 0]);
    assert_eq!(
        reason(classifier().packet(&packet, 1)),
        Some(Reason::TcpHandshake)
    );
}

#[test]
fn fragments_and_malformed_packets_are_unknown() {
    let mut c = classifier();
    let mut packet = udp(CLIENT, PEER, DHT_PING);
    packet[6] = 0x20;
    packet[7] = 0x10; // a later fragment
    assert_eq!(c.packet(&packet, 1), Verdict::Unknown);
    let packet = udp(CLIENT, PEER, DHT_PING);
    for end in 0..28 {
        assert_eq!(c.packet(&packet[..end], 1), Verdict::Unknown, "{end}");
    }
    let mut packet = tcp(CLIENT, PEER, ACK, 1, b"x");
    packet[32] = 0x40; // a TCP header shorter than 20 bytes
    assert_eq!(c.packet(&packet, 1), Verdict::Unknown);
    assert_eq!(c.packet(b"\x70\x00", 1), Verdict::Unknown);
}

#[test]
fn flows_stay_undecided_for_a_bounded_number_of_packets() {
    let mut c = classifier();
    let syn = utp_header(UTP_SYN, 0, 1, 1, 0);
    let verdicts: Vec<_> = (0..20)
        .map(|_| c.packet(&udp(CLIENT, PEER, &syn), 1))
        .collect();
    let limit = usize::from(Limits::default().max_payload_packets);
    assert_eq!(verdicts[..limit], vec![Verdict::NeedMore; limit]);
    assert_eq!(verdicts[limit..], vec![Verdict::NotBitTorrent; 20 - limit]);
}

#[test]
fn idle_flows_start_afresh_and_full_tables_forget_the_oldest() {
    let mut c = Classifier::new(Limits {
        max_flows: 16,
        ..Limits::default()
    });
    c.packet(&udp(CLIENT, PEER, &dns_query()), 1);
    let fresh_start = 1 + Limits::default().flow_idle_ms + 1;
    assert_eq!(
        reason(c.packet(&udp(CLIENT, PEER, DHT_PING), fresh_start)),
        Some(Reason::DhtMessage)
    );
    for port in 0..10_000u16 {
        let client = format!("192.168.1.10:{}", 10_000 + port);
        c.packet(
            &udp(&client, PEER, &dns_query()),
            fresh_start + u64::from(port),
        );
    }
    assert!(c.flows.iter().count() <= 16);
}

#[test]
fn reason_names_are_unique_snake_case() {
    let names: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), Reason::ALL.len());
    assert!(names
        .iter()
        .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
}

#[test]
fn pcap_reader_handles_its_link_types() {
    let ip_packet = udp(CLIENT, PEER, DHT_PING);
    let mut ethernet = vec![0; 12];
    ethernet.extend([0x81, 0x00, 0, 5, 0x08, 0x00]); // a VLAN tag, then IPv4
    let mut sll = vec![0; 14];
    sll.extend([0x08, 0x00]);
    let mut sll2 = vec![0x08, 0x00];
    sll2.extend([0; 18]);
    for (link, header) in [(1u32, ethernet), (113, sll), (276, sll2), (101, vec![])] {
        let mut file = vec![
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0,
        ];
        file.extend(link.to_le_bytes());
        let frame = [header, ip_packet.clone()].concat();
        file.extend(7u32.to_le_bytes());
        file.extend(500_000u32.to_le_bytes());
        file.extend((frame.len() as u32).to_le_bytes());
        file.extend((frame.len() as u32).to_le_bytes());
        file.extend(&frame);
        file.extend([1, 2, 3]); // a truncated record
        let packets: Vec<_> = pcap::packets(&file).unwrap().collect();
        assert_eq!(packets.len(), 1, "link type {link}");
        assert_eq!(packets[0].time_ms, 7500);
        assert_eq!(packets[0].ip_packet, &ip_packet[..]);
    }
    assert!(
        pcap::packets(b"\x0a\x0d\x0d\x0a").is_none(),
        "pcapng is not read"
    );
}

#[test]
fn table_entries_stay_small() {
    // 4,096 flows (176 bytes each, a quarter of it the MSE shape) and 8,192
    // peers (32 bytes) by default: under 1 MB.
    assert!(std::mem::size_of::<Option<table::Slot<FlowKey, Flow>>>() <= 176);
    assert!(std::mem::size_of::<Option<table::Slot<Ep, Reason>>>() <= 32);
}
