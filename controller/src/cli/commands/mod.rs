//! The command tree (clap) and what each command calls: one command per
//! operator route, plus `get`, `apply` and `rollout status`.

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::Paging;
use super::output;
use super::resources::{self as res, print_done, Resource};
use super::{apply, rollout, CliError, Context};
use crate::model::Role;

mod blocks;
mod devices;
mod households;
mod labels;
mod releases;
mod services;
mod vpns;

pub use blocks::BlockCommand;
pub use devices::{DeviceCommand, EnrollmentTokenCommand, WireguardCommand};
pub use households::{CustomerCommand, PurchaseCommand, SiteCommand, SiteInputArgs};
pub use releases::ReleaseCommand;
pub use services::{
    assignment_hint, print_warnings, AssignmentCommand, RevisionCommand, ServiceCommand,
};
pub use vpns::{MemberCommand, RelayCommand, VpnCommand};

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
    /// Agent releases: sign (offline), upload, list.
    #[command(subcommand, visible_alias = "release")]
    Releases(ReleaseCommand),
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

/// How lists page, for the `after_help` of every list command.
pub const PAGING_HELP: &str = "Paging: a list prints its first page, 50 items (the API's \
default) or --limit N (1 to 500), in the API's order. When more remain, stderr says `(more: add --all, or --cursor CURSOR)`: \
--cursor CURSOR prints the next page, --all walks every page (500 items a request, \
at most 10,000 requests or 10 minutes). With -o json or -o yaml the items of every \
fetched page are one array.";

// The paging flags of every list command (no doc comment: clap would show it
// as the about of a command that flattens these).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Paging")]
pub struct PagingArgs {
    /// Print every page (walked 500 items a request), not just the first.
    #[arg(long)]
    pub all: bool,
    /// Items per page, 1 to 500 (default 50).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Print the page after this cursor (stderr shows it after a partial list).
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
#[command(after_help = PAGING_HELP)]
pub struct GetArgs {
    /// What to list.
    pub kind: GetKind,
    /// A name or id: show that one instead of the list.
    pub name: Option<String>,
    /// Only devices whose labels match this selector, e.g. `plan=family,region in (eu,us)`.
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    #[command(flatten)]
    pub paging: PagingArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GetKind {
    /// Routers.
    #[value(alias = "device")]
    Devices,
    /// Service definitions (not archived ones).
    #[value(alias = "service")]
    Services,
    /// Service revisions on selectors.
    #[value(alias = "assignment")]
    Assignments,
    /// Households.
    #[value(alias = "customer")]
    Customers,
    /// Pay-per-site catalog entries (`catalog/name`).
    #[value(alias = "site")]
    Sites,
    /// Customers' site-to-site VPNs.
    #[value(alias = "vpn")]
    Vpns,
    /// Staged rollouts.
    #[value(alias = "rollout")]
    Rollouts,
    /// Operator tokens (admin).
    #[value(alias = "operator-token")]
    OperatorTokens,
    /// The audit log, newest first.
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
pub enum OperatorTokenCommand {
    /// Make a token; prints its secret once.
    Create {
        /// A name for people (whose token, what for); need not be unique.
        name: String,
        /// What the token may do.
        #[arg(long, value_enum)]
        role: Role,
    },
    /// List tokens, revoked ones included.
    #[command(after_help = PAGING_HELP)]
    List {
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Revoke a token; it is refused at once (its dashboard sessions end too).
    Revoke {
        // Not `token`: that is the global --token's id.
        /// The token's id, or the name of the one active token so named.
        operator_token: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The audit log, newest first.
    #[command(after_help = PAGING_HELP)]
    List {
        #[command(flatten)]
        paging: PagingArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Counts of routers by state, rollouts, VPNs.
    Overview,
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
        Command::Devices(command) => devices::devices(context, command),
        Command::EnrollmentTokens(command) => devices::enrollment_tokens(context, command),
        Command::Services(command) => services::services(context, command),
        Command::Assignments(command) => services::assignments(context, command),
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
        Command::Customers(command) => households::customers(context, command),
        Command::Sites(command) => households::sites(context, command),
        Command::Purchases(command) => households::purchases(context, command),
        Command::Vpns(command) => vpns::vpns(context, command),
        Command::VpnRelays(command) => vpns::relays(context, command),
        Command::Blocks(command) => blocks::blocks(context, command),
        Command::Releases(command) => releases::releases(context, command),
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
