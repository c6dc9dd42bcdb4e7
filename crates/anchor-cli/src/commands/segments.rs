//! `anchor segments …` in one environment.

use serde_json::{Value, json};

use super::{Ctx, read_document, report_write};
use crate::args::{SegmentDefinitionArgs, SegmentsCommand};
use crate::error::CliError;
use crate::http::seg;
use crate::output::{cell, text, time};

pub async fn run(ctx: &Ctx, command: SegmentsCommand) -> Result<(), CliError> {
    match command {
        SegmentsCommand::List => {
            let list = ctx.api.get(&ctx.env_path("/segments")).await?;
            ctx.out.show(&list, |out| {
                let rows: Vec<_> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        vec![
                            cell(text(&s["key"])),
                            cell(text(&s["description"])),
                            cell(text(&s["includedCount"])),
                            cell(text(&s["excludedCount"])),
                            cell(text(&s["rules"])),
                            cell(text(&s["version"])),
                            cell(time(&s["updatedAt"])),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "key",
                        "description",
                        "included",
                        "excluded",
                        "rules",
                        "version",
                        "updated",
                    ],
                    &rows,
                );
            });
            Ok(())
        }
        SegmentsCommand::Get(args) => {
            let record = ctx.api.get(&segment_path(ctx, &args.segment)).await?;
            ctx.out.show(&record, |out| {
                let segment = &record["segment"];
                let list = |key: &str| -> String {
                    let keys: Vec<String> = segment[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(text)
                        .collect();
                    keys.join(", ")
                };
                let rules: Vec<String> = segment["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(Value::to_string)
                    .collect();
                out.fields(&[
                    ("key", text(&segment["key"])),
                    ("environment", text(&record["environment"])),
                    ("description", text(&segment["description"])),
                    ("included", list("included")),
                    ("excluded", list("excluded")),
                    ("rules", rules.join("\n")),
                    ("version", text(&segment["version"])),
                    ("updated", time(&record["updatedAt"])),
                ]);
            });
            Ok(())
        }
        SegmentsCommand::Create(args) => {
            let base = match &args.file {
                Some(path) => read_document(path)?,
                None => json!({}),
            };
            let segment = apply(base, &args);
            let answer = ctx.api.post(&ctx.env_path("/segments"), &segment).await?;
            report_write(
                ctx,
                &answer,
                &format!("Created segment {} in {}", args.segment, ctx.env),
            );
            Ok(())
        }
        SegmentsCommand::Update(args) => {
            let current = ctx.api.get(&segment_path(ctx, &args.segment)).await?;
            let version = current["segment"]["version"].as_u64();
            let base = match &args.file {
                Some(path) => read_document(path)?,
                None => current["segment"].clone(),
            };
            let segment = apply(base, &args);
            let answer = ctx
                .api
                .put(&segment_path(ctx, &args.segment), &segment, version)
                .await?;
            report_write(
                ctx,
                &answer,
                &format!("Updated segment {} in {}", args.segment, ctx.env),
            );
            Ok(())
        }
        SegmentsCommand::Delete(args) => {
            let answer = ctx.api.delete(&segment_path(ctx, &args.segment)).await?;
            report_write(
                ctx,
                &answer,
                &format!("Deleted segment {} in {}", args.segment, ctx.env),
            );
            Ok(())
        }
    }
}

fn segment_path(ctx: &Ctx, segment: &str) -> String {
    ctx.env_path(&format!("/segments/{}", seg(segment)))
}

/// The options on top of a segment: included and excluded keys are added (a key moves from
/// one list to the other), removed keys leave both.
fn apply(mut segment: Value, args: &SegmentDefinitionArgs) -> Value {
    if !segment.is_object() {
        segment = json!({});
    }
    segment["key"] = json!(args.segment);
    if let Some(obj) = segment.as_object_mut() {
        obj.remove("version");
    }
    if let Some(description) = &args.description {
        segment["description"] = json!(description);
    }
    let mut included = strings(&segment["included"]);
    let mut excluded = strings(&segment["excluded"]);
    for key in &args.include {
        excluded.retain(|k| k != key);
        if !included.contains(key) {
            included.push(key.clone());
        }
    }
    for key in &args.exclude {
        included.retain(|k| k != key);
        if !excluded.contains(key) {
            excluded.push(key.clone());
        }
    }
    included.retain(|k| !args.remove.contains(k));
    excluded.retain(|k| !args.remove.contains(k));
    segment["included"] = json!(included);
    segment["excluded"] = json!(excluded);
    segment
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().map(text).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_move_between_the_lists_and_removed_ones_leave_both() {
        let args = SegmentDefinitionArgs {
            segment: "beta".into(),
            description: None,
            include: vec!["b".into()],
            exclude: vec!["a".into()],
            remove: vec!["c".into()],
            file: None,
        };
        let segment = apply(
            json!({"key": "beta", "included": ["a", "c"], "excluded": ["b"], "version": 3}),
            &args,
        );
        assert_eq!(
            segment,
            json!({"key": "beta", "included": ["b"], "excluded": ["a"]})
        );
    }
}
