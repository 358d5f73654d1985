//! The controller's development CA and the device listener's TLS certificate.
//!
//! On first start the controller creates a CA key and certificate in the data
//! directory; the device listener's certificate is issued by it at every start
//! for the configured names. Agents pin this CA and trust nothing else.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

use crate::fs_util::{write_private_file, write_public_file};

pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

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

impl Pki {
    /// Loads or creates the CA in `dir` and issues a server certificate for `names`.
    pub fn load_or_create(dir: &Path, names: &[String]) -> anyhow::Result<Self> {
        let ca_key_path = dir.join("ca-key.pem");
        let ca_cert_path = dir.join("ca.pem");
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
            .push(DnType::CommonName, "iSDF device API");
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()
            .context("server certificate names")?;
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2044, 1, 1);
        let server_cert = params
            .signed_by(&server_key, &ca_cert, &ca_key)
            .context("issuing the server certificate")?;
        let pki = Pki {
            ca_pem,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        };
        write_public_file(
            &dir.join("device-api-cert.pem"),
            pki.server_cert_pem.as_bytes(),
        )?;
        Ok(pki)
    }

    /// rustls server configuration for the device listener.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let certs = rustls_pemfile::certs(&mut self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing server certificate")?;
        let key = rustls_pemfile::private_key(&mut self.server_key_pem.as_bytes())
            .context("parsing server key")?
            .context("no server key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("server certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
