//! `anchor envs …`: the project's environments. Deleting one cannot be undone (its
//! configurations, segments, SDK keys and history go with it), so it is confirmed first.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::{Map, Value, json};

use super::Ctx;
use super::flags::environments;
use crate::args::{EnvCreateArgs, EnvDeleteArgs, EnvUpdateArgs, EnvsCommand};
use crate::error::CliError;
use crate::http::seg;
use crate::output::{cell, text};

pub async fn run(ctx: &Ctx, command: EnvsCommand) -> Result<(), CliError> {
    match command {
        EnvsCommand::List => list(ctx).await,
        EnvsCommand::Create(args) => create(ctx, &args).await,
        EnvsCommand::Update(args) => update(ctx, args).await,
        EnvsCommand::Delete(args) => delete(ctx, &args).await,
    }
}

fn env_path(ctx: &Ctx, environment: &str) -> String {
    ctx.project_path(&format!("/environments/{}", seg(environment)))
}

fn yes_no(value: &Value) -> String {
    if *value == true { "yes" } else { "no" }.to_string()
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let envs = environments(ctx).await?;
    ctx.out.show(&Value::Array(envs.clone()), |out| {
        let rows: Vec<_> = envs
            .iter()
            .map(|e| {
                vec![
                    cell(text(&e["key"])),
                    cell(text(&e["name"])),
                    cell(text(&e["position"])),
                    cell(yes_no(&e["requiresApproval"])),
                    cell(yes_no(&e["requiresComment"])),
                ]
            })
            .collect();
        out.table(
            &[
                "key",
                "name",
                "position",
                "requires approval",
                "requires comment",
            ],
            &rows,
        );
    });
    Ok(())
}

async fn create(ctx: &Ctx, args: &EnvCreateArgs) -> Result<(), CliError> {
    let answer = ctx
        .api
        .post(
            &ctx.project_path("/environments"),
            &json!({
                "key": args.environment,
                "name": args.name,
                "requiresApproval": args.requires_approval,
                "requiresComment": args.requires_comment,
            }),
        )
        .await?;
    ctx.out.show(&answer.body, |out| {
        out.say(&format!(
            "Created environment {} in project {}",
            args.environment, ctx.project
        ))
    });
    Ok(())
}

/// Only the options given are sent, so the server keeps everything else as it is.
fn patch_of(args: EnvUpdateArgs) -> Result<Value, CliError> {
    let mut patch = Map::new();
    if let Some(name) = args.name {
        patch.insert("name".into(), json!(name));
    }
    if let Some(requires) = args.requires_approval {
        patch.insert("requiresApproval".into(), json!(requires));
    }
    if let Some(requires) = args.requires_comment {
        patch.insert("requiresComment".into(), json!(requires));
    }
    if let Some(position) = args.position {
        patch.insert("position".into(), json!(position));
    }
    if patch.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give --name, --requires-approval, --requires-comment or \
             --position"
                .into(),
        ));
    }
    if let Some(comment) = args.comment.comment {
        patch.insert("comment".into(), json!(comment));
    }
    Ok(Value::Object(patch))
}

async fn update(ctx: &Ctx, args: EnvUpdateArgs) -> Result<(), CliError> {
    let environment = args.environment.clone();
    let patch = patch_of(args)?;
    let answer = ctx.api.patch(&env_path(ctx, &environment), &patch).await?;
    ctx.out.show(&answer.body, |out| {
        out.say(&format!(
            "Updated environment {environment} in project {}",
            ctx.project
        ))
    });
    Ok(())
}

async fn delete(ctx: &Ctx, args: &EnvDeleteArgs) -> Result<(), CliError> {
    if !args.yes {
        confirm(ctx, &args.environment)?;
    }
    let answer = ctx.api.delete(&env_path(ctx, &args.environment)).await?;
    ctx.out.show(&answer.body, |out| {
        out.say(&format!(
            "Deleted environment {} from project {}",
            args.environment, ctx.project
        ))
    });
    Ok(())
}

/// Asks on the terminal for the environment's key to be typed back. Without a terminal there
/// is nobody to ask, and a script that wants the deletion says so with --yes.
fn confirm(ctx: &Ctx, environment: &str) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "deleting environment `{environment}` cannot be undone: confirm on a terminal, or \
             pass --yes"
        )));
    }
    let mut stderr = std::io::stderr().lock();
    let _ = write!(
        stderr,
        "Deleting environment `{environment}` of project `{}` deletes its flag configurations, \
         segments, SDK keys, releases and history for good.\nType `{environment}` to confirm: ",
        ctx.project
    );
    let _ = stderr.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::Local(format!("reading the confirmation: {e}")))?;
    if answer.trim() == environment {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "not confirmed: environment `{environment}` was not deleted"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::CommentArg;

    fn update(name: Option<&str>, approval: Option<bool>, comment: Option<&str>) -> EnvUpdateArgs {
        EnvUpdateArgs {
            environment: "staging".into(),
            name: name.map(String::from),
            requires_approval: approval,
            requires_comment: None,
            position: None,
            comment: CommentArg {
                comment: comment.map(String::from),
            },
        }
    }

    #[test]
    fn an_update_sends_only_the_options_given() {
        assert_eq!(
            patch_of(update(Some("Stage"), None, None)).unwrap(),
            json!({"name": "Stage"})
        );
        assert_eq!(
            patch_of(update(None, Some(false), Some("gone"))).unwrap(),
            json!({"requiresApproval": false, "comment": "gone"})
        );
    }

    #[test]
    fn an_update_that_changes_nothing_is_a_usage_error() {
        let error = patch_of(update(None, None, Some("why"))).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("--position"), "{error}");
    }
}
