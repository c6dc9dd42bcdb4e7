//! `anchor targeting …`: edits of a flag's configuration in one environment, each a read,
//! a change and an If-Match write.

use serde_json::{Map, Value, json};

use super::flags::edit_config;
use super::{Ctx, format_percent, serve_text};
use crate::args::TargetingCommand;
use crate::error::CliError;
use crate::http::seg;
use crate::output::text;

/// Rollout weights are out of 100,000 (the engine's unit): three decimals of a percent.
pub(crate) const TOTAL_WEIGHT: f64 = 100_000.0;

pub async fn run(ctx: &Ctx, command: TargetingCommand) -> Result<(), CliError> {
    match command {
        TargetingCommand::Show(args) => show(ctx, &args.flag).await,
        TargetingCommand::Serve(args) => {
            let done = format!(
                "{} serves {} in {} by default",
                args.flag, args.variant, ctx.env
            );
            let variant = args.variant.clone();
            edit_config(ctx, &args.flag, args.comment.comment, &done, |config| {
                config["defaultServe"] = json!({"variant": variant});
                Ok(())
            })
            .await
        }
        TargetingCommand::Rollout(args) => {
            if !(0.0..=100.0).contains(&args.percent) {
                return Err(CliError::Usage(format!(
                    "the percentage must be between 0 and 100, not {}",
                    args.percent
                )));
            }
            let flag = ctx
                .api
                .get(&ctx.project_path(&format!("/flags/{}", seg(&args.flag))))
                .await?;
            let names: Vec<String> = flag["flag"]["variants"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| text(&v["name"]))
                .collect();
            let weight = (args.percent / 100.0 * TOTAL_WEIGHT).round() as u32;
            let done = format!(
                "{} serves {} to {}% in {} by default",
                args.flag,
                args.variant,
                format_percent(args.percent),
                ctx.env
            );
            edit_config(ctx, &args.flag, args.comment.comment, &done, |config| {
                let rest = match &args.rest {
                    Some(rest) => rest.clone(),
                    None => default_rest(&names, &args.variant, &config["offVariant"])?,
                };
                if rest == args.variant {
                    return Err(CliError::Usage(
                        "--rest must name another variant than the one rolled out".into(),
                    ));
                }
                let mut rollout = json!({"variants": [
                    {"variant": args.variant, "weight": weight},
                    {"variant": rest, "weight": TOTAL_WEIGHT as u32 - weight}
                ]});
                // Keep the existing bucketing so users already in keep their variant.
                let old = &config["defaultServe"]["rollout"];
                for key in ["bucketBy", "salt"] {
                    if !old[key].is_null() {
                        rollout[key] = old[key].clone();
                    }
                }
                if let Some(bucket_by) = &args.bucket_by {
                    rollout["bucketBy"] = json!(bucket_by);
                }
                config["defaultServe"] = json!({ "rollout": rollout });
                Ok(())
            })
            .await
        }
        TargetingCommand::AddTarget(args) => {
            let done = format!(
                "{} key(s) get {} of {} in {}",
                args.keys.len(),
                args.variant,
                args.flag,
                ctx.env
            );
            edit_config(ctx, &args.flag, args.comment.comment, &done, |config| {
                retarget(config, &args.keys, Some(&args.variant));
                Ok(())
            })
            .await
        }
        TargetingCommand::RemoveTarget(args) => {
            let done = format!(
                "{} key(s) taken out of {}'s targets in {}",
                args.keys.len(),
                args.flag,
                ctx.env
            );
            edit_config(ctx, &args.flag, args.comment.comment, &done, |config| {
                retarget(config, &args.keys, None);
                Ok(())
            })
            .await
        }
    }
}

/// Takes `keys` out of every variant's individual targets, then (with `variant`) gives them
/// that one: a key belongs to one variant's list at most. Empty lists are dropped.
fn retarget(config: &mut Value, keys: &[String], variant: Option<&str>) {
    let mut targets = match config["targets"].take() {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for list in targets.values_mut() {
        if let Some(list) = list.as_array_mut() {
            list.retain(|k| !keys.iter().any(|a| k == a.as_str()));
        }
    }
    if let Some(variant) = variant {
        let list = targets.entry(variant.to_string()).or_insert(json!([]));
        if let Some(list) = list.as_array_mut() {
            list.extend(keys.iter().map(|k| json!(k)));
        }
    }
    targets.retain(|_, v| v.as_array().is_some_and(|a| !a.is_empty()));
    config["targets"] = Value::Object(targets);
}

pub(crate) fn default_rest(
    names: &[String],
    rolled: &str,
    off: &Value,
) -> Result<String, CliError> {
    if names.len() == 2
        && let Some(other) = names.iter().find(|n| *n != rolled)
    {
        return Ok(other.clone());
    }
    match off.as_str() {
        Some(off) if off != rolled => Ok(off.to_string()),
        _ => Err(CliError::Usage(
            "name the variant everyone else gets with --rest".into(),
        )),
    }
}

async fn show(ctx: &Ctx, flag: &str) -> Result<(), CliError> {
    let config = ctx.api.get(&ctx.config_path(flag, "")).await?;
    ctx.out.show(&config, |out| {
        let mut fields = vec![
            ("flag", flag.to_string()),
            ("environment", ctx.env.clone()),
            (
                "state",
                out.paint(
                    if config["enabled"] == true {
                        "on"
                    } else {
                        "off"
                    },
                    if config["enabled"] == true {
                        crate::output::Tone::Good
                    } else {
                        crate::output::Tone::Bad
                    },
                ),
            ),
            ("off variant", text(&config["offVariant"])),
            ("default serve", serve_text(&config["defaultServe"])),
            ("version", text(&config["version"])),
        ];
        for prerequisite in config["prerequisites"].as_array().into_iter().flatten() {
            fields.push(("prerequisite", prerequisite.to_string()));
        }
        out.fields(&fields);
        if let Some(targets) = config["targets"].as_object().filter(|t| !t.is_empty()) {
            out.say("");
            let rows: Vec<_> = targets
                .iter()
                .map(|(variant, keys)| {
                    let keys: Vec<String> =
                        keys.as_array().into_iter().flatten().map(text).collect();
                    let shown = if keys.len() > 10 {
                        format!("{} … ({} keys)", keys[..10].join(", "), keys.len())
                    } else {
                        keys.join(", ")
                    };
                    vec![
                        crate::output::cell(variant.clone()),
                        crate::output::cell(shown),
                    ]
                })
                .collect();
            out.table(&["variant", "targets"], &rows);
        }
        if let Some(rules) = config["rules"].as_array().filter(|r| !r.is_empty()) {
            out.say("");
            let rows: Vec<_> = rules
                .iter()
                .map(|rule| {
                    let conditions: Vec<String> = rule["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| c.to_string())
                        .collect();
                    vec![
                        crate::output::cell(text(&rule["id"])),
                        crate::output::cell(serve_text(&rule["serve"])),
                        crate::output::cell(conditions.join(" and ")),
                    ]
                })
                .collect();
            out.table(&["rule", "serves", "conditions"], &rows);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_a_rollout_is_the_other_of_two_variants_else_the_off_variant() {
        let two = ["on".to_string(), "off".to_string()];
        assert_eq!(default_rest(&two, "on", &json!("off")).unwrap(), "off");
        let three = ["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(default_rest(&three, "a", &json!("c")).unwrap(), "c");
        assert_eq!(
            default_rest(&three, "c", &json!("c"))
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn a_targeted_key_moves_between_variants_and_empty_lists_go() {
        let mut config = json!({"targets": {"on": ["a", "b"], "off": ["c"]}});
        retarget(&mut config, &["c".into(), "d".into()], Some("on"));
        assert_eq!(config["targets"], json!({"on": ["a", "b", "c", "d"]}));
        retarget(
            &mut config,
            &["a".into(), "b".into(), "c".into(), "d".into()],
            None,
        );
        assert_eq!(config["targets"], json!({}));
    }
}
