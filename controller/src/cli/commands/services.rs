//! `isdfctl services` (and their revisions) and `assignments`.

use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::{call, object, opt, read_document, show, PagingArgs};
use crate::cli::output;
use crate::cli::resources::{self as res, print_done, print_page};
use crate::cli::{CliError, Context};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Define a service and its first revision.
    Create {
        /// Unique name, 1-64 of `A-Za-z0-9._-`.
        name: String,
        /// The service type, e.g. `flow-block` (the API's and apply's `type` field).
        #[arg(long = "type", alias = "kind", value_name = "TYPE")]
        service_type: String,
        /// The first revision's spec: a JSON or YAML file (`-` for stdin);
        /// its shape depends on the type (docs/services.md).
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// Check the name, type and spec with the server; create nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List services by name (archived ones only with --archived).
    #[command(after_help = super::PAGING_HELP)]
    List {
        /// Include archived services.
        #[arg(long)]
        archived: bool,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Show one service.
    Get {
        /// The service's name or id.
        service: String,
    },
    /// A service's revisions.
    #[command(subcommand)]
    Revisions(RevisionCommand),
    /// The unified diff of two revisions' specs.
    Diff {
        /// The service's name or id.
        service: String,
        /// The older revision.
        from: i32,
        /// The newer revision.
        to: i32,
    },
    /// Delete a service and its revisions; refused while an assignment or an
    /// active rollout uses it (they are listed).
    Delete {
        /// The service's name or id.
        service: String,
    },
    /// Retire a service nothing assigns: hidden from lists, no new revisions
    /// or assignments (refused while assigned; the assignments are listed).
    Archive {
        /// The service's name or id.
        service: String,
    },
    /// Undo `archive`.
    Unarchive {
        /// The service's name or id.
        service: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RevisionCommand {
    /// List a service's revisions, oldest first.
    #[command(after_help = super::PAGING_HELP)]
    List {
        /// The service's name or id.
        service: String,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Show one revision and its spec.
    Get {
        /// The service's name or id.
        service: String,
        /// The revision number (1 is the first).
        revision: i32,
    },
    /// A new revision from a spec file (assignments keep theirs until moved).
    Create {
        /// The service's name or id.
        service: String,
        /// The spec: a JSON or YAML file (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// Check the spec with the server; create nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AssignmentCommand {
    /// Run a service revision on every router a selector matches (and every
    /// router that comes to match it).
    Create {
        /// The service's name or id.
        #[arg(long)]
        service: String,
        /// Label selector of the routers, e.g. `plan=family,region in (eu,us)`;
        /// one assignment per service and selector.
        #[arg(long)]
        selector: String,
        /// The revision to run (default: the service's latest).
        #[arg(long)]
        revision: Option<i32>,
    },
    /// List assignments.
    #[command(after_help = super::PAGING_HELP)]
    List {
        /// Only this service's (name or id).
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Show one assignment.
    Get {
        /// The assignment's id.
        id: String,
    },
    /// Apply another revision of the same service at once (see `rollouts create` to stage it).
    SetRevision {
        /// The assignment's id.
        id: String,
        /// The revision to run.
        revision: i32,
    },
    /// Delete an assignment: its routers stop running the service.
    Delete {
        /// The assignment's id.
        id: String,
    },
}

pub(super) fn services(context: &Context, command: ServiceCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let services = &res::SERVICES;
    match command {
        ServiceCommand::Create {
            name,
            service_type,
            spec,
            dry_run,
        } => {
            let body = json!({"name": name, "type": service_type, "spec": read_document(&spec)?});
            if dry_run {
                client.dry_run(Method::POST, services.path, Some(&body))?;
                print_done(
                    context,
                    services.kind,
                    &name,
                    "valid (dry run: not created)",
                )?;
                return Ok(0);
            }
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
        ServiceCommand::List { archived, paging } => {
            let query: Vec<_> = archived
                .then(|| ("archived", "true".to_owned()))
                .into_iter()
                .collect();
            services.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        ServiceCommand::Delete { service } => delete(context, &service),
        ServiceCommand::Archive { service } => archive(context, &service, true),
        ServiceCommand::Unarchive { service } => archive(context, &service, false),
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
        ServiceCommand::Revisions(RevisionCommand::Create {
            service,
            spec,
            dry_run,
        }) => {
            let id = services.resolve(client, &service)?;
            let body = json!({"spec": read_document(&spec)?});
            let path = format!("{}/revisions", services.item_path(&id));
            if dry_run {
                client.dry_run(Method::POST, &path, Some(&body))?;
                print_done(
                    context,
                    services.kind,
                    &service,
                    "spec valid (dry run: no revision)",
                )?;
                return Ok(0);
            }
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
            let answer = client
                .send(Method::POST, assignments.path, Some(&body))
                .map_err(|e| assignment_hint(e, &service, &selector))?;
            output::print_object(context.format, &answer)?;
            print_warnings(&answer);
            Ok(0)
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

/// The answer's `warnings` (a selector that matches no router...), on stderr.
pub fn print_warnings(answer: &serde_json::Value) {
    for warning in answer["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", warning.as_str().unwrap_or_default());
    }
}

/// A 409 `assignment_exists` says what to do instead.
pub fn assignment_hint(error: CliError, service: &str, selector: &str) -> CliError {
    if error.code() != Some("assignment_exists") {
        return error;
    }
    error.hint(format!(
        "service `{service}` already runs on `{selector}`: change that assignment's revision \
         with `isdfctl assignments set-revision ID REVISION` (at once) or \
         `isdfctl rollouts create --service {service} --selector '{selector}'` (staged); \
         `isdfctl assignments list --service {service}` shows its id"
    ))
}

/// `DELETE /services/{id}`; a 409 lists what still uses the service.
fn delete(context: &Context, service: &str) -> Result<u8, CliError> {
    let client = &context.client;
    let services = &res::SERVICES;
    let id = services.resolve(client, service)?;
    client
        .send(Method::DELETE, &services.item_path(&id), None)
        .map_err(|e| assigned_hint(context, e, &id))?;
    print_done(context, services.kind, service, "deleted")?;
    Ok(0)
}

/// A 409 `service_assigned` lists the assignments to delete first.
fn assigned_hint(context: &Context, e: CliError, id: &str) -> CliError {
    let client = &context.client;
    match e {
        e if e.code() == Some("service_assigned") => {
            let assignments = client
                .list_all(res::ASSIGNMENTS.path, &[("service_id", id.to_owned())])
                .unwrap_or_default();
            let mut hint = String::new();
            if !assignments.is_empty() {
                let rows: Vec<Vec<String>> = assignments
                    .iter()
                    .map(|a| {
                        ["/id", "/selector", "/revision"]
                            .iter()
                            .map(|p| output::cell(a.pointer(p).unwrap_or(&serde_json::Value::Null)))
                            .collect()
                    })
                    .collect();
                hint.push_str("it is assigned by:\n");
                hint.push_str(&output::table(
                    &["ASSIGNMENT", "SELECTOR", "REVISION"],
                    &rows,
                ));
            }
            hint.push_str(
                "delete those first with `isdfctl assignments delete ID` (an active rollout \
                 of one ends with `isdfctl rollouts abort ID`)",
            );
            e.hint(hint)
        }
        e => e,
    }
}

/// `PATCH /services/{id}` with `archived`.
fn archive(context: &Context, service: &str, archived: bool) -> Result<u8, CliError> {
    let services = &res::SERVICES;
    let id = services.resolve(&context.client, service)?;
    let answer = context
        .client
        .send(
            Method::PATCH,
            &services.item_path(&id),
            Some(&json!({"archived": archived})),
        )
        .map_err(|e| assigned_hint(context, e, &id))?;
    match context.format {
        output::Format::Table => {
            let action = if archived { "archived" } else { "unarchived" };
            print_done(context, services.kind, service, action)?
        }
        format => output::print_document(format, &answer)?,
    }
    Ok(0)
}
