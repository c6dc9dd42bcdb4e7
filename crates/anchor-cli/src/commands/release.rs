//! `anchor release …`: start, watch and steer progressive releases.

use std::io::IsTerminal;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Ctx, format_percent};
use crate::args::{ReleaseCommand, ReleaseStatusArgs};
use crate::error::CliError;
use crate::http::seg;
use crate::output::{Out, Tone, cell, text, time};

pub async fn run(ctx: &Ctx, command: ReleaseCommand) -> Result<(), CliError> {
    match command {
        ReleaseCommand::Start(args) => {
            let answer = ctx
                .api
                .post(
                    &ctx.config_path(&args.flag, "/releases"),
                    &json!({"control": args.control, "treatment": args.treatment,
                            "template": args.template, "rule": args.rule}),
                )
                .await?;
            ctx.out.show(&answer.body, |out| show(out, &answer.body));
            Ok(())
        }
        ReleaseCommand::Status(args) => status(ctx, &args).await,
        ReleaseCommand::Pause(a) => command_on(ctx, &a.release, "pause").await,
        ReleaseCommand::Resume(a) => command_on(ctx, &a.release, "resume").await,
        ReleaseCommand::Approve(a) => command_on(ctx, &a.release, "approve").await,
        ReleaseCommand::Rollback(a) => command_on(ctx, &a.release, "rollBack").await,
        ReleaseCommand::Abort(a) => command_on(ctx, &a.release, "abort").await,
    }
}

async fn command_on(ctx: &Ctx, release: &str, command: &str) -> Result<(), CliError> {
    let id = resolve(ctx, release, true).await?;
    let answer = ctx
        .api
        .post(
            &ctx.project_path(&format!("/releases/{}/commands", seg(&id))),
            &json!({ "command": command }),
        )
        .await?;
    ctx.out.show(&answer.body, |out| show(out, &answer.body));
    Ok(())
}

/// A release id as given, or the release of the flag of that key in --env: its active one
/// (`active_only`), else its latest.
async fn resolve(ctx: &Ctx, release: &str, active_only: bool) -> Result<String, CliError> {
    let releases = ctx.api.get(&ctx.project_path("/releases")).await?;
    let releases = releases.as_array().cloned().unwrap_or_default();
    if releases.iter().any(|r| r["id"] == release) {
        return Ok(release.to_string());
    }
    let mut of_flag: Vec<&Value> = releases
        .iter()
        .filter(|r| r["flag"] == release && r["environment"] == ctx.env.as_str())
        .filter(|r| !active_only || r["active"] == true)
        .collect();
    of_flag.sort_by_key(|r| r["createdAt"].as_i64().unwrap_or(0));
    of_flag
        .last()
        .and_then(|r| r["id"].as_str())
        .map(String::from)
        .ok_or_else(|| {
            CliError::NotFound(format!(
                "no {}release with id `{release}`, nor of a flag `{release}` in {}",
                if active_only { "active " } else { "" },
                ctx.env
            ))
        })
}

async fn status(ctx: &Ctx, args: &ReleaseStatusArgs) -> Result<(), CliError> {
    if !args.interval.is_finite() || args.interval <= 0.0 {
        return Err(CliError::Usage(format!(
            "--interval must be a positive number of seconds, not {}",
            args.interval
        )));
    }
    let Some(release) = &args.release else {
        let releases = ctx.api.get(&ctx.project_path("/releases")).await?;
        ctx.out.show(&releases, |out| {
            let rows: Vec<_> = releases
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let (state, tone) = state_of(r);
                    vec![
                        cell(text(&r["id"])),
                        cell(text(&r["flag"])),
                        cell(text(&r["environment"])),
                        (state, tone),
                        cell(format!(
                            "{}%",
                            format_percent(r["percentage"].as_f64().unwrap_or(0.0))
                        )),
                        cell(time(&r["updatedAt"])),
                    ]
                })
                .collect();
            out.table(
                &[
                    "id",
                    "flag",
                    "environment",
                    "state",
                    "treatment",
                    "updated (utc)",
                ],
                &rows,
            );
        });
        return Ok(());
    };
    let id = resolve(ctx, release, false).await?;
    let path = ctx.project_path(&format!("/releases/{}", seg(&id)));
    if !args.watch {
        let view = ctx.api.get(&path).await?;
        ctx.out.show(&view, |out| show(out, &view));
        return Ok(());
    }
    let interval = Duration::from_secs_f64(args.interval.clamp(0.2, 3600.0));
    // Redraw in place on a terminal; elsewhere (a CI log) print a view only when it changed.
    let redraw = std::io::stdout().is_terminal() && !ctx.out.json;
    let mut last = Value::Null;
    loop {
        let view = ctx.api.get(&path).await?;
        let seen = json!([view["version"], view["reportedAt"], view["percentage"]]);
        if seen != last {
            if redraw {
                ctx.out.always("\x1b[H\x1b[2J");
            }
            if ctx.out.json {
                ctx.out
                    .always(&serde_json::to_string(&view).unwrap_or_default());
            } else if !ctx.out.quiet {
                show(&ctx.out, &view);
                if view["active"] == true {
                    ctx.out.say(&ctx.out.paint(
                        &format!(
                            "(watching; every {:.1} s; Ctrl-C stops)",
                            interval.as_secs_f64()
                        ),
                        Tone::Dim,
                    ));
                }
            }
            last = seen;
        }
        if view["active"] != true {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

fn state_of(release: &Value) -> (String, Tone) {
    let state = text(&release["state"]["state"]);
    let tone = match state.as_str() {
        "completed" | "running" => Tone::Good,
        "rolledBack" | "aborted" | "holding" => Tone::Bad,
        _ => Tone::Plain,
    };
    (state, tone)
}

/// One release for people: what, where, how far, and the latest decisions in words.
fn show(out: &Out, view: &Value) {
    let (state, tone) = state_of(view);
    let stages = view["template"]["stages"].as_array().map_or(0, Vec::len);
    let stage = view["state"]["stage"].as_u64().map(|s| s + 1);
    let mut fields = vec![
        ("release", text(&view["id"])),
        (
            "flag",
            format!("{} in {}", text(&view["flag"]), text(&view["environment"])),
        ),
        (
            "variants",
            format!("{} → {}", text(&view["control"]), text(&view["treatment"])),
        ),
        ("template", text(&view["templateKey"])),
        ("state", out.paint(&state, tone)),
        (
            "treatment share",
            format!(
                "{}%",
                format_percent(view["percentage"].as_f64().unwrap_or(0.0))
            ),
        ),
    ];
    if let Some(stage) = stage {
        fields.push(("stage", format!("{stage} of {stages}")));
    }
    if let Some(reason) = view["state"].get("reason").filter(|r| !r.is_null()) {
        fields.push(("reason", text(reason)));
    }
    if !view["reportedAt"].is_null() {
        fields.push(("last report", time(&view["reportedAt"])));
    }
    out.fields(&fields);
    if let Some(decisions) = view["decisions"].as_array().filter(|d| !d.is_empty()) {
        out.say("");
        let start = decisions.len().saturating_sub(8);
        for decision in &decisions[start..] {
            out.say(&format!(
                "  {}  {}",
                time(&decision["at"]),
                text(&decision["message"])
            ));
        }
    }
}
