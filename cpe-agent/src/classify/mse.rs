//! BitTorrent's Message Stream Encryption (MSE, also "PE") recognised by the
//! shape of its handshake, with no key and no host context. The handshake
//! is strictly turn-based, because each message needs what the other side
//! sent before it:
//!
//! 1. initiator: its Diffie-Hellman value (96 bytes) and 0-512 bytes of
//!    random padding, written at once;
//! 2. responder: the same;
//! 3. initiator: two 20-byte hashes, then (RC4) the verification constant,
//!    the crypto field, a padding length, 0-512 bytes of padding, the
//!    length of the initial payload and that payload (libtorrent and
//!    Transmission put the 68-byte peer handshake there): 56 to 636 bytes;
//! 4. responder: its answer, then encrypted BitTorrent.
//!
//! The rule ([`MseShape::step`]) follows a TCP flow from its SYN and fires on
//! the first segment of message 4, when all of these hold (`docs/services.md`
//! says why each is there):
//!
//! - the initiator speaks first; its first turn (every byte it sends before
//!   the responder sends any) is 96 to 608 bytes, the responder's first turn
//!   is 96 to 608 bytes: the bounds of the specification, which both ends
//!   enforce (a peer sending more than 608 bytes before message 3 is
//!   dropped);
//! - each of the first two turns is written at once: one segment, or
//!   several only when the first is full-sized (at least 512 bytes);
//! - the initiator's second turn is one segment of 56 to 636 bytes, and the
//!   responder answers it with at least 14 bytes;
//! - each turn answers the previous one within 5 s (an MSE peer replies as
//!   soon as it can compute; interactive protocols wait);
//! - the first segment of each of the first three turns looks uniformly
//!   random ([`randomness`]): no run of 20 printable characters, no 12
//!   printable characters at the start, no TLS record header or length
//!   prefix at the start, as many distinct byte values as random bytes
//!   show and an average of 3.3 to 4.7 one-bits per byte (so does message
//!   4's when it is 56 bytes or more). One of the four may fail one of the
//!   last two, statistical, tests, as a few random segments in 10,000 do:
//!   text fails both, and a handshake is then missed about once in 10,000.
//!
//! With quick ACKs message 4 is the tenth packet of the flow; the service
//! queues twelve.
//!
//! Every other TCP flow leaves the rule at its first violated check, mostly
//! on its first payload segment. The state is a few dozen bytes per flow and
//! no byte is kept: randomness is measured on the segment at hand.

/// Both ends drop a peer that sends more than this before message 3.
const KEY_TURN: std::ops::RangeInclusive<u32> = 96..=608;
/// Message 3: 20 + 20 + 8 + 4 + 2 + PadC (0-512) + 2 + the initial payload
/// (none, or the 68-byte peer handshake).
const SYNC_SEGMENT: std::ops::RangeInclusive<usize> = 56..=636;
/// A message written at once is split only at the segment size.
const FULL_SEGMENT: usize = 512;
/// The longest wait for the other side's next message.
const REPLY_MS: u32 = 5_000;
/// Offsets past this are far beyond any handshake (and catch sequence
/// numbers from before the flow's start).
const HANDSHAKE_WINDOW: u32 = 1 << 16;
/// A segment starting with this many printable characters is text.
const PRINTABLE_START: usize = 12;

/// What the rule measured on a flow it flagged, for the operator to judge
/// a detection by (carried in the router block's reason).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MseFeatures {
    /// Bytes of the initiator's first turn, the responder's first turn, the
    /// initiator's second turn (one segment), and the first segment of the
    /// responder's second turn.
    pub turns: [u16; 4],
    /// Segments of the first two turns.
    pub segments: [u8; 2],
    /// Average one-bits per byte, in hundredths, of each turn's first segment
    /// (400 for random bytes).
    pub bits_per_byte: [u16; 3],
    /// Milliseconds from the start of a turn to the start of the next one.
    pub reply_ms: [u16; 3],
}

impl std::fmt::Display for MseFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [i1, r1, i2, r2] = self.turns;
        let [s1, s2] = self.segments;
        let [b1, b2, b3] = self.bits_per_byte.map(|b| f64::from(b) / 100.0);
        let [t1, t2, t3] = self.reply_ms;
        write!(
            f,
            "i1={i1} r1={r1} i2={i2} r2={r2} segs={s1}/{s2} bits={b1:.2}/{b2:.2}/{b3:.2} \
             reply_ms={t1}/{t2}/{t3}"
        )
    }
}

/// Where a flow stands against the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Open,
    Not,
    Found,
    /// The responder opened with a random turn longer than MSE allows:
    /// it speaks some other random-looking protocol (obfs4, a proxy).
    NotMseServer,
}

#[derive(Clone, Copy, Default)]
pub(super) struct MseShape {
    /// Each side's first payload sequence number, from its SYN:
    /// `[initiator, responder]`; `synced` says which are known.
    start: [u32; 2],
    synced: [bool; 2],
    /// Bytes each side has sent (the highest offset seen).
    sent: [u32; 2],
    /// Turns begun: 1 is the initiator's first.
    turn: u8,
    /// When the current turn began (milliseconds, wrapping).
    turn_started_ms: u32,
    first_segment: u16,
    over: bool,
    /// The initiator's first turn was random but not of MSE's size: only
    /// the responder's answer is still of interest.
    beyond: bool,
    /// A turn's first segment failed one statistical randomness test: the
    /// next to fail one ends the rule.
    doubtful: bool,
    pub features: MseFeatures,
}

impl MseShape {
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Follows one TCP packet of the flow (any flags, any payload).
    pub fn step(
        &mut self,
        from_initiator: bool,
        syn: bool,
        seq: u32,
        payload: &[u8],
        now_ms: u64,
    ) -> Shape {
        if self.over {
            return Shape::Not;
        }
        let shape = self.follow(usize::from(!from_initiator), syn, seq, payload, now_ms);
        if shape != Shape::Open {
            self.over = true;
        }
        shape
    }

    /// Whether `payload`, a turn's first segment, passes as random: every
    /// test passed, or one statistical test failed and no earlier turn's
    /// did (random bytes fail one a few times in 10,000, text both). With
    /// the average one-bits per byte in hundredths.
    fn random_turn(&mut self, payload: &[u8]) -> Option<u16> {
        match randomness(payload) {
            Randomness::Random(bits) => Some(bits),
            Randomness::Doubtful(bits) if !self.doubtful => {
                self.doubtful = true;
                Some(bits)
            }
            Randomness::Doubtful(_) | Randomness::Framed => None,
        }
    }

    fn follow(&mut self, side: usize, syn: bool, seq: u32, payload: &[u8], now_ms: u64) -> Shape {
        if syn {
            // MSE starts after the TCP handshake, never in a SYN.
            if !payload.is_empty() {
                return Shape::Not;
            }
            self.start[side] = seq.wrapping_add(1);
            self.synced[side] = true;
            return Shape::Open;
        }
        if payload.is_empty() {
            return Shape::Open;
        }
        // A flow not seen from its start cannot be measured.
        if !self.synced[side] {
            return Shape::Not;
        }
        let offset = seq.wrapping_sub(self.start[side]);
        if offset >= HANDSHAKE_WINDOW {
            return Shape::Not;
        }
        let end = offset + payload.len() as u32;
        if end <= self.sent[side] {
            return Shape::Open; // A retransmission.
        }
        if self.beyond {
            // Only the responder's answer is of interest: does it open with
            // a random turn longer than MSE allows?
            return match side {
                0 => Shape::Open,
                _ if payload.len() > *KEY_TURN.end() as usize
                    && randomness(payload) != Randomness::Framed =>
                {
                    Shape::NotMseServer
                }
                _ => Shape::Not,
            };
        }
        if self.turn > 0 && (side == 0) == (self.turn % 2 == 1) {
            // The turn goes on. Each message is written at once: the first
            // two may be split at a full-sized segment, message 3 (at most
            // 636 bytes) not at all.
            self.sent[side] = end;
            if self.turn > 2 {
                return Shape::Not;
            }
            let turn = usize::from(self.turn - 1);
            self.features.segments[turn] = self.features.segments[turn].saturating_add(1);
            return if usize::from(self.first_segment) >= FULL_SEGMENT && end <= *KEY_TURN.end() {
                Shape::Open
            } else {
                Shape::Not
            };
        }
        // A new turn, where this side stopped; the other side's turn is complete.
        if (self.turn == 0 && side == 1) || offset != self.sent[side] {
            return Shape::Not;
        }
        if self.turn > 0 {
            if self.turn < 3 && !KEY_TURN.contains(&self.sent[1 - side]) {
                return Shape::Not;
            }
            let waited = (now_ms as u32).wrapping_sub(self.turn_started_ms);
            if waited > REPLY_MS {
                return Shape::Not;
            }
            self.features.reply_ms[usize::from(self.turn - 1)] = waited as u16;
        }
        let turn = usize::from(self.turn);
        self.turn += 1;
        self.turn_started_ms = now_ms as u32;
        self.first_segment = payload.len().min(usize::from(u16::MAX)) as u16;
        self.sent[side] = end;
        self.features.turns[turn] = self.first_segment;
        if turn == 3 {
            // The responder's answer to message 3 decides: message 4 is at
            // least 14 bytes (and random, when long enough to tell).
            let random =
                payload.len() < *SYNC_SEGMENT.start() || self.random_turn(payload).is_some();
            return if payload.len() >= 14 && random {
                Shape::Found
            } else {
                Shape::Not
            };
        }
        let Some(bits) = self.random_turn(payload) else {
            return Shape::Not;
        };
        self.features.bits_per_byte[turn] = bits;
        if turn < 2 {
            // Written at once: the whole message, or a full-sized segment.
            self.features.segments[turn] = 1;
            // A responder opening with more random bytes than MSE allows
            // speaks something else (an MSE peer never does, whatever it
            // is sent); so may one answering a random first turn of the
            // wrong size.
            if turn == 1 && end > *KEY_TURN.end() {
                return Shape::NotMseServer;
            }
            self.beyond = turn == 0 && !KEY_TURN.contains(&end);
            return if KEY_TURN.contains(&end) || self.beyond {
                Shape::Open
            } else {
                Shape::Not
            };
        }
        // Message 3, in one segment; the first two turns are complete.
        self.features.turns[0] = self.sent[0].saturating_sub(self.first_segment.into()) as u16;
        self.features.turns[1] = self.sent[1] as u16;
        if SYNC_SEGMENT.contains(&payload.len()) {
            Shape::Open
        } else {
            Shape::Not
        }
    }
}

/// How random a segment looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Randomness {
    /// Text, a TLS record or length-prefixed framing, or too short to tell.
    Framed,
    /// Failed exactly one statistical test (a few random segments in 10,000
    /// do); the average one-bits per byte in hundredths.
    Doubtful(u16),
    /// Passed every test; the average one-bits per byte in hundredths.
    Random(u16),
}

/// How random `bytes` look. The tests are those a deployed censor uses to
/// tell "fully encrypted" first packets (Wu et al., USENIX Security 2023)
/// plus the distinct-value count: text, base64, headers, TLS records and
/// length-prefixed framing (OpenVPN over TCP, most RPC) are
/// [`Randomness::Framed`]. The structural tests (a printable start or run,
/// a TLS header, a length prefix) rarely fail on random bytes; the two
/// statistical ones (one-bits per byte, distinct values) fail on about
/// 0.02% of short random segments each, and text fails both.
pub(super) fn randomness(bytes: &[u8]) -> Randomness {
    let n = bytes.len();
    if n < *SYNC_SEGMENT.start() {
        return Randomness::Framed;
    }
    let printable = |b: &u8| (0x20..=0x7e).contains(b);
    if bytes[..PRINTABLE_START].iter().all(printable) {
        return Randomness::Framed;
    }
    // A TLS record: content type 20-23, version 3.0 to 3.4.
    if (0x14..=0x17).contains(&bytes[0]) && bytes[1] == 3 && bytes[2] <= 4 {
        return Randomness::Framed;
    }
    // A length prefix giving the rest of the segment.
    let prefix16 = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    let prefix32 = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if prefix16 == n - 2 || prefix32 == n - 4 {
        return Randomness::Framed;
    }
    let mut run = 0;
    let mut seen = [0u64; 4];
    let mut ones = 0usize;
    for b in bytes {
        run = if printable(b) { run + 1 } else { 0 };
        if run >= 20 {
            return Randomness::Framed;
        }
        seen[usize::from(b >> 6)] |= 1 << (b & 63);
        ones += b.count_ones() as usize;
    }
    // Random bytes average 4 one-bits (a standard deviation of 0.19 at 56
    // bytes); 3.3 and 4.7 are more than three and a half away.
    let bits_fail = ones * 10 <= 33 * n || ones * 10 >= 47 * n;
    // At least 85% of the distinct values n random bytes show on average.
    let distinct: u32 = seen.iter().map(|w| w.count_ones()).sum();
    let expected = 256.0 * (1.0 - (255.0f64 / 256.0).powi(n as i32));
    let distinct_fail = f64::from(distinct) < 0.85 * expected;
    let bits = (ones * 100 / n) as u16;
    match (bits_fail, distinct_fail) {
        (false, false) => Randomness::Random(bits),
        (true, true) => Randomness::Framed,
        _ => Randomness::Doubtful(bits),
    }
}
