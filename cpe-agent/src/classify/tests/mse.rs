//! Message stream encryption (MSE): caught only for hosts known to run
//! BitTorrent, and random-looking traffic that is not an MSE handshake.

use super::*;

#[test]
fn mse_handshake_of_a_known_bittorrent_host() {
    let mut c = classifier_knowing_client();
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:40000",
        PEER,
        &[&noise(1, 96 + 300)],
        &[&noise(2, 96 + 17)],
    );
    assert_eq!(verdicts[3], Verdict::NeedMore);
    assert_eq!(reason(last(&verdicts)), Some(Reason::MseHandshake));
    // And incoming: the remote peer starts the exchange.
    let verdicts = tcp_flow(
        &mut c,
        "198.51.100.60:40000",
        "192.168.1.10:6881",
        &[&noise(3, 96)],
        &[&noise(4, 608)],
    );
    assert_eq!(reason(last(&verdicts)), Some(Reason::MseHandshake));
}

#[test]
fn mse_lookalikes_are_not_bittorrent() {
    let mut c = classifier();
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:40000",
        PEER,
        &[&noise(1, 200)],
        &[&noise(2, 200)],
    );
    assert_eq!(
        verdicts[3],
        Verdict::NotBitTorrent,
        "the host is not known to run BitTorrent"
    );
    let mut c = classifier_knowing_client();
    let answers: [&[u8]; 4] = [
        &noise(2, 95),
        &noise(2, 609),
        &[b'a'; 200],
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ];
    for (port, answer) in (40001..).zip(answers) {
        let client = format!("192.168.1.10:{port}");
        let verdicts = tcp_flow(&mut c, &client, PEER, &[&noise(1, 200)], &[answer]);
        assert_eq!(last(&verdicts), Verdict::NotBitTorrent, "{}", answer.len());
    }
    // An MSE initiator waits for the answer; one that sends more is something else.
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:40010",
        PEER,
        &[&noise(1, 200), &noise(5, 50)],
        &[],
    );
    assert_eq!(last(&verdicts), Verdict::NotBitTorrent);
    // Base64 and text are not random enough.
    let base64: Vec<u8> = noise(6, 300)
        .iter()
        .map(|b| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[usize::from(b % 64)]
        })
        .collect();
    let verdicts = tcp_flow(
        &mut c,
        "192.168.1.10:40011",
        PEER,
        &[&base64],
        &[&noise(2, 200)],
    );
    assert_eq!(verdicts[3], Verdict::NotBitTorrent);
}
