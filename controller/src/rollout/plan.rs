//! Staged rollouts, the pure part: the plan an operator asks for (canary,
//! waves, thresholds), how the affected routers are split into waves, when a
//! wave passes or breaches, and which revision of a staged assignment each
//! router compiles. No I/O and no clock: `now` is a parameter.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::{Labels, Selector};
use crate::services::compiler::CompiledAssignment;

/// How the first wave is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Canary {
    /// The affected routers this selector matches (e.g. `canary=true`).
    Selector(Selector),
    /// This share of the affected routers, 0 < percent < 100.
    Percent(f64),
}

impl Canary {
    pub fn label(&self) -> String {
        match self {
            Canary::Selector(s) => format!("canary {}", s.as_str()),
            Canary::Percent(p) => format!("canary {}%", display_percent(*p)),
        }
    }
}

fn display_percent(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

/// When a wave passes, and when a rollout pauses itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Share of a wave's routers (offline ones left out) that must report
    /// the new version applied.
    pub min_applied_share: f64,
    /// Largest share of a wave's routers that may fail (roll back or refuse
    /// the new version); above it the rollout pauses.
    pub max_failed_share: f64,
    /// How long the pass condition must hold before the next wave.
    pub soak_secs: u32,
    /// A router still pending this long after its wave was released counts
    /// as offline (it may still apply later).
    pub offline_timeout_secs: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_applied_share: 0.9,
            max_failed_share: 0.0,
            soak_secs: 60,
            offline_timeout_secs: 600,
        }
    }
}

pub const MAX_SOAK_SECS: u32 = 86_400;
pub const MAX_OFFLINE_TIMEOUT_SECS: u32 = 604_800;
pub const MAX_WAVES: usize = 20;

/// A checked rollout plan: the canary, then cumulative percentages of the
/// affected routers, the last 100.
#[derive(Debug, Clone, PartialEq)]
pub struct WavePlan {
    pub canary: Canary,
    pub percents: Vec<f64>,
    pub policy: Policy,
}

impl WavePlan {
    pub fn new(canary: Canary, percents: Vec<f64>, policy: Policy) -> Result<Self, String> {
        if let Canary::Percent(p) = canary {
            if !(p > 0.0 && p < 100.0) {
                return Err(format!(
                    "the canary percentage must be above 0 and below 100, not {p}"
                ));
            }
        }
        if percents.is_empty() || percents.len() > MAX_WAVES {
            return Err(format!(
                "a rollout has 1 to {MAX_WAVES} waves after the canary, not {}",
                percents.len()
            ));
        }
        let mut previous = match canary {
            Canary::Percent(p) => p,
            Canary::Selector(_) => 0.0,
        };
        for &p in &percents {
            if !(p > previous && p <= 100.0) {
                return Err(format!(
                    "wave percentages must increase (after the canary) up to 100: {p} after {previous}"
                ));
            }
            previous = p;
        }
        if previous != 100.0 {
            return Err(format!("the last wave must be 100%, not {previous}%"));
        }
        let share = |v: f64| (0.0..=1.0).contains(&v);
        if !share(policy.min_applied_share) || !share(policy.max_failed_share) {
            return Err("min_applied_share and max_failed_share are between 0 and 1".into());
        }
        if policy.soak_secs > MAX_SOAK_SECS {
            return Err(format!("soak_secs is at most {MAX_SOAK_SECS}"));
        }
        if policy.offline_timeout_secs == 0
            || policy.offline_timeout_secs > MAX_OFFLINE_TIMEOUT_SECS
        {
            return Err(format!(
                "offline_timeout_secs is 1 to {MAX_OFFLINE_TIMEOUT_SECS}"
            ));
        }
        Ok(WavePlan {
            canary,
            percents,
            policy,
        })
    }

    /// Labels of the waves, canary first.
    pub fn labels(&self) -> Vec<String> {
        std::iter::once(self.canary.label())
            .chain(
                self.percents
                    .iter()
                    .map(|p| format!("{}%", display_percent(*p))),
            )
            .collect()
    }

    /// Splits the affected routers into waves: the canary, then each wave
    /// fills up to its cumulative share of all of them. The order within a
    /// percentage is a hash of the rollout and router ids: spread over the
    /// fleet, different for every rollout, the same on every replica.
    pub fn assign(&self, rollout: Uuid, routers: &[(Uuid, Labels)]) -> Vec<(Uuid, u32)> {
        let total = routers.len();
        let (mut canary, mut rest): (Vec<Uuid>, Vec<Uuid>) = match &self.canary {
            Canary::Selector(selector) => {
                let (a, b): (Vec<_>, Vec<_>) = routers
                    .iter()
                    .partition(|(_, labels)| selector.matches(labels));
                (
                    a.into_iter().map(|(id, _)| *id).collect(),
                    b.into_iter().map(|(id, _)| *id).collect(),
                )
            }
            Canary::Percent(_) => (Vec::new(), routers.iter().map(|(id, _)| *id).collect()),
        };
        rest.sort_by_cached_key(|id| spread_key(rollout, *id));
        if let Canary::Percent(p) = self.canary {
            let take = cumulative(p, total).min(rest.len());
            canary = rest.drain(..take).collect();
        }
        let mut out: Vec<(Uuid, u32)> = canary.into_iter().map(|id| (id, 0)).collect();
        let mut rest = rest.into_iter();
        for (index, &p) in self.percents.iter().enumerate() {
            let wave = u32::try_from(index + 1).expect("at most MAX_WAVES waves");
            let upto = cumulative(p, total).max(out.len());
            while out.len() < upto {
                match rest.next() {
                    Some(id) => out.push((id, wave)),
                    None => break,
                }
            }
        }
        // The last wave is 100%: everything left (rounding never strands one).
        let last = u32::try_from(self.percents.len()).expect("at most MAX_WAVES waves");
        out.extend(rest.map(|id| (id, last)));
        out
    }
}

/// The labels of the waves [`WavePlan::assign`] left without a router.
pub fn empty_waves(labels: &[String], assigned: &[(Uuid, u32)]) -> Vec<String> {
    labels
        .iter()
        .enumerate()
        .filter(|(index, _)| !assigned.iter().any(|(_, wave)| *wave as usize == *index))
        .map(|(_, label)| label.clone())
        .collect()
}

/// Routers in the first `percent` of `total`, at least one when the share is
/// above zero and there are routers.
fn cumulative(percent: f64, total: usize) -> usize {
    let n = (percent / 100.0 * total as f64).ceil() as usize;
    n.min(total)
}

fn spread_key(rollout: Uuid, router: Uuid) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(rollout.as_bytes());
    hash.update(router.as_bytes());
    hash.finalize().into()
}

/// A wave's routers by progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub routers: u32,
    pub waiting: u32,
    pub pending: u32,
    pub applied: u32,
    pub failed: u32,
    pub offline: u32,
}

impl Counts {
    pub fn add(&mut self, state: &str, n: u32) {
        self.routers += n;
        match state {
            "waiting" => self.waiting += n,
            "pending" => self.pending += n,
            "applied" => self.applied += n,
            "failed" => self.failed += n,
            _ => self.offline += n,
        }
    }
}

/// Several waves' counts together (a rollout's totals).
impl std::iter::Sum for Counts {
    fn sum<I: Iterator<Item = Counts>>(waves: I) -> Counts {
        waves.fold(Counts::default(), |t, w| Counts {
            routers: t.routers + w.routers,
            waiting: t.waiting + w.waiting,
            pending: t.pending + w.pending,
            applied: t.applied + w.applied,
            failed: t.failed + w.failed,
            offline: t.offline + w.offline,
        })
    }
}

/// What a released wave's counts mean now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// More failures than the policy allows: pause, with this reason.
    Breach(String),
    /// The pass condition does not hold (yet).
    NotYet,
    /// It holds, since this instant; the soak is not over.
    Soaking { since: DateTime<Utc> },
    /// It held for the whole soak: release the next wave (or complete).
    Pass,
}

/// Judges one released wave. `healthy_since` is when its pass condition
/// started holding (None: it did not), `accepted_failures` the failures an
/// operator accepted by resuming after a breach.
pub fn judge(
    wave: u32,
    counts: Counts,
    policy: &Policy,
    accepted_failures: u32,
    healthy_since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Verdict {
    let routers = f64::from(counts.routers);
    let new_failures = counts.failed.saturating_sub(accepted_failures);
    if f64::from(new_failures) > policy.max_failed_share * routers {
        return Verdict::Breach(format!(
            "wave {wave}: {} of {} routers failed ({:.0}% > {:.0}% allowed)",
            counts.failed,
            counts.routers,
            100.0 * f64::from(counts.failed) / routers,
            100.0 * policy.max_failed_share
        ));
    }
    let reachable = counts.routers - counts.offline;
    let applied_enough = reachable == 0
        || f64::from(counts.applied) >= policy.min_applied_share * f64::from(reachable);
    if !applied_enough || counts.waiting > 0 {
        return Verdict::NotYet;
    }
    let since = healthy_since.unwrap_or(now);
    if now - since >= chrono::Duration::seconds(i64::from(policy.soak_secs)) {
        Verdict::Pass
    } else {
        Verdict::Soaking { since }
    }
}

/// The assignments with an active rollout: what routers not yet released
/// compile instead (None: nothing, the assignment is new), and which
/// routers are released.
#[derive(Debug, Default)]
pub struct Staged {
    /// Assignment id -> its previous form (None: the assignment is new).
    pub previous: HashMap<Uuid, Option<CompiledAssignment>>,
    /// Router -> the staged assignments it is released to.
    pub released: HashMap<Uuid, HashSet<Uuid>>,
}

impl Staged {
    /// The assignments in force on `router`: each staged assignment as the
    /// router's wave has it, the others as they are.
    pub fn in_force<'a>(
        &'a self,
        router: Uuid,
        assignments: &'a [CompiledAssignment],
    ) -> impl Iterator<Item = &'a CompiledAssignment> + Clone + 'a {
        let released = self.released.get(&router);
        assignments
            .iter()
            .filter_map(move |a| match self.previous.get(&a.id) {
                None => Some(a),
                Some(_) if released.is_some_and(|r| r.contains(&a.id)) => Some(a),
                Some(previous) => previous.as_ref(),
            })
    }

    /// Every form a staged assignment may take (for loading what they need).
    pub fn previous_forms(&self) -> impl Iterator<Item = &CompiledAssignment> {
        self.previous.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::parse(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    }

    fn routers(n: usize, canary_every: usize) -> Vec<(Uuid, Labels)> {
        (0..n)
            .map(|i| {
                let id = Uuid::from_u128(i as u128 + 1);
                if canary_every > 0 && i % canary_every == 0 {
                    (id, labels(&[("canary", "true")]))
                } else {
                    (id, labels(&[]))
                }
            })
            .collect()
    }

    fn wave_sizes(assigned: &[(Uuid, u32)], waves: usize) -> Vec<usize> {
        let mut sizes = vec![0; waves];
        for (_, w) in assigned {
            sizes[*w as usize] += 1;
        }
        sizes
    }

    #[test]
    fn plans_are_checked() {
        let p = Policy::default();
        assert!(WavePlan::new(Canary::Percent(0.0), vec![100.0], p).is_err());
        assert!(WavePlan::new(Canary::Percent(10.0), vec![5.0, 100.0], p).is_err());
        assert!(WavePlan::new(Canary::Percent(10.0), vec![50.0], p).is_err());
        assert!(WavePlan::new(Canary::Percent(10.0), vec![], p).is_err());
        let bad_share = Policy {
            max_failed_share: 1.5,
            ..p
        };
        assert!(WavePlan::new(Canary::Percent(10.0), vec![100.0], bad_share).is_err());
        let plan = WavePlan::new(Canary::Percent(10.0), vec![50.0, 100.0], p).unwrap();
        assert_eq!(plan.labels(), ["canary 10%", "50%", "100%"]);
    }

    #[test]
    fn a_label_canary_then_growing_percentages() {
        let plan = WavePlan::new(
            Canary::Selector(Selector::parse("canary=true").unwrap()),
            vec![50.0, 100.0],
            Policy::default(),
        )
        .unwrap();
        let all = routers(100, 10);
        let assigned = plan.assign(Uuid::from_u128(7), &all);
        assert_eq!(wave_sizes(&assigned, 3), [10, 40, 50]);
        for (id, wave) in &assigned {
            let canary = all.iter().find(|(r, _)| r == id).unwrap().1.get("canary");
            assert_eq!(*wave == 0, canary.is_some());
        }
    }

    #[test]
    fn percent_canaries_differ_between_rollouts() {
        let plan = WavePlan::new(Canary::Percent(5.0), vec![100.0], Policy::default()).unwrap();
        let all = routers(200, 0);
        let canary = |seed| -> HashSet<Uuid> {
            plan.assign(Uuid::from_u128(seed), &all)
                .into_iter()
                .filter(|(_, w)| *w == 0)
                .map(|(id, _)| id)
                .collect()
        };
        assert_eq!(canary(1).len(), 10);
        assert_eq!(canary(1), canary(1));
        assert_ne!(canary(1), canary(2));
    }

    proptest! {
        #[test]
        fn every_router_lands_in_exactly_one_wave_and_waves_fill_in_order(
            n in 0usize..300,
            canary in 1u32..50,
            mid in 50u32..100,
        ) {
            let plan = WavePlan::new(
                Canary::Percent(f64::from(canary)),
                vec![f64::from(mid), 100.0],
                Policy::default(),
            ).unwrap();
            let all = routers(n, 0);
            let assigned = plan.assign(Uuid::from_u128(3), &all);
            prop_assert_eq!(assigned.len(), n);
            let ids: HashSet<Uuid> = assigned.iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(ids.len(), n);
            let sizes = wave_sizes(&assigned, 3);
            prop_assert!(sizes[0] <= cumulative(f64::from(canary), n));
            prop_assert!(sizes[0] + sizes[1] <= cumulative(f64::from(mid), n).max(sizes[0]));
            if n > 0 {
                prop_assert!(sizes[0] >= 1);
            }
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn counts(pending: u32, applied: u32, failed: u32, offline: u32) -> Counts {
        Counts {
            routers: pending + applied + failed + offline,
            waiting: 0,
            pending,
            applied,
            failed,
            offline,
        }
    }

    #[test]
    fn a_wave_passes_after_holding_for_the_soak() {
        let policy = Policy {
            min_applied_share: 0.9,
            max_failed_share: 0.1,
            soak_secs: 30,
            offline_timeout_secs: 60,
        };
        assert_eq!(
            judge(1, counts(2, 8, 0, 0), &policy, 0, None, at(0)),
            Verdict::NotYet
        );
        assert_eq!(
            judge(1, counts(1, 9, 0, 0), &policy, 0, None, at(5)),
            Verdict::Soaking { since: at(5) }
        );
        assert_eq!(
            judge(1, counts(1, 9, 0, 0), &policy, 0, Some(at(5)), at(20)),
            Verdict::Soaking { since: at(5) }
        );
        assert_eq!(
            judge(1, counts(0, 10, 0, 0), &policy, 0, Some(at(5)), at(35)),
            Verdict::Pass
        );
        // Offline routers are counted apart: 9 of the 9 reachable applied.
        assert_eq!(
            judge(1, counts(0, 9, 0, 1), &policy, 0, None, at(0)),
            Verdict::Soaking { since: at(0) }
        );
        // A whole wave offline does not block forever.
        assert_eq!(
            judge(
                1,
                counts(0, 0, 0, 3),
                &Policy {
                    soak_secs: 0,
                    ..policy
                },
                0,
                None,
                at(0)
            ),
            Verdict::Pass
        );
        // An empty wave passes.
        assert_eq!(
            judge(
                1,
                Counts::default(),
                &Policy {
                    soak_secs: 0,
                    ..policy
                },
                0,
                None,
                at(0)
            ),
            Verdict::Pass
        );
    }

    #[test]
    fn failures_above_the_share_breach_unless_accepted() {
        let policy = Policy {
            min_applied_share: 0.5,
            max_failed_share: 0.0,
            soak_secs: 0,
            offline_timeout_secs: 60,
        };
        match judge(0, counts(0, 3, 1, 0), &policy, 0, None, at(0)) {
            Verdict::Breach(reason) => {
                assert!(reason.contains("1 of 4 routers failed"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            judge(0, counts(0, 3, 1, 0), &policy, 1, None, at(0)),
            Verdict::Pass
        );
    }

    #[test]
    fn unreleased_routers_keep_the_previous_form() {
        let selector = Selector::parse("*").unwrap();
        let form = |id: u128, spec: &str| CompiledAssignment {
            id: Uuid::from_u128(id),
            selector: selector.clone(),
            created_at: 0,
            spec: crate::services::ServiceSpec::parse(
                crate::services::ServiceKind::FlowBlock,
                &serde_json::json!({"action": "drop", "flows": [{"dst": spec}]}),
            )
            .unwrap(),
        };
        let assignments = vec![
            form(1, "192.0.2.1/32"),
            form(2, "192.0.2.2/32"),
            form(3, "192.0.2.3/32"),
        ];
        let mut staged = Staged::default();
        staged
            .previous
            .insert(Uuid::from_u128(2), Some(form(2, "198.51.100.2/32")));
        staged.previous.insert(Uuid::from_u128(3), None);
        let released = Uuid::from_u128(100);
        let waiting = Uuid::from_u128(101);
        staged
            .released
            .insert(released, [Uuid::from_u128(2), Uuid::from_u128(3)].into());
        let specs = |router| -> Vec<String> {
            staged
                .in_force(router, &assignments)
                .map(|a| format!("{:?}", a.spec))
                .collect()
        };
        let now = specs(released);
        assert_eq!(now.len(), 3);
        assert!(now[1].contains("192.0.2.2"));
        let before = specs(waiting);
        assert_eq!(before.len(), 2, "the new assignment is not there yet");
        assert!(before[1].contains("198.51.100.2"));
    }
}
