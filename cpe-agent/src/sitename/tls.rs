//! The server name of a TLS ClientHello (RFC 8446 4.1.2; SNI, RFC 6066 3),
//! from the client's first bytes on a TCP stream (records, possibly one
//! ClientHello over several records and segments) or from a QUIC CRYPTO
//! stream (the handshake message itself).

use super::{normalise, Sighting};

/// The TLS record type of handshake messages.
const HANDSHAKE_RECORD: u8 = 22;
/// The handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
/// Encrypted Client Hello (draft-ietf-tls-esni, the code point browsers
/// send).
const ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
/// The largest ClientHello read across records (a post-quantum key share
/// makes them about 1.8 kB; anything near this is no browser's).
pub const MAX_HELLO: usize = 16 * 1024;

/// The server name from a TCP stream's first bytes (TLS records).
pub fn from_records(stream: &[u8]) -> Sighting {
    // Most ClientHellos fit the first record: read it in place.
    let Some(first) = record(stream) else {
        return match stream.first() {
            Some(&HANDSHAKE_RECORD) | None => Sighting::Incomplete,
            Some(_) => Sighting::Other,
        };
    };
    let first = match first {
        Ok(body) => body,
        Err(()) => return Sighting::Other,
    };
    match from_handshake(first) {
        Sighting::Incomplete => {}
        done => return done,
    }
    // Split over records: join their bodies (bounded) and read again.
    let mut joined = Vec::new();
    let mut rest = stream;
    while let Some(Ok(body)) = record(rest) {
        if joined.len() + body.len() > MAX_HELLO {
            return Sighting::Other;
        }
        joined.extend_from_slice(body);
        rest = &rest[5 + body.len()..];
        match from_handshake(&joined) {
            Sighting::Incomplete => {}
            done => return done,
        }
    }
    match record(rest) {
        Some(Err(())) => Sighting::Other,
        _ => Sighting::Incomplete,
    }
}

/// One whole handshake record at the start of `bytes`: its body; None when
/// it is not all there yet; Err when it is no TLS handshake record.
fn record(bytes: &[u8]) -> Option<Result<&[u8], ()>> {
    if bytes.len() < 5 {
        return None;
    }
    if bytes[0] != HANDSHAKE_RECORD || bytes[1] != 3 || bytes[2] > 4 {
        return Some(Err(()));
    }
    let length = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if length == 0 || length > (1 << 14) + 2048 {
        return Some(Err(()));
    }
    bytes.get(5..5 + length).map(Ok)
}

/// The server name from handshake messages starting with a ClientHello;
/// [`Sighting::Incomplete`] until all of it is there (an ECH extension may
/// follow the name).
pub fn from_handshake(handshake: &[u8]) -> Sighting {
    let mut r = Reader(handshake);
    match r.u8() {
        Some(CLIENT_HELLO) => {}
        Some(_) => return Sighting::Other,
        None => return Sighting::Incomplete,
    }
    let Some(length) = r.u24() else {
        return Sighting::Incomplete;
    };
    if length > MAX_HELLO {
        return Sighting::Other;
    }
    let Some(body) = r.take(length) else {
        return Sighting::Incomplete;
    };
    hello(body).unwrap_or(Sighting::Other)
}

/// A whole ClientHello's body: None when it is malformed.
fn hello(body: &[u8]) -> Option<Sighting> {
    let mut r = Reader(body);
    // legacy_version, random, session id, cipher suites, compression.
    r.skip(2 + 32)?;
    r.vec8()?;
    r.vec16()?;
    r.vec8()?;
    if r.0.is_empty() {
        return Some(Sighting::Nameless { ech: false });
    }
    let mut extensions = Reader(r.vec16()?);
    if !r.0.is_empty() {
        return None;
    }
    let mut name = None;
    let mut ech = false;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        match kind {
            // Two names: no server would know which; neither do we.
            SERVER_NAME if name.is_some() => return None,
            SERVER_NAME => name = Some(server_name(data)?),
            ENCRYPTED_CLIENT_HELLO => ech = true,
            _ => {}
        }
    }
    Some(match name {
        Some(name) => Sighting::Name { name, ech },
        None => Sighting::Nameless { ech },
    })
}

/// The host name of a `server_name` extension's body.
fn server_name(body: &[u8]) -> Option<String> {
    let mut list = Reader(Reader(body).vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            return normalise(name);
        }
    }
    None
}

/// Reads big-endian fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(drop)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sitename::samples::{client_hello, records, sni};

    fn named(name: &str, ech: bool) -> Sighting {
        Sighting::Name {
            name: name.into(),
            ech,
        }
    }

    #[test]
    fn the_server_name_is_read_wherever_the_extension_is() {
        let padding = (21u16, vec![0u8; 300]);
        let key_share = (51u16, vec![1u8; 1200]);
        for extensions in [
            vec![sni("Video.Example.com")],
            vec![
                key_share.clone(),
                padding.clone(),
                sni("video.example.com."),
            ],
            vec![padding, sni("video.example.com"), key_share],
        ] {
            let hello = client_hello(&extensions);
            assert_eq!(from_handshake(&hello), named("video.example.com", false));
            assert_eq!(
                from_records(&records(&hello, 16_384)),
                named("video.example.com", false)
            );
            // One ClientHello over many records, as some clients split it.
            assert_eq!(
                from_records(&records(&hello, 100)),
                named("video.example.com", false)
            );
        }
    }

    #[test]
    fn a_cut_hello_asks_for_more_and_every_prefix_is_safe() {
        let hello = records(
            &client_hello(&[(51, vec![1; 600]), sni("a.example")]),
            16_384,
        );
        for cut in 0..hello.len() {
            let seen = from_records(&hello[..cut]);
            assert_eq!(seen, Sighting::Incomplete, "cut at {cut}");
        }
        assert_eq!(from_records(&hello), named("a.example", false));
        let split = records(&client_hello(&[(51, vec![1; 600]), sni("a.example")]), 50);
        for cut in 0..split.len() {
            assert_eq!(
                from_records(&split[..cut]),
                Sighting::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn no_name_ech_and_other_protocols_say_so() {
        let none = client_hello(&[(43, vec![2, 3, 4])]);
        assert_eq!(from_handshake(&none), Sighting::Nameless { ech: false });
        let ech = client_hello(&[
            sni("public.example"),
            (ENCRYPTED_CLIENT_HELLO, vec![0; 200]),
        ]);
        assert_eq!(from_handshake(&ech), named("public.example", true));
        assert_eq!(from_records(b"GET / HTTP/1.1\r\n"), Sighting::Other);
        assert_eq!(from_records(b"\x17\x03\x03\x00\x10"), Sighting::Other);
        // A ServerHello is no ClientHello.
        assert_eq!(from_handshake(&[2, 0, 0, 4, 3, 3, 0, 0]), Sighting::Other);
        // A name that is no DNS name: not a name to gate by.
        let bad = client_hello(&[sni("a b")]);
        assert_eq!(from_handshake(&bad), Sighting::Other);
    }

    #[test]
    fn lengths_that_lie_are_refused_not_followed() {
        let mut hello = client_hello(&[sni("a.example")]);
        // The extensions' length says more than the message holds.
        let at = hello.len() - sni("a.example").1.len() - 4 - 2;
        hello[at] = 0xff;
        assert_eq!(from_handshake(&hello), Sighting::Other);
        // A record claiming 64 kB.
        assert_eq!(from_records(&[22, 3, 1, 0xff, 0xff, 1]), Sighting::Other);
    }
}
