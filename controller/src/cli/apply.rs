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
use super::resources::{self as res, id_text};
use super::rollout::Policy;
use super::{CliError, Context};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A YAML file of one or more documents (`-` for stdin; repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Show what would change; change nothing.
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
}

/// A router. The API cannot change a router's labels: a difference is an error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDoc {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
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

/// What apply did to one object.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub kind: &'static str,
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub dry_run: bool,
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
pub fn read_documents(files: &[PathBuf]) -> Result<Vec<Document>, CliError> {
    let mut documents = Vec::new();
    for path in files {
        let text = super::commands::read_input(path)?;
        for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let at = || format!("{} (document {})", path.display(), i + 1);
            let value = Value::deserialize(document)
                .map_err(|e| CliError::Usage(format!("{}: {e}", at())))?;
            if value.is_null() {
                continue;
            }
            documents.push(
                serde_json::from_value(value)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", at())))?,
            );
        }
    }
    documents.sort_by_key(Document::rank);
    Ok(documents)
}

pub fn run(context: &Context, args: &ApplyArgs) -> Result<u8, CliError> {
    let documents = read_documents(&args.files)?;
    let mut applier = Applier {
        context,
        dry_run: args.dry_run,
        planned: HashSet::new(),
        services: HashMap::new(),
        outcomes: Vec::new(),
    };
    let result = documents.iter().try_for_each(|d| applier.apply(d));
    if context.format != Format::Table {
        let outcomes =
            serde_json::to_value(&applier.outcomes).map_err(|e| CliError::Other(e.to_string()))?;
        output::print_document(context.format, &outcomes)?;
    }
    result.map(|()| 0)
}

struct Applier<'a> {
    context: &'a Context,
    dry_run: bool,
    /// Objects a dry run would create: (kind, name).
    planned: HashSet<(&'static str, String)>,
    /// Services by name: id (none when only planned) and latest revision.
    services: HashMap<String, (Option<String>, i32)>,
    outcomes: Vec<Outcome>,
}

/// Made from what the file says: a usage error (exit code 2).
fn invalid(what: String, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("{what}: {e}"))
}

impl Applier<'_> {
    fn apply(&mut self, document: &Document) -> Result<(), CliError> {
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

    /// A mutating call, or nothing in a dry run.
    fn mutate(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        if self.dry_run {
            return Ok(Value::Null);
        }
        self.client().send(method, path, body)
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
            dry_run: self.dry_run,
        };
        if self.context.format == Format::Table {
            output::write_out(&outcome.line())?;
        }
        self.outcomes.push(outcome);
        Ok(())
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

    /// The id of a referenced object; `None` when only a dry run's plan has it.
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
        let what = format!("device/{}", doc.name);
        crate::model::Labels::parse(doc.labels.clone()).map_err(|e| invalid(what.clone(), e))?;
        let Some(device) = self.find(&res::DEVICES, &doc.name)? else {
            let body = json!({"name": doc.name, "labels": doc.labels});
            self.mutate(Method::POST, res::DEVICES.path, Some(&body))?;
            let hint = format!(
                "enroll it with `isdfctl devices enrollment-token {}`",
                doc.name
            );
            return self.done("device", &doc.name, "created", Some(hint));
        };
        let labels: BTreeMap<String, String> =
            serde_json::from_value(device["labels"].clone()).unwrap_or_default();
        if labels != doc.labels {
            return Err(CliError::api(
                "immutable_field",
                format!(
                    "{what}: its labels are {} on the server and {} in the file; the API \
                     cannot change a router's labels (delete and re-register it)",
                    output::cell(&json!(labels)),
                    output::cell(&json!(doc.labels))
                ),
            ));
        }
        self.done("device", &doc.name, "unchanged", None)
    }

    fn customer(&mut self, doc: &CustomerDoc) -> Result<(), CliError> {
        let customers = &res::CUSTOMERS;
        // Device ids; a device only planned in a dry run has none yet.
        let mut wanted = BTreeSet::new();
        for device in doc.devices.iter().flatten() {
            if let Some(id) = self.reference(&res::DEVICES, device)? {
                wanted.insert(id);
            }
        }
        let Some(customer) = self.find(customers, &doc.name)? else {
            let body =
                json!({"name": doc.name, "external_ref": doc.external_ref, "devices": wanted});
            self.mutate(Method::POST, customers.path, Some(&body))?;
            return self.done("customer", &doc.name, "created", None);
        };
        let id = id_text(&customer["id"]);
        if doc.external_ref.is_some()
            && customer["external_ref"].as_str() != doc.external_ref.as_deref()
        {
            return Err(CliError::api(
                "immutable_field",
                format!(
                    "customer/{}: external_ref is {} on the server, {} in the file; the API cannot change it",
                    doc.name,
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
                self.mutate(
                    Method::PUT,
                    &format!("{}/devices/{device}", customers.item_path(&id)),
                    None,
                )?;
                changes.push(format!("attached {device}"));
            }
            for device in current.difference(&wanted) {
                self.mutate(
                    Method::DELETE,
                    &format!("{}/devices/{device}", customers.item_path(&id)),
                    None,
                )?;
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
        let what = format!("site/{}", doc.name);
        let parsed: crate::services::pay_per_site::catalog::SiteInput =
            serde_json::from_value(input.clone()).map_err(|e| invalid(what.clone(), e))?;
        let spec = crate::services::pay_per_site::catalog::SiteSpec::parse(&parsed)
            .map_err(|e| invalid(what.clone(), e))?;
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
            let body = json!({"name": doc.name, "kind": doc.service_type, "spec": doc.spec});
            let created = self.mutate(Method::POST, services.path, Some(&body))?;
            let id = created["id"].as_str().map(str::to_owned);
            self.services.insert(doc.name.clone(), (id, 1));
            return self.done("service", &doc.name, "created", None);
        };
        let id = id_text(&service["id"]);
        if service["kind"].as_str() != Some(doc.service_type.as_str()) {
            return Err(CliError::api(
                "immutable_field",
                format!(
                    "service/{}: it is a {} service on the server, {} in the file; a \
                     service's kind cannot change (create another service)",
                    doc.name,
                    output::cell(&service["kind"]),
                    doc.service_type
                ),
            ));
        }
        let latest = service["latest_revision"].as_i64().unwrap_or(0) as i32;
        let revision = self
            .client()
            .get(&format!("{}/revisions/{latest}", services.item_path(&id)))?;
        if revision["spec"] == doc.spec {
            self.services.insert(doc.name.clone(), (Some(id), latest));
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
        self.services.insert(doc.name.clone(), (Some(id), new));
        self.done(
            "service",
            &doc.name,
            "configured",
            Some(format!("revision {new}")),
        )
    }

    /// A service's id and latest revision, from this run or the server.
    fn service_ref(&mut self, name: &str) -> Result<(Option<String>, i32), CliError> {
        if let Some(known) = self.services.get(name) {
            return Ok(known.clone());
        }
        let service = self.find(&res::SERVICES, name)?.ok_or_else(|| {
            CliError::api(
                "not_found",
                format!("no service named `{name}` (on the server or in the file)"),
            )
        })?;
        let known = (
            Some(id_text(&service["id"])),
            service["latest_revision"].as_i64().unwrap_or(0) as i32,
        );
        self.services.insert(name.to_owned(), known.clone());
        Ok(known)
    }

    fn assignment(&mut self, doc: &AssignmentDoc) -> Result<(), CliError> {
        let selector = crate::model::Selector::parse(&doc.selector)
            .map_err(|e| invalid(format!("assignment/{}:{}", doc.service, doc.selector), e))?;
        let selector = selector.as_str().to_owned();
        let name = format!("{}:{selector}", doc.service);
        let (service_id, latest) = self.service_ref(&doc.service)?;
        let revision = doc.revision.unwrap_or(latest);
        let existing = match &service_id {
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
                    let mut body = json!({"service_id": service_id, "selector": selector});
                    Policy {
                        revision: Some(revision),
                        ..policy.clone()
                    }
                    .add_to(&mut body);
                    let rollout = self.mutate(Method::POST, res::ROLLOUTS.path, Some(&body))?;
                    format!(
                        "revision {revision}, rollout {}",
                        output::cell(&rollout["id"])
                    )
                }
                None => {
                    let body = json!({"service_id": service_id, "selector": selector, "revision": revision});
                    self.mutate(Method::POST, res::ASSIGNMENTS.path, Some(&body))?;
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
            self.mutate(Method::PATCH, &res::ASSIGNMENTS.item_path(&id), Some(&body))?;
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
        let rollout = self.mutate(Method::POST, res::ROLLOUTS.path, Some(&body))?;
        let detail = format!(
            "revision {revision}, rollout {}",
            output::cell(&rollout["id"])
        );
        self.done("assignment", &name, "configured", Some(detail))
    }

    fn vpn(&mut self, doc: &VpnDoc) -> Result<(), CliError> {
        let vpns = &res::VPNS;
        let what = format!("vpn/{}", doc.name);
        let mut members = BTreeMap::new();
        for member in &doc.members {
            let prefixes =
                crate::vpn::addresses::LanPrefixes::parse(&member.lan_prefixes, &member.device)
                    .map_err(|e| {
                        let (crate::vpn::addresses::PrefixError::Invalid(m)
                        | crate::vpn::addresses::PrefixError::Count(m)) = e;
                        invalid(what.clone(), m)
                    })?
                    .to_texts();
            let id = self.reference(&res::DEVICES, &member.device)?;
            members.insert(
                id.unwrap_or_else(|| format!("planned:{}", member.device)),
                prefixes,
            );
        }
        let hub = doc
            .hub
            .as_deref()
            .map(|h| self.reference(&res::DEVICES, h))
            .transpose()?
            .flatten();
        let pool = doc
            .pool
            .as_deref()
            .map(|p| crate::vpn::addresses::AddressPool::parse(p).map(|p| p.to_string()))
            .transpose()
            .map_err(|e| invalid(what.clone(), e))?;
        let customer = self.reference(&res::CUSTOMERS, &doc.customer)?;
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
                    .map(|(d, p)| json!({"device_id": d, "prefixes": p}))
                    .collect::<Vec<_>>(),
            });
            self.mutate(Method::POST, vpns.path, Some(&body))?;
            return self.done("vpn", &doc.name, "created", None);
        };
        let id = id_text(&summary["id"]);
        let vpn = self.client().get(&vpns.item_path(&id))?;
        if let Some(pool) = &pool {
            if vpn["address_pool"].as_str() != Some(pool.as_str()) {
                return Err(CliError::api(
                    "immutable_field",
                    format!(
                        "{what}: its address pool is {} on the server, {pool} in the file; \
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
        for (device, prefixes) in &members {
            let sorted = |p: &Vec<String>| p.iter().cloned().collect::<BTreeSet<_>>();
            if current.get(device).map(sorted) != Some(sorted(prefixes)) {
                let path = format!("{}/members/{device}", vpns.item_path(&id));
                self.mutate(Method::PUT, &path, Some(&json!({"prefixes": prefixes})))?;
                changes.push(format!("member {device} put"));
            }
        }
        if vpn["topology"].as_str() != Some(doc.topology.as_str())
            || vpn["hub"].as_str() != hub.as_deref()
        {
            let body = json!({"topology": doc.topology, "hub": hub});
            self.mutate(Method::PATCH, &vpns.item_path(&id), Some(&body))?;
            changes.push(format!("topology {}", doc.topology));
        }
        for device in current.keys().filter(|d| !members.contains_key(*d)) {
            let path = format!("{}/members/{device}", vpns.item_path(&id));
            self.mutate(Method::DELETE, &path, None)?;
            changes.push(format!("member {device} removed"));
        }
        self.changed("vpn", &doc.name, changes)
    }
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
        assert!(matches!(documents[0], Document::Service(_)));
        assert!(matches!(documents[1], Document::Assignment(_)));

        std::fs::write(&path, "kind: Service\nname: s\nkind2: x\n").unwrap();
        assert!(matches!(read_documents(&[path]), Err(CliError::Usage(_))));
    }
}
