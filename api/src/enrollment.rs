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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The single-use enrollment token.
    pub token: String,
    /// PKCS#10 certificate signing request, PEM.
    pub csr_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A request for a new key pair made on the router, PEM.
    pub csr_pem: String,
}

/// What enrollment and renewal return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// When the agent should renew: two thirds into the validity. Computed
    /// wide, so that no answer (a hostile one included) overflows it: it
    /// lies between `not_before` and `not_after`, so it fits back.
    pub fn renew_at(&self) -> i64 {
        let (from, to) = (i128::from(self.not_before), i128::from(self.not_after));
        i64::try_from(from + (to - from) * 2 / 3).expect("between two i64 values")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(not_before: i64, not_after: i64) -> DeviceCertificate {
        DeviceCertificate {
            device_id: "7f0b3c1e-2f43-4a51-9a0e-6c1d2b3a4f50".into(),
            certificate_pem: String::new(),
            ca_pem: String::new(),
            signing_public_keys: Vec::new(),
            device_api_url: "https://controller.example.net:8443".into(),
            roots: Vec::new(),
            not_before,
            not_after,
        }
    }

    #[test]
    fn renewal_is_two_thirds_into_any_validity() {
        assert_eq!(valid(1_000, 4_000).renew_at(), 3_000);
        // An answer with a far end overflowed here (multiplying by 2) and
        // panicked the agent, or wrapped in its release build.
        for (from, to) in [
            (1_795_000_000, i64::MAX),
            (i64::MIN, i64::MAX),
            (i64::MIN, i64::MIN + 3),
        ] {
            let at = valid(from, to).renew_at();
            assert!((from..to).contains(&at), "{from}..{to}: {at}");
        }
    }
}
