//! What the guardrails read: their definitions, the plan that groups them with its α budget,
//! and the cumulative per-arm observations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sketch::LatencySketch;

/// A custom metric of one arm: count, sum and sum of squares of its (winsorised) values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricSums {
    pub count: u64,
    pub sum: f64,
    pub sum_of_squares: f64,
}

impl MetricSums {
    /// Adds one value, winsorised at `cap`: values above it count as `cap`, values below
    /// `-cap` as `-cap`, and NaN not at all. The SDK records every custom metric this way with
    /// the bound configured for it, so one outlier cannot rule the sums and the normal
    /// approximation of the mean holds early.
    pub fn record_capped(&mut self, value: f64, cap: f64) {
        if value.is_nan() {
            return;
        }
        let cap = if cap.is_nan() {
            f64::INFINITY
        } else {
            cap.abs()
        };
        let value = value.clamp(-cap, cap);
        self.count = self.count.saturating_add(1);
        self.sum += value;
        self.sum_of_squares += value * value;
    }

    /// Adds the sums of another interval or another sender.
    pub fn merge(&mut self, other: &Self) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.sum_of_squares += other.sum_of_squares;
    }

    /// The mean and the (n − 1) sample variance, or `None` below two values.
    #[must_use]
    pub fn mean_and_variance(&self) -> Option<(f64, f64)> {
        if self.count < 2 {
            return None;
        }
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
        let n = self.count as f64;
        let mean = self.sum / n;
        let variance = ((self.sum_of_squares - self.sum * mean) / (n - 1.0)).max(0.0);
        Some((mean, variance))
    }
}

/// One arm's requests and, of those, the failed ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCounts {
    pub requests: u64,
    pub errors: u64,
}

impl ErrorCounts {
    #[must_use]
    pub fn new(requests: u64, errors: u64) -> Self {
        Self { requests, errors }
    }

    pub(super) fn of(arm: &ArmObservations) -> Self {
        Self::new(arm.requests, arm.errors)
    }

    /// `(requests, errors)`, with errors capped at the requests so a bad sender cannot make a
    /// rate above one.
    pub(super) fn clamped(self) -> (u64, u64) {
        (self.requests, self.errors.min(self.requests))
    }
}

/// One arm's cumulative counts since the stage's warm-up ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmObservations {
    /// Units (users, or whatever the flag buckets by) that were served this arm's variant. The
    /// sample ratio test treats each as an independent draw of the split, so these should be
    /// distinct units, not evaluation counts: a user evaluated a hundred times moves the count
    /// by a hundred at once, which the test would read as a mismatch.
    pub exposures: u64,
    /// Requests (outcomes) recorded for this arm.
    pub requests: u64,
    /// Of those requests, the failed ones.
    pub errors: u64,
    /// The requests' latencies.
    #[serde(default)]
    pub latency: LatencySketch,
    /// Custom metrics by name.
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricSums>,
}

/// What the guardrails read: both arms' cumulative counts under one configured split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observations {
    pub control: ArmObservations,
    pub treatment: ArmObservations,
    /// The configured share of exposures that go to the treatment among the two arms.
    pub expected_treatment_share: f64,
}

/// What one guardrail took from one finished stage of a release, so that its test goes on
/// across the stages instead of starting afresh (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageEvidence {
    /// The guardrail's name.
    pub guardrail: String,
    /// Error-rate guardrails and the backstop: each arm's requests and errors in the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<StageCounts>,
    /// Latency and metric guardrails: the stage's regression estimate and its variance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast: Option<StageContrast>,
}

/// Both arms' requests and errors in one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageCounts {
    pub control: ErrorCounts,
    pub treatment: ErrorCounts,
}

/// One stage's estimate of a guardrail's regression (positive is worse).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageContrast {
    /// The treatment's and the control's measurements (shares, or means).
    pub treatment: f64,
    pub control: f64,
    pub estimate: f64,
    pub variance: f64,
    pub n_treatment: u64,
    pub n_control: u64,
}

/// Which way a custom metric gets worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    HigherIsWorse,
    LowerIsWorse,
}

/// How much worse than the control the treatment may be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Tolerance {
    /// In the metric's units.
    Absolute(f64),
    /// A fraction of the control's value (0.1 = 10% worse).
    Relative(f64),
}

/// One guardrail's rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Guardrail {
    /// Errors per request, at most `max_relative_increase` above the control's rate, or
    /// `min_absolute_increase` above it, whichever allows more: 10% of a 0.1% rate is one
    /// failure in 100,000 requests, which no rollout can tell from noise, so a small absolute
    /// floor (0.05 percentage points by default) keeps low error rates judgeable.
    ErrorRate {
        max_relative_increase: f64,
        #[serde(default)]
        min_absolute_increase: f64,
    },
    /// Requests slower than `(1 + max_relative_increase)` times the control's `quantile`.
    Latency {
        quantile: f64,
        max_relative_increase: f64,
    },
    /// The mean of a custom metric.
    Metric {
        metric: String,
        direction: Direction,
        tolerance: Tolerance,
    },
    /// The absolute backstop: the treatment's error rate at most `limit`.
    ErrorRateLimit { limit: f64 },
}

/// A named guardrail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailSpec {
    pub name: String,
    #[serde(flatten)]
    pub guardrail: Guardrail,
}

/// The settings every test shares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestSettings {
    /// The α this one test may spend.
    pub alpha: f64,
    /// Below this count in either arm, the verdict is `InsufficientData`.
    pub min_per_arm: u64,
    /// The smaller arm's count at which the confidence sequence is tightest.
    pub tuned_for: u64,
}

/// The guardrails of a stage and their α budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailPlan {
    pub guardrails: Vec<GuardrailSpec>,
    /// The chance of any false `Regressed` over the stage, split evenly across the guardrails.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The chance of a false sample ratio mismatch over the stage.
    #[serde(default = "default_alpha")]
    pub srm_alpha: f64,
    /// The Dirichlet prior's concentration κ of the sample ratio test.
    #[serde(default = "default_srm_concentration")]
    pub srm_concentration: f64,
    #[serde(default = "default_min_per_arm")]
    pub min_per_arm: u64,
    #[serde(default = "default_tuned_for")]
    pub tuned_for: u64,
}

/// The built-in error-rate guardrail's absolute floor: 0.05 percentage points.
pub const DEFAULT_MIN_ABSOLUTE_INCREASE: f64 = 0.000_5;

fn default_alpha() -> f64 {
    0.01
}

fn default_srm_concentration() -> f64 {
    1_000.0
}

fn default_min_per_arm() -> u64 {
    100
}

fn default_tuned_for() -> u64 {
    10_000
}

impl GuardrailPlan {
    /// A plan with the default α (1%), minimum (100 per arm) and tuning (10,000).
    #[must_use]
    pub fn new(guardrails: Vec<GuardrailSpec>) -> Self {
        Self {
            guardrails,
            alpha: default_alpha(),
            srm_alpha: default_alpha(),
            srm_concentration: default_srm_concentration(),
            min_per_arm: default_min_per_arm(),
            tuned_for: default_tuned_for(),
        }
    }

    /// The built-in guardrails of the default release template: the error rate at most 10%
    /// above the control's or 0.05 percentage points, whichever allows more, and p95 and p99
    /// latency at most 20% above the control's, with the default α of 1%.
    #[must_use]
    pub fn builtin() -> Self {
        let spec = |name: &str, guardrail| GuardrailSpec {
            name: name.to_owned(),
            guardrail,
        };
        let latency = |quantile| Guardrail::Latency {
            quantile,
            max_relative_increase: 0.2,
        };
        Self::new(vec![
            spec(
                "error rate",
                Guardrail::ErrorRate {
                    max_relative_increase: 0.1,
                    min_absolute_increase: DEFAULT_MIN_ABSOLUTE_INCREASE,
                },
            ),
            spec("p95 latency", latency(0.95)),
            spec("p99 latency", latency(0.99)),
        ])
    }

    /// Every problem of the plan at once, each with its JSON pointer; empty when it is valid.
    #[must_use]
    pub fn problems(&self) -> Vec<PlanProblem> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: &str| {
            problems.push(PlanProblem {
                path,
                message: message.to_owned(),
            });
        };
        let is_probability = |x: f64| x > 0.0 && x < 1.0;
        if !is_probability(self.alpha) {
            problem("/alpha".into(), "must be between 0 and 1");
        }
        if !is_probability(self.srm_alpha) {
            problem("/srmAlpha".into(), "must be between 0 and 1");
        }
        if !(self.srm_concentration > 0.0 && self.srm_concentration.is_finite()) {
            problem("/srmConcentration".into(), "must be positive");
        }
        if self.tuned_for == 0 {
            problem("/tunedFor".into(), "must be positive");
        }
        for (i, spec) in self.guardrails.iter().enumerate() {
            let at = |field: &str| format!("/guardrails/{i}/{field}");
            let nonnegative = |x: f64| x >= 0.0 && x.is_finite();
            match &spec.guardrail {
                Guardrail::ErrorRate {
                    max_relative_increase,
                    min_absolute_increase,
                } => {
                    if !nonnegative(*max_relative_increase) {
                        problem(at("maxRelativeIncrease"), "must be zero or positive");
                    }
                    if !(nonnegative(*min_absolute_increase) && *min_absolute_increase < 1.0) {
                        problem(at("minAbsoluteIncrease"), "must be at least 0 and below 1");
                    }
                }
                Guardrail::Latency {
                    quantile,
                    max_relative_increase,
                } => {
                    if !is_probability(*quantile) {
                        problem(at("quantile"), "must be between 0 and 1");
                    }
                    if !nonnegative(*max_relative_increase) {
                        problem(at("maxRelativeIncrease"), "must be zero or positive");
                    }
                }
                Guardrail::Metric { tolerance, .. } => {
                    let (Tolerance::Absolute(t) | Tolerance::Relative(t)) = tolerance;
                    if !nonnegative(*t) {
                        problem(at("tolerance"), "must be zero or positive");
                    }
                }
                Guardrail::ErrorRateLimit { limit } if !is_probability(*limit) => {
                    problem(at("limit"), "must be between 0 and 1");
                }
                _ => {}
            }
        }
        problems
    }

    pub(super) fn settings(&self) -> TestSettings {
        #[allow(clippy::cast_precision_loss, reason = "a handful of guardrails")]
        let k = self.guardrails.len().max(1) as f64;
        TestSettings {
            alpha: self.alpha / k,
            min_per_arm: self.min_per_arm,
            tuned_for: self.tuned_for,
        }
    }
}

/// One problem of a [`GuardrailPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanProblem {
    /// A JSON pointer into the plan.
    pub path: String,
    pub message: String,
}
