//! The API's resources as the CLI sees them: where they are listed, their
//! table columns, how a name becomes an id. `get`, the resource commands and
//! `apply` all go through these.

use serde_json::{json, Value};

use super::client::{Client, Listed, Paging};
use super::output::{self, Column, Format};
use super::{CliError, Context};

/// One kind of resource.
pub struct Resource {
    /// Singular, for messages and `kind/name` lines.
    pub kind: &'static str,
    /// The list path; an item is at `{path}/{id}`.
    pub path: &'static str,
    pub columns: &'static [Column],
    /// The field operators name items by, if they have names.
    pub name_field: Option<&'static str>,
    /// A field that scopes names (`catalog/name` for sites).
    pub scope_field: Option<&'static str>,
    /// Ids are integers (sites) rather than UUIDs.
    pub numeric_ids: bool,
    /// Adds fields for the table only (names of referenced objects); JSON
    /// and YAML stay the API's.
    pub for_table: Option<AddForTable>,
    /// A query that lists items the plain list hides (archived services):
    /// names are looked up there too.
    pub hidden_query: Option<(&'static str, &'static str)>,
}

/// Adds table-only fields to a list's items.
pub type AddForTable = fn(&Client, &mut [Value]) -> Result<(), CliError>;

const fn resource(kind: &'static str, path: &'static str, columns: &'static [Column]) -> Resource {
    Resource {
        kind,
        path,
        columns,
        name_field: None,
        scope_field: None,
        numeric_ids: false,
        for_table: None,
        hidden_query: None,
    }
}

const fn named(kind: &'static str, path: &'static str, columns: &'static [Column]) -> Resource {
    Resource {
        name_field: Some("name"),
        ..resource(kind, path, columns)
    }
}

pub const DEVICES: Resource = named(
    "device",
    "/api/v1/devices",
    &[
        ("NAME", "/name"),
        ("ID", "/id"),
        ("LABELS", "/labels"),
        ("STATE", "/health/state"),
        ("CERT EXPIRES", "/certificate_expires_at"),
        ("CREATED", "/created_at"),
    ],
);
pub const SERVICES: Resource = Resource {
    for_table: Some(add_service_types),
    hidden_query: Some(("archived", "true")),
    ..named(
        "service",
        "/api/v1/services",
        &[
            ("NAME", "/name"),
            ("ID", "/id"),
            ("TYPE", "/type"),
            ("LATEST", "/latest_revision"),
            ("ARCHIVED", "/archived"),
            ("CREATED", "/created_at"),
        ],
    )
};

/// A service's type: the API's `type`, or `kind` from a server older than
/// the rename.
pub fn service_type(service: &Value) -> Option<&str> {
    service["type"]
        .as_str()
        .or_else(|| service["kind"].as_str())
}

/// `type` filled in from `kind` for an older server's services.
fn add_service_types(_: &Client, items: &mut [Value]) -> Result<(), CliError> {
    for item in items {
        if item["type"].is_null() {
            item["type"] = item["kind"].clone();
        }
    }
    Ok(())
}
pub const REVISIONS: &[Column] = &[
    ("REVISION", "/revision"),
    ("CREATED", "/created_at"),
    ("SPEC", "/spec"),
];
pub const ASSIGNMENTS: Resource = Resource {
    for_table: Some(add_service_names),
    ..resource(
        "assignment",
        "/api/v1/assignments",
        &[
            ("ID", "/id"),
            ("SERVICE", "/service_name"),
            ("REVISION", "/revision"),
            ("SELECTOR", "/selector"),
            ("CREATED", "/created_at"),
        ],
    )
};

/// `service_name` beside each `service_id`.
fn add_service_names(client: &Client, items: &mut [Value]) -> Result<(), CliError> {
    let names: std::collections::HashMap<String, Value> = client
        .list_all(SERVICES.path, &[])?
        .into_iter()
        .map(|s| (id_text(&s["id"]), s["name"].clone()))
        .collect();
    for item in items {
        let name = names.get(&id_text(&item["service_id"])).cloned();
        item["service_name"] = name.unwrap_or_else(|| item["service_id"].clone());
    }
    Ok(())
}
pub const OPERATOR_TOKENS: Resource = named(
    "operator-token",
    "/api/v1/operator-tokens",
    &[
        ("NAME", "/name"),
        ("ID", "/id"),
        ("ROLE", "/role"),
        ("CREATED BY", "/created_by"),
        ("CREATED", "/created_at"),
        ("REVOKED", "/revoked_at"),
    ],
);
pub const AUDIT: Resource = resource(
    "audit-entry",
    "/api/v1/audit",
    &[
        ("ID", "/id"),
        ("AT", "/at"),
        ("ACTOR", "/actor"),
        ("ACTION", "/action"),
        ("TARGET", "/target"),
        ("STATUS", "/status"),
    ],
);
pub const CUSTOMERS: Resource = named(
    "customer",
    "/api/v1/customers",
    &[
        ("NAME", "/name"),
        ("ID", "/id"),
        ("EXTERNAL REF", "/external_ref"),
        ("CREATED", "/created_at"),
    ],
);
pub const SITES: Resource = Resource {
    scope_field: Some("catalog"),
    numeric_ids: true,
    ..named(
        "site",
        "/api/v1/sites",
        &[
            ("ID", "/id"),
            ("CATALOG", "/catalog"),
            ("NAME", "/name"),
            ("DOMAINS", "/domains"),
            ("CURRENCY", "/currency"),
            ("PASSES", "/passes"),
        ],
    )
};
pub const PURCHASES: Resource = resource(
    "purchase",
    "/api/v1/purchases",
    &[
        ("ID", "/id"),
        ("CUSTOMER", "/customer_id"),
        ("SITE", "/site_id"),
        ("STARTS", "/starts_at"),
        ("ENDS", "/ends_at"),
        ("PRICE", "/price"),
        ("CURRENCY", "/currency"),
        ("SOURCE", "/source"),
        ("IN FORCE", "/in_force"),
    ],
);
pub const VPNS: Resource = named(
    "vpn",
    "/api/v1/vpns",
    &[
        ("NAME", "/name"),
        ("ID", "/id"),
        ("CUSTOMER", "/customer_id"),
        ("TOPOLOGY", "/topology"),
        ("POOL", "/address_pool"),
        ("MEMBERS", "/member_count"),
    ],
);
pub const VPN_RELAYS: Resource = resource(
    "vpn-relay",
    "/api/v1/vpn-relays",
    &[
        ("NAME", "/name"),
        ("DEVICE", "/device_id"),
        ("VPNS", "/vpns"),
        ("CREATED", "/created_at"),
    ],
);
pub const ROLLOUTS: Resource = resource(
    "rollout",
    "/api/v1/rollouts",
    &[
        ("ID", "/id"),
        ("SERVICE", "/service_name"),
        ("SELECTOR", "/selector"),
        ("FROM", "/from_revision"),
        ("TO", "/to_revision"),
        ("STATE", "/state"),
        ("OUTCOME", "/outcome"),
        ("WAVE", "/current_wave"),
        ("APPLIED", "/totals/applied"),
        ("ROUTERS", "/totals/routers"),
        ("CREATED", "/created_at"),
    ],
);
pub const BLOCKS: &[Column] = &[
    ("ID", "/id"),
    ("ORIGIN", "/origin"),
    ("FLOW", "/flow"),
    ("ACTION", "/action"),
    ("REASON", "/reason"),
    ("EXPIRES", "/expires_at"),
    ("REMAINING S", "/remaining_secs"),
];
pub const EVENTS: &[Column] = &[
    ("SEQUENCE", "/sequence"),
    ("RECEIVED", "/received_at"),
    ("EVENT", "/event"),
];
pub const STATUS_HISTORY: &[Column] = &[
    ("SEQUENCE", "/sequence"),
    ("RECEIVED", "/received_at"),
    ("REPORT", "/report"),
];
pub const ROLLOUT_HISTORY: &[Column] = &[
    ("AT", "/at"),
    ("KIND", "/kind"),
    ("WAVE", "/wave"),
    ("ACTOR", "/actor"),
    ("DETAIL", "/detail"),
];
pub const ROLLOUT_SAMPLES: &[Column] = &[
    ("AT", "/at"),
    ("WAVE", "/wave"),
    ("PENDING", "/pending"),
    ("APPLIED", "/applied"),
    ("FAILED", "/failed"),
    ("OFFLINE", "/offline"),
];

impl Resource {
    pub fn item_path(&self, id: &str) -> String {
        format!("{}/{id}", self.path)
    }

    fn is_id(&self, text: &str) -> bool {
        if self.numeric_ids {
            text.parse::<i64>().is_ok()
        } else {
            uuid::Uuid::parse_str(text).is_ok()
        }
    }

    /// The items named `name` (`scope/name` where names are scoped).
    pub fn find_by_name(&self, client: &Client, name: &str) -> Result<Vec<Value>, CliError> {
        let Some(field) = self.name_field else {
            return Ok(Vec::new());
        };
        let (scope, name) = match self.scope_field.zip(name.split_once('/')) {
            Some((scope_field, (scope, name))) => (Some((scope_field, scope)), name),
            None => (None, name),
        };
        let matching = |items: Vec<Value>| -> Vec<Value> {
            items
                .into_iter()
                .filter(|item| item[field].as_str() == Some(name))
                .filter(|item| scope.is_none_or(|(f, s)| item[f].as_str() == Some(s)))
                .collect()
        };
        let found = matching(client.list_all(self.path, &[])?);
        match self.hidden_query {
            Some((key, value)) if found.is_empty() => {
                // A server without the filter refuses it: nothing hidden there.
                let hidden = client
                    .list_all(self.path, &[(key, value.to_owned())])
                    .unwrap_or_default();
                Ok(matching(hidden))
            }
            _ => Ok(found),
        }
    }

    /// The id of the item `text` names: an id as it is, a name looked up.
    pub fn resolve(&self, client: &Client, text: &str) -> Result<String, CliError> {
        if self.is_id(text) {
            return Ok(text.to_owned());
        }
        if self.name_field.is_none() {
            return Err(CliError::Usage(format!(
                "`{text}` is not an id, and {}s have no names",
                self.kind
            )));
        }
        let found = self.find_by_name(client, text)?;
        match found.as_slice() {
            [one] => Ok(id_text(&one["id"])),
            [] => Err(CliError::api(
                "not_found",
                format!("no {} named `{text}`", self.kind),
            )),
            many => Err(CliError::api(
                "ambiguous_name",
                format!(
                    "{} {}s are named `{text}` ({}); name one by id",
                    many.len(),
                    self.kind,
                    many.iter()
                        .map(|i| id_text(&i["id"]))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Prints a list (one page, or all of them).
    pub fn print_list(
        &self,
        context: &Context,
        query: &[(&str, String)],
        paging: &Paging,
    ) -> Result<(), CliError> {
        let mut listed = context.client.list(self.path, query, paging)?;
        if let (Some(add), Format::Table) = (self.for_table, context.format) {
            add(&context.client, &mut listed.items)?;
        }
        print_listed(context, &listed, self.columns)
    }

    /// Prints the item `text` names.
    pub fn print_one(&self, context: &Context, text: &str) -> Result<(), CliError> {
        let id = self.resolve(&context.client, text)?;
        let item = context.client.get(&self.item_path(&id))?;
        output::print_object(context.format, &item)
    }
}

/// Prints one page or all pages of a list; in a table, says how to get more.
pub fn print_page(
    context: &Context,
    path: &str,
    query: &[(&str, String)],
    paging: &Paging,
    columns: &[Column],
) -> Result<(), CliError> {
    print_listed(context, &context.client.list(path, query, paging)?, columns)
}

fn print_listed(context: &Context, listed: &Listed, columns: &[Column]) -> Result<(), CliError> {
    output::print_list(context.format, &listed.items, columns)?;
    if let (Some(cursor), Format::Table) = (&listed.next_cursor, context.format) {
        eprintln!("(more: add --all, or --cursor {cursor})");
    }
    Ok(())
}

/// An id as text (UUIDs are strings, site ids numbers).
pub fn id_text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// Prints the outcome of a call that answers nothing (204): `kind/id action`,
/// or the same as a JSON object.
pub fn print_done(context: &Context, kind: &str, id: &str, action: &str) -> Result<(), CliError> {
    match context.format {
        Format::Table => output::write_out(&format!("{kind}/{id} {action}\n")),
        format => {
            output::print_document(format, &json!({"kind": kind, "id": id, "result": action}))
        }
    }
}
