//! Packing interval elements into kernel sets the kernel accepts.
//!
//! An nftables interval set refuses an element whose start or end point lies
//! inside an element it already holds ("conflicting intervals", or `EEXIST`
//! from the concatenation set type), yet overlapping patterns are normal in a
//! config: two services may block `198.51.100.0/24` and `198.51.100.2`. So the
//! planner first drops elements another element covers for at least as long,
//! then packs the rest greedily into layers whose elements never touch each
//! other's corners; each layer becomes its own kernel set and rule. Every set
//! of one config rule has the same action, so a packet matching any layer
//! gets the rule's verdict, exactly as with one set.

use isdf_api::{ElementValue, FlowPattern, Prefix, SetElement};

/// An element as a box: an inclusive range per dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bounds(Vec<(u128, u128)>);

fn prefix_range(p: &Prefix) -> (u128, u128) {
    let net = p.net();
    let (lo, hi): (u128, u128) = match (net.network(), net.broadcast()) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
            (u32::from(a).into(), u32::from(b).into())
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
        _ => unreachable!("a prefix has one family"),
    };
    (lo, hi)
}

fn flow_bounds(f: &FlowPattern) -> Bounds {
    let proto = f
        .protocol
        .map_or((0, 255), |p| (p.number().into(), p.number().into()));
    Bounds(vec![
        proto,
        prefix_range(&f.src),
        (f.sport.first().into(), f.sport.last().into()),
        prefix_range(&f.dst),
        (f.dport.first().into(), f.dport.last().into()),
    ])
}

fn bounds(element: &SetElement) -> Bounds {
    match &element.value {
        ElementValue::Addr(p) => Bounds(vec![prefix_range(p)]),
        ElementValue::Flow(f) => flow_bounds(f),
        // Endpoint sets are hash sets: never layered.
        ElementValue::Endpoint(_) => Bounds(Vec::new()),
    }
}

impl Bounds {
    fn contains(&self, other: &Bounds) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .all(|(a, b)| a.0 <= b.0 && b.1 <= a.1)
    }

    fn holds_point(&self, point: impl Iterator<Item = u128>) -> bool {
        self.0.iter().zip(point).all(|(r, p)| r.0 <= p && p <= r.1)
    }

    fn start(&self) -> impl Iterator<Item = u128> + '_ {
        self.0.iter().map(|r| r.0)
    }

    fn end(&self) -> impl Iterator<Item = u128> + '_ {
        self.0.iter().map(|r| r.1)
    }

    /// Whether either box holds a corner (start or end point) of the other.
    fn conflicts(&self, other: &Bounds) -> bool {
        self.holds_point(other.start())
            || self.holds_point(other.end())
            || other.holds_point(self.start())
            || other.holds_point(self.end())
    }
}

/// Expiry order: `None` (no expiry) lasts longest.
fn lasts_at_least(a: Option<i64>, b: Option<i64>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x >= y,
    }
}

/// Packs `elements` into layers the kernel accepts as interval sets.
pub fn layers<'a>(elements: &[&'a SetElement]) -> Vec<Vec<&'a SetElement>> {
    let boxes: Vec<Bounds> = elements.iter().map(|e| bounds(e)).collect();
    // Drop an element when another covers it for at least as long; among
    // identical boxes keep the first of the longest-lasting ones.
    let kept: Vec<usize> = (0..elements.len())
        .filter(|&i| {
            !(0..elements.len()).any(|j| {
                j != i
                    && boxes[j].contains(&boxes[i])
                    && lasts_at_least(elements[j].expires_at, elements[i].expires_at)
                    && (boxes[j] != boxes[i]
                        || elements[j].expires_at != elements[i].expires_at
                        || j < i)
            })
        })
        .collect();
    let mut layers: Vec<Vec<usize>> = Vec::new();
    for i in kept {
        match layers
            .iter_mut()
            .find(|layer| layer.iter().all(|&j| !boxes[i].conflicts(&boxes[j])))
        {
            Some(layer) => layer.push(i),
            None => layers.push(vec![i]),
        }
    }
    layers
        .into_iter()
        .map(|layer| layer.into_iter().map(|i| elements[i]).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(json: &str, expires_at: Option<i64>) -> SetElement {
        SetElement {
            value: ElementValue::Flow(serde_json::from_str(json).unwrap()),
            expires_at,
        }
    }

    fn addr(text: &str) -> SetElement {
        SetElement {
            value: ElementValue::Addr(Prefix::parse(text).unwrap()),
            expires_at: None,
        }
    }

    #[test]
    fn covered_elements_are_dropped_unless_they_outlast_the_cover() {
        let wide = flow(
            r#"{"protocol":"tcp","src":"0.0.0.0/0","dst":"198.51.100.0/24","dport":9000}"#,
            None,
        );
        let narrow = flow(
            r#"{"protocol":"tcp","src":"0.0.0.0/0","dst":"198.51.100.2","dport":9000}"#,
            None,
        );
        assert_eq!(layers(&[&wide, &narrow]), vec![vec![&wide]]);

        let wide_short = flow(
            r#"{"protocol":"tcp","src":"0.0.0.0/0","dst":"198.51.100.0/24","dport":9000}"#,
            Some(10),
        );
        let got = layers(&[&wide_short, &narrow]);
        assert_eq!(
            got,
            vec![vec![&wide_short], vec![&narrow]],
            "the permanent narrow block must survive the timed wide one"
        );
    }

    #[test]
    fn identical_elements_keep_the_longest_expiry() {
        let a = flow(
            r#"{"protocol":"udp","src":"0.0.0.0/0","dst":"0.0.0.0/0","dport":53}"#,
            Some(5),
        );
        let b = flow(
            r#"{"protocol":"udp","src":"0.0.0.0/0","dst":"0.0.0.0/0","dport":53}"#,
            Some(9),
        );
        let c = b.clone();
        assert_eq!(layers(&[&a, &b, &c]), vec![vec![&b]]);
    }

    #[test]
    fn partial_overlaps_go_to_separate_layers_and_disjoint_ones_share() {
        let a = flow(
            r#"{"protocol":"tcp","src":"0.0.0.0/0","dst":"0.0.0.0/0","dport":"8000-9000"}"#,
            None,
        );
        let b = flow(
            r#"{"protocol":"tcp","src":"0.0.0.0/0","dst":"0.0.0.0/0","dport":"9000-9500"}"#,
            None,
        );
        let c = flow(
            r#"{"protocol":"tcp","src":"0.0.0.0/0","dst":"0.0.0.0/0","dport":"100-200"}"#,
            None,
        );
        assert_eq!(layers(&[&a, &b, &c]), vec![vec![&a, &c], vec![&b]]);
        let (x, y) = (addr("10.0.0.0/8"), addr("10.1.0.0/16"));
        assert_eq!(layers(&[&x, &y]), vec![vec![&x]]);
        let z = addr("192.0.2.0/24");
        assert_eq!(layers(&[&x, &z]), vec![vec![&x, &z]]);
    }
}
