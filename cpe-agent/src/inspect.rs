//! The classifier on the packet path: NFQUEUE hands it the first packets of
//! each new flow (the `classify` rules say which), it answers accept or
//! drop, and what it recognises goes to the agent loop, which blocks the
//! peer.
//!
//! Failing open, by construction: the queue rule has `bypass` (no program
//! bound: the kernel accepts), the queue is bound with fail-open (full:
//! the kernel accepts), and only a flow's first packets are queued. An
//! agent crash or hang never stops traffic; the kernel's own signatures
//! keep blocking.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

use crate::classify::{Classifier, Detection, Limits, Verdict};

/// Bytes of each packet copied to the classifier: headers and the first
/// messages are all it reads.
const COPY_BYTES: u16 = 1024;
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

/// Binds queue `queue` and classifies its packets on a thread of its own.
pub fn start(queue: u16) -> anyhow::Result<Inspector> {
    let mut nfq = nfq::Queue::open().context("opening an NFQUEUE netlink socket")?;
    nfq.bind(queue)
        .with_context(|| format!("binding NFQUEUE {queue} (is nfnetlink_queue there?)"))?;
    nfq.set_fail_open(queue, true)
        .context("setting fail-open")?;
    nfq.set_copy_range(queue, COPY_BYTES)
        .context("setting the copy range")?;
    nfq.set_queue_max_len(queue, QUEUE_LEN)
        .context("setting the queue length")?;
    let (tx, rx) = mpsc::channel(PENDING);
    let (forget, forgotten) = std::sync::mpsc::channel();
    let heuristics = Arc::new(AtomicBool::new(true));
    let lan = Arc::new(LanInterfaces::default());
    let (wanted, lan_seen) = (heuristics.clone(), lan.clone());
    std::thread::Builder::new()
        .name("classifier".into())
        .spawn(move || serve(nfq, &tx, &forgotten, &wanted, &lan_seen))
        .context("starting the classifier thread")?;
    tracing::info!(queue, "classifier listening on NFQUEUE");
    Ok(Inspector {
        detections: rx,
        forget,
        heuristics,
        lan,
    })
}

fn serve(
    mut nfq: nfq::Queue,
    tx: &mpsc::Sender<Detection>,
    forgotten: &std::sync::mpsc::Receiver<SocketAddr>,
    heuristics: &AtomicBool,
    lan: &LanInterfaces,
) {
    let mut classifier = Classifier::new(Limits::default());
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
        while let Ok(peer) = forgotten.try_recv() {
            classifier.forget_peer(peer);
        }
        classifier.set_heuristics(heuristics.load(Ordering::Relaxed));
        let now_ms = started.elapsed().as_millis() as u64;
        let from_lan = lan.contains(msg.get_indev());
        let verdict = match classifier.packet_from(msg.get_payload(), from_lan, now_ms) {
            Verdict::BitTorrent(detection) => {
                let _ = tx.try_send(detection);
                nfq::Verdict::Drop
            }
            _ => nfq::Verdict::Accept,
        };
        msg.set_verdict(verdict);
        if let Err(e) = nfq.verdict(msg) {
            tracing::warn!(error = %e, "NFQUEUE verdict");
        }
    }
}
