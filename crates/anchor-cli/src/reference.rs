//! `docs/cli.md`, generated from the clap definition by walking its `Command` tree, and a test
//! that fails while the committed file differs (`ANCHOR_UPDATE_GENERATED=1` rewrites it).

use std::fmt::Write;

use clap::CommandFactory;

use crate::args::{Cli, EXIT_CODES};

pub fn markdown() -> String {
    let mut command = Cli::command();
    command.build();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# `anchor` command-line reference\n\n\
         Generated from the command definitions by `ANCHOR_UPDATE_GENERATED=1 cargo test -p \
         anchor-cli --bin anchor reference`; do not edit by hand.\n"
    );
    let _ = writeln!(out, "```text\n{EXIT_CODES}\n```\n");
    section(&mut out, &command, "anchor", 2);
    out
}

fn section(out: &mut String, command: &clap::Command, path: &str, depth: usize) {
    let heading = "#".repeat(depth.min(6));
    let _ = writeln!(out, "{heading} `{path}`\n");
    if let Some(about) = command.get_long_about().or(command.get_about()) {
        let _ = writeln!(out, "{}\n", about.to_string().trim());
    }
    let usage = command
        .clone()
        .bin_name(path)
        .render_usage()
        .to_string()
        .replace("Usage: ", "");
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    let positionals: Vec<_> = command
        .get_positionals()
        .filter(|a| !a.is_hide_set())
        .collect();
    if !positionals.is_empty() {
        let _ = writeln!(out, "Arguments:\n");
        for arg in positionals {
            let name = arg
                .get_value_names()
                .and_then(|n| n.first().map(ToString::to_string))
                .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
            let _ = writeln!(out, "- `<{name}>`{}", help_of(arg));
        }
        out.push('\n');
    }
    // Global options are listed once, on `anchor` itself.
    let options: Vec<_> = command
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_hide_set())
        .filter(|a| depth == 2 || !a.is_global_set())
        .collect();
    if !options.is_empty() {
        let _ = writeln!(out, "Options:\n");
        for arg in options {
            let mut names = Vec::new();
            if let Some(short) = arg.get_short() {
                names.push(format!("-{short}"));
            }
            if let Some(long) = arg.get_long() {
                names.push(format!("--{long}"));
            }
            let takes_value = arg.get_action().takes_values();
            let value = if takes_value {
                let name = arg
                    .get_value_names()
                    .and_then(|n| n.first().map(ToString::to_string))
                    .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
                format!(" <{name}>")
            } else {
                String::new()
            };
            let _ = writeln!(out, "- `{}{value}`{}", names.join(", "), help_of(arg));
        }
        out.push('\n');
    }
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        section(out, sub, &format!("{path} {}", sub.get_name()), depth + 1);
    }
}

fn help_of(arg: &clap::Arg) -> String {
    let mut text = arg
        .get_help()
        .map(|h| {
            format!(
                ": {}",
                h.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .unwrap_or_default();
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    if !values.is_empty() && arg.get_action().takes_values() {
        let _ = write!(text, " (one of {})", values.join(", "));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && arg.get_action().takes_values() {
        let _ = write!(text, " [default: {}]", defaults.join(", "));
    }
    if let Some(env) = arg.get_env() {
        let _ = write!(text, " [env: {}]", env.to_string_lossy());
    }
    text
}

#[test]
fn the_committed_cli_reference_matches_the_command_definitions() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
    let generated = markdown();
    if std::env::var_os("ANCHOR_UPDATE_GENERATED").is_some() {
        std::fs::write(&path, &generated).expect("docs/cli.md is writable");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/cli.md is stale: run `ANCHOR_UPDATE_GENERATED=1 cargo test -p anchor-cli --bin anchor reference`"
    );
}

#[test]
fn the_command_definitions_are_consistent() {
    // clap's own checks: conflicting short flags, bad defaults, and so on.
    Cli::command().debug_assert();
}
