//! `isdfctl apply -f FILE`: makes the server match a multi-document YAML
//! file. Each object is found by its name (an assignment by its service and
//! selector), compared with the server in the server's normal form, and
//! changed only where it differs.
//!
//! **Nothing changes before every document is checked**: a first pass sends
//! each change the file asks with `?dry_run=true` (the server's own
//! validation, nothing written), or, for a change that needs an object the
//! file creates first, checks its parts ([`Check`]); only then does the
//! second pass apply. `--dry-run` stops after the first pass.
//!
//! **Applying the same file twice makes no mutating call the second time**:
//! every comparison normalizes the file with the API's own parsers
//! (selectors, site specs, LAN prefixes, address pools) before comparing, so
//! equal means equal to the server.
//!
//! The documents and their parsing are in [`documents`], what each kind
//! compares and calls in `objects.rs`.

mod documents;
mod objects;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use clap::Args;
use reqwest::Method;
use serde_json::Value;

pub use self::documents::*;
use super::output::{self, Format};
use super::resources as res;
use super::resources::id_text;
use super::{CliError, Context};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A YAML file of one or more documents (`-` for stdin; repeatable).
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Show what would change and have the server check every change (as
    /// the real run does); change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What apply did (or, checking, would do) to one object.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub kind: &'static str,
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub dry_run: bool,
    /// What the server could not check before the run, and what was checked
    /// instead (a change that needs an object this file creates first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_checked: Vec<String>,
}

impl Outcome {
    fn line(&self) -> String {
        let detail = self
            .detail
            .as_ref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let dry = if self.dry_run && self.action != "unchanged" {
            " (dry run)"
        } else {
            ""
        };
        format!("{}/{} {}{detail}{dry}\n", self.kind, self.name, self.action)
    }
}

/// Checks every document with the server, then applies them; the first
/// failure names its file, document and object.
pub fn run(context: &Context, args: &ApplyArgs) -> Result<u8, CliError> {
    let documents = read_documents(&args.files)?;
    // 1. Check: every change the file asks, made with `?dry_run=true` (or,
    //    when it needs an object the file creates first, its parts checked
    //    on their own). Nothing is written.
    let mut checker = Applier::new(context, Mode::Check, args.dry_run);
    for located in &documents {
        if let Err(e) = checker.apply(&located.document) {
            if args.dry_run {
                checker.print_outcomes()?;
            }
            let why = if args.dry_run {
                "dry run: nothing was changed"
            } else {
                "nothing was applied: every document is checked before the first change"
            };
            return Err(at(located, e).hint(why));
        }
    }
    if args.dry_run {
        checker.print_outcomes()?;
        checker.print_notes();
        return Ok(0);
    }
    // 2. Apply, in the same order.
    let mut applier = Applier::new(context, Mode::Apply, true);
    let result = documents.iter().try_for_each(|located| {
        applier.calls_for_document = 0;
        applier
            .apply(&located.document)
            .map_err(|e| at(located, e).hint(applier.applied_before(located)))
    });
    applier.print_outcomes()?;
    result.map(|()| 0)
}

/// An error placed at its document.
fn at(located: &Located, error: CliError) -> CliError {
    CliError::At {
        place: format!("{} {}", located.source, located.document.label()),
        error: Box::new(error),
    }
}

/// Checking (every change validated by the server, nothing written), or applying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Check,
    Apply,
}

/// How a change is checked before the run, when it cannot be sent as it is
/// with `?dry_run=true`.
enum Check {
    /// The call as it is.
    AsIs,
    /// This body instead (the parts that do not depend on the file's new objects).
    Partial(Value, String),
    /// Not sent: what was checked instead.
    Local(String),
}

struct Applier<'a> {
    context: &'a Context,
    mode: Mode,
    /// Print each outcome line as it happens (table output).
    print: bool,
    /// Objects created before (by this run, or planned while checking): (kind, name).
    planned: HashSet<(&'static str, String)>,
    /// Services by name.
    services: HashMap<String, ServiceRef>,
    outcomes: Vec<Outcome>,
    /// What the current document's checks could not send as they are.
    not_checked: Vec<String>,
    /// Mutating calls made for the current document (applying).
    calls_for_document: usize,
}

/// A service this run knows: its id (none when only planned), its latest
/// revision counting the file's, and the server's latest.
#[derive(Debug, Clone)]
struct ServiceRef {
    id: Option<String>,
    latest: i32,
    on_server: i32,
}

/// Made from what the file says: a usage error (exit code 2).
fn invalid(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

impl<'a> Applier<'a> {
    fn new(context: &'a Context, mode: Mode, print: bool) -> Self {
        Applier {
            context,
            mode,
            print: print && context.format == Format::Table,
            planned: HashSet::new(),
            services: HashMap::new(),
            outcomes: Vec::new(),
            not_checked: Vec::new(),
            calls_for_document: 0,
        }
    }

    fn apply(&mut self, document: &Document) -> Result<(), CliError> {
        self.not_checked.clear();
        match document {
            Document::Device(d) => self.device(d),
            Document::Customer(c) => self.customer(c),
            Document::Site(s) => self.site(s),
            Document::Service(s) => self.service(s),
            Document::Assignment(a) => self.assignment(a),
            Document::Vpn(v) => self.vpn(v),
        }
    }

    fn client(&self) -> &super::client::Client {
        &self.context.client
    }

    /// A mutating call; checking, the same call with `?dry_run=true`.
    fn mutate(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        self.mutate_checked(method, path, body, Check::AsIs)
    }

    /// A mutating call; checking, the call as `check` says.
    fn mutate_checked(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        check: Check,
    ) -> Result<Value, CliError> {
        match (self.mode, check) {
            (Mode::Apply, _) => {
                let answer = self.client().send(method, path, body)?;
                self.calls_for_document += 1;
                Ok(answer)
            }
            (Mode::Check, Check::AsIs) => {
                self.client().dry_run(method, path, body)?;
                Ok(Value::Null)
            }
            (Mode::Check, Check::Partial(partial, note)) => {
                self.client().dry_run(method, path, Some(&partial))?;
                self.not_checked.push(note);
                Ok(Value::Null)
            }
            (Mode::Check, Check::Local(note)) => {
                self.not_checked.push(note);
                Ok(Value::Null)
            }
        }
    }

    fn done(
        &mut self,
        kind: &'static str,
        name: &str,
        action: &'static str,
        detail: Option<String>,
    ) -> Result<(), CliError> {
        if action == "created" {
            self.planned.insert((kind, name.to_owned()));
        }
        let outcome = Outcome {
            kind,
            name: name.to_owned(),
            action,
            detail,
            dry_run: self.mode == Mode::Check,
            not_checked: std::mem::take(&mut self.not_checked),
        };
        if self.print {
            output::write_out(&outcome.line())?;
        }
        self.outcomes.push(outcome);
        Ok(())
    }

    /// The outcomes as one JSON/YAML document (tables printed them as they came).
    fn print_outcomes(&self) -> Result<(), CliError> {
        if self.context.format == Format::Table {
            return Ok(());
        }
        let outcomes =
            serde_json::to_value(&self.outcomes).map_err(|e| CliError::Other(e.to_string()))?;
        output::print_document(self.context.format, &outcomes)
    }

    /// A dry run says, on stderr, which changes the server could check only in part.
    fn print_notes(&self) {
        for outcome in &self.outcomes {
            for note in &outcome.not_checked {
                eprintln!("note: {}/{}: {note}", outcome.kind, outcome.name);
            }
        }
    }

    /// For an error while applying: what was applied before the failing object.
    fn applied_before(&self, failing: &Located) -> String {
        let applied: Vec<String> = self
            .outcomes
            .iter()
            .filter(|o| o.action != "unchanged")
            .map(|o| format!("{}/{} ({})", o.kind, o.name, o.action))
            .collect();
        let mut text = if applied.is_empty() {
            "nothing was applied before it".to_owned()
        } else {
            format!("applied before it: {}", applied.join(", "))
        };
        if self.calls_for_document > 0 {
            text.push_str(&format!(
                "\n{} itself is partly applied ({} of its changes made)",
                failing.document.label(),
                self.calls_for_document
            ));
        }
        text.push_str(
            "\nthe file was checked before the first change; fix the cause and apply it again \
             (what is applied shows as unchanged)",
        );
        text
    }

    /// The one item of `resource` named `name`, if any.
    fn find(&self, resource: &res::Resource, name: &str) -> Result<Option<Value>, CliError> {
        let mut found = resource.find_by_name(self.client(), name)?;
        match found.len() {
            0 | 1 => Ok(found.pop()),
            n => Err(CliError::api(
                "ambiguous_name",
                format!("{n} {}s are named `{name}`", resource.kind),
            )),
        }
    }

    /// The id of a referenced object; `None` when only the check's plan has it.
    fn reference(&self, resource: &res::Resource, name: &str) -> Result<Option<String>, CliError> {
        match self.find(resource, name)? {
            Some(item) => Ok(Some(id_text(&item["id"]))),
            // Applying, what the file created exists: only a check plans.
            None if self.mode == Mode::Check
                && self.planned.contains(&(resource.kind, name.to_owned())) =>
            {
                Ok(None)
            }
            None => Err(CliError::api(
                "not_found",
                format!(
                    "no {} named `{name}` (on the server or in the file)",
                    resource.kind
                ),
            )),
        }
    }

    /// `configured` with what changed, or `unchanged`.
    fn changed(
        &mut self,
        kind: &'static str,
        name: &str,
        changes: Vec<String>,
    ) -> Result<(), CliError> {
        if changes.is_empty() {
            self.done(kind, name, "unchanged", None)
        } else {
            self.done(kind, name, "configured", Some(changes.join(", ")))
        }
    }
}
