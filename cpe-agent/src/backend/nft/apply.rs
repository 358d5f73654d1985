//! Running `nft` in the agent's network namespace: check the planned
//! structure with `nft -c`, read what the resolver added to DNS-filled sets,
//! apply with `nft -f` (one transaction), verify against a terse listing,
//! read counters and learned endpoints. Also probes whether the kernel has
//! nft's `queue`: where it does not, `classify` rules (and the name reader's
//! and the portal's) mark the packet and an iptables NFQUEUE rule on that
//! mark queues it (`MarkQueue`).

use anyhow::{bail, Context};
use isdf_api::{Action, Firewall, RuleCounter};

use super::listing::{
    expected_shape, listed_shape, parse_carried, parse_endpoints, parse_json, without_ended_rules,
};
use super::plan::{in_force, plan_script, plan_with, PlanInputs, Queueing, CLASSIFY_MARK, TABLE};
use super::sets::{addr_type, dns_filled, Carried, Elements, MAX_TIMEOUT_SECS};
use crate::backend::planning::{NAMES_QUEUE, NAME_QUEUE_MARK, PORTAL_MARK, PORTAL_QUEUE};
use crate::backend::{FirewallBackend, Interfaces, LearnedEndpoint, CLASSIFY_QUEUE};
use crate::sys::processes;

/// `ct packets` needs conntrack accounting: without it the expression never
/// matches and signatures would silently stop working. OpenWrt turns it on
/// by default; the agent makes sure.
fn enable_conntrack_accounting() -> anyhow::Result<()> {
    const PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1").with_context(|| format!("turning on conntrack accounting ({PATH})"))
}

/// An iptables rule that queues packets our rules marked, where nft has no
/// queue of its own (`Queueing::Mark`).
struct MarkQueue {
    /// The table and chain: the position relative to our `forward` chain
    /// (mangle runs before it, filter after).
    table: &'static str,
    mark: u32,
    queue: u16,
    /// `--queue-bypass`: with no agent listening the packet passes (else it
    /// is dropped).
    bypass: bool,
    comment: &'static str,
}

const MARK_QUEUES: [MarkQueue; 3] = [
    MarkQueue {
        table: "filter",
        mark: CLASSIFY_MARK,
        queue: CLASSIFY_QUEUE,
        bypass: true,
        comment: "isdf-classify",
    },
    MarkQueue {
        table: "mangle",
        mark: NAME_QUEUE_MARK,
        queue: NAMES_QUEUE,
        bypass: true,
        comment: "isdf-names",
    },
    MarkQueue {
        table: "filter",
        mark: PORTAL_MARK,
        queue: PORTAL_QUEUE,
        bypass: false,
        comment: "isdf-portal",
    },
];

/// Which packets `firewall` sends to the agent: (classify, names, portal).
fn queued(firewall: &Firewall) -> [bool; 3] {
    let action = |a: Action| firewall.rules.iter().any(|r| r.action == a);
    [
        action(Action::Classify),
        firewall.flow_names.is_some(),
        action(Action::Portal),
    ]
}

/// Runs `nft` in the agent's network namespace.
pub struct NftBackend {
    program: String,
    /// Probed at the first apply that needs it.
    queueing: std::sync::OnceLock<Queueing>,
    interfaces: Interfaces,
}

impl NftBackend {
    /// A backend for a router with no interfaces configured (rules matching
    /// `in_interface` are refused).
    pub fn new() -> Self {
        Self::with_interfaces(Interfaces::default())
    }

    /// A backend whose `in_interface` roles stand for `interfaces`.
    pub fn with_interfaces(interfaces: Interfaces) -> Self {
        NftBackend {
            program: std::env::var("ISDF_NFT").unwrap_or_else(|_| "nft".to_owned()),
            queueing: std::sync::OnceLock::new(),
            interfaces,
        }
    }

    /// What the resolver added to the sets `firewall`'s DNS policy fills,
    /// read from the kernel sets of the same name and type (absent ones
    /// start empty).
    fn read_dns_filled(&self, firewall: &Firewall) -> anyhow::Result<Carried> {
        let mut carried = Carried::new();
        let dns_filled = dns_filled(firewall);
        for set in firewall
            .sets
            .iter()
            .filter(|s| dns_filled.contains(s.name.as_str()))
        {
            let name = set.name.as_str();
            let out = match processes::run(
                &self.program,
                &["-j", "list", "set", "inet", TABLE, name],
                "",
            ) {
                Ok(out) => out,
                Err(e) if format!("{e:#}").contains("No such file or directory") => continue,
                // Not knowing what the resolver added would empty the set:
                // better not to replace the ruleset at all.
                Err(e) => return Err(e.context(format!("reading DNS-filled set {name}"))),
            };
            let json = parse_json(&out)?;
            let elements = parse_carried(&json, addr_type(set.key.family()));
            if !elements.is_empty() {
                carried.insert(name.to_owned(), elements);
            }
        }
        Ok(carried)
    }

    /// Whether this kernel has nft's `queue` (a dry run, nothing changes).
    fn queueing(&self) -> Queueing {
        *self.queueing.get_or_init(|| {
            let probe = format!(
                "table inet {TABLE}_probe {{\n\tchain c {{\n\t\ttype filter hook forward priority 0;\n\t\tqueue num {CLASSIFY_QUEUE} bypass\n\t}}\n}}\n"
            );
            if processes::run(&self.program, &["-c", "-f", "-"], &probe).is_ok() {
                Queueing::Native
            } else {
                tracing::info!("this kernel has no nft queue: classify rules mark packets for an iptables NFQUEUE rule");
                Queueing::Mark
            }
        })
    }

    /// Adds or removes the iptables rules that queue marked packets (only
    /// with `Queueing::Mark`), for IPv4 and IPv6: `wanted` in the order of
    /// `MARK_QUEUES`.
    fn sync_mark_queues(&self, wanted: [bool; 3]) -> anyhow::Result<()> {
        for (spec, wanted) in MARK_QUEUES.iter().zip(wanted) {
            let (queue, mark) = (
                spec.queue.to_string(),
                format!("{:#x}/{:#x}", spec.mark, spec.mark),
            );
            for tool in ["iptables", "ip6tables"] {
                let rule = |op: &'static str| {
                    let mut args = vec!["-w", "-t", spec.table, op, "FORWARD"];
                    args.extend(["-m", "mark", "--mark", &mark, "-m", "comment"]);
                    args.extend(["--comment", spec.comment, "-j", "NFQUEUE"]);
                    args.extend(["--queue-num", &queue]);
                    if spec.bypass {
                        args.push("--queue-bypass");
                    }
                    processes::run(tool, &args, "")
                };
                let present = rule("-C").is_ok();
                if wanted && !present {
                    rule("-I").with_context(|| {
                        format!("adding the {tool} NFQUEUE rule {}", spec.comment)
                    })?;
                } else if !wanted && present {
                    rule("-D").with_context(|| {
                        format!("removing the {tool} NFQUEUE rule {}", spec.comment)
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Lists our table without set elements (terse): what verification and
    /// counters need, at a fraction of a full listing's cost.
    fn list_terse(&self) -> anyhow::Result<Option<serde_json::Value>> {
        match processes::run(
            &self.program,
            &["-t", "-j", "list", "table", "inet", TABLE],
            "",
        ) {
            Ok(out) => Ok(Some(parse_json(&out)?)),
            Err(e) if format!("{e:#}").contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Default for NftBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl FirewallBackend for NftBackend {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&mut self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        if firewall.flow_names.is_some()
            || firewall
                .rules
                .iter()
                .any(|r| r.matches.first_packets.is_some())
        {
            enable_conntrack_accounting()?;
        }
        let queued = queued(firewall);
        // Without queued packets the queueing does not show in the script.
        let queueing = if queued.contains(&true) {
            self.queueing()
        } else {
            Queueing::Native
        };
        let mut inputs = PlanInputs {
            interfaces: self.interfaces.clone(),
            queueing,
            carried: Carried::new(),
        };
        let structure = plan_script(firewall, now_ms, Elements::Omit, &inputs)?;
        processes::run(&self.program, &["-c", "-f", "-"], &structure)
            .context("nft rejected the planned ruleset (check)")?;
        // Read as late as possible: what the resolver adds between this read
        // and the transaction below is lost (it adds it again on the
        // client's next query, which the TTL cap keeps near).
        inputs.carried = self.read_dns_filled(firewall)?;
        processes::run(
            &self.program,
            &["-f", "-"],
            &plan_with(firewall, now_ms, &inputs)?,
        )
        .context("applying the ruleset with nft -f")?;
        if self.queueing.get() == Some(&Queueing::Mark) {
            self.sync_mark_queues(queued)?;
        }
        Ok(())
    }

    /// Checks our table, its sets, chains and rules are what the plan made.
    /// Set elements are not compared: they arrive in the same transaction as
    /// the rules, listing them costs as much as loading them, and the sets
    /// DNS fills hold what the resolver added besides. Rules whose `until`
    /// came after the apply may still be listed.
    fn verify(&self, firewall: &Firewall, now_ms: i64) -> anyhow::Result<()> {
        let Some(json) = self.list_terse()? else {
            bail!("table inet {TABLE} is missing");
        };
        let (listed, _) = listed_shape(&json)?;
        let listed = without_ended_rules(listed, firewall, now_ms);
        let inputs = PlanInputs {
            interfaces: self.interfaces.clone(),
            ..PlanInputs::default()
        };
        let expected = expected_shape(firewall, now_ms, &inputs)?;
        if listed.chains != expected.chains {
            bail!(
                "chains differ: kernel has {:?}, expected {:?}",
                listed.chains,
                expected.chains
            );
        }
        if listed.sets != expected.sets {
            bail!(
                "sets differ: kernel has {:?}, expected {:?}",
                listed.sets,
                expected.sets
            );
        }
        Ok(())
    }

    /// The earliest of: when an element's timeout first fits the kernel,
    /// and when a rule's `until` comes (the kernel stops matching it by
    /// itself; the re-plan only leaves it out).
    fn next_reapply(&self, firewall: &Firewall, now_ms: i64) -> Option<i64> {
        let max = i64::try_from(MAX_TIMEOUT_SECS).unwrap_or(i64::MAX);
        let now = now_ms.div_euclid(1000);
        let long_timeouts = firewall
            .sets
            .iter()
            .flat_map(|s| &s.elements)
            .filter_map(|e| e.expires_at)
            .filter(|&e| e - now > max)
            .map(|e| e - max);
        let untils = firewall
            .rules
            .iter()
            .filter(|r| in_force(r, now_ms))
            .filter_map(|r| r.matches.until);
        long_timeouts.chain(untils).min()
    }

    fn learned_endpoints(&self, firewall: &Firewall) -> anyhow::Result<Vec<LearnedEndpoint>> {
        let mut learned = Vec::new();
        for set in firewall.sets.iter().filter(|s| s.key.is_endpoint()) {
            let out = processes::run(
                &self.program,
                &["-j", "list", "set", "inet", TABLE, set.name.as_str()],
                "",
            )?;
            let json = parse_json(&out)?;
            learned.extend(parse_endpoints(set.name.as_str(), &json));
        }
        Ok(learned)
    }

    fn forget_endpoint(&self, firewall: &Firewall, endpoint: &isdf_api::Endpoint) {
        let sets = firewall
            .sets
            .iter()
            .filter(|s| s.key.is_endpoint() && s.key.family() == endpoint.family());
        for set in sets {
            let element = format!(
                "{{ {} . {} . {} }}",
                endpoint.addr,
                endpoint.protocol.number(),
                endpoint.port
            );
            // Absent (never learned by the kernel, or expired) is fine.
            let _ = processes::run(
                &self.program,
                &[
                    "delete",
                    "element",
                    "inet",
                    TABLE,
                    set.name.as_str(),
                    &element,
                ],
                "",
            );
        }
    }

    fn counters(&self) -> anyhow::Result<Vec<RuleCounter>> {
        match self.list_terse()? {
            Some(json) => Ok(listed_shape(&json)?.1),
            None => Ok(Vec::new()),
        }
    }

    fn remove(&mut self) -> anyhow::Result<()> {
        if self.queueing.get() == Some(&Queueing::Mark) {
            self.sync_mark_queues([false; 3])?;
        }
        processes::run(
            &self.program,
            &["-f", "-"],
            &format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"),
        )
        .map(drop)
    }
}
