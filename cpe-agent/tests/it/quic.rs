//! A real QUIC client and server (quinn, rustls with ring) for the tests of
//! the router's QUIC gate, which reads the server name (SNI) from the
//! ClientHello inside a QUIC Initial on UDP 443: a stand-in datagram would
//! not carry one, so the tests need the handshake a browser would start.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};

use crate::netns::Netns;

/// The application protocol both ends name (QUIC requires one): no real
/// protocol is spoken, so none of the real ones is claimed.
const TEST_ALPN: &[u8] = b"isdf-test";

/// How long a connection nobody uses lives on: short, so that a test's
/// connections are gone soon after it looked at them.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client that got its answer lets its close go out.
const CLOSE_GRACE: Duration = Duration::from_millis(20);

/// The most either end reads from a stream: the exchange is one short line.
const STREAM_READ_LIMIT: usize = 1024;

/// A QUIC server answering on `[::]:443` (IPv4 and IPv6) in the current
/// namespace, on the current tokio runtime, until the runtime ends. Its one
/// self-signed certificate names all of `names` (those that are IP
/// addresses as IP addresses). Each connection's first bidirectional stream
/// is read to its end and answered with "site <the SNI the client sent>\n"
/// (empty when it sent none), then finished. Returns the certificate's PEM,
/// for clients to trust.
///
/// Panics if UDP 443 is taken (a UDP echo on 443 must go first).
pub async fn serve_quic(names: &[&str]) -> String {
    let subject_alt_names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let certificate = rcgen::generate_simple_self_signed(subject_alt_names)
        .expect("a self-signed certificate for the QUIC server");
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("ring supports TLS 1.3")
    .with_no_client_auth()
    .with_single_cert(
        vec![certificate.cert.der().clone()],
        rustls::pki_types::PrivatePkcs8KeyDer::from(certificate.key_pair.serialize_der()).into(),
    )
    .expect("the QUIC server's certificate and key");
    tls.alpn_protocols = vec![TEST_ALPN.to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(tls).expect("a TLS 1.3 configuration QUIC accepts"),
    ));
    config.transport_config(Arc::new(short_lived_transport()));

    let bind: SocketAddr = (Ipv6Addr::UNSPECIFIED, 443).into();
    let endpoint = quinn::Endpoint::server(config, bind)
        .unwrap_or_else(|e| panic!("QUIC server on UDP {bind}: {e} (is a UDP echo still there?)"));
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(answer_with_server_name(incoming));
        }
    });
    certificate.cert.pem()
}

/// Completes the handshake of one connection and answers its first stream
/// with the server name it asked for. Failures only end the connection:
/// the client sees them as a fetch that did not work.
async fn answer_with_server_name(incoming: quinn::Incoming) -> Option<()> {
    let connection = incoming.await.ok()?;
    let server_name = connection
        .handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .server_name
        .unwrap_or_default();
    let (mut send, mut recv) = connection.accept_bi().await.ok()?;
    recv.read_to_end(STREAM_READ_LIMIT).await.ok()?;
    send.write_all(format!("site {server_name}\n").as_bytes())
        .await
        .ok()?;
    send.finish().ok()?;
    // Dropping the connection now would close it before the answer is
    // surely delivered: the client closes it once it has read it (or the
    // idle timeout does).
    connection.closed().await;
    Some(())
}

/// From inside `ns`, connects over QUIC to `addr` asking for `server_name`
/// (sent as SNI unless it is an IP address) and trusting only `ca_pem`,
/// sends "hello" on a new stream and returns the answer. `None` when the
/// handshake (a certificate not for `server_name` included) or the exchange
/// fails or does not finish within `timeout`; never takes much longer.
pub fn quic_fetch(
    ns: &Netns,
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let client_config = client_config(ca_pem);
    let server_name = server_name.to_owned();
    ns.enter(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the QUIC client")
            .block_on(async move {
                let deadline = tokio::time::Instant::from_std(deadline);
                let local: SocketAddr = match addr {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let endpoint = quinn::Endpoint::client(local).ok()?;
                let exchange = say_hello(&endpoint, client_config, addr, &server_name);
                let answer = tokio::time::timeout_at(deadline, exchange).await.ok()??;
                // Lets the close go out, so that the server's side ends now
                // rather than at its idle timeout. The close leaves at once;
                // the rest of the draining period (three probe timeouts,
                // about 90 ms here) only absorbs late packets, and waiting
                // it out would only slow every fetch down.
                endpoint.close(0u32.into(), b"done");
                let grace = deadline.min(tokio::time::Instant::now() + CLOSE_GRACE);
                let _ = tokio::time::timeout_at(grace, endpoint.wait_idle()).await;
                Some(answer)
            })
    })
}

/// The handshake and the one exchange of [`quic_fetch`], without its time limit.
async fn say_hello(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> Option<String> {
    let connection = endpoint
        .connect_with(config, addr, server_name)
        .ok()?
        .await
        .ok()?;
    let (mut send, mut recv) = connection.open_bi().await.ok()?;
    send.write_all(b"hello").await.ok()?;
    send.finish().ok()?;
    let answer = recv.read_to_end(STREAM_READ_LIMIT).await.ok()?;
    connection.close(0u32.into(), b"done");
    String::from_utf8(answer).ok()
}

/// TLS 1.3 with ring trusting only `ca_pem`, the test ALPN, the short idle
/// timeout; no platform verifier or anything else that reaches out.
fn client_config(ca_pem: &str) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots
            .add(certificate.expect("the QUIC server's PEM certificate"))
            .expect("a certificate rustls accepts as a root");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("ring supports TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![TEST_ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).expect("a TLS 1.3 configuration QUIC accepts"),
    ));
    config.transport_config(Arc::new(short_lived_transport()));
    config
}

/// Quinn's defaults but for the idle timeout, on both ends: a connection
/// ends after the shorter of the two ends' timeouts.
fn short_lived_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        IDLE_TIMEOUT.try_into().expect("a valid QUIC idle timeout"),
    ));
    transport
}

/// A thread inside a namespace running [`serve_quic`] on its own runtime
/// until dropped.
struct QuicServerThread {
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QuicServerThread {
    fn start(ns: Arc<Netns>, names: &'static [&'static str]) -> Self {
        let (ca_pem_tx, ca_pem_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            ns.enter(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the QUIC server")
                    .block_on(async move {
                        let _ = ca_pem_tx.send(serve_quic(names).await);
                        // Ends when told to, or when the sender is dropped
                        // by a test that panicked.
                        let _ = stopped.await;
                    })
            })
        });
        let ca_pem = ca_pem_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the QUIC server started");
        QuicServerThread {
            ca_pem,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for QuicServerThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // Not while unwinding: a second panic would abort the test run.
            let ended = thread.join();
            if !std::thread::panicking() {
                ended.expect("the QUIC server's thread");
            }
        }
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 on it; nothing
/// routed anywhere else.
fn two_hosts(tag: &str) -> (Netns, Arc<Netns>) {
    let prefix = format!("isdf-{tag}-{}", std::process::id());
    let client = Netns::create(format!("{prefix}-cli"));
    let server = Arc::new(Netns::create(format!("{prefix}-srv")));
    client.run(
        "ip",
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &server.name,
        ],
    );
    for (ns, v4, v6) in [
        (&client, "192.0.2.1/24", "2001:db8:99::1/64"),
        (&*server, "192.0.2.2/24", "2001:db8:99::2/64"),
    ] {
        ns.run("ip", &["addr", "add", v4, "dev", "eth0"]);
        ns.run("ip", &["addr", "add", v6, "dev", "eth0", "nodad"]);
        ns.run("ip", &["link", "set", "eth0", "up"]);
    }
    // The kernel marks a new link's carrier up up to a second late (link
    // events are batched); until then IPv6 neighbour discovery goes
    // unanswered and the first IPv6 handshake waits for a retransmission.
    let deadline = Instant::now() + Duration::from_secs(5);
    while [&client, &*server]
        .iter()
        .any(|ns| ns.run("cat", &["/sys/class/net/eth0/operstate"]).trim() != "up")
    {
        assert!(Instant::now() < deadline, "the veth pair never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (client, server)
}

#[test]
fn quic_client_and_server_talk_across_namespaces() {
    let (client, server) = two_hosts("quic");
    let quic_server = QuicServerThread::start(server.clone(), &["a.test", "b.test"]);
    let ca = quic_server.ca_pem.as_str();
    let timeout = Duration::from_secs(5);

    for address in ["192.0.2.2", "2001:db8:99::2"] {
        for name in ["a.test", "b.test"] {
            let addr = SocketAddr::new(address.parse().unwrap(), 443);
            assert_eq!(
                quic_fetch(&client, addr, name, ca, timeout).as_deref(),
                Some(format!("site {name}\n").as_str()),
                "QUIC to {name} at {addr}"
            );
        }
    }

    // A name the certificate does not cover: the client refuses the
    // handshake, so an answer really means the name was checked.
    let v4: SocketAddr = "192.0.2.2:443".parse().unwrap();
    assert_eq!(quic_fetch(&client, v4, "c.test", ca, timeout), None);

    // Nothing listens there: no answer, and not later than asked.
    for silent in ["192.0.2.2:444", "[2001:db8:99::2]:444"] {
        let started = Instant::now();
        let short = Duration::from_millis(500);
        let silent: SocketAddr = silent.parse().unwrap();
        assert_eq!(quic_fetch(&client, silent, "a.test", ca, short), None);
        assert!(
            started.elapsed() < short + Duration::from_millis(300),
            "a fetch to {silent} took {:?}",
            started.elapsed()
        );
    }
}
