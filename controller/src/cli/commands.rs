//! The command tree (clap) and what each command calls: one command per
//! operator route, plus `get`, `apply` and `rollout status`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::Paging;
use super::output;
use super::resources::{self as res, print_done, print_page, Resource};
use super::{apply, rollout, CliError, Context};
use crate::model::Role;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List a kind of resource, or show one by name or id.
    Get(GetArgs),
    /// Make the server match a YAML file (idempotent).
    Apply(apply::ApplyArgs),
    /// Routers: register, list, inspect, delete.
    #[command(subcommand, visible_alias = "device")]
    Devices(DeviceCommand),
    /// Bulk enrollment tokens (devices created when routers enroll).
    #[command(subcommand, visible_alias = "enrollment-token")]
    EnrollmentTokens(EnrollmentTokenCommand),
    /// Service definitions and their revisions.
    #[command(subcommand, visible_alias = "service")]
    Services(ServiceCommand),
    /// Service revisions applied to label selectors.
    #[command(subcommand, visible_alias = "assignment")]
    Assignments(AssignmentCommand),
    /// Operator tokens (admin).
    #[command(subcommand, visible_alias = "operator-token")]
    OperatorTokens(OperatorTokenCommand),
    /// The audit log of every mutating call.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Households and their routers.
    #[command(subcommand, visible_alias = "customer")]
    Customers(CustomerCommand),
    /// The pay-per-site catalog.
    #[command(subcommand, visible_alias = "site")]
    Sites(SiteCommand),
    /// Passes sold or granted to customers.
    #[command(subcommand, visible_alias = "purchase")]
    Purchases(PurchaseCommand),
    /// Customers' site-to-site VPNs.
    #[command(subcommand, visible_alias = "vpn")]
    Vpns(VpnCommand),
    /// ISP routers that may relay VPN traffic.
    #[command(subcommand, visible_alias = "vpn-relay")]
    VpnRelays(RelayCommand),
    /// Timed flow blocks on one router.
    #[command(subcommand, visible_alias = "block")]
    Blocks(BlockCommand),
    /// Staged rollouts of assignment changes.
    #[command(subcommand, visible_alias = "rollout")]
    Rollouts(rollout::RolloutCommand),
    /// The fleet at a glance.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// The operator the token belongs to.
    Whoami,
    /// The API's OpenAPI document.
    Openapi,
}

/// Which part of a list to print.
#[derive(Debug, Clone, Args)]
pub struct PagingArgs {
    /// Every page (bounded), not just the first.
    #[arg(long)]
    pub all: bool,
    /// Items per page (1 to 500).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this cursor (printed after a partial list).
    #[arg(long)]
    pub cursor: Option<String>,
}

impl PagingArgs {
    pub fn paging(&self) -> Paging {
        Paging {
            all: self.all,
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub kind: GetKind,
    /// A name or id: show that one instead of the list.
    pub name: Option<String>,
    /// Label selector (devices).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    #[command(flatten)]
    pub paging: PagingArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GetKind {
    #[value(alias = "device")]
    Devices,
    #[value(alias = "service")]
    Services,
    #[value(alias = "assignment")]
    Assignments,
    #[value(alias = "customer")]
    Customers,
    #[value(alias = "site")]
    Sites,
    #[value(alias = "vpn")]
    Vpns,
    #[value(alias = "rollout")]
    Rollouts,
    #[value(alias = "operator-token")]
    OperatorTokens,
    Audit,
}

impl GetKind {
    fn resource(self) -> &'static Resource {
        match self {
            GetKind::Devices => &res::DEVICES,
            GetKind::Services => &res::SERVICES,
            GetKind::Assignments => &res::ASSIGNMENTS,
            GetKind::Customers => &res::CUSTOMERS,
            GetKind::Sites => &res::SITES,
            GetKind::Vpns => &res::VPNS,
            GetKind::Rollouts => &res::ROLLOUTS,
            GetKind::OperatorTokens => &res::OPERATOR_TOKENS,
            GetKind::Audit => &res::AUDIT,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List routers.
    List {
        /// Label selector, e.g. `env=prod,region in (eu,us)`.
        #[arg(long, short = 'l')]
        selector: Option<String>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Show one router.
    Get { device: String },
    /// Pre-register a router; prints its enrollment token and agent config.
    Create {
        name: String,
        /// A label, `key=value` (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Lifetime of the enrollment token, in seconds.
        #[arg(long)]
        token_expires_in: Option<u64>,
    },
    /// Delete a router (not a VPN member or relay).
    Delete { device: String },
    /// Its compiled, signed config.
    Config { device: String },
    /// Its latest status report.
    Status { device: String },
    /// Its recent status reports.
    History {
        device: String,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// A new enrollment token for an existing router.
    EnrollmentToken {
        device: String,
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Its reported events (local blocks, detections) and their totals.
    Events {
        device: String,
        #[arg(long)]
        limit: Option<u32>,
        /// Events with a lower sequence only (`next_before` of a previous page).
        #[arg(long)]
        before: Option<i64>,
    },
    /// Its WireGuard key state, or a key rotation.
    #[command(subcommand)]
    Wireguard(WireguardCommand),
}

#[derive(Debug, Subcommand)]
pub enum WireguardCommand {
    /// What the router reported of its WireGuard side.
    Get { device: String },
    /// Rotate its WireGuard key.
    Rotate { device: String },
}

#[derive(Debug, Subcommand)]
pub enum EnrollmentTokenCommand {
    /// Tokens for a shipment of routers.
    Create {
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long)]
        expires_in: Option<u64>,
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Devices are named `<prefix>-<id>`.
        #[arg(long)]
        name_prefix: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Define a service and its first revision.
    Create {
        name: String,
        /// Service kind, e.g. `flow-block`.
        #[arg(long)]
        kind: String,
        /// The spec, a JSON or YAML file (`-` for stdin).
        #[arg(long)]
        spec: PathBuf,
    },
    List {
        #[command(flatten)]
        paging: PagingArgs,
    },
    Get {
        service: String,
    },
    /// A service's revisions.
    #[command(subcommand)]
    Revisions(RevisionCommand),
    /// The unified diff of two revisions' specs.
    Diff {
        service: String,
        from: i32,
        to: i32,
    },
}

#[derive(Debug, Subcommand)]
pub enum RevisionCommand {
    List {
        service: String,
        #[command(flatten)]
        paging: PagingArgs,
    },
    Get {
        service: String,
        revision: i32,
    },
    /// A new revision from a spec file (`-` for stdin).
    Create {
        service: String,
        #[arg(long)]
        spec: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AssignmentCommand {
    Create {
        #[arg(long)]
        service: String,
        #[arg(long)]
        selector: String,
        /// Default: the service's latest.
        #[arg(long)]
        revision: Option<i32>,
    },
    List {
        /// Only this service's.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    Get {
        id: String,
    },
    /// Apply another revision of the same service at once (see `rollouts create` to stage it).
    SetRevision {
        id: String,
        revision: i32,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperatorTokenCommand {
    /// Prints the token once.
    Create {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
    },
    List {
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// By id, or the name of an active token.
    Revoke {
        // Not `token`: that is the global --token's id.
        operator_token: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Newest first.
    List {
        #[command(flatten)]
        paging: PagingArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CustomerCommand {
    Create {
        name: String,
        #[arg(long)]
        external_ref: Option<String>,
        /// A router to attach (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
    },
    List {
        #[command(flatten)]
        paging: PagingArgs,
    },
    Get {
        customer: String,
    },
    Delete {
        customer: String,
    },
    /// Attach a router to the household.
    Attach {
        customer: String,
        device: String,
    },
    /// Detach a router from the household.
    Detach {
        customer: String,
        device: String,
    },
}

#[derive(Debug, Args)]
pub struct SiteInputArgs {
    /// Catalog (default `main`).
    #[arg(long)]
    pub catalog: Option<String>,
    /// Display name, unique within the catalog.
    #[arg(long)]
    pub name: String,
    /// A domain (repeatable); covers every name under it.
    #[arg(long = "domain", required = true)]
    pub domains: Vec<String>,
    /// ISO 4217 code, e.g. `EUR`.
    #[arg(long)]
    pub currency: String,
    /// A pass, `SECONDS:PRICE` in minor units (repeatable).
    #[arg(long = "pass", required = true, value_parser = parse_pass)]
    pub passes: Vec<(i64, i64)>,
}

impl SiteInputArgs {
    fn body(&self) -> Value {
        json!({
            "catalog": self.catalog,
            "name": self.name,
            "domains": self.domains,
            "currency": self.currency,
            "passes": self.passes.iter()
                .map(|(d, p)| json!({"duration_secs": d, "price": p}))
                .collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    Create(SiteInputArgs),
    List {
        #[arg(long)]
        catalog: Option<String>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// By id, name or `catalog/name`.
    Get {
        site: String,
    },
    /// Replace a site's definition.
    Update {
        site: String,
        #[command(flatten)]
        input: SiteInputArgs,
    },
    Delete {
        site: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PurchaseCommand {
    /// Grant or sell a pass.
    Create {
        #[arg(long)]
        customer: String,
        #[arg(long)]
        site: String,
        #[arg(long)]
        duration: i64,
    },
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        site: Option<String>,
        /// Only passes in force (true) or not (false).
        #[arg(long)]
        active: Option<bool>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// End a pass now.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
pub enum VpnCommand {
    Create {
        name: String,
        #[arg(long)]
        customer: String,
        /// `auto`, `mesh` or `hub`.
        #[arg(long, default_value = "auto")]
        topology: String,
        /// The hub member (topology `hub`).
        #[arg(long)]
        hub: Option<String>,
        /// Tunnel address pool (default 100.64.0.0/16).
        #[arg(long)]
        pool: Option<String>,
        /// A member, `DEVICE=PREFIX[,PREFIX...]` (repeatable).
        #[arg(long = "member", value_parser = parse_member)]
        members: Vec<(String, Vec<String>)>,
    },
    List {
        #[arg(long)]
        customer: Option<String>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    Get {
        vpn: String,
    },
    /// Change the topology or the hub.
    Update {
        vpn: String,
        #[arg(long)]
        topology: Option<String>,
        #[arg(long)]
        hub: Option<String>,
    },
    Delete {
        vpn: String,
    },
    /// Add or change members.
    #[command(subcommand)]
    Members(MemberCommand),
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a member or replace its LAN prefixes.
    Put {
        vpn: String,
        device: String,
        /// A LAN prefix (repeatable).
        #[arg(long = "prefix", required = true)]
        prefixes: Vec<String>,
    },
    Delete {
        vpn: String,
        device: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    List {
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Let a router relay.
    Add { device: String },
    /// Stop a router relaying.
    Remove { device: String },
}

#[derive(Debug, Subcommand)]
pub enum BlockCommand {
    /// Block flows on a router for a while.
    Create {
        device: String,
        /// A flow as JSON or YAML, e.g. `{protocol: tcp, dport: "6881"}` (repeatable).
        #[arg(long = "flow", required = true)]
        flows: Vec<String>,
        #[arg(long)]
        duration: u64,
        /// `drop` (default) or `reject`.
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Blocks in force on a router.
    List { device: String },
    /// End an operator block early.
    Delete { device: String, block: String },
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Counts of routers by state, rollouts, VPNs.
    Overview,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

fn parse_pass(text: &str) -> Result<(i64, i64), String> {
    let parsed = text
        .split_once(':')
        .and_then(|(d, p)| Some((d.parse().ok()?, p.parse().ok()?)));
    parsed.ok_or_else(|| format!("`{text}` is not SECONDS:PRICE"))
}

fn parse_member(text: &str) -> Result<(String, Vec<String>), String> {
    text.split_once('=')
        .map(|(d, p)| (d.to_owned(), p.split(',').map(str::to_owned).collect()))
        .ok_or_else(|| format!("`{text}` is not DEVICE=PREFIX[,PREFIX...]"))
}

fn labels(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

/// A JSON or YAML document from a file, or stdin for `-`.
pub fn read_document(path: &std::path::Path) -> Result<Value, CliError> {
    let text = read_input(path)?;
    serde_yaml_ng::from_str(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// A file's text, or stdin's for `-`.
pub fn read_input(path: &std::path::Path) -> Result<String, CliError> {
    let read = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|e| CliError::Usage(format!("reading {}: {e}", path.display())))
}

/// A JSON object of the fields that are set.
fn object(fields: &[(&str, Option<Value>)]) -> Value {
    Value::Object(
        fields
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| ((*k).to_owned(), v)))
            .collect::<Map<_, _>>(),
    )
}

/// Calls a mutating route and prints its answer (an object, or `kind/id
/// action` when it answers nothing).
fn call(
    context: &Context,
    method: Method,
    path: &str,
    body: Option<&Value>,
    kind: &str,
    id: &str,
    action: &str,
) -> Result<u8, CliError> {
    match context.client.send(method, path, body)? {
        Value::Null => print_done(context, kind, id, action)?,
        answer => output::print_object(context.format, &answer)?,
    }
    Ok(0)
}

/// Fetches a path and prints the object.
fn show(context: &Context, path: &str, query: &[(&str, String)]) -> Result<u8, CliError> {
    let answer = context.client.get_query(path, query)?;
    output::print_object(context.format, &answer)?;
    Ok(0)
}

/// Prints a route's plain array (not a page) as a list.
fn show_array(
    context: &Context,
    path: &str,
    query: &[(&str, String)],
    columns: &[output::Column],
) -> Result<u8, CliError> {
    let answer = context.client.get_query(path, query)?;
    let items = answer.as_array().cloned().unwrap_or_default();
    output::print_list(context.format, &items, columns)?;
    Ok(0)
}

fn opt<T: ToString>(name: &'static str, value: Option<T>) -> Option<(&'static str, String)> {
    value.map(|v| (name, v.to_string()))
}

pub fn dispatch(context: &Context, command: Command) -> Result<u8, CliError> {
    let client = &context.client;
    match command {
        Command::Get(args) => {
            let resource = args.kind.resource();
            match &args.name {
                Some(name) => resource.print_one(context, name)?,
                None => {
                    let query: Vec<_> = opt("selector", args.selector).into_iter().collect();
                    resource.print_list(context, &query, &args.paging.paging())?;
                }
            }
            Ok(0)
        }
        Command::Apply(args) => apply::run(context, &args),
        Command::Devices(command) => devices(context, command),
        Command::EnrollmentTokens(EnrollmentTokenCommand::Create {
            count,
            expires_in,
            labels: pairs,
            name_prefix,
        }) => {
            let body = object(&[
                ("count", Some(json!(count))),
                ("expires_in_secs", expires_in.map(|s| json!(s))),
                ("labels", Some(json!(labels(pairs)))),
                ("name_prefix", name_prefix.map(Value::String)),
            ]);
            call(
                context,
                Method::POST,
                "/api/v1/enrollment-tokens",
                Some(&body),
                "enrollment-tokens",
                "-",
                "created",
            )
        }
        Command::Services(command) => services(context, command),
        Command::Assignments(command) => assignments(context, command),
        Command::OperatorTokens(command) => {
            let tokens = &res::OPERATOR_TOKENS;
            match command {
                OperatorTokenCommand::Create { name, role } => {
                    let body = json!({"name": name, "role": role});
                    call(
                        context,
                        Method::POST,
                        tokens.path,
                        Some(&body),
                        tokens.kind,
                        &name,
                        "created",
                    )
                }
                OperatorTokenCommand::List { paging } => {
                    tokens.print_list(context, &[], &paging.paging())?;
                    Ok(0)
                }
                OperatorTokenCommand::Revoke { operator_token } => {
                    let id = resolve_active_token(context, &operator_token)?;
                    call(
                        context,
                        Method::DELETE,
                        &tokens.item_path(&id),
                        None,
                        tokens.kind,
                        &id,
                        "revoked",
                    )
                }
            }
        }
        Command::Audit(AuditCommand::List { paging }) => {
            res::AUDIT.print_list(context, &[], &paging.paging())?;
            Ok(0)
        }
        Command::Customers(command) => customers(context, command),
        Command::Sites(command) => sites(context, command),
        Command::Purchases(command) => purchases(context, command),
        Command::Vpns(command) => vpns(context, command),
        Command::VpnRelays(command) => {
            let relays = &res::VPN_RELAYS;
            match command {
                RelayCommand::List { paging } => {
                    relays.print_list(context, &[], &paging.paging())?;
                    Ok(0)
                }
                RelayCommand::Add { device } => {
                    let id = res::DEVICES.resolve(client, &device)?;
                    call(
                        context,
                        Method::PUT,
                        &relays.item_path(&id),
                        None,
                        relays.kind,
                        &id,
                        "added",
                    )
                }
                RelayCommand::Remove { device } => {
                    let id = res::DEVICES.resolve(client, &device)?;
                    call(
                        context,
                        Method::DELETE,
                        &relays.item_path(&id),
                        None,
                        relays.kind,
                        &id,
                        "removed",
                    )
                }
            }
        }
        Command::Blocks(command) => blocks(context, command),
        Command::Rollouts(command) => rollout::run(context, command),
        Command::Fleet(FleetCommand::Overview) => show(context, "/api/v1/fleet/overview", &[]),
        Command::Whoami => show(context, "/api/v1/whoami", &[]),
        Command::Openapi => {
            // Always the document itself: a table of it would say nothing.
            let document = client.get("/api/v1/openapi.json")?;
            let format = match context.format {
                output::Format::Table => output::Format::Json,
                other => other,
            };
            output::print_document(format, &document)?;
            Ok(0)
        }
    }
}

/// A token by id, or the one active token with that name.
fn resolve_active_token(context: &Context, text: &str) -> Result<String, CliError> {
    if uuid::Uuid::parse_str(text).is_ok() {
        return Ok(text.to_owned());
    }
    let active: Vec<Value> = res::OPERATOR_TOKENS
        .find_by_name(&context.client, text)?
        .into_iter()
        .filter(|t| t["revoked_at"].is_null())
        .collect();
    match active.as_slice() {
        [one] => Ok(res::id_text(&one["id"])),
        [] => Err(CliError::api(
            "not_found",
            format!("no active operator token named `{text}`"),
        )),
        _ => Err(CliError::api(
            "ambiguous_name",
            format!(
                "{} active tokens are named `{text}`; revoke one by id",
                active.len()
            ),
        )),
    }
}

fn devices(context: &Context, command: DeviceCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let devices = &res::DEVICES;
    let path_of = |device: &str, tail: &str| -> Result<String, CliError> {
        Ok(format!(
            "{}{tail}",
            devices.item_path(&devices.resolve(client, device)?)
        ))
    };
    match command {
        DeviceCommand::List { selector, paging } => {
            let query: Vec<_> = opt("selector", selector).into_iter().collect();
            devices.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        DeviceCommand::Get { device } => {
            devices.print_one(context, &device)?;
            Ok(0)
        }
        DeviceCommand::Create {
            name,
            labels: pairs,
            token_expires_in,
        } => {
            let body = object(&[
                ("name", Some(json!(name))),
                ("labels", Some(json!(labels(pairs)))),
                (
                    "enrollment_token_expires_in_secs",
                    token_expires_in.map(|s| json!(s)),
                ),
            ]);
            call(
                context,
                Method::POST,
                devices.path,
                Some(&body),
                devices.kind,
                &name,
                "created",
            )
        }
        DeviceCommand::Delete { device } => {
            let id = devices.resolve(client, &device)?;
            call(
                context,
                Method::DELETE,
                &devices.item_path(&id),
                None,
                devices.kind,
                &device,
                "deleted",
            )
        }
        DeviceCommand::Config { device } => show(context, &path_of(&device, "/config")?, &[]),
        DeviceCommand::Status { device } => show(context, &path_of(&device, "/status")?, &[]),
        DeviceCommand::History { device, limit } => {
            let query: Vec<_> = opt("limit", limit).into_iter().collect();
            show_array(
                context,
                &path_of(&device, "/status/history")?,
                &query,
                res::STATUS_HISTORY,
            )
        }
        DeviceCommand::EnrollmentToken { device, expires_in } => {
            let body = object(&[("expires_in_secs", expires_in.map(|s| json!(s)))]);
            let path = path_of(&device, "/enrollment-token")?;
            call(
                context,
                Method::POST,
                &path,
                Some(&body),
                devices.kind,
                &device,
                "token created",
            )
        }
        DeviceCommand::Events {
            device,
            limit,
            before,
        } => {
            let query: Vec<_> = opt("limit", limit)
                .into_iter()
                .chain(opt("before", before))
                .collect();
            let answer = client.get_query(&path_of(&device, "/events")?, &query)?;
            match context.format {
                output::Format::Table => {
                    let items = answer["items"].as_array().cloned().unwrap_or_default();
                    output::print_list(context.format, &items, res::EVENTS)?;
                    if let Some(before) = answer["next_before"].as_i64() {
                        eprintln!("(more: --before {before})");
                    }
                }
                format => output::print_document(format, &answer)?,
            }
            Ok(0)
        }
        DeviceCommand::Wireguard(WireguardCommand::Get { device }) => {
            show(context, &path_of(&device, "/wireguard")?, &[])
        }
        DeviceCommand::Wireguard(WireguardCommand::Rotate { device }) => {
            let path = path_of(&device, "/wireguard/rotate")?;
            call(
                context,
                Method::POST,
                &path,
                None,
                devices.kind,
                &device,
                "rotating",
            )
        }
    }
}

fn services(context: &Context, command: ServiceCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let services = &res::SERVICES;
    match command {
        ServiceCommand::Create { name, kind, spec } => {
            let body = json!({"name": name, "kind": kind, "spec": read_document(&spec)?});
            call(
                context,
                Method::POST,
                services.path,
                Some(&body),
                services.kind,
                &name,
                "created",
            )
        }
        ServiceCommand::List { paging } => {
            services.print_list(context, &[], &paging.paging())?;
            Ok(0)
        }
        ServiceCommand::Get { service } => {
            services.print_one(context, &service)?;
            Ok(0)
        }
        ServiceCommand::Revisions(RevisionCommand::List { service, paging }) => {
            let path = format!(
                "{}/revisions",
                services.item_path(&services.resolve(client, &service)?)
            );
            print_page(context, &path, &[], &paging.paging(), res::REVISIONS)?;
            Ok(0)
        }
        ServiceCommand::Revisions(RevisionCommand::Get { service, revision }) => {
            let id = services.resolve(client, &service)?;
            show(
                context,
                &format!("{}/revisions/{revision}", services.item_path(&id)),
                &[],
            )
        }
        ServiceCommand::Revisions(RevisionCommand::Create { service, spec }) => {
            let id = services.resolve(client, &service)?;
            let body = json!({"spec": read_document(&spec)?});
            let path = format!("{}/revisions", services.item_path(&id));
            call(
                context,
                Method::POST,
                &path,
                Some(&body),
                services.kind,
                &service,
                "revised",
            )
        }
        ServiceCommand::Diff { service, from, to } => {
            let id = services.resolve(client, &service)?;
            let path = format!("{}/revisions/{from}/diff/{to}", services.item_path(&id));
            let answer = client.get(&path)?;
            match context.format {
                // The diff itself, ready for a pager or `patch`.
                output::Format::Table => {
                    output::write_out(answer["unified"].as_str().unwrap_or_default())?
                }
                format => output::print_document(format, &answer)?,
            }
            Ok(0)
        }
    }
}

fn assignments(context: &Context, command: AssignmentCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let assignments = &res::ASSIGNMENTS;
    match command {
        AssignmentCommand::Create {
            service,
            selector,
            revision,
        } => {
            let body = object(&[
                (
                    "service_id",
                    Some(json!(res::SERVICES.resolve(client, &service)?)),
                ),
                ("selector", Some(json!(selector))),
                ("revision", revision.map(|r| json!(r))),
            ]);
            call(
                context,
                Method::POST,
                assignments.path,
                Some(&body),
                assignments.kind,
                &selector,
                "created",
            )
        }
        AssignmentCommand::List { service, paging } => {
            let service = service
                .map(|s| res::SERVICES.resolve(client, &s))
                .transpose()?;
            let query: Vec<_> = opt("service_id", service).into_iter().collect();
            assignments.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        AssignmentCommand::Get { id } => {
            assignments.print_one(context, &id)?;
            Ok(0)
        }
        AssignmentCommand::SetRevision { id, revision } => {
            let id = assignments.resolve(client, &id)?;
            let body = json!({"revision": revision});
            call(
                context,
                Method::PATCH,
                &assignments.item_path(&id),
                Some(&body),
                assignments.kind,
                &id,
                "configured",
            )
        }
        AssignmentCommand::Delete { id } => {
            let id = assignments.resolve(client, &id)?;
            call(
                context,
                Method::DELETE,
                &assignments.item_path(&id),
                None,
                assignments.kind,
                &id,
                "deleted",
            )
        }
    }
}

fn customers(context: &Context, command: CustomerCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let customers = &res::CUSTOMERS;
    let member_path = |customer: &str, device: &str| -> Result<String, CliError> {
        Ok(format!(
            "{}/devices/{}",
            customers.item_path(&customers.resolve(client, customer)?),
            res::DEVICES.resolve(client, device)?
        ))
    };
    match command {
        CustomerCommand::Create {
            name,
            external_ref,
            devices,
        } => {
            let devices = devices
                .iter()
                .map(|d| res::DEVICES.resolve(client, d))
                .collect::<Result<Vec<_>, _>>()?;
            let body = object(&[
                ("name", Some(json!(name))),
                ("external_ref", external_ref.map(Value::String)),
                ("devices", Some(json!(devices))),
            ]);
            call(
                context,
                Method::POST,
                customers.path,
                Some(&body),
                customers.kind,
                &name,
                "created",
            )
        }
        CustomerCommand::List { paging } => {
            customers.print_list(context, &[], &paging.paging())?;
            Ok(0)
        }
        CustomerCommand::Get { customer } => {
            customers.print_one(context, &customer)?;
            Ok(0)
        }
        CustomerCommand::Delete { customer } => {
            let id = customers.resolve(client, &customer)?;
            call(
                context,
                Method::DELETE,
                &customers.item_path(&id),
                None,
                customers.kind,
                &customer,
                "deleted",
            )
        }
        CustomerCommand::Attach { customer, device } => {
            let path = member_path(&customer, &device)?;
            call(
                context,
                Method::PUT,
                &path,
                None,
                customers.kind,
                &customer,
                "attached",
            )
        }
        CustomerCommand::Detach { customer, device } => {
            let path = member_path(&customer, &device)?;
            call(
                context,
                Method::DELETE,
                &path,
                None,
                customers.kind,
                &customer,
                "detached",
            )
        }
    }
}

fn sites(context: &Context, command: SiteCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let sites = &res::SITES;
    match command {
        SiteCommand::Create(input) => call(
            context,
            Method::POST,
            sites.path,
            Some(&input.body()),
            sites.kind,
            &input.name,
            "created",
        ),
        SiteCommand::List { catalog, paging } => {
            let query: Vec<_> = opt("catalog", catalog).into_iter().collect();
            sites.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        SiteCommand::Get { site } => {
            sites.print_one(context, &site)?;
            Ok(0)
        }
        SiteCommand::Update { site, input } => {
            let id = sites.resolve(client, &site)?;
            call(
                context,
                Method::PUT,
                &sites.item_path(&id),
                Some(&input.body()),
                sites.kind,
                &site,
                "configured",
            )
        }
        SiteCommand::Delete { site } => {
            let id = sites.resolve(client, &site)?;
            call(
                context,
                Method::DELETE,
                &sites.item_path(&id),
                None,
                sites.kind,
                &site,
                "deleted",
            )
        }
    }
}

fn purchases(context: &Context, command: PurchaseCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let purchases = &res::PURCHASES;
    match command {
        PurchaseCommand::Create {
            customer,
            site,
            duration,
        } => {
            let body = json!({
                "customer_id": res::CUSTOMERS.resolve(client, &customer)?,
                "site_id": res::SITES.resolve(client, &site)?.parse::<i64>().unwrap_or_default(),
                "duration_secs": duration,
            });
            call(
                context,
                Method::POST,
                purchases.path,
                Some(&body),
                purchases.kind,
                &customer,
                "created",
            )
        }
        PurchaseCommand::List {
            customer,
            site,
            active,
            paging,
        } => {
            let customer = customer
                .map(|c| res::CUSTOMERS.resolve(client, &c))
                .transpose()?;
            let site = site.map(|s| res::SITES.resolve(client, &s)).transpose()?;
            let query: Vec<_> = [
                opt("customer_id", customer),
                opt("site_id", site),
                opt("active", active),
            ]
            .into_iter()
            .flatten()
            .collect();
            purchases.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        PurchaseCommand::Cancel { id } => {
            let id = purchases.resolve(client, &id)?;
            call(
                context,
                Method::DELETE,
                &purchases.item_path(&id),
                None,
                purchases.kind,
                &id,
                "cancelled",
            )
        }
    }
}

fn vpns(context: &Context, command: VpnCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let vpns = &res::VPNS;
    let device = |d: &str| res::DEVICES.resolve(client, d);
    match command {
        VpnCommand::Create {
            name,
            customer,
            topology,
            hub,
            pool,
            members,
        } => {
            let members = members
                .iter()
                .map(|(d, prefixes)| Ok(json!({"device_id": device(d)?, "prefixes": prefixes})))
                .collect::<Result<Vec<_>, CliError>>()?;
            let body = object(&[
                (
                    "customer_id",
                    Some(json!(res::CUSTOMERS.resolve(client, &customer)?)),
                ),
                ("name", Some(json!(name))),
                ("topology", Some(json!(topology))),
                (
                    "hub",
                    hub.as_deref().map(device).transpose()?.map(Value::String),
                ),
                ("address_pool", pool.map(Value::String)),
                ("members", Some(Value::Array(members))),
            ]);
            call(
                context,
                Method::POST,
                vpns.path,
                Some(&body),
                vpns.kind,
                &name,
                "created",
            )
        }
        VpnCommand::List { customer, paging } => {
            let customer = customer
                .map(|c| res::CUSTOMERS.resolve(client, &c))
                .transpose()?;
            let query: Vec<_> = opt("customer_id", customer).into_iter().collect();
            vpns.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        VpnCommand::Get { vpn } => {
            vpns.print_one(context, &vpn)?;
            Ok(0)
        }
        VpnCommand::Update { vpn, topology, hub } => {
            let id = vpns.resolve(client, &vpn)?;
            let body = object(&[
                ("topology", topology.map(Value::String)),
                (
                    "hub",
                    hub.as_deref().map(device).transpose()?.map(Value::String),
                ),
            ]);
            call(
                context,
                Method::PATCH,
                &vpns.item_path(&id),
                Some(&body),
                vpns.kind,
                &vpn,
                "configured",
            )
        }
        VpnCommand::Delete { vpn } => {
            let id = vpns.resolve(client, &vpn)?;
            call(
                context,
                Method::DELETE,
                &vpns.item_path(&id),
                None,
                vpns.kind,
                &vpn,
                "deleted",
            )
        }
        VpnCommand::Members(MemberCommand::Put {
            vpn,
            device: member,
            prefixes,
        }) => {
            let path = format!(
                "{}/members/{}",
                vpns.item_path(&vpns.resolve(client, &vpn)?),
                device(&member)?
            );
            let body = json!({"prefixes": prefixes});
            call(
                context,
                Method::PUT,
                &path,
                Some(&body),
                vpns.kind,
                &vpn,
                "member put",
            )
        }
        VpnCommand::Members(MemberCommand::Delete {
            vpn,
            device: member,
        }) => {
            let path = format!(
                "{}/members/{}",
                vpns.item_path(&vpns.resolve(client, &vpn)?),
                device(&member)?
            );
            call(
                context,
                Method::DELETE,
                &path,
                None,
                vpns.kind,
                &vpn,
                "member deleted",
            )
        }
    }
}

fn blocks(context: &Context, command: BlockCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let blocks_of = |device: &str| -> Result<String, CliError> {
        Ok(format!(
            "{}/blocks",
            res::DEVICES.item_path(&res::DEVICES.resolve(client, device)?)
        ))
    };
    match command {
        BlockCommand::Create {
            device,
            flows,
            duration,
            action,
            reason,
        } => {
            let flows = flows
                .iter()
                .map(|f| {
                    serde_yaml_ng::from_str::<Value>(f)
                        .map_err(|e| CliError::Usage(format!("--flow `{f}`: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let body = object(&[
                ("flows", Some(Value::Array(flows))),
                ("duration_secs", Some(json!(duration))),
                ("action", action.map(Value::String)),
                ("reason", reason.map(Value::String)),
            ]);
            let path = blocks_of(&device)?;
            match client.send(Method::POST, &path, Some(&body))? {
                created if context.format == output::Format::Table => {
                    let items = created["items"].as_array().cloned().unwrap_or_default();
                    output::print_list(context.format, &items, res::BLOCKS)?;
                }
                created => output::print_document(context.format, &created)?,
            }
            Ok(0)
        }
        BlockCommand::List { device } => {
            show_array(context, &blocks_of(&device)?, &[], res::BLOCKS)
        }
        BlockCommand::Delete { device, block } => {
            let path = format!("{}/{block}", blocks_of(&device)?);
            call(
                context,
                Method::DELETE,
                &path,
                None,
                "block",
                &block,
                "deleted",
            )
        }
    }
}
