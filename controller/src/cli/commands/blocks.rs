//! `isdfctl blocks`: timed flow blocks on one router.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::{call, object, show_array};
use crate::cli::output;
use crate::cli::resources::{self as res};
use crate::cli::{CliError, Context};

#[derive(Debug, Subcommand)]
pub enum BlockCommand {
    /// Block flows on a router for a while.
    Create {
        /// The router's name or id.
        device: String,
        /// A flow as JSON or YAML, e.g. `{protocol: tcp, dport: "6881"}` (repeatable).
        #[arg(long = "flow", required = true)]
        flows: Vec<String>,
        /// How long the block lasts, in seconds; it ends by itself.
        #[arg(long)]
        duration: u64,
        /// `drop` (default) or `reject`.
        #[arg(long)]
        action: Option<String>,
        /// Why, for the audit log and the router's events.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Blocks in force on a router.
    List {
        /// The router's name or id.
        device: String,
    },
    /// End an operator block early.
    Delete {
        /// The router's name or id.
        device: String,
        /// The block's id (`blocks list` shows it).
        block: String,
    },
}

pub(super) fn blocks(context: &Context, command: BlockCommand) -> Result<u8, CliError> {
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
