//! `anchor change-requests …`, `keys …` and `evaluate`.

use serde_json::{Value, json};

use super::Ctx;
use super::history::print_patch;
use crate::args::{ChangeRequestsCommand, EvaluateArgs, KeyKind, KeysCommand};
use crate::error::CliError;
use crate::http::{query, seg};
use crate::output::{Tone, actor, cell, text, time};

pub async fn change_requests(ctx: &Ctx, command: ChangeRequestsCommand) -> Result<(), CliError> {
    let path =
        |id: &str, rest: &str| ctx.project_path(&format!("/change-requests/{}{rest}", seg(id)));
    match command {
        ChangeRequestsCommand::List(args) => {
            let list = ctx
                .api
                .get(&ctx.project_path(&format!(
                    "/change-requests{}",
                    query(&[
                        ("status", args.status.clone()),
                        ("environment", args.only_env.then(|| ctx.env.clone())),
                    ])
                )))
                .await?;
            ctx.out.show(&list, |out| {
                let rows: Vec<_> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            cell(text(&r["id"])),
                            cell(text(&r["environment"])),
                            cell(resource(r)),
                            cell(text(&r["status"])),
                            cell(actor(&r["author"])),
                            cell(time(&r["createdAt"])),
                            cell(text(&r["comment"])),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "id",
                        "environment",
                        "resource",
                        "status",
                        "author",
                        "created (utc)",
                        "comment",
                    ],
                    &rows,
                );
            });
            Ok(())
        }
        ChangeRequestsCommand::Get(args) => {
            let view = ctx.api.get(&path(&args.id, "")).await?;
            ctx.out.show(&view, |out| show(out, &view));
            Ok(())
        }
        ChangeRequestsCommand::Approve(args) => {
            let answer = ctx
                .api
                .post(
                    &path(&args.id, "/approve"),
                    &json!({"comment": args.comment.comment}),
                )
                .await?;
            ctx.out.show(&answer.body, |out| show(out, &answer.body));
            Ok(())
        }
        ChangeRequestsCommand::Reject(args) => {
            let answer = ctx
                .api
                .post(
                    &path(&args.id, "/reject"),
                    &json!({"comment": args.comment.comment}),
                )
                .await?;
            ctx.out.show(&answer.body, |out| show(out, &answer.body));
            Ok(())
        }
        ChangeRequestsCommand::Apply(args) => {
            let answer = ctx.api.post(&path(&args.id, "/apply"), &json!({})).await?;
            ctx.out.show(&answer.body, |out| {
                out.say(&format!(
                    "Applied change request {} ({})",
                    args.id,
                    text(&answer.body["status"])
                ))
            });
            Ok(())
        }
    }
}

fn resource(request: &Value) -> String {
    match request["resourceKind"].as_str() {
        Some(kind) if kind != "flag" && !kind.is_empty() => {
            let key = request["segment"]["key"]
                .as_str()
                .or(request["flag"].as_str())
                .unwrap_or("");
            format!("{kind} {key}")
        }
        _ => format!("flag {}", text(&request["flag"])),
    }
}

fn show(out: &crate::output::Out, view: &Value) {
    let reviews: Vec<String> = view["reviews"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{} by {}", text(&r["decision"]), actor(&r["reviewer"])))
        .collect();
    let mut fields = vec![
        ("change request", text(&view["id"])),
        ("resource", resource(view)),
        ("environment", text(&view["environment"])),
        ("status", text(&view["status"])),
        ("author", actor(&view["author"])),
        ("comment", text(&view["comment"])),
        ("reviews", reviews.join(", ")),
        ("created", time(&view["createdAt"])),
    ];
    if !view["applyAt"].is_null() {
        fields.push(("apply at", time(&view["applyAt"])));
    }
    if !view["failure"].is_null() {
        fields.push(("failure", text(&view["failure"])));
    }
    out.fields(&fields);
    if view["diff"].is_array() {
        out.say("");
        out.say("diff from the current configuration:");
        print_patch(out, &view["diff"]);
    }
}

pub async fn keys(ctx: &Ctx, command: KeysCommand) -> Result<(), CliError> {
    let kind = |k: KeyKind| match k {
        KeyKind::Server => "server",
        KeyKind::Client => "client",
    };
    match command {
        KeysCommand::List => {
            let list = ctx.api.get(&ctx.env_path("/keys")).await?;
            ctx.out.show(&list, |out| {
                let rows: Vec<_> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|k| {
                        let revoked = k["revoked"] == true;
                        vec![
                            cell(text(&k["id"])),
                            cell(text(&k["kind"])),
                            cell(format!("{}…", text(&k["prefix"]))),
                            cell(time(&k["createdAt"])),
                            cell(time(&k["expiresAt"])),
                            cell(if k["lastUsedAt"].is_null() {
                                "never".into()
                            } else {
                                time(&k["lastUsedAt"])
                            }),
                            if revoked {
                                ("revoked".into(), Tone::Bad)
                            } else {
                                ("active".into(), Tone::Good)
                            },
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "id",
                        "kind",
                        "prefix",
                        "created (utc)",
                        "expires (utc)",
                        "last used (utc)",
                        "state",
                    ],
                    &rows,
                );
            });
            Ok(())
        }
        KeysCommand::Create(args) => {
            let answer = ctx
                .api
                .post(&ctx.env_path("/keys"), &json!({"kind": kind(args.kind)}))
                .await?;
            print_secret(ctx, &answer.body);
            Ok(())
        }
        KeysCommand::Rotate(args) => {
            let answer = ctx
                .api
                .post(
                    &ctx.env_path("/keys/rotate"),
                    &json!({"kind": kind(args.kind), "overlapSeconds": args.overlap_seconds}),
                )
                .await?;
            print_secret(ctx, &answer.body);
            Ok(())
        }
        KeysCommand::Revoke(args) => {
            let answer = ctx
                .api
                .delete(&ctx.env_path(&format!("/keys/{}", seg(&args.id))))
                .await?;
            ctx.out.show(&answer.body, |out| {
                out.say(&format!("Revoked SDK key {} in {}", args.id, ctx.env))
            });
            Ok(())
        }
    }
}

/// A new key's secret is shown this once, whatever the options: with --quiet alone on its
/// line, so `KEY=$(anchor keys create --kind server -q)` works.
fn print_secret(ctx: &Ctx, created: &Value) {
    let key = text(&created["key"]);
    if ctx.out.json {
        ctx.out.show(created, |_| {});
    } else if ctx.out.quiet {
        ctx.out.always(&key);
    } else {
        ctx.out.fields(&[
            ("id", text(&created["id"])),
            ("kind", text(&created["kind"])),
            ("environment", text(&created["environment"])),
            ("key", key),
        ]);
        ctx.out
            .say("The key is shown only now; store it where your application reads its secrets.");
    }
}

pub async fn evaluate(ctx: &Ctx, args: &EvaluateArgs) -> Result<(), CliError> {
    let context: Value = serde_json::from_str(&args.context)
        .map_err(|e| CliError::Usage(format!("--context is not JSON: {e}")))?;
    if !context.is_object() {
        return Err(CliError::Usage(
            "--context must be a JSON object, e.g. '{\"targetingKey\": \"user-42\"}'".into(),
        ));
    }
    let answer = ctx
        .api
        .post(&ctx.config_path(&args.flag, "/evaluate"), &context)
        .await?;
    let result = answer.body;
    ctx.out.show(&result, |out| {
        let explanation = &result["explanation"];
        let evaluation = if explanation["evaluation"].is_object() {
            &explanation["evaluation"]
        } else {
            explanation
        };
        out.fields(&[
            ("flag", format!("{} in {}", args.flag, ctx.env)),
            ("value", text(&evaluation["value"])),
            ("variant", text(&evaluation["variant"])),
            ("reason", text(&evaluation["reason"])),
            ("revision", text(&result["revision"])),
        ]);
        if args.explain {
            out.say("");
            for line in text(&result["text"]).lines() {
                out.say(line);
            }
        }
    });
    Ok(())
}
