//! `anchor flags …`: definitions, and the per-environment kill switch.

use serde_json::{Map, Value, json};

use super::{Ctx, read_document, report_write, serve_text};
use crate::args::{FlagDefinitionArgs, FlagKind, FlagsCommand, FlagsListArgs, Lifecycle};
use crate::error::CliError;
use crate::http::{query, seg};
use crate::output::{Tone, cell, text};

pub async fn run(ctx: &Ctx, command: FlagsCommand) -> Result<(), CliError> {
    match command {
        FlagsCommand::List(args) => list(ctx, &args).await,
        FlagsCommand::Get(args) => get(ctx, &args.flag).await,
        FlagsCommand::Create(args) => create(ctx, &args).await,
        FlagsCommand::Update(args) => update(ctx, &args).await,
        FlagsCommand::Archive(args) => lifecycle_action(ctx, &args.flag, "archive").await,
        FlagsCommand::Restore(args) => lifecycle_action(ctx, &args.flag, "restore").await,
        FlagsCommand::On(args) => switch(ctx, &args.flag, true, args.comment.comment).await,
        FlagsCommand::Off(args) => switch(ctx, &args.flag, false, args.comment.comment).await,
    }
}

/// Every flag record of the project, following the pages.
pub async fn all_flags(
    ctx: &Ctx,
    filters: &[(&str, Option<String>)],
) -> Result<Vec<Value>, CliError> {
    let mut flags = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut pairs = filters.to_vec();
        pairs.push(("limit", Some("1000".into())));
        pairs.push(("after", after.clone()));
        let page = ctx
            .api
            .get(&ctx.project_path(&format!("/flags{}", query(&pairs))))
            .await?;
        if let Some(items) = page["items"].as_array() {
            flags.extend(items.iter().cloned());
        }
        match page["next"].as_str() {
            Some(next) if !next.is_empty() => after = Some(next.to_string()),
            _ => return Ok(flags),
        }
    }
}

pub async fn environments(ctx: &Ctx) -> Result<Vec<Value>, CliError> {
    let envs = ctx.api.get(&ctx.project_path("/environments")).await?;
    Ok(envs.as_array().cloned().unwrap_or_default())
}

fn config_in<'a>(record: &'a Value, env: &str) -> Option<&'a Value> {
    record["environments"]
        .as_array()?
        .iter()
        .find(|e| e["environment"] == env)
        .map(|e| &e["config"])
}

async fn list(ctx: &Ctx, args: &FlagsListArgs) -> Result<(), CliError> {
    let flags = all_flags(
        ctx,
        &[
            ("tag", args.tag.clone()),
            ("q", args.search.clone()),
            ("enabledIn", args.enabled_in.clone()),
            ("archived", args.archived.then(|| "true".to_string())),
        ],
    )
    .await?;
    let envs: Vec<String> = environments(ctx)
        .await?
        .iter()
        .filter_map(|e| e["key"].as_str().map(String::from))
        .collect();
    ctx.out.show(&Value::Array(flags.clone()), |out| {
        let mut headers = vec!["key", "kind"];
        headers.extend(envs.iter().map(String::as_str));
        headers.push("tags");
        let rows: Vec<Vec<(String, Tone)>> = flags
            .iter()
            .map(|record| {
                let flag = &record["flag"];
                let mut key = text(&flag["key"]);
                if record["archived"] == true {
                    key.push_str(" (archived)");
                }
                let mut row = vec![cell(key), cell(text(&flag["kind"]))];
                for env in &envs {
                    row.push(match config_in(record, env) {
                        Some(c) if c["enabled"] == true => ("on".into(), Tone::Good),
                        Some(_) => ("off".into(), Tone::Bad),
                        None => ("-".into(), Tone::Dim),
                    });
                }
                let tags: Vec<String> = flag["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                row.push(cell(tags.join(",")));
                row
            })
            .collect();
        out.table(&headers, &rows);
    });
    Ok(())
}

fn flag_path(ctx: &Ctx, flag: &str) -> String {
    ctx.project_path(&format!("/flags/{}", seg(flag)))
}

async fn get(ctx: &Ctx, flag: &str) -> Result<(), CliError> {
    let record = ctx.api.get(&flag_path(ctx, flag)).await?;
    ctx.out.show(&record, |_| show_record(ctx, &record));
    Ok(())
}

fn show_record(ctx: &Ctx, record: &Value) {
    let out = &ctx.out;
    let flag = &record["flag"];
    let variants: Vec<String> = flag["variants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| format!("{}={}", text(&v["name"]), v["value"]))
        .collect();
    let tags: Vec<String> = flag["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let mut fields = vec![
        ("key", text(&flag["key"])),
        ("kind", text(&flag["kind"])),
        ("description", text(&flag["description"])),
        ("variants", variants.join(", ")),
        ("tags", tags.join(", ")),
        ("lifecycle", text(&flag["lifecycle"])),
    ];
    if !flag["cleanupDate"].is_null() {
        fields.push(("cleanup date", text(&flag["cleanupDate"])));
    }
    if record["archived"] == true {
        fields.push(("archived", "yes".into()));
    }
    out.fields(&fields);
    out.say("");
    let rows: Vec<Vec<(String, Tone)>> = record["environments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let config = &e["config"];
            let enabled = config["enabled"] == true;
            let rules = config["rules"].as_array().map_or(0, Vec::len);
            let targets: usize = config["targets"].as_object().map_or(0, |t| {
                t.values().filter_map(Value::as_array).map(Vec::len).sum()
            });
            vec![
                cell(text(&e["environment"])),
                if enabled {
                    ("on".into(), Tone::Good)
                } else {
                    ("off".into(), Tone::Bad)
                },
                cell(if enabled {
                    serve_text(&config["defaultServe"])
                } else {
                    text(&config["offVariant"])
                }),
                cell(rules.to_string()),
                cell(targets.to_string()),
                cell(text(&config["version"])),
            ]
        })
        .collect();
    out.table(
        &[
            "environment",
            "state",
            "serves",
            "rules",
            "targets",
            "version",
        ],
        &rows,
    );
}

/// The flag JSON from a file (if any) with the options given on top.
fn apply_definition(mut flag: Value, args: &FlagDefinitionArgs) -> Result<Value, CliError> {
    if !flag.is_object() {
        flag = Value::Object(Map::new());
    }
    flag["key"] = json!(args.flag);
    if let Some(kind) = args.kind {
        flag["kind"] = json!(kind_name(kind));
    }
    if !args.variants.is_empty() {
        let variants = args
            .variants
            .iter()
            .map(|v| parse_variant(v))
            .collect::<Result<Vec<_>, _>>()?;
        flag["variants"] = Value::Array(variants);
    }
    if let Some(description) = &args.description {
        flag["description"] = json!(description);
    }
    if !args.tags.is_empty() {
        flag["tags"] = json!(args.tags);
    }
    if let Some(lifecycle) = args.lifecycle {
        flag["lifecycle"] = json!(match lifecycle {
            Lifecycle::Temporary => "temporary",
            Lifecycle::Permanent => "permanent",
        });
    }
    if let Some(date) = &args.cleanup_date {
        flag["cleanupDate"] = json!(date);
    }
    Ok(flag)
}

fn kind_name(kind: FlagKind) -> &'static str {
    match kind {
        FlagKind::Boolean => "boolean",
        FlagKind::String => "string",
        FlagKind::Number => "number",
        FlagKind::Json => "json",
    }
}

/// `NAME=VALUE` with VALUE in JSON; a bare word that is not JSON is taken as a string, so
/// `--variant blue=blue` works without shell-quoted quotes.
fn parse_variant(spec: &str) -> Result<Value, CliError> {
    let (name, value) = spec.split_once('=').ok_or_else(|| {
        CliError::Usage(format!(
            "--variant `{spec}`: use NAME=VALUE, e.g. on=true or blue='\"#00f\"'"
        ))
    })?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
    Ok(json!({"name": name, "value": value}))
}

async fn create(ctx: &Ctx, args: &FlagDefinitionArgs) -> Result<(), CliError> {
    let base = match &args.file {
        Some(path) => read_document(path)?,
        None => json!({}),
    };
    let mut flag = apply_definition(base, args)?;
    if flag["kind"].is_null() {
        flag["kind"] = json!("boolean");
    }
    if flag["kind"] == "boolean" && flag["variants"].is_null() {
        flag["variants"] = json!([{"name": "on", "value": true}, {"name": "off", "value": false}]);
    }
    let answer = ctx.api.post(&ctx.project_path("/flags"), &flag).await?;
    ctx.out.show(&answer.body, |out| {
        out.say(&format!(
            "Created flag {} (disabled in every environment)",
            args.flag
        ))
    });
    Ok(())
}

async fn update(ctx: &Ctx, args: &FlagDefinitionArgs) -> Result<(), CliError> {
    let base = match &args.file {
        Some(path) => read_document(path)?,
        None => ctx.api.get(&flag_path(ctx, &args.flag)).await?["flag"].clone(),
    };
    let flag = apply_definition(base, args)?;
    let answer = ctx
        .api
        .put(&flag_path(ctx, &args.flag), &flag, None)
        .await?;
    ctx.out.show(&answer.body, |out| {
        out.say(&format!("Updated flag {}", args.flag))
    });
    Ok(())
}

async fn lifecycle_action(ctx: &Ctx, flag: &str, action: &str) -> Result<(), CliError> {
    let answer = ctx
        .api
        .post(&format!("{}/{action}", flag_path(ctx, flag)), &json!({}))
        .await?;
    let done = if action == "archive" {
        "Archived"
    } else {
        "Restored"
    };
    ctx.out
        .show(&answer.body, |out| out.say(&format!("{done} flag {flag}")));
    Ok(())
}

/// Reads the flag's configuration in --env, lets `edit` change it, and writes it back with
/// If-Match, so a change made meanwhile is refused (412) rather than overwritten.
pub async fn edit_config(
    ctx: &Ctx,
    flag: &str,
    comment: Option<String>,
    done: &str,
    edit: impl FnOnce(&mut Value) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let answer = ctx
        .api
        .send(reqwest::Method::GET, &ctx.config_path(flag, ""), None, None)
        .await?;
    let mut config = answer.body;
    let version = config["version"].as_u64();
    edit(&mut config)?;
    if let Some(comment) = comment {
        config["comment"] = json!(comment);
    }
    let answer = ctx
        .api
        .put(&ctx.config_path(flag, ""), &config, version)
        .await?;
    report_write(ctx, &answer, done);
    Ok(())
}

async fn switch(ctx: &Ctx, flag: &str, on: bool, comment: Option<String>) -> Result<(), CliError> {
    let done = format!("{flag} is {} in {}", if on { "on" } else { "off" }, ctx.env);
    edit_config(ctx, flag, comment, &done, |config| {
        config["enabled"] = json!(on);
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_take_json_values_or_bare_strings() {
        assert_eq!(
            parse_variant("on=true").unwrap(),
            json!({"name": "on", "value": true})
        );
        assert_eq!(
            parse_variant("blue=blue").unwrap(),
            json!({"name": "blue", "value": "blue"})
        );
        assert_eq!(
            parse_variant("n=1.5").unwrap(),
            json!({"name": "n", "value": 1.5})
        );
        assert_eq!(parse_variant("novalue").unwrap_err().exit_code(), 2);
    }
}
