//! A flag's lifecycle per environment (`new`, `active`, `rolledOut`, `stale`, `archived`), as
//! the flag API reports it, so that the dashboard, `anchor scan` and the MCP server give the same
//! verdict. It rests on two facts: when an SDK last reported evaluating the flag there
//! (telemetry, kept by the store) and since when the flag has served one variant to everyone
//! there (read from its revisions). The rules are pure functions of those facts and `now`.

use std::collections::HashMap;

use anchor_engine::{FlagConfig, Lifecycle, Serve};
use anchor_store::{EarlierConfig, FlagLifecycle, FlagRecord, LifecycleStatus, Store, StoreError};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// A flag younger than this and never evaluated is `new`.
pub const NEW_FOR_DAYS: i64 = 7;
/// Rolled out, or not evaluated, for this long: `stale`. `anchor scan --days` judges with
/// its own number from the same facts.
pub const STALE_AFTER_DAYS: i64 = 30;

/// The one variant everyone gets from `config`, if it serves only one: disabled (its off
/// variant), or every rule, target, prerequisite failure and the default serve giving the same
/// variant (a rollout counts when only one of its variants has weight).
pub fn single_variant(config: &FlagConfig) -> Option<&str> {
    if !config.enabled {
        return Some(&config.off_variant);
    }
    let only = |serve: &'_ Serve| -> Option<String> {
        match serve {
            Serve::Variant(v) => Some(v.clone()),
            Serve::Rollout(rollout) => {
                let mut weighted = rollout.variants.iter().filter(|v| v.weight > 0);
                let first = weighted.next()?;
                weighted
                    .all(|v| v.variant == first.variant)
                    .then(|| first.variant.clone())
            }
        }
    };
    let variant = match &config.default_serve {
        Serve::Variant(v) => v.as_str(),
        Serve::Rollout(rollout) => rollout
            .variants
            .iter()
            .find(|v| v.weight > 0)
            .map(|v| v.variant.as_str())?,
    };
    let same = only(&config.default_serve).as_deref() == Some(variant)
        && config
            .rules
            .iter()
            .all(|r| only(&r.serve).as_deref() == Some(variant))
        && config
            .targets
            .iter()
            .all(|(v, keys)| keys.is_empty() || v == variant)
        && (config.prerequisites.is_empty() || config.off_variant == variant);
    same.then_some(variant)
}

/// Since when the flag has served the variant it serves now, to everyone: the time of the
/// oldest revision in the newest unbroken run of revisions that did. `revisions` are (time,
/// configuration) newest first; `None` when the current configuration serves more than one.
pub fn serving_one_variant_since(
    current: &FlagConfig,
    updated_at: i64,
    revisions: &[(i64, Option<FlagConfig>)],
) -> Option<i64> {
    let variant = single_variant(current)?;
    let mut since = updated_at;
    for (at, config) in revisions {
        match config.as_ref().and_then(single_variant) {
            Some(v) if v == variant => since = since.min(*at),
            _ => break,
        }
    }
    Some(since)
}

/// What is known of a flag in one environment.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub archived: bool,
    pub lifecycle: Lifecycle,
    pub created_at: i64,
    pub cleanup_date: Option<&'a str>,
    pub last_evaluated_at: Option<i64>,
    pub serving_one_variant_since: Option<i64>,
}

pub fn status(facts: &Facts<'_>, now_ms: i64) -> LifecycleStatus {
    let temporary = facts.lifecycle == Lifecycle::Temporary;
    let stale_after = STALE_AFTER_DAYS * DAY_MS;
    if facts.archived {
        return LifecycleStatus::Archived;
    }
    let past_cleanup = temporary
        && facts
            .cleanup_date
            .is_some_and(|d| d < utc_date(now_ms).as_str());
    let rolled_out_long = temporary
        && facts
            .serving_one_variant_since
            .is_some_and(|s| now_ms - s >= stale_after);
    let quiet_long = now_ms - facts.last_evaluated_at.unwrap_or(facts.created_at) >= stale_after;
    if past_cleanup || rolled_out_long || quiet_long {
        LifecycleStatus::Stale
    } else if facts.last_evaluated_at.is_none() && now_ms - facts.created_at < NEW_FOR_DAYS * DAY_MS
    {
        LifecycleStatus::New
    } else if facts.serving_one_variant_since.is_some() {
        LifecycleStatus::RolledOut
    } else {
        LifecycleStatus::Active
    }
}

/// What is known of a flag in one environment, for the judgement over all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvironmentFacts {
    pub last_evaluated_at: Option<i64>,
    pub serving_one_variant_since: Option<i64>,
}

/// What is known of a flag over all its environments: the flag list's, the dashboard's and
/// `anchor scan`'s verdicts are all drawn from this, by [`stale_reasons`].
#[derive(Debug, Clone, Copy)]
pub struct FlagFacts<'a> {
    pub archived: bool,
    pub lifecycle: Lifecycle,
    pub created_at: i64,
    pub cleanup_date: Option<&'a str>,
    pub environments: &'a [EnvironmentFacts],
}

/// Why a flag is stale, with its numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleReason {
    /// A temporary flag whose cleanup date (`YYYY-MM-DD`) has passed.
    PastCleanupDate(String),
    /// A temporary flag serving one variant to everyone, in every environment, for so many
    /// days.
    RolledOut { days: i64 },
    /// No SDK reported evaluating it, in any environment, for so many days; `ever` says
    /// whether one ever did (otherwise the days count from its creation).
    NotEvaluated { days: i64, ever: bool },
}

impl std::fmt::Display for StaleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PastCleanupDate(date) => write!(f, "cleanup date {date} has passed"),
            Self::RolledOut { days } => write!(
                f,
                "one variant to everyone in every environment for {days} days"
            ),
            Self::NotEvaluated { days, ever: true } => {
                write!(f, "last evaluated {days} days ago")
            }
            Self::NotEvaluated { days, ever: false } => {
                write!(f, "never evaluated, created {days} days ago")
            }
        }
    }
}

/// Why a flag that is not archived is stale, judged over all its environments with `days`
/// as the limit: a flag still evaluated somewhere, or still serving two variants somewhere,
/// is in use. Empty when it is not stale.
pub fn stale_reasons(facts: &FlagFacts<'_>, now_ms: i64, days: i64) -> Vec<StaleReason> {
    let limit = days * DAY_MS;
    let mut reasons = Vec::new();
    if facts.lifecycle == Lifecycle::Temporary {
        if let Some(date) = facts
            .cleanup_date
            .filter(|d| *d < utc_date(now_ms).as_str())
        {
            reasons.push(StaleReason::PastCleanupDate(date.to_string()));
        }
        let since = facts
            .environments
            .iter()
            .map(|e| e.serving_one_variant_since)
            .collect::<Option<Vec<i64>>>()
            .and_then(|all| all.into_iter().max());
        if let Some(since) = since.filter(|s| now_ms - s >= limit) {
            reasons.push(StaleReason::RolledOut {
                days: (now_ms - since) / DAY_MS,
            });
        }
    }
    let last = facts
        .environments
        .iter()
        .filter_map(|e| e.last_evaluated_at)
        .max();
    let quiet_since = last.unwrap_or(facts.created_at);
    if now_ms - quiet_since >= limit {
        reasons.push(StaleReason::NotEvaluated {
            days: (now_ms - quiet_since) / DAY_MS,
            ever: last.is_some(),
        });
    }
    reasons
}

/// Where a flag stands over all its environments, as the flag list, the dashboard and the
/// MCP server show it: archived; stale when [`stale_reasons`] finds a reason within
/// [`STALE_AFTER_DAYS`]; new when younger than [`NEW_FOR_DAYS`] and never evaluated; rolled
/// out when it serves one variant to everyone in every environment; otherwise active.
pub fn flag_status(facts: &FlagFacts<'_>, now_ms: i64) -> LifecycleStatus {
    if facts.archived {
        LifecycleStatus::Archived
    } else if !stale_reasons(facts, now_ms, STALE_AFTER_DAYS).is_empty() {
        LifecycleStatus::Stale
    } else if facts
        .environments
        .iter()
        .all(|e| e.last_evaluated_at.is_none())
        && now_ms - facts.created_at < NEW_FOR_DAYS * DAY_MS
    {
        LifecycleStatus::New
    } else if !facts.environments.is_empty()
        && facts
            .environments
            .iter()
            .all(|e| e.serving_one_variant_since.is_some())
    {
        LifecycleStatus::RolledOut
    } else {
        LifecycleStatus::Active
    }
}

/// Unix milliseconds as the UTC date `YYYY-MM-DD` (civil-from-days, Howard Hinnant's
/// algorithm), to compare with a cleanup date.
pub fn utc_date(ms: i64) -> String {
    let z = ms.div_euclid(DAY_MS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// (flag key, environment key).
pub type FlagEnvironment = (String, String);

/// Fills in `lifecycle` for every environment of `records` (all of one project), and each
/// record's `status`: one query for the last evaluations and one for the earlier revisions of
/// every configuration.
pub async fn fill(
    store: &dyn Store,
    project: &str,
    records: &mut [FlagRecord],
    now_ms: i64,
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let since = serving_since(store, project, records).await?;
    let last = last_evaluated(store, project).await?;
    apply(records, &since, &last, now_ms);
    Ok(())
}

/// When an SDK last reported evaluating each flag in each environment (unix milliseconds).
pub async fn last_evaluated(
    store: &dyn Store,
    project: &str,
) -> Result<HashMap<FlagEnvironment, i64>, StoreError> {
    Ok(store
        .last_evaluations(project)
        .await?
        .into_iter()
        .map(|l| ((l.flag, l.environment), l.minute * 1000))
        .collect())
}

/// Since when each configuration of `records` that serves one variant to everyone has done
/// so. It depends on the configurations and their revisions only, not on the time, so a cached
/// flag list keeps it. Only configurations serving one variant now are read back, each to
/// the first earlier revision that served something else.
pub async fn serving_since(
    store: &dyn Store,
    project: &str,
    records: &[FlagRecord],
) -> Result<HashMap<FlagEnvironment, i64>, StoreError> {
    if !records.iter().any(|r| {
        r.environments
            .iter()
            .any(|e| single_variant(&e.config).is_some())
    }) {
        return Ok(HashMap::new());
    }
    let earlier = store.earlier_flag_revisions(project).await?;
    Ok(serving_since_from(records, earlier))
}

/// [`serving_since`] from the earlier configurations already read (`Store::earlier_flag_revisions`).
pub fn serving_since_from(
    records: &[FlagRecord],
    earlier_configs: Vec<EarlierConfig>,
) -> HashMap<FlagEnvironment, i64> {
    let mut since = HashMap::new();
    let mut earlier: HashMap<FlagEnvironment, Vec<(i64, String)>> = HashMap::new();
    for revision in earlier_configs {
        earlier
            .entry((revision.flag, revision.environment))
            .or_default()
            .push((revision.created_at, revision.config));
    }
    for record in records {
        for env in &record.environments {
            let Some(variant) = single_variant(&env.config) else {
                continue;
            };
            let key = (record.flag.key.clone(), env.environment.clone());
            let older = earlier.get(&key).map(Vec::as_slice).unwrap_or_default();
            // Parsing stops at the first revision that served something else.
            let mut revisions = Vec::new();
            for (at, body) in older {
                let config = serde_json::from_str::<FlagConfig>(body).ok();
                let same = config.as_ref().and_then(single_variant) == Some(variant);
                revisions.push((*at, config));
                if !same {
                    break;
                }
            }
            if let Some(at) = serving_one_variant_since(&env.config, env.updated_at, &revisions) {
                since.insert(key, at);
            }
        }
    }
    since
}

/// Sets each environment's `lifecycle` and each record's `status` from the facts.
pub fn apply(
    records: &mut [FlagRecord],
    since: &HashMap<FlagEnvironment, i64>,
    last: &HashMap<FlagEnvironment, i64>,
    now_ms: i64,
) {
    for record in records {
        let mut environments = Vec::with_capacity(record.environments.len());
        for env in &mut record.environments {
            let key = (record.flag.key.clone(), env.environment.clone());
            let facts = EnvironmentFacts {
                last_evaluated_at: last.get(&key).copied(),
                serving_one_variant_since: since.get(&key).copied(),
            };
            let status = status(
                &Facts {
                    archived: record.archived,
                    lifecycle: record.flag.lifecycle,
                    created_at: record.created_at,
                    cleanup_date: record.flag.cleanup_date.as_deref(),
                    last_evaluated_at: facts.last_evaluated_at,
                    serving_one_variant_since: facts.serving_one_variant_since,
                },
                now_ms,
            );
            env.lifecycle = Some(FlagLifecycle {
                status,
                last_evaluated_at: facts.last_evaluated_at,
                serving_one_variant_since: facts.serving_one_variant_since,
            });
            environments.push(facts);
        }
        record.status = Some(flag_status(
            &FlagFacts {
                archived: record.archived,
                lifecycle: record.flag.lifecycle,
                created_at: record.created_at,
                cleanup_date: record.flag.cleanup_date.as_deref(),
                environments: &environments,
            },
            now_ms,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn config(json: serde_json::Value) -> FlagConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_configuration_serves_one_variant_when_nothing_can_tell_contexts_apart() {
        let cases = [
            (
                r#"{"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}}"#,
                Some("off"),
            ),
            (
                r#"{"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}"#,
                Some("on"),
            ),
            (
                r#"{"enabled": true, "offVariant": "off", "defaultServe": {"rollout": {"variants": [{"variant": "on", "weight": 100000}, {"variant": "off", "weight": 0}]}}}"#,
                Some("on"),
            ),
            (
                r#"{"enabled": true, "offVariant": "off", "defaultServe": {"rollout": {"variants": [{"variant": "on", "weight": 50000}, {"variant": "off", "weight": 50000}]}}}"#,
                None,
            ),
            (
                r#"{"enabled": true, "offVariant": "off", "targets": {"off": ["alice"]}, "defaultServe": {"variant": "on"}}"#,
                None,
            ),
            (
                r#"{"enabled": true, "offVariant": "off", "targets": {"on": ["alice"]}, "defaultServe": {"variant": "on"}}"#,
                Some("on"),
            ),
            (
                r#"{"enabled": true, "offVariant": "off", "rules": [{"id": "r", "conditions": [], "serve": {"variant": "off"}}], "defaultServe": {"variant": "on"}}"#,
                None,
            ),
        ];
        for (json, expected) in cases {
            let config = config(serde_json::from_str(json).unwrap());
            assert_eq!(single_variant(&config), expected, "{json}");
        }
    }

    #[test]
    fn one_variant_since_is_the_oldest_revision_of_the_newest_run_serving_it() {
        let on = config(
            serde_json::json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}),
        );
        let rule = config(
            serde_json::json!({"enabled": true, "offVariant": "off", "targets": {"off": ["bob"]}, "defaultServe": {"variant": "on"}}),
        );
        let off = config(
            serde_json::json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}}),
        );
        // Newest first: on (t=5), on (t=4), rule (t=3), on (t=2), off (t=1).
        let revisions = [
            (5, Some(on.clone())),
            (4, Some(on.clone())),
            (3, Some(rule.clone())),
            (2, Some(on.clone())),
            (1, Some(off.clone())),
        ];
        assert_eq!(serving_one_variant_since(&on, 5, &revisions), Some(4));
        assert_eq!(serving_one_variant_since(&rule, 3, &revisions[2..]), None);
        // Turned off after serving `on`: a different variant, so the run starts at the switch.
        let revisions = [(9, Some(off.clone())), (8, Some(on.clone()))];
        assert_eq!(serving_one_variant_since(&off, 9, &revisions), Some(9));
        assert_eq!(serving_one_variant_since(&off, 9, &[]), Some(9));
    }

    #[test]
    fn the_status_follows_the_first_rule_that_holds() {
        let base = Facts {
            archived: false,
            lifecycle: Lifecycle::Temporary,
            created_at: NOW - 100 * DAY_MS,
            cleanup_date: None,
            last_evaluated_at: Some(NOW - DAY_MS),
            serving_one_variant_since: None,
        };
        let today = utc_date(NOW);
        let cases = [
            (base, LifecycleStatus::Active),
            (
                Facts {
                    archived: true,
                    ..base
                },
                LifecycleStatus::Archived,
            ),
            (
                Facts {
                    serving_one_variant_since: Some(NOW - DAY_MS),
                    ..base
                },
                LifecycleStatus::RolledOut,
            ),
            (
                Facts {
                    serving_one_variant_since: Some(NOW - 30 * DAY_MS),
                    ..base
                },
                LifecycleStatus::Stale,
            ),
            (
                Facts {
                    lifecycle: Lifecycle::Permanent,
                    serving_one_variant_since: Some(NOW - 300 * DAY_MS),
                    ..base
                },
                LifecycleStatus::RolledOut,
            ),
            (
                Facts {
                    last_evaluated_at: Some(NOW - 31 * DAY_MS),
                    ..base
                },
                LifecycleStatus::Stale,
            ),
            (
                Facts {
                    cleanup_date: Some("2020-01-01"),
                    ..base
                },
                LifecycleStatus::Stale,
            ),
            (
                Facts {
                    cleanup_date: Some(&today),
                    ..base
                },
                LifecycleStatus::Active,
            ),
            (
                Facts {
                    created_at: NOW - DAY_MS,
                    last_evaluated_at: None,
                    serving_one_variant_since: Some(NOW - DAY_MS),
                    ..base
                },
                LifecycleStatus::New,
            ),
            (
                Facts {
                    created_at: NOW - 8 * DAY_MS,
                    last_evaluated_at: None,
                    ..base
                },
                LifecycleStatus::Active,
            ),
        ];
        for (facts, expected) in cases {
            assert_eq!(status(&facts, NOW), expected, "{facts:?}");
        }
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_709_251_199_000), "2024-02-29");
    }

    #[test]
    fn over_all_environments_a_flag_in_use_anywhere_is_not_stale() {
        let env = |evaluated: Option<i64>, since: Option<i64>| EnvironmentFacts {
            last_evaluated_at: evaluated.map(|days| NOW - days * DAY_MS),
            serving_one_variant_since: since.map(|days| NOW - days * DAY_MS),
        };
        let judge = |environments: &[EnvironmentFacts]| {
            let facts = FlagFacts {
                archived: false,
                lifecycle: Lifecycle::Temporary,
                created_at: NOW - 400 * DAY_MS,
                cleanup_date: None,
                environments,
            };
            (
                flag_status(&facts, NOW),
                stale_reasons(&facts, NOW, STALE_AFTER_DAYS),
            )
        };
        // Staging is quiet, but production evaluated it yesterday and still splits traffic.
        assert_eq!(
            judge(&[env(Some(1), None), env(Some(90), Some(90))]),
            (LifecycleStatus::Active, vec![])
        );
        // One variant everywhere, the newest run for 40 days: rolled out long ago.
        assert_eq!(
            judge(&[env(Some(1), Some(40)), env(Some(2), Some(300))]),
            (
                LifecycleStatus::Stale,
                vec![StaleReason::RolledOut { days: 40 }]
            )
        );
        // One variant everywhere, but only for ten days in one of them.
        assert_eq!(
            judge(&[env(Some(1), Some(10)), env(Some(2), Some(300))]),
            (LifecycleStatus::RolledOut, vec![])
        );
        // Nobody evaluated it anywhere for 31 days.
        let (status, reasons) = judge(&[env(Some(31), None), env(None, None)]);
        assert_eq!(status, LifecycleStatus::Stale);
        assert_eq!(
            reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["last evaluated 31 days ago"]
        );
    }
}
