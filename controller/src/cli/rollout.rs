//! `isdfctl rollouts ...`: staged rollouts (the contract in the rollout API
//! note), and `rollout status --watch` with one progress bar per wave.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use super::commands::PagingArgs;
use super::output::{self, Format};
use super::resources as res;
use super::{CliError, Context};

/// Exit codes of `status --watch`.
pub const EXIT_ABORTED: u8 = 3;
pub const EXIT_PAUSED: u8 = 4;
pub const EXIT_TIMEOUT: u8 = 5;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Stage a new revision for an assignment, or a new assignment.
    Create(CreateArgs),
    /// List rollouts.
    #[command(after_help = super::commands::PAGING_HELP)]
    List {
        /// Only rollouts in this state: `running`, `paused`, `completed` or `aborted`.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        paging: PagingArgs,
    },
    /// Show one rollout (its waves, totals, and the routers offline at its end).
    Get {
        /// The rollout's id.
        id: String,
    },
    /// What happened, oldest first.
    History {
        /// The rollout's id.
        id: String,
    },
    /// Progress samples, oldest first.
    Samples {
        /// The rollout's id.
        id: String,
    },
    /// Hold the next wave (routers already released keep the new revision).
    Pause {
        /// The rollout's id.
        id: String,
    },
    /// Go on after a pause.
    Resume {
        /// The rollout's id.
        id: String,
    },
    /// Every router returns to the previous revision.
    Abort {
        /// The rollout's id.
        id: String,
    },
    /// The rollout's waves; with --watch, until it completes or aborts.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The assignment whose revision changes.
    #[arg(long, conflicts_with_all = ["service", "selector"], required_unless_present = "service")]
    pub assignment: Option<String>,
    /// With --selector: this service's assignment on that selector (staged
    /// when it exists, created otherwise).
    #[arg(long, requires = "selector")]
    pub service: Option<String>,
    /// With --service: the label selector of the routers, e.g. `plan=family`.
    #[arg(long)]
    pub selector: Option<String>,
    /// The revision to roll out (default: the service's latest).
    #[arg(long)]
    pub revision: Option<i32>,
    /// The canary: routers matching this label selector.
    #[arg(long, conflicts_with = "canary_percent")]
    pub canary_selector: Option<String>,
    /// The canary: this share of the routers, in percent.
    #[arg(long)]
    pub canary_percent: Option<f64>,
    /// Cumulative percentages after the canary, e.g. `25,100`.
    #[arg(long, value_delimiter = ',')]
    pub waves: Vec<f64>,
    /// Share of a wave's online routers that must apply (0 to 1).
    #[arg(long)]
    pub min_applied: Option<f64>,
    /// Share of a wave's routers that may fail (0 to 1).
    #[arg(long)]
    pub max_failed: Option<f64>,
    /// Seconds a wave must stay healthy before the next is released.
    #[arg(long)]
    pub soak: Option<u32>,
    /// Seconds after which a pending router counts as offline.
    #[arg(long)]
    pub offline_timeout: Option<u32>,
    /// Start even if a wave (the canary above all) matches no router; by
    /// default the server refuses that (`empty_wave`).
    #[arg(long)]
    pub allow_empty_waves: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The rollout's id.
    pub id: String,
    /// Poll until the rollout completes or aborts (or --timeout).
    #[arg(long, short)]
    pub watch: bool,
    /// Seconds between polls.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Give up watching after this many seconds (exit code 5).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Stop watching when the rollout pauses (exit code 4).
    #[arg(long)]
    pub exit_on_pause: bool,
}

/// Most polls one watch makes, whatever --interval and --timeout say.
const MAX_POLLS: u64 = 100_000;

pub fn run(context: &Context, command: RolloutCommand) -> Result<u8, CliError> {
    let client = &context.client;
    let rollouts = &res::ROLLOUTS;
    let action = |id: &str, verb: &str| -> Result<u8, CliError> {
        let id = rollouts.resolve(client, id)?;
        let answer = client.send(
            Method::POST,
            &format!("{}/{verb}", rollouts.item_path(&id)),
            None,
        )?;
        output::print_object(context.format, &answer)?;
        Ok(0)
    };
    let listing = |id: &str, tail: &str, columns| -> Result<u8, CliError> {
        let id = rollouts.resolve(client, id)?;
        let answer = client.get(&format!("{}/{tail}", rollouts.item_path(&id)))?;
        let items = answer["items"].as_array().cloned().unwrap_or_default();
        output::print_list(context.format, &items, columns)?;
        Ok(0)
    };
    match command {
        RolloutCommand::Create(args) => {
            let body = create_body(context, &args)?;
            let answer = client
                .send(Method::POST, rollouts.path, Some(&body))
                .map_err(|e| match (&args.service, &args.selector) {
                    (Some(service), Some(selector)) => {
                        super::commands::assignment_hint(e, service, selector)
                    }
                    _ => e,
                })
                .map_err(empty_wave_hint)?;
            output::print_object(context.format, &answer)?;
            super::commands::print_warnings(&answer);
            Ok(0)
        }
        RolloutCommand::List { state, paging } => {
            let query: Vec<_> = state.map(|s| ("state", s)).into_iter().collect();
            rollouts.print_list(context, &query, &paging.paging())?;
            Ok(0)
        }
        RolloutCommand::Get { id } => {
            rollouts.print_one(context, &id)?;
            Ok(0)
        }
        RolloutCommand::History { id } => listing(&id, "history", res::ROLLOUT_HISTORY),
        RolloutCommand::Samples { id } => listing(&id, "samples", res::ROLLOUT_SAMPLES),
        RolloutCommand::Pause { id } => action(&id, "pause"),
        RolloutCommand::Resume { id } => action(&id, "resume"),
        RolloutCommand::Abort { id } => action(&id, "abort"),
        RolloutCommand::Status(args) => status(context, &args),
    }
}

/// The POST /rollouts body from the flags (absent flags: the API's defaults).
pub fn create_body(context: &Context, args: &CreateArgs) -> Result<Value, CliError> {
    let client = &context.client;
    let mut body = match (&args.assignment, &args.service, &args.selector) {
        (Some(a), _, _) => json!({"assignment_id": res::ASSIGNMENTS.resolve(client, a)?}),
        (None, Some(s), Some(sel)) => {
            json!({"service_id": res::SERVICES.resolve(client, s)?, "selector": sel})
        }
        _ => {
            return Err(CliError::Usage(
                "name --assignment, or --service and --selector".into(),
            ))
        }
    };
    let policy = Policy {
        revision: args.revision,
        canary_selector: args.canary_selector.clone(),
        canary_percent: args.canary_percent,
        waves: (!args.waves.is_empty()).then(|| args.waves.clone()),
        min_applied_share: args.min_applied,
        max_failed_share: args.max_failed,
        soak_secs: args.soak,
        offline_timeout_secs: args.offline_timeout,
        allow_empty_waves: args.allow_empty_waves.then_some(true),
    };
    policy.add_to(&mut body);
    Ok(body)
}

/// A 409 `empty_wave` says how to start anyway.
pub fn empty_wave_hint(error: CliError) -> CliError {
    if error.code() != Some("empty_wave") {
        return error;
    }
    error.hint(
        "a wave that matches no router would pass at once and release the next: pick a \
         canary that matches routers (--canary-selector / --canary-percent), or start anyway \
         with --allow-empty-waves (`allow_empty_waves: true` in an apply file's rollout)",
    )
}

/// A rollout's optional settings, from flags or from an `apply` file.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub revision: Option<i32>,
    #[serde(default)]
    pub canary_selector: Option<String>,
    #[serde(default)]
    pub canary_percent: Option<f64>,
    #[serde(default)]
    pub waves: Option<Vec<f64>>,
    #[serde(default)]
    pub min_applied_share: Option<f64>,
    #[serde(default)]
    pub max_failed_share: Option<f64>,
    #[serde(default)]
    pub soak_secs: Option<u32>,
    #[serde(default)]
    pub offline_timeout_secs: Option<u32>,
    #[serde(default)]
    pub allow_empty_waves: Option<bool>,
}

impl Policy {
    pub fn add_to(&self, body: &mut Value) {
        let canary = match (&self.canary_selector, self.canary_percent) {
            (Some(selector), _) => Some(json!({"selector": selector})),
            (None, Some(percent)) => Some(json!({"percent": percent})),
            (None, None) => None,
        };
        let fields = [
            ("revision", self.revision.map(|v| json!(v))),
            ("canary", canary),
            ("waves", self.waves.as_ref().map(|v| json!(v))),
            (
                "min_applied_share",
                self.min_applied_share.map(|v| json!(v)),
            ),
            ("max_failed_share", self.max_failed_share.map(|v| json!(v))),
            ("soak_secs", self.soak_secs.map(|v| json!(v))),
            (
                "offline_timeout_secs",
                self.offline_timeout_secs.map(|v| json!(v)),
            ),
            (
                "allow_empty_waves",
                self.allow_empty_waves.map(|v| json!(v)),
            ),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                body[key] = value;
            }
        }
    }
}

/// `status`: one table (or JSON document); with --watch, polls (bounded by
/// --timeout and [`MAX_POLLS`]) drawing the waves, and exits with the state.
fn status(context: &Context, args: &StatusArgs) -> Result<u8, CliError> {
    let rollouts = &res::ROLLOUTS;
    let id = rollouts.resolve(&context.client, &args.id)?;
    let path = rollouts.item_path(&id);
    if !args.watch {
        let view = context.client.get(&path)?;
        print_status(context.format, &view)?;
        return Ok(0);
    }
    let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut bars = Bars::new(context.format == Format::Table);
    let mut last = Value::Null;
    for _ in 0..MAX_POLLS {
        let view = context.client.get(&path)?;
        match context.format {
            // One JSON object per line per poll (NDJSON).
            Format::Json => output::write_out(&format!("{view}\n"))?,
            Format::Yaml => output::print_document(Format::Yaml, &view)
                .and_then(|()| output::write_out("---\n"))?,
            Format::Table => bars.draw(&view),
        }
        let state = view["state"].as_str().unwrap_or_default().to_owned();
        last = view;
        let code = match state.as_str() {
            "completed" => Some(0),
            "aborted" => Some(EXIT_ABORTED),
            "paused" if args.exit_on_pause => Some(EXIT_PAUSED),
            _ => None,
        };
        if let Some(code) = code {
            bars.finish();
            if context.format == Format::Table {
                print_status(Format::Table, &last)?;
            }
            return Ok(code);
        }
        if Instant::now() + interval > deadline {
            break;
        }
        std::thread::sleep(interval);
    }
    bars.finish();
    if context.format == Format::Table {
        print_status(Format::Table, &last)?;
    }
    eprintln!(
        "error: timeout: rollout {id} is still {} after {} s",
        last["state"].as_str().unwrap_or("unknown"),
        args.timeout
    );
    Ok(EXIT_TIMEOUT)
}

/// The state and a table of the waves; JSON/YAML: the rollout document.
fn print_status(format: Format, view: &Value) -> Result<(), CliError> {
    match format {
        Format::Table => output::write_out(&status_table(view)),
        other => output::print_document(other, view),
    }
}

/// A rollout's state line and its waves' table.
fn status_table(view: &Value) -> String {
    let mut text = format!(
        "rollout {}  {} {} -> {}  state {}{}\n",
        output::cell(&view["id"]),
        output::cell(&view["service_name"]),
        output::cell(&view["from_revision"]),
        output::cell(&view["to_revision"]),
        output::cell(&view["state"]),
        view["pause_reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
    );
    let columns = [
        "WAVE", "LABEL", "ROUTERS", "APPLIED", "PENDING", "WAITING", "FAILED", "OFFLINE",
        "RELEASED", "PASSED",
    ];
    let keys = [
        "index",
        "label",
        "routers",
        "applied",
        "pending",
        "waiting",
        "failed",
        "offline",
        "released_at",
        "passed_at",
    ];
    let rows: Vec<Vec<String>> = waves(view)
        .iter()
        .map(|w| keys.iter().map(|k| output::cell(&w[*k])).collect())
        .collect();
    text.push_str(&output::table(&columns, &rows));
    let offline: Vec<String> = view["offline_devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| output::cell(&d["name"]))
        .collect();
    if view["outcome"] == "completed_with_offline" || !offline.is_empty() {
        text.push_str(&format!(
            "completed with {} routers offline: {}\n",
            offline.len(),
            offline.join(", ")
        ));
    }
    text
}

/// The state and each wave's applied/routers on one line.
fn progress_line(view: &Value) -> String {
    let waves: Vec<String> = waves(view)
        .iter()
        .map(|w| {
            format!(
                "{} {}/{} (failed {}, offline {})",
                output::cell(&w["label"]),
                w["applied"].as_u64().unwrap_or(0),
                w["routers"].as_u64().unwrap_or(0),
                w["failed"].as_u64().unwrap_or(0),
                w["offline"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    format!("{}: {}", output::cell(&view["state"]), waves.join("; "))
}

fn waves(view: &Value) -> Vec<Value> {
    view["waves"].as_array().cloned().unwrap_or_default()
}

/// One progress bar per wave (applied of routers), and a line for the state,
/// drawn on stderr when it is a terminal. Elsewhere (a CI log) a progress
/// line goes to stderr whenever the counts change.
struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    waves: Vec<ProgressBar>,
    /// Not drawing bars: print progress lines instead.
    lines: bool,
    last_line: String,
}

impl Bars {
    fn new(visible: bool) -> Self {
        use std::io::IsTerminal;
        let terminal = visible && std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let header = multi.add(ProgressBar::new_spinner());
        Bars {
            multi,
            header,
            waves: Vec::new(),
            lines: visible && !terminal,
            last_line: String::new(),
        }
    }

    fn draw(&mut self, view: &Value) {
        if self.lines {
            let line = progress_line(view);
            if line != self.last_line {
                eprintln!("{line}");
                self.last_line = line;
            }
        }
        self.header.set_message(format!(
            "rollout {} {} -> {}: {}{}",
            output::cell(&view["service_name"]),
            output::cell(&view["from_revision"]),
            output::cell(&view["to_revision"]),
            output::cell(&view["state"]),
            view["pause_reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
        self.header.tick();
        let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        for (i, wave) in waves(view).iter().enumerate() {
            if i >= self.waves.len() {
                let bar = self
                    .multi
                    .add(ProgressBar::new(0).with_style(style.clone()));
                bar.set_prefix(wave["label"].as_str().unwrap_or("wave").to_owned());
                self.waves.push(bar);
            }
            let bar = &self.waves[i];
            let count = |k: &str| wave[k].as_u64().unwrap_or(0);
            bar.set_length(count("routers"));
            bar.set_position(count("applied"));
            let released = if wave["released_at"].is_null() {
                " (not released)"
            } else {
                ""
            };
            bar.set_message(format!(
                "failed {} offline {} pending {} waiting {}{released}",
                count("failed"),
                count("offline"),
                count("pending"),
                count("waiting")
            ));
        }
    }

    fn finish(&self) {
        for bar in &self.waves {
            bar.abandon();
        }
        self.header.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RolloutView as the rollout API's contract describes it.
    fn view() -> Value {
        let wave = |index: u32, label: &str, routers: u32, applied: u32, released: bool| {
            json!({
                "index": index, "label": label, "routers": routers, "pending": routers - applied,
                "applied": applied, "failed": 0, "offline": 0,
                "released_at": released.then_some("2026-01-01T00:00:00Z"),
                "healthy_since": null, "passed_at": null,
            })
        };
        json!({
            "id": "0b5d84cb-884b-4d5c-a8e2-8fafbfd8c6e6", "service_name": "block-telnet",
            "from_revision": 1, "to_revision": 2, "state": "paused", "pause_reason": "breach",
            "waves": [wave(0, "canary 10%", 1, 1, true), wave(1, "100%", 9, 0, false)],
        })
    }

    #[test]
    fn the_status_table_shows_every_wave() {
        let text = status_table(&view());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "rollout 0b5d84cb-884b-4d5c-a8e2-8fafbfd8c6e6  block-telnet 1 -> 2  state paused (breach)"
        );
        assert!(
            lines[1].starts_with("WAVE  LABEL       ROUTERS  APPLIED"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("0     canary 10%  1        1"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("1     100%        9        0"),
            "{text}"
        );
    }

    #[test]
    fn bars_follow_the_waves() {
        let mut bars = Bars::new(false);
        bars.draw(&view());
        assert_eq!(bars.waves.len(), 2);
        assert_eq!(bars.waves[0].position(), 1);
        assert_eq!(bars.waves[1].length(), Some(9));
        bars.finish();
        assert_eq!(
            progress_line(&view()),
            "paused: canary 10% 1/1 (failed 0, offline 0); 100% 0/9 (failed 0, offline 0)"
        );
    }
}
