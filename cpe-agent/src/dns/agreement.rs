//! Whether a name agrees with the address its flow goes to, by the router's
//! own resolver: asked by the name reader (`inspect.rs`) when a flow names
//! one site but goes to an address known to be another's (a gated site's).
//!
//! An ordinary site sharing a CDN address with a gated one resolves there:
//! the flow is that site's. A name put in front of a gated site's address
//! to get past the gate (domain fronting: `curl --resolve other:443:<gated
//! address>`) does not resolve there: the flow is the address's site's.
//!
//! Answers are kept (the last `CACHE`, for the TTL cap the caller gives;
//! a list scanned in full, which costs nothing beside a DNS question and
//! keeps the agent's code small), failures for a few seconds; the questions asked per second are bounded, so a LAN
//! host making up names cannot make the reader wait on the resolver for
//! long. A name that cannot be checked (no answer, budget spent) does not
//! agree: the flow is judged by its address, as before names.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::lookup::resolve;

/// Answers kept; past it the oldest is forgotten (rare: these are flows
/// naming one site at another's address).
const CACHE: usize = 512;
/// How long the reader waits for the resolver (its cache answers at once;
/// an upstream question takes a round trip).
const TIMEOUT: Duration = Duration::from_millis(500);
/// Questions per second, as a bucket of this many refilled every second.
const QUESTIONS_PER_SECOND: u32 = 20;
/// A failed check is kept this long (milliseconds).
const FAILURE_MS: u64 = 5_000;

/// The checks, with their answers kept.
pub struct NameAgreement {
    resolver: SocketAddr,
    kept: VecDeque<Kept>,
    budget: u32,
    refilled_ms: u64,
}

struct Kept {
    name: String,
    address: IpAddr,
    agrees: bool,
    until_ms: u64,
}

impl NameAgreement {
    /// Checks asked of the resolver at `resolver` (the router's dnsmasq).
    pub fn new(resolver: SocketAddr) -> Self {
        NameAgreement {
            resolver,
            kept: VecDeque::new(),
            budget: QUESTIONS_PER_SECOND,
            refilled_ms: 0,
        }
    }

    /// The resolver asked.
    pub fn resolver(&self) -> SocketAddr {
        self.resolver
    }

    /// Whether `name` resolves to `address` (as of `now_ms`, the caller's
    /// clock); an answer is kept for `keep_ms`.
    pub fn agrees(&mut self, name: &str, address: IpAddr, now_ms: u64, keep_ms: u64) -> bool {
        let found = self
            .kept
            .iter()
            .position(|k| k.address == address && k.name == name);
        if let Some(kept) = found.and_then(|i| self.kept.get(i)) {
            if kept.until_ms > now_ms {
                return kept.agrees;
            }
        }
        if let Some(i) = found {
            self.kept.remove(i);
        }
        if now_ms.saturating_sub(self.refilled_ms) >= 1_000 {
            (self.budget, self.refilled_ms) = (QUESTIONS_PER_SECOND, now_ms);
        }
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        let (agrees, keep_ms) = match resolve(self.resolver, name, address.is_ipv6(), TIMEOUT) {
            Ok(addresses) => (addresses.contains(&address), keep_ms),
            Err(e) => {
                tracing::debug!(name, error = %format!("{e:#}"), "checking a name's addresses");
                (false, FAILURE_MS)
            }
        };
        if self.kept.len() >= CACHE {
            self.kept.pop_front();
        }
        self.kept.push_back(Kept {
            name: name.to_owned(),
            address,
            agrees,
            until_ms: now_ms.saturating_add(keep_ms),
        });
        agrees
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// A resolver on loopback that answers every A query with 198.51.100.20
    /// and counts the questions.
    fn resolver() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut answer = buf[..n].to_vec();
                answer[2] |= 0x80;
                answer[7] = 1;
                answer.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 20]);
                let _ = socket.send_to(&answer, from);
            }
        });
        (addr, asked)
    }

    #[test]
    fn a_name_agrees_where_it_resolves_and_answers_are_kept() {
        let (addr, asked) = resolver();
        let mut check = NameAgreement::new(addr);
        let cdn: IpAddr = "198.51.100.20".parse().unwrap();
        let gated: IpAddr = "198.51.100.10".parse().unwrap();
        assert!(check.agrees("shop.test", cdn, 1, 60_000));
        assert!(!check.agrees("shop.test", gated, 2, 60_000));
        assert!(check.agrees("shop.test", cdn, 3, 60_000));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2, "kept");
        // Past the keep, asked again.
        assert!(check.agrees("shop.test", cdn, 60_002, 60_000));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn made_up_names_spend_a_bounded_budget() {
        let (addr, asked) = resolver();
        let mut check = NameAgreement::new(addr);
        let cdn: IpAddr = "198.51.100.20".parse().unwrap();
        for i in 0..100 {
            check.agrees(&format!("n{i}.test"), cdn, 10, 60_000);
        }
        assert_eq!(
            asked.load(std::sync::atomic::Ordering::SeqCst),
            QUESTIONS_PER_SECOND as usize
        );
        // Unchecked: judged by the address.
        assert!(!check.agrees("late.test", cdn, 20, 60_000));
        // A second later, the budget is back.
        assert!(check.agrees("late.test", cdn, 1_010, 60_000));
    }

    #[test]
    fn no_resolver_means_no_agreement() {
        // A port where nothing answers (bound, silent).
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut check = NameAgreement::new(silent.local_addr().unwrap());
        let cdn: IpAddr = "198.51.100.20".parse().unwrap();
        assert!(!check.agrees("shop.test", cdn, 1, 60_000));
    }
}
