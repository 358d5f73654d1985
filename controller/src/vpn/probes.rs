//! Reachability is tested, not assumed: a router asks for a probe, the
//! controller sends one UDP datagram with its own nonce to each address the
//! router may be reached at, and the router reports the nonce it received.
//! Only a nonce the controller sent (to this router, within a minute) marks
//! the address it went to as reachable.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use uuid::Uuid;

/// How long a probe's nonce can be redeemed.
const PROBE_VALIDITY: Duration = Duration::from_secs(60);
/// Addresses probed per request at most (the source address and WAN addresses).
pub const MAX_PROBE_TARGETS: usize = 8;
struct SentProbe {
    nonce: String,
    to: SocketAddr,
    at: Instant,
}

/// Probes sent and not yet redeemed, per router.
#[derive(Default)]
pub struct Probes {
    sent: Mutex<HashMap<Uuid, Vec<SentProbe>>>,
}

impl Probes {
    /// Sends one datagram, each with its own nonce, to every target; returns
    /// where they went.
    pub async fn send(
        &self,
        device: Uuid,
        targets: &[SocketAddr],
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let mut sent = Vec::new();
        for &to in targets.iter().take(MAX_PROBE_TARGETS) {
            let bind: SocketAddr = match to {
                SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
                SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
            };
            let mut nonce = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
            let nonce = hex::encode(nonce);
            let mut datagram = isdf_api::wireguard::PROBE_PREFIX.to_vec();
            datagram.extend_from_slice(nonce.as_bytes());
            let socket = tokio::net::UdpSocket::bind(bind)
                .await
                .context("probe socket")?;
            // An unreachable address is an answer too (not reachable): a
            // send error is not the router's fault.
            if let Err(e) = socket.send_to(&datagram, to).await {
                tracing::debug!(%device, %to, error = %e, "probe not sent");
                continue;
            }
            sent.push(SentProbe {
                nonce,
                to,
                at: Instant::now(),
            });
        }
        let targets: Vec<SocketAddr> = sent.iter().map(|p| p.to).collect();
        let mut all = self.sent.lock().expect("lock");
        let mine = all.entry(device).or_default();
        mine.retain(|p| p.at.elapsed() < PROBE_VALIDITY);
        mine.extend(sent);
        Ok(targets)
    }

    /// The address the probe carrying `nonce` was sent to, if this router
    /// was sent it within the last minute. A nonce is redeemed once.
    pub fn redeem(&self, device: Uuid, nonce: &str) -> Option<SocketAddr> {
        let mut all = self.sent.lock().expect("lock");
        let mine = all.get_mut(&device)?;
        mine.retain(|p| p.at.elapsed() < PROBE_VALIDITY);
        let index = mine.iter().position(|p| p.nonce == nonce)?;
        let probe = mine.swap_remove(index);
        if mine.is_empty() {
            all.remove(&device);
        }
        Some(probe.to)
    }
}

/// Where to probe a router: the address its request came from and the WAN
/// addresses it names (never multicast, broadcast or unspecified ones).
pub fn probe_targets(observed: IpAddr, wan: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    let mut targets = vec![observed];
    for &addr in wan {
        let usable = !addr.is_unspecified()
            && !addr.is_multicast()
            && addr != IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
        if usable && !targets.contains(&addr) {
            targets.push(addr);
        }
    }
    targets
        .into_iter()
        .take(MAX_PROBE_TARGETS)
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_redeemed_once_and_only_by_their_router() {
        let probes = Probes::default();
        let device = Uuid::from_u128(1);
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        probes.sent.lock().unwrap().insert(
            device,
            vec![SentProbe {
                nonce: "abc".into(),
                to,
                at: Instant::now(),
            }],
        );
        assert_eq!(probes.redeem(Uuid::from_u128(2), "abc"), None);
        assert_eq!(probes.redeem(device, "abd"), None);
        assert_eq!(probes.redeem(device, "abc"), Some(to));
        assert_eq!(probes.redeem(device, "abc"), None);
    }

    #[test]
    fn probe_targets_skip_unusable_addresses() {
        let observed: IpAddr = "203.0.113.7".parse().unwrap();
        let wan: Vec<IpAddr> = ["0.0.0.0", "224.0.0.1", "203.0.113.7", "192.0.2.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let targets = probe_targets(observed, &wan, 51821);
        assert_eq!(
            targets,
            vec![
                "203.0.113.7:51821".parse::<SocketAddr>().unwrap(),
                "192.0.2.1:51821".parse().unwrap()
            ]
        );
    }
}
