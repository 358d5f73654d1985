//! The router's key pair and its certificate signing request: an ECDSA
//! P-256 key made with the `ring` rustls already links, and the PKCS#10
//! request (RFC 2986) written in DER by hand, so the agent carries no
//! certificate library. **The private key never leaves the router**: only
//! the request goes to the controller.

use anyhow::anyhow;

/// A key pair made on the router, and a request for a certificate of it.
pub struct KeyAndRequest {
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// PKCS#10 certificate signing request, PEM.
    pub csr_pem: String,
}

/// Generates an ECDSA P-256 key pair and a signing request for it.
pub fn new_key_and_request() -> anyhow::Result<KeyAndRequest> {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    let rng = ring::rand::SystemRandom::new();
    let alg = &ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
        .map_err(|_| anyhow!("generating the device key"))?;
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow!("loading the new device key"))?;

    // PKCS#10 (RFC 2986), DER. The subject is the one the agent sent since
    // it made requests with rcgen; the controller ignores names anyway.
    let subject = der(
        SEQUENCE,
        &der(
            SET,
            &der(
                SEQUENCE,
                &[
                    OID_COMMON_NAME,
                    &der(UTF8_STRING, b"rcgen self signed cert"),
                ]
                .concat(),
            ),
        ),
    );
    let public_key = der(
        SEQUENCE,
        &[
            ALGORITHM_EC_P256,
            &der(BIT_STRING, &[&[0], key.public_key().as_ref()].concat()),
        ]
        .concat(),
    );
    let info = der(
        SEQUENCE,
        &[VERSION_1, &subject, &public_key, NO_ATTRIBUTES].concat(),
    );
    let signature = key
        .sign(&rng, &info)
        .map_err(|_| anyhow!("signing the certificate signing request"))?;
    let csr = der(
        SEQUENCE,
        &[
            &info,
            ALGORITHM_ECDSA_SHA256,
            &der(BIT_STRING, &[&[0], signature.as_ref()].concat()),
        ]
        .concat(),
    );
    Ok(KeyAndRequest {
        key_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        csr_pem: pem("CERTIFICATE REQUEST", &csr),
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const BIT_STRING: u8 = 0x03;
const UTF8_STRING: u8 = 0x0c;
/// INTEGER 0: PKCS#10 version 1.
const VERSION_1: &[u8] = &[0x02, 0x01, 0x00];
/// OID 2.5.4.3 (id-at-commonName).
const OID_COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
/// `[0]`, an empty set of attributes.
const NO_ATTRIBUTES: &[u8] = &[0xa0, 0x00];
/// AlgorithmIdentifier: id-ecPublicKey with the named curve prime256v1.
const ALGORITHM_EC_P256: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// AlgorithmIdentifier: ecdsa-with-SHA256, no parameters.
const ALGORITHM_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// One DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// PEM (RFC 7468): base64 in lines of 64 characters, LF line endings.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = base64.as_str();
    while !rest.is_empty() {
        // Base64 is ASCII: any byte offset is a character boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_pem_csr_for_the_key_that_is_kept() {
        let fresh = new_key_and_request().unwrap();
        assert!(fresh
            .csr_pem
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        // Parsing also checks the request's signature, made with the key.
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&fresh.csr_pem).unwrap();
        let key = rcgen::KeyPair::from_pem(&fresh.key_pem).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(csr.public_key.der_bytes(), key.public_key_raw());
        assert_eq!(csr.public_key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
        let other = new_key_and_request().unwrap();
        assert_ne!(other.key_pem, fresh.key_pem, "a new key every time");
    }

    /// The header length and total length of the first DER element of `der`.
    fn measure(der: &[u8]) -> (usize, usize) {
        match der[1] {
            l if l < 0x80 => (2, 2 + usize::from(l)),
            l => {
                let n = usize::from(l & 0x7f);
                let len = der[2..2 + n]
                    .iter()
                    .fold(0, |acc, &b| acc << 8 | usize::from(b));
                (2 + n, 2 + n + len)
            }
        }
    }

    /// Splits the first DER element off `der`.
    fn element(der: &[u8]) -> (&[u8], &[u8]) {
        der.split_at(measure(der).1)
    }

    /// The request info and the signature algorithm of a DER request.
    fn signed_part(csr: &[u8]) -> (&[u8], &[u8]) {
        let (header, total) = measure(csr);
        let (info, rest) = element(&csr[header..total]);
        (info, element(rest).0)
    }

    fn pem_contents(pem: &str) -> Vec<u8> {
        use base64::Engine as _;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn the_request_is_the_one_rcgen_made_for_the_same_key() {
        let fresh = new_key_and_request().unwrap();
        let key = rcgen::KeyPair::from_pem(&fresh.key_pem).unwrap();
        assert_eq!(key.serialize_pem(), fresh.key_pem);
        let theirs = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        assert!(theirs.pem().unwrap().lines().all(|l| l.len() <= 64));
        // The signatures differ (ECDSA draws a nonce); what they sign and
        // how they say they signed it are the same bytes.
        let ours = pem_contents(&fresh.csr_pem);
        assert_eq!(signed_part(&ours), signed_part(theirs.der()));
        assert_eq!(element(&ours).1, b"", "nothing after the request");
    }

    #[test]
    fn long_der_lengths_use_the_long_form() {
        assert_eq!(der(0x04, &[7; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(der(0x04, &[7; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(der(0x04, &[7; 0x1234])[..4], [0x04, 0x82, 0x12, 0x34]);
    }
}
