//! A web server fast enough not to be what a connections-per-second
//! benchmark measures (`scripts/bench-names`): HTTP on one address, HTTPS
//! with a self-signed certificate for the given names on another, each
//! answering every request with a short `200 ok`. A client that sends
//! `Connection: close` gets its connection closed after the answer, so each
//! request is a new connection through the router.
//!
//! ```sh
//! bench_web_server 0.0.0.0:80 0.0.0.0:443 shop.test
//! ```
//!
//! Prints `ready` once both listen; serves until killed. Tokio's
//! multi-threaded runtime (a worker per core) and hyper keep its cost per
//! connection far below a forking server's (busybox httpd) or a
//! single-threaded one's (`openssl s_server`).

use std::future::IntoFuture;
use std::net::SocketAddr;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_web_server HTTP_ADDR HTTPS_ADDR NAME...";
    let http: SocketAddr = args.next().context(usage)?.parse().context(usage)?;
    let https: SocketAddr = args.next().context(usage)?.parse().context(usage)?;
    let names: Vec<String> = args.collect();
    anyhow::ensure!(!names.is_empty(), usage);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let site = axum::Router::new().fallback(|| async { "ok\n" });
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("listening on {http}"))?;
    let cert = rcgen::generate_simple_self_signed(names).context("making the certificate")?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.cert.pem().into_bytes(),
        cert.key_pair.serialize_pem().into_bytes(),
    )
    .await
    .context("loading the certificate")?;
    let https_server = axum_server::bind_rustls(https, tls);
    let plain = tokio::spawn(axum::serve(listener, site.clone()).into_future());
    let secure = tokio::spawn(https_server.serve(site.into_make_service()));
    // bind_rustls binds inside `serve`: wait until its port answers.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(https).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!("ready");
    tokio::select! {
        result = plain => result.context("the HTTP server")?.context("serving HTTP"),
        result = secure => result.context("the HTTPS server")?.context("serving HTTPS"),
    }
}
