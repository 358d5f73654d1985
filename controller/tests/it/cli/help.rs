//! Every isdfctl command, option and positional says what it is for: a walk
//! of the whole command tree, and of the binary's `--help` for each command.

use clap::CommandFactory;

use super::*;

/// Every command's path (`["services", "list"]`...) and the command itself.
fn walk(command: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let mut sub_path = path.clone();
        sub_path.push(sub.get_name().to_owned());
        out.push((sub_path.clone(), sub.clone()));
        walk(sub, sub_path, out);
    }
}

fn text(s: Option<&clap::builder::StyledStr>) -> String {
    s.map(|s| s.to_string()).unwrap_or_default()
}

#[test]
fn cli_every_command_option_and_positional_has_help() {
    let mut root = isdf_controller::cli::Cli::command();
    root.build();
    let mut commands = vec![(vec![], root.clone())];
    walk(&root, vec![], &mut commands);
    assert!(commands.len() > 80, "{} commands", commands.len());
    let mut missing = Vec::new();
    for (path, command) in &commands {
        let name = format!("isdfctl {}", path.join(" "));
        let about = text(command.get_about());
        if about.trim().is_empty() {
            missing.push(format!("{name}: no description"));
        }
        // The old paging text, which said nothing of how to page.
        if about.contains("Which part of a list") {
            missing.push(format!("{name}: vague description `{about}`"));
        }
        if command.get_arguments().any(|a| a.get_id() == "cursor") {
            let after = text(command.get_after_help());
            if !after.contains("--cursor") || !after.contains("--all") {
                missing.push(format!("{name}: does not say how to page"));
            }
        }
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = text(arg.get_help());
            if help.trim().len() < 8 {
                missing.push(format!("{name}: `{id}` has no help (`{help}`)"));
            }
            let values = arg.get_possible_values();
            let boolean = values.iter().map(|v| v.get_name()).eq(["true", "false"]);
            for value in values.iter().filter(|_| !boolean) {
                if !value.is_hide_set() && text(value.get_help()).trim().is_empty() {
                    missing.push(format!(
                        "{name}: `{id}` value `{}` has no help",
                        value.get_name()
                    ));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The binary prints each command's help, and every option line in it has
/// its text (what users read, through clap's rendering).
#[tokio::test]
async fn cli_help_of_every_command_prints_a_description_for_each_option() {
    let ctl = Ctl::at("http://127.0.0.1:9", "t");
    let mut root = isdf_controller::cli::Cli::command();
    root.build();
    let mut commands = vec![(vec![], root.clone())];
    walk(&root, vec![], &mut commands);
    for (path, _) in &commands {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let run = ctl.run(&args).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        let mut section = "";
        for line in run.stdout.lines() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line;
                continue;
            }
            // An option or positional line is `  -x, --name <V>  Its help`;
            // clap puts long help on the next lines, so a bare one must be
            // followed by an indented description.
            let item = line.trim_start();
            let is_item = line.starts_with("  ")
                && !line.starts_with("          ")
                && (item.starts_with('-') || item.starts_with('<') || item.starts_with('['));
            if section.starts_with("Usage") || !is_item {
                continue;
            }
            let described = item.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
            assert!(
                described || run.stdout.contains(&format!("{line}\n          ")),
                "isdfctl {}: `{line}` has no description\n{}",
                path.join(" "),
                run.stdout
            );
        }
    }
}
