//! The host of an HTTP/1.x request (RFC 9112 3.2): the request target's
//! host when the target is in absolute form (a server takes that one over
//! `Host`), else the `Host` header's, without its port.

use super::{normalise, Sighting};

/// Request methods a browser or HTTP client starts a request with.
const METHODS: &[&[u8]] = &[
    b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];
/// The longest request head read: the host is in it or the request is
/// refused as nameless.
pub const MAX_HEAD: usize = 8 * 1024;

/// The host from a TCP stream's first bytes.
pub fn host(stream: &[u8]) -> Sighting {
    let stream = &stream[..stream.len().min(MAX_HEAD)];
    let Some(space) = stream.iter().position(|&b| b == b' ') else {
        return if stream.len() < 8 && METHODS.iter().any(|m| m.starts_with(stream)) {
            Sighting::Incomplete
        } else {
            Sighting::Other
        };
    };
    if !METHODS.contains(&&stream[..space]) {
        return Sighting::Other;
    }
    let Some(line_end) = find(stream, b"\r\n") else {
        return incomplete_unless_full(stream);
    };
    let line = &stream[space + 1..line_end];
    let target = line.split(|&b| b == b' ').next().unwrap_or_default();
    if let Some(authority) = absolute_authority(target) {
        return named(authority);
    }
    let mut rest = &stream[line_end + 2..];
    loop {
        let Some(end) = find(rest, b"\r\n") else {
            return incomplete_unless_full(stream);
        };
        let header = &rest[..end];
        if header.is_empty() {
            return Sighting::Nameless { ech: false };
        }
        if let Some(colon) = header.iter().position(|&b| b == b':') {
            if header[..colon].eq_ignore_ascii_case(b"host") {
                return named(trim(&header[colon + 1..]));
            }
        }
        rest = &rest[end + 2..];
    }
}

/// A head that does not end within [`MAX_HEAD`] is refused as nameless:
/// no server reads one that long either.
fn incomplete_unless_full(stream: &[u8]) -> Sighting {
    if stream.len() >= MAX_HEAD {
        Sighting::Nameless { ech: false }
    } else {
        Sighting::Incomplete
    }
}

/// The authority of an absolute-form target (`http://host:port/path`).
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let scheme_end = find(target, b"://")?;
    let scheme = &target[..scheme_end];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // Userinfo (`user@host`) is not the host.
    Some(match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    })
}

/// A `host[:port]` as a sighting: the name without its port; an address
/// literal or anything else is no name.
fn named(authority: &[u8]) -> Sighting {
    if authority.starts_with(b"[") {
        // An IPv6 literal: no name to gate by.
        return Sighting::Nameless { ech: false };
    }
    let host = match authority.iter().rposition(|&b| b == b':') {
        Some(colon) if authority[colon + 1..].iter().all(u8::is_ascii_digit) => &authority[..colon],
        Some(_) => return Sighting::Other,
        None => authority,
    };
    match normalise(host) {
        Some(name) if name.parse::<std::net::Ipv4Addr>().is_ok() => {
            Sighting::Nameless { ech: false }
        }
        Some(name) => Sighting::Name { name, ech: false },
        None => Sighting::Other,
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Sighting {
        Sighting::Name {
            name: name.into(),
            ech: false,
        }
    }

    #[test]
    fn the_host_is_read_as_a_server_reads_it() {
        let cases: &[(&[u8], Sighting)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: Video.Example.com\r\n\r\n",
                named("video.example.com"),
            ),
            (
                b"GET /x HTTP/1.1\r\nAccept: */*\r\nhOsT:\t video.example.com:8080 \r\n\r\n",
                named("video.example.com"),
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: video.example.com.\r\nContent-Length: 3\r\n\r\nabc",
                named("video.example.com"),
            ),
            // Absolute form wins over the header.
            (
                b"GET http://video.example.com/a HTTP/1.1\r\nHost: free.example\r\n\r\n",
                named("video.example.com"),
            ),
            (
                b"GET http://user@video.example.com:80?q HTTP/1.1\r\n\r\n",
                named("video.example.com"),
            ),
            (
                b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n",
                Sighting::Nameless { ech: false },
            ),
            (
                b"GET / HTTP/1.1\r\nHost: 203.0.113.7\r\n\r\n",
                Sighting::Nameless { ech: false },
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [2001:db8::7]:80\r\n\r\n",
                Sighting::Nameless { ech: false },
            ),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Sighting::Other),
            (b"\x16\x03\x01\x02\x00", Sighting::Other),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Sighting::Other),
        ];
        for (request, expected) in cases {
            assert_eq!(
                &host(request),
                expected,
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn a_cut_request_asks_for_more_and_an_endless_head_is_nameless() {
        let request =
            b"GET /index.html HTTP/1.1\r\nUser-Agent: x\r\nHost: video.example.com\r\n\r\n";
        let host_end = find(request, b"com\r\n").unwrap() + 3;
        for cut in 0..request.len() {
            let expected = if cut >= host_end + 2 {
                named("video.example.com")
            } else {
                Sighting::Incomplete
            };
            assert_eq!(host(&request[..cut]), expected, "cut at {cut}");
        }
        let mut endless = b"GET / HTTP/1.1\r\nX: ".to_vec();
        endless.resize(MAX_HEAD + 100, b'a');
        assert_eq!(host(&endless), Sighting::Nameless { ech: false });
    }
}
