//! The `bittorrent-block` service: its spec, and its compilation to
//! data-plane primitives (pure):
//! fixed-offset payload signatures that add both endpoints of a matching
//! packet to a kernel endpoint set, a rule dropping traffic from or to any
//! endpoint in that set (all in the kernel, no program on the packet path),
//! and `classify` rules that show the first packets of the remaining flows
//! to the agent's classifier (NFQUEUE with bypass).
//!
//! The signatures are written tightly enough not to match QUIC, DNS, TLS or
//! other UDP: each pins at least eight bytes, or a length and six bytes.

use isdf_api::{
    Action, AddEndpoints, Chain, ClassifierPolicy, Family, Firewall, Match, PayloadMatch,
    PortRange, Protocol, Rule, Set, SetKey, SetName,
};

use serde::{Deserialize, Serialize};

/// `bittorrent-block`: the router drops BitTorrent traffic it recognises
/// by fixed-offset payload signatures, in the kernel, and blocks both
/// endpoints of the offending packet (the peer, and the client's port) for
/// `block_secs`; its classifier recognises the rest, including the
/// encrypted handshake by its shape unless `heuristics` is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BittorrentBlockSpec {
    /// How long a detected endpoint stays blocked: 1 s to 30 days (default 1 h).
    #[serde(default = "default_bittorrent_block_secs")]
    pub block_secs: u32,
    /// Whether the classifier's heuristic rules run (default true): the
    /// encrypted (MSE) handshake recognised by its shape. Off, only
    /// signatures detect (plain messages, and peers they reveal), and the
    /// routers end the blocks heuristics made.
    #[serde(default = "heuristics_on", skip_serializing_if = "is_true")]
    pub heuristics: bool,
}

fn default_bittorrent_block_secs() -> u32 {
    3600
}

fn heuristics_on() -> bool {
    true
}

fn is_true(on: &bool) -> bool {
    *on
}

impl BittorrentBlockSpec {
    pub const MAX_BLOCK_SECS: u32 = 30 * 24 * 3600;

    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::MAX_BLOCK_SECS).contains(&self.block_secs) {
            return Err(format!("block_secs must be 1 to {}", Self::MAX_BLOCK_SECS));
        }
        Ok(())
    }
}

/// A fixed-offset signature: protocol, (offset, bytes) pieces, UDP payload length.
struct Signature {
    id: &'static str,
    protocol: Protocol,
    pieces: &'static [(u16, &'static [u8])],
    udp_payload_len: Option<u16>,
}

const SIGNATURES: &[Signature] = &[
    // BEP 3: the peer handshake, 19 then the protocol name.
    Signature {
        id: "bt-handshake",
        protocol: Protocol::Tcp,
        pieces: &[(0, b"\x13BitTorrent prot"), (16, b"ocol")],
        udp_payload_len: None,
    },
    // BEP 5: DHT queries are bencoded dicts whose first (sorted) key is
    // the arguments dict, itself starting with the node id.
    Signature {
        id: "bt-dht-query",
        protocol: Protocol::Udp,
        pieces: &[(0, b"d1:ad2:id20:")],
        udp_payload_len: None,
    },
    Signature {
        id: "bt-dht-reply",
        protocol: Protocol::Udp,
        pieces: &[(0, b"d1:rd2:id20:")],
        udp_payload_len: None,
    },
    // BEP 29: a uTP SYN is a bare 20-byte header: type 4 version 1, no
    // extension, and no timestamp difference yet.
    Signature {
        id: "bt-utp-syn",
        protocol: Protocol::Udp,
        pieces: &[(0, &[0x41, 0x00]), (8, &[0, 0, 0, 0])],
        udp_payload_len: Some(20),
    },
    // BEP 15: the UDP tracker connect request, 16 bytes: the protocol
    // magic and action 0.
    Signature {
        id: "bt-udp-tracker",
        protocol: Protocol::Udp,
        pieces: &[(0, &[0, 0, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0])],
        udp_payload_len: Some(16),
    },
    // BEP 3: HTTP tracker announces and scrapes name the torrent first.
    Signature {
        id: "bt-http-announce",
        protocol: Protocol::Tcp,
        pieces: &[(0, b"GET /announce?in"), (16, b"fo_hash=")],
        udp_payload_len: None,
    },
    Signature {
        id: "bt-http-scrape",
        protocol: Protocol::Tcp,
        pieces: &[(0, b"GET /scrape?info"), (16, b"_hash=")],
        udp_payload_len: None,
    },
];

/// Signatures look at the first packets of a connection only (both ways:
/// the TCP handshake, then the first messages); bulk traffic skips them.
const FIRST_PACKETS: u16 = 10;

fn name(text: String) -> SetName {
    SetName::parse(&text).expect("fixed shape")
}

/// Adds the service's sets and rules to `firewall` (once, however many
/// assignments ask for it: the compiler merges them).
pub fn add_to(firewall: &mut Firewall, spec: &BittorrentBlockSpec) {
    if !spec.heuristics {
        firewall.classifier = Some(ClassifierPolicy { heuristics: false });
    }
    for (family, suffix) in [(Family::Ipv4, "v4"), (Family::Ipv6, "v6")] {
        let set = name(format!("bittorrent_{suffix}"));
        firewall.sets.push(Set {
            name: set.clone(),
            key: match family {
                Family::Ipv4 => SetKey::Ipv4Endpoint,
                Family::Ipv6 => SetKey::Ipv6Endpoint,
            },
            elements: Vec::new(),
        });
        firewall.rules.push(Rule {
            id: name(format!("bt-peer-{suffix}")),
            chain: Chain::Forward,
            matches: Match {
                endpoint_in_set: Some(set.clone()),
                ..Match::default()
            },
            action: Action::Drop,
            add_endpoints_to: None,
        });
        for sig in SIGNATURES {
            firewall.rules.push(Rule {
                id: name(format!("{}-{suffix}", sig.id)),
                chain: Chain::Forward,
                matches: Match {
                    family: Some(family),
                    protocol: Some(sig.protocol),
                    payload: sig
                        .pieces
                        .iter()
                        .map(|(offset, bytes)| PayloadMatch {
                            offset: *offset,
                            bytes: bytes.to_vec(),
                            mask: None,
                        })
                        .collect(),
                    payload_len: sig
                        .udp_payload_len
                        .map(|len| PortRange::new(len, len).expect("a single length")),
                    first_packets: Some(FIRST_PACKETS),
                    ..Match::default()
                },
                action: Action::Drop,
                add_endpoints_to: Some(AddEndpoints {
                    set: set.clone(),
                    timeout_secs: spec.block_secs,
                }),
            });
        }
        // What fixed offsets miss (announces on other paths, handshakes
        // split across packets, uTP data, encrypted peers learned from
        // tracker and DHT answers) the agent's classifier sees: the first
        // packets of every TCP and UDP flow, never a whole transfer.
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            firewall.rules.push(Rule {
                id: name(format!("bt-classify-{}-{suffix}", protocol.name())),
                chain: Chain::Forward,
                matches: Match {
                    family: Some(family),
                    protocol: Some(protocol),
                    first_packets: Some(FIRST_PACKETS),
                    ..Match::default()
                },
                action: Action::Classify,
                add_endpoints_to: Some(AddEndpoints {
                    set: set.clone(),
                    timeout_secs: spec.block_secs,
                }),
            });
        }
    }
}
