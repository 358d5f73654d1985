//! The PROXY protocol (version 2) on the router listeners: a TCP load
//! balancer that passes routers' TLS through (HAProxy `send-proxy-v2`,
//! cloud network load balancers) opens each connection to a replica with a
//! binary header naming the router's own address. Without it every router
//! seems to come from the load balancer: the enrollment listener's limit
//! per source address would throttle the whole fleet to one enrollment a
//! second, and a WireGuard probe would go to the load balancer.
//!
//! Only connections from the configured load balancers
//! (`--proxy-protocol-from`) are read this way, and from them the header is
//! required: a router cannot name an address of its choosing, and a
//! connection that skipped the load balancer's header is closed. The
//! address is given to handlers as [`ProxiedClient`]; [`ClientAddr`] is what
//! they extract (the proxied address, else the TCP peer's).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use ipnet::IpNet;
use ppp::v2;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tower_http::add_extension::AddExtension;

use crate::http::error::ApiError;

/// The fixed part of a version 2 header: the 12-byte signature, version and
/// command, family and protocol, and the length of what follows.
const FIXED_LEN: usize = 16;
/// The longest variable part read (addresses and TLVs): HAProxy sends 12
/// (IPv4) or 36 (IPv6) bytes plus the TLVs it is asked for.
const MAX_VARIABLE_LEN: usize = 1024;

/// The router's address as the load balancer's PROXY header named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedClient(pub SocketAddr);

/// Which peers must open their connections with a PROXY header.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies(networks.into())
    }

    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&peer))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An acceptor that reads the PROXY header of connections from trusted
/// load balancers before handing them to `inner` (the TLS acceptor).
#[derive(Clone)]
pub struct ProxyProtocolAcceptor<A> {
    inner: A,
    trusted: TrustedProxies,
    /// The header must arrive within this (the TLS handshake's own bound
    /// starts after it).
    timeout: Duration,
}

impl<A> ProxyProtocolAcceptor<A> {
    pub fn new(inner: A, trusted: TrustedProxies, timeout: Duration) -> Self {
        ProxyProtocolAcceptor {
            inner,
            trusted,
            timeout,
        }
    }
}

impl<A, S> axum_server::accept::Accept<TcpStream, S> for ProxyProtocolAcceptor<A>
where
    A: axum_server::accept::Accept<TcpStream, AddExtension<S, Option<ProxiedClient>>>
        + Clone
        + Send
        + Sync
        + 'static,
    A::Future: Send,
    S: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send,
        >,
    >;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        let (inner, trusted, timeout) = (self.inner.clone(), self.trusted.clone(), self.timeout);
        Box::pin(async move {
            let peer = stream.peer_addr()?;
            let client = if trusted.contains(peer.ip()) {
                let header = tokio::time::timeout(timeout, read_header(&mut stream))
                    .await
                    .map_err(|_| invalid(format!("no PROXY header from {peer} in {timeout:?}")))?;
                Some(ProxiedClient(header?.unwrap_or(peer)))
            } else {
                None
            };
            inner
                .accept(stream, AddExtension::new(service, client))
                .await
        })
    }
}

/// Reads one version 2 header: the client's address (None for a LOCAL
/// command, the load balancer's own health check, or an address family
/// without one).
async fn read_header(stream: &mut TcpStream) -> std::io::Result<Option<SocketAddr>> {
    let mut header = vec![0u8; FIXED_LEN];
    stream.read_exact(&mut header).await?;
    if !header.starts_with(v2::PROTOCOL_PREFIX) {
        return Err(invalid(
            "a connection from a trusted load balancer without a PROXY protocol v2 header".into(),
        ));
    }
    let variable = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if variable > MAX_VARIABLE_LEN {
        return Err(invalid(format!(
            "a PROXY header of {variable} bytes (at most {MAX_VARIABLE_LEN})"
        )));
    }
    header.resize(FIXED_LEN + variable, 0);
    stream.read_exact(&mut header[FIXED_LEN..]).await?;
    client_of(&header)
}

/// The client address a complete header names.
fn client_of(header: &[u8]) -> std::io::Result<Option<SocketAddr>> {
    let parsed =
        v2::Header::try_from(header).map_err(|e| invalid(format!("a PROXY header: {e:?}")))?;
    if parsed.command == v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// The address a request came from: the router's as its load balancer
/// named it, else the TCP peer's.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl ClientAddr {
    pub fn of(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
        extensions
            .get::<Option<ProxiedClient>>()
            .copied()
            .flatten()
            .map(|c| c.0)
            .or_else(|| extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        ClientAddr::of(&parts.extensions)
            .map(ClientAddr)
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("the listener records no client address"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::Builder;

    fn header(command: v2::Command, addresses: impl Into<v2::Addresses>) -> Vec<u8> {
        Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    #[test]
    fn a_proxied_connection_names_the_router() {
        let router: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let replica: SocketAddr = "10.0.0.2:8443".parse().unwrap();
        let bytes = header(v2::Command::Proxy, (router, replica));
        assert_eq!(client_of(&bytes).unwrap(), Some(router));
        let router6: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let replica6: SocketAddr = "[2001:db8::2]:8443".parse().unwrap();
        let bytes = header(v2::Command::Proxy, (router6, replica6));
        assert_eq!(client_of(&bytes).unwrap(), Some(router6));
    }

    #[test]
    fn a_health_check_names_no_client() {
        let bytes = header(v2::Command::Local, v2::Addresses::Unspecified);
        assert_eq!(client_of(&bytes).unwrap(), None);
    }

    #[test]
    fn trusted_proxies_match_mapped_addresses() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!trusted.contains("192.0.2.1".parse().unwrap()));
        assert!(TrustedProxies::default().is_empty());
    }
}
