//! `isdfctl customers`, `sites` and `purchases`: households and what
//! pay-per-site sells them.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::{call, object, opt, PagingArgs};
use crate::cli::resources::{self as res};
use crate::cli::{CliError, Context};

#[derive(Debug, Subcommand)]
pub enum CustomerCommand {
    /// Make a household, with its routers.
    Create {
        /// Unique name, e.g. `Smith household`.
        name: String,
        /// Your own reference for it (a CRM or billing id); cannot change later.
        #[arg(long)]
        external_ref: Option<String>,
        /// A router to attach, by name or id (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
    },
    /// List households.
    #[command(after_help = super::PAGING_HELP)]
    List {
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Show one household, its routers and passes.
    Get {
        /// The household's name or id.
        customer: String,
    },
    /// Delete a household (not one with a VPN).
    Delete {
        /// The household's name or id.
        customer: String,
    },
    /// Attach a router to the household.
    Attach {
        /// The household's name or id.
        customer: String,
        /// The router's name or id.
        device: String,
    },
    /// Detach a router from the household.
    Detach {
        /// The household's name or id.
        customer: String,
        /// The router's name or id.
        device: String,
    },
}

#[derive(Debug, Args)]
pub struct SiteInputArgs {
    /// Catalog (default `main`).
    #[arg(long)]
    pub catalog: Option<String>,
    /// Display name, unique within the catalog.
    #[arg(long)]
    pub name: String,
    /// A domain (repeatable); covers every name under it.
    #[arg(long = "domain", required = true)]
    pub domains: Vec<String>,
    /// ISO 4217 code, e.g. `EUR`.
    #[arg(long)]
    pub currency: String,
    /// A pass, `SECONDS:PRICE` in minor units (repeatable).
    #[arg(long = "pass", required = true, value_parser = parse_pass)]
    pub passes: Vec<(i64, i64)>,
}

impl SiteInputArgs {
    fn body(&self) -> Value {
        json!({
            "catalog": self.catalog,
            "name": self.name,
            "domains": self.domains,
            "currency": self.currency,
            "passes": self.passes.iter()
                .map(|(d, p)| json!({"duration_secs": d, "price": p}))
                .collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Add a site to a catalog, with its passes.
    Create(SiteInputArgs),
    /// List catalog sites.
    #[command(after_help = super::PAGING_HELP)]
    List {
        /// Only this catalog's sites.
        #[arg(long)]
        catalog: Option<String>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Show one site.
    Get {
        /// The site's id, name or `catalog/name`.
        site: String,
    },
    /// Replace a site's definition.
    Update {
        /// The site's id, name or `catalog/name`.
        site: String,
        #[command(flatten)]
        input: SiteInputArgs,
    },
    /// Delete a site (passes sold keep their record).
    Delete {
        /// The site's id, name or `catalog/name`.
        site: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PurchaseCommand {
    /// Grant or sell a pass.
    Create {
        /// The household's name or id.
        #[arg(long)]
        customer: String,
        /// The site's id, name or `catalog/name`.
        #[arg(long)]
        site: String,
        /// The pass's length in seconds: one the site sells (its price applies).
        #[arg(long)]
        duration: i64,
    },
    /// List passes.
    #[command(after_help = super::PAGING_HELP)]
    List {
        /// Only this household's (name or id).
        #[arg(long)]
        customer: Option<String>,
        /// Only this site's (id, name or `catalog/name`).
        #[arg(long)]
        site: Option<String>,
        /// Only passes in force (true) or not (false).
        #[arg(long)]
        active: Option<bool>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// End a pass now.
    Cancel {
        /// The purchase's id.
        id: String,
    },
}

fn parse_pass(text: &str) -> Result<(i64, i64), String> {
    let parsed = text
        .split_once(':')
        .and_then(|(d, p)| Some((d.parse().ok()?, p.parse().ok()?)));
    parsed.ok_or_else(|| format!("`{text}` is not SECONDS:PRICE"))
}

pub(super) fn customers(context: &Context, command: CustomerCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let customers = &res::CUSTOMERS;
    let member_path = |customer: &str, device: &str| -> Result<String, CliError> {
        Ok(format!(
            "{}/devices/{}",
            customers.item_path(&customers.resolve(client, customer)?),
            res::DEVICES.resolve(client, device)?
        ))
    };
    match command {
        CustomerCommand::Create {
            name,
            external_ref,
            devices,
        } => {
            let devices = devices
                .iter()
                .map(|d| res::DEVICES.resolve(client, d))
                .collect::<Result<Vec<_>, _>>()?;
            let body = object(&[
                ("name", Some(json!(name))),
                ("external_ref", external_ref.map(Value::String)),
                ("devices", Some(json!(devices))),
            ]);
            call(
                context,
                Method::POST,
                customers.path,
                Some(&body),
                customers.kind,
                &name,
                "created",
            )
        }
        CustomerCommand::List { paging } => {
            customers.print_list(context, &[], &paging.paging())?;
            Ok(0)
        }
        CustomerCommand::Get { customer } => {
            customers.print_one(context, &customer)?;
            Ok(0)
        }
        CustomerCommand::Delete { customer } => {
            let id = customers.resolve(client, &customer)?;
            call(
                context,
                Method::DELETE,
                &customers.item_path(&id),
                None,
                customers.kind,
                &customer,
                "deleted",
            )
        }
        CustomerCommand::Attach { customer, device } => {
            let path = member_path(&customer, &device)?;
            call(
                context,
                Method::PUT,
                &path,
                None,
                customers.kind,
                &customer,
                "attached",
            )
        }
        CustomerCommand::Detach { customer, device } => {
            let path = member_path(&customer, &device)?;
            call(
                context,
                Method::DELETE,
                &path,
                None,
                customers.kind,
                &customer,
                "detached",
            )
        }
    }
}

pub(super) fn sites(context: &Context, command: SiteCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let sites = &res::SITES;
    match command {
        SiteCommand::Create(input) => call(
            context,
            Method::POST,
            sites.path,
            Some(&input.body()),
            sites.kind,
            &input.name,
            "created",
        ),
        SiteCommand::List { catalog, paging } => {
            let query: Vec<_> = opt("catalog", catalog).into_iter().collect();
            sites.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        SiteCommand::Get { site } => {
            sites.print_one(context, &site)?;
            Ok(0)
        }
        SiteCommand::Update { site, input } => {
            let id = sites.resolve(client, &site)?;
            call(
                context,
                Method::PUT,
                &sites.item_path(&id),
                Some(&input.body()),
                sites.kind,
                &site,
                "configured",
            )
        }
        SiteCommand::Delete { site } => {
            let id = sites.resolve(client, &site)?;
            call(
                context,
                Method::DELETE,
                &sites.item_path(&id),
                None,
                sites.kind,
                &site,
                "deleted",
            )
        }
    }
}

pub(super) fn purchases(context: &Context, command: PurchaseCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let purchases = &res::PURCHASES;
    match command {
        PurchaseCommand::Create {
            customer,
            site,
            duration,
        } => {
            let body = json!({
                "customer_id": res::CUSTOMERS.resolve(client, &customer)?,
                "site_id": res::SITES.resolve(client, &site)?.parse::<i64>().unwrap_or_default(),
                "duration_secs": duration,
            });
            call(
                context,
                Method::POST,
                purchases.path,
                Some(&body),
                purchases.kind,
                &customer,
                "created",
            )
        }
        PurchaseCommand::List {
            customer,
            site,
            active,
            paging,
        } => {
            let customer = customer
                .map(|c| res::CUSTOMERS.resolve(client, &c))
                .transpose()?;
            let site = site.map(|s| res::SITES.resolve(client, &s)).transpose()?;
            let query: Vec<_> = [
                opt("customer_id", customer),
                opt("site_id", site),
                opt("active", active),
            ]
            .into_iter()
            .flatten()
            .collect();
            purchases.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        PurchaseCommand::Cancel { id } => {
            let id = purchases.resolve(client, &id)?;
            call(
                context,
                Method::DELETE,
                &purchases.item_path(&id),
                None,
                purchases.kind,
                &id,
                "cancelled",
            )
        }
    }
}
