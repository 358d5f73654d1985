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
    /// List routers, by name, optionally filtered (filters combine).
    #[command(after_help = super::PAGING_HELP)]
    List {
        /// Only routers whose labels match this selector, e.g. `env=prod,region in (eu,us)`.
        #[arg(long, short = 'l')]
        selector: Option<String>,
        /// Only routers in this state (from their latest status report).
        #[arg(long, value_enum)]
        state: Option<DeviceState>,
        /// Only routers whose name contains this text (case-insensitive).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Show one router.
    Get {
        /// The router's name or id.
        device: String,
    },
    /// Change one router's labels, or those of every router a selector matches.
    ///
    /// `key=value` sets a label, `key-` removes one (as kubectl's). With
    /// --selector, the routers it matches are counted and named (a sample)
    /// first, and the change waits for a `y` unless --yes.
    #[command(after_help = "Examples:\n  \
        isdfctl devices label home-hq plan=business promo-\n  \
        isdfctl devices label --selector 'plan=family,region=eu' plan=family-plus --yes")]
    Label(super::labels::LabelArgs),
    /// Pre-register a router; prints its enrollment token and agent config.
    Create {
        /// Unique name, 1-64 of `A-Za-z0-9._-`.
        name: String,
        /// A label, `key=value` (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Lifetime of the enrollment token, in seconds (default 7 days).
        #[arg(long)]
        token_expires_in: Option<u64>,
    },
    /// Delete a router (not a VPN member or relay).
    Delete {
        /// The router's name or id.
        device: String,
    },
    /// Its compiled, signed config.
    Config {
        /// The router's name or id.
        device: String,
    },
    /// Its latest status report.
    Status {
        /// The router's name or id.
        device: String,
    },
    /// Its recent status reports, newest first.
    History {
        /// The router's name or id.
        device: String,
        /// How many reports (the API's default when absent).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// A new enrollment token for an existing router.
    EnrollmentToken {
        /// The router's name or id.
        device: String,
        /// Lifetime of the token, in seconds (default 7 days).
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Its reported events (local blocks, detections) and their totals.
    Events {
        /// The router's name or id.
        device: String,
        /// How many events (the API's default when absent).
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
    Get {
        /// The router's name or id.
        device: String,
    },
    /// Rotate its WireGuard key.
    Rotate {
        /// The router's name or id.
        device: String,
    },
}

/// The device list's `state` filter (the API's values).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DeviceState {
    /// Reported within the online window (10 minutes).
    Online,
    /// Not reported since, or its config expired.
    Stale,
    /// Its last outcome was `rolled_back` or `rejected`.
    Failing,
    /// Enrolled or registered, never reported.
    NeverReported,
}

impl DeviceState {
    fn as_str(self) -> &'static str {
        match self {
            DeviceState::Online => "online",
            DeviceState::Stale => "stale",
            DeviceState::Failing => "failing",
            DeviceState::NeverReported => "never_reported",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EnrollmentTokenCommand {
    /// Tokens for a shipment of routers.
    Create {
        /// How many tokens (one router each).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Lifetime of the tokens, in seconds (default 7 days).
        #[arg(long)]
        expires_in: Option<u64>,
        /// A label the routers get when they enroll, `key=value` (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The routers are named `<prefix>-<id>` (default prefix `router`).
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
        DeviceCommand::List {
            selector,
            state,
            name,
            paging,
        } => {
            let query: Vec<_> = [
                opt("selector", selector),
                opt("state", state.map(DeviceState::as_str)),
                opt("q", name),
            ]
            .into_iter()
            .flatten()
            .collect();
            devices.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        DeviceCommand::Label(args) => super::labels::label(context, &args),
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
