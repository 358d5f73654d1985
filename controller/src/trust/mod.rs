//! Keys, certificates and tokens: the CA that issues device certificates
//! and the listeners' certificate (`pki.rs`), the root chain that certifies
//! config-signing keys (`roots.rs`), bearer tokens stored as hashes
//! (`tokens.rs`), and the one durable writer of key and certificate files
//! (`key_files.rs`).

pub mod key_files;
pub mod pki;
pub mod roots;
pub mod tokens;
