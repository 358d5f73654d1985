//! The router's answer to HTTP requests a `redirect` rule sends to it: a
//! `302 Found` to the portal URL of the site the request's Host names
//! (`PortalRedirect::url_for`), on `[::]:port`.
//!
//! The URLs come from the signed config, never from the request: a LAN host
//! can only choose which of them it gets. The responder is small on purpose
//! (no HTTP library): it reads one request head, bounded in size and time,
//! answers (a `400` for anything malformed) and closes; connections are
//! bounded in number. The listener is re-bound only when the port changes.
//!
//! It runs on threads of its own rather than on the agent's runtime: it
//! keeps answering while the loop waits for a dnsmasq, and it stops at
//! once (the port is free when `set` returns), which a rollback to the
//! previous port needs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use isdf_api::PortalRedirect;

/// Largest request head read; a longer one gets a 400.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A client must send its request head within this, and take the answer
/// within this again.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 32;
/// A connection's thread needs little: buffers are on the heap.
const THREAD_STACK: usize = 64 * 1024;

/// The responder: running while the config has a portal.
#[derive(Default)]
pub struct PortalResponder {
    running: Option<Running>,
}

struct Running {
    /// The port the config asked for.
    port: u16,
    local: SocketAddr,
    urls: Arc<Mutex<Arc<PortalRedirect>>>,
    /// The listening socket again: shutting it down wakes the accepting
    /// thread, which then ends (Linux fails a pending accept with EINVAL).
    wake: TcpStream,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    fn stop(self) {
        let _ = self.wake.shutdown(Shutdown::Both);
        let _ = self.thread.join();
        tracing::info!(port = self.port, "portal redirect stopped");
    }
}

impl PortalResponder {
    /// Serves `portal` (None: stops). The same port keeps its listener and
    /// takes the new URLs; another port is bound before the old one is
    /// closed, so a failure leaves the responder as it was.
    pub fn set(&mut self, portal: Option<&PortalRedirect>) -> anyhow::Result<()> {
        let Some(portal) = portal else {
            if let Some(old) = self.running.take() {
                old.stop();
            }
            return Ok(());
        };
        if let Some(running) = self.running.as_ref().filter(|r| r.port == portal.port) {
            *running.urls.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(portal.clone());
            return Ok(());
        }
        let listener = bind(portal.port)?;
        let local = listener.local_addr()?;
        let wake = TcpStream::from(std::os::fd::OwnedFd::from(listener.try_clone()?));
        let urls = Arc::new(Mutex::new(Arc::new(portal.clone())));
        let shared = urls.clone();
        let thread = std::thread::Builder::new()
            .name("portal".into())
            .stack_size(THREAD_STACK)
            .spawn(move || serve(&listener, &shared))
            .context("starting the portal redirect")?;
        tracing::info!(%local, "portal redirect listening");
        let running = Running {
            port: portal.port,
            local,
            urls,
            wake,
            thread,
        };
        if let Some(old) = self.running.replace(running) {
            old.stop();
        }
        Ok(())
    }

    /// Where it listens, while it runs.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().map(|r| r.local)
    }
}

impl Drop for PortalResponder {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }
}

/// Binds `[::]:port`, which takes IPv4 too (Linux's default), or
/// `0.0.0.0:port` on a router without IPv6.
fn bind(port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => Err(e),
            _ => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)),
        })
        .with_context(|| format!("listening on port {port} for the portal redirect"))
}

/// Accepts until the listener is shut down.
fn serve(listener: &TcpListener, urls: &Mutex<Arc<PortalRedirect>>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return,
            Err(e) => {
                // Out of descriptors, say: pause rather than spin.
                tracing::warn!(error = %e, "portal redirect accept");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let portal = urls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let done = active.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || {
                serve_one(stream, &portal);
                done.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn serve_one(mut stream: TcpStream, portal: &PortalRedirect) {
    let mut head = Vec::with_capacity(1024);
    let response = match read_head(&mut stream, &mut head) {
        Ok(true) => answer(&head, portal),
        Ok(false) => bad_request(),
        // Too slow, or gone: nobody to answer.
        Err(_) => return,
    };
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    if stream.write_all(&response).is_ok() {
        // Read what the client still sends (a body) before closing, so
        // the close does not reset the connection under the answer.
        let _ = stream.shutdown(Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = std::io::copy(&mut (&stream).take(64 * 1024), &mut std::io::sink());
    }
}

/// Reads until the empty line ending the head and keeps the head, within
/// `IO_TIMEOUT`; false when the head is longer than `MAX_HEAD_BYTES` or the
/// client stopped sending first.
fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> std::io::Result<bool> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            // A body may follow; only the head is answered.
            head.truncate(from + at + 4);
            return Ok(true);
        }
        if head.len() >= MAX_HEAD_BYTES {
            return Ok(false);
        }
    }
}

/// The answer to one request head (up to and with its empty line): a
/// redirect, or a 400 for anything that is not a well-formed HTTP/1.x head.
pub fn answer(head: &[u8], portal: &PortalRedirect) -> Vec<u8> {
    match parse_head(head) {
        Some((method, host)) => {
            let url = portal.url_for(host.unwrap_or(""));
            let escaped = isdf_api::dns::escape_html(url);
            let body = format!(
                "<!DOCTYPE html><title>Redirect</title><a href=\"{escaped}\">{escaped}</a>\n"
            );
            response("302 Found", Some(url), &body, method == "HEAD")
        }
        None => bad_request(),
    }
}

/// A `302 Found` to `url` with no body, small enough for one TCP segment:
/// what the packet path sends for a request it cannot let through
/// (`inspect.rs`), where the request's method is not known.
pub fn redirect(url: &str) -> Vec<u8> {
    response("302 Found", Some(url), "", false)
}

fn bad_request() -> Vec<u8> {
    response(
        "400 Bad Request",
        None,
        "<!DOCTYPE html><title>Bad request</title>Bad request\n",
        false,
    )
}

/// The method and the Host header (None: an HTTP/1.0 request without one).
fn parse_head(head: &[u8]) -> Option<(&str, Option<&str>)> {
    let head = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, target, version) = (
        request_line.next()?,
        request_line.next()?,
        request_line.next()?,
    );
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if request_line.next().is_some()
        || !token(method)
        || target.is_empty()
        || !printable(target)
        || !matches!(version, "HTTP/1.1" | "HTTP/1.0")
    {
        return None;
    }
    let mut host = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim_matches([' ', '\t']);
        if !token(name)
            || !value
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
        {
            return None;
        }
        if name.eq_ignore_ascii_case("host") {
            // Two Hosts, or one that is empty or not a plain name: refused
            // rather than guessed (RFC 9112, 3.2).
            if host.is_some() || value.is_empty() || !printable(value) {
                return None;
            }
            host = Some(value);
        }
    }
    if host.is_none() && version == "HTTP/1.1" {
        return None;
    }
    Some((method, host))
}

fn response(status: &str, location: Option<&str>, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    if let Some(url) = location {
        // A checked URL (printable ASCII, no spaces): it cannot end the header.
        out.push_str(&format!("Location: {url}\r\n"));
    }
    out.push_str(&format!(
        "Cache-Control: no-store\r\nConnection: close\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portal(port: u16, site_url: &str) -> PortalRedirect {
        serde_json::from_value(serde_json::json!({
            "port": port,
            "default_url": "https://portal.isp.test/?a=1&b=2",
            "sites": [{"domains": ["video.test"], "url": site_url}]
        }))
        .unwrap()
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_request_for_a_gated_site_is_sent_to_its_page() {
        let p = portal(8042, "https://portal.isp.test/site/video");
        let got = text(answer(
            b"GET /watch?v=1 HTTP/1.1\r\nUser-Agent: x\r\nhost: www.video.test:80\r\n\r\n",
            &p,
        ));
        let body = "<!DOCTYPE html><title>Redirect</title><a href=\"https://portal.isp.test/site/video\">https://portal.isp.test/site/video</a>\n";
        assert_eq!(
            got,
            format!(
                "HTTP/1.1 302 Found\r\nLocation: https://portal.isp.test/site/video\r\n\
                 Cache-Control: no-store\r\nConnection: close\r\n\
                 Content-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        );
    }

    #[test]
    fn other_hosts_get_the_default_page_and_head_gets_no_body() {
        let p = portal(8042, "https://portal.isp.test/site/video");
        let got = text(answer(b"HEAD / HTTP/1.1\r\nHost: other.test\r\n\r\n", &p));
        assert!(
            got.starts_with("HTTP/1.1 302 Found\r\nLocation: https://portal.isp.test/?a=1&b=2\r\n")
        );
        assert!(got.ends_with("\r\n\r\n"), "{got}");
        let got = text(answer(b"GET / HTTP/1.0\r\n\r\n", &p));
        assert!(
            got.contains("Location: https://portal.isp.test/?a=1&b=2\r\n"),
            "{got}"
        );
        assert!(
            got.contains("href=\"https://portal.isp.test/?a=1&amp;b=2\""),
            "{got}"
        );
    }

    #[test]
    fn malformed_heads_get_a_400() {
        let p = portal(8042, "https://portal.isp.test/v");
        for head in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/2\r\nHost: a\r\n\r\n",
            b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert!(
                text(answer(head, &p)).starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_get_a_redirect_or_a_400(head in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let got = answer(&head, &portal(8042, "https://p.test/v"));
            proptest::prop_assert!(got.starts_with(b"HTTP/1.1 302 Found\r\nLocation: https://p.test/")
                || got.starts_with(b"HTTP/1.1 400 "));
        }
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request).unwrap();
        let mut got = String::new();
        stream.read_to_string(&mut got).unwrap();
        got
    }

    #[test]
    fn the_responder_answers_on_loopback_and_follows_the_config() {
        let mut responder = PortalResponder::default();
        // Port 0 (which a config cannot hold): whatever is free.
        responder
            .set(Some(&portal(0, "https://p.test/one")))
            .unwrap();
        let port = responder.local_addr().unwrap().port();
        let request = b"GET / HTTP/1.1\r\nHost: video.test\r\n\r\n";
        for addr in [
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ] {
            let got = exchange(addr, request);
            assert!(
                got.contains("\r\nLocation: https://p.test/one\r\n"),
                "{addr}: {got}"
            );
        }
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

        // Sent in pieces, with a body after the head.
        let mut stream = TcpStream::connect(v4).unwrap();
        stream.write_all(b"POST /x HTTP/1.1\r\nHo").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        stream
            .write_all(b"st: video.test\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap();
        let mut got = String::new();
        stream.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 302 Found\r\n"), "{got}");

        let long = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let got = exchange(v4, long.as_bytes());
        assert!(got.starts_with("HTTP/1.1 400 "), "{got}");

        // New URLs on the same port: same listener, new answer.
        responder
            .set(Some(&portal(0, "https://p.test/two")))
            .unwrap();
        assert_eq!(responder.local_addr().unwrap().port(), port);
        let got = exchange(v4, request);
        assert!(
            got.contains("\r\nLocation: https://p.test/two\r\n"),
            "{got}"
        );

        // Stopped: the port is free as soon as `set` returns.
        responder.set(None).unwrap();
        assert_eq!(responder.local_addr(), None);
        assert!(TcpStream::connect(v4).is_err(), "closed");
    }

    #[test]
    fn a_port_in_use_is_an_error_and_the_old_listener_stays() {
        // Listening on loopback only: the responder's [::] on that port is refused.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut responder = PortalResponder::default();
        responder
            .set(Some(&portal(0, "https://p.test/one")))
            .unwrap();
        let before = responder.local_addr();
        let e = responder
            .set(Some(&portal(taken_port, "https://p.test/two")))
            .unwrap_err();
        assert!(
            format!("{e:#}").contains(&format!("port {taken_port}")),
            "{e:#}"
        );
        assert_eq!(responder.local_addr(), before);
        let got = exchange(
            before.unwrap(),
            b"GET / HTTP/1.0\r\nHost: video.test\r\n\r\n",
        );
        assert!(got.contains("https://p.test/one"), "{got}");

        // Another port, then back: each old listener is closed on return.
        drop(taken);
        responder
            .set(Some(&portal(taken_port, "https://p.test/two")))
            .unwrap();
        responder
            .set(Some(&portal(0, "https://p.test/one")))
            .unwrap();
        responder
            .set(Some(&portal(taken_port, "https://p.test/two")))
            .unwrap();
        assert_eq!(responder.local_addr().unwrap().port(), taken_port);
    }
}
