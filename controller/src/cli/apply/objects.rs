//! What `apply` compares and calls for each kind of document.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::{json, Value};

use super::{invalid, Applier, Check, ServiceRef};
use super::{AssignmentDoc, CustomerDoc, DeviceDoc, ServiceDoc, SiteDoc, VpnDoc};
use crate::cli::output;
use crate::cli::resources::{self as res, id_text, service_type};
use crate::cli::rollout::Policy;
use crate::cli::CliError;

impl Applier<'_> {
    pub(super) fn device(&mut self, doc: &DeviceDoc) -> Result<(), CliError> {
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

    pub(super) fn customer(&mut self, doc: &CustomerDoc) -> Result<(), CliError> {
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

    pub(super) fn site(&mut self, doc: &SiteDoc) -> Result<(), CliError> {
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

    pub(super) fn service(&mut self, doc: &ServiceDoc) -> Result<(), CliError> {
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

    pub(super) fn assignment(&mut self, doc: &AssignmentDoc) -> Result<(), CliError> {
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
                        .map_err(crate::cli::rollout::empty_wave_hint)?;
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
            .map_err(crate::cli::rollout::empty_wave_hint)?;
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

    pub(super) fn vpn(&mut self, doc: &VpnDoc) -> Result<(), CliError> {
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
