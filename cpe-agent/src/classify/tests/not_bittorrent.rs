//! The protocols a BitTorrent host also speaks, over TCP and UDP, which must
//! never be flagged.

use super::*;

fn tls_client_hello() -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.extend(noise(9, 512 - 6)); // random, session id, and the rest
    hello
}

#[test]
fn common_tcp_protocols_of_a_bittorrent_host_are_not_bittorrent() {
    let mut c = classifier_knowing_client();
    let flows: [(&str, &[u8], &[u8]); 4] = [
        (
            "198.51.100.70:443",
            &tls_client_hello(),
            &[0x16, 0x03, 0x03, 0x00, 0x7a, 2, 0, 0, 0x76, 3, 3],
        ),
        (
            "198.51.100.71:22",
            b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
            b"SSH-2.0-OpenSSH_9.2p1\r\n",
        ),
        (
            "198.51.100.72:80",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ),
        // Random bytes too short for a Diffie-Hellman key (decided at the
        // answer, which may teach that the server speaks something else).
        ("198.51.100.73:853", &noise(10, 60), &noise(11, 60)),
    ];
    for (server, request, answer) in flows {
        let verdicts = tcp_flow(&mut c, "192.168.1.10:41000", server, &[request], &[answer]);
        let decided = if server.ends_with(":853") { 4 } else { 3 };
        assert_eq!(verdicts[decided], Verdict::NotBitTorrent, "{server}");
        assert!(never_bittorrent(&verdicts));
    }
    // A server that speaks first (SSH, SMTP) is decided at its banner.
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:41001",
        "198.51.100.74:22",
        &[],
        &[b"SSH-2.0-OpenSSH_9.6\r\n"],
    );
    assert_eq!(last(&verdicts), Verdict::NotBitTorrent);
}

#[test]
fn common_udp_protocols_are_not_bittorrent() {
    let mut c = classifier_knowing_client();
    let mut dns_answer = dns_query();
    dns_answer[2] = 0x81;
    dns_answer[3] = 0x80;
    let mut quic = vec![0xc3, 0, 0, 0, 1, 8];
    quic.extend(noise(12, 1200 - 6));
    let mut wireguard = vec![1, 0, 0, 0];
    wireguard.extend(noise(13, 144));
    let mut wireguard_answer = vec![2, 0, 0, 0];
    wireguard_answer.extend(noise(14, 88));
    let mut wireguard_data = vec![4, 0, 0, 0];
    wireguard_data.extend(noise(15, 128));
    let (query, quic_answer) = (dns_query(), noise(16, 1200));
    let flows: [(&str, Vec<&[u8]>); 3] = [
        ("198.51.100.80:53", vec![&query, &dns_answer]),
        ("198.51.100.81:443", vec![&quic, &quic_answer]),
        (
            "198.51.100.82:51820",
            vec![&wireguard, &wireguard_answer, &wireguard_data],
        ),
    ];
    for (server, packets) in flows {
        let mut verdicts = Vec::new();
        for (i, payload) in packets.iter().enumerate() {
            let (src, dst) = if i % 2 == 0 {
                ("192.168.1.10:42000", server)
            } else {
                (server, "192.168.1.10:42000")
            };
            verdicts.push(c.packet(&udp(src, dst, payload), 1));
        }
        assert!(never_bittorrent(&verdicts), "{server}: {verdicts:?}");
        assert!(
            verdicts.contains(&Verdict::NotBitTorrent),
            "{server}: {verdicts:?}"
        );
    }
}
