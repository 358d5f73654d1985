//! Pay-per-site catalog types that parse, not validate: display names,
//! references from other systems, currencies, passes and a site's whole
//! spec. A value of these types is always valid.

use std::collections::BTreeSet;
use std::fmt;

use isdf_api::DomainPattern;
use serde::{Deserialize, Serialize};

use crate::model::{parse_name, DisplayName};

/// The catalog a site goes to when none is named.
pub const DEFAULT_CATALOG: &str = "main";
/// Domains of one site.
pub const MAX_DOMAINS: usize = 100;
/// Passes of one site.
pub const MAX_PASSES: usize = 10;
/// Shortest pass: one minute.
pub const MIN_PASS_SECS: i64 = 60;
/// Longest pass: 366 days.
pub const MAX_PASS_SECS: i64 = 366 * 86_400;
/// A catalog's name: 1-64 of `A-Za-z0-9._-`.
pub fn parse_catalog(text: &str) -> Result<String, String> {
    parse_name(text, "catalog")
}

/// An ISO 4217 currency code: three uppercase letters (`EUR`). Whether the
/// code is assigned is not checked: the billing system is the authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(text.to_owned()))
        } else {
            Err(format!(
                "currency `{text}` must be an ISO 4217 code of three uppercase letters, like EUR"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pass on sale: access for `duration_secs` (60 s to 366 days) for `price`
/// minor units of the site's currency (more than zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "StoredPass")]
pub struct Pass {
    duration_secs: i64,
    price: i64,
}

/// A pass as stored (jsonb), checked again when read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPass {
    duration_secs: i64,
    price: i64,
}

impl TryFrom<StoredPass> for Pass {
    type Error = String;

    fn try_from(stored: StoredPass) -> Result<Self, String> {
        Pass::new(stored.duration_secs, stored.price)
    }
}

impl Pass {
    pub fn new(duration_secs: i64, price: i64) -> Result<Self, String> {
        if !(MIN_PASS_SECS..=MAX_PASS_SECS).contains(&duration_secs) {
            return Err(format!(
                "pass duration_secs {duration_secs} is outside {MIN_PASS_SECS}..={MAX_PASS_SECS} \
                 (one minute to 366 days)"
            ));
        }
        if price <= 0 {
            return Err(format!(
                "pass price {price} must be more than zero (minor units, e.g. cents)"
            ));
        }
        Ok(Pass {
            duration_secs,
            price,
        })
    }

    /// From JSON numbers, refusing fractions with a clear message (serde's
    /// own "expected i64" would not say what is wrong).
    pub fn from_json(
        duration_secs: &serde_json::Number,
        price: &serde_json::Number,
    ) -> Result<Self, String> {
        let whole = |n: &serde_json::Number, what: &str| {
            n.as_i64().ok_or_else(|| {
                format!("pass {what} {n} must be a whole number (prices are in minor units)")
            })
        };
        Pass::new(
            whole(duration_secs, "duration_secs")?,
            whole(price, "price")?,
        )
    }

    pub fn duration_secs(&self) -> i64 {
        self.duration_secs
    }

    pub fn price(&self) -> i64 {
        self.price
    }
}

/// A site as an operator describes it (the request body of `POST` and `PUT
/// /api/v1/sites`), before parsing.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteInput {
    /// The catalog (default `main`): 1-64 of `A-Za-z0-9._-`.
    pub catalog: Option<String>,
    /// Unique within the catalog: 1 to 100 printable characters.
    pub name: String,
    /// 1 to 100 domains: `example.com` covers itself and every name under it
    /// (`*.example.com` means the same). No domain may overlap another
    /// site's in the same catalog.
    pub domains: Vec<String>,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
    /// 1 to 10 passes, each of a different duration.
    pub passes: Vec<PassInput>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PassInput {
    /// 60 s to 366 days.
    #[schema(value_type = i64)]
    pub duration_secs: serde_json::Number,
    /// In minor units of the site's currency (cents), more than zero.
    #[schema(value_type = i64)]
    pub price: serde_json::Number,
}

/// A parsed site: a valid catalog name, display name, 1 to 100 domains that
/// do not overlap one another, a currency and 1 to 10 passes of distinct
/// durations (sorted by duration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    catalog: String,
    name: DisplayName,
    domains: Vec<DomainPattern>,
    currency: Currency,
    passes: Vec<Pass>,
}

impl SiteSpec {
    pub fn parse(input: &SiteInput) -> Result<Self, String> {
        let catalog = parse_catalog(input.catalog.as_deref().unwrap_or(DEFAULT_CATALOG))?;
        let name = DisplayName::parse(&input.name, "site")?;
        if input.domains.is_empty() || input.domains.len() > MAX_DOMAINS {
            return Err(format!(
                "a site has 1 to {MAX_DOMAINS} domains, not {}",
                input.domains.len()
            ));
        }
        let domains = input
            .domains
            .iter()
            .map(|d| DomainPattern::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some((a, b)) = overlap_within(&domains) {
            return Err(format!(
                "domains `{a}` and `{b}` of the site overlap (`example.com` already covers \
                 every name under it)"
            ));
        }
        let currency = Currency::parse(&input.currency)?;
        if input.passes.is_empty() || input.passes.len() > MAX_PASSES {
            return Err(format!(
                "a site has 1 to {MAX_PASSES} passes, not {}",
                input.passes.len()
            ));
        }
        let mut passes = input
            .passes
            .iter()
            .map(|p| Pass::from_json(&p.duration_secs, &p.price))
            .collect::<Result<Vec<_>, _>>()?;
        let mut durations = BTreeSet::new();
        for pass in &passes {
            if !durations.insert(pass.duration_secs) {
                return Err(format!(
                    "two passes last {} s; each pass needs its own duration",
                    pass.duration_secs
                ));
            }
        }
        passes.sort_by_key(|p| p.duration_secs);
        Ok(SiteSpec {
            catalog,
            name,
            domains,
            currency,
            passes,
        })
    }

    pub fn catalog(&self) -> &str {
        &self.catalog
    }

    pub fn name(&self) -> &DisplayName {
        &self.name
    }

    pub fn domains(&self) -> &[DomainPattern] {
        &self.domains
    }

    pub fn currency(&self) -> &Currency {
        &self.currency
    }

    pub fn passes(&self) -> &[Pass] {
        &self.passes
    }
}

/// The first pair of overlapping domains within one list.
fn overlap_within(domains: &[DomainPattern]) -> Option<(&DomainPattern, &DomainPattern)> {
    domains.iter().enumerate().find_map(|(i, a)| {
        domains[i + 1..]
            .iter()
            .find(|b| a.overlaps(b))
            .map(|b| (a, b))
    })
}

/// The first overlap between two sites' domains: (ours, theirs).
pub fn first_overlap<'a>(
    ours: &'a [DomainPattern],
    theirs: &'a [DomainPattern],
) -> Option<(&'a DomainPattern, &'a DomainPattern)> {
    ours.iter()
        .find_map(|a| theirs.iter().find(|b| a.overlaps(b)).map(|b| (a, b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn input(domains: serde_json::Value, passes: serde_json::Value) -> SiteInput {
        serde_json::from_value(json!({
            "name": "Stream+", "domains": domains, "currency": "EUR", "passes": passes
        }))
        .unwrap()
    }

    fn one_hour() -> serde_json::Value {
        json!([{"duration_secs": 3600, "price": 199}])
    }

    #[test]
    fn a_good_site_parses_with_its_passes_sorted() {
        let spec = SiteSpec::parse(&input(
            json!(["stream.example", "*.cdn.example"]),
            json!([{"duration_secs": 86400, "price": 499}, {"duration_secs": 3600, "price": 199}]),
        ))
        .unwrap();
        assert_eq!(spec.catalog(), "main");
        assert_eq!(spec.currency().as_str(), "EUR");
        let durations: Vec<_> = spec.passes().iter().map(Pass::duration_secs).collect();
        assert_eq!(durations, vec![3600, 86400]);
    }

    #[test]
    fn bad_sites_are_refused_with_the_reason() {
        let cases = [
            (input(json!([]), one_hour()), "1 to 100 domains"),
            (input(json!(["Stream.example"]), one_hour()), "not a domain"),
            (input(json!(["localhost"]), one_hour()), "two labels"),
            (
                input(json!(["a.example", "*.a.example"]), one_hour()),
                "overlap",
            ),
            (
                input(json!(["a.example", "x.a.example"]), one_hour()),
                "overlap",
            ),
            (input(json!(["a.example"]), json!([])), "1 to 10 passes"),
            (
                input(
                    json!(["a.example"]),
                    json!([{"duration_secs": 3600, "price": 0}]),
                ),
                "more than zero",
            ),
            (
                input(
                    json!(["a.example"]),
                    json!([{"duration_secs": 3600, "price": -5}]),
                ),
                "more than zero",
            ),
            (
                input(
                    json!(["a.example"]),
                    json!([{"duration_secs": 3600, "price": 1.5}]),
                ),
                "whole number",
            ),
            (
                input(
                    json!(["a.example"]),
                    json!([{"duration_secs": 59, "price": 1}]),
                ),
                "outside",
            ),
            (
                input(
                    json!(["a.example"]),
                    json!([{"duration_secs": 367 * 86400, "price": 1}]),
                ),
                "outside",
            ),
            (
                input(
                    json!(["a.example"]),
                    json!([{"duration_secs": 60, "price": 1}, {"duration_secs": 60, "price": 2}]),
                ),
                "own duration",
            ),
        ];
        for (case, why) in cases {
            let e = SiteSpec::parse(&case).unwrap_err();
            assert!(e.contains(why), "{e} (expected {why})");
        }
        let many = (0..101)
            .map(|i| format!("d{i}.example"))
            .collect::<Vec<_>>();
        assert!(SiteSpec::parse(&input(json!(many), one_hour())).is_err());
        let mut bad_currency = input(json!(["a.example"]), one_hour());
        bad_currency.currency = "eur".into();
        assert!(SiteSpec::parse(&bad_currency).is_err());
        let mut bad_catalog = input(json!(["a.example"]), one_hour());
        bad_catalog.catalog = Some("no spaces".into());
        assert!(SiteSpec::parse(&bad_catalog).is_err());
    }

    #[test]
    fn overlaps_between_sites_name_both_domains() {
        let p = |s: &str| DomainPattern::parse(s).unwrap();
        let ours = [p("a.example"), p("tv.b.example")];
        let theirs = [p("*.b.example")];
        assert_eq!(first_overlap(&ours, &theirs), Some((&ours[1], &theirs[0])));
        assert_eq!(first_overlap(&ours[..1], &theirs), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic_and_accept_only_valid_values(text in "\\PC{0,8}|[A-Z]{3}") {
            if let Ok(c) = Currency::parse(&text) {
                prop_assert!(c.as_str().len() == 3);
            }
            if let Ok(n) = DisplayName::parse(&text, "site") {
                prop_assert_eq!(n.as_str().trim(), n.as_str());
            }
        }

        #[test]
        fn passes_within_bounds_are_accepted(d in MIN_PASS_SECS..=MAX_PASS_SECS, p in 1i64..i64::MAX) {
            let pass = Pass::new(d, p).unwrap();
            let stored: Pass = serde_json::from_value(serde_json::to_value(pass).unwrap()).unwrap();
            prop_assert_eq!(stored, pass);
        }
    }
}
