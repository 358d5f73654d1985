//! The seeds of the agent's corpora: configs the controller compiles (its
//! snapshot tests' firewalls), an enrollment answer, BitTorrent and other
//! conversations as packets and as captures, the messages the classifier
//! reads bencode from, control socket requests as `isdf-agent block`
//! writes them, the example settings file, and a LAN flow's packets. Every
//! document seed is checked to be accepted where it should be, so a change
//! of the formats cannot leave the corpora starting from refused inputs.

use isdf_agent::control::{parse_flow, Request};
use isdf_api::{open_device_config, seal, CONFIG_PAYLOAD_TYPE};
use isdf_api_fuzz::fixtures::{self, key, DEVICE};
use isdf_api_fuzz::seeds::{sample_payload, signed_root, Seed};
use serde_json::json;

use crate::packets::{encode, tcp_conversation, udp};

/// A firewall the controller's snapshot tests hold (after insta's header).
fn snapshot_firewall(snapshot: &str) -> serde_json::Value {
    let body = snapshot
        .splitn(3, "---\n")
        .nth(2)
        .expect("an insta snapshot");
    serde_json::from_str(body).expect("the snapshot is JSON")
}

/// `firewall` as a config of the sample device, as the controller signs it.
fn config(firewall: serde_json::Value) -> Vec<u8> {
    let config = json!({"device_id": DEVICE, "version": 3, "issued_at": 1_795_000_000,
                        "expires_at": 1_795_604_800, "firewall": firewall});
    let payload = serde_json::to_vec(&config).expect("JSON");
    let envelope = seal(CONFIG_PAYLOAD_TYPE, &payload, fixtures::signing_key()).to_json();
    if let Err(e) = open_device_config(&envelope, fixtures::trusted(), &fixtures::policy()) {
        panic!("a config seed is refused: {e}");
    }
    payload
}

fn config_seeds() -> Vec<Seed> {
    let bittorrent = snapshot_firewall(include_str!(
        "../../../controller/src/services/snapshots/isdf_controller__services__compiler__tests__bittorrent_block_compiles_to_signatures_that_validate.snap"
    ));
    let pay_per_site = snapshot_firewall(include_str!(
        "../../../controller/src/services/snapshots/isdf_controller__services__compiler__tests__pay_per_site_gates_unpaid_sites_and_opens_paid_ones_until_their_end.snap"
    ));
    // The tunnels of `backend/nft/tests.rs`: one rotating peer, a relay.
    let tunnels = json!({
        "rules": [{"id": "web", "chain": "forward", "match": {"protocol": "tcp", "dport": 80}, "action": "drop"}],
        "wireguard": {
            "public_key": "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
            "key_generation": 1,
            "tunnels": [
                {"interface": "isdf0", "listen_port": 51820, "address": "10.99.0.1/32",
                 "local_prefixes": ["10.1.0.0/24", "2001:db8:1::/64"],
                 "peers": [
                    {"name": "b", "public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
                     "alternate_public_key": "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=",
                     "endpoint": "192.0.2.2:51820", "allowed_prefixes": ["10.2.0.0/24", "10.99.0.2/32"]},
                    {"name": "c", "public_key": "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=",
                     "allowed_prefixes": ["10.3.0.0/24", "2001:db8:3::/64"], "keepalive_secs": 25}
                 ]},
                {"interface": "isdf-relay", "listen_port": 51821, "address": "10.98.0.1/32",
                 "peers": [
                    {"name": "d", "public_key": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
                     "allowed_prefixes": ["10.1.0.0/24"]}
                 ]}
            ]
        }
    });
    vec![
        Seed::new("config", "sample", sample_payload()),
        Seed::new("config", "bittorrent-block", config(bittorrent)),
        Seed::new("config", "pay-per-site", config(pay_per_site)),
        Seed::new("config", "tunnels", config(tunnels)),
    ]
}

fn enrollment_seeds() -> Vec<Seed> {
    let hex = |seed: u8| {
        let bytes = key(seed).verifying_key().to_bytes();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let answer = |roots: Vec<String>| {
        json!({"device_id": DEVICE,
               "certificate_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
               "ca_pem": "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
               "signing_public_keys": [hex(7)],
               "device_api_url": "https://controller.example.net:8443",
               "roots": roots,
               "not_before": 1_795_000_000, "not_after": 1_797_592_000})
    };
    let root_1 = String::from_utf8(signed_root(1, 11, None)).expect("JSON text");
    vec![
        Seed::json("enrollment_answer", "keys", &answer(vec![])),
        Seed::json("enrollment_answer", "root-1", &answer(vec![root_1])),
    ]
}

const CLIENT: &str = "192.168.1.10:50000";
const PEER: &str = "203.0.113.5:6881";
const TRACKER: &str = "198.51.100.7:6969";
const HANDSHAKE: &[u8] =
    b"\x13BitTorrent protocol\0\0\0\0\0\x10\0\x05aaaaaaaaaaaaaaaaaaaa-qB4650-000000000000";
const DHT_PING: &[u8] = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";

/// A DHT answer listing one peer (`values`) and one node (`nodes`).
fn dht_answer() -> Vec<u8> {
    let mut answer = b"d1:rd2:id20:abcdefghij01234567895:nodes26:".to_vec();
    answer.extend(b"mnopqrstuvwxyz123456");
    answer.extend([203, 0, 113, 77, 0x1a, 0xe1]);
    answer.extend(b"6:valuesl6:");
    answer.extend([203, 0, 113, 78, 0x1a, 0xe2]);
    answer.extend(b"ee1:t2:aa1:y1:re");
    answer
}

/// A tracker's answer: compact IPv4 and IPv6 peers.
fn tracker_answer() -> Vec<u8> {
    let mut body = b"d8:intervali1800e5:peers6:".to_vec();
    body.extend([203, 0, 113, 9, 0x1a, 0xe1]);
    body.extend(b"6:peers618:");
    body.extend([
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0x1a, 0xe1,
    ]);
    body.push(b'e');
    body
}

/// The conversations of the classifier's tests, as packets.
fn conversations() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let http_answer = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".as_slice(),
        &tracker_answer(),
    ]
    .concat();
    let mut connect = 0x0417_2710_1980_u64.to_be_bytes().to_vec();
    connect.extend([0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
    let mut connected = vec![0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    connected.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    let mut announce = vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1, 0xca, 0xfe, 0xba, 0xbe];
    announce.extend([0xaa; 20]);
    announce.extend(b"-qB4650-000000000000");
    announce.extend([0; 24]);
    announce.extend([0, 0, 0, 2]);
    announce.extend([0; 12]);
    announce.extend([0x1a, 0xe1]);
    let mut announced = vec![
        0, 0, 0, 1, 0xca, 0xfe, 0xba, 0xbe, 0, 0, 7, 8, 0, 0, 0, 1, 0, 0, 0, 2,
    ];
    announced.extend([203, 0, 113, 10, 0x1a, 0xe1]);
    // uTP: SYN (type 4) with connection id 0x1234 and seq_nr 1, then STATE (type 2) acking it.
    let utp_syn = [
        0x41, 0, 0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 1, 0, 0,
    ];
    let utp_state = [
        0x21, 0, 0x12, 0x34, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0x10, 0, 0, 0x77, 0x77, 0, 1,
    ];
    let mse: Vec<u8> = (0..120u32).map(|i| (i * 97 + 13) as u8).collect();
    let mse_answer: Vec<u8> = (0..110u32).map(|i| (i * 71 + 5) as u8).collect();
    vec![
        (
            "tcp-handshake-then-mse",
            [
                tcp_conversation(CLIENT, PEER, &[&HANDSHAKE[..30], &HANDSHAKE[30..]], &[HANDSHAKE]),
                tcp_conversation("192.168.1.10:50001", "203.0.113.6:51413", &[&mse], &[&mse_answer]),
            ]
            .concat(),
        ),
        (
            "http-tracker",
            tcp_conversation(
                CLIENT,
                "198.51.100.7:80",
                &[b"GET /announce?info_hash=%aa%bb&peer_id=-qB4650-&port=6881&compact=1 HTTP/1.1\r\nHost: tracker.test\r\n\r\n"],
                &[&http_answer],
            ),
        ),
        (
            "udp-tracker",
            vec![
                udp(CLIENT, TRACKER, &connect),
                udp(TRACKER, CLIENT, &connected),
                udp(CLIENT, TRACKER, &announce),
                udp(TRACKER, CLIENT, &announced),
            ],
        ),
        (
            "dht",
            vec![
                udp("192.168.1.10:6881", "203.0.113.20:6881", DHT_PING),
                udp("203.0.113.20:6881", "192.168.1.10:6881", &dht_answer()),
                udp("[2001:db8::10]:6881", "[2001:db8:2::20]:6881", DHT_PING),
            ],
        ),
        (
            "utp-lsd",
            vec![
                udp(CLIENT, "203.0.113.30:6881", &utp_syn),
                udp("203.0.113.30:6881", CLIENT, &utp_state),
                udp(
                    "192.168.1.10:6771",
                    "239.192.152.143:6771",
                    b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: aa\r\n\r\n\r\n",
                ),
            ],
        ),
        (
            "not-bittorrent",
            [
                tcp_conversation(
                    CLIENT,
                    "198.51.100.80:443",
                    &[b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
                    &[b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03"],
                ),
                vec![udp(
                    "192.168.1.10:53000",
                    "192.0.2.53:53",
                    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01",
                )],
            ]
            .concat(),
        ),
    ]
}

fn classifier_seeds() -> Vec<Seed> {
    conversations()
        .into_iter()
        .map(|(name, packets)| {
            let input: Vec<u8> = packets.iter().flat_map(|p| encode(1, p)).collect();
            Seed::new("classifier", name, input)
        })
        .collect()
}

/// A classic pcap file of `packets` on link type `link`, each framed by
/// `frame`, little-endian with microseconds or big-endian with nanoseconds.
fn pcap(
    link: u32,
    big_endian: bool,
    frame: impl Fn(&[u8]) -> Vec<u8>,
    packets: &[Vec<u8>],
) -> Vec<u8> {
    let word = |n: u32| {
        if big_endian {
            n.to_be_bytes()
        } else {
            n.to_le_bytes()
        }
    };
    let half = |n: u16| {
        if big_endian {
            n.to_be_bytes()
        } else {
            n.to_le_bytes()
        }
    };
    let mut file = word(if big_endian { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }).to_vec();
    file.extend(half(2));
    file.extend(half(4));
    file.extend(word(0));
    file.extend(word(0));
    file.extend(word(65535));
    file.extend(word(link));
    for (i, packet) in packets.iter().enumerate() {
        let framed = frame(packet);
        file.extend(word(1_795_000_000 + i as u32));
        file.extend(word(250_000));
        file.extend(word(framed.len() as u32));
        file.extend(word(framed.len() as u32));
        file.extend(framed);
    }
    file
}

fn ethertype(packet: &[u8]) -> [u8; 2] {
    if packet[0] >> 4 == 6 {
        [0x86, 0xdd]
    } else {
        [0x08, 0x00]
    }
}

fn pcap_seeds() -> Vec<Seed> {
    let all = conversations();
    let packets = |name: &str| {
        all.iter()
            .find(|(n, _)| *n == name)
            .expect("a conversation")
            .1
            .clone()
    };
    let ethernet =
        |packet: &[u8]| [&[0x02; 6][..], &[0x04; 6], &ethertype(packet), packet].concat();
    let vlan = |packet: &[u8]| {
        [
            &[0x02; 6][..],
            &[0x04; 6],
            &[0x81, 0x00, 0x00, 0x07],
            &ethertype(packet),
            packet,
        ]
        .concat()
    };
    let sll = |packet: &[u8]| {
        [
            &[0, 0, 0, 1, 0, 6][..],
            &[0x04; 8],
            &ethertype(packet),
            packet,
        ]
        .concat()
    };
    vec![
        Seed::new(
            "pcap",
            "ethernet",
            pcap(1, false, ethernet, &packets("tcp-handshake-then-mse")),
        ),
        Seed::new("pcap", "vlan", pcap(1, false, vlan, &packets("dht"))),
        Seed::new(
            "pcap",
            "sll-big-endian-ns",
            pcap(113, true, sll, &packets("udp-tracker")),
        ),
        Seed::new(
            "pcap",
            "raw-ip",
            pcap(101, false, <[u8]>::to_vec, &packets("utp-lsd")),
        ),
    ]
}

fn bencode_seeds() -> Vec<Seed> {
    vec![
        Seed::new("bencode", "dht-ping", DHT_PING),
        Seed::new("bencode", "dht-answer", dht_answer()),
        Seed::new("bencode", "tracker-answer", tracker_answer()),
        Seed::new(
            "bencode",
            "nested",
            b"d4:listli-42ei0el3:abcdee4:name5:isdf!5:emptyde6:failure9:not foundi0ee".as_slice(),
        ),
    ]
}

fn control_seeds() -> Vec<Seed> {
    let line = |request: &Request| serde_json::to_string(request).expect("JSON");
    let flow = |p, s, sp, d, dp| parse_flow(p, s, sp, d, dp).expect("a flow");
    let requests = [
        Request::Block {
            flow: flow("tcp", "192.168.1.10", "any", "198.51.100.7", "6881"),
            duration_ms: 60_000,
            reason: "zeek: scan".into(),
        },
        Request::List {},
        Request::Block {
            flow: flow("udp", "2001:db8::10", "50000-50010", "::/0", "any"),
            duration_ms: 3_600_000,
            reason: String::new(),
        },
        Request::Unblock { id: 1 },
        Request::List {},
    ];
    let lines: Vec<String> = requests.iter().map(line).collect();
    vec![
        Seed::new("control_socket", "block-list-unblock", lines.join("\n")),
        Seed::new("control_socket", "list", line(&Request::List {})),
    ]
}

fn settings_seeds() -> Vec<Seed> {
    vec![
        Seed::new("settings", "example", include_str!("../../../deploy/agent.toml.example")),
        Seed::new("settings", "minimal", "state_dir = \"/var/lib/isdf-agent\"\n"),
        Seed::new(
            "settings",
            "every-key",
            "controller_url = \"https://c.example:8443\"\nenrollment_url = \"https://c.example:8444\"\n\
             ca_cert = \"/etc/isdf/ca.pem\"\n\
             signing_public_keys = [\"ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c\"]\n\
             enrollment_token_file = \"/etc/isdf/enrollment-token\"\nstate_dir = \"/etc/isdf/state\"\n\
             backend = \"iptables\"\npoll_wait_secs = 20\nmax_backoff_secs = 5\nwan_check = false\n\
             heartbeat_secs = 60\ncontrol_socket = \"/var/run/isdf.sock\"\nlocal_block_max = 100\n\
             local_block_rate = 5\nlan_interfaces = [\"br-lan\", \"wlan0.1\"]\n\
             wan_interfaces = [\"wan\"]\ndns_mode = \"conf-dir\"\ndns_dnsmasq = \"/usr/sbin/dnsmasq\"\n\
             dns_port = 5353\ndns_upstream = [\"192.0.2.53\", \"[2001:db8::54]:5353\"]\n\
             dns_run_dir = \"/run/isdf-dns\"\ndns_conf_dir = \"/tmp/dnsmasq.d\"\n\
             dns_reload_command = [\"/etc/init.d/dnsmasq\", \"reload\"]\nwireguard_listen_port = 4500\n\
             wireguard_probe_port = 4501\nwireguard_facts_secs = 60\n\
             wireguard_go = \"/usr/bin/wireguard-go\"\nwireguard_table_base = 1000\n",
        ),
    ]
}

/// A flow's first bytes for `sitename`: a selector byte (0 TLS, 1 HTTP,
/// 2 QUIC), then the bytes.
fn sitename_seeds() -> Vec<Seed> {
    let with = |which: u8, bytes: &[u8]| [&[which][..], bytes].concat();
    let quic = isdf_agent::sitename::samples::rfc9001_client_initial();
    let record = isdf_agent::sitename::samples::records(
        &isdf_agent::sitename::samples::browser_hello("video.example.com"),
        16_384,
    );
    vec![
        Seed::new("sitename", "tls-hello", with(0, &record)),
        Seed::new(
            "sitename",
            "http-host",
            with(1, b"GET / HTTP/1.1\r\nHost: video.example.com:80\r\n\r\n"),
        ),
        Seed::new(
            "sitename",
            "http-absolute",
            with(1, b"GET http://video.example.com/x HTTP/1.1\r\n\r\n"),
        ),
        Seed::new("sitename", "quic-rfc9001", with(2, &quic)),
    ]
}

/// A flow's packets for `name_reader` (`packets::encode`): a ClientHello
/// over two TCP segments, an HTTP request, a QUIC Initial over IPv6.
fn name_reader_seeds() -> Vec<Seed> {
    use isdf_agent::sitename::samples::{browser_hello, ipv4_tcp, ipv6_udp, records};
    let framed = |packets: &[Vec<u8>]| -> Vec<u8> {
        packets
            .iter()
            .flat_map(|p| crate::packets::encode(1, p))
            .collect()
    };
    let hello = records(&browser_hello("video.example.com"), 16_384);
    let (first, second) = hello.split_at(hello.len() / 2);
    let initial = isdf_agent::sitename::samples::rfc9001_client_initial();
    vec![
        Seed::new(
            "name_reader",
            "tls-two-segments",
            framed(&[
                ipv4_tcp(443, 1000, first),
                ipv4_tcp(443, 1000 + first.len() as u32, second),
            ]),
        ),
        Seed::new(
            "name_reader",
            "http",
            framed(&[ipv4_tcp(
                80,
                1,
                b"GET / HTTP/1.1\r\nHost: news.test\r\n\r\n",
            )]),
        ),
        Seed::new("name_reader", "quic-v6", framed(&[ipv6_udp(&initial)])),
    ]
}

/// The seeds of the agent's targets.
pub fn agent_seeds() -> Vec<Seed> {
    [
        config_seeds(),
        enrollment_seeds(),
        classifier_seeds(),
        pcap_seeds(),
        bencode_seeds(),
        control_seeds(),
        settings_seeds(),
        sitename_seeds(),
        name_reader_seeds(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
