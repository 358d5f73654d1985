//! What clients send, built for the tests, the benchmark
//! (`benches/sitename.rs`) and the fuzz targets' seeds: TLS ClientHellos
//! with the extensions asked for, in records of a chosen size, and the IP
//! packets that carry them. Not used by the agent itself (the release
//! build leaves it out).

/// A ClientHello handshake message with these extensions, in order.
pub fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7u8; 32]); // random
    body.push(32);
    body.extend([9u8; 32]); // session id
    body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]); // two cipher suites
    body.extend([1, 0]); // null compression
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend(kind.to_be_bytes());
        ext.extend((data.len() as u16).to_be_bytes());
        ext.extend(data);
    }
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut message = vec![1];
    message.extend(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend(body);
    message
}

/// A `server_name` extension naming `name`.
pub fn sni(name: &str) -> (u16, Vec<u8>) {
    let mut entry = vec![0];
    entry.extend((name.len() as u16).to_be_bytes());
    entry.extend(name.as_bytes());
    let mut list = (entry.len() as u16).to_be_bytes().to_vec();
    list.extend(entry);
    (0, list)
}

/// A ClientHello as today's browsers send one: a post-quantum key share
/// (1,216 bytes), the usual extensions around the server name, padding.
pub fn browser_hello(name: &str) -> Vec<u8> {
    client_hello(&[
        (0x000a, vec![0, 6, 0x11, 0xec, 0, 0x1d, 0, 0x17]), // groups
        (0x0010, b"\x00\x0c\x02h2\x08http/1.1".to_vec()),   // ALPN
        sni(name),
        (0x002b, vec![4, 3, 4, 3, 3]), // versions
        (0x0033, vec![1; 1216 + 38]),  // key share
        (0x000d, vec![0, 4, 4, 3, 8, 4]),
        (0x0015, vec![0; 200]), // padding
    ])
}

/// `message` in TLS handshake records of at most `size` bytes each.
pub fn records(message: &[u8], size: usize) -> Vec<u8> {
    message
        .chunks(size)
        .flat_map(|chunk| {
            let mut record = vec![22, 3, 1];
            record.extend((chunk.len() as u16).to_be_bytes());
            record.extend(chunk);
            record
        })
        .collect()
}

/// RFC 9001 appendix A.2: the client Initial packet (1,200 bytes) whose
/// ClientHello names `example.com`, protected as the RFC gives it.
pub fn rfc9001_client_initial() -> Vec<u8> {
    unhex(include_str!("testdata/rfc9001-a2-client-initial.hex"))
}

/// Bytes from hex digits (whitespace around them ignored).
pub fn unhex(text: &str) -> Vec<u8> {
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// An IPv4 TCP segment (ACK|PSH) from the LAN host 192.168.1.10:40000 to
/// 198.51.100.7:`port`, its first payload byte numbered `seq`.
pub fn ipv4_tcp(port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    p.extend([192, 168, 1, 10, 198, 51, 100, 7]);
    p.extend(40000u16.to_be_bytes());
    p.extend(port.to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend([0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

/// An IPv6 UDP datagram from [fd00::10]:40000 to [2001:db8::7]:443.
pub fn ipv6_udp(payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() + 8) as u16;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend(length.to_be_bytes());
    p.extend([17, 64]);
    p.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
    p.extend([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    p.extend(40000u16.to_be_bytes());
    p.extend(443u16.to_be_bytes());
    p.extend(length.to_be_bytes());
    p.extend([0, 0]);
    p.extend_from_slice(payload);
    p
}
