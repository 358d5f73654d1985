//! Writes the seeds of the controller's corpora into `corpus/`: requests
//! as the agent sends them (an ECDSA P-256 key), with names the controller
//! must ignore, and with an Ed25519 key. `scripts/fuzz seeds` runs it.

use isdf_api_fuzz::seeds::{write, Seed};
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::json;

fn request(key: &KeyPair, common_name: &str, names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("names");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .serialize_request(key)
        .expect("a request")
        .pem()
        .expect("PEM")
}

fn main() -> std::io::Result<()> {
    let p256 = KeyPair::generate().expect("a P-256 key");
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key");
    let token = "isdf_enr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";
    let seeds = [
        Seed::json(
            "enroll_request",
            "enroll-as-the-agent",
            &json!({"token": token, "csr_pem": request(&p256, "rcgen self signed cert", &[])}),
        ),
        Seed::json(
            "enroll_request",
            "enroll-with-names",
            &json!({"token": token, "csr_pem": request(
                &p256,
                "00000000-0000-0000-0000-000000000001",
                &["evil.example", "controller.example.net"],
            )}),
        ),
        Seed::json(
            "enroll_request",
            "renew-ed25519",
            &json!({"csr_pem": request(&ed25519, "router", &[])}),
        ),
    ];
    write(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), &seeds)
}
