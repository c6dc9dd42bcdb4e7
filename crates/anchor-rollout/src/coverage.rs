//! Canary coverage: does the canary mirror the user base?
//!
//! A template names up to [`MAX_COVERAGE_ATTRIBUTES`] evaluation-context attributes (dotted
//! paths, as the engine's conditions read them: `platform`, `geo.country`). SDKs count each
//! watched flag's first exposures per variant by the values of those attributes (at most 20
//! values per attribute and stage, the rest under [`OTHER_VALUE`]; a missing attribute under
//! [`MISSING_VALUE`]); the controller sums a stage's minutes into [`CoverageObservations`].
//!
//! [`coverage_table`] turns them into one [`CoverageRow`] per (attribute, value):
//!
//! - `share = (control + treatment) / Σ(control + treatment)` over the attribute's values: the
//!   value's share of the users who evaluated the flag in the stage, both arms together (the
//!   split is the same for every value of a healthy rollout, so the population is both arms).
//! - `treatedUsers = treatment`: how many of them the treatment has served.
//! - `warning` when `share ≥ minShare` and `treatedUsers < minTreatedUsers` (defaults 5% and
//!   50): a real part of the user base has had too few treated users for any guardrail to say
//!   anything about it. [`OTHER_VALUE`] never warns: it is the tail of many small values, not
//!   a population of its own.
//!
//! A stage with `requireCoverage` does not advance while any value warns, or while an
//! attribute has no counts at all (SDKs that do not report coverage must not let it pass
//! silently): [`step_with_coverage`] runs [`step`] and, when that would advance, extends the
//! stage instead, and once the dwell and its extension are over holds with
//! [`HoldReason::InsufficientCoverage`], saying which values lack treated users ("held at 5%:
//! country=BR has 12 of 50 treated users"). Like insufficient data, the hold clears by itself:
//! the stage advances as soon as the coverage is there. Regressions still roll back at once:
//! coverage only ever delays an advance.
//!
//! Counts are distinct units per SDK instance since the flag's configuration last changed (see
//! the SDK's `outcomes` module), so a user served by two instances counts twice and one first
//! seen during the warm-up is not counted: treated users are an estimate, close to the truth
//! for sticky traffic, and the gate errs on the side of waiting.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::release::{
    Action, Decision, Event, HoldReason, ReleaseState, ReleaseTemplate, Transition, percent, step,
};
use crate::stats::{Observations, PlanProblem};

/// The most coverage attributes a template may name.
pub const MAX_COVERAGE_ATTRIBUTES: usize = 5;
/// The longest coverage attribute path.
pub const MAX_ATTRIBUTE_PATH: usize = 256;
/// The value under which SDKs count values beyond the first 20 of an attribute.
pub const OTHER_VALUE: &str = "other";
/// The value under which SDKs count contexts that lack the attribute.
pub const MISSING_VALUE: &str = "(none)";

/// First exposures by attribute, then value.
pub type ValueCounts = BTreeMap<String, BTreeMap<String, u64>>;

/// A stage's first exposures by coverage attribute and value, per arm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoverageObservations {
    pub control: ValueCounts,
    pub treatment: ValueCounts,
}

/// When a value counts as uncovered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoverageThresholds {
    /// A value with at least this share of the users (0 to 1) is a real part of the user base.
    #[serde(default = "default_min_share")]
    pub min_share: f64,
    /// Such a value needs at least this many treated users.
    #[serde(default = "default_min_treated_users")]
    pub min_treated_users: u64,
}

fn default_min_share() -> f64 {
    0.05
}

fn default_min_treated_users() -> u64 {
    50
}

impl Default for CoverageThresholds {
    fn default() -> Self {
        Self {
            min_share: default_min_share(),
            min_treated_users: default_min_treated_users(),
        }
    }
}

/// A template's coverage settings (flattened into the template's JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoveragePlan {
    /// Evaluation-context attribute paths to break exposures down by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coverage_attributes: Vec<String>,
    #[serde(default)]
    pub coverage_thresholds: CoverageThresholds,
}

impl CoveragePlan {
    /// Every problem at once, each with its JSON pointer in the template.
    #[must_use]
    pub fn problems(&self) -> Vec<PlanProblem> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| {
            problems.push(PlanProblem { path, message });
        };
        if self.coverage_attributes.len() > MAX_COVERAGE_ATTRIBUTES {
            problem(
                "/coverageAttributes".into(),
                format!("at most {MAX_COVERAGE_ATTRIBUTES} attributes"),
            );
        }
        for (i, path) in self.coverage_attributes.iter().enumerate() {
            let bad = path.is_empty()
                || path.chars().count() > MAX_ATTRIBUTE_PATH
                || path.chars().any(char::is_control)
                || path.split('.').any(str::is_empty);
            if bad {
                problem(
                    format!("/coverageAttributes/{i}"),
                    format!(
                        "an attribute path is 1 to {MAX_ATTRIBUTE_PATH} characters, dotted names without empty parts or control characters"
                    ),
                );
            } else if self.coverage_attributes[..i].contains(path) {
                problem(format!("/coverageAttributes/{i}"), "named twice".into());
            }
        }
        let t = self.coverage_thresholds;
        if !(t.min_share > 0.0 && t.min_share <= 1.0) {
            problem(
                "/coverageThresholds/minShare".into(),
                "must be above 0 and at most 1".into(),
            );
        }
        if t.min_treated_users == 0 {
            problem(
                "/coverageThresholds/minTreatedUsers".into(),
                "must be at least 1".into(),
            );
        }
        problems
    }
}

/// One value of one coverage attribute in a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoverageRow {
    pub attribute: String,
    pub value: String,
    /// The value's share of the users of both arms (0 to 1).
    pub share: f64,
    /// Users of both arms with this value.
    pub users: u64,
    /// Users with this value the treatment served.
    pub treated_users: u64,
    /// A real share with too few treated users to judge.
    pub warning: bool,
}

/// One value (or attribute) that keeps a `requireCoverage` stage from advancing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoverageGap {
    pub attribute: String,
    /// `None` when the attribute has no counts at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub treated_users: u64,
    pub min_treated_users: u64,
}

impl CoverageGap {
    /// "country=BR has 12 of 50 treated users".
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.value {
            Some(value) => format!(
                "{}={value} has {} of {} treated users",
                self.attribute, self.treated_users, self.min_treated_users
            ),
            None => format!("no exposures broken down by {} yet", self.attribute),
        }
    }
}

/// The coverage table of a stage: for each of the plan's attributes (in its order), each
/// value seen, the most users first (then by value).
#[must_use]
pub fn coverage_table(plan: &CoveragePlan, observed: &CoverageObservations) -> Vec<CoverageRow> {
    let t = plan.coverage_thresholds;
    let mut rows = Vec::new();
    for attribute in &plan.coverage_attributes {
        let control = observed.control.get(attribute);
        let treatment = observed.treatment.get(attribute);
        let values: BTreeSet<&String> = control
            .into_iter()
            .chain(treatment)
            .flat_map(BTreeMap::keys)
            .collect();
        let count = |arm: Option<&BTreeMap<String, u64>>, value: &str| {
            arm.and_then(|m| m.get(value)).copied().unwrap_or(0)
        };
        let mut of_attribute: Vec<CoverageRow> = values
            .into_iter()
            .map(|value| {
                let treated = count(treatment, value);
                CoverageRow {
                    attribute: attribute.clone(),
                    value: value.clone(),
                    share: 0.0,
                    users: count(control, value).saturating_add(treated),
                    treated_users: treated,
                    warning: false,
                }
            })
            .collect();
        let total = of_attribute
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.users));
        for row in &mut of_attribute {
            #[allow(clippy::cast_precision_loss, reason = "shares need no exact counts")]
            let share = if total == 0 {
                0.0
            } else {
                row.users as f64 / total as f64
            };
            row.share = share;
            row.warning = row.value != OTHER_VALUE
                && share >= t.min_share
                && row.treated_users < t.min_treated_users;
        }
        of_attribute.sort_by(|a, b| b.users.cmp(&a.users).then_with(|| a.value.cmp(&b.value)));
        rows.extend(of_attribute);
    }
    rows
}

/// What keeps a `requireCoverage` stage from advancing: every warning of `table`, and every
/// attribute of the plan without counts.
#[must_use]
pub fn coverage_gaps(plan: &CoveragePlan, table: &[CoverageRow]) -> Vec<CoverageGap> {
    let min = plan.coverage_thresholds.min_treated_users;
    plan.coverage_attributes
        .iter()
        .flat_map(|attribute| {
            let rows: Vec<&CoverageRow> =
                table.iter().filter(|r| &r.attribute == attribute).collect();
            if rows.iter().all(|r| r.users == 0) {
                return vec![CoverageGap {
                    attribute: attribute.clone(),
                    value: None,
                    treated_users: 0,
                    min_treated_users: min,
                }];
            }
            rows.into_iter()
                .filter(|r| r.warning)
                .map(|r| CoverageGap {
                    attribute: attribute.clone(),
                    value: Some(r.value.clone()),
                    treated_users: r.treated_users,
                    min_treated_users: min,
                })
                .collect()
        })
        .collect()
}

fn describe_gaps(gaps: &[CoverageGap]) -> String {
    gaps.iter()
        .map(CoverageGap::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether `next` has left stage `from` forward (a later stage, waiting to enter one, or
/// completed).
fn advanced(from: usize, next: &ReleaseState) -> bool {
    match next {
        ReleaseState::Running { clock }
        | ReleaseState::Holding { clock, .. }
        | ReleaseState::Paused { clock, .. } => clock.stage > from,
        ReleaseState::WaitingForApproval { stage, .. } => *stage > from,
        ReleaseState::Completed { .. } => true,
        _ => false,
    }
}

/// [`step`] with the stage's coverage: when the stage requires coverage and `step` would
/// advance while a value lacks treated users (or an attribute has no counts; `None` counts as
/// none), the stage is extended instead, and after its dwell and extension the release holds
/// with [`HoldReason::InsufficientCoverage`]. Everything else is `step`'s.
#[must_use]
pub fn step_with_coverage(
    template: &ReleaseTemplate,
    state: &ReleaseState,
    observations: Result<&Observations, &str>,
    coverage: Option<&CoverageObservations>,
    now_ms: i64,
) -> Transition {
    let next = step(template, state, observations, now_ms);
    let (clock, held) = match state {
        ReleaseState::Running { clock } => (clock, None),
        ReleaseState::Holding { clock, reason, .. } => (clock, Some(reason)),
        _ => return next,
    };
    let Some(stage) = template.stages.get(clock.stage) else {
        return next;
    };
    if !stage.require_coverage || !advanced(clock.stage, &next.state) {
        return next;
    }
    let empty = CoverageObservations::default();
    let table = coverage_table(&template.coverage, coverage.unwrap_or(&empty));
    let gaps = coverage_gaps(&template.coverage, &table);
    if gaps.is_empty() {
        return next;
    }
    let at = percent(stage.percentage);
    let report = next.report;
    let dwell = i64::try_from(stage.dwell_ms).unwrap_or(i64::MAX);
    let extension = i64::try_from(template.max_extension_ms).unwrap_or(i64::MAX);
    let overdue = now_ms
        >= clock
            .since_ms
            .saturating_add(dwell)
            .saturating_add(extension);
    if !overdue {
        // Extended, as for insufficient data: nothing to log until the extension runs out.
        let decision = held.map(|_| Decision {
            at_ms: now_ms,
            message: format!(
                "running again at {at}: the hold's cause cleared; waiting for coverage ({})",
                describe_gaps(&gaps)
            ),
            report: report.clone(),
        });
        return Transition {
            state: ReleaseState::Running {
                clock: clock.clone(),
            },
            actions: Vec::new(),
            decision,
            report,
        };
    }
    if matches!(held, Some(HoldReason::InsufficientCoverage { .. })) {
        return Transition {
            state: state.clone(),
            actions: Vec::new(),
            decision: None,
            report,
        };
    }
    Transition {
        state: ReleaseState::Holding {
            clock: clock.clone(),
            held_since_ms: now_ms,
            reason: HoldReason::InsufficientCoverage { gaps: gaps.clone() },
        },
        actions: vec![Action::Notify {
            event: Event::Holding,
        }],
        decision: Some(Decision {
            at_ms: now_ms,
            message: format!(
                "held at {at}: {}; the canary does not cover the user base yet",
                describe_gaps(&gaps)
            ),
            report: report.clone(),
        }),
        report,
    }
}
