//! Guardrail definitions, the observations they read, their verdicts, and [`evaluate`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::sequential::{
    binomial_mixture_ln_e, dirichlet_multinomial_ln_e, normal_mixture_half_width,
    sample_multiple_needed,
};
use crate::sketch::{LatencySketch, bucket_upper_edge};

/// Below this many errors expected in the smaller arm (at the pooled rate), the error-rate
/// guardrail uses the exact conditional test rather than the normal approximation.
pub const RARE_EXPECTED_ERRORS: f64 = 10.0;

/// The rate ratios the rare-error bounds are searched within.
const RATIO_RANGE: (f64, f64) = (1e-3, 1e3);

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
        self.count += 1;
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
        let n = as_f64(self.count);
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

    fn of(arm: &ArmObservations) -> Self {
        Self::new(arm.requests, arm.errors)
    }

    /// `(requests, errors)`, with errors capped at the requests so a bad sender cannot make a
    /// rate above one.
    fn clamped(self) -> (u64, u64) {
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
    /// Errors per request, at most `max_relative_increase` above the control's rate.
    ErrorRate { max_relative_increase: f64 },
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
    /// above the control's, and p95 and p99 latency at most 20% above the control's, with the
    /// default α of 1%.
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
                } if !nonnegative(*max_relative_increase) => {
                    problem(at("maxRelativeIncrease"), "must be zero or positive");
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

    fn settings(&self) -> TestSettings {
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

/// What the evidence's estimate and bounds measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Scale {
    /// Treatment minus control, in the metric's units, signed so that positive is worse.
    Difference,
    /// The treatment's error rate over the control's.
    RateRatio,
    /// The treatment's error rate alone.
    Rate,
}

/// Which test produced the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Method {
    /// The normal-mixture confidence sequence.
    NormalMixture,
    /// The beta-binomial e-process on the treatment's share of the errors.
    ConditionalBinomial,
    /// The beta-binomial e-process on the treatment's error rate alone.
    Binomial,
}

/// The numbers behind a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    pub method: Method,
    pub scale: Scale,
    /// The treatment's measurement: a rate, a share of slow requests, or a mean.
    pub treatment: f64,
    /// The control's measurement, in the same units.
    pub control: f64,
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    /// The regression allowed, on the same scale as the estimate.
    pub tolerance: f64,
    /// The count each arm's measurement rests on (requests, or a metric's values).
    pub n_treatment: u64,
    pub n_control: u64,
    /// The α this guardrail spent.
    pub alpha: f64,
    /// The e-value against "no worse than the tolerance", when an e-process decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_regressed: Option<f64>,
    /// The e-value against "at least the tolerance worse", when an e-process decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_safe: Option<f64>,
    /// For latency, the treatment's threshold in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_ms: Option<f64>,
}

/// The additional counts per arm a decision would take if the current estimate held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Needed {
    pub treatment: u64,
    pub control: u64,
}

/// One guardrail's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "outcome",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Verdict {
    /// The lower bound of the regression is above the tolerance: roll back.
    Regressed { evidence: Evidence },
    /// The upper bound of the regression is below the tolerance.
    Safe { evidence: Evidence },
    /// Neither yet; `needed` is `None` when the current estimate sits on the tolerance.
    Inconclusive {
        evidence: Evidence,
        needed: Option<Needed>,
    },
    /// An arm has fewer than `minimum_per_arm` counts.
    InsufficientData {
        evidence: Evidence,
        minimum_per_arm: u64,
    },
}

impl Verdict {
    #[must_use]
    pub fn evidence(&self) -> &Evidence {
        match self {
            Self::Regressed { evidence }
            | Self::Safe { evidence }
            | Self::Inconclusive { evidence, .. }
            | Self::InsufficientData { evidence, .. } => evidence,
        }
    }

    fn evidence_mut(&mut self) -> &mut Evidence {
        let (Self::Regressed { evidence }
        | Self::Safe { evidence }
        | Self::Inconclusive { evidence, .. }
        | Self::InsufficientData { evidence, .. }) = self;
        evidence
    }

    #[must_use]
    pub fn is_regressed(&self) -> bool {
        matches!(self, Self::Regressed { .. })
    }

    #[must_use]
    pub fn is_safe(&self) -> bool {
        matches!(self, Self::Safe { .. })
    }
}

/// The sample ratio test's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SrmCheck {
    /// `e ≥ 1/α`: the split is not the configured one, so no verdict can be trusted.
    pub mismatch: bool,
    pub expected_share: f64,
    pub observed_share: f64,
    pub n_treatment: u64,
    pub n_control: u64,
    pub e_value: f64,
    pub alpha: f64,
}

/// One guardrail with its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailCheck {
    pub name: String,
    pub guardrail: Guardrail,
    pub verdict: Verdict,
}

/// Every guardrail's verdict and the sample ratio test, at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailReport {
    pub alpha_per_guardrail: f64,
    pub srm: SrmCheck,
    pub checks: Vec<GuardrailCheck>,
}

impl GuardrailReport {
    /// The guardrails that call for a rollback.
    pub fn regressed(&self) -> impl Iterator<Item = &GuardrailCheck> {
        self.checks
            .iter()
            .filter(|check| check.verdict.is_regressed())
    }

    /// Whether every guardrail is `Safe` and the split matches: the stage may advance.
    #[must_use]
    pub fn all_safe(&self) -> bool {
        !self.srm.mismatch && self.checks.iter().all(|check| check.verdict.is_safe())
    }
}

/// Evaluates every guardrail of `plan` on `observations`, each with `α/k`, and the sample ratio.
#[must_use]
pub fn evaluate(plan: &GuardrailPlan, observations: &Observations) -> GuardrailReport {
    let settings = plan.settings();
    let (control, treatment) = (&observations.control, &observations.treatment);
    let checks = plan
        .guardrails
        .iter()
        .map(|spec| {
            let verdict = match &spec.guardrail {
                Guardrail::ErrorRate {
                    max_relative_increase,
                } => error_rate(
                    ErrorCounts::of(control),
                    ErrorCounts::of(treatment),
                    *max_relative_increase,
                    &settings,
                ),
                Guardrail::Latency {
                    quantile,
                    max_relative_increase,
                } => latency(
                    &control.latency,
                    &treatment.latency,
                    *quantile,
                    *max_relative_increase,
                    &settings,
                ),
                Guardrail::Metric {
                    metric,
                    direction,
                    tolerance,
                } => {
                    let sums = |arm: &ArmObservations| {
                        arm.metrics.get(metric).copied().unwrap_or_default()
                    };
                    metric_mean(
                        &sums(control),
                        &sums(treatment),
                        *direction,
                        *tolerance,
                        &settings,
                    )
                }
                Guardrail::ErrorRateLimit { limit } => {
                    error_rate_limit(ErrorCounts::of(treatment), *limit, &settings)
                }
            };
            GuardrailCheck {
                name: spec.name.clone(),
                guardrail: spec.guardrail.clone(),
                verdict,
            }
        })
        .collect();
    GuardrailReport {
        alpha_per_guardrail: settings.alpha,
        srm: sample_ratio(
            control.exposures,
            treatment.exposures,
            observations.expected_treatment_share,
            plan.srm_alpha,
            plan.srm_concentration,
        ),
        checks,
    }
}

/// The error-rate guardrail on each arm's requests and errors: the treatment's rate may be at most
/// `max_relative_increase` above the control's.
#[must_use]
pub fn error_rate(
    control: ErrorCounts,
    treatment: ErrorCounts,
    max_relative_increase: f64,
    settings: &TestSettings,
) -> Verdict {
    let (n_c, x_c) = control.clamped();
    let (n_t, x_t) = treatment.clamped();
    let r = max_relative_increase;
    let (p_t, p_c) = (ratio(x_t, n_t), ratio(x_c, n_c));
    let pooled = ratio(x_t + x_c, n_t + n_c);
    let half = TestSettings {
        alpha: settings.alpha / 2.0,
        ..*settings
    };
    let contrast = Contrast {
        treatment: p_t,
        control: p_c,
        estimate: p_t - p_c,
        tolerance: r * p_c,
        variance: smoothed_variance(x_t, n_t) + (1.0 + r).powi(2) * smoothed_variance(x_c, n_c),
        n_treatment: n_t,
        n_control: n_c,
    };
    if pooled * as_f64(n_t.min(n_c)) >= RARE_EXPECTED_ERRORS {
        let mut verdict = contrast.verdict(&half);
        verdict.evidence_mut().alpha = settings.alpha;
        return verdict;
    }
    // Rare errors: the exact conditional test on the treatment's share of the errors.
    let m = x_t + x_c;
    let threshold = (2.0 / half.alpha).ln();
    let ln_e = |psi: f64| {
        let (a, b) = (psi * as_f64(n_t), as_f64(n_c));
        binomial_mixture_ln_e(x_t, m, a / (a + b))
    };
    let (ln_worse, ln_safe) = ln_e(1.0 + r);
    let lower = invert_decreasing(|psi| ln_e(psi).0, threshold, RATIO_RANGE);
    let upper = invert_increasing(|psi| ln_e(psi).1, threshold, RATIO_RANGE);
    let evidence = Evidence {
        method: Method::ConditionalBinomial,
        scale: Scale::RateRatio,
        treatment: p_t,
        control: p_c,
        estimate: ratio_f(
            (as_f64(x_t) + 0.5) / as_f64(n_t.max(1)),
            (as_f64(x_c) + 0.5) / as_f64(n_c.max(1)),
        ),
        lower,
        upper,
        tolerance: 1.0 + r,
        n_treatment: n_t,
        n_control: n_c,
        alpha: settings.alpha,
        e_regressed: Some(finite(ln_worse.exp())),
        e_safe: Some(finite(ln_safe.exp())),
        threshold_ms: None,
    };
    decide(
        evidence,
        ln_worse >= threshold,
        ln_safe >= threshold,
        || contrast.needed(&half),
        settings,
    )
}

/// The latency guardrail: the treatment's share of requests slower than
/// `(1 + max_relative_increase)` times the control's `quantile`, against the control's share
/// above its `quantile`.
#[must_use]
pub fn latency(
    control: &LatencySketch,
    treatment: &LatencySketch,
    quantile: f64,
    max_relative_increase: f64,
    settings: &TestSettings,
) -> Verdict {
    let (n_c, n_t) = (control.count(), treatment.count());
    let (x_c, threshold_ms) = match control.quantile_bucket(quantile) {
        Some(Some(index)) => (
            control.count_above_bucket(index),
            (1.0 + max_relative_increase) * bucket_upper_edge(index),
        ),
        // The quantile is in the zero bucket (or there is no data): every non-zero value is
        // above it, and so is every treatment value above the sketch's floor.
        _ => (n_c - control.zero_count(), 0.0),
    };
    let x_t = treatment.count_above(threshold_ms);
    let (p_t, p_c) = (ratio(x_t, n_t), ratio(x_c, n_c));
    let contrast = Contrast {
        treatment: p_t,
        control: p_c,
        estimate: p_t - p_c,
        tolerance: 0.0,
        variance: smoothed_variance(x_t, n_t) + smoothed_variance(x_c, n_c),
        n_treatment: n_t,
        n_control: n_c,
    };
    // The tail must hold a few values before its share means anything.
    let tail = (1.0 - quantile).max(1e-6);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a small positive count"
    )]
    let minimum = settings
        .min_per_arm
        .max((RARE_EXPECTED_ERRORS / tail).ceil().min(1e12) as u64);
    let mut verdict = contrast.verdict(&TestSettings {
        min_per_arm: minimum,
        ..*settings
    });
    verdict.evidence_mut().threshold_ms = Some(threshold_ms);
    verdict
}

/// The custom-metric guardrail on the means of winsorised values.
#[must_use]
pub fn metric_mean(
    control: &MetricSums,
    treatment: &MetricSums,
    direction: Direction,
    tolerance: Tolerance,
    settings: &TestSettings,
) -> Verdict {
    let (mean_c, var_c) = control.mean_and_variance().unwrap_or((0.0, 0.0));
    let (mean_t, var_t) = treatment.mean_and_variance().unwrap_or((0.0, 0.0));
    let sign = match direction {
        Direction::HigherIsWorse => 1.0,
        Direction::LowerIsWorse => -1.0,
    };
    // θ = sign·(T − C) − tolerance; a relative tolerance r·|C| also moves with C.
    let (allowed, control_weight) = match tolerance {
        Tolerance::Absolute(t) => (t, sign),
        Tolerance::Relative(r) => (r * mean_c.abs(), sign + r * mean_c.signum()),
    };
    let (n_c, n_t) = (control.count, treatment.count);
    let contrast = Contrast {
        treatment: mean_t,
        control: mean_c,
        estimate: sign * (mean_t - mean_c),
        tolerance: allowed,
        variance: var_t / as_f64(n_t.max(1)) + control_weight.powi(2) * var_c / as_f64(n_c.max(1)),
        n_treatment: n_t,
        n_control: n_c,
    };
    contrast.verdict(&TestSettings {
        min_per_arm: settings.min_per_arm.max(2),
        ..*settings
    })
}

/// The absolute backstop on the treatment's requests and errors: its error rate at most `limit`.
#[must_use]
pub fn error_rate_limit(treatment: ErrorCounts, limit: f64, settings: &TestSettings) -> Verdict {
    let (n, x) = treatment.clamped();
    let threshold = (2.0 / settings.alpha).ln();
    let ln_e = |p0: f64| binomial_mixture_ln_e(x, n, p0);
    let (ln_worse, ln_safe) = ln_e(limit);
    let range = (1e-9, 1.0 - 1e-9);
    let rate = ratio(x, n);
    let evidence = Evidence {
        method: Method::Binomial,
        scale: Scale::Rate,
        treatment: rate,
        // The backstop reads the treatment alone.
        control: 0.0,
        estimate: rate,
        lower: invert_decreasing(|p| ln_e(p).0, threshold, range),
        upper: invert_increasing(|p| ln_e(p).1, threshold, range),
        tolerance: limit,
        n_treatment: n,
        n_control: 0,
        alpha: settings.alpha,
        e_regressed: Some(finite(ln_worse.exp())),
        e_safe: Some(finite(ln_safe.exp())),
        threshold_ms: None,
    };
    let needed = || {
        let variance = smoothed_variance(x, n);
        let progress = as_f64(n) / as_f64(settings.tuned_for.max(1));
        sample_multiple_needed(variance, progress, settings.alpha, (rate - limit).abs()).map(|k| {
            Needed {
                treatment: additional(k, n),
                control: 0,
            }
        })
    };
    decide(
        evidence,
        ln_worse >= threshold,
        ln_safe >= threshold,
        needed,
        settings,
    )
}

/// The sample ratio test on the exposures: does the treatment get `expected_share` of them?
#[must_use]
pub fn sample_ratio(
    control_exposures: u64,
    treatment_exposures: u64,
    expected_share: f64,
    alpha: f64,
    concentration: f64,
) -> SrmCheck {
    let ln_e = dirichlet_multinomial_ln_e(
        &[treatment_exposures, control_exposures],
        &[expected_share, 1.0 - expected_share],
        concentration,
    );
    SrmCheck {
        mismatch: ln_e >= (1.0 / alpha).ln(),
        expected_share,
        observed_share: ratio(treatment_exposures, treatment_exposures + control_exposures),
        n_treatment: treatment_exposures,
        n_control: control_exposures,
        e_value: finite(ln_e.exp()),
        alpha,
    }
}

/// A contrast judged by the normal-mixture confidence sequence.
struct Contrast {
    treatment: f64,
    control: f64,
    /// The regression `d̂`, positive when worse.
    estimate: f64,
    tolerance: f64,
    /// The variance of `d̂ − tolerance`.
    variance: f64,
    n_treatment: u64,
    n_control: u64,
}

impl Contrast {
    fn progress(&self, settings: &TestSettings) -> f64 {
        as_f64(self.n_treatment.min(self.n_control)) / as_f64(settings.tuned_for.max(1))
    }

    fn verdict(&self, settings: &TestSettings) -> Verdict {
        let width =
            normal_mixture_half_width(self.variance, self.progress(settings), settings.alpha);
        let evidence = Evidence {
            method: Method::NormalMixture,
            scale: Scale::Difference,
            treatment: self.treatment,
            control: self.control,
            estimate: self.estimate,
            lower: finite(self.estimate - width),
            upper: finite(self.estimate + width),
            tolerance: self.tolerance,
            n_treatment: self.n_treatment,
            n_control: self.n_control,
            alpha: settings.alpha,
            e_regressed: None,
            e_safe: None,
            threshold_ms: None,
        };
        // Deciding on the reported numbers keeps the outcome and the bounds in agreement.
        let regressed = evidence.lower > evidence.tolerance;
        let safe = evidence.upper < evidence.tolerance;
        decide(
            evidence,
            regressed,
            safe,
            || self.needed(settings),
            settings,
        )
    }

    fn needed(&self, settings: &TestSettings) -> Option<Needed> {
        let gap = (self.estimate - self.tolerance).abs();
        sample_multiple_needed(self.variance, self.progress(settings), settings.alpha, gap).map(
            |k| Needed {
                treatment: additional(k, self.n_treatment),
                control: additional(k, self.n_control),
            },
        )
    }
}

fn decide(
    evidence: Evidence,
    regressed: bool,
    safe: bool,
    needed: impl FnOnce() -> Option<Needed>,
    settings: &TestSettings,
) -> Verdict {
    let smaller = if evidence.scale == Scale::Rate {
        evidence.n_treatment
    } else {
        evidence.n_treatment.min(evidence.n_control)
    };
    if smaller < settings.min_per_arm {
        Verdict::InsufficientData {
            evidence,
            minimum_per_arm: settings.min_per_arm,
        }
    } else if regressed {
        Verdict::Regressed { evidence }
    } else if safe {
        Verdict::Safe { evidence }
    } else {
        Verdict::Inconclusive {
            evidence,
            needed: needed(),
        }
    }
}

/// The largest `x` in `range` with `f(x) ≥ threshold`, for an `f` that decreases in `x`; the
/// low end of the range when there is none.
fn invert_decreasing(f: impl Fn(f64) -> f64, threshold: f64, range: (f64, f64)) -> f64 {
    let (low, high) = (range.0.ln(), range.1.ln());
    if f(range.0) < threshold {
        return 0.0;
    }
    if f(range.1) >= threshold {
        return range.1;
    }
    bisect(|x| f(x.exp()) >= threshold, low, high).exp()
}

/// The smallest `x` in `range` with `f(x) ≥ threshold`, for an `f` that increases in `x`; the
/// high end of the range when there is none.
fn invert_increasing(f: impl Fn(f64) -> f64, threshold: f64, range: (f64, f64)) -> f64 {
    let (low, high) = (range.0.ln(), range.1.ln());
    if f(range.1) < threshold {
        return range.1;
    }
    if f(range.0) >= threshold {
        return range.0;
    }
    bisect(|x| f(x.exp()) < threshold, low, high).exp()
}

/// The boundary between `holds` (true at `low`) and not (at `high`), to 1e-9 in the argument.
fn bisect(holds: impl Fn(f64) -> bool, mut low: f64, mut high: f64) -> f64 {
    while high - low > 1e-9 {
        let middle = 0.5 * (low + high);
        if holds(middle) {
            low = middle;
        } else {
            high = middle;
        }
    }
    0.5 * (low + high)
}

/// `p̃(1 − p̃)/n` with `p̃ = (x + 1)/(n + 2)`.
fn smoothed_variance(x: u64, n: u64) -> f64 {
    let p = (as_f64(x) + 1.0) / (as_f64(n) + 2.0);
    p * (1.0 - p) / as_f64(n.max(1))
}

fn additional(multiple: f64, n: u64) -> u64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a nonnegative count, capped by the million-fold search limit"
    )]
    let extra = ((multiple - 1.0) * as_f64(n.max(1))).ceil().max(0.0) as u64;
    extra
}

fn ratio(x: u64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { as_f64(x) / as_f64(n) }
}

fn ratio_f(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Keeps every number in the evidence representable in JSON.
fn finite(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(f64::MIN, f64::MAX)
    }
}

#[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
fn as_f64(x: u64) -> f64 {
    x as f64
}
