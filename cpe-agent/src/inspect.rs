//! The agent on the packet path, one thread on three NFQUEUE queues:
//!
//! - the BitTorrent classifier: NFQUEUE hands it the first packets of each
//!   new flow (the `classify` rules say which), it answers accept or drop,
//!   and what it recognises goes to the agent loop, which blocks the peer;
//! - the name reader (`flow_names`): the first client packets of the LAN's
//!   web flows (`backend/nft/names.rs`), read by `sitename::flows`; its
//!   verdict accepts the packet with the flow's tag in the packet's mark,
//!   which the ruleset makes the connection's, so the config's rules judge
//!   this packet and the rest of the flow in the kernel;
//! - the portal (`portal` rules): an HTTP request to a site not paid for,
//!   answered with a 302 to the portal as if from the server, the server
//!   side reset (`portal_inject.rs`), the request dropped.
//!
//! The first two fail open, by construction: their queue rules have
//! `bypass` (no program bound: the kernel accepts), the queues are bound
//! with fail-open (full: the kernel accepts), and only a flow's first
//! packets are queued. An agent crash or hang never stops traffic; the
//! kernel's own signatures keep blocking, and a web flow whose name was not
//! read is judged by its addresses. The portal's queue fails closed: with no
//! agent, or full, the request is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

use isdf_api::{FlowNames, PortalRedirect};

use crate::backend::planning::{
    group_tag, tag_group, CLASSIFY_QUEUE, NAMES_QUEUE, NAME_QUEUE_MARK, NAME_TAG_MASK,
    PORTAL_QUEUE, TAG_NAMED_ELSEWHERE, TAG_UNDECIDED, TAG_UNNAMED, TAG_UNNAMED_ELSEWHERE,
};
use crate::classify::{Classifier, Detection, Limits, Verdict};
use crate::dns::agreement::NameAgreement;
use crate::portal_inject::{forge, Injector};
use crate::sitename::flows::{FlowReader, Read};
use crate::sitename::Sighting;

/// Bytes of each packet copied: whole packets, as the name reader needs a
/// QUIC Initial whole to open it (the classifier reads only the start).
/// Only a flow's first packets are queued, so this costs little.
const COPY_BYTES: u16 = u16::MAX;
/// Packets the kernel holds for us before failing open.
const QUEUE_LEN: u32 = 4096;
/// Detections waiting for the agent loop; more are dropped (the flows
/// themselves were dropped already).
const PENDING: usize = 256;

/// The running classifier, seen from the agent loop.
pub struct Inspector {
    /// What it recognised.
    pub detections: mpsc::Receiver<Detection>,
    /// Peers to forget (their block was ended early), applied before the
    /// next packet is classified.
    forget: std::sync::mpsc::Sender<SocketAddr>,
    /// Whether the heuristic rules run, as the enforced config says.
    heuristics: Arc<AtomicBool>,
    /// The LAN interfaces' indexes (0: none), so that the classifier knows
    /// which side of a flow is the customer's.
    lan: Arc<LanInterfaces>,
    /// What the enforced config says of names and the portal.
    names: Arc<Mutex<Option<Arc<NameConfig>>>>,
}

/// The enforced config's flow names and portal, as the thread reads them,
/// and the router's resolver.
struct NameConfig {
    names: Option<FlowNames>,
    portal: Option<PortalRedirect>,
    resolver: SocketAddr,
}

/// Up to eight interface indexes, read by the classifier thread per packet
/// without a lock.
#[derive(Default)]
struct LanInterfaces([AtomicU32; 8]);

impl LanInterfaces {
    fn set(&self, indexes: &[u32]) {
        for (i, slot) in self.0.iter().enumerate() {
            slot.store(indexes.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// Whether `index` is a LAN interface; None when none is known.
    fn contains(&self, index: u32) -> Option<bool> {
        let mut known = false;
        for slot in &self.0 {
            let lan = slot.load(Ordering::Relaxed);
            if lan != 0 && lan == index {
                return Some(true);
            }
            known |= lan != 0;
        }
        known.then_some(false)
    }
}

impl Inspector {
    pub fn forget(&self, peer: SocketAddr) {
        let _ = self.forget.send(peer);
    }

    /// The enforced config's flow names and portal, from the next packet
    /// on; `resolver`: the router's, which says whether a name agrees with
    /// an address (`dns::agreement`).
    pub fn set_names(
        &self,
        names: Option<&FlowNames>,
        portal: Option<&PortalRedirect>,
        resolver: SocketAddr,
    ) {
        let config = (names.is_some() || portal.is_some()).then(|| {
            Arc::new(NameConfig {
                names: names.cloned(),
                portal: portal.cloned(),
                resolver,
            })
        });
        *self.names.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Turns the heuristic rules on or off from the next packet on.
    pub fn set_heuristics(&self, on: bool) {
        self.heuristics.store(on, Ordering::Relaxed);
    }

    /// The router's LAN interfaces, by name (looked up again at every
    /// call: a bridge may have been recreated). Names that do not exist are
    /// skipped; with none, the classifier guesses the LAN side from
    /// addresses.
    pub fn set_lan_interfaces(&self, names: &[String]) {
        let indexes: Vec<u32> = names
            .iter()
            .filter_map(|name| {
                std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        self.lan.set(&indexes);
    }
}

/// Binds the classifier's, the name reader's and the portal's queues and
/// serves their packets on a thread of its own.
pub fn start() -> anyhow::Result<Inspector> {
    let mut nfq = nfq::Queue::open().context("opening an NFQUEUE netlink socket")?;
    for (queue, fail_open) in [
        (CLASSIFY_QUEUE, true),
        (NAMES_QUEUE, true),
        (PORTAL_QUEUE, false),
    ] {
        nfq.bind(queue)
            .with_context(|| format!("binding NFQUEUE {queue} (is nfnetlink_queue there?)"))?;
        nfq.set_fail_open(queue, fail_open)
            .context("setting fail-open")?;
        nfq.set_copy_range(queue, COPY_BYTES)
            .context("setting the copy range")?;
        nfq.set_queue_max_len(queue, QUEUE_LEN)
            .context("setting the queue length")?;
    }
    // Without raw sockets portal requests are dropped unanswered: the site
    // stays closed, the browser shows an error instead of the portal.
    let injector = Injector::open()
        .map_err(|e| tracing::error!(error = %format!("{e:#}"), "portal answers cannot be sent"))
        .ok();
    let (tx, rx) = mpsc::channel(PENDING);
    let (forget, forgotten) = std::sync::mpsc::channel();
    let heuristics = Arc::new(AtomicBool::new(true));
    let lan = Arc::new(LanInterfaces::default());
    let names = Arc::new(Mutex::new(None));
    let thread = Thread {
        tx,
        forgotten,
        heuristics: heuristics.clone(),
        lan: lan.clone(),
        names: names.clone(),
        injector,
    };
    std::thread::Builder::new()
        .name("classifier".into())
        .spawn(move || thread.serve(nfq))
        .context("starting the classifier thread")?;
    tracing::info!(
        queues = ?[CLASSIFY_QUEUE, NAMES_QUEUE, PORTAL_QUEUE],
        "classifier, name reader and portal listening on NFQUEUE"
    );
    Ok(Inspector {
        detections: rx,
        forget,
        heuristics,
        lan,
        names,
    })
}

/// What the packet thread holds.
struct Thread {
    tx: mpsc::Sender<Detection>,
    forgotten: std::sync::mpsc::Receiver<SocketAddr>,
    heuristics: Arc<AtomicBool>,
    lan: Arc<LanInterfaces>,
    names: Arc<Mutex<Option<Arc<NameConfig>>>>,
    injector: Option<Injector>,
}

impl Thread {
    fn serve(self, mut nfq: nfq::Queue) {
        let mut classifier = Classifier::new(Limits::default());
        let mut reader = FlowReader::new();
        let mut agreement: Option<NameAgreement> = None;
        let started = Instant::now();
        let mut errors = 0u32;
        loop {
            let mut msg = match nfq.recv() {
                Ok(msg) => msg,
                Err(e) => {
                    // ENOBUFS and the like: the kernel failed open meanwhile.
                    errors = errors.saturating_add(1);
                    if errors.is_power_of_two() {
                        tracing::warn!(error = %e, errors, "NFQUEUE receive");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let now_ms = started.elapsed().as_millis() as u64;
            let verdict = match msg.get_queue_num() {
                NAMES_QUEUE => {
                    // It came marked with what its address says (a group
                    // whose sets hold it, or unnamed elsewhere): kept so with
                    // no names to read by (the config is not there yet).
                    let mark = msg.get_nfmark() & !NAME_QUEUE_MARK;
                    let by_address = mark & NAME_TAG_MASK;
                    let tag = match self.config() {
                        Some(config) if config.names.is_some() => {
                            let check = agreement
                                .get_or_insert_with(|| NameAgreement::new(config.resolver));
                            if check.resolver() != config.resolver {
                                *check = NameAgreement::new(config.resolver);
                            }
                            match reader.packet(msg.get_payload(), now_ms) {
                                Read::Pending => TAG_UNDECIDED,
                                Read::Decided(sighting) => {
                                    let flow = Flow {
                                        packet: msg.get_payload(),
                                        by_address,
                                        now_ms,
                                    };
                                    flow.tag(&sighting, &config, check)
                                }
                            }
                        }
                        _ => by_address,
                    };
                    msg.set_nfmark((mark & !NAME_TAG_MASK) | tag);
                    nfq::Verdict::Accept
                }
                PORTAL_QUEUE => {
                    self.answer_portal(msg.get_payload());
                    nfq::Verdict::Drop
                }
                _ => self.classify(&mut classifier, &msg, now_ms),
            };
            msg.set_verdict(verdict);
            if let Err(e) = nfq.verdict(msg) {
                tracing::warn!(error = %e, "NFQUEUE verdict");
            }
        }
    }

    fn config(&self) -> Option<Arc<NameConfig>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn classify(
        &self,
        classifier: &mut Classifier,
        msg: &nfq::Message,
        now_ms: u64,
    ) -> nfq::Verdict {
        while let Ok(peer) = self.forgotten.try_recv() {
            classifier.forget_peer(peer);
        }
        classifier.set_heuristics(self.heuristics.load(Ordering::Relaxed));
        let from_lan = self.lan.contains(msg.get_indev());
        match classifier.packet_from(msg.get_payload(), from_lan, now_ms) {
            Verdict::BitTorrent(detection) => {
                let _ = self.tx.try_send(detection);
                nfq::Verdict::Drop
            }
            _ => nfq::Verdict::Accept,
        }
    }

    /// Answers the HTTP request in `packet` with a 302 to the portal URL of
    /// the site its Host names, as the server, and resets the server's side.
    fn answer_portal(&self, packet: &[u8]) {
        let (Some(injector), Some(config)) = (&self.injector, self.config()) else {
            return;
        };
        let Some(portal) = &config.portal else { return };
        let host =
            crate::classify::ip::parse(packet).and_then(|p| {
                match crate::sitename::http::host(p.payload) {
                    Sighting::Name { name, .. } => Some(name),
                    _ => None,
                }
            });
        let url = portal.url_for(host.as_deref().unwrap_or(""));
        let answer = crate::portal_inject::portal_answer(url);
        let Some(forged) = forge(packet, &answer) else {
            return;
        };
        // The server first: its reset must not trail the client's answer.
        for packet in [&forged.to_server, &forged.to_client] {
            if let Err(e) = injector.send(packet) {
                tracing::warn!(error = %format!("{e:#}"), "sending the portal answer");
            }
        }
    }
}

/// A web flow the reader has decided, as its last packet shows it.
struct Flow<'a> {
    packet: &'a [u8],
    /// The tag the flow's server address alone gives (`names_read`).
    by_address: u32,
    now_ms: u64,
}

impl Flow<'_> {
    /// The flow's tag: what its name says, unless the name is another
    /// site's than the one its address is known for and does not resolve
    /// to that address (domain fronting): then the address's.
    fn tag(&self, sighting: &Sighting, config: &NameConfig, check: &mut NameAgreement) -> u32 {
        let Some(names) = &config.names else {
            return self.by_address;
        };
        let by_name = tag_for(sighting, names);
        let address_is_a_groups = tag_group(self.by_address).is_some();
        if by_name == TAG_UNNAMED {
            // No name: judged by the address, if a group's sets hold it.
            return if address_is_a_groups {
                TAG_UNNAMED
            } else {
                TAG_UNNAMED_ELSEWHERE
            };
        }
        if by_name == self.by_address || !address_is_a_groups {
            return by_name;
        }
        let (Sighting::Name { name, .. }, Some(packet)) =
            (sighting, crate::classify::ip::parse(self.packet))
        else {
            return self.by_address;
        };
        let keep_ms = u64::from(names.learn_secs) * 1000;
        if check.agrees(name, packet.dst.0, self.now_ms, keep_ms) {
            by_name
        } else {
            tracing::debug!(name, address = %packet.dst.0, "a name that does not resolve to its flow's address: judged by the address");
            self.by_address
        }
    }
}

/// The tag of a flow whose first bytes said `sighting`: its group's, or
/// named elsewhere; unnamed when no name shows. An Encrypted Client Hello's
/// outer name is a provider's public name, not the site's: unless that
/// name is itself in a group, the flow is unnamed, judged by its addresses.
fn tag_for(sighting: &Sighting, names: &FlowNames) -> u32 {
    match sighting {
        Sighting::Name { name, ech } => {
            match names
                .groups
                .iter()
                .position(|g| g.domains.iter().any(|d| d.covers(name)))
            {
                Some(index) => group_tag(index),
                None if *ech => TAG_UNNAMED,
                None => TAG_NAMED_ELSEWHERE,
            }
        }
        Sighting::Nameless { .. } | Sighting::Incomplete | Sighting::Other => TAG_UNNAMED,
    }
}
