//! Which client certificate a device may use. The database records every
//! certificate the CA issues (`device_certificates`); the config cache holds
//! each device's accepted ones, so the device API decides without a query.
//!
//! The rules, in the order they act:
//! 1. Enrolling with a token issues the device's current certificate and
//!    revokes every earlier one at once (`re-enrolled`): a replaced router is
//!    refused from its next request, not when its certificate expires.
//! 2. Renewing with certificate P (mutual TLS) issues N. P stays accepted
//!    until N is first used (the answer may be lost on its way, and the
//!    router then renews again with P); any other certificate is revoked
//!    (`renewed-over`).
//! 3. The first use of N revokes the others (`superseded`).
//! 4. A device with no recorded certificate (enrolled before they were
//!    recorded) accepts any certificate of our CA naming it, until 1 or 2
//!    pins it; a certificate found renewing then is recorded `unrecorded`,
//!    so rule 2 keeps it usable.
//!
//! Every change bumps the device's certificate generation (which locks its
//! row: changes to one device are serialised) and notifies every replica
//! on [`CHANNEL`], which reloads that device (`cluster::follow`). The extractor asks the database
//! only when the cache does not accept a certificate outright: a first use
//! (once per renewal), or a certificate the replica does not know (revoked,
//! or issued by another replica a moment ago).

use chrono::DateTime;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db;
pub use crate::db::device_certificates::CHANNEL;
use crate::db::device_certificates::{CertificateRow, NewCertificate};
use crate::reconcile::config_cache::{
    AcceptedCertificates, CertificateFingerprint, CertificateStanding, ConfigCache,
};
use crate::trust::pki::IssuedCertificate;

/// How a certificate came to be issued.
#[derive(Debug, Clone, Copy)]
pub enum Issue {
    /// With an enrollment token: it replaces every earlier certificate.
    Enrollment,
    /// Over mutual TLS with the certificate `by`.
    Renewal { by: CertificateFingerprint },
}

/// What recording an issued certificate did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded; this many earlier certificates were revoked.
    Done { revoked: u64 },
    /// The device is gone.
    NoDevice,
    /// The renewing certificate was revoked meanwhile (the device enrolled
    /// again): nothing is recorded, the caller refuses.
    RenewerRevoked,
}

fn fingerprint(bytes: &[u8]) -> Option<CertificateFingerprint> {
    bytes.try_into().ok()
}

/// The accepted certificates of a device from its recorded ones (newest
/// first).
fn accepted_of(rows: &[CertificateRow]) -> AcceptedCertificates {
    if rows.is_empty() {
        return AcceptedCertificates::Unrecorded;
    }
    AcceptedCertificates::Pinned(
        rows.iter()
            .filter(|r| !r.revoked)
            .filter_map(|r| fingerprint(&r.fingerprint))
            .collect(),
    )
}

/// Records `issued` for `device` in the caller's transaction and revokes
/// what it replaces (rules 1, 2 and 4). The cache follows once the caller
/// committed and called [`refresh`].
pub async fn record_issue(
    tx: &mut PgConnection,
    device: Uuid,
    issued: &IssuedCertificate,
    how: Issue,
) -> Result<Recorded, sqlx::Error> {
    use db::device_certificates as certificates;
    if certificates::bump_generation(tx, device).await?.is_none() {
        return Ok(Recorded::NoDevice);
    }
    let (_, rows) = certificates::of_device(tx, device)
        .await?
        .unwrap_or_default();
    let mut keep = vec![issued.fingerprint];
    let (issued_by, reason) = match how {
        Issue::Enrollment => ("enrollment", "re-enrolled"),
        Issue::Renewal { by } => {
            match rows.iter().find(|r| r.fingerprint == by) {
                Some(row) if row.revoked => return Ok(Recorded::RenewerRevoked),
                Some(_) => {}
                // Rule 4: an older controller's certificate, renewing.
                None if rows.is_empty() => {
                    let unrecorded = NewCertificate {
                        device_id: device,
                        fingerprint: &by,
                        issued_by: "unrecorded",
                        serial: None,
                        not_after: None,
                    };
                    certificates::insert(&mut *tx, &unrecorded).await?;
                }
                // The device is pinned and never had this certificate.
                None => return Ok(Recorded::RenewerRevoked),
            }
            keep.push(by);
            ("renewal", "renewed-over")
        }
    };
    let new = NewCertificate {
        device_id: device,
        fingerprint: &issued.fingerprint,
        issued_by,
        serial: Some(&issued.serial),
        not_after: DateTime::from_timestamp(issued.not_after, 0),
    };
    certificates::insert(&mut *tx, &new).await?;
    let keep: Vec<&CertificateFingerprint> = keep.iter().collect();
    let revoked = certificates::revoke_others(&mut *tx, device, &keep, reason).await?;
    certificates::trim(&mut *tx, device).await?;
    certificates::notify(&mut *tx, device).await?;
    Ok(Recorded::Done { revoked })
}

/// Reloads one device's certificates into the cache.
pub async fn refresh(pool: &PgPool, cache: &ConfigCache, device: Uuid) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    if let Some((generation, rows)) = db::device_certificates::of_device(&mut conn, device).await? {
        cache.set_certificates(device, generation, accepted_of(&rows));
    }
    Ok(())
}

/// A device this replica has not heard of: enrolled through another
/// replica a moment ago, its router already here before the news (a router
/// polls within milliseconds of its enrollment, through any replica). The
/// database decides: an existing device joins the cache with its config
/// and certificates. Whether it exists.
pub async fn learn_device(
    pool: &PgPool,
    cache: &ConfigCache,
    device: Uuid,
) -> Result<bool, sqlx::Error> {
    if !db::devices::exists(pool, device).await? {
        return Ok(false);
    }
    cache.add_device(device);
    if let Some(row) = db::configs::get(pool, device).await? {
        cache.publish_heard(
            device,
            crate::reconcile::config_cache::ServedConfig {
                version: row.version as u64,
                envelope: row.envelope.into(),
            },
        );
    }
    refresh(pool, cache, device).await?;
    Ok(true)
}

/// Loads every device's certificates into the cache (devices must be in it
/// already; those without any recorded stay unrecorded).
pub async fn load_all(pool: &PgPool, cache: &ConfigCache) -> Result<(), sqlx::Error> {
    let rows = db::device_certificates::all(pool).await?;
    for device_rows in rows.chunk_by(|a, b| a.device_id == b.device_id) {
        let first = &device_rows[0];
        cache.set_certificates(first.device_id, first.generation, accepted_of(device_rows));
    }
    Ok(())
}

/// Decides on a certificate the cache does not accept outright (rule 3, or
/// one this replica does not know), in the database; the cache learns the
/// outcome. Whether the certificate is accepted.
pub async fn admit(
    pool: &PgPool,
    cache: &ConfigCache,
    device: Uuid,
    presented: CertificateFingerprint,
) -> Result<bool, sqlx::Error> {
    use db::device_certificates as certificates;
    let mut tx = pool.begin().await?;
    let Some((mut generation, rows)) = certificates::of_device(&mut tx, device).await? else {
        return Ok(false);
    };
    let mut accepted = accepted_of(&rows);
    let mut standing = accepted.standing(&presented);
    if standing == CertificateStanding::FirstUse {
        // Again under the device's lock: a change may have come first.
        let Some(locked) = certificates::bump_generation(&mut tx, device).await? else {
            return Ok(false);
        };
        generation = locked;
        let (_, rows) = certificates::of_device(&mut tx, device)
            .await?
            .unwrap_or_default();
        accepted = accepted_of(&rows);
        standing = accepted.standing(&presented);
        if standing == CertificateStanding::FirstUse {
            let revoked =
                certificates::revoke_others(&mut *tx, device, &[&presented], "superseded").await?;
            certificates::trim(&mut *tx, device).await?;
            certificates::notify(&mut *tx, device).await?;
            tracing::info!(device = %device, revoked, "first use of a renewed certificate: the previous one is revoked");
            accepted = AcceptedCertificates::Pinned(vec![presented]);
        }
    }
    tx.commit().await?;
    cache.set_certificates(device, generation, accepted);
    Ok(standing != CertificateStanding::Unknown)
}
