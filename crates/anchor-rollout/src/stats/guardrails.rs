//! The guardrail tests and [`evaluate`], which runs a plan's guardrails with their share of α.

use super::plan::{
    ArmObservations, Direction, ErrorCounts, Guardrail, GuardrailPlan, MetricSums, Observations,
    TestSettings, Tolerance,
};
use super::sequential::{
    binomial_mixture_ln_e, dirichlet_multinomial_ln_e, normal_mixture_half_width,
    sample_multiple_needed,
};
use super::verdict::{
    Evidence, GuardrailCheck, GuardrailReport, Method, Needed, Scale, SrmCheck, Verdict,
};
use crate::sketch::{LatencySketch, bucket_upper_edge};

/// Below this many errors expected in the smaller arm (at the pooled rate), the error-rate
/// guardrail uses the exact conditional test rather than the normal approximation.
pub const RARE_EXPECTED_ERRORS: f64 = 10.0;

/// The rate ratios the rare-error bounds are searched within.
const RATIO_RANGE: (f64, f64) = (1e-3, 1e3);

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
    let pooled = ratio(x_t.saturating_add(x_c), n_t.saturating_add(n_c));
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
    let m = x_t.saturating_add(x_c);
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
        expected_share: finite(expected_share),
        observed_share: ratio(
            treatment_exposures,
            treatment_exposures.saturating_add(control_exposures),
        ),
        n_treatment: treatment_exposures,
        n_control: control_exposures,
        e_value: finite(ln_e.exp()),
        alpha: finite(alpha),
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
    mut evidence: Evidence,
    regressed: bool,
    safe: bool,
    needed: impl FnOnce() -> Option<Needed>,
    settings: &TestSettings,
) -> Verdict {
    // Every verdict is stored and served as JSON, which has no NaN or infinity.
    for x in [
        &mut evidence.treatment,
        &mut evidence.control,
        &mut evidence.estimate,
        &mut evidence.lower,
        &mut evidence.upper,
        &mut evidence.tolerance,
        &mut evidence.alpha,
    ] {
        *x = finite(*x);
    }
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
