//! nftables backend: the agent's own `table inet isdf`, replaced as one
//! `nft -f` transaction, so the kernel switches from the old ruleset to the
//! new one at once or not at all.
//!
//! Element expiries become nft element timeouts: they leave the set on time
//! even if the agent is not running.
//!
//! Each flow set of the config becomes two kernel sets: exact 5-tuples go to
//! a hash set (`<name>`), patterns with prefixes, ranges or "any" go to an
//! interval set (`<name>_R`; the uppercase suffix cannot collide with a config
//! name). Interval sets of concatenations cost nft about six times more per
//! element to load than hash sets, and timed 5-tuple blocks are the bulk case.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context};
use isdf_api::{
    Action, Chain, ElementValue, Family, Firewall, FlowPattern, Match, PayloadMatch, PortRange,
    Prefix, Protocol, Rule, RuleCounter, Set, SetElement, SetKey,
};

use super::{
    exec, interval_layers, remaining_ms, FirewallBackend, LearnedEndpoint, CLASSIFY_QUEUE,
};

pub const TABLE: &str = "isdf";
/// Our chains run just before fw4's (priority filter = 0), so a block here
/// wins over an accept there.
const CHAIN_PRIORITY: &str = "filter - 10";
/// Longest element timeout written to the kernel (nft refuses values of a few
/// months). An element lasting longer goes in without a timeout, and the agent
/// re-applies when its remaining time fits (see `next_reapply`).
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
/// Suffix of the interval half of a flow set.
const RANGES_SUFFIX: &str = "_R";

/// Whether to write set elements into a script. The pre-flight `nft -c` check
/// runs on the structure only: element values are typed by the planner, and
/// loading them is part of the all-or-nothing transaction anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elements {
    Include,
    Omit,
}

/// Plans the complete nft script that replaces our table with `firewall` as
/// of `now_ms` (Unix milliseconds: timeouts end to the millisecond).
///
/// The script first makes sure the table exists, then deletes and recreates
/// it inside the same transaction: no moment exists with a half ruleset.
pub fn plan(firewall: &Firewall, now_ms: i64) -> String {
    plan_with(firewall, now_ms, Queueing::Native)
}

/// How `classify` rules hand packets to the agent's classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queueing {
    /// nft's `queue` statement with `bypass` (the kernel has nft_queue).
    Native,
    /// The kernel lacks nft_queue: the rule marks the packet (one bit,
    /// `CLASSIFY_MARK`) and an iptables `NFQUEUE --queue-bypass` rule on
    /// that mark, after our chain, queues it.
    Mark,
}

/// The packet mark bit of `Queueing::Mark`.
pub const CLASSIFY_MARK: u32 = 0x4000_0000;

/// `plan` for kernels with or without nft_queue.
pub fn plan_with(firewall: &Firewall, now_ms: i64, queueing: Queueing) -> String {
    plan_script(firewall, now_ms, Elements::Include, queueing)
}

fn plan_script(firewall: &Firewall, now_ms: i64, elements: Elements, queueing: Queueing) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    let layout = layout(firewall);
    for kernel_set in layout.values().flatten() {
        plan_set(&mut s, kernel_set, now_ms, elements);
    }
    for chain in Chain::FILTER {
        let _ = writeln!(s, "\tchain {} {{", chain.name());
        let _ = writeln!(
            s,
            "\t\ttype filter hook {} priority {CHAIN_PRIORITY}; policy accept;",
            chain.name()
        );
        for rule in firewall.rules.iter().filter(|r| r.chain == chain) {
            for line in rule_lines(rule, &firewall.sets, &layout, queueing) {
                let _ = writeln!(s, "\t\t{line}");
            }
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// A set as the kernel holds it.
struct KernelSet<'a> {
    name: String,
    type_expr: &'static str,
    interval: bool,
    /// Rules add elements at run time (endpoint sets).
    dynamic: bool,
    elements: Vec<&'a SetElement>,
}

/// Most elements rules may add to an endpoint set.
const DYNAMIC_SET_SIZE: usize = 65_536;

fn is_host(p: &Prefix) -> bool {
    p.net().prefix_len() == p.net().max_prefix_len()
}

fn is_exact(f: &FlowPattern) -> bool {
    f.protocol.is_some_and(Protocol::has_ports)
        && is_host(&f.src)
        && is_host(&f.dst)
        && f.sport.first() == f.sport.last()
        && f.dport.first() == f.dport.last()
}

/// Kernel sets of every config set, by config set name.
type Layout<'a> = BTreeMap<&'a str, Vec<KernelSet<'a>>>;

fn layout(firewall: &Firewall) -> Layout<'_> {
    firewall
        .sets
        .iter()
        .map(|set| (set.name.as_str(), kernel_sets(set)))
        .collect()
}

/// Keeps one of identical elements, the one lasting longest.
fn dedup_exact(elements: Vec<&SetElement>) -> Vec<&SetElement> {
    let mut by_value: BTreeMap<&FlowPattern, &SetElement> = BTreeMap::new();
    for element in elements {
        let ElementValue::Flow(flow) = &element.value else {
            continue;
        };
        by_value
            .entry(flow)
            .and_modify(|kept| {
                let longer = match (kept.expires_at, element.expires_at) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(a), Some(b)) => b > a,
                };
                if longer {
                    *kept = element;
                }
            })
            .or_insert(element);
    }
    by_value.into_values().collect()
}

/// The kernel sets standing for one config set: for a flow set, a hash set of
/// exact 5-tuples plus interval layers (`_R`, `_R1`, ...); for an address
/// set, interval layers (the first keeps the set's own name). There is always
/// at least one interval set, so rules never lose their set.
fn kernel_sets(set: &Set) -> Vec<KernelSet<'_>> {
    let flow_type = |family| match family {
        Family::Ipv4 => "inet_proto . ipv4_addr . inet_service . ipv4_addr . inet_service",
        Family::Ipv6 => "inet_proto . ipv6_addr . inet_service . ipv6_addr . inet_service",
    };
    if set.key.is_endpoint() {
        return vec![KernelSet {
            name: set.name.to_string(),
            type_expr: match set.key.family() {
                Family::Ipv4 => "ipv4_addr . inet_proto . inet_service",
                Family::Ipv6 => "ipv6_addr . inet_proto . inet_service",
            },
            interval: false,
            dynamic: true,
            elements: set.elements.iter().collect(),
        }];
    }
    let (type_expr, mut sets, ranges, first_layer_name) = match set.key {
        SetKey::Ipv4Addr | SetKey::Ipv6Addr => (
            if set.key == SetKey::Ipv4Addr {
                "ipv4_addr"
            } else {
                "ipv6_addr"
            },
            Vec::new(),
            set.elements.iter().collect::<Vec<_>>(),
            set.name.to_string(),
        ),
        SetKey::Ipv4Flow | SetKey::Ipv6Flow | SetKey::Ipv4Endpoint | SetKey::Ipv6Endpoint => {
            let (exact, ranges): (Vec<_>, Vec<_>) = set
                .elements
                .iter()
                .partition(|e| matches!(&e.value, ElementValue::Flow(f) if is_exact(f)));
            let hash = KernelSet {
                name: set.name.to_string(),
                type_expr: flow_type(set.key.family()),
                interval: false,
                dynamic: false,
                elements: dedup_exact(exact),
            };
            (
                hash.type_expr,
                vec![hash],
                ranges,
                format!("{}{RANGES_SUFFIX}", set.name),
            )
        }
    };
    let mut layers = interval_layers::layers(&ranges);
    if layers.is_empty() {
        layers.push(Vec::new());
    }
    for (i, elements) in layers.into_iter().enumerate() {
        sets.push(KernelSet {
            name: if i == 0 {
                first_layer_name.clone()
            } else {
                format!("{}{RANGES_SUFFIX}{i}", set.name)
            },
            type_expr,
            interval: true,
            dynamic: false,
            elements,
        });
    }
    sets
}

fn ports(range: PortRange) -> String {
    range.to_string()
}

/// A prefix as nft reads it; host prefixes as bare addresses, which hash
/// sets require.
fn prefix(p: &Prefix) -> String {
    p.to_string()
}

fn flow_element(f: &FlowPattern) -> String {
    let proto = f
        .protocol
        .map_or_else(|| "0-255".to_owned(), |p| p.number().to_string());
    format!(
        "{proto} . {} . {} . {} . {}",
        prefix(&f.src),
        ports(f.sport),
        prefix(&f.dst),
        ports(f.dport)
    )
}

fn plan_set(s: &mut String, set: &KernelSet<'_>, now_ms: i64, elements: Elements) {
    let flags = match (set.interval, set.dynamic) {
        (true, _) => "interval, timeout",
        (false, true) => "dynamic, timeout",
        (false, false) => "timeout",
    };
    let _ = writeln!(s, "\tset {} {{", set.name);
    let _ = writeln!(s, "\t\ttype {}; flags {flags};", set.type_expr);
    if set.dynamic {
        let _ = writeln!(s, "\t\tsize {DYNAMIC_SET_SIZE};");
    }
    let values: Vec<String> = set
        .elements
        .iter()
        .filter(|_| elements == Elements::Include)
        .filter_map(|e| {
            let value = match &e.value {
                ElementValue::Addr(p) => prefix(p),
                ElementValue::Flow(f) => flow_element(f),
                ElementValue::Endpoint(e) => {
                    format!("{} . {} . {}", e.addr, e.protocol.number(), e.port)
                }
            };
            match remaining_ms(e.expires_at, now_ms) {
                None => Some(value),
                Some(0) => None,
                Some(ms) if ms > MAX_TIMEOUT_SECS * 1000 => Some(value),
                Some(ms) => Some(format!("{value} timeout {}", timeout(ms))),
            }
        })
        .collect();
    if !values.is_empty() {
        let _ = writeln!(
            s,
            "\t\telements = {{\n\t\t\t{}\n\t\t}}",
            values.join(",\n\t\t\t")
        );
    }
    let _ = writeln!(s, "\t}}");
}

/// A timeout as nft reads it: `90s`, or `1s500ms` (a bare millisecond count
/// above 2^32 is refused).
fn timeout(ms: u64) -> String {
    match (ms / 1000, ms % 1000) {
        (secs, 0) => format!("{secs}s"),
        (secs, ms) => format!("{secs}s{ms}ms"),
    }
}

/// The match expressions of a rule (without action or counter): one per
/// combination of the kernel sets its set references stand for.
fn match_exprs(m: &Match, sets: &[Set], layout: &Layout<'_>) -> Vec<String> {
    let family = m.family_with(sets).ok().flatten();
    let ip = |f: Family| if f == Family::Ipv4 { "ip" } else { "ip6" };
    let mut parts = Vec::new();
    if let Some(f) = family {
        parts.push(format!(
            "meta nfproto {}",
            if f == Family::Ipv4 { "ipv4" } else { "ipv6" }
        ));
    }
    if let Some(p) = m.protocol {
        parts.push(format!("meta l4proto {}", p.number()));
    }
    if let (Some(p), Some(f)) = (&m.src, family) {
        parts.push(format!("{} saddr {}", ip(f), prefix(p)));
    }
    if let (Some(p), Some(f)) = (&m.dst, family) {
        parts.push(format!("{} daddr {}", ip(f), prefix(p)));
    }
    if let Some(r) = m.sport {
        parts.push(format!("th sport {}", ports(r)));
    }
    if let Some(r) = m.dport {
        parts.push(format!("th dport {}", ports(r)));
    }
    if let Some(r) = m.payload_len {
        // The UDP length field counts its 8-byte header.
        let (a, b) = (u32::from(r.first()) + 8, u32::from(r.last()) + 8);
        parts.push(if a == b {
            format!("udp length {a}")
        } else {
            format!("udp length {a}-{b}")
        });
    }
    if let Some(n) = m.first_packets {
        // Both directions counted (conntrack accounting; see `apply`).
        parts.push(format!("ct packets 1-{n}"));
    }
    for p in &m.payload {
        parts.push(payload_expr(p));
    }
    let mut exprs = vec![parts.join(" ")];
    let Some(f) = family else { return exprs };
    let ip = ip(f);
    if let Some(name) = &m.endpoint_in_set {
        // Either side of the packet: one rule line per side.
        exprs = exprs
            .iter()
            .flat_map(|base| {
                [
                    "saddr . meta l4proto . th sport",
                    "daddr . meta l4proto . th dport",
                ]
                .map(|side| format!("{base} {ip} {side} @{name}").trim().to_owned())
            })
            .collect();
    }
    let lookups = [
        (&m.src_in_set, format!("{ip} saddr")),
        (&m.dst_in_set, format!("{ip} daddr")),
        (
            &m.flow_in_set,
            format!("meta l4proto . {ip} saddr . th sport . {ip} daddr . th dport"),
        ),
    ];
    for (reference, key) in &lookups {
        let Some(name) = reference else { continue };
        let kernel_names: Vec<&str> = layout
            .get(name.as_str())
            .map(|k| k.iter().map(|s| s.name.as_str()).collect())
            .unwrap_or_default();
        let mut combined = Vec::with_capacity(exprs.len() * kernel_names.len());
        for base in &exprs {
            for set in &kernel_names {
                combined.push(format!("{base} {key} @{set}").trim().to_owned());
            }
        }
        exprs = combined;
    }
    exprs
}

/// One payload match: `@ih` is the transport payload (after the TCP or UDP
/// header); a mask compares only its bits.
fn payload_expr(p: &PayloadMatch) -> String {
    let (offset, bits) = (u32::from(p.offset) * 8, p.bytes.len() * 8);
    let hex = |b: &[u8]| {
        b.iter().fold(String::from("0x"), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
    };
    match &p.mask {
        Some(mask) => format!("@ih,{offset},{bits} & {} == {}", hex(mask), hex(&p.bytes)),
        None => format!("@ih,{offset},{bits} {}", hex(&p.bytes)),
    }
}

/// The statements that add both endpoints of the packet to an endpoint set.
fn add_endpoints(rule: &Rule, family: Option<Family>) -> String {
    let (Some(add), Some(f)) = (&rule.add_endpoints_to, family) else {
        return String::new();
    };
    let ip = if f == Family::Ipv4 { "ip" } else { "ip6" };
    [
        "saddr . meta l4proto . th sport",
        "daddr . meta l4proto . th dport",
    ]
    .map(|side| {
        format!(
            "add @{} {{ {ip} {side} timeout {}s }} ",
            add.set, add.timeout_secs
        )
    })
    .concat()
}

/// Which reject statements a match needs: (TCP reset, ICMP). A rule already
/// limited to one protocol needs only one of them.
fn reject_variants(m: &Match) -> (bool, bool) {
    match m.protocol {
        Some(Protocol::Tcp) => (true, false),
        Some(_) => (false, true),
        None => (true, true),
    }
}

/// The nft rule lines of one config rule; all carry the rule id as comment,
/// so their counters add up under it.
fn rule_lines(rule: &Rule, sets: &[Set], layout: &Layout<'_>, queueing: Queueing) -> Vec<String> {
    let comment = format!("comment \"{}\"", rule.id);
    // A classify rule's endpoints are added by the classifier, on a find.
    let remember = match rule.action {
        Action::Classify => String::new(),
        _ => add_endpoints(rule, rule.family_with(sets).ok().flatten()),
    };
    let mut lines = Vec::new();
    for expr in match_exprs(&rule.matches, sets, layout) {
        let sep = if expr.is_empty() { "" } else { " " };
        let sep = format!("{sep}{remember}");
        let sep = sep.as_str();
        match rule.action {
            Action::Accept => lines.push(format!("{expr}{sep}counter accept {comment}")),
            Action::Drop => lines.push(format!("{expr}{sep}counter drop {comment}")),
            Action::Count => lines.push(format!("{expr}{sep}counter {comment}")),
            Action::Redirect { port } => {
                lines.push(format!("{expr}{sep}counter redirect to :{port} {comment}"))
            }
            Action::Classify => lines.push(match queueing {
                Queueing::Native => {
                    format!("{expr}{sep}counter queue num {CLASSIFY_QUEUE} bypass {comment}")
                }
                Queueing::Mark => format!(
                    "{expr}{sep}counter meta mark set meta mark | {CLASSIFY_MARK:#x} {comment}"
                ),
            }),
            Action::Reject => {
                // TCP gets a reset (the client fails at once), the rest an
                // ICMP administratively-prohibited.
                let (tcp, other) = reject_variants(&rule.matches);
                if tcp {
                    lines.push(format!(
                        "{expr}{sep}meta l4proto tcp counter reject with tcp reset {comment}"
                    ));
                }
                if other {
                    lines.push(format!(
                        "{expr}{sep}counter reject with icmpx admin-prohibited {comment}"
                    ));
                }
            }
        }
    }
    lines
}

/// What `nft -t -j list table inet isdf` shows: set names and, per chain,
/// rule comments in order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shape {
    sets: Vec<String>,
    chains: BTreeMap<String, Vec<String>>,
}

fn expected_shape(firewall: &Firewall) -> Shape {
    let layout = layout(firewall);
    let mut sets: Vec<String> = layout.values().flatten().map(|k| k.name.clone()).collect();
    sets.sort();
    let chains = Chain::FILTER
        .iter()
        .map(|chain| {
            let comments = firewall
                .rules
                .iter()
                .filter(|r| r.chain == *chain)
                .flat_map(|r| {
                    std::iter::repeat_n(
                        r.id.to_string(),
                        rule_lines(r, &firewall.sets, &layout, Queueing::Native).len(),
                    )
                })
                .collect();
            (chain.name().to_owned(), comments)
        })
        .collect();
    Shape { sets, chains }
}

fn listed_shape(json: &serde_json::Value) -> anyhow::Result<(Shape, Vec<RuleCounter>)> {
    let items = json["nftables"]
        .as_array()
        .context("nft -j output has no `nftables` array")?;
    let mut shape = Shape::default();
    let mut counters: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for item in items {
        if let Some(set) = item.get("set") {
            shape
                .sets
                .push(set["name"].as_str().context("set without name")?.to_owned());
        } else if let Some(chain) = item.get("chain") {
            let name = chain["name"].as_str().context("chain without name")?;
            shape.chains.entry(name.to_owned()).or_default();
        } else if let Some(rule) = item.get("rule") {
            let chain = rule["chain"].as_str().context("rule without chain")?;
            let comment = rule["comment"].as_str().unwrap_or("").to_owned();
            if let Some(counter) = rule["expr"]
                .as_array()
                .and_then(|exprs| exprs.iter().find_map(|e| e.get("counter")))
            {
                let entry = counters.entry(comment.clone()).or_default();
                entry.0 += counter["packets"].as_u64().unwrap_or(0);
                entry.1 += counter["bytes"].as_u64().unwrap_or(0);
            }
            shape
                .chains
                .entry(chain.to_owned())
                .or_default()
                .push(comment);
        }
    }
    shape.sets.sort();
    let counters = counters
        .into_iter()
        .filter(|(id, _)| !id.is_empty())
        .map(|(rule_id, (packets, bytes))| RuleCounter {
            rule_id,
            packets,
            bytes,
        })
        .collect();
    Ok((shape, counters))
}

/// The elements of one listed endpoint set (`nft -j list set`): each is
/// `{"elem": {"val": {"concat": [addr, proto, port]}, "expires": secs}}`.
fn parse_endpoints(set: &str, json: &serde_json::Value) -> Vec<LearnedEndpoint> {
    let elements = json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["set"]["elem"].as_array())
        .flatten();
    elements
        .filter_map(|e| {
            let concat = e["elem"]["val"]["concat"].as_array()?;
            let addr = concat.first()?.as_str()?.parse().ok()?;
            let protocol = match &concat.get(1)? {
                serde_json::Value::String(name) if name == "tcp" => Protocol::Tcp,
                serde_json::Value::String(name) if name == "udp" => Protocol::Udp,
                serde_json::Value::Number(n) if n.as_u64() == Some(6) => Protocol::Tcp,
                serde_json::Value::Number(n) if n.as_u64() == Some(17) => Protocol::Udp,
                _ => return None,
            };
            let port = u16::try_from(concat.get(2)?.as_u64()?).ok()?;
            let expires_secs = e["elem"]["expires"].as_u64().unwrap_or(0);
            Some(LearnedEndpoint {
                set: set.to_owned(),
                endpoint: isdf_api::Endpoint {
                    addr,
                    protocol,
                    port,
                },
                remaining_ms: expires_secs * 1000,
            })
        })
        .collect()
}

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

/// Runs `nft` in the agent's network namespace.
pub struct NftBackend {
    program: String,
    /// Probed at the first apply that needs it.
    queueing: std::sync::OnceLock<Queueing>,
}

impl NftBackend {
    pub fn new() -> Self {
        NftBackend {
            program: std::env::var("ISDF_NFT").unwrap_or_else(|_| "nft".to_owned()),
            queueing: std::sync::OnceLock::new(),
        }
    }

    /// Whether this kernel has nft's `queue` (a dry run, nothing changes).
    fn queueing(&self) -> Queueing {
        *self.queueing.get_or_init(|| {
            let probe = format!(
                "table inet {TABLE}_probe {{\n\tchain c {{\n\t\ttype filter hook forward priority 0;\n\t\tqueue num {CLASSIFY_QUEUE} bypass\n\t}}\n}}\n"
            );
            if exec::run(&self.program, &["-c", "-f", "-"], &probe).is_ok() {
                Queueing::Native
            } else {
                tracing::info!("this kernel has no nft queue: classify rules mark packets for an iptables NFQUEUE rule");
                Queueing::Mark
            }
        })
    }

    /// Adds or removes the iptables rule that queues marked packets (only
    /// with `Queueing::Mark`), for IPv4 and IPv6.
    fn sync_mark_queue(&self, wanted: bool) -> anyhow::Result<()> {
        let (queue, mark) = (
            CLASSIFY_QUEUE.to_string(),
            format!("{CLASSIFY_MARK:#x}/{CLASSIFY_MARK:#x}"),
        );
        for tool in ["iptables", "ip6tables"] {
            let rule = |op: &'static str| {
                let mut args = vec!["-w", "-t", "filter", op, "FORWARD"];
                args.extend(["-m", "mark", "--mark", &mark, "-m", "comment"]);
                args.extend(["--comment", "isdf-classify", "-j", "NFQUEUE"]);
                args.extend(["--queue-num", &queue, "--queue-bypass"]);
                exec::run(tool, &args, "")
            };
            let present = rule("-C").is_ok();
            if wanted && !present {
                rule("-I")
                    .with_context(|| format!("adding the {tool} NFQUEUE rule for classify"))?;
            } else if !wanted && present {
                rule("-D").with_context(|| format!("removing the {tool} NFQUEUE rule"))?;
            }
        }
        Ok(())
    }

    /// Lists our table without set elements (terse): what verification and
    /// counters need, at a fraction of a full listing's cost.
    fn list_terse(&self) -> anyhow::Result<Option<serde_json::Value>> {
        match exec::run(
            &self.program,
            &["-t", "-j", "list", "table", "inet", TABLE],
            "",
        ) {
            Ok(out) => Ok(Some(
                serde_json::from_str(&out).context("parsing nft -j output")?,
            )),
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
        if firewall
            .rules
            .iter()
            .any(|r| r.matches.first_packets.is_some())
        {
            enable_conntrack_accounting()?;
        }
        let classifies = firewall.rules.iter().any(|r| r.action == Action::Classify);
        // Without classify rules the queueing does not show in the script.
        let queueing = if classifies {
            self.queueing()
        } else {
            Queueing::Native
        };
        let structure = plan_script(firewall, now_ms, Elements::Omit, queueing);
        exec::run(&self.program, &["-c", "-f", "-"], &structure)
            .context("nft rejected the planned ruleset (check)")?;
        exec::run(
            &self.program,
            &["-f", "-"],
            &plan_with(firewall, now_ms, queueing),
        )
        .context("applying the ruleset with nft -f")?;
        if self.queueing.get() == Some(&Queueing::Mark) {
            self.sync_mark_queue(classifies)?;
        }
        Ok(())
    }

    /// Checks our table, its sets, chains and rules are what the plan made.
    /// Set elements are not compared: they arrive in the same transaction as
    /// the rules, and listing them costs as much as loading them.
    fn verify(&self, firewall: &Firewall, _now_ms: i64) -> anyhow::Result<()> {
        let Some(json) = self.list_terse()? else {
            bail!("table inet {TABLE} is missing");
        };
        let (listed, _) = listed_shape(&json)?;
        let expected = expected_shape(firewall);
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

    fn next_reapply(&self, firewall: &Firewall, now_ms: i64) -> Option<i64> {
        let max = i64::try_from(MAX_TIMEOUT_SECS).unwrap_or(i64::MAX);
        let now = now_ms.div_euclid(1000);
        firewall
            .sets
            .iter()
            .flat_map(|s| &s.elements)
            .filter_map(|e| e.expires_at)
            .filter(|&e| e - now > max)
            .map(|e| e - max)
            .min()
    }

    fn learned_endpoints(&self, firewall: &Firewall) -> anyhow::Result<Vec<LearnedEndpoint>> {
        let mut learned = Vec::new();
        for set in firewall.sets.iter().filter(|s| s.key.is_endpoint()) {
            let out = exec::run(
                &self.program,
                &["-j", "list", "set", "inet", TABLE, set.name.as_str()],
                "",
            )?;
            let json: serde_json::Value =
                serde_json::from_str(&out).context("parsing nft -j output")?;
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
            let _ = exec::run(
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
            self.sync_mark_queue(false)?;
        }
        exec::run(
            &self.program,
            &["-f", "-"],
            &format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"),
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::sample_firewall as sample;

    #[test]
    fn plan_of_the_shared_sample() {
        // now is 100 s before the timed element expires.
        insta::assert_snapshot!(plan(&sample(), 1_795_003_500_000));
    }

    #[test]
    fn expired_elements_are_left_out() {
        let script = plan(&sample(), 1_795_003_600_000);
        assert!(!script.contains("5000-5010"));
        assert!(
            !script.contains("s,\n") && !script.contains("s\n\t\t}"),
            "{script}"
        );
    }

    #[test]
    fn exact_flows_go_to_a_hash_set_and_patterns_to_an_interval_set() {
        let firewall: Firewall = serde_json::from_str(
            r#"{"sets":[{"name":"f","key":"ipv4-flow","elements":[
                {"flow":{"protocol":"tcp","src":"192.0.2.2","sport":40000,"dst":"198.51.100.2","dport":443},"expires_at":60},
                {"flow":{"protocol":"udp","src":"0.0.0.0/0","dst":"198.51.100.2","dport":53}}
            ]}],"rules":[{"id":"f","chain":"forward","match":{"flow_in_set":"f"},"action":"drop"}]}"#,
        )
        .unwrap();
        insta::assert_snapshot!(plan(&firewall, 0));
    }

    #[test]
    fn the_check_script_has_the_structure_without_elements() {
        let structure = plan_script(&sample(), 0, Elements::Omit, Queueing::Native);
        assert!(!structure.contains("elements"));
        assert_eq!(
            structure.lines().filter(|l| l.contains("comment")).count(),
            plan(&sample(), 0)
                .lines()
                .filter(|l| l.contains("comment"))
                .count()
        );
    }

    #[test]
    fn timeouts_beyond_the_kernel_limit_wait_for_a_reapply() {
        let now = 1_000;
        let long = now + 40 * 24 * 3600;
        let firewall: Firewall = serde_json::from_value(serde_json::json!({"sets": [{"name": "a", "key": "ipv4-addr",
            "elements": [{"addr": "192.0.2.1", "expires_at": long}, {"addr": "192.0.2.2", "expires_at": now + 60}]}]}))
        .unwrap();
        let script = plan(&firewall, now * 1000);
        assert!(
            script.contains("192.0.2.1,\n") || script.contains("192.0.2.1\n"),
            "{script}"
        );
        assert!(script.contains("192.0.2.2 timeout 60s"), "{script}");
        let reapply = NftBackend::new()
            .next_reapply(&firewall, now * 1000)
            .unwrap();
        assert_eq!(reapply, long - MAX_TIMEOUT_SECS as i64);
        assert!(plan(&firewall, reapply * 1000)
            .contains(&format!("192.0.2.1 timeout {MAX_TIMEOUT_SECS}s")));
    }

    #[test]
    fn timeouts_end_to_the_millisecond() {
        let firewall: Firewall = serde_json::from_value(serde_json::json!({"sets": [{"name": "a", "key": "ipv4-addr",
            "elements": [{"addr": "192.0.2.1", "expires_at": 100}, {"addr": "192.0.2.2", "expires_at": 101}]}]}))
        .unwrap();
        let script = plan(&firewall, 99_250);
        assert!(script.contains("192.0.2.1 timeout 0s750ms"), "{script}");
        assert!(script.contains("192.0.2.2 timeout 1s750ms"), "{script}");
        assert!(!plan(&firewall, 100_000).contains("192.0.2.1"));
    }

    #[test]
    fn learned_endpoints_parse_from_the_listing() {
        let json: serde_json::Value = serde_json::from_str(r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "bt", "table": "isdf",
            "elem": [{"elem": {"val": {"concat": ["198.51.100.2", "udp", 6969]}, "timeout": 60, "expires": 59}},
                     {"elem": {"val": {"concat": ["2001:db8::1", "tcp", 6881]}, "timeout": 60, "expires": 3}}]}}]}"#).unwrap();
        let learned = parse_endpoints("bt", &json);
        assert_eq!(learned.len(), 2);
        assert_eq!(learned[0].endpoint.port, 6969);
        assert_eq!(learned[0].endpoint.protocol, Protocol::Udp);
        assert_eq!(learned[0].remaining_ms, 59_000);
        assert_eq!(learned[1].endpoint.addr.to_string(), "2001:db8::1");
    }

    #[test]
    fn empty_config_still_installs_an_empty_table() {
        insta::assert_snapshot!(plan(&Firewall::default(), 0));
    }

    #[test]
    fn every_match_field_is_planned() {
        let rules: Vec<Rule> = serde_json::from_str(
            r#"[
            {"id":"a","chain":"input","match":{"protocol":"tcp","src":"192.0.2.0/24","dst":"198.51.100.1","sport":"1024-65535","dport":22},"action":"accept"},
            {"id":"b","chain":"output","match":{"family":"ipv6","protocol":"icmpv6"},"action":"count"},
            {"id":"c","chain":"forward","match":{"protocol":"udp","dst":"2001:db8::/32","dport":"443"},"action":"reject"}
        ]"#,
        )
        .unwrap();
        let firewall = Firewall {
            rules,
            ..Firewall::default()
        };
        insta::assert_snapshot!(plan(&firewall, 0));
    }

    #[test]
    fn the_expected_shape_matches_what_the_plan_writes() {
        let firewall = sample();
        let shape = expected_shape(&firewall);
        assert_eq!(
            shape.sets,
            [
                "blocked_hosts_v4",
                "flow_drop_v4",
                "flow_drop_v4_R",
                "flow_drop_v6",
                "flow_drop_v6_R"
            ]
        );
        assert_eq!(shape.chains["forward"].len(), 6);
        assert_eq!(shape.chains["input"], ["no-telnet"]);
    }

    #[test]
    fn listing_is_parsed_into_shape_and_counters() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("testdata/nft-list.json")).unwrap();
        let (shape, counters) = listed_shape(&json).unwrap();
        assert_eq!(shape.sets, ["flow_drop_v4", "flow_drop_v6"]);
        assert_eq!(
            shape.chains["forward"],
            vec!["r1".to_owned(), String::new()]
        );
        assert_eq!(
            counters,
            vec![RuleCounter {
                rule_id: "r1".into(),
                packets: 3,
                bytes: 180
            }]
        );
    }
}
