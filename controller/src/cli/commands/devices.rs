//! `isdfctl devices` (with their WireGuard side) and `enrollment-tokens`.

use std::collections::BTreeMap;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::{call, object, opt, show, show_array, PagingArgs};
use crate::cli::output;
use crate::cli::resources::{self as res};
use crate::cli::{CliError, Context};

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

pub(super) fn devices(context: &Context, command: DeviceCommand) -> Result<u8, CliError> {
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

pub(super) fn enrollment_tokens(
    context: &Context,
    command: EnrollmentTokenCommand,
) -> Result<u8, CliError> {
    let EnrollmentTokenCommand::Create {
        count,
        expires_in,
        labels: pairs,
        name_prefix,
    } = command;
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

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

fn labels(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}
