//! Enrollment and renewal requests as the controller reads them (`POST
//! /enroll/v1`, `POST /device/v1/renew`): the JSON body, then the router's
//! certificate signing request (PEM, PKCS#10) through
//! `Pki::issue_device_certificate`, which checks the request's signature
//! and signs a certificate with the controller's CA. Whatever the request
//! says, the certificate names the device the controller chose and nothing
//! else (the device listener reads that name back with `device_id_of`), is
//! for client authentication only, and certifies the request's own key.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use isdf_api::enrollment::{EnrollRequest, RenewRequest};
use isdf_controller::trust::pki::{device_id_of, Pki};
use libfuzzer_sys::fuzz_target;
use rcgen::{CertificateSigningRequestParams, PublicKeyData};
use rustls_pki_types::CertificateDer;
use uuid::Uuid;

const DEVICE: Uuid = Uuid::from_u128(0x7f0b3c1e_2f43_4a51_9a0e_6c1d2b3a4f50);
/// The controller's default device certificate lifetime.
const LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// A CA made once, in a directory of its own (the controller keeps its key
/// files in its data directory), one per fuzzing process.
static PKI: LazyLock<Pki> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("isdf-fuzz-pki-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the CA");
    Pki::load_or_create(&dir, &["controller.example.net".into()]).expect("a CA")
});

/// The DER of the certificate the controller wrote (PEM, one block).
fn der_of(pem: &str) -> Vec<u8> {
    match rustls_pemfile::read_one(&mut pem.as_bytes()) {
        Ok(Some(rustls_pemfile::Item::X509Certificate(der))) => der.as_ref().to_vec(),
        other => panic!("the issued certificate is not one PEM certificate: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let csr_pem = match serde_json::from_slice::<EnrollRequest>(data) {
        Ok(request) => request.csr_pem,
        Err(_) => match serde_json::from_slice::<RenewRequest>(data) {
            Ok(request) => request.csr_pem,
            Err(_) => return,
        },
    };
    let Ok(issued) = PKI.issue_device_certificate(&csr_pem, DEVICE, LIFETIME) else {
        return;
    };
    let der = der_of(&issued.pem);
    assert_eq!(
        device_id_of(&CertificateDer::from(der.as_slice())),
        Some(DEVICE),
        "the certificate does not name the device"
    );
    let (_, certificate) =
        x509_parser::parse_x509_certificate(&der).expect("the issued certificate parses");
    let names: Vec<String> = certificate
        .subject()
        .iter_attributes()
        .map(|a| format!("{:?}={:?}", a.attr_type(), a.as_str()))
        .collect();
    assert_eq!(
        names.len(),
        1,
        "the subject says more than the device: {names:?}"
    );
    assert!(
        certificate
            .subject_alternative_name()
            .expect("extensions parse")
            .is_none(),
        "names in the request reached the certificate"
    );
    let usage = certificate
        .extended_key_usage()
        .expect("extensions parse")
        .expect("an extended key usage");
    assert!(usage.value.client_auth && !usage.value.server_auth);
    // The key certified is the request's, as the controller read it.
    let request =
        CertificateSigningRequestParams::from_pem(&csr_pem).expect("the request it issued from");
    assert_eq!(
        request.public_key.der_bytes(),
        &*certificate.public_key().subject_public_key.data,
        "the certificate is for another key"
    );
});
