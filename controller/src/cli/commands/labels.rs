//! `isdfctl devices label`: one router's labels (`PATCH /devices/{id}` with
//! the complete new set), or every router a selector matches (`POST
//! /devices/labels`, one transaction), previewed with `GET /devices/matching`
//! and confirmed first.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;

use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::output::{self, Format};
use crate::cli::resources as res;
use crate::cli::{CliError, Context};

/// How many router names the bulk preview shows.
const SAMPLE: u32 = 10;

#[derive(Debug, Args)]
#[command(
    override_usage = "isdfctl devices label [OPTIONS] NAME|ID KEY=VALUE|KEY-...\n       \
    isdfctl devices label [OPTIONS] --selector SELECTOR KEY=VALUE|KEY-..."
)]
pub struct LabelArgs {
    /// The router's name or id (not with --selector), then the changes:
    /// `key=value` sets a label, `key-` removes it.
    #[arg(value_name = "NAME|ID, CHANGES", required = true, num_args = 1..)]
    pub args: Vec<String>,
    /// Change every router this label selector matches (one call, one
    /// transaction) instead of one router.
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Change without asking (needed with --selector when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Show what would change (checked by the server); change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Labels to set and keys to remove.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub set: BTreeMap<String, String>,
    pub remove: BTreeSet<String>,
}

impl Changes {
    /// `key=value` and `key-` arguments.
    pub fn parse(args: &[String]) -> Result<Self, CliError> {
        let mut changes = Changes::default();
        for arg in args {
            if let Some((key, value)) = arg.split_once('=') {
                changes.set.insert(key.to_owned(), value.to_owned());
            } else if let Some(key) = arg.strip_suffix('-').filter(|k| !k.is_empty()) {
                changes.remove.insert(key.to_owned());
            } else {
                return Err(CliError::Usage(format!(
                    "`{arg}` is neither `key=value` (set a label) nor `key-` (remove one)"
                )));
            }
        }
        if let Some(key) = changes.set.keys().find(|k| changes.remove.contains(*k)) {
            return Err(CliError::Usage(format!(
                "label `{key}` is both set and removed"
            )));
        }
        if changes.set.is_empty() && changes.remove.is_empty() {
            return Err(CliError::Usage(
                "no change given: add `key=value` or `key-` arguments".into(),
            ));
        }
        Ok(changes)
    }

    /// `labels` after the changes.
    pub fn applied_to(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut new = labels.clone();
        new.retain(|k, _| !self.remove.contains(k));
        new.extend(self.set.clone());
        new
    }

    /// `set a=1, b=2; remove c`.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("set {}", output::cell(&json!(self.set))));
        }
        if !self.remove.is_empty() {
            let keys: Vec<&str> = self.remove.iter().map(String::as_str).collect();
            parts.push(format!("remove {}", keys.join(",")));
        }
        parts.join("; ")
    }
}

pub fn label(context: &Context, args: &LabelArgs) -> Result<u8, CliError> {
    match &args.selector {
        Some(selector) => bulk(context, args, selector, &Changes::parse(&args.args)?),
        None => {
            let [device, changes @ ..] = args.args.as_slice() else {
                unreachable!("clap requires one argument")
            };
            if changes.is_empty() {
                return Err(CliError::Usage(format!(
                    "no change given for `{device}`: add `key=value` or `key-` arguments \
                     (or use --selector SELECTOR to change many routers)"
                )));
            }
            single(context, args, device, &Changes::parse(changes)?)
        }
    }
}

/// One router: its complete new label set, through `PATCH /devices/{id}`.
fn single(
    context: &Context,
    args: &LabelArgs,
    device: &str,
    changes: &Changes,
) -> Result<u8, CliError> {
    let client = &context.client;
    let path = res::DEVICES.item_path(&res::DEVICES.resolve(client, device)?);
    let current: BTreeMap<String, String> =
        serde_json::from_value(client.get(&path)?["labels"].clone()).unwrap_or_default();
    for key in changes.remove.iter().filter(|k| !current.contains_key(*k)) {
        eprintln!("warning: device/{device} has no label `{key}`");
    }
    let new = changes.applied_to(&current);
    let summary = format!(
        "device/{device} labels {} -> {}",
        output::cell(&json!(current)),
        output::cell(&json!(new))
    );
    if new == current {
        return done(context, &format!("device/{device} unchanged\n"), &json!({}));
    }
    let body = json!({"labels": new});
    if args.dry_run {
        client.dry_run(Method::PATCH, &path, Some(&body))?;
        let document = json!({"device": device, "labels": new, "dry_run": true});
        return done(context, &format!("{summary} (dry run)\n"), &document);
    }
    let answer = client.send(Method::PATCH, &path, Some(&body))?;
    done(context, &format!("{summary}\n"), &answer)
}

/// Prints a line for people or the document for programs.
fn done(context: &Context, line: &str, document: &Value) -> Result<u8, CliError> {
    match context.format {
        Format::Table => output::write_out(line)?,
        format => output::print_document(format, document)?,
    }
    Ok(0)
}

/// Every router a selector matches, through `POST /devices/labels`, after a
/// preview (count and sample names) and a confirmation.
fn bulk(
    context: &Context,
    args: &LabelArgs,
    selector: &str,
    changes: &Changes,
) -> Result<u8, CliError> {
    let client = &context.client;
    let preview = client.get_query(
        "/api/v1/devices/matching",
        &[
            ("selector", selector.to_owned()),
            ("sample", SAMPLE.to_string()),
        ],
    )?;
    let matched = preview["matched"].as_u64().unwrap_or(0);
    let text = preview_text(&preview, selector, changes);
    // The preview is what --dry-run prints; otherwise it goes with the prompt.
    if context.format == Format::Table {
        output::write_out(&text)?;
    } else {
        eprint!("{text}");
    }
    let mut body = json!({"selector": selector});
    if !changes.set.is_empty() {
        body["set"] = json!(changes.set);
    }
    if !changes.remove.is_empty() {
        body["remove"] = json!(changes.remove);
    }
    if matched == 0 {
        if context.format != Format::Table {
            output::print_document(context.format, &json!({"preview": preview, "changed": 0}))?;
        }
        return Ok(0);
    }
    if args.dry_run {
        client.dry_run(Method::POST, "/api/v1/devices/labels", Some(&body))?;
        match context.format {
            Format::Table => output::write_out("(dry run: nothing changed)\n")?,
            format => output::print_document(
                format,
                &json!({"preview": preview, "dry_run": true, "request": body}),
            )?,
        }
        return Ok(0);
    }
    if !args.yes && !confirm(matched)? {
        return Err(CliError::Other("cancelled; nothing changed".into()));
    }
    let answer = client.send(Method::POST, "/api/v1/devices/labels", Some(&body))?;
    match context.format {
        Format::Table => {
            let now = answer["matched"].as_u64().unwrap_or(0);
            let moved = if now == matched {
                String::new()
            } else {
                format!(" (the preview counted {matched}: routers changed meanwhile)")
            };
            output::write_out(&format!(
                "{now} routers matched, {} changed{moved}\n",
                output::cell(&answer["changed"])
            ))?;
        }
        format => output::print_document(format, &answer)?,
    }
    Ok(0)
}

/// `3 routers match `plan=family`: a, b, c` and the changes.
fn preview_text(preview: &Value, selector: &str, changes: &Changes) -> String {
    let matched = preview["matched"].as_u64().unwrap_or(0);
    let normal = preview["selector"].as_str().unwrap_or(selector);
    if matched == 0 {
        return format!("no router matches `{normal}`; nothing to change\n");
    }
    let names: Vec<String> = preview["sample"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| output::cell(&d["name"]))
        .collect();
    let more = matched.saturating_sub(names.len() as u64);
    let more = if more > 0 {
        format!(", and {more} more")
    } else {
        String::new()
    };
    let routers = if matched == 1 { "router" } else { "routers" };
    format!(
        "{matched} {routers} match `{normal}`: {}{more}\nchange: {}\n",
        names.join(", "),
        changes.describe()
    )
}

/// Asks on the terminal; without one, refuses (a script must say --yes).
fn confirm(matched: u64) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "stdin is not a terminal, so isdfctl cannot ask: add --yes to change the labels \
             of {matched} routers (or --dry-run to preview only)"
        )));
    }
    eprint!("Change the labels of {matched} routers? [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| CliError::Other(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn changes_parse_like_kubectls() {
        let changes = Changes::parse(&args(&["plan=gold", "promo-", "empty="])).unwrap();
        assert_eq!(changes.set["plan"], "gold");
        assert_eq!(changes.set["empty"], "");
        assert!(changes.remove.contains("promo"));
        let current = BTreeMap::from([
            ("plan".to_owned(), "basic".to_owned()),
            ("promo".to_owned(), "x".to_owned()),
            ("region".to_owned(), "eu".to_owned()),
        ]);
        assert_eq!(
            output::cell(&json!(changes.applied_to(&current))),
            "empty=,plan=gold,region=eu"
        );
        for bad in [&["plan"][..], &["-"], &["a=1", "a-"], &[]] {
            assert!(
                matches!(Changes::parse(&args(bad)), Err(CliError::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_preview_counts_and_names_routers() {
        let changes = Changes::parse(&args(&["plan=gold", "promo-"])).unwrap();
        let preview = json!({"selector": "plan=family", "matched": 12,
            "sample": [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}]});
        assert_eq!(
            preview_text(&preview, "plan = family", &changes),
            "12 routers match `plan=family`: a, b, and 10 more\nchange: set plan=gold; remove promo\n"
        );
        let none = json!({"selector": "plan=x", "matched": 0, "sample": []});
        assert_eq!(
            preview_text(&none, "plan=x", &changes),
            "no router matches `plan=x`; nothing to change\n"
        );
    }
}
