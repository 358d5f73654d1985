//! Enrollment and renewal of device certificates.
//!
//! The router makes its own key pair and sends only a certificate signing
//! request (PEM); the controller's CA issues a certificate whose identity the
//! controller chooses (the device id; names in the request are ignored).
//! Enrollment (`POST /enroll/v1`, server-authenticated TLS on its own
//! listener) takes a single-use enrollment token; renewal
//! (`POST /device/v1/renew`, mutual TLS) takes the current certificate.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The single-use enrollment token.
    pub token: String,
    /// PKCS#10 certificate signing request, PEM.
    pub csr_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A request for a new key pair made on the router, PEM.
    pub csr_pem: String,
}

/// What enrollment and renewal return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCertificate {
    /// The identity the controller chose; also the certificate's common name.
    pub device_id: String,
    /// The client certificate, PEM.
    pub certificate_pem: String,
    /// The controller CA, PEM: the only root the agent trusts.
    pub ca_pem: String,
    /// Ed25519 keys (hex) config signatures are accepted from.
    pub signing_public_keys: Vec<String>,
    /// Device API base URL.
    pub device_api_url: String,
    /// The chain of root documents (DSSE envelopes, JSON text) from version
    /// 1: which keys may sign configs, and who may change that.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<String>,
    /// Validity of the certificate, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl DeviceCertificate {
    /// When the agent should renew: two thirds into the validity.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}
