//! Properties checked on every document a side accepts, and the split of
//! one input into several documents.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// `value` written as JSON and read back is `value`: what one side writes,
/// the other reads the same (and the agent re-reads what it persisted).
pub fn assert_round_trip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = serde_json::to_vec(value).expect("an accepted document serialises");
    let again: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{value:?} written as {} does not read back: {e}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(&again, value, "a document changed through JSON");
}

/// Whether PostgreSQL can store `value`, as `jsonb` or in `text` columns:
/// no string in it (keys included) holds a NUL character, which neither
/// accepts. An accepted document that cannot be stored is a 500 for its
/// sender, sent again and again.
pub fn storable<T: Serialize>(value: &T) -> bool {
    fn walk(value: &Value) -> bool {
        match value {
            Value::String(s) => !s.contains('\0'),
            Value::Array(items) => items.iter().all(walk),
            Value::Object(fields) => fields.iter().all(|(k, v)| !k.contains('\0') && walk(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => true,
        }
    }
    walk(&serde_json::to_value(value).expect("an accepted document serialises"))
}

/// The first `max` lines of `data`: one input, several documents (a root
/// chain, requests on a socket), so the fuzzer explores sequences too.
pub fn lines(data: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n').take(max)
}
