//! Joins the references found in code with the server's flags: per flag, where the code names
//! it and whether (and why) it is stale. Pure: the server's answer and `now` are arguments.

use std::collections::BTreeMap;

use anchor_engine::Lifecycle;
use anchor_server::lifecycle::{EnvironmentFacts, FlagFacts, StaleReason, stale_reasons};
use serde::Serialize;
use serde_json::Value;

use super::Reference;

/// One reason a flag is stale; each is a SARIF rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Staleness {
    /// In the code, but the server has no such flag.
    Unknown,
    /// In the code, but archived on the server.
    Archived,
    /// A temporary flag whose cleanup date has passed.
    PastCleanupDate,
    /// A temporary flag serving one variant to everyone, in every environment, for N days.
    RolledOut,
    /// No SDK reported evaluating it, in any environment, for N days.
    NotEvaluated,
    /// On the server (not archived), but referenced nowhere in the code.
    Unreferenced,
}

impl Staleness {
    pub const ALL: [Self; 6] = [
        Self::Unknown,
        Self::Archived,
        Self::PastCleanupDate,
        Self::RolledOut,
        Self::NotEvaluated,
        Self::Unreferenced,
    ];

    /// The SARIF rule id.
    pub fn rule_id(self) -> &'static str {
        match self {
            Self::Unknown => "anchor/unknown-flag",
            Self::Archived => "anchor/archived-flag",
            Self::PastCleanupDate => "anchor/past-cleanup-date",
            Self::RolledOut => "anchor/rolled-out",
            Self::NotEvaluated => "anchor/not-evaluated",
            Self::Unreferenced => "anchor/unreferenced-flag",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Archived => "archived",
            Self::PastCleanupDate => "past-cleanup-date",
            Self::RolledOut => "rolled-out",
            Self::NotEvaluated => "not-evaluated",
            Self::Unreferenced => "unreferenced",
        }
    }

    pub fn summary(self) -> &'static str {
        match self {
            Self::Unknown => "The code refers to a flag the server does not know",
            Self::Archived => "The code refers to a flag archived on the server",
            Self::PastCleanupDate => "The flag's cleanup date has passed",
            Self::RolledOut => "The flag has served one variant to everyone for a long time",
            Self::NotEvaluated => "No SDK has evaluated the flag for a long time",
            Self::Unreferenced => "The flag is defined on the server but referenced nowhere",
        }
    }
}

/// What the server says of one flag, read from the flag API (`GET …/flags?archived=true`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerFlag {
    pub key: String,
    pub archived: bool,
    pub permanent: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    /// `YYYY-MM-DD`.
    pub cleanup_date: Option<String>,
    pub environments: Vec<EnvironmentLifecycle>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvironmentLifecycle {
    pub environment: String,
    pub last_evaluated_at: Option<i64>,
    pub serving_one_variant_since: Option<i64>,
}

impl ServerFlag {
    /// A flag record of the API (`FlagRecord`); `None` when it has no key.
    pub fn from_json(record: &Value) -> Option<Self> {
        let flag = &record["flag"];
        let key = flag["key"].as_str()?.to_string();
        let environments = record["environments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|env| EnvironmentLifecycle {
                environment: env["environment"].as_str().unwrap_or("").to_string(),
                last_evaluated_at: env["lifecycle"]["lastEvaluatedAt"].as_i64(),
                serving_one_variant_since: env["lifecycle"]["servingOneVariantSince"].as_i64(),
            })
            .collect();
        Some(Self {
            key,
            archived: record["archived"].as_bool().unwrap_or(false),
            permanent: flag["lifecycle"] == "permanent",
            created_at: record["createdAt"].as_i64().unwrap_or(0),
            cleanup_date: flag["cleanupDate"].as_str().map(str::to_string),
            environments,
        })
    }
}

/// One flag: where the code names it and why it is stale (empty when it is not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagReport {
    pub key: String,
    /// Whether the server knows the flag (always false in an offline scan).
    pub on_server: bool,
    pub references: Vec<Reference>,
    pub stale: Vec<Staleness>,
    /// The stale reasons in words, with their numbers ("one variant everywhere for 41 days").
    pub reasons: Vec<String>,
}

/// Every flag named in the code or defined on the server, by key. With `server` as `None`
/// (offline) only the references are reported, and nothing is judged stale.
pub fn classify(
    references: &[Reference],
    server: Option<&[ServerFlag]>,
    now_ms: i64,
    days: u32,
) -> Vec<FlagReport> {
    let mut by_key: BTreeMap<&str, Vec<Reference>> = BTreeMap::new();
    for reference in references {
        by_key
            .entry(&reference.key)
            .or_default()
            .push(reference.clone());
    }
    let Some(server) = server else {
        return by_key
            .into_iter()
            .map(|(key, references)| FlagReport {
                key: key.to_string(),
                on_server: false,
                references,
                stale: Vec::new(),
                reasons: Vec::new(),
            })
            .collect();
    };
    let known: BTreeMap<&str, &ServerFlag> = server.iter().map(|f| (f.key.as_str(), f)).collect();
    let mut keys: Vec<&str> = by_key.keys().chain(known.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let references = by_key.get(key).cloned().unwrap_or_default();
            let mut report = FlagReport {
                key: key.to_string(),
                on_server: known.contains_key(key),
                references,
                stale: Vec::new(),
                reasons: Vec::new(),
            };
            let mut stale = |kind: Staleness, reason: String| {
                report.stale.push(kind);
                report.reasons.push(reason);
            };
            let Some(flag) = known.get(key) else {
                stale(Staleness::Unknown, "not defined on the server".to_string());
                return Some(report);
            };
            if flag.archived {
                if report.references.is_empty() {
                    // Archived and gone from the code: done, nothing to report.
                    return None;
                }
                stale(Staleness::Archived, "archived on the server".to_string());
                return Some(report);
            }
            // The server's own judgement, with this scan's number of days: with the default
            // it is the verdict the flag list, the dashboard and the MCP server show.
            let environments: Vec<EnvironmentFacts> = flag
                .environments
                .iter()
                .map(|e| EnvironmentFacts {
                    last_evaluated_at: e.last_evaluated_at,
                    serving_one_variant_since: e.serving_one_variant_since,
                })
                .collect();
            let facts = FlagFacts {
                archived: false,
                lifecycle: if flag.permanent {
                    Lifecycle::Permanent
                } else {
                    Lifecycle::Temporary
                },
                created_at: flag.created_at,
                cleanup_date: flag.cleanup_date.as_deref(),
                environments: &environments,
            };
            for reason in stale_reasons(&facts, now_ms, i64::from(days)) {
                let kind = match reason {
                    StaleReason::PastCleanupDate(_) => Staleness::PastCleanupDate,
                    StaleReason::RolledOut { .. } => Staleness::RolledOut,
                    StaleReason::NotEvaluated { .. } => Staleness::NotEvaluated,
                };
                stale(kind, reason.to_string());
            }
            if report.references.is_empty() {
                stale(
                    Staleness::Unreferenced,
                    "referenced nowhere in the code".to_string(),
                );
            }
            Some(report)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY_MS: i64 = 24 * 60 * 60 * 1000;

    fn reference(key: &str) -> Reference {
        Reference {
            file: "src/main.rs".into(),
            line: 3,
            column: 9,
            key: key.into(),
            language: "rust".into(),
        }
    }

    fn flag(key: &str, f: impl FnOnce(&mut ServerFlag)) -> ServerFlag {
        let mut flag = ServerFlag {
            key: key.into(),
            created_at: NOW - 100 * DAY_MS,
            environments: vec![
                EnvironmentLifecycle {
                    environment: "development".into(),
                    last_evaluated_at: Some(NOW - DAY_MS),
                    serving_one_variant_since: None,
                },
                EnvironmentLifecycle {
                    environment: "production".into(),
                    last_evaluated_at: Some(NOW - 2 * DAY_MS),
                    serving_one_variant_since: None,
                },
            ],
            ..ServerFlag::default()
        };
        f(&mut flag);
        flag
    }

    /// (flag on the server, referenced in code, expected staleness)
    fn check(cases: Vec<(Option<ServerFlag>, &str, bool, Vec<Staleness>)>) {
        for (server, key, referenced, expected) in cases {
            let references: Vec<Reference> = if referenced {
                vec![reference(key)]
            } else {
                Vec::new()
            };
            let server: Vec<ServerFlag> = server.into_iter().collect();
            let reports = classify(&references, Some(&server), NOW, 30);
            let stale: Vec<Staleness> = reports
                .iter()
                .find(|r| r.key == key)
                .map(|r| r.stale.clone())
                .unwrap_or_default();
            assert_eq!(stale, expected, "{key}");
        }
    }

    #[test]
    fn each_kind_of_staleness_is_judged_from_the_server_facts_and_the_threshold() {
        let one_variant = |since: i64| {
            move |f: &mut ServerFlag| {
                for env in &mut f.environments {
                    env.serving_one_variant_since = Some(since);
                }
            }
        };
        check(vec![
            (Some(flag("active", |_| {})), "active", true, vec![]),
            (None, "unknown", true, vec![Staleness::Unknown]),
            (
                Some(flag("archived", |f| f.archived = true)),
                "archived",
                true,
                vec![Staleness::Archived],
            ),
            (
                Some(flag("gone", |f| f.archived = true)),
                "gone",
                false,
                vec![],
            ),
            (
                Some(flag("unused", |_| {})),
                "unused",
                false,
                vec![Staleness::Unreferenced],
            ),
            (
                Some(flag("cleanup", |f| {
                    f.cleanup_date = Some("2020-01-01".into())
                })),
                "cleanup",
                true,
                vec![Staleness::PastCleanupDate],
            ),
            (
                Some(flag("future", |f| {
                    f.cleanup_date = Some("2999-01-01".into())
                })),
                "future",
                true,
                vec![],
            ),
            (
                Some(flag("done", one_variant(NOW - 31 * DAY_MS))),
                "done",
                true,
                vec![Staleness::RolledOut],
            ),
            (
                Some(flag("recent", one_variant(NOW - 29 * DAY_MS))),
                "recent",
                true,
                vec![],
            ),
            (
                Some(flag("kill-switch", |f| {
                    f.permanent = true;
                    one_variant(NOW - 300 * DAY_MS)(f);
                })),
                "kill-switch",
                true,
                vec![],
            ),
            (
                Some(flag("half", |f| {
                    f.environments[0].serving_one_variant_since = Some(NOW - 90 * DAY_MS);
                })),
                "half",
                true,
                vec![],
            ),
            (
                Some(flag("quiet", |f| {
                    for env in &mut f.environments {
                        env.last_evaluated_at = Some(NOW - 40 * DAY_MS);
                    }
                })),
                "quiet",
                true,
                vec![Staleness::NotEvaluated],
            ),
            (
                Some(flag("never", |f| {
                    for env in &mut f.environments {
                        env.last_evaluated_at = None;
                    }
                })),
                "never",
                true,
                vec![Staleness::NotEvaluated],
            ),
            (
                Some(flag("young", |f| {
                    f.created_at = NOW - 2 * DAY_MS;
                    for env in &mut f.environments {
                        env.last_evaluated_at = None;
                    }
                })),
                "young",
                true,
                vec![],
            ),
        ]);
    }

    #[test]
    fn offline_reports_references_by_key_and_judges_nothing() {
        let reports = classify(
            &[reference("b"), reference("a"), reference("b")],
            None,
            NOW,
            30,
        );
        let keys: Vec<(&str, usize)> = reports
            .iter()
            .map(|r| (r.key.as_str(), r.references.len()))
            .collect();
        assert_eq!(keys, [("a", 1), ("b", 2)]);
        assert!(reports.iter().all(|r| r.stale.is_empty() && !r.on_server));
    }
}
