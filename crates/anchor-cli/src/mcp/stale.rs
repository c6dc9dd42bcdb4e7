//! Stale flags: the server's flag records joined with where the code references each key.
//!
//! Finding references is behind [`ReferenceFinder`] so the `anchor scan` scanner (SDK call
//! patterns, aliases, .gitignore) can replace [`LiteralSearch`], which only looks for the known
//! keys as quoted string literals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// One place in the code that names a flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reference {
    pub file: String,
    pub line: usize,
}

/// Where the code under `paths` references each of `keys` (keys never found may be absent).
pub trait ReferenceFinder: Send + Sync {
    fn find(
        &self,
        paths: &[PathBuf],
        keys: &[String],
    ) -> Result<BTreeMap<String, Vec<Reference>>, String>;
}

/// The keys as string literals (`"key"`, `'key'`, `` `key` ``) in the text files under the
/// paths, skipping hidden directories and build output.
#[derive(Debug, Default)]
pub struct LiteralSearch;

/// Directories that hold dependencies or build output, never the project's own references.
const SKIPPED: &[&str] = &[
    "target",
    "node_modules",
    "vendor",
    "dist",
    "build",
    "__pycache__",
];
/// Larger files are generated or data, not code.
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;

impl ReferenceFinder for LiteralSearch {
    fn find(
        &self,
        paths: &[PathBuf],
        keys: &[String],
    ) -> Result<BTreeMap<String, Vec<Reference>>, String> {
        let mut found: BTreeMap<String, Vec<Reference>> = BTreeMap::new();
        let mut pending: Vec<PathBuf> = paths.to_vec();
        while let Some(path) = pending.pop() {
            let meta =
                std::fs::metadata(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            if meta.is_dir() {
                let entries = std::fs::read_dir(&path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with('.') || SKIPPED.contains(&name.as_ref()) {
                        continue;
                    }
                    pending.push(entry.path());
                }
            } else if meta.len() <= MAX_FILE_BYTES {
                search_file(&path, keys, &mut found);
            }
        }
        for references in found.values_mut() {
            references.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        }
        Ok(found)
    }
}

fn search_file(path: &Path, keys: &[String], found: &mut BTreeMap<String, Vec<Reference>>) {
    // Binary and non-UTF-8 files hold no source references.
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for (index, line) in text.lines().enumerate() {
        for key in keys {
            if ['"', '\'', '`']
                .iter()
                .any(|q| line.contains(&format!("{q}{key}{q}")))
            {
                found.entry(key.clone()).or_default().push(Reference {
                    file: path.display().to_string(),
                    line: index + 1,
                });
            }
        }
    }
}

/// A flag judged stale, and why.
#[derive(Debug, Serialize)]
pub struct Stale {
    pub flag: String,
    pub reasons: Vec<String>,
    pub references: Vec<Reference>,
}

/// The stale flags among `records` (the server's flag records, archived included): defined but
/// referenced nowhere, archived but still referenced, past their cleanup date, or serving one
/// variant to everyone in every environment, unchanged for `days` days.
pub fn judge(
    records: &[Value],
    references: &BTreeMap<String, Vec<Reference>>,
    days: u32,
    now_ms: i64,
    today: &str,
) -> Vec<Stale> {
    let mut stale = Vec::new();
    for record in records {
        let Some(key) = record["flag"]["key"].as_str() else {
            continue;
        };
        let refs = references.get(key).cloned().unwrap_or_default();
        let archived = record["archived"] == true;
        let mut reasons = Vec::new();
        if archived && !refs.is_empty() {
            reasons.push("archived on the server but still referenced in code".to_string());
        }
        if !archived && refs.is_empty() {
            reasons.push("defined on the server but referenced nowhere in the code".to_string());
        }
        if let Some(cleanup) = record["flag"]["cleanupDate"].as_str()
            && !archived
            && cleanup < today
        {
            reasons.push(format!("past its cleanup date {cleanup}"));
        }
        if !archived && let Some(variant) = one_variant_for_everyone(record, days, now_ms) {
            reasons.push(format!(
                "serves `{variant}` to everyone in every environment, unchanged for {days} days or more"
            ));
        }
        if !reasons.is_empty() {
            stale.push(Stale {
                flag: key.to_string(),
                reasons,
                references: refs,
            });
        }
    }
    stale
}

/// The variant every context gets in every environment, when that is one variant and no
/// environment's configuration changed for `days` days.
fn one_variant_for_everyone(record: &Value, days: u32, now_ms: i64) -> Option<String> {
    let environments = record["environments"].as_array()?;
    let cutoff = now_ms - i64::from(days) * 86_400_000;
    let mut served: Option<String> = None;
    for environment in environments {
        if environment["updatedAt"].as_i64()? > cutoff {
            return None;
        }
        let config = &environment["config"];
        let variant = if config["enabled"] == true {
            let no_rules = config["rules"].as_array().is_none_or(Vec::is_empty);
            let no_targets = config["targets"].as_object().is_none_or(|t| t.is_empty());
            if !(no_rules && no_targets) {
                return None;
            }
            single_variant(&config["defaultServe"])?
        } else {
            config["offVariant"].as_str()?.to_string()
        };
        match &served {
            Some(previous) if *previous != variant => return None,
            _ => served = Some(variant),
        }
    }
    served
}

/// `{"variant": v}`, or a rollout giving all its weight to one variant.
fn single_variant(serve: &Value) -> Option<String> {
    if let Some(variant) = serve["variant"].as_str() {
        return Some(variant.to_string());
    }
    let weighted: Vec<&Value> = serve["rollout"]["variants"]
        .as_array()?
        .iter()
        .filter(|v| v["weight"].as_u64().unwrap_or(0) > 0)
        .collect();
    match weighted.as_slice() {
        [only] => only["variant"].as_str().map(String::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DAY: i64 = 86_400_000;

    fn record(key: &str, archived: bool, environments: Value) -> Value {
        json!({"flag": {"key": key, "kind": "boolean", "cleanupDate": null},
               "archived": archived, "environments": environments})
    }

    #[test]
    fn literal_search_finds_quoted_keys_and_skips_build_output() {
        let dir = std::env::temp_dir().join(format!("anchor-stale-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::create_dir_all(dir.join("node_modules")).unwrap();
        std::fs::write(
            dir.join("src/app.ts"),
            "const a = 1;\nclient.getBooleanValue('new-checkout', false);\n// new-checkout-v2\n",
        )
        .unwrap();
        std::fs::write(dir.join("node_modules/x.js"), "'new-checkout'").unwrap();
        let keys = vec!["new-checkout".to_string(), "gone".to_string()];
        let found = LiteralSearch
            .find(std::slice::from_ref(&dir), &keys)
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let refs = &found["new-checkout"];
        assert_eq!(refs.len(), 1, "{refs:?}");
        assert_eq!(refs[0].line, 2);
        assert!(refs[0].file.ends_with("app.ts"));
        assert!(!found.contains_key("gone"));
    }

    #[test]
    fn the_verdicts_name_each_reason() {
        let now = 100 * DAY;
        let old = now - 40 * DAY;
        let settled = json!([
            {"environment": "development", "updatedAt": old,
             "config": {"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}},
            {"environment": "production", "updatedAt": old,
             "config": {"enabled": true, "offVariant": "off", "rules": [], "targets": {},
                        "defaultServe": {"rollout": {"variants": [
                            {"variant": "on", "weight": 100000}, {"variant": "off", "weight": 0}]}}}}
        ]);
        let mut recent = settled.clone();
        recent[1]["updatedAt"] = json!(now - DAY);
        let mut split = settled.clone();
        split[1]["config"]["enabled"] = json!(false);
        let mut past = record("past", false, json!([]));
        past["flag"]["cleanupDate"] = json!("2020-01-01");
        let records = vec![
            record("settled", false, settled),
            record("recent", false, recent),
            record("split", false, split),
            record("unused", false, json!([])),
            record("archived", true, json!([])),
            past,
        ];
        let here = vec![Reference {
            file: "a.rs".into(),
            line: 1,
        }];
        let references: BTreeMap<String, Vec<Reference>> =
            ["settled", "recent", "split", "archived", "past"]
                .iter()
                .map(|k| (k.to_string(), here.clone()))
                .collect();
        let stale = judge(&records, &references, 30, now, "2026-11-22");
        let verdicts: BTreeMap<&str, &Vec<String>> = stale
            .iter()
            .map(|s| (s.flag.as_str(), &s.reasons))
            .collect();
        assert_eq!(verdicts.len(), 4, "{verdicts:?}");
        assert!(verdicts["settled"][0].starts_with("serves `on` to everyone"));
        assert!(verdicts["unused"][0].contains("referenced nowhere"));
        assert!(verdicts["archived"][0].contains("still referenced"));
        assert_eq!(verdicts["past"][0], "past its cleanup date 2020-01-01");
        assert_eq!(
            judge(&records[..1], &references, 50, now, "2026-11-22").len(),
            0
        );
    }
}
