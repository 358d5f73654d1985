//! Load generator for the poll benchmark over mutual TLS (wrk cannot present
//! a client certificate): `connections` keep-alive HTTP/1.1 connections on
//! one thread, each sending the no-change poll back to back for `seconds`.
//! Prints the requests per second that got their expected answer.
//!
//! Run: `cargo run --release -p isdf-controller --example poll_load -- \
//!        URL CA.pem CERT.pem KEY.pem CONNECTIONS SECONDS`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

fn client(ca: &[u8], cert: &[u8], key: &[u8]) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(c?)?;
    }
    let certs = rustls_pemfile::certs(&mut &cert[..]).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut &key[..])?.context("no key")?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, ca, cert, key, connections, seconds] = &args[..] else {
        anyhow::bail!("usage: poll_load URL CA.pem CERT.pem KEY.pem CONNECTIONS SECONDS");
    };
    let (ca, cert, key) = (
        std::fs::read(ca)?,
        std::fs::read(cert)?,
        std::fs::read(key)?,
    );
    let connections: usize = connections.parse()?;
    let duration = Duration::from_secs(seconds.parse()?);
    let answered = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + duration;
        let mut tasks = Vec::new();
        let started = Instant::now();
        for _ in 0..connections {
            // One client per connection, so each keeps its own connection alive.
            let client = client(&ca, &cert, &key)?;
            let (url, answered) = (url.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let response = client
                        .get(&url)
                        .header("if-none-match", "\"1\"")
                        .send()
                        .await;
                    if response.is_ok_and(|r| r.status() == reqwest::StatusCode::NOT_MODIFIED) {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
        anyhow::Ok(started)
    })?;
    let rate = answered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0}");
    Ok(())
}
