//! `anchor history`, `diff`, `revert` and `audit`.

use serde_json::{Value, json};

use super::{Ctx, report_write};
use crate::args::{AuditArgs, DiffArgs, RevertArgs};
use crate::error::CliError;
use crate::http::query;
use crate::output::{Out, actor, cell, text, time};

pub async fn history(ctx: &Ctx, flag: &str) -> Result<(), CliError> {
    let revisions = ctx.api.get(&ctx.config_path(flag, "/revisions")).await?;
    ctx.out.show(&revisions, |out| {
        let rows: Vec<_> = revisions
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                vec![
                    cell(text(&r["version"])),
                    cell(time(&r["createdAt"])),
                    cell(actor(&r["actor"])),
                    cell(text(&r["comment"])),
                ]
            })
            .collect();
        out.table(&["version", "time (utc)", "actor", "comment"], &rows);
    });
    Ok(())
}

pub async fn diff(ctx: &Ctx, args: &DiffArgs) -> Result<(), CliError> {
    let to = match args.to {
        Some(to) => to,
        None => {
            let revisions = ctx
                .api
                .get(&ctx.config_path(&args.flag, "/revisions"))
                .await?;
            revisions
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["version"].as_u64())
                .max()
                .unwrap_or(args.from)
        }
    };
    let patch = ctx
        .api
        .get(&ctx.config_path(&args.flag, &format!("/revisions/{}/diff/{to}", args.from)))
        .await?;
    ctx.out.show(&patch, |out| {
        out.say(&format!(
            "{} in {}: revision {} → {to}",
            args.flag, ctx.env, args.from
        ));
        print_patch(out, &patch);
    });
    Ok(())
}

/// An RFC 6902 patch as lines: `+ /path value`, `- /path`, `~ /path value`.
pub fn print_patch(out: &Out, patch: &Value) {
    let ops = patch.as_array().cloned().unwrap_or_default();
    if ops.is_empty() {
        out.say("  (no change)");
    }
    for op in ops {
        let path = text(&op["path"]);
        let line = match op["op"].as_str().unwrap_or("") {
            "add" => out.paint(
                &format!("  + {path} {}", op["value"]),
                crate::output::Tone::Good,
            ),
            "remove" => out.paint(&format!("  - {path}"), crate::output::Tone::Bad),
            "replace" => format!("  ~ {path} {}", op["value"]),
            other => format!("  {other} {path} {}", op),
        };
        out.say(&line);
    }
}

pub async fn revert(ctx: &Ctx, args: &RevertArgs) -> Result<(), CliError> {
    let answer = ctx
        .api
        .post(
            &ctx.config_path(&args.flag, "/revert"),
            &json!({"version": args.version, "comment": args.comment.comment}),
        )
        .await?;
    report_write(
        ctx,
        &answer,
        &format!(
            "{} in {} is back to revision {} (as version {})",
            args.flag,
            ctx.env,
            args.version,
            text(&answer.body["version"])
        ),
    );
    Ok(())
}

pub async fn audit(ctx: &Ctx, args: &AuditArgs) -> Result<(), CliError> {
    let path = ctx.project_path(&format!(
        "/audit{}",
        query(&[
            ("flag", args.flag.clone()),
            ("actor", args.actor.clone()),
            ("action", args.action.clone()),
            ("environment", args.only_env.then(|| ctx.env.clone())),
            ("limit", Some(args.limit.to_string())),
        ])
    ));
    let entries = ctx.api.get(&path).await?;
    ctx.out.show(&entries, |out| {
        let rows: Vec<_> = entries
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                vec![
                    cell(time(&e["createdAt"])),
                    cell(actor(&e["actor"])),
                    cell(text(&e["action"])),
                    cell(format!(
                        "{} {}",
                        text(&e["resourceKind"]),
                        text(&e["resourceKey"])
                    )),
                    cell(text(&e["environment"])),
                    cell(text(&e["comment"])),
                ]
            })
            .collect();
        out.table(
            &[
                "time (utc)",
                "actor",
                "action",
                "resource",
                "environment",
                "comment",
            ],
            &rows,
        );
    });
    Ok(())
}
