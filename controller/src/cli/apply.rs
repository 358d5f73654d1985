//! `isdfctl apply -f FILE`: makes the server match a multi-document YAML
//! file. Each object is found by its name (an assignment by its service and
//! selector), compared with the server in the server's normal form, and
//! changed only where it differs.
//!
//! **Applying the same file twice makes no mutating call the second time**:
//! every comparison below normalizes the file with the API's own parsers
//! (selectors, site specs, LAN prefixes, address pools) before comparing, so
//! equal means equal to the server. `--dry-run` makes no mutating call at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use clap::Args;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::output::{self, Format};
use super::resources::{self as res, id_text, service_type};
use super::rollout::Policy;
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

/// One document of an apply file.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind")]
pub enum Document {
    Device(DeviceDoc),
    Customer(CustomerDoc),
    Site(SiteDoc),
    Service(ServiceDoc),
    Assignment(AssignmentDoc),
    Vpn(VpnDoc),
}

impl Document {
    /// Objects are applied in this order, so a file may name them in any:
    /// what others refer to comes first.
    fn rank(&self) -> u8 {
        match self {
            Document::Device(_) => 0,
            Document::Customer(_) => 1,
            Document::Site(_) => 2,
            Document::Service(_) => 3,
            Document::Assignment(_) => 4,
            Document::Vpn(_) => 5,
        }
    }

    /// `Kind/name` as the file says it (an assignment: `service:selector`).
    pub fn label(&self) -> String {
        match self {
            Document::Device(d) => format!("Device/{}", d.name),
            Document::Customer(c) => format!("Customer/{}", c.name),
            Document::Site(s) => {
                format!("Site/{}/{}", s.catalog.as_deref().unwrap_or("main"), s.name)
            }
            Document::Service(s) => format!("Service/{}", s.name),
            Document::Assignment(a) => format!("Assignment/{}:{}", a.service, a.selector),
            Document::Vpn(v) => format!("Vpn/{}", v.name),
        }
    }
}

/// Where a document is: its file, its place in the file (1-based, counting
/// every `---` document), and its first line when the file's layout says it.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: String,
    pub index: usize,
    pub line: Option<usize>,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, document {}", self.file, self.index)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// A document and where it came from.
#[derive(Debug)]
pub struct Located {
    pub source: Source,
    pub document: Document,
}

/// A router, found by name (its key). With `labels`, its labels are set to
/// exactly these (`PATCH`); without, they are left alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDoc {
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A household. With `devices`, exactly these routers are attached.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerDoc {
    pub name: String,
    #[serde(default)]
    pub external_ref: Option<String>,
    #[serde(default)]
    pub devices: Option<Vec<String>>,
}

/// A pay-per-site catalog entry, found by catalog and name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteDoc {
    #[serde(default)]
    pub catalog: Option<String>,
    pub name: String,
    pub domains: Vec<String>,
    pub currency: String,
    pub passes: Vec<Value>,
}

/// A service; a spec that differs from the latest revision's makes a new revision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    pub name: String,
    /// The service kind (`flow-block`, ...): `kind` names the document's.
    #[serde(rename = "type")]
    pub service_type: String,
    pub spec: Value,
}

/// A service revision on a selector, found by (service, selector). With
/// `rollout`, a revision change is staged as a rollout instead of applied at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentDoc {
    pub service: String,
    pub selector: String,
    /// Default: the service's latest.
    #[serde(default)]
    pub revision: Option<i32>,
    #[serde(default)]
    pub rollout: Option<Policy>,
}

/// A customer's VPN. Members not in the file are removed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpnDoc {
    pub name: String,
    pub customer: String,
    #[serde(default = "auto")]
    pub topology: String,
    #[serde(default)]
    pub hub: Option<String>,
    /// Tunnel address pool; fixed once the VPN exists.
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub members: Vec<MemberDoc>,
}

fn auto() -> String {
    "auto".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDoc {
    pub device: String,
    #[serde(alias = "prefixes")]
    pub lan_prefixes: Vec<String>,
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

/// Reads every document of every file, in the order they are applied.
pub fn read_documents(files: &[PathBuf]) -> Result<Vec<Located>, CliError> {
    let mut documents = Vec::new();
    for path in files {
        let text = super::commands::read_input(path)?;
        let file = if path.as_os_str() == "-" {
            "<stdin>".to_owned()
        } else {
            path.display().to_string()
        };
        let parsed: Vec<_> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(Value::deserialize)
            .collect();
        let lines = document_lines(&text);
        let lines = (lines.len() == parsed.len()).then_some(lines);
        for (i, value) in parsed.into_iter().enumerate() {
            let source = Source {
                file: file.clone(),
                index: i + 1,
                line: lines.as_ref().map(|l| l[i]),
            };
            let value = value.map_err(|e| CliError::Usage(format!("{source}: {e}")))?;
            if value.is_null() {
                continue;
            }
            let document = serde_json::from_value(value.clone()).map_err(|e| {
                let what = match (value["kind"].as_str(), value["name"].as_str()) {
                    (Some(kind), Some(name)) => format!(" {kind}/{name}"),
                    (Some(kind), None) => format!(" {kind}"),
                    _ => String::new(),
                };
                CliError::Usage(format!("{source}{what}: {e}"))
            })?;
            documents.push(Located { source, document });
        }
    }
    documents.sort_by_key(|d| d.document.rank());
    Ok(documents)
}

/// The first line of each document of a YAML stream, as serde_yaml_ng
/// counts documents: the text before the first `---` is one only when it
/// holds more than comments; after that every `---` starts one. The caller
/// uses these only when the counts agree (a `---` inside a block scalar
/// would fool this).
fn document_lines(text: &str) -> Vec<usize> {
    let content = |line: &str| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#')
    };
    let mut starts = Vec::new();
    // (line of the start, has content) of the document being read.
    let mut current: Option<(usize, bool)> = Some((1, false));
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if separator {
            if let Some((start, has)) = current.take() {
                if has || !first {
                    starts.push(start);
                }
            }
            first = false;
            current = Some((number, line.len() > 3 && content(&line[3..])));
            continue;
        }
        if let Some((start, has)) = current.as_mut() {
            if !*has && content(line) {
                *start = number;
                *has = true;
            }
        }
    }
    if let Some((start, has)) = current {
        if has || !first {
            starts.push(start);
        }
    }
    starts
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
                self.calls_for_document += 1;
                self.client().send(method, path, body)
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
                "\n{} itself is partly applied ({} change(s) made)",
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
            None if self.planned.contains(&(resource.kind, name.to_owned())) => Ok(None),
            None => Err(CliError::api(
                "not_found",
                format!(
                    "no {} named `{name}` (on the server or in the file)",
                    resource.kind
                ),
            )),
        }
    }

    fn device(&mut self, doc: &DeviceDoc) -> Result<(), CliError> {
        if let Some(labels) = &doc.labels {
            crate::model::Labels::parse(labels.clone()).map_err(invalid)?;
        }
        let wanted = doc.labels.clone().unwrap_or_default();
        let Some(device) = self.find(&res::DEVICES, &doc.name)? else {
            let body = json!({"name": doc.name, "labels": wanted});
            self.mutate(Method::POST, res::DEVICES.path, Some(&body))?;
            let hint = format!(
                "enroll it with `isdfctl devices enrollment-token {}`",
                doc.name
            );
            return self.done("device", &doc.name, "created", Some(hint));
        };
        let current: BTreeMap<String, String> =
            serde_json::from_value(device["labels"].clone()).unwrap_or_default();
        if doc.labels.is_none() || current == wanted {
            return self.done("device", &doc.name, "unchanged", None);
        }
        let path = res::DEVICES.item_path(&id_text(&device["id"]));
        self.mutate(Method::PATCH, &path, Some(&json!({"labels": wanted})))?;
        let detail = format!(
            "labels {} -> {}",
            output::cell(&json!(current)),
            output::cell(&json!(wanted))
        );
        self.done("device", &doc.name, "configured", Some(detail))
    }

    fn customer(&mut self, doc: &CustomerDoc) -> Result<(), CliError> {
        let customers = &res::CUSTOMERS;
        // Device ids; a device only planned while checking has none yet.
        let mut wanted = BTreeSet::new();
        let mut planned_devices = Vec::new();
        for device in doc.devices.iter().flatten() {
            match self.reference(&res::DEVICES, device)? {
                Some(id) => {
                    wanted.insert(id);
                }
                None => planned_devices.push(device.clone()),
            }
        }
        let planned_note = || {
            format!(
                "router(s) {} are created by this file: the server checked the rest",
                planned_devices.join(", ")
            )
        };
        let Some(customer) = self.find(customers, &doc.name)? else {
            let body =
                json!({"name": doc.name, "external_ref": doc.external_ref, "devices": wanted});
            let check = if planned_devices.is_empty() {
                Check::AsIs
            } else {
                Check::Partial(body.clone(), planned_note())
            };
            self.mutate_checked(Method::POST, customers.path, Some(&body), check)?;
            return self.done("customer", &doc.name, "created", None);
        };
        let id = id_text(&customer["id"]);
        if doc.external_ref.is_some()
            && customer["external_ref"].as_str() != doc.external_ref.as_deref()
        {
            return Err(CliError::api(
                "immutable_field",
                format!(
                    "external_ref is {} on the server, {} in the file; the API cannot change it",
                    output::cell(&customer["external_ref"]),
                    doc.external_ref.as_deref().unwrap_or_default()
                ),
            ));
        }
        let mut changes = Vec::new();
        if doc.devices.is_some() {
            let detail = self.client().get(&customers.item_path(&id))?;
            let current: BTreeSet<String> = detail["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| id_text(&d["id"]))
                .collect();
            for device in wanted.difference(&current) {
                let path = format!("{}/devices/{device}", customers.item_path(&id));
                self.mutate(Method::PUT, &path, None)?;
                changes.push(format!("attached {device}"));
            }
            for device in &planned_devices {
                let note = format!("router {device} is created by this file: attached after it");
                self.mutate_checked(Method::PUT, "", None, Check::Local(note))?;
                changes.push(format!("attached {device}"));
            }
            for device in current.difference(&wanted) {
                let path = format!("{}/devices/{device}", customers.item_path(&id));
                self.mutate(Method::DELETE, &path, None)?;
                changes.push(format!("detached {device}"));
            }
        }
        self.changed("customer", &doc.name, changes)
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

    fn site(&mut self, doc: &SiteDoc) -> Result<(), CliError> {
        let sites = &res::SITES;
        let input = json!({
            "catalog": doc.catalog, "name": doc.name, "domains": doc.domains,
            "currency": doc.currency, "passes": doc.passes,
        });
        let parsed: crate::services::pay_per_site::catalog::SiteInput =
            serde_json::from_value(input.clone()).map_err(invalid)?;
        let spec =
            crate::services::pay_per_site::catalog::SiteSpec::parse(&parsed).map_err(invalid)?;
        let normal = json!({
            "catalog": spec.catalog(),
            "name": spec.name().as_str(),
            "domains": spec.domains().iter().map(|d| d.as_str()).collect::<Vec<_>>(),
            "currency": spec.currency().as_str(),
            "passes": spec.passes(),
        });
        let existing = self
            .client()
            .list_all(sites.path, &[("catalog", spec.catalog().to_owned())])?
            .into_iter()
            .find(|s| s["name"] == normal["name"]);
        let name = format!("{}/{}", spec.catalog(), spec.name().as_str());
        let Some(site) = existing else {
            self.mutate(Method::POST, sites.path, Some(&input))?;
            return self.done("site", &name, "created", None);
        };
        let server: serde_json::Map<String, Value> =
            ["catalog", "name", "domains", "currency", "passes"]
                .iter()
                .map(|k| ((*k).to_owned(), site[*k].clone()))
                .collect();
        if Value::Object(server) == normal {
            return self.done("site", &name, "unchanged", None);
        }
        self.mutate(
            Method::PUT,
            &sites.item_path(&id_text(&site["id"])),
            Some(&input),
        )?;
        self.done("site", &name, "configured", None)
    }

    fn service(&mut self, doc: &ServiceDoc) -> Result<(), CliError> {
        let services = &res::SERVICES;
        let Some(service) = self.find(services, &doc.name)? else {
            let body = json!({"name": doc.name, "type": doc.service_type, "spec": doc.spec});
            let created = self.mutate(Method::POST, services.path, Some(&body))?;
            let id = created["id"].as_str().map(str::to_owned);
            self.services.insert(
                doc.name.clone(),
                ServiceRef {
                    id,
                    latest: 1,
                    on_server: 0,
                },
            );
            return self.done("service", &doc.name, "created", None);
        };
        let id = id_text(&service["id"]);
        if service_type(&service) != Some(doc.service_type.as_str()) {
            return Err(CliError::api(
                "immutable_field",
                format!(
                    "it is a {} service on the server, {} in the file; a service's type \
                     cannot change (create another service)",
                    service_type(&service).unwrap_or("-"),
                    doc.service_type
                ),
            ));
        }
        let latest = service["latest_revision"].as_i64().unwrap_or(0) as i32;
        let revision = self
            .client()
            .get(&format!("{}/revisions/{latest}", services.item_path(&id)))?;
        let known = |latest| ServiceRef {
            id: Some(id.clone()),
            latest,
            on_server: self_latest(&service),
        };
        if revision["spec"] == doc.spec {
            self.services.insert(doc.name.clone(), known(latest));
            return self.done("service", &doc.name, "unchanged", None);
        }
        let body = json!({"spec": doc.spec});
        let created = self.mutate(
            Method::POST,
            &format!("{}/revisions", services.item_path(&id)),
            Some(&body),
        )?;
        let new = created["revision"]
            .as_i64()
            .map_or(latest + 1, |r| r as i32);
        self.services.insert(doc.name.clone(), known(new));
        self.done(
            "service",
            &doc.name,
            "configured",
            Some(format!("revision {new}")),
        )
    }

    /// A service's id and revisions, from this run or the server.
    fn service_ref(&mut self, name: &str) -> Result<ServiceRef, CliError> {
        if let Some(known) = self.services.get(name) {
            return Ok(known.clone());
        }
        let service = self.find(&res::SERVICES, name)?.ok_or_else(|| {
            CliError::api(
                "not_found",
                format!("no service named `{name}` (on the server or in the file)"),
            )
        })?;
        let known = ServiceRef {
            id: Some(id_text(&service["id"])),
            latest: self_latest(&service),
            on_server: self_latest(&service),
        };
        self.services.insert(name.to_owned(), known.clone());
        Ok(known)
    }

    /// Checking a change the server cannot see yet (its service or revision
    /// is made by this file): the selector through `GET /devices/matching`.
    fn check_selector(&self, selector: &str) -> Result<u64, CliError> {
        let answer = self.client().get_query(
            "/api/v1/devices/matching",
            &[
                ("selector", selector.to_owned()),
                ("sample", "1".to_owned()),
            ],
        )?;
        Ok(answer["matched"].as_u64().unwrap_or(0))
    }

    fn assignment(&mut self, doc: &AssignmentDoc) -> Result<(), CliError> {
        let selector = crate::model::Selector::parse(&doc.selector).map_err(invalid)?;
        let selector = selector.as_str().to_owned();
        let name = format!("{}:{selector}", doc.service);
        let service = self.service_ref(&doc.service)?;
        let revision = doc.revision.unwrap_or(service.latest);
        if revision < 1 || revision > service.latest {
            return Err(CliError::api(
                "invalid_revision",
                format!(
                    "revision {revision}: service `{}` has revisions 1 to {} (counting this file's)",
                    doc.service, service.latest
                ),
            ));
        }
        // The server can check the call as it is only when the service and
        // the revision exist there already.
        let unseen = match &service.id {
            None => Some(format!("service {} is created by this file", doc.service)),
            Some(_) if revision > service.on_server => {
                Some(format!("revision {revision} is made by this file"))
            }
            Some(_) => None,
        };
        let local_check = |this: &Self, what: &str| -> Result<Check, CliError> {
            let Some(unseen) = &unseen else {
                return Ok(Check::AsIs);
            };
            let matched = this.check_selector(&selector)?;
            Ok(Check::Local(format!(
                "{unseen}: checked the selector (it matches {matched} routers) and the \
                 revision number; the server checks the {what} when it is applied"
            )))
        };
        let existing = match &service.id {
            Some(id) => self
                .client()
                .list_all(res::ASSIGNMENTS.path, &[("service_id", id.clone())])?
                .into_iter()
                .find(|a| a["selector"].as_str() == Some(selector.as_str())),
            None => None,
        };
        let Some(assignment) = existing else {
            let detail = match &doc.rollout {
                Some(policy) => {
                    let mut body = json!({"service_id": service.id, "selector": selector});
                    Policy {
                        revision: Some(revision),
                        ..policy.clone()
                    }
                    .add_to(&mut body);
                    let check = local_check(self, "rollout")?;
                    let rollout = self
                        .mutate_checked(Method::POST, res::ROLLOUTS.path, Some(&body), check)
                        .map_err(super::rollout::empty_wave_hint)?;
                    self.warn(&name, &rollout);
                    format!(
                        "revision {revision}, rollout {}",
                        output::cell(&rollout["id"])
                    )
                }
                None => {
                    let body = json!({"service_id": service.id, "selector": selector, "revision": revision});
                    let check = local_check(self, "assignment")?;
                    let created = self.mutate_checked(
                        Method::POST,
                        res::ASSIGNMENTS.path,
                        Some(&body),
                        check,
                    )?;
                    self.warn(&name, &created);
                    format!("revision {revision}")
                }
            };
            return self.done("assignment", &name, "created", Some(detail));
        };
        let id = id_text(&assignment["id"]);
        if assignment["revision"].as_i64() == Some(i64::from(revision)) {
            return self.done("assignment", &name, "unchanged", None);
        }
        let Some(policy) = &doc.rollout else {
            let body = json!({"revision": revision});
            let check = match &unseen {
                None => Check::AsIs,
                Some(unseen) => Check::Local(format!(
                    "{unseen}: checked the revision number; the server checks the change when \
                     it is applied"
                )),
            };
            self.mutate_checked(
                Method::PATCH,
                &res::ASSIGNMENTS.item_path(&id),
                Some(&body),
                check,
            )?;
            return self.done(
                "assignment",
                &name,
                "configured",
                Some(format!("revision {revision}")),
            );
        };
        // A rollout to this revision already under way is what the file asks.
        for state in ["running", "paused"] {
            let active = self
                .client()
                .list_all(res::ROLLOUTS.path, &[("state", state.to_owned())])?;
            if let Some(r) = active.iter().find(|r| {
                r["assignment_id"].as_str() == Some(id.as_str())
                    && r["to_revision"].as_i64() == Some(i64::from(revision))
            }) {
                let detail = format!("rollout {} {state}", output::cell(&r["id"]));
                return self.done("assignment", &name, "unchanged", Some(detail));
            }
        }
        let mut body = json!({"assignment_id": id});
        Policy {
            revision: Some(revision),
            ..policy.clone()
        }
        .add_to(&mut body);
        let check = match &unseen {
            None => Check::AsIs,
            Some(unseen) => Check::Local(format!(
                "{unseen}: checked the revision number; the server checks the rollout when it \
                 is applied"
            )),
        };
        let rollout = self
            .mutate_checked(Method::POST, res::ROLLOUTS.path, Some(&body), check)
            .map_err(super::rollout::empty_wave_hint)?;
        let detail = format!(
            "revision {revision}, rollout {}",
            output::cell(&rollout["id"])
        );
        self.done("assignment", &name, "configured", Some(detail))
    }

    /// The server's `warnings` for an object (a selector that matches no router).
    fn warn(&self, name: &str, answer: &Value) {
        for warning in answer["warnings"].as_array().into_iter().flatten() {
            eprintln!(
                "warning: assignment/{name}: {}",
                warning.as_str().unwrap_or_default()
            );
        }
    }

    fn vpn(&mut self, doc: &VpnDoc) -> Result<(), CliError> {
        let vpns = &res::VPNS;
        // (file name, id or none when only planned, prefixes)
        let mut members = Vec::new();
        let mut planned = Vec::new();
        for member in &doc.members {
            let prefixes =
                crate::vpn::addresses::LanPrefixes::parse(&member.lan_prefixes, &member.device)
                    .map_err(|e| {
                        let (crate::vpn::addresses::PrefixError::Invalid(m)
                        | crate::vpn::addresses::PrefixError::Count(m)) = e;
                        invalid(m)
                    })?
                    .to_texts();
            let id = self.reference(&res::DEVICES, &member.device)?;
            if id.is_none() {
                planned.push(format!("router {}", member.device));
            }
            members.push((member.device.clone(), id, prefixes));
        }
        let hub = match doc.hub.as_deref() {
            Some(h) => {
                let id = self.reference(&res::DEVICES, h)?;
                if id.is_none() {
                    planned.push(format!("hub {h}"));
                }
                id
            }
            None => None,
        };
        let pool = doc
            .pool
            .as_deref()
            .map(|p| crate::vpn::addresses::AddressPool::parse(p).map(|p| p.to_string()))
            .transpose()
            .map_err(invalid)?;
        let customer = self.reference(&res::CUSTOMERS, &doc.customer)?;
        if customer.is_none() {
            planned.push(format!("customer {}", doc.customer));
        }
        let local = |what: &[String]| {
            Check::Local(format!(
                "{} created by this file: checked the prefixes and pool here; the server \
                 checks the rest when it is applied",
                what.join(", ")
            ))
        };
        let existing = match &customer {
            Some(c) => self
                .client()
                .list_all(vpns.path, &[("customer_id", c.clone())])?
                .into_iter()
                .find(|v| v["name"].as_str() == Some(doc.name.as_str())),
            None => None,
        };
        let Some(summary) = existing else {
            let body = json!({
                "customer_id": customer, "name": doc.name, "topology": doc.topology, "hub": hub,
                "address_pool": pool,
                "members": members.iter()
                    .map(|(_, d, p)| json!({"device_id": d, "prefixes": p}))
                    .collect::<Vec<_>>(),
            });
            let check = if planned.is_empty() {
                Check::AsIs
            } else {
                local(&planned)
            };
            self.mutate_checked(Method::POST, vpns.path, Some(&body), check)?;
            return self.done("vpn", &doc.name, "created", None);
        };
        let id = id_text(&summary["id"]);
        let vpn = self.client().get(&vpns.item_path(&id))?;
        if let Some(pool) = &pool {
            if vpn["address_pool"].as_str() != Some(pool.as_str()) {
                return Err(CliError::api(
                    "immutable_field",
                    format!(
                        "its address pool is {} on the server, {pool} in the file; \
                         a VPN's pool cannot change",
                        output::cell(&vpn["address_pool"])
                    ),
                ));
            }
        }
        let current: BTreeMap<String, Vec<String>> = vpn["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    id_text(&m["device_id"]),
                    serde_json::from_value(m["prefixes"].clone()).unwrap_or_default(),
                )
            })
            .collect();
        let mut changes = Vec::new();
        let sorted = |p: &Vec<String>| p.iter().cloned().collect::<BTreeSet<_>>();
        for (name, device, prefixes) in &members {
            let body = json!({"prefixes": prefixes});
            match device {
                Some(device) => {
                    if current.get(device).map(sorted) != Some(sorted(prefixes)) {
                        let path = format!("{}/members/{device}", vpns.item_path(&id));
                        self.mutate(Method::PUT, &path, Some(&body))?;
                        changes.push(format!("member {device} put"));
                    }
                }
                None => {
                    let check = local(&[format!("router {name}")]);
                    self.mutate_checked(Method::PUT, "", Some(&body), check)?;
                    changes.push(format!("member {name} put"));
                }
            }
        }
        if vpn["topology"].as_str() != Some(doc.topology.as_str())
            || vpn["hub"].as_str() != hub.as_deref()
            || (doc.hub.is_some() && hub.is_none())
        {
            let body = json!({"topology": doc.topology, "hub": hub});
            let check = match doc.hub.as_deref() {
                Some(h) if hub.is_none() => local(&[format!("hub {h}")]),
                _ => Check::AsIs,
            };
            self.mutate_checked(Method::PATCH, &vpns.item_path(&id), Some(&body), check)?;
            changes.push(format!("topology {}", doc.topology));
        }
        let wanted: BTreeSet<&String> = members.iter().filter_map(|(_, d, _)| d.as_ref()).collect();
        for device in current.keys().filter(|d| !wanted.contains(d)) {
            let path = format!("{}/members/{device}", vpns.item_path(&id));
            self.mutate(Method::DELETE, &path, None)?;
            changes.push(format!("member {device} removed"));
        }
        self.changed("vpn", &doc.name, changes)
    }
}

/// The latest revision a service view says.
fn self_latest(service: &Value) -> i32 {
    service["latest_revision"].as_i64().unwrap_or(0) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_parse_and_sort_by_dependency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(
            &path,
            "kind: Assignment\nservice: s\nselector: a=b\n---\n\
             kind: Service\nname: s\ntype: flow-block\nspec: {flows: []}\n---\n",
        )
        .unwrap();
        let documents = read_documents(std::slice::from_ref(&path)).unwrap();
        assert!(matches!(documents[0].document, Document::Service(_)));
        assert!(matches!(documents[1].document, Document::Assignment(_)));
        assert_eq!(documents[0].source.index, 2);
        assert_eq!(documents[0].source.line, Some(5));
        assert_eq!(documents[1].source.line, Some(1));

        std::fs::write(&path, "kind: Service\nname: s\nkind2: x\n").unwrap();
        let Err(CliError::Usage(message)) = read_documents(&[path]) else {
            panic!("a usage error")
        };
        assert!(
            message.contains("document 1 (line 1) Service/s: "),
            "{message}"
        );
    }

    #[test]
    fn document_lines_count_as_serde_does() {
        let text = "# a comment\n\nkind: A\n---\n# b\nkind: B\n---\n---\nkind: D\n";
        assert_eq!(document_lines(text), [3, 6, 7, 9]);
        let count = serde_yaml_ng::Deserializer::from_str(text).count();
        assert_eq!(count, 4);
        let leading = "---\nkind: A\n--- # two\nkind: B\n";
        assert_eq!(document_lines(leading), [2, 4]);
        assert_eq!(serde_yaml_ng::Deserializer::from_str(leading).count(), 2);
    }
}
