//! One question to the router's own resolver: the addresses of a name.
//! The name reader asks it when a flow names one site but goes to an
//! address known to be a gated site's (`inspect.rs`): a site reached by
//! its own name resolves there (a CDN both use), a name put in front of a
//! gated site's address to get past the gate (domain fronting) does not.
//!
//! The message codec is pure and bounded (`query`, `answers`); `resolve`
//! sends one UDP query and waits for its answer, at most `timeout`. Small
//! on purpose: one record type, no recursion of our own, no cache (the
//! caller keeps one; the resolver has its own).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const TYPE_A: u16 = 1;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// The record a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    A,
    Aaaa,
    Txt,
}

impl Record {
    fn code(self) -> u16 {
        match self {
            Record::A => TYPE_A,
            Record::Aaaa => TYPE_AAAA,
            Record::Txt => TYPE_TXT,
        }
    }
}

/// A query id: the clock's nanoseconds are unpredictable enough for a
/// question asked of the router's own resolver over loopback.
pub fn query_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos >> 8) as u16
}
/// The largest answer read (EDNS is not offered: 512 bytes is the limit a
/// resolver keeps to, truncating beyond).
const MAX_MESSAGE: usize = 512;

/// A query for `name`'s `record`, recursion desired, with `id`. None for a
/// name no DNS message can carry.
pub fn query(id: u16, name: &str, record: Record) -> Option<Vec<u8>> {
    let mut message = Vec::with_capacity(18 + name.len());
    message.extend(id.to_be_bytes());
    message.extend([0x01, 0x00]); // RD
    message.extend([0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        message.push(label.len() as u8);
        message.extend_from_slice(label.as_bytes());
    }
    message.push(0);
    if message.len() > 12 + 255 {
        return None;
    }
    message.extend(record.code().to_be_bytes());
    message.extend(CLASS_IN.to_be_bytes());
    Some(message)
}

/// The addresses in the answer section of `message`, the answer to query
/// `id`; None for anything else (another id, not an answer, malformed).
/// Records of other types (the CNAMEs on the way) are skipped.
pub fn answers(message: &[u8], id: u16) -> Option<Vec<IpAddr>> {
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(
            message.get(at..at + 2)?.try_into().ok()?,
        ))
    };
    if be16(0)? != id || message.get(2)? & 0x80 == 0 {
        return None;
    }
    let (questions, records) = (be16(4)?, be16(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    let mut found = Vec::new();
    for _ in 0..records {
        at = skip_name(message, at)?;
        let (kind, class, length) = (be16(at)?, be16(at + 2)?, usize::from(be16(at + 8)?));
        let data = message.get(at + 10..at + 10 + length)?;
        at += 10 + length;
        if class != CLASS_IN {
            continue;
        }
        match (kind, data.len()) {
            (TYPE_A, 4) => found.push(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?).into()),
            (TYPE_AAAA, 16) => found.push(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?).into()),
            _ => {}
        }
    }
    Some(found)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    // Each label takes at least one byte: a bounded walk.
    for _ in 0..128 {
        let length = *message.get(at)?;
        match length {
            0 => return Some(at + 1),
            // A pointer ends the name where it stands.
            l if l & 0xc0 == 0xc0 => return message.get(at + 1).map(|_| at + 2),
            l if l & 0xc0 != 0 => return None,
            l => at += 1 + usize::from(l),
        }
    }
    None
}

/// Asks `server` for `name`'s addresses of one family, waiting at most
/// `timeout` for the answer.
pub fn resolve(
    server: SocketAddr,
    name: &str,
    ipv6: bool,
    timeout: Duration,
) -> anyhow::Result<Vec<IpAddr>> {
    let id = query_id();
    let record = if ipv6 { Record::Aaaa } else { Record::A };
    let question = query(id, name, record).context("a name no DNS query can carry")?;
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).context("a socket for a DNS query")?;
    socket.connect(server).context("reaching the resolver")?;
    socket.send(&question).context("sending a DNS query")?;
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; MAX_MESSAGE];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer from {server} within {timeout:?}");
        }
        socket.set_read_timeout(Some(left))?;
        let received = socket
            .recv(&mut buffer)
            .with_context(|| format!("waiting for {server}'s answer"))?;
        // Anything else on this socket (a late answer to nothing) is skipped.
        if let Some(found) = answers(&buffer[..received], id) {
            return Ok(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `query` with a CNAME and then the records `data`
    /// (type, bytes), names compressed as resolvers do.
    fn answer(query: &[u8], records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2] |= 0x80;
        m[7] = 1 + records.len() as u8;
        // CNAME pointing the question's name (offset 12) at "cdn" + that name.
        m.extend([
            0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6, 3, b'c', b'd', b'n', 0xc0, 12,
        ]);
        for (kind, data) in records {
            m.extend([0xc0, 12]);
            m.extend(kind.to_be_bytes());
            m.extend([0, 1, 0, 0, 0, 60]);
            m.extend((data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn a_query_and_its_answers() {
        let q = query(0x1234, "shop.test.", Record::A).unwrap();
        assert_eq!(&q[12..23], b"\x04shop\x04test\x00");
        assert_eq!(&q[23..], [0, 1, 0, 1]);
        let a = answer(
            &q,
            &[(TYPE_A, &[198, 51, 100, 20]), (TYPE_A, &[198, 51, 100, 21])],
        );
        assert_eq!(
            answers(&a, 0x1234).unwrap(),
            [
                "198.51.100.20".parse::<IpAddr>().unwrap(),
                "198.51.100.21".parse().unwrap()
            ]
        );
        let six = [0x20, 1, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20];
        let q6 = query(7, "shop.test", Record::Aaaa).unwrap();
        let a6 = answer(&q6, &[(TYPE_AAAA, &six)]);
        assert_eq!(
            answers(&a6, 7).unwrap(),
            ["2001:db8:2::20".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn what_is_not_our_answer_is_refused() {
        let q = query(9, "shop.test", Record::A).unwrap();
        assert_eq!(answers(&q, 9), None, "a query is no answer");
        let a = answer(&q, &[(TYPE_A, &[1, 2, 3, 4])]);
        assert_eq!(answers(&a, 10), None, "another id");
        for cut in 0..a.len() {
            assert_eq!(answers(&a[..cut], 9), None, "cut at {cut}");
        }
        assert_eq!(query(1, "a..b", Record::A), None);
        assert_eq!(query(1, &"a".repeat(64), Record::A), None);
        assert_eq!(query(1, &["a"; 200].join("."), Record::Txt), None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = answers(&bytes, 0);
        }
    }
}
