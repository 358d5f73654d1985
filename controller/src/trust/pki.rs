//! The controller's CA: device client certificates, and the TLS server
//! certificates of the device and enrollment listeners.
//!
//! On first start the controller creates a CA key and certificate in the data
//! directory. The listeners' certificate is issued by it at every start for
//! the configured names. Device certificates are issued from a router's
//! certificate signing request, with the identity the controller chooses:
//! the subject is the device id and nothing from the request is copied but
//! its public key. Agents pin this CA and trust nothing else; the device
//! listener accepts client certificates from it only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use uuid::Uuid;

use crate::trust::key_files::{write_private_file, write_public_file};

/// The CA's private key in the data directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The CA certificate in the data directory: what agents pin.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The listeners' certificate, written afresh at every start (for whoever
/// wants to look at it; the controller itself keeps it in memory).
pub const SERVER_CERT_FILE: &str = "device-api-cert.pem";

pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    ca_cert: Certificate,
    ca_key: KeyPair,
}

/// A device certificate just issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub pem: String,
    /// Hex of the serial number.
    pub serial: String,
    /// SHA-256 of the certificate's DER: what the device API recognises it by.
    pub fingerprint: [u8; 32],
    pub not_before: i64,
    pub not_after: i64,
}

/// Tolerance for routers whose clock runs a little behind (at most a tenth
/// of the lifetime, so short-lived certificates keep their renewal point).
const CLOCK_SKEW: Duration = Duration::from_secs(300);

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "iSDF controller CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "iSDF");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    Ok(params)
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // Positive, as DER integers for serials must be.
    bytes[0] &= 0x7f;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

impl Pki {
    /// Loads or creates the CA in `dir` and issues a server certificate for `names`.
    pub fn load_or_create(dir: &Path, names: &[String]) -> anyhow::Result<Self> {
        let ca_key_path = dir.join(CA_KEY_FILE);
        let ca_cert_path = dir.join(CA_CERT_FILE);
        let ca_key = if ca_key_path.exists() {
            let pem = std::fs::read_to_string(&ca_key_path)
                .with_context(|| format!("reading {}", ca_key_path.display()))?;
            KeyPair::from_pem(&pem).context("parsing the CA key")?
        } else {
            let key = KeyPair::generate().context("generating the CA key")?;
            write_private_file(&ca_key_path, key.serialize_pem().as_bytes())?;
            key
        };
        // The CA certificate is rebuilt from fixed parameters and the stored
        // key: issuer name and key are what children are verified against.
        let ca_cert = ca_params()?
            .self_signed(&ca_key)
            .context("self-signing the CA")?;
        let ca_pem = if ca_cert_path.exists() {
            std::fs::read_to_string(&ca_cert_path)
                .with_context(|| format!("reading {}", ca_cert_path.display()))?
        } else {
            let pem = ca_cert.pem();
            write_public_file(&ca_cert_path, pem.as_bytes())?;
            pem
        };

        let server_key = KeyPair::generate().context("generating the server key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "iSDF controller");
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()
            .context("server certificate names")?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2044, 1, 1);
        let server_cert = params
            .signed_by(&server_key, &ca_cert, &ca_key)
            .context("issuing the server certificate")?;
        let pki = Pki {
            ca_pem,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            ca_cert,
            ca_key,
        };
        write_public_file(&dir.join(SERVER_CERT_FILE), pki.server_cert_pem.as_bytes())?;
        Ok(pki)
    }

    /// Issues a client certificate for `device` from the router's CSR. The
    /// CSR's signature is checked (the router holds the key); only its
    /// public key is used.
    pub fn issue_device_certificate(
        &self,
        csr_pem: &str,
        device: Uuid,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, rcgen::Error> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let now = time::OffsetDateTime::now_utc();
        let (not_before, not_after) = (now - CLOCK_SKEW.min(lifetime / 10), now + lifetime);
        let (serial_number, serial) = random_serial();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, device.to_string());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(serial_number);
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let cert = csr.signed_by(&self.ca_cert, &self.ca_key)?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial,
            fingerprint: fingerprint_of(cert.der()),
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        })
    }

    fn server_builder(
        &self,
    ) -> anyhow::Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>> {
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")
    }

    fn server_identity(
        &self,
    ) -> anyhow::Result<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )> {
        let certs = rustls_pemfile::certs(&mut self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing server certificate")?;
        let key = rustls_pemfile::private_key(&mut self.server_key_pem.as_bytes())
            .context("parsing server key")?
            .context("no server key")?;
        Ok((certs, key))
    }

    /// The device listener: mutual TLS, client certificates from our CA
    /// only. A client without a certificate completes the handshake (a load
    /// balancer's health check reaches `/healthz` and `/readyz`), and every
    /// device route refuses it (401); a certificate that does not verify
    /// still fails the handshake.
    pub fn device_server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_cert.der().clone())
            .context("trusting the CA")?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .context("client certificate verifier")?;
        let (certs, key) = self.server_identity()?;
        let mut config = self
            .server_builder()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .context("server certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The enrollment listener: server-authenticated TLS only (the router has
    /// no certificate yet; it proves itself with its enrollment token).
    pub fn enrollment_server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let (certs, key) = self.server_identity()?;
        let mut config = self
            .server_builder()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("server certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 of a certificate's DER: one certificate, whatever its
/// contents (two certificates for one device differ in serial and key).
pub fn fingerprint_of(cert: &rustls::pki_types::CertificateDer<'_>) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(cert.as_ref()).into()
}

/// The device id in a verified client certificate (its common name).
pub fn device_id_of(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<Uuid> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    Uuid::parse_str(cn).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_with_names() -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "00000000-0000-0000-0000-000000000001");
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn device_certificates_carry_the_chosen_identity_only() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        let csr = csr_with_names();
        let device = Uuid::new_v4();
        let issued = pki
            .issue_device_certificate(&csr, device, Duration::from_secs(3600))
            .unwrap();
        let der = rustls_pemfile::certs(&mut issued.pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(device_id_of(&der), Some(device));
        assert_eq!(fingerprint_of(&der), issued.fingerprint);
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert!(
            parsed.subject_alternative_name().unwrap().is_none(),
            "names in the CSR are ignored"
        );
        assert!(issued.not_after - issued.not_before >= 3600);
    }

    #[test]
    fn a_csr_with_a_broken_signature_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        let csr = csr_with_names();
        let mut der = rustls_pemfile::csr(&mut csr.as_bytes())
            .unwrap()
            .unwrap()
            .as_ref()
            .to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            lines.join("\n")
        );
        assert!(pki
            .issue_device_certificate(&tampered, Uuid::new_v4(), Duration::from_secs(60))
            .is_err());
    }
}
