//! Recognises BitTorrent flows from their first packets, so that the agent can
//! enforce a policy that forbids it. Fed IP packets copied from the kernel
//! (NFQUEUE), in both directions, it decides per flow.
//!
//! **The classifier is pure: no I/O, no clock (the caller passes the time),
//! no allocation after [`Classifier::new`], and every table has a fixed size**,
//! so hostile traffic can neither grow it nor make a packet expensive. A
//! malformed packet is [`Verdict::Unknown`], never a panic.
//!
//! Plain BitTorrent is recognised by its messages (peer handshake over TCP or
//! uTP, HTTP and UDP tracker requests, DHT messages, uTP connection setup,
//! local service discovery). Encrypted peer connections (MSE) have no
//! plaintext signature: the classifier learns peer endpoints from what the
//! plain messages reveal (tracker answers, DHT `values` and `nodes`, the
//! endpoints of uTP and DHT flows) and flags later flows to them, and it
//! recognises the MSE handshake itself by its shape (`mse.rs`), the one
//! heuristic rule, which the service can turn off.
//!
//! `inspect.rs` puts it on the packet path; `pcap.rs` reads captures for the
//! benchmark and the nDPI comparison (`scripts/bench-detection`).

mod bencode;
mod detection;
pub(crate) mod ip;
mod mse;
pub mod pcap;
mod protocol;
pub(crate) mod table;
#[cfg(test)]
mod tests;

/// The bencode reader, for the fuzz target `bencode` (`cpe-agent/fuzz/`)
/// only: the `fuzzing` feature is off in every build that ships.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use super::bencode::{dict_prefix, parse, Items, Value};
}

use std::net::{IpAddr, SocketAddr};

pub use detection::{is_local, Detection};
use ip::{Ep, Packet};
pub use mse::MseFeatures;
use mse::{MseShape, Shape};
use protocol::{HttpTracker, UdpTracker, HANDSHAKE, UTP_DATA, UTP_STATE, UTP_SYN};
use table::Table;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub protocol: Transport,
    pub addr: SocketAddr,
}

/// A flow as first seen: the initiator sent its first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub protocol: Transport,
    pub initiator: SocketAddr,
    pub responder: SocketAddr,
}

/// Why a flow is BitTorrent. The names of [`Reason::as_str`] are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// `\x13BitTorrent protocol` starts the initiator's first TCP segment.
    TcpHandshake,
    /// The same, reassembled from several TCP segments.
    SplitTcpHandshake,
    HttpTrackerAnnounce,
    HttpTrackerScrape,
    UdpTrackerConnect,
    UdpTrackerAnnounce,
    /// A well-formed KRPC message of the DHT.
    DhtMessage,
    /// A uTP SYN answered by a STATE with its connection id and sequence.
    UtpSyn,
    /// A uTP DATA packet carrying the peer handshake.
    UtpData,
    /// A local service discovery announce.
    LsdAnnounce,
    /// The shape of an MSE handshake (`mse.rs`): a heuristic.
    MseHandshake,
    /// The flow goes to an endpoint seen in another BitTorrent flow, or one
    /// given to [`Classifier::learn_peer`].
    LearnedPeer,
    /// The flow goes to a peer listed in a tracker's answer.
    TrackerAnswerPeer,
    /// The flow goes to a peer listed in a DHT answer's `values`.
    DhtAnswerPeer,
    /// The flow goes to a DHT node listed in a DHT answer's `nodes`.
    DhtAnswerNode,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::TcpHandshake,
        Reason::SplitTcpHandshake,
        Reason::HttpTrackerAnnounce,
        Reason::HttpTrackerScrape,
        Reason::UdpTrackerConnect,
        Reason::UdpTrackerAnnounce,
        Reason::DhtMessage,
        Reason::UtpSyn,
        Reason::UtpData,
        Reason::LsdAnnounce,
        Reason::MseHandshake,
        Reason::LearnedPeer,
        Reason::TrackerAnswerPeer,
        Reason::DhtAnswerPeer,
        Reason::DhtAnswerNode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TcpHandshake => "tcp_handshake",
            Reason::SplitTcpHandshake => "split_tcp_handshake",
            Reason::HttpTrackerAnnounce => "http_tracker_announce",
            Reason::HttpTrackerScrape => "http_tracker_scrape",
            Reason::UdpTrackerConnect => "udp_tracker_connect",
            Reason::UdpTrackerAnnounce => "udp_tracker_announce",
            Reason::DhtMessage => "dht_message",
            Reason::UtpSyn => "utp_syn",
            Reason::UtpData => "utp_data",
            Reason::LsdAnnounce => "lsd_announce",
            Reason::MseHandshake => "mse_handshake",
            Reason::LearnedPeer => "learned_peer",
            Reason::TrackerAnswerPeer => "tracker_answer_peer",
            Reason::DhtAnswerPeer => "dht_answer_peer",
            Reason::DhtAnswerNode => "dht_answer_node",
        }
    }
}

impl Reason {
    /// A rule that judges by statistics rather than by a message's syntax:
    /// it can misfire, so its detections carry what it measured and the
    /// service can turn it off.
    pub fn is_heuristic(self) -> bool {
        self == Reason::MseHandshake
    }

    /// Whether the flow was between BitTorrent peers or DHT nodes (whose
    /// port serves both transports), rather than with a tracker or on the
    /// local discovery multicast group.
    fn teaches_both_transports(self) -> bool {
        !matches!(
            self,
            Reason::HttpTrackerAnnounce
                | Reason::HttpTrackerScrape
                | Reason::UdpTrackerConnect
                | Reason::UdpTrackerAnnounce
                | Reason::LsdAnnounce
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a TCP or UDP packet the classifier can read.
    Unknown,
    /// The flow is undecided: send its next packets.
    NeedMore,
    BitTorrent(Detection),
    /// Decided for the flow's life: its later packets need not be sent.
    NotBitTorrent,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Flows tracked at once; the oldest of a full bucket is forgotten.
    pub max_flows: usize,
    /// A flow idle this long starts afresh if its 5-tuple comes back.
    pub flow_idle_ms: u64,
    /// Payload packets of a flow inspected before it is declared not
    /// BitTorrent, and after which answers are no longer read for peers.
    pub max_payload_packets: u8,
    pub max_learned_peers: usize,
    pub learned_peer_ttl_ms: u64,
    /// Endpoints remembered as speaking another random-looking protocol,
    /// which the MSE shape rule then leaves alone.
    pub max_random_servers: usize,
    pub random_server_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_flows: 4096,
            flow_idle_ms: 120_000,
            max_payload_packets: 8,
            max_learned_peers: 8192,
            learned_peer_ttl_ms: 3_600_000,
            max_random_servers: 1024,
            random_server_ttl_ms: 3_600_000,
        }
    }
}

/// Both endpoints, the lower first, so that both directions share a key.
type FlowKey = (Transport, Ep, Ep);

impl table::Key for FlowKey {
    fn bytes(&self) -> [u8; 40] {
        let mut bytes = [0; 40];
        bytes[0] = self.0 as u8;
        ip::write_endpoint(&mut bytes[1..19], self.1);
        ip::write_endpoint(&mut bytes[19..37], self.2);
        bytes
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Decision {
    Open,
    BitTorrent(Reason),
    Not,
}

/// What a BitTorrent flow's later packets may teach.
#[derive(Clone, Copy)]
enum Watch {
    Nothing,
    /// Whether the answer's headers have ended: servers often send the
    /// body in a segment of its own.
    HttpTrackerAnswer {
        in_body: bool,
    },
    /// The transaction id of the latest request.
    UdpTrackerAnswer(u32),
    Dht,
}

struct Flow {
    initiator: Ep,
    /// Whether the initiator is on the LAN, from the interface its first
    /// packet came in on (None: not told).
    initiator_on_lan: Option<bool>,
    decision: Decision,
    watch: Watch,
    payloads: u8,
    /// TCP: the sequence number of the initiator's next new byte.
    next_seq: Option<u32>,
    segments: u8,
    /// TCP: the initiator's first bytes, reassembled in order: enough for a
    /// handshake split across segments, and no more.
    prefix: [u8; HANDSHAKE.len()],
    prefix_len: u8,
    /// TCP: the plaintext messages are ruled out.
    plain_over: bool,
    /// TCP: how the flow measures against the MSE handshake's shape.
    shape: MseShape,
    /// uTP: the connection id and seq_nr of the initiator's SYN.
    utp_syn: Option<(u16, u16)>,
}

enum Step {
    NeedMore,
    Not,
    Found(Reason),
}

pub struct Classifier {
    limits: Limits,
    flows: Table<FlowKey, Flow>,
    peers: Table<Ep, Reason>,
    /// Whether heuristic rules (the MSE handshake's shape) run; the
    /// signatures always do.
    heuristics: bool,
    random_servers: RandomServers,
}

/// Endpoints seen answering a random first turn with a random turn longer
/// than MSE allows (obfs4 bridges, proxies): an MSE peer never sends more
/// than 608 bytes before message 3, whatever it is sent, so a later flow to
/// one is not taken for MSE by its shape. Only the responder's own answer
/// counts: a LAN client cannot make a real peer exempt.
struct RandomServers {
    table: Table<Ep, ()>,
    ttl_ms: u64,
}

impl RandomServers {
    fn knows(&self, server: Ep, now_ms: u64) -> bool {
        self.table
            .get(&server, now_ms.saturating_sub(self.ttl_ms))
            .is_some()
    }

    fn remember(&mut self, server: Ep, now_ms: u64) {
        self.table.insert(server, (), now_ms);
    }
}

impl Classifier {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            flows: Table::with_capacity(limits.max_flows),
            peers: Table::with_capacity(limits.max_learned_peers),
            heuristics: true,
            random_servers: RandomServers {
                table: Table::with_capacity(limits.max_random_servers),
                ttl_ms: limits.random_server_ttl_ms,
            },
        }
    }

    /// Classifies one IP packet (v4 or v6, from the IP header) and so its
    /// flow. `now_ms` is a monotonic time in milliseconds. The LAN side of
    /// a flow is then guessed from its addresses (see [`Detection::peer`]).
    pub fn packet(&mut self, ip_packet: &[u8], now_ms: u64) -> Verdict {
        self.packet_from(ip_packet, None, now_ms)
    }

    /// The same, told whether the packet came in on a LAN interface.
    pub fn packet_from(
        &mut self,
        ip_packet: &[u8],
        from_lan: Option<bool>,
        now_ms: u64,
    ) -> Verdict {
        let Some(packet) = ip::parse(ip_packet) else {
            return Verdict::Unknown;
        };
        let (src, dst) = (packet.src, packet.dst);
        let key = if src <= dst {
            (packet.protocol, src, dst)
        } else {
            (packet.protocol, dst, src)
        };
        let since = now_ms.saturating_sub(self.limits.flow_idle_ms);
        let bucket = self.flows.bucket(&key);
        let (index, learned) = match self.flows.find_in(bucket.clone(), &key, since) {
            Some(index) => (index, None),
            None => {
                let learned = self.learned(&packet, now_ms);
                (
                    self.flows
                        .insert_in(bucket, key, Flow::new(src, from_lan), now_ms),
                    learned,
                )
            }
        };
        let slot = self.flows.slot_mut(index);
        slot.stamp = now_ms;
        let flow = &mut slot.value;
        let from_initiator = src == flow.initiator;
        if !packet.payload.is_empty() {
            flow.payloads = flow.payloads.saturating_add(1);
        }
        let fresh = flow.payloads <= self.limits.max_payload_packets;
        if flow.decision == Decision::Open {
            let step = match packet.protocol {
                Transport::Tcp => {
                    let servers = self.heuristics.then_some(&mut self.random_servers);
                    flow.tcp(&packet, from_initiator, servers, now_ms)
                }
                Transport::Udp => flow.udp(&packet, from_initiator),
            };
            // A message says more than a learned endpoint, so it names the reason.
            let step = match (step, learned) {
                (Step::Found(reason), _) | (_, Some(reason)) => Step::Found(reason),
                (step, None) => step,
            };
            match step {
                Step::NeedMore if fresh => {}
                Step::NeedMore | Step::Not => flow.decision = Decision::Not,
                Step::Found(reason) => {
                    flow.decision = Decision::BitTorrent(reason);
                    // A heuristic teaches nothing beyond its own detection
                    // (whose block the agent ends if the rules are turned off).
                    let endpoints = match reason {
                        // The responder listens for peers; the initiator's port is ephemeral.
                        Reason::TcpHandshake | Reason::SplitTcpHandshake => {
                            [Some(flow.responder(key)), None]
                        }
                        // One UDP socket serves the DHT, uTP and, mostly, TCP's port too.
                        Reason::DhtMessage | Reason::UtpSyn | Reason::UtpData => {
                            [Some(src), Some(dst)]
                        }
                        _ => [None, None],
                    };
                    for endpoint in endpoints.into_iter().flatten() {
                        learn(&mut self.peers, endpoint, Reason::LearnedPeer, now_ms);
                    }
                }
            }
        }
        if matches!(flow.decision, Decision::BitTorrent(_)) && fresh && !packet.payload.is_empty() {
            flow.watch(&packet, from_initiator, &mut self.peers, now_ms);
        }
        match flow.decision {
            Decision::Open => Verdict::NeedMore,
            Decision::Not => Verdict::NotBitTorrent,
            Decision::BitTorrent(reason) => Verdict::BitTorrent(flow.detection(key, reason)),
        }
    }

    /// Turns the heuristic rules ([`Reason::is_heuristic`]) on or off; the
    /// signatures always run.
    pub fn set_heuristics(&mut self, on: bool) {
        self.heuristics = on;
    }

    /// Remembers a peer revealed elsewhere: later flows to it are BitTorrent.
    pub fn learn_peer(&mut self, peer: SocketAddr, now_ms: u64) {
        learn(
            &mut self.peers,
            (peer.ip(), peer.port()),
            Reason::LearnedPeer,
            now_ms,
        );
    }

    /// Forgets a learned peer (its block was ended early: a false positive).
    pub fn forget_peer(&mut self, peer: SocketAddr) {
        self.peers.remove(&(peer.ip(), peer.port()));
    }

    /// The peers learned and not yet expired, e.g. to block them in the kernel.
    pub fn learned_peers(&self, now_ms: u64) -> impl Iterator<Item = (SocketAddr, Reason)> + '_ {
        let since = now_ms.saturating_sub(self.limits.learned_peer_ttl_ms);
        self.peers
            .iter()
            .filter(move |slot| slot.stamp >= since)
            .map(|slot| (socket(slot.key), slot.value))
    }

    /// A new flow to a learned peer. TCP peers are only matched as the
    /// responder: a host's outgoing connections use ephemeral ports, which
    /// may by chance equal a learned one. A UDP socket is one endpoint for
    /// all its flows, so either side matches.
    fn learned(&self, packet: &Packet, now_ms: u64) -> Option<Reason> {
        let since = now_ms.saturating_sub(self.limits.learned_peer_ttl_ms);
        let reason = |ep: &Ep| self.peers.get(ep, since).map(|slot| slot.value);
        match packet.protocol {
            Transport::Tcp => reason(&packet.dst),
            Transport::Udp => reason(&packet.dst).or_else(|| reason(&packet.src)),
        }
    }
}

/// Peer lists can be forged: endpoints that cannot be peers are ignored,
/// and so are ports below 1024, so that a hostile answer cannot get web or
/// DNS servers blocked.
fn learn(peers: &mut Table<Ep, Reason>, (ip, port): Ep, reason: Reason, now_ms: u64) {
    let broadcast = ip == IpAddr::from([255, 255, 255, 255]);
    if port >= 1024 && !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || broadcast)
    {
        peers.insert((ip, port), reason, now_ms);
    }
}

fn socket((ip, port): Ep) -> SocketAddr {
    SocketAddr::new(ip, port)
}

impl Flow {
    fn new(initiator: Ep, initiator_on_lan: Option<bool>) -> Self {
        Self {
            initiator,
            initiator_on_lan,
            decision: Decision::Open,
            watch: Watch::Nothing,
            payloads: 0,
            next_seq: None,
            segments: 0,
            prefix: [0; HANDSHAKE.len()],
            prefix_len: 0,
            plain_over: false,
            shape: MseShape::default(),
            utp_syn: None,
        }
    }

    fn responder(&self, (_, a, b): FlowKey) -> Ep {
        if a == self.initiator {
            b
        } else {
            a
        }
    }

    fn detection(&self, key: FlowKey, reason: Reason) -> Detection {
        let (initiator, responder) = (self.initiator, self.responder(key));
        let lan = match self.initiator_on_lan {
            Some(true) => Some(initiator),
            Some(false) => Some(responder),
            None if is_local(initiator.0) && !is_local(responder.0) => Some(initiator),
            None if is_local(responder.0) && !is_local(initiator.0) => Some(responder),
            None => None,
        };
        let remote = if lan == Some(responder) {
            initiator
        } else {
            responder
        };
        Detection {
            peer: Endpoint {
                protocol: key.0,
                addr: socket(remote),
            },
            lan: lan.map(socket),
            flow: FiveTuple {
                protocol: key.0,
                initiator: socket(initiator),
                responder: socket(responder),
            },
            reason,
            features: reason.is_heuristic().then_some(self.shape.features),
        }
    }

    /// BitTorrent over TCP speaks first from the initiator: a peer
    /// handshake, an HTTP tracker request, or an MSE key exchange recognised
    /// by its shape (`mse.rs`).
    fn tcp(
        &mut self,
        packet: &Packet,
        from_initiator: bool,
        heuristics: Option<&mut RandomServers>,
        now_ms: u64,
    ) -> Step {
        let (syn, seq, payload) = (packet.syn, packet.seq, packet.payload);
        let heuristics_on = heuristics.is_some();
        if let Some(servers) = heuristics {
            let responder = if from_initiator {
                packet.dst
            } else {
                packet.src
            };
            match self.shape.step(from_initiator, syn, seq, payload, now_ms) {
                Shape::Found if !servers.knows(responder, now_ms) => {
                    return Step::Found(Reason::MseHandshake)
                }
                Shape::NotMseServer => servers.remember(responder, now_ms),
                _ => {}
            }
        }
        if !self.plain_over {
            match self.plain_tcp(packet, from_initiator) {
                Step::Not => self.plain_over = true,
                found @ Step::Found(_) => return found,
                Step::NeedMore => {}
            }
        }
        if self.plain_over && (self.shape.is_over() || !heuristics_on) {
            Step::Not
        } else {
            Step::NeedMore
        }
    }

    /// The plaintext messages: a peer handshake (reassembled when split) or
    /// an HTTP tracker request.
    fn plain_tcp(&mut self, packet: &Packet, from_initiator: bool) -> Step {
        // Data in a SYN (TCP Fast Open) starts after the SYN's sequence number.
        let seq = packet.seq.wrapping_add(u32::from(packet.syn));
        if packet.syn && from_initiator {
            self.next_seq = Some(seq);
        }
        let payload = packet.payload;
        if payload.is_empty() {
            return Step::NeedMore;
        }
        if !from_initiator {
            // BitTorrent responders never speak first.
            return if self.segments == 0 {
                Step::Not
            } else {
                Step::NeedMore
            };
        }
        let next = *self.next_seq.get_or_insert(seq);
        let ahead = seq.wrapping_sub(next);
        if ahead != 0 && ahead < 1 << 31 {
            return Step::NeedMore; // A gap: wait for the missing segment.
        }
        let Some(new) = payload
            .get(next.wrapping_sub(seq) as usize..)
            .filter(|new| !new.is_empty())
        else {
            return Step::NeedMore; // A retransmission.
        };
        self.next_seq = Some(next.wrapping_add(new.len() as u32));
        self.segments = self.segments.saturating_add(1);
        if self.segments == 1 {
            match protocol::http_tracker(new) {
                Some(HttpTracker::Announce) => {
                    return self.found(
                        Reason::HttpTrackerAnnounce,
                        Watch::HttpTrackerAnswer { in_body: false },
                    )
                }
                Some(HttpTracker::Scrape) => {
                    return self.found(
                        Reason::HttpTrackerScrape,
                        Watch::HttpTrackerAnswer { in_body: false },
                    )
                }
                None => {}
            }
        }
        let len = usize::from(self.prefix_len);
        let take = new.len().min(HANDSHAKE.len() - len);
        self.prefix[len..len + take].copy_from_slice(&new[..take]);
        self.prefix_len += take as u8;
        let prefix = &self.prefix[..len + take];
        if !HANDSHAKE.starts_with(prefix) {
            Step::Not
        } else if prefix.len() < HANDSHAKE.len() {
            Step::NeedMore
        } else if self.segments == 1 {
            Step::Found(Reason::TcpHandshake)
        } else {
            Step::Found(Reason::SplitTcpHandshake)
        }
    }

    /// Every BitTorrent UDP flow starts with a decisive message or with
    /// uTP; anything else is not BitTorrent. One uTP header is too weak a
    /// sign (random bytes pass with odds near 1 in 13,000), so a SYN counts
    /// only once answered.
    fn udp(&mut self, packet: &Packet, from_initiator: bool) -> Step {
        let payload = packet.payload;
        if payload.is_empty() {
            return Step::NeedMore;
        }
        if protocol::lsd_announce(payload) {
            return Step::Found(Reason::LsdAnnounce);
        }
        match protocol::udp_tracker_request(payload) {
            Some((UdpTracker::Connect, id)) if from_initiator => {
                return self.found(Reason::UdpTrackerConnect, Watch::UdpTrackerAnswer(id))
            }
            Some((UdpTracker::Announce, id)) if from_initiator => {
                return self.found(Reason::UdpTrackerAnnounce, Watch::UdpTrackerAnswer(id))
            }
            _ => {}
        }
        if payload[0] == b'd' && protocol::dht_message(payload) {
            return self.found(Reason::DhtMessage, Watch::Dht);
        }
        let Some(utp) = protocol::utp(payload) else {
            return Step::Not;
        };
        match (utp.kind, self.utp_syn) {
            (UTP_DATA, _) if utp.payload.starts_with(HANDSHAKE) => Step::Found(Reason::UtpData),
            (UTP_SYN, _) if from_initiator => {
                self.utp_syn = Some((utp.connection, utp.seq));
                Step::NeedMore
            }
            // The answer carries the SYN's id (BEP 29); some peers add one.
            (UTP_STATE, Some((id, seq)))
                if !from_initiator && (utp.connection.wrapping_sub(id) <= 1) && utp.ack == seq =>
            {
                Step::Found(Reason::UtpSyn)
            }
            _ => Step::NeedMore,
        }
    }

    fn found(&mut self, reason: Reason, watch: Watch) -> Step {
        self.watch = watch;
        Step::Found(reason)
    }

    /// Learns the peers that the answers of a BitTorrent flow list.
    fn watch(
        &mut self,
        packet: &Packet,
        from_initiator: bool,
        peers: &mut Table<Ep, Reason>,
        now_ms: u64,
    ) {
        let payload = packet.payload;
        let mut remember =
            |reason, list: protocol::Peers| list.for_each(|ep| learn(peers, ep, reason, now_ms));
        match &mut self.watch {
            Watch::Nothing => {}
            Watch::HttpTrackerAnswer { in_body } if !from_initiator => {
                match if *in_body {
                    Some(payload)
                } else {
                    protocol::http_body(payload)
                } {
                    Some([]) => *in_body = true,
                    Some(body) => {
                        let (peers4, peers6) = protocol::http_tracker_answer(body);
                        remember(Reason::TrackerAnswerPeer, peers4);
                        remember(Reason::TrackerAnswerPeer, peers6);
                        self.watch = Watch::Nothing;
                    }
                    None => {}
                }
            }
            Watch::HttpTrackerAnswer { .. } => {}
            Watch::UdpTrackerAnswer(id) if from_initiator => {
                if let Some((_, request)) = protocol::udp_tracker_request(payload) {
                    *id = request;
                }
            }
            Watch::UdpTrackerAnswer(id) => {
                if let Some(answer) =
                    protocol::udp_tracker_answer(payload, *id, packet.src.0.is_ipv6())
                {
                    remember(Reason::TrackerAnswerPeer, answer);
                }
            }
            Watch::Dht => {
                let (values, nodes) = protocol::dht_answer(payload);
                remember(Reason::DhtAnswerPeer, values);
                remember(Reason::DhtAnswerNode, nodes);
            }
        }
    }
}
