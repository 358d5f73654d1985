//! The classifier's bencode reader (BEP 3), which reads DHT messages and
//! tracker answers straight from packets: `parse` on a whole message and
//! `dict_prefix` on a tracker answer's first segment. A parsed value ends
//! within the input and, written out again canonically, parses back to a
//! value with the same canonical form (a fixed point).
#![no_main]

use isdf_agent::classify::fuzzing::{dict_prefix, parse, Value};
use libfuzzer_sys::fuzz_target;

/// The canonical encoding of `value`: what a client writes (the reader
/// also takes leading zeros and `-0` in integers).
fn encode(value: Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Int(n) => out.extend(format!("i{n}e").bytes()),
        Value::Bytes(bytes) => {
            out.extend(format!("{}:", bytes.len()).bytes());
            out.extend(bytes);
        }
        Value::List(items) => {
            out.push(b'l');
            items.values().for_each(|item| encode(item, out));
            out.push(b'e');
        }
        Value::Dict(items) => {
            out.push(b'd');
            for (key, item) in items.entries() {
                encode(Value::Bytes(key), out);
                encode(item, out);
            }
            out.push(b'e');
        }
    }
}

fn canonical(value: Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(value, &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    if let Some((value, length)) = parse(data) {
        assert!(
            (1..=data.len()).contains(&length),
            "a value of {length} bytes in {}",
            data.len()
        );
        let written = canonical(value);
        let (again, again_length) = parse(&written)
            .unwrap_or_else(|| panic!("{value:?} written as {written:?} does not parse"));
        assert_eq!(again_length, written.len());
        assert_eq!(
            canonical(again),
            written,
            "the canonical form is not a fixed point"
        );
    }
    if let Some(items) = dict_prefix(data) {
        // A cut-short answer yields its complete entries and stops.
        let read: usize = items.entries().map(|(key, _)| key.len()).sum();
        assert!(read <= data.len());
    }
});
