//! The leader resolves every pay-per-site catalog site's names on a
//! schedule and keeps the answers (`site_addresses`), which the compiler
//! puts into the routers' site sets: a router then gates a site's addresses
//! from its start, before any LAN host asked its resolver, so a hard-coded
//! address or a lookup through a resolver the router never sees (DNS over
//! HTTPS to an unlisted server) meets the gate as well (issue 21).
//!
//! Each site's own names are resolved, and `www.` under each (only `www.`
//! for a pattern of names under one, `*.example`). An address
//! stays while it was seen within the keep window, so a CDN rotating
//! through a pool does not change every router's config at every pass;
//! only a change (an address added or forgotten) recompiles the routers
//! that run the site's catalog. A resolver that fails changes nothing: the
//! addresses known stay until they age out of the window.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::db;
use crate::reconcile::Reconciler;
use crate::services::ServiceSpec;

/// How the leader resolves the catalog's names.
#[derive(Debug, Clone)]
pub struct SiteResolution {
    /// The DNS server asked (UDP, then TCP); None: the system's
    /// (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// Time between two passes; zero turns the resolution off.
    pub every: Duration,
    /// How long an address not seen again is kept.
    pub keep_for: Duration,
}

impl Default for SiteResolution {
    fn default() -> Self {
        SiteResolution {
            resolver: None,
            every: Duration::from_secs(300),
            keep_for: Duration::from_secs(24 * 3600),
        }
    }
}

/// Most names resolved per site, and addresses kept per name.
const MAX_NAMES: usize = 16;
const MAX_ADDRESSES_PER_NAME: usize = 32;
/// One lookup's limit.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Sites in a row without any answer after which a pass stops.
const MAX_UNANSWERED: usize = 3;

/// A stub resolver asking `server`, or the system's resolvers.
pub fn resolver(server: Option<SocketAddr>) -> anyhow::Result<TokioResolver> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    // Answers change (CDNs): every pass asks again.
    opts.cache_size = 0;
    // Both families, always: a router gates v6 as well as v4.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    let builder = match server {
        Some(server) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        }
        None => {
            TokioResolver::builder_tokio().context("reading the system's resolver configuration")?
        }
    };
    Ok(builder.with_options(opts).build())
}

/// Resolves at once, then every `settings.every`. Runs until aborted (the
/// leader's loops are).
pub async fn resolve_loop(reconciler: Arc<Reconciler>, settings: SiteResolution) {
    if settings.every.is_zero() {
        return;
    }
    let resolver = match resolver(settings.resolver) {
        Ok(resolver) => resolver,
        Err(e) => {
            tracing::error!(error = ?e, "pay-per-site names are not resolved by the controller");
            return;
        }
    };
    loop {
        match resolve_all(&reconciler, &resolver, Utc::now(), settings.keep_for).await {
            Ok(changed) if !changed.is_empty() => {
                tracing::info!(sites = ?changed, "pay-per-site addresses changed; recompiling")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "resolving the pay-per-site catalog"),
        }
        tokio::time::sleep(settings.every).await;
    }
}

/// Resolves every site's names once, records the answers as of `now`, and
/// marks the routers whose catalog changed to recompile. Returns the sites
/// whose addresses changed.
pub async fn resolve_all(
    reconciler: &Reconciler,
    resolver: &TokioResolver,
    now: DateTime<Utc>,
    keep_for: Duration,
) -> anyhow::Result<Vec<i64>> {
    let forget_before = now - chrono::Duration::from_std(keep_for).context("keep window")?;
    let mut changed = Vec::new();
    let mut catalogs = BTreeSet::new();
    let mut unanswered = 0;
    for (site, catalog, domains) in db::site_addresses::sites_to_resolve(&reconciler.pool)
        .await
        .context("listing the catalog's sites")?
    {
        let Some(addresses) = resolve_site(resolver, &domains, &reconciler.metrics).await else {
            tracing::warn!(
                site,
                "no answer for the site's names; its addresses stay as they were"
            );
            unanswered += 1;
            // The resolver is down, not the sites: the next pass tries
            // again rather than waiting out every site's timeouts.
            if unanswered == MAX_UNANSWERED {
                tracing::warn!("the resolver does not answer; this pass stops");
                break;
            }
            continue;
        };
        unanswered = 0;
        let mut tx = reconciler.pool.begin().await.context("starting")?;
        if db::site_addresses::record(&mut tx, site, &addresses, now, forget_before)
            .await
            .context("storing a site's addresses")?
        {
            changed.push(site);
            catalogs.insert(catalog);
        }
        tx.commit().await.context("committing a site's addresses")?;
    }
    if !catalogs.is_empty() {
        recompile_catalogs(reconciler, &catalogs).await?;
    }
    Ok(changed)
}

/// The addresses of a site's names (and `www.` under each); None when no
/// lookup was answered at all (the resolver is down), an empty list when
/// the names have no addresses.
async fn resolve_site(
    resolver: &TokioResolver,
    domains: &[String],
    metrics: &crate::metrics::Metrics,
) -> Option<Vec<IpAddr>> {
    let count = |result| {
        metrics
            .site_lookups
            .get_or_create(&crate::metrics::ResultLabels { result })
            .inc();
    };
    let names = domains
        .iter()
        .flat_map(|d| match d.strip_prefix("*.") {
            // Names under it only: `www.` is the one to ask for.
            Some(parent) => vec![format!("www.{parent}")],
            None if d.starts_with("www.") => vec![d.clone()],
            None => vec![d.clone(), format!("www.{d}")],
        })
        .take(MAX_NAMES);
    let mut addresses = BTreeSet::new();
    let mut answered = false;
    for name in names {
        match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(format!("{name}."))).await {
            Ok(Ok(lookup)) => {
                answered = true;
                count("answered");
                addresses.extend(lookup.iter().take(MAX_ADDRESSES_PER_NAME));
            }
            // The name has no addresses (NXDOMAIN, no records): an answer.
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => {
                answered = true;
                count("answered");
            }
            Ok(Err(e)) => {
                count("failed");
                tracing::debug!(%name, error = %e, "lookup failed")
            }
            Err(_) => {
                count("failed");
                tracing::debug!(%name, "lookup timed out")
            }
        }
    }
    answered.then(|| addresses.into_iter().collect())
}

/// Marks the routers that run a pay-per-site assignment of one of
/// `catalogs` to recompile (within moments, in chunks).
async fn recompile_catalogs(
    reconciler: &Reconciler,
    catalogs: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let assignments = crate::reconcile::parse_assignments(
        db::assignments::all_with_specs(&reconciler.pool)
            .await
            .context("loading assignments")?,
    );
    let mut routers = BTreeSet::new();
    for assignment in &assignments {
        if let ServiceSpec::PayPerSite(spec) = &assignment.spec {
            if catalogs.contains(&spec.catalog) {
                routers.extend(
                    db::devices::matching_ids(&reconciler.pool, &assignment.selector)
                        .await
                        .context("finding the routers of a catalog")?,
                );
            }
        }
    }
    let routers: Vec<_> = routers.into_iter().collect();
    let mut tx = reconciler.pool.begin().await.context("starting")?;
    reconciler.recompile_soon_in(&mut tx, &routers).await?;
    tx.commit().await.context("committing")?;
    reconciler.poke();
    Ok(())
}
