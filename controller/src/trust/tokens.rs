//! Bearer tokens: random, shown once, stored only as SHA-256 hashes.
//!
//! A salted slow hash is unnecessary here: tokens carry 256 random bits, so
//! the hash only has to be one-way, and SHA-256 keeps device authentication
//! cheap on the poll hot path.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub type TokenHash = [u8; 32];

/// A new token such as `isdf_dev_<43 base64url chars>`.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&axum::http::HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub const OPERATOR_TOKEN_PREFIX: &str = "isdf_op_";
