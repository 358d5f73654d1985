//! Keys, certificates and tokens: the CA that issues device certificates
//! and the listeners' certificate (`pki.rs`), which certificate each device
//! may use (`device_certificates.rs`), the root chain that certifies
//! config-signing keys (`roots.rs`), bearer tokens stored as hashes
//! (`tokens.rs`), and the one durable writer of key and certificate files
//! (`key_files.rs`).

pub mod device_certificates;
pub mod key_files;
pub mod pki;
pub mod roots;
pub mod tokens;
