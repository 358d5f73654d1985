//! `isdfctl services` (and their revisions) and `assignments`.

use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::{call, object, opt, read_document, show, PagingArgs};
use crate::cli::output;
use crate::cli::resources::{self as res, print_page};
use crate::cli::{CliError, Context};

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

pub(super) fn services(context: &Context, command: ServiceCommand) -> Result<u8, CliError> {
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

pub(super) fn assignments(context: &Context, command: AssignmentCommand) -> Result<u8, CliError> {
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
