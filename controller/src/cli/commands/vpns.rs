//! `isdfctl vpns` (and their members) and `vpn-relays`.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::{call, object, opt, PagingArgs};
use crate::cli::resources::{self as res};
use crate::cli::{CliError, Context};

#[derive(Debug, Subcommand)]
pub enum VpnCommand {
    /// Make a household's site-to-site VPN.
    Create {
        /// Its name, unique within the household.
        name: String,
        /// The household's name or id.
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
    /// List VPNs.
    #[command(after_help = super::PAGING_HELP)]
    List {
        /// Only this household's (name or id).
        #[arg(long)]
        customer: Option<String>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Show one VPN, its members and tunnels.
    Get {
        /// The VPN's name or id.
        vpn: String,
    },
    /// Change the topology or the hub.
    Update {
        /// The VPN's name or id.
        vpn: String,
        /// `auto`, `mesh` or `hub`.
        #[arg(long)]
        topology: Option<String>,
        /// The hub member (topology `hub`), by name or id.
        #[arg(long)]
        hub: Option<String>,
    },
    /// Delete a VPN; its members' tunnels go down.
    Delete {
        /// The VPN's name or id.
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
        /// The VPN's name or id.
        vpn: String,
        /// The router's name or id.
        device: String,
        /// A LAN prefix (repeatable).
        #[arg(long = "prefix", required = true)]
        prefixes: Vec<String>,
    },
    /// Remove a member.
    Delete {
        /// The VPN's name or id.
        vpn: String,
        /// The router's name or id.
        device: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// List relays and the VPNs they serve.
    #[command(after_help = super::PAGING_HELP)]
    List {
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Let a router relay.
    Add {
        /// The router's name or id.
        device: String,
    },
    /// Stop a router relaying.
    Remove {
        /// The router's name or id.
        device: String,
    },
}

fn parse_member(text: &str) -> Result<(String, Vec<String>), String> {
    text.split_once('=')
        .map(|(d, p)| (d.to_owned(), p.split(',').map(str::to_owned).collect()))
        .ok_or_else(|| format!("`{text}` is not DEVICE=PREFIX[,PREFIX...]"))
}

pub(super) fn vpns(context: &Context, command: VpnCommand) -> Result<u8, CliError> {
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

pub(super) fn relays(context: &Context, command: RelayCommand) -> Result<u8, CliError> {
    let client = &context.client;
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
