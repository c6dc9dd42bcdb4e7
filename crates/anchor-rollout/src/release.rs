//! Release plans: the stage state machine that moves a flag's treatment share from stage to
//! stage, judged by the guardrails.
//!
//! A [`ReleaseTemplate`] is the recipe (stages with their share, dwell, warm-up and approval
//! gate; the guardrails and their α budget; the policies); a release's [`ReleaseState`] is where
//! it stands. Two pure functions move it:
//!
//! - [`step`] runs on the controller's tick with the current stage's cumulative observations
//!   (counted from the end of the stage's warm-up; `Err` when the metric source failed) and the
//!   time, and returns the next state, the [`Action`]s for the driver to carry out (set the
//!   share, roll back, notify) and, when something happened, a [`Decision`] in words.
//! - [`command`] applies a person's action (start, pause, resume, skip, approve, dismiss, roll
//!   back, abort, complete), or refuses it with a reason.
//!
//! ## The rules
//! - A stage advances when its dwell has passed and every guardrail is `Safe` (and the split
//!   matches). A stage that has dwelt long enough but cannot decide is extended, up to
//!   `max_extension_ms`; then the release holds, saying how much more data it needs. It still
//!   advances by itself once the data suffice, and still rolls back on a regression.
//! - Any guardrail `Regressed` rolls back at once (whatever the dwell), except those listed in
//!   `hold_only` (business metrics a team wants to judge itself), which hold and notify.
//! - A sample ratio mismatch holds: no verdict can be trusted when the split is not the one
//!   configured. A failing metric source holds and never rolls back; the release runs on when
//!   the source answers again.
//! - Entering a stage with an approval gate waits for approval. Entering the last stage (100%)
//!   completes the release: there is no control left to compare with.
//! - Rolling back takes the treatment away (and, with `rollback_disables_flag`, turns the flag
//!   off), except before the release entered its first stage (pending, or waiting for its
//!   first approval): it never served the treatment, so the rollback only ends it.
//!
//! ## α across stages
//! Each guardrail runs one test over the whole release, not one per stage: when a stage ends,
//! what each guardrail measured in it ([`StageEvidence`]) is kept in the stage's
//! [`StageRecord`], and the later stages judge their own observations together with it (the
//! error rate multiplies the stages' e-processes; the others combine the stages' estimates by
//! inverse variance; see [`crate::stats`]). So the release's α is split across the guardrails
//! only (α / k each): a healthy release is falsely rolled back with probability at most α over
//! its whole life, however many stages it has and however often it is checked, and a
//! regression seen in two stages counts the evidence of both. The sample ratio test stays per
//! stage (each stage has its own split) and spends `srm_alpha / s` in each of the `s` stages
//! with a control.
//!
//! Two things restart a guardrail's test: a person dismissing it (its evidence so far is
//! dropped when the stage advances, so the dismissed regression does not roll back the next
//! stage) and a person skipping a stage (the skipped stage's observations are not kept).
//!
//! ## Widening needs less proof early
//! `Safe` is judged against the guardrail's tolerance scaled to the share the next stage would
//! give the treatment (`tolerance / s'`, [`crate::stats::evaluate_release`]): leaving 1% for
//! 5% asks that the treatment cannot raise the error rate of *all* traffic by more than the
//! tolerance at 5%, which takes a few minutes of data, while the last widening, to 100%, asks
//! for the tolerance itself. Rolling back always uses the tolerance itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::coverage::{CoverageGap, CoveragePlan};
use crate::stats::{GuardrailCheck, GuardrailPlan, GuardrailReport, Observations, PlanProblem};
use crate::stats::{Needed, SrmCheck, StageEvidence, Verdict, evaluate_release, stage_evidence};

/// One stage of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// The treatment's share of the rollout, in percent (0 < p ≤ 100).
    pub percentage: f64,
    /// The least time the stage runs before it may advance.
    pub dwell_ms: u64,
    /// Observations from the stage's first moments are ignored (caches warming, clients
    /// picking up the change).
    #[serde(default)]
    pub warmup_ms: u64,
    /// Entering the stage waits for a person's approval.
    #[serde(default)]
    pub approval: bool,
    /// The stage does not advance until the canary covers the user base (see
    /// [`crate::coverage`]).
    #[serde(default)]
    pub require_coverage: bool,
}

/// The recipe of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseTemplate {
    pub stages: Vec<Stage>,
    /// The guardrails; their `alpha` is the budget of the whole release.
    pub guardrails: GuardrailPlan,
    /// How long past its dwell a stage that cannot decide is extended before the release holds.
    #[serde(default = "default_max_extension_ms")]
    pub max_extension_ms: u64,
    /// Guardrails (by name) whose regression holds and notifies instead of rolling back.
    #[serde(default)]
    pub hold_only: Vec<String>,
    /// Whether a rollback also turns the flag off (the kill switch), not only the share to 0%.
    #[serde(default)]
    pub rollback_disables_flag: bool,
    /// Hold instead of advancing when the treatment's p99 latency, projected from the stages
    /// done to 100% of traffic, would exceed this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_limit_ms: Option<f64>,
    /// Canary coverage: `coverageAttributes` and `coverageThresholds`.
    #[serde(flatten)]
    pub coverage: CoveragePlan,
    /// Custom resource metrics (for example CPU milliseconds per request) whose treatment
    /// mean, projected from the stages done to 100% of traffic, holds the release instead of
    /// advancing when it exceeds its limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projections: Vec<ProjectionLimit>,
}

/// A custom metric to project to full traffic, and the most its projection may reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionLimit {
    /// The custom metric's name, as SDKs report it (`track`).
    pub metric: String,
    /// The treatment's mean of the metric, projected to 100%, may not exceed this.
    pub limit: f64,
}

fn default_max_extension_ms() -> u64 {
    // Twice the default dwell.
    30 * 60_000
}

impl ReleaseTemplate {
    /// 1% → 5% → 25% → 50% → 100%, 15 minutes each after a 1-minute warm-up; guardrails on
    /// the error rate and p95/p99 latency; α = 1%.
    #[must_use]
    pub fn builtin() -> Self {
        let stage = |percentage| Stage {
            percentage,
            dwell_ms: 15 * 60_000,
            warmup_ms: 60_000,
            approval: false,
            require_coverage: false,
        };
        Self {
            stages: [1.0, 5.0, 25.0, 50.0, 100.0]
                .into_iter()
                .map(stage)
                .collect(),
            guardrails: GuardrailPlan::builtin(),
            max_extension_ms: default_max_extension_ms(),
            hold_only: Vec::new(),
            rollback_disables_flag: false,
            p99_limit_ms: None,
            coverage: CoveragePlan::default(),
            projections: Vec::new(),
        }
    }

    /// Every problem at once, each with its JSON pointer; empty when the template is valid.
    #[must_use]
    pub fn problems(&self) -> Vec<PlanProblem> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: &str| {
            problems.push(PlanProblem {
                path,
                message: message.to_owned(),
            });
        };
        if self.stages.is_empty() {
            problem("/stages".into(), "a release needs at least one stage");
        }
        let mut previous = 0.0;
        for (i, stage) in self.stages.iter().enumerate() {
            let p = stage.percentage;
            if !(p > 0.0 && p <= 100.0) {
                problem(
                    format!("/stages/{i}/percentage"),
                    "must be above 0 and at most 100",
                );
            } else if p <= previous {
                problem(
                    format!("/stages/{i}/percentage"),
                    "must be above the previous stage's",
                );
            }
            previous = p.max(previous);
            if stage.dwell_ms == 0 && p < 100.0 {
                problem(format!("/stages/{i}/dwellMs"), "must be positive");
            }
            if stage.require_coverage && self.coverage.coverage_attributes.is_empty() {
                problem(
                    format!("/stages/{i}/requireCoverage"),
                    "needs coverageAttributes to judge the coverage by",
                );
            }
            if stage.warmup_ms >= stage.dwell_ms && p < 100.0 {
                problem(
                    format!("/stages/{i}/warmupMs"),
                    "must be shorter than the dwell",
                );
            }
        }
        if self.stages.last().is_some_and(|s| s.percentage < 100.0) {
            problem(
                format!("/stages/{}/percentage", self.stages.len() - 1),
                "the last stage must be 100%",
            );
        }
        if self
            .p99_limit_ms
            .is_some_and(|limit| !(limit > 0.0 && limit.is_finite()))
        {
            problem(
                "/p99LimitMs".into(),
                "must be a positive number of milliseconds",
            );
        }
        for (i, projection) in self.projections.iter().enumerate() {
            if projection.metric.is_empty()
                || self.projections[..i]
                    .iter()
                    .any(|p| p.metric == projection.metric)
            {
                problem(
                    format!("/projections/{i}/metric"),
                    "must name a custom metric, once",
                );
            }
            if !projection.limit.is_finite() {
                problem(format!("/projections/{i}/limit"), "must be a finite number");
            }
        }
        for (i, name) in self.hold_only.iter().enumerate() {
            if !self.guardrails.guardrails.iter().any(|g| &g.name == name) {
                problem(format!("/holdOnly/{i}"), "names no guardrail");
            }
        }
        problems.extend(self.coverage.problems());
        problems.extend(self.guardrails.problems().into_iter().map(|p| PlanProblem {
            path: format!("/guardrails{}", p.path),
            message: p.message,
        }));
        problems
    }

    /// The stages with a control to compare against (below 100%).
    fn judged_stages(&self) -> usize {
        self.stages
            .iter()
            .filter(|s| s.percentage < 100.0)
            .count()
            .max(1)
    }

    /// The guardrails as one stage runs them: the guardrails' tests span the release, so they
    /// keep the release's α; the sample ratio test is per stage, so its α is split across the
    /// stages.
    #[must_use]
    pub fn stage_guardrails(&self) -> GuardrailPlan {
        #[allow(clippy::cast_precision_loss, reason = "a handful of stages")]
        let s = self.judged_stages() as f64;
        let mut plan = self.guardrails.clone();
        plan.srm_alpha /= s;
        plan
    }
}

/// Why a release holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum HoldReason {
    /// The stage ran its dwell and its extension without the guardrails deciding.
    InsufficientData { needed: Vec<GuardrailNeed> },
    /// The exposures do not split as configured.
    SampleRatioMismatch { check: SrmCheck },
    /// The metric source failed; the release waits for it.
    SourceError { message: String },
    /// A `hold_only` guardrail regressed.
    GuardrailBreached { check: GuardrailCheck },
    /// The treatment's p99 latency, projected to 100% of traffic, exceeds the template's limit.
    ProjectedLatency { projection: Projection },
    /// The stage requires coverage and these values (or attributes) lack treated users.
    InsufficientCoverage { gaps: Vec<CoverageGap> },
    /// A custom metric's treatment mean, projected to 100% of traffic, exceeds its limit.
    ProjectedMetric {
        projection: MetricProjection,
        limit: f64,
    },
}

/// What the treatment measured when it left a stage, for the scaling projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    pub percentage: f64,
    /// The treatment's p99 latency over the stage, in milliseconds, if it had requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub treatment_p99_ms: Option<f64>,
    /// What each guardrail measured in the stage, carried into the later stages' tests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<StageEvidence>,
    /// The treatment's mean of each custom metric the template projects, over the stage (the
    /// metrics it had values of).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// One per-stage value of the treatment (read from each [`StageRecord`] by `value`) as
/// `(percentage, value)` points, oldest first: the stages that measured it.
fn stage_points(
    history: &[StageRecord],
    value: impl Fn(&StageRecord) -> Option<f64>,
) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|r| Some((r.percentage, value(r)?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// The least-squares line through `points` (share in percent, value), evaluated at 100%:
/// load that grows with the share shows as a slope. `None` without two distinct shares.
fn fit_at_full_traffic(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    #[allow(clippy::cast_precision_loss, reason = "a handful of stages")]
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    Some(mean_y + sxy / sxx * (100.0 - mean_x)).filter(|v| v.is_finite())
}

/// "<name> grew from <first> at 5% to <last> at 25%: projected <value> at 100%", each value
/// written by `number`.
fn describe_fit(
    name: &str,
    points: &[(f64, f64)],
    projected: f64,
    number: impl Fn(f64) -> String,
) -> String {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return String::new();
    };
    let verb = if last.1 > first.1 + first.1.abs() * 0.02 {
        "grew"
    } else if last.1 < first.1 - first.1.abs() * 0.02 {
        "fell"
    } else {
        "held"
    };
    format!(
        "{name} {verb} from {} at {} to {} at {}: projected {} at 100%",
        number(first.1),
        percent(first.0),
        number(last.1),
        percent(last.0),
        number(projected)
    )
}

/// A custom metric's value in words, to about three significant digits.
fn metric_number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A custom metric's treatment mean fitted against its share over the stages done and
/// projected to 100%, as [`Projection`] does for the p99 latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricProjection {
    pub metric: String,
    /// `(percentage, mean)` of each stage that measured the metric, oldest first.
    pub points: Vec<(f64, f64)>,
    /// The mean the line gives at 100% of traffic.
    pub projected: f64,
}

impl MetricProjection {
    /// Needs two stages at different shares with values of `metric`; `None` otherwise.
    #[must_use]
    pub fn of(history: &[StageRecord], metric: &str) -> Option<Self> {
        let points = stage_points(history, |r| r.metrics.get(metric).copied());
        let projected = fit_at_full_traffic(&points)?;
        Some(Self {
            metric: metric.to_owned(),
            points,
            projected,
        })
    }

    /// "cpu_ms grew from 104 at 1% to 120 at 5%: projected 500 at 100%".
    #[must_use]
    pub fn describe(&self) -> String {
        describe_fit(&self.metric, &self.points, self.projected, metric_number)
    }
}

/// The treatment's p99 latency fitted against its share over the stages done (least squares,
/// a straight line: load that grows with the share shows as a slope) and projected to 100%.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Projection {
    /// `(percentage, p99 ms)` of each stage that measured one, oldest first.
    pub points: Vec<(f64, f64)>,
    /// The p99 the line gives at 100% of traffic.
    pub projected_p99_ms: f64,
}

impl Projection {
    /// Needs two stages at different shares; `None` otherwise.
    #[must_use]
    pub fn of(history: &[StageRecord]) -> Option<Self> {
        let points = stage_points(history, |r| r.treatment_p99_ms);
        let projected = fit_at_full_traffic(&points)?;
        Some(Self {
            points,
            projected_p99_ms: projected.max(0.0),
        })
    }

    /// "p99 grew from 50 ms at 5% to 80 ms at 25%: projected 190 ms at 100%".
    #[must_use]
    pub fn describe(&self) -> String {
        describe_fit("p99", &self.points, self.projected_p99_ms, |v| {
            format!("{v:.0} ms")
        })
    }
}

/// How much more one undecided guardrail needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailNeed {
    pub guardrail: String,
    /// The counts each arm has now.
    pub n_treatment: u64,
    pub n_control: u64,
    /// The additional counts per arm a decision would take at the current estimate; `None`
    /// when the estimate sits on the tolerance (no amount is enough to tell).
    pub more: Option<Needed>,
}

/// Where the release is in its current stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageClock {
    /// The stage's position in the template.
    pub stage: usize,
    /// When the stage began (or resumed): its dwell counts from here.
    pub since_ms: i64,
    /// Observations count from here (the end of the warm-up).
    pub observe_from_ms: i64,
    /// Guardrails a person dismissed for this stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dismissed: Vec<String>,
    /// What the treatment measured in the stages done, for the scaling projection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StageRecord>,
}

/// Where a release stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ReleaseState {
    /// Created, not started.
    Pending,
    Running {
        #[serde(flatten)]
        clock: StageClock,
    },
    /// Waiting for approval to enter `stage`.
    WaitingForApproval {
        stage: usize,
        since_ms: i64,
        /// What the treatment measured in the stages done, for the scaling projection.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        history: Vec<StageRecord>,
    },
    /// Not advancing until the reason clears or a person acts; regressions still roll back.
    Holding {
        #[serde(flatten)]
        clock: StageClock,
        held_since_ms: i64,
        reason: HoldReason,
    },
    /// Stopped by a person; nothing is judged until resumed.
    Paused {
        #[serde(flatten)]
        clock: StageClock,
        paused_since_ms: i64,
    },
    /// The treatment was taken away.
    RolledBack {
        stage: usize,
        at_ms: i64,
        /// The guardrail that fired, or `None` when a person rolled back.
        check: Option<GuardrailCheck>,
    },
    Completed {
        at_ms: i64,
    },
    /// Stopped for good by a person, the share left where it was.
    Aborted {
        at_ms: i64,
    },
}

impl ReleaseState {
    /// Whether the release still acts (not finished, rolled back or aborted).
    #[must_use]
    pub fn is_active(&self) -> bool {
        !matches!(
            self,
            Self::RolledBack { .. } | Self::Completed { .. } | Self::Aborted { .. }
        )
    }

    /// The stage the release is at or waiting for, if any.
    #[must_use]
    pub fn stage(&self) -> Option<usize> {
        match self {
            Self::Running { clock } | Self::Holding { clock, .. } | Self::Paused { clock, .. } => {
                Some(clock.stage)
            }
            Self::WaitingForApproval { stage, .. } | Self::RolledBack { stage, .. } => Some(*stage),
            Self::Pending | Self::Completed { .. } | Self::Aborted { .. } => None,
        }
    }

    /// Whether the release may have served the treatment: it has entered a stage. Not while
    /// pending, nor while waiting for approval to enter its first stage.
    #[must_use]
    pub fn has_served(&self) -> bool {
        !matches!(
            self,
            Self::Pending | Self::WaitingForApproval { stage: 0, .. }
        )
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running { .. } => "running",
            Self::WaitingForApproval { .. } => "waiting for approval",
            Self::Holding { .. } => "holding",
            Self::Paused { .. } => "paused",
            Self::RolledBack { .. } => "rolled back",
            Self::Completed { .. } => "completed",
            Self::Aborted { .. } => "aborted",
        }
    }
}

/// What a notification is about (the webhook event types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    StageAdvanced,
    WaitingForApproval,
    Holding,
    RolledBack,
    Completed,
    GuardrailBreached,
}

impl Event {
    /// The webhook event type, such as `release.rolled_back`.
    #[must_use]
    pub fn event_type(self) -> &'static str {
        match self {
            Self::StageAdvanced => "release.stage_advanced",
            Self::WaitingForApproval => "release.waiting_for_approval",
            Self::Holding => "release.holding",
            Self::RolledBack => "release.rolled_back",
            Self::Completed => "release.completed",
            Self::GuardrailBreached => "release.guardrail_breached",
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    /// Serve the treatment to this share (percent) and the control to the rest.
    SetShare {
        percentage: f64,
    },
    /// Serve the control to everyone (and turn the flag off when `disable_flag`).
    RollBack {
        disable_flag: bool,
    },
    Notify {
        event: Event,
    },
}

/// One entry of the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub at_ms: i64,
    /// In words, with the numbers: "rolled back at 5%: error rate …".
    pub message: String,
    /// The guardrails' report the decision rests on, when it rests on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<GuardrailReport>,
}

/// The outcome of [`step`] or [`command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub state: ReleaseState,
    pub actions: Vec<Action>,
    /// Set when something happened worth a line in the decision log.
    pub decision: Option<Decision>,
    /// The guardrails' latest report, when this step judged them (also when nothing changed),
    /// for people watching the stage.
    pub report: Option<GuardrailReport>,
}

impl Transition {
    fn unchanged(state: &ReleaseState, report: Option<GuardrailReport>) -> Self {
        Self {
            state: state.clone(),
            actions: Vec::new(),
            decision: None,
            report,
        }
    }
}

pub(crate) fn percent(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p}%")
    }
}

/// "45 s", "15 min", "2 h 5 min".
fn duration_words(ms: i64) -> String {
    let seconds = ms.max(0) / 1_000;
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3_600 => format!("{} min", seconds / 60),
        _ => format!("{} h {} min", seconds / 3_600, seconds % 3_600 / 60),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One guardrail's verdict in words: "error rate: 1.02% vs 0.49% (regression +0.53, bounds
/// +0.31 to +0.75, tolerance +0.05)".
fn describe(check: &GuardrailCheck) -> String {
    let e = check.verdict.evidence();
    format!(
        "{}: treatment {:.4} vs control {:.4} (estimate {:+.4}, bounds {:+.4} to {:+.4}, tolerance {:+.4}; n = {} / {})",
        check.name,
        e.treatment,
        e.control,
        e.estimate,
        e.lower,
        e.upper,
        e.tolerance,
        thousands(e.n_treatment),
        thousands(e.n_control),
    )
}

fn needs(report: &GuardrailReport, dismissed: &[String]) -> Vec<GuardrailNeed> {
    report
        .checks
        .iter()
        .filter(|c| !c.verdict.is_safe() && !dismissed.contains(&c.name))
        .map(|c| {
            let e = c.verdict.evidence();
            let more = match &c.verdict {
                Verdict::Inconclusive { needed, .. } => *needed,
                Verdict::InsufficientData {
                    minimum_per_arm, ..
                } => Some(Needed {
                    treatment: minimum_per_arm.saturating_sub(e.n_treatment),
                    control: minimum_per_arm.saturating_sub(e.n_control),
                }),
                _ => None,
            };
            GuardrailNeed {
                guardrail: c.name.clone(),
                n_treatment: e.n_treatment,
                n_control: e.n_control,
                more,
            }
        })
        .collect()
}

fn describe_needs(needed: &[GuardrailNeed]) -> String {
    needed
        .iter()
        .map(|n| match n.more {
            Some(more) => format!(
                "{}: {} of ~{} treatment samples",
                n.guardrail,
                thousands(n.n_treatment),
                thousands(n.n_treatment.saturating_add(more.treatment))
            ),
            None => format!(
                "{}: {} treatment samples, estimate on the tolerance",
                n.guardrail,
                thousands(n.n_treatment)
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits for a person's approval to enter stage `index`; the share stays where it is.
fn wait_for_approval(
    index: usize,
    stage: &Stage,
    now_ms: i64,
    why: &str,
    history: Vec<StageRecord>,
) -> Transition {
    Transition {
        state: ReleaseState::WaitingForApproval {
            stage: index,
            since_ms: now_ms,
            history,
        },
        actions: vec![Action::Notify {
            event: Event::WaitingForApproval,
        }],
        decision: Some(Decision {
            at_ms: now_ms,
            message: format!(
                "{why}; waiting for approval to enter stage {} ({})",
                index + 1,
                percent(stage.percentage)
            ),
            report: None,
        }),
        report: None,
    }
}

/// Enters stage `index` now: waits for approval, completes at 100%, or runs it.
fn enter(
    template: &ReleaseTemplate,
    index: usize,
    now_ms: i64,
    approved: bool,
    why: &str,
    history: Vec<StageRecord>,
) -> Transition {
    let Some(stage) = template.stages.get(index) else {
        return complete(now_ms, why);
    };
    if stage.approval && !approved {
        return wait_for_approval(index, stage, now_ms, why, history);
    }
    if stage.percentage >= 100.0 {
        let mut done = complete(now_ms, why);
        done.actions
            .insert(0, Action::SetShare { percentage: 100.0 });
        return done;
    }
    let warmup = i64::try_from(stage.warmup_ms).unwrap_or(i64::MAX);
    Transition {
        state: ReleaseState::Running {
            clock: StageClock {
                stage: index,
                since_ms: now_ms,
                observe_from_ms: now_ms.saturating_add(warmup),
                dismissed: Vec::new(),
                history,
            },
        },
        actions: vec![
            Action::SetShare {
                percentage: stage.percentage,
            },
            Action::Notify {
                event: Event::StageAdvanced,
            },
        ],
        decision: Some(Decision {
            at_ms: now_ms,
            message: format!(
                "{why}; stage {} of {}: {} of traffic to the treatment",
                index + 1,
                template.stages.len(),
                percent(stage.percentage)
            ),
            report: None,
        }),
        report: None,
    }
}

fn complete(now_ms: i64, why: &str) -> Transition {
    Transition {
        state: ReleaseState::Completed { at_ms: now_ms },
        actions: vec![Action::Notify {
            event: Event::Completed,
        }],
        decision: Some(Decision {
            at_ms: now_ms,
            message: format!("{why}; completed: the treatment serves everyone"),
            report: None,
        }),
        report: None,
    }
}

fn roll_back(
    template: &ReleaseTemplate,
    stage: usize,
    now_ms: i64,
    check: Option<GuardrailCheck>,
    message: String,
    report: Option<GuardrailReport>,
) -> Transition {
    Transition {
        state: ReleaseState::RolledBack {
            stage,
            at_ms: now_ms,
            check,
        },
        actions: vec![
            Action::RollBack {
                disable_flag: template.rollback_disables_flag,
            },
            Action::Notify {
                event: Event::RolledBack,
            },
        ],
        decision: Some(Decision {
            at_ms: now_ms,
            message,
            report: report.clone(),
        }),
        report,
    }
}

fn hold(
    clock: &StageClock,
    now_ms: i64,
    reason: HoldReason,
    event: Event,
    message: String,
    report: Option<GuardrailReport>,
) -> Transition {
    Transition {
        state: ReleaseState::Holding {
            clock: clock.clone(),
            held_since_ms: now_ms,
            reason,
        },
        actions: vec![Action::Notify { event }],
        decision: Some(Decision {
            at_ms: now_ms,
            message,
            report: report.clone(),
        }),
        report,
    }
}

/// One tick of the controller: judges the current stage on `observations` (cumulative since
/// the stage's `observe_from_ms`; `Err` with the reason when the metric source failed).
#[must_use]
pub fn step(
    template: &ReleaseTemplate,
    state: &ReleaseState,
    observations: Result<&Observations, &str>,
    now_ms: i64,
) -> Transition {
    let (clock, held) = match state {
        ReleaseState::Running { clock } => (clock, None),
        ReleaseState::Holding { clock, reason, .. } => (clock, Some(reason)),
        _ => return Transition::unchanged(state, None),
    };
    let Some(stage) = template.stages.get(clock.stage) else {
        return complete(now_ms, "the template has no stage left");
    };
    let at = percent(stage.percentage);
    if now_ms < clock.observe_from_ms {
        return Transition::unchanged(state, None);
    }
    let observations = match observations {
        Ok(observations) => observations,
        Err(message) => {
            if matches!(held, Some(HoldReason::SourceError { .. })) {
                return Transition::unchanged(state, None);
            }
            return hold(
                clock,
                now_ms,
                HoldReason::SourceError {
                    message: message.to_owned(),
                },
                Event::Holding,
                format!(
                    "held at {at}: the metric source failed ({message}); never rolling back on missing data"
                ),
                None,
            );
        }
    };
    // A person accepted the split: the test would keep firing on the same data.
    let srm_accepted = clock.dismissed.iter().any(|d| d == SRM);
    let plan = template.stage_guardrails();
    let carried: Vec<StageEvidence> = clock
        .history
        .iter()
        .flat_map(|record| record.evidence.iter().cloned())
        .collect();
    let widen_to = template
        .stages
        .get(clock.stage + 1)
        .map_or(1.0, |next| next.percentage / 100.0);
    let report = evaluate_release(&plan, &carried, observations, widen_to);
    if report.srm.mismatch && !srm_accepted {
        if matches!(held, Some(HoldReason::SampleRatioMismatch { .. })) {
            return Transition::unchanged(state, Some(report));
        }
        let srm = report.srm.clone();
        return hold(
            clock,
            now_ms,
            HoldReason::SampleRatioMismatch { check: srm.clone() },
            Event::Holding,
            format!(
                "held at {at}: sample ratio mismatch, the treatment has {:.2}% of exposures where {:.2}% were configured ({} / {}); no verdict can be trusted until the split is fixed",
                srm.observed_share * 100.0,
                srm.expected_share * 100.0,
                thousands(srm.n_treatment),
                thousands(srm.n_control),
            ),
            Some(report),
        );
    }
    let active = |c: &&GuardrailCheck| !clock.dismissed.contains(&c.name);
    let regressed: Vec<&GuardrailCheck> = report.regressed().filter(active).collect();
    if let Some(first) = regressed
        .iter()
        .find(|c| !template.hold_only.contains(&c.name))
    {
        let message = format!("rolled back at {at}: {}", describe(first));
        let check = (*first).clone();
        return roll_back(
            template,
            clock.stage,
            now_ms,
            Some(check),
            message,
            Some(report),
        );
    }
    if let Some(first) = regressed.first() {
        if matches!(held, Some(HoldReason::GuardrailBreached { .. })) {
            return Transition::unchanged(state, Some(report));
        }
        let message = format!(
            "held at {at}: {} regressed; dismiss it to go on, or roll back",
            describe(first)
        );
        let check = (*first).clone();
        return hold(
            clock,
            now_ms,
            HoldReason::GuardrailBreached { check },
            Event::GuardrailBreached,
            message,
            Some(report),
        );
    }
    // Nothing regressed. A hold for the source or the split clears on its own; one for a
    // breach waits for a person.
    if matches!(held, Some(HoldReason::GuardrailBreached { .. })) {
        return Transition::unchanged(state, Some(report));
    }
    let dwell = i64::try_from(stage.dwell_ms).unwrap_or(i64::MAX);
    let dwelt = now_ms >= clock.since_ms.saturating_add(dwell);
    let safe = !report.srm.mismatch || srm_accepted;
    let all_safe = safe
        && report
            .checks
            .iter()
            .filter(|c| !clock.dismissed.contains(&c.name))
            .all(|c| c.verdict.is_safe());
    if dwelt && all_safe {
        let mut history = clock.history.clone();
        let mut evidence = stage_evidence(&plan, observations);
        // A dismissed guardrail starts afresh: its regression must not roll back the next stage.
        for record in &mut history {
            record
                .evidence
                .retain(|e| !clock.dismissed.contains(&e.guardrail));
        }
        evidence.retain(|e| !clock.dismissed.contains(&e.guardrail));
        history.push(StageRecord {
            percentage: stage.percentage,
            treatment_p99_ms: observations.treatment.latency.quantile(0.99),
            evidence,
            metrics: template
                .projections
                .iter()
                .filter_map(|p| {
                    let sums = observations.treatment.metrics.get(&p.metric)?;
                    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
                    let mean = sums.sum / sums.count as f64;
                    (sums.count > 0 && mean.is_finite()).then(|| (p.metric.clone(), mean))
                })
                .collect(),
        });
        let projection = Projection::of(&history);
        if let (Some(projection), Some(limit)) = (&projection, template.p99_limit_ms)
            && projection.projected_p99_ms > limit
        {
            if matches!(held, Some(HoldReason::ProjectedLatency { .. })) {
                return Transition::unchanged(state, Some(report));
            }
            let message = format!(
                "held at {at}: {}, above the {limit:.0} ms limit",
                projection.describe()
            );
            return hold(
                clock,
                now_ms,
                HoldReason::ProjectedLatency {
                    projection: projection.clone(),
                },
                Event::Holding,
                message,
                Some(report),
            );
        }
        let metric_projections: Vec<(MetricProjection, f64)> = template
            .projections
            .iter()
            .filter_map(|p| Some((MetricProjection::of(&history, &p.metric)?, p.limit)))
            .collect();
        if let Some((projection, limit)) = metric_projections
            .iter()
            .find(|(projection, limit)| projection.projected > *limit)
        {
            if matches!(held, Some(HoldReason::ProjectedMetric { projection: p, .. })
                if p.metric == projection.metric)
            {
                return Transition::unchanged(state, Some(report));
            }
            let message = format!(
                "held at {at}: {}, above the limit of {}",
                projection.describe(),
                metric_number(*limit)
            );
            return hold(
                clock,
                now_ms,
                HoldReason::ProjectedMetric {
                    projection: projection.clone(),
                    limit: *limit,
                },
                Event::Holding,
                message,
                Some(report),
            );
        }
        let mut why = format!(
            "advanced from {at} after {}: every guardrail safe",
            duration_words(now_ms - clock.since_ms)
        );
        let described = projection
            .iter()
            .map(Projection::describe)
            .chain(metric_projections.iter().map(|(p, _)| p.describe()));
        for projection in described {
            why.push_str("; ");
            why.push_str(&projection);
        }
        let mut next = enter(template, clock.stage + 1, now_ms, false, &why, history);
        if let Some(decision) = &mut next.decision {
            decision.report = Some(report.clone());
        }
        next.report = Some(report);
        return next;
    }
    let recovered = matches!(
        held,
        Some(HoldReason::SourceError { .. } | HoldReason::SampleRatioMismatch { .. })
    );
    let extension = i64::try_from(template.max_extension_ms).unwrap_or(i64::MAX);
    let overdue = now_ms
        >= clock
            .since_ms
            .saturating_add(dwell)
            .saturating_add(extension);
    if dwelt && overdue {
        if matches!(held, Some(HoldReason::InsufficientData { .. })) {
            return Transition::unchanged(state, Some(report));
        }
        let needed = needs(&report, &clock.dismissed);
        let message = format!(
            "held at {at}: not enough data to decide after the dwell and its extension ({})",
            describe_needs(&needed)
        );
        return hold(
            clock,
            now_ms,
            HoldReason::InsufficientData { needed },
            Event::Holding,
            message,
            Some(report),
        );
    }
    if recovered {
        return Transition {
            state: ReleaseState::Running {
                clock: clock.clone(),
            },
            actions: Vec::new(),
            decision: Some(Decision {
                at_ms: now_ms,
                message: format!("running again at {at}: the hold's cause cleared"),
                report: Some(report.clone()),
            }),
            report: Some(report),
        };
    }
    Transition::unchanged(state, Some(report))
}

/// The name under which dismissing a sample ratio mismatch is recorded.
pub const SRM: &str = "sample ratio";

/// What a person can do to a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "command",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Command {
    Start,
    Pause,
    Resume,
    /// Move to the next stage now, whatever the guardrails say (an approval gate still waits).
    Skip,
    Approve,
    /// Ignore a guardrail (or the sample ratio test, named [`SRM`]) for the rest of the stage.
    Dismiss {
        guardrail: String,
    },
    RollBack,
    Abort,
    /// Serve the treatment to everyone now.
    Complete,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Skip => "skip",
            Self::Approve => "approve",
            Self::Dismiss { .. } => "dismiss",
            Self::RollBack => "roll back",
            Self::Abort => "abort",
            Self::Complete => "complete",
        }
    }
}

/// Why a command cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandRefused {
    pub command: String,
    pub state: String,
    pub message: String,
}

impl std::fmt::Display for CommandRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandRefused {}

/// Starts a pending release that must be approved before it serves anything: it waits for
/// approval to enter its first stage, whatever that stage's own gate says, and [`Command::Approve`]
/// then enters it. The server uses this where a person may not widen exposure alone (an
/// environment that requires approval); `why` opens the decision (who started it, and why it
/// waits).
///
/// # Errors
/// [`CommandRefused`] unless the release is pending.
pub fn start_awaiting_approval(
    template: &ReleaseTemplate,
    state: &ReleaseState,
    now_ms: i64,
    why: &str,
) -> Result<Transition, CommandRefused> {
    let refuse = |message: &str| CommandRefused {
        command: Command::Start.name().to_owned(),
        state: state.name().to_owned(),
        message: message.to_owned(),
    };
    if !matches!(state, ReleaseState::Pending) {
        return Err(refuse(if state.is_active() {
            "the release has already started"
        } else {
            "the release is finished; nothing can start it"
        }));
    }
    let first = template
        .stages
        .first()
        .ok_or_else(|| refuse("the template has no stage to start"))?;
    Ok(wait_for_approval(0, first, now_ms, why, Vec::new()))
}

/// Applies a person's command.
///
/// # Errors
/// [`CommandRefused`] when the command makes no sense in the current state (approving a
/// release that waits for nothing, resuming a running one, anything on a finished one), or
/// dismisses a guardrail the template does not have.
pub fn command(
    template: &ReleaseTemplate,
    state: &ReleaseState,
    command: &Command,
    now_ms: i64,
) -> Result<Transition, CommandRefused> {
    let refuse = |message: String| CommandRefused {
        command: command.name().to_owned(),
        state: state.name().to_owned(),
        message,
    };
    let done = |message: String| -> Result<Transition, CommandRefused> { Err(refuse(message)) };
    if !state.is_active() {
        return done(format!(
            "the release is {}; nothing can {} it",
            state.name(),
            command.name()
        ));
    }
    let clock = match state {
        ReleaseState::Running { clock }
        | ReleaseState::Holding { clock, .. }
        | ReleaseState::Paused { clock, .. } => Some(clock),
        _ => None,
    };
    let note = |message: String, state: ReleaseState, actions: Vec<Action>| Transition {
        state,
        actions,
        decision: Some(Decision {
            at_ms: now_ms,
            message,
            report: None,
        }),
        report: None,
    };
    match command {
        Command::Start => match state {
            ReleaseState::Pending => Ok(enter(template, 0, now_ms, false, "started", Vec::new())),
            _ => done("the release has already started".into()),
        },
        Command::Approve => match state {
            ReleaseState::WaitingForApproval { stage, history, .. } => Ok(enter(
                template,
                *stage,
                now_ms,
                true,
                "approved",
                history.clone(),
            )),
            _ => done("the release is not waiting for approval".into()),
        },
        Command::Pause => match clock {
            Some(clock) if !matches!(state, ReleaseState::Paused { .. }) => Ok(note(
                "paused by a person".into(),
                ReleaseState::Paused {
                    clock: clock.clone(),
                    paused_since_ms: now_ms,
                },
                Vec::new(),
            )),
            Some(_) => done("the release is already paused".into()),
            None => done("only a running or holding release can be paused".into()),
        },
        Command::Resume => match state {
            ReleaseState::Paused { clock, .. } | ReleaseState::Holding { clock, .. } => {
                // The dwell starts again; what was observed still counts.
                let mut clock = clock.clone();
                clock.since_ms = now_ms;
                if let ReleaseState::Holding {
                    reason: HoldReason::SampleRatioMismatch { .. },
                    ..
                } = state
                {
                    clock.dismissed.push(SRM.to_owned());
                }
                Ok(note(
                    "resumed by a person; the stage's dwell starts again".into(),
                    ReleaseState::Running { clock },
                    Vec::new(),
                ))
            }
            _ => done("only a paused or holding release can be resumed".into()),
        },
        Command::Skip => match clock {
            Some(clock) => Ok(enter(
                template,
                clock.stage + 1,
                now_ms,
                false,
                "a person skipped the rest of the stage",
                // A skipped stage measured nothing worth projecting from.
                clock.history.clone(),
            )),
            None => done("only a running, holding or paused release can skip a stage".into()),
        },
        Command::Dismiss { guardrail } => {
            let known = guardrail == SRM
                || template
                    .guardrails
                    .guardrails
                    .iter()
                    .any(|g| &g.name == guardrail);
            if !known {
                return done(format!("the template has no guardrail named `{guardrail}`"));
            }
            match clock {
                Some(clock) => {
                    let mut clock = clock.clone();
                    if !clock.dismissed.contains(guardrail) {
                        clock.dismissed.push(guardrail.clone());
                    }
                    let next = match state {
                        ReleaseState::Paused {
                            paused_since_ms, ..
                        } => ReleaseState::Paused {
                            clock,
                            paused_since_ms: *paused_since_ms,
                        },
                        _ => ReleaseState::Running { clock },
                    };
                    Ok(note(
                        format!("a person dismissed `{guardrail}` for the rest of the stage"),
                        next,
                        Vec::new(),
                    ))
                }
                None => done(
                    "only a running, holding or paused release has guardrails to dismiss".into(),
                ),
            }
        }
        Command::RollBack => {
            let stage = state.stage().unwrap_or(0);
            if !state.has_served() {
                // There is nothing to take back: serving the control to everyone (let alone
                // turning the flag off) would change what users get for a release that never
                // changed it.
                return Ok(note(
                    "rolled back by a person before it served the treatment; the flag serves \
                     as before"
                        .into(),
                    ReleaseState::RolledBack {
                        stage,
                        at_ms: now_ms,
                        check: None,
                    },
                    vec![Action::Notify {
                        event: Event::RolledBack,
                    }],
                ));
            }
            Ok(roll_back(
                template,
                stage,
                now_ms,
                None,
                "rolled back by a person".into(),
                None,
            ))
        }
        Command::Abort => Ok(note(
            "aborted by a person; the share stays where it is".into(),
            ReleaseState::Aborted { at_ms: now_ms },
            Vec::new(),
        )),
        Command::Complete => {
            let mut done = complete(now_ms, "completed by a person");
            done.actions
                .insert(0, Action::SetShare { percentage: 100.0 });
            Ok(done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_awaiting_approval_serves_nothing_until_approved() {
        let template = ReleaseTemplate::builtin();
        let waiting =
            start_awaiting_approval(&template, &ReleaseState::Pending, 1_000, "started").unwrap();
        assert!(matches!(
            waiting.state,
            ReleaseState::WaitingForApproval { stage: 0, .. }
        ));
        assert!(
            !waiting
                .actions
                .iter()
                .any(|a| matches!(a, Action::SetShare { .. })),
            "no share before the approval: {:?}",
            waiting.actions
        );
        let approved = command(&template, &waiting.state, &Command::Approve, 2_000).unwrap();
        assert!(matches!(
            approved.state,
            ReleaseState::Running { ref clock } if clock.stage == 0
        ));
        assert!(
            approved
                .actions
                .contains(&Action::SetShare { percentage: 1.0 })
        );
        let again = start_awaiting_approval(&template, &approved.state, 3_000, "started");
        assert_eq!(
            again.unwrap_err().message,
            "the release has already started"
        );
    }

    /// The built-in template with the kill switch on rollback and an approval gate at 5%.
    fn kill_switch_template() -> ReleaseTemplate {
        let mut template = ReleaseTemplate::builtin();
        template.rollback_disables_flag = true;
        template.stages[1].approval = true;
        template
    }

    #[test]
    fn rolling_back_before_the_first_stage_ends_the_release_without_touching_the_flag() {
        let template = kill_switch_template();
        let waiting =
            start_awaiting_approval(&template, &ReleaseState::Pending, 1_000, "started").unwrap();
        let mut gated_first = template.clone();
        gated_first.stages[0].approval = true;
        let gated = command(&gated_first, &ReleaseState::Pending, &Command::Start, 1_000).unwrap();
        assert!(matches!(
            gated.state,
            ReleaseState::WaitingForApproval { stage: 0, .. }
        ));
        for (template, state) in [
            (&template, &waiting.state),
            (&gated_first, &gated.state),
            (&template, &ReleaseState::Pending),
        ] {
            let rolled = command(template, state, &Command::RollBack, 2_000).unwrap();
            assert_eq!(
                rolled.state,
                ReleaseState::RolledBack {
                    stage: 0,
                    at_ms: 2_000,
                    check: None
                },
                "from {state:?}"
            );
            assert_eq!(
                rolled.actions,
                vec![Action::Notify {
                    event: Event::RolledBack
                }],
                "no share and no kill switch from {state:?}"
            );
            assert!(
                rolled
                    .decision
                    .is_some_and(|d| d.message.contains("before it served the treatment"))
            );
        }
    }

    #[test]
    fn rolling_back_at_a_later_gate_serves_the_control_and_turns_the_flag_off() {
        let template = kill_switch_template();
        let running = command(&template, &ReleaseState::Pending, &Command::Start, 1_000).unwrap();
        let gated = command(&template, &running.state, &Command::Skip, 2_000).unwrap();
        assert!(matches!(
            gated.state,
            ReleaseState::WaitingForApproval { stage: 1, .. }
        ));
        for state in [&running.state, &gated.state] {
            let rolled = command(&template, state, &Command::RollBack, 3_000).unwrap();
            assert!(matches!(rolled.state, ReleaseState::RolledBack { .. }));
            assert_eq!(
                rolled.actions,
                vec![
                    Action::RollBack { disable_flag: true },
                    Action::Notify {
                        event: Event::RolledBack
                    }
                ],
                "from {state:?}"
            );
        }
    }
}
