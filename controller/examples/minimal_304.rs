//! Baseline for the poll benchmark: the smallest axum + rustls server that
//! answers the device poll with a constant 304. The controller's own poll
//! path (token check, cache lookup, version compare) is measured against it.
//!
//! With the controller's data directory as second argument it uses the
//! controller's own TLS setup (a server certificate from its CA, client
//! certificates required), so both servers do the same TLS work.
//!
//! Run: `cargo run --release -p isdf-controller --example minimal_304 -- 127.0.0.1:18444 [DATA_DIR]`

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

fn main() -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18444".into())
        .parse()?;
    let tls = match std::env::args().nth(2) {
        // The controller's own TLS setup: mutual TLS with its CA.
        Some(data_dir) => isdf_controller::trust::pki::Pki::load_or_create(
            std::path::Path::new(&data_dir),
            &["localhost".to_owned()],
        )?
        .device_server_config()?,
        None => self_signed()?,
    };
    let router = Router::new().route(
        isdf_api::paths::DEVICE_CONFIG,
        get(|| async { StatusCode::NOT_MODIFIED }),
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            println!("minimal 304 server on https://{addr}");
            axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(tls),
            )
            .serve(router.into_make_service())
            .await?;
            Ok(())
        })
}

fn self_signed() -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(anyhow::Error::msg)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
