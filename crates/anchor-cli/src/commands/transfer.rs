//! `anchor export` and `anchor import`: a project's flags (each with its configuration in
//! every environment), segments and environments as one JSON or YAML document.
//!
//! Import makes the target project match the document by creating and updating only what
//! differs (compared without server-kept fields such as `version`), so a second run changes
//! nothing; it never deletes what the document lacks. `--dry-run` prints the same plan as a
//! diff and sends no write.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt;

use serde_json::{Map, Value, json};

use super::flags::{all_flags, environments};
use super::{Ctx, read_document};
use crate::args::{ExportArgs, Format, ImportArgs};
use crate::error::CliError;
use crate::http::seg;

/// Bumped when the document's shape changes incompatibly.
const FORMAT_VERSION: u64 = 1;

pub async fn export(ctx: &Ctx, args: &ExportArgs) -> Result<(), CliError> {
    let envs = environments(ctx).await?;
    let environments: Vec<Value> = envs
        .iter()
        .map(|e| {
            json!({"key": e["key"], "name": e["name"],
                   "requiresApproval": e["requiresApproval"], "requiresComment": e["requiresComment"]})
        })
        .collect();
    let mut segments = Map::new();
    for env in &envs {
        let key = text(&env["key"]);
        let list = ctx.api.get(&ctx.env_path_of(&key, "/segments")).await?;
        let mut full = Vec::new();
        for summary in list.as_array().into_iter().flatten() {
            let segment_key = text(&summary["key"]);
            let record = ctx
                .api
                .get(&ctx.env_path_of(&key, &format!("/segments/{}", seg(&segment_key))))
                .await?;
            full.push(strip_version(record["segment"].clone()));
        }
        segments.insert(key, Value::Array(full));
    }
    let records = all_flags(ctx, &[]).await?;
    let flags: Vec<Value> = records
        .iter()
        .map(|record| {
            let mut configs = Map::new();
            for e in record["environments"].as_array().into_iter().flatten() {
                if let Some(env) = e["environment"].as_str() {
                    configs.insert(env.to_string(), strip_version(e["config"].clone()));
                }
            }
            json!({"flag": record["flag"], "environments": configs})
        })
        .collect();
    let document = json!({
        "anchorExport": FORMAT_VERSION,
        "project": ctx.project,
        "environments": environments,
        "segments": segments,
        "flags": flags,
    });
    let text = match args.format {
        Format::Json => crate::output::pretty(&document),
        Format::Yaml => serde_norway::to_string(&document)
            .map_err(|e| CliError::Local(format!("writing YAML: {e}")))?,
    };
    match &args.file {
        Some(path) => {
            std::fs::write(path, text.as_bytes())
                .map_err(|e| CliError::Local(format!("writing {}: {e}", path.display())))?;
            ctx.out.say(&format!(
                "Exported {} flags and {} segments of {} to {}",
                flags.len(),
                segments
                    .values()
                    .filter_map(Value::as_array)
                    .map(Vec::len)
                    .sum::<usize>(),
                ctx.project,
                path.display()
            ));
        }
        None => ctx.out.always(text.trim_end()),
    }
    Ok(())
}

/// What an import does, in order: environments, segments, flag definitions, then the
/// configurations (which may name segments and, as prerequisites, other flags).
#[derive(Debug)]
enum Step {
    CreateEnvironment(Value),
    CreateSegment {
        env: String,
        segment: Value,
    },
    UpdateSegment {
        env: String,
        segment: Value,
        version: Option<u64>,
        before: Value,
    },
    CreateFlag(Value),
    UpdateFlag {
        flag: Value,
        before: Value,
    },
    RestoreFlag(String),
    SetConfig {
        env: String,
        flag: String,
        config: Value,
        version: Option<u64>,
        before: Value,
    },
}

impl Step {
    fn describe(&self) -> (String, Option<(Value, Value)>) {
        match self {
            Step::CreateEnvironment(e) => (format!("+ environment {}", text(&e["key"])), None),
            Step::CreateSegment { env, segment } => (
                format!("+ segment {} in {env}", text(&segment["key"])),
                Some((Value::Null, segment.clone())),
            ),
            Step::UpdateSegment {
                env,
                segment,
                before,
                ..
            } => (
                format!("~ segment {} in {env}", text(&segment["key"])),
                Some((before.clone(), segment.clone())),
            ),
            Step::CreateFlag(flag) => (
                format!("+ flag {}", text(&flag["key"])),
                Some((Value::Null, flag.clone())),
            ),
            Step::UpdateFlag { flag, before } => (
                format!("~ flag {}", text(&flag["key"])),
                Some((before.clone(), flag.clone())),
            ),
            Step::RestoreFlag(key) => (format!("~ flag {key}: restore from the archive"), None),
            Step::SetConfig {
                env,
                flag,
                config,
                before,
                ..
            } => (
                format!("~ flag {flag} in {env}"),
                Some((before.clone(), config.clone())),
            ),
        }
    }
}

fn text(value: &Value) -> String {
    crate::output::text(value)
}

pub async fn import(ctx: &Ctx, args: &ImportArgs) -> Result<(), CliError> {
    let document = read_document(&args.file)?;
    if document["anchorExport"].as_u64() != Some(FORMAT_VERSION) {
        return Err(CliError::Usage(format!(
            "{}: not an export of `anchor export` (format {FORMAT_VERSION})",
            args.file.display()
        )));
    }
    let steps = plan(ctx, &document).await?;
    if args.dry_run || steps.is_empty() {
        let summary = json!({
            "dryRun": args.dry_run,
            "changes": steps.len(),
            "steps": steps.iter().map(|s| {
                let (title, diff) = s.describe();
                json!({"step": title, "diff": diff.map(|(a, b)| changes(&a, &b))})
            }).collect::<Vec<_>>(),
        });
        ctx.out.show(&summary, |out| {
            if steps.is_empty() {
                out.say(&format!(
                    "{} already matches {}: nothing to change",
                    ctx.project,
                    args.file.display()
                ));
            }
            for step in &steps {
                let (title, diff) = step.describe();
                out.say(&title);
                if let Some((before, after)) = diff {
                    for line in changes(&before, &after) {
                        out.say(&format!("    {line}"));
                    }
                }
            }
            if args.dry_run && !steps.is_empty() {
                out.say(&format!(
                    "{} change(s); nothing was written (--dry-run)",
                    steps.len()
                ));
            }
        });
        return Ok(());
    }
    let total = steps.len();
    let mut held = 0;
    let mut done = 0;
    let created = Mutex::new(HashMap::new());
    // Steps of one phase are independent of each other, so a few go at once; the phases
    // (environments, segments, restores, definitions, configurations) stay in order.
    for phase in phases(&steps) {
        let mut results = futures_util::stream::iter(phase)
            .map(|step| apply(ctx, step, args.comment.as_deref(), &created))
            .buffer_unordered(CONCURRENCY);
        while let Some(result) = results.next().await {
            if result? {
                held += 1;
            }
            done += 1;
            if total >= PROGRESS_FROM && (done == total || done % progress_step(total) == 0) {
                ctx.out
                    .progress(&format!("importing: {done}/{total} changes"));
            }
        }
    }
    if total >= PROGRESS_FROM {
        ctx.out.progress_done();
    }
    let summary = json!({"dryRun": false, "changes": total, "heldForApproval": held});
    ctx.out.show(&summary, |out| {
        out.say(&format!("Imported into {}: {total} change(s)", ctx.project));
        if held > 0 {
            out.say(&format!(
                "{held} of them wait as change requests (anchor change-requests list)"
            ));
        }
    });
    Ok(())
}

/// Writes in flight at once during an import: enough to keep the server busy while the CLI
/// waits on the network, few enough not to crowd out other clients.
const CONCURRENCY: usize = 4;

/// The steps grouped by the order they must keep: everything of one group can go at once.
fn phases(steps: &[Step]) -> Vec<Vec<&Step>> {
    let rank = |step: &Step| match step {
        Step::CreateEnvironment(_) => 0,
        Step::CreateSegment { .. } | Step::UpdateSegment { .. } => 1,
        Step::RestoreFlag(_) => 2,
        Step::CreateFlag(_) | Step::UpdateFlag { .. } => 3,
        Step::SetConfig { .. } => 4,
    };
    let mut phases: Vec<Vec<&Step>> = vec![Vec::new(); 5];
    for step in steps {
        phases[rank(step)].push(step);
    }
    phases.retain(|p| !p.is_empty());
    phases
}

/// Imports with fewer changes finish before progress would help.
const PROGRESS_FROM: usize = 100;

fn progress_step(total: usize) -> usize {
    (total / 50).max(1)
}

/// Compares the document with the project and lists the writes that make them match.
async fn plan(ctx: &Ctx, document: &Value) -> Result<Vec<Step>, CliError> {
    let mut steps = Vec::new();
    let existing: Vec<String> = environments(ctx)
        .await?
        .iter()
        .map(|e| text(&e["key"]))
        .collect();
    let mut new_envs = Vec::new();
    for env in document["environments"].as_array().into_iter().flatten() {
        let key = text(&env["key"]);
        if !existing.contains(&key) {
            let mut body = env.clone();
            if body["name"].is_null() {
                body["name"] = json!(key);
            }
            new_envs.push(key);
            steps.push(Step::CreateEnvironment(body));
        }
    }
    for (env, segments) in document["segments"].as_object().into_iter().flatten() {
        let current: HashMap<String, Value> = if new_envs.contains(env) {
            HashMap::new()
        } else {
            let mut current = HashMap::new();
            let list = ctx.api.get(&ctx.env_path_of(env, "/segments")).await?;
            for summary in list.as_array().into_iter().flatten() {
                let key = text(&summary["key"]);
                let record = ctx
                    .api
                    .get(&ctx.env_path_of(env, &format!("/segments/{}", seg(&key))))
                    .await?;
                current.insert(key, record["segment"].clone());
            }
            current
        };
        for segment in segments.as_array().into_iter().flatten() {
            let segment = strip_version(segment.clone());
            let key = text(&segment["key"]);
            match current.get(&key) {
                None => steps.push(Step::CreateSegment {
                    env: env.clone(),
                    segment,
                }),
                Some(now) if normal(now) != normal(&segment) => steps.push(Step::UpdateSegment {
                    env: env.clone(),
                    version: now["version"].as_u64(),
                    before: strip_version(now.clone()),
                    segment,
                }),
                Some(_) => {}
            }
        }
    }
    let records: HashMap<String, Value> = all_flags(ctx, &[("archived", Some("true".into()))])
        .await?
        .into_iter()
        .map(|r| (text(&r["flag"]["key"]), r))
        .collect();
    let flags: Vec<&Value> = document["flags"].as_array().into_iter().flatten().collect();
    let mut config_steps = Vec::new();
    for (i, entry) in flags.iter().enumerate() {
        if (i + 1) % 500 == 0 {
            ctx.out
                .progress(&format!("comparing: {}/{} flags", i + 1, flags.len()));
        }
        let flag = entry["flag"].clone();
        let key = text(&flag["key"]);
        let record = records.get(&key);
        match record {
            None => steps.push(Step::CreateFlag(flag.clone())),
            Some(record) => {
                if record["archived"] == true {
                    steps.push(Step::RestoreFlag(key.clone()));
                }
                if normal(&record["flag"]) != normal(&flag) {
                    steps.push(Step::UpdateFlag {
                        flag: flag.clone(),
                        before: record["flag"].clone(),
                    });
                }
            }
        }
        for (env, config) in entry["environments"].as_object().into_iter().flatten() {
            let config = strip_version(config.clone());
            let now = record.and_then(|r| {
                r["environments"]
                    .as_array()?
                    .iter()
                    .find(|e| e["environment"] == env.as_str())
                    .map(|e| e["config"].clone())
            });
            // A flag created by this import starts disabled, serving its off variant (as the
            // server makes it); a configuration equal to that needs no write.
            let now = now.unwrap_or_else(|| initial_config(&flag));
            if normal(&now) != normal(&config) {
                config_steps.push(Step::SetConfig {
                    env: env.clone(),
                    flag: key.clone(),
                    version: now["version"].as_u64(),
                    before: strip_version(now),
                    config,
                });
            }
        }
    }
    if flags.len() >= 500 {
        ctx.out.progress_done();
    }
    steps.extend(config_steps);
    Ok(steps)
}

/// What the server gives a new flag in every environment: disabled, serving its off variant
/// (`false` for booleans, else the last variant).
fn initial_config(flag: &Value) -> Value {
    let variants = flag["variants"].as_array().cloned().unwrap_or_default();
    let off = variants
        .iter()
        .find(|v| flag["kind"] == "boolean" && v["value"] == json!(false))
        .or(variants.last())
        .map(|v| text(&v["name"]))
        .unwrap_or_default();
    json!({"enabled": false, "offVariant": off, "defaultServe": {"variant": off}})
}

/// Returns whether the server held the write as a change request. `created` keeps the
/// configuration versions of the flags this import created, from their creation's answer, so
/// their configurations are written without reading them first.
async fn apply(
    ctx: &Ctx,
    step: &Step,
    comment: Option<&str>,
    created: &Mutex<HashMap<(String, String), u64>>,
) -> Result<bool, CliError> {
    let answer = match step {
        Step::CreateEnvironment(env) => {
            ctx.api
                .post(&ctx.project_path("/environments"), env)
                .await?
        }
        Step::CreateSegment { env, segment } => {
            ctx.api
                .post(&ctx.env_path_of(env, "/segments"), segment)
                .await?
        }
        Step::UpdateSegment {
            env,
            segment,
            version,
            ..
        } => {
            let key = text(&segment["key"]);
            ctx.api
                .put(
                    &ctx.env_path_of(env, &format!("/segments/{}", seg(&key))),
                    segment,
                    *version,
                )
                .await?
        }
        Step::CreateFlag(flag) => {
            let answer = ctx.api.post(&ctx.project_path("/flags"), flag).await?;
            for e in answer.body["environments"].as_array().into_iter().flatten() {
                if let (Some(env), Some(version), Ok(mut created)) = (
                    e["environment"].as_str(),
                    e["config"]["version"].as_u64(),
                    created.lock(),
                ) {
                    created.insert((text(&flag["key"]), env.to_string()), version);
                }
            }
            answer
        }
        Step::UpdateFlag { flag, .. } => {
            let mut body = flag.clone();
            if let Some(comment) = comment {
                body["comment"] = json!(comment);
            }
            let key = text(&flag["key"]);
            ctx.api
                .put(
                    &ctx.project_path(&format!("/flags/{}", seg(&key))),
                    &body,
                    None,
                )
                .await?
        }
        Step::RestoreFlag(key) => {
            ctx.api
                .post(
                    &ctx.project_path(&format!("/flags/{}/restore", seg(key))),
                    &json!({}),
                )
                .await?
        }
        Step::SetConfig {
            env,
            flag,
            config,
            version,
            ..
        } => {
            let mut body = config.clone();
            if let Some(comment) = comment {
                body["comment"] = json!(comment);
            }
            // A flag created by this import has its version only now.
            let known = created
                .lock()
                .ok()
                .and_then(|c| c.get(&(flag.clone(), env.clone())).copied());
            let version = match version.or(known) {
                Some(v) => Some(v),
                None => ctx
                    .api
                    .get(&ctx.env_path_of(env, &format!("/flags/{}", seg(flag))))
                    .await?["version"]
                    .as_u64(),
            };
            ctx.api
                .put(
                    &ctx.env_path_of(env, &format!("/flags/{}", seg(flag))),
                    &body,
                    version,
                )
                .await?
        }
    };
    Ok(answer.status.as_u16() == 202)
}

fn strip_version(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.remove("version");
    }
    value
}

/// For comparison only: without `version`, nulls, empty lists and maps, and the server's
/// defaults, which the server and a hand-written file may or may not spell out.
fn normal(value: &Value) -> Value {
    fn clean(value: &Value) -> Option<Value> {
        match value {
            Value::Null => None,
            Value::Array(items) if items.is_empty() => None,
            Value::Object(map) if map.is_empty() => None,
            Value::Array(items) => Some(Value::Array(
                items
                    .iter()
                    .map(|v| clean(v).unwrap_or(Value::Null))
                    .collect(),
            )),
            Value::Object(map) => {
                let map: Map<String, Value> = map
                    .iter()
                    .filter(|(k, v)| !is_server_default(k, v))
                    .filter_map(|(k, v)| clean(v).map(|v| (k.clone(), v)))
                    .collect();
                (!map.is_empty()).then_some(Value::Object(map))
            }
            other => Some(other.clone()),
        }
    }
    clean(&strip_version(value.clone())).unwrap_or(Value::Null)
}

/// Values the server fills in when a document leaves them out.
fn is_server_default(key: &str, value: &Value) -> bool {
    matches!(
        (key, value.as_str()),
        ("description", Some("")) | ("lifecycle", Some("temporary"))
    )
}

/// The differences between two JSON values as lines: `+ /path value`, `- /path value`,
/// `~ /path old → new`, by JSON pointer.
fn changes(before: &Value, after: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    walk(&normal(before), &normal(after), String::new(), &mut lines);
    lines
}

fn walk(before: &Value, after: &Value, path: String, lines: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let p = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => walk(x, y, p, lines),
                    (Some(x), None) => lines.push(format!("- {p} {x}")),
                    (None, Some(y)) => lines.push(format!("+ {p} {y}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let p = format!("{path}/{i}");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(x, y, p, lines),
                    (Some(x), None) => lines.push(format!("- {p} {x}")),
                    (None, Some(y)) => lines.push(format!("+ {p} {y}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Null, b) if !b.is_null() => lines.push(format!(
            "+ {} {b}",
            if path.is_empty() { "/" } else { &path }
        )),
        (a, b) if a != b => lines.push(format!(
            "~ {} {a} → {b}",
            if path.is_empty() { "/" } else { &path }
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_each_pointer_and_ignore_what_the_server_fills_in() {
        let before = json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "off"},
                            "rules": [], "targets": {}, "version": 4});
        let after = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"},
                           "targets": {"on": ["a"]}});
        assert_eq!(
            changes(&before, &after),
            vec![
                "~ /defaultServe/variant \"off\" → \"on\"",
                "~ /enabled false → true",
                "+ /targets {\"on\":[\"a\"]}",
            ]
        );
        assert!(changes(&after, &after).is_empty());
        let written = json!({"key": "f", "kind": "boolean", "variants": []});
        let stored = json!({"key": "f", "kind": "boolean", "variants": [], "tags": [],
                            "description": "", "lifecycle": "temporary"});
        assert!(changes(&stored, &written).is_empty());
    }
}
