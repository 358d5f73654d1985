//! Just enough bencode (BEP 3) to recognise DHT messages and read peer lists
//! from tracker and DHT answers, without allocating: values borrow the packet.

/// Nesting allowed before a value is called malformed; real messages use 3.
const MAX_DEPTH: u8 = 16;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Items<'a>),
    Dict(Items<'a>),
}

/// The encoded items of a list or dictionary, after its `l` or `d`.
/// Iteration stops at the closing `e`, the end of the buffer or the first
/// malformed item, so a truncated answer still yields its complete items.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Items<'a>(&'a [u8]);

impl<'a> Value<'a> {
    pub fn bytes(self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(bytes) => Some(bytes),
            _ => None,
        }
    }

    pub fn dict(self) -> Option<Items<'a>> {
        match self {
            Value::Dict(items) => Some(items),
            _ => None,
        }
    }

    pub fn list(self) -> Option<Items<'a>> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }
}

impl<'a> Items<'a> {
    pub fn values(self) -> impl Iterator<Item = Value<'a>> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let (value, length) = parse(rest)?;
            rest = &rest[length..];
            Some(value)
        })
    }

    /// Key and value pairs of a dictionary; ends at the first non-string key.
    pub fn entries(self) -> impl Iterator<Item = (&'a [u8], Value<'a>)> {
        let mut values = self.values();
        std::iter::from_fn(move || Some((values.next()?.bytes()?, values.next()?)))
    }

    pub fn get(self, key: &[u8]) -> Option<Value<'a>> {
        self.entries()
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value)
    }
}

/// The first value of `buf` and how many bytes encode it.
pub fn parse(buf: &[u8]) -> Option<(Value<'_>, usize)> {
    let end = skip(buf, 0, MAX_DEPTH)?;
    let value = match buf[0] {
        b'i' => Value::Int(std::str::from_utf8(&buf[1..end - 1]).ok()?.parse().ok()?),
        b'l' => Value::List(Items(&buf[1..end - 1])),
        b'd' => Value::Dict(Items(&buf[1..end - 1])),
        _ => Value::Bytes(&buf[buf.iter().position(|&b| b == b':')? + 1..end]),
    };
    Some((value, end))
}

/// A dictionary at the start of `buf` that may be cut short, as the first
/// segment of a long tracker answer is.
pub fn dict_prefix(buf: &[u8]) -> Option<Items<'_>> {
    (buf.first() == Some(&b'd')).then(|| Items(&buf[1..]))
}

/// The position just after the value starting at `at`, if it is well formed.
fn skip(buf: &[u8], at: usize, depth: u8) -> Option<usize> {
    match *buf.get(at)? {
        b'i' => {
            let end = at
                + 1
                + buf
                    .get(at + 1..)?
                    .iter()
                    .take(21)
                    .position(|&b| b == b'e')?;
            let digits = buf[at + 1..end]
                .strip_prefix(b"-")
                .unwrap_or(&buf[at + 1..end]);
            let ok = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
            ok.then_some(end + 1)
        }
        b'0'..=b'9' => {
            let colon = at + buf[at..].iter().take(8).position(|&b| b == b':')?;
            let digits = &buf[at..colon];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let length = digits.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0'));
            let end = colon + 1 + length;
            (end <= buf.len()).then_some(end)
        }
        open @ (b'l' | b'd') if depth > 0 => {
            let mut at = at + 1;
            loop {
                if *buf.get(at)? == b'e' {
                    return Some(at + 1);
                }
                if open == b'd' {
                    if !buf[at].is_ascii_digit() {
                        return None;
                    }
                    at = skip(buf, at, depth - 1)?;
                }
                at = skip(buf, at, depth - 1)?;
            }
        }
        _ => None,
    }
}
