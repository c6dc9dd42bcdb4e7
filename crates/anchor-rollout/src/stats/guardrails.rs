//! The guardrail tests and [`evaluate`], which runs a plan's guardrails with their share of α.

use super::plan::{
    ArmObservations, Direction, ErrorCounts, Guardrail, GuardrailPlan, MetricSums, Observations,
    StageContrast, StageCounts, StageEvidence, TestSettings, Tolerance,
};
use super::sequential::{
    binomial_mixture_ln_e, dirichlet_multinomial_ln_e, normal_mixture_half_width,
    sample_multiple_needed,
};
use super::verdict::{
    Evidence, GuardrailCheck, GuardrailReport, Method, Needed, Scale, SrmCheck, Verdict,
};
use crate::sketch::{LatencySketch, bucket_upper_edge};

/// Below this many errors expected in the smaller arm (at the pooled rate) the error rate is
/// "rare": the normal approximation would be poor there, which is one reason the error-rate
/// guardrail uses the exact conditional test at every count (see the module documentation).
pub const RARE_EXPECTED_ERRORS: f64 = 10.0;

/// The most a tolerance is widened for an early stage ([`evaluate_release`]): leaving 1% for 5%
/// may show "at most 10 times the tolerance", not the 20 times the share alone would allow, so
/// "safe" never means "ten times worse is fine".
pub const MAX_WIDENING: f64 = 10.0;

/// The rate ratios the error-rate bounds are searched within.
const RATIO_RANGE: (f64, f64) = (1e-3, 1e3);

/// Evaluates every guardrail of `plan` on one stage's `observations`, each with `α/k`, and the
/// sample ratio; `Safe` means below the guardrails' own tolerances.
#[must_use]
pub fn evaluate(plan: &GuardrailPlan, observations: &Observations) -> GuardrailReport {
    evaluate_release(plan, &[], observations, 1.0)
}

/// Evaluates every guardrail of `plan` on the current stage's `observations` together with the
/// evidence `carried` from the release's finished stages (see [`stage_evidence`]), each with
/// `α/k`, and the current stage's sample ratio.
///
/// `widen_to` is the share of traffic (0 < s ≤ 1) the treatment would get if the release
/// advanced now: `Safe` then means the upper bound is below the tolerance scaled by `1/s`, so
/// that the wider stage raises the metric over *all* traffic by at most the tolerance, widened
/// at most [`MAX_WIDENING`] times (see the module documentation). `Regressed` always uses the
/// tolerance itself.
#[must_use]
pub fn evaluate_release(
    plan: &GuardrailPlan,
    carried: &[StageEvidence],
    observations: &Observations,
    widen_to: f64,
) -> GuardrailReport {
    let settings = plan.settings();
    let widen_to = if widen_to > 0.0 && widen_to <= 1.0 {
        widen_to.max(1.0 / MAX_WIDENING)
    } else {
        1.0
    };
    let (control, treatment) = (&observations.control, &observations.treatment);
    let checks = plan
        .guardrails
        .iter()
        .map(|spec| {
            let earlier = || carried.iter().filter(|e| e.guardrail == spec.name);
            let contrasts = |current: StageContrast| {
                let mut all: Vec<StageContrast> = earlier().filter_map(|e| e.contrast).collect();
                all.push(current);
                all
            };
            let verdict = match &spec.guardrail {
                Guardrail::ErrorRate {
                    max_relative_increase,
                    min_absolute_increase,
                } => {
                    let mut stages: Vec<StageCounts> = earlier().filter_map(|e| e.counts).collect();
                    stages.push(StageCounts {
                        control: ErrorCounts::of(control),
                        treatment: ErrorCounts::of(treatment),
                    });
                    error_rate_over_stages(
                        &stages,
                        *max_relative_increase,
                        *min_absolute_increase,
                        widen_to,
                        &settings,
                    )
                }
                Guardrail::Latency {
                    quantile,
                    max_relative_increase,
                } => {
                    let (current, threshold_ms) = latency_contrast(
                        &control.latency,
                        &treatment.latency,
                        *quantile,
                        *max_relative_increase,
                    );
                    latency_verdict(&contrasts(current), *quantile, threshold_ms, &settings)
                }
                Guardrail::Metric {
                    metric,
                    direction,
                    tolerance,
                } => {
                    let sums = |arm: &ArmObservations| {
                        arm.metrics.get(metric).copied().unwrap_or_default()
                    };
                    let current =
                        metric_contrast(&sums(control), &sums(treatment), *direction, *tolerance);
                    metric_verdict(&contrasts(current), *tolerance, widen_to, &settings)
                }
                Guardrail::ErrorRateLimit { limit } => {
                    let mut total = ErrorCounts::of(treatment);
                    for stage in earlier().filter_map(|e| e.counts) {
                        total.requests = total.requests.saturating_add(stage.treatment.requests);
                        total.errors = total.errors.saturating_add(stage.treatment.errors);
                    }
                    error_rate_limit(total, *limit, &settings)
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

/// What the current stage's `observations` add to each guardrail's evidence, for the stages
/// after it ([`evaluate_release`]'s `carried`).
#[must_use]
pub fn stage_evidence(plan: &GuardrailPlan, observations: &Observations) -> Vec<StageEvidence> {
    let (control, treatment) = (&observations.control, &observations.treatment);
    plan.guardrails
        .iter()
        .map(|spec| {
            let (counts, contrast) = match &spec.guardrail {
                Guardrail::ErrorRate { .. } | Guardrail::ErrorRateLimit { .. } => (
                    Some(StageCounts {
                        control: ErrorCounts::of(control),
                        treatment: ErrorCounts::of(treatment),
                    }),
                    None,
                ),
                Guardrail::Latency {
                    quantile,
                    max_relative_increase,
                } => (
                    None,
                    Some(
                        latency_contrast(
                            &control.latency,
                            &treatment.latency,
                            *quantile,
                            *max_relative_increase,
                        )
                        .0,
                    ),
                ),
                Guardrail::Metric {
                    metric,
                    direction,
                    tolerance,
                } => {
                    let sums = |arm: &ArmObservations| {
                        arm.metrics.get(metric).copied().unwrap_or_default()
                    };
                    (
                        None,
                        Some(metric_contrast(
                            &sums(control),
                            &sums(treatment),
                            *direction,
                            *tolerance,
                        )),
                    )
                }
            };
            StageEvidence {
                guardrail: spec.name.clone(),
                counts,
                contrast,
            }
        })
        .collect()
}

/// The error-rate guardrail on each arm's requests and errors of one stage: the treatment's
/// rate may be at most `max_relative_increase` above the control's.
#[must_use]
pub fn error_rate(
    control: ErrorCounts,
    treatment: ErrorCounts,
    max_relative_increase: f64,
    settings: &TestSettings,
) -> Verdict {
    error_rate_over_stages(
        &[StageCounts { control, treatment }],
        max_relative_increase,
        0.0,
        1.0,
        settings,
    )
}

/// The error-rate guardrail over a release's stages (each with its own split): the exact
/// conditional e-process of each stage, multiplied across stages. The tolerance is the larger of
/// `max_relative_increase` and `min_absolute_increase` over the control's pooled rate, as a rate
/// ratio; `Safe` is judged against it scaled for `widen_to`.
#[must_use]
pub fn error_rate_over_stages(
    stages: &[StageCounts],
    max_relative_increase: f64,
    min_absolute_increase: f64,
    widen_to: f64,
    settings: &TestSettings,
) -> Verdict {
    let stages: Vec<((u64, u64), (u64, u64))> = stages
        .iter()
        .map(|s| (s.control.clamped(), s.treatment.clamped()))
        .collect();
    let (mut n_c, mut x_c, mut n_t, mut x_t) = (0_u64, 0_u64, 0_u64, 0_u64);
    for &((nc, xc), (nt, xt)) in &stages {
        n_c = n_c.saturating_add(nc);
        x_c = x_c.saturating_add(xc);
        n_t = n_t.saturating_add(nt);
        x_t = x_t.saturating_add(xt);
    }
    let (p_t, p_c) = (ratio(x_t, n_t), ratio(x_c, n_c));
    // The absolute floor as a ratio, at the control's pooled rate (the half keeps it finite
    // before the first control error; the control is the larger arm in every stage but the
    // last, so its rate is the best known number here).
    let smoothed_c = (as_f64(x_c) + 0.5) / as_f64(n_c.max(1));
    let psi0 = (1.0 + max_relative_increase.max(0.0))
        .max(1.0 + min_absolute_increase.max(0.0) / smoothed_c)
        .min(RATIO_RANGE.1);
    let psi_widen = (1.0 + (psi0 - 1.0) / widen_to).min(RATIO_RANGE.1);
    let ln_e = |psi: f64| {
        stages
            .iter()
            .fold((0.0, 0.0), |(worse, safe), &((nc, xc), (nt, xt))| {
                let (a, b) = (psi * as_f64(nt), as_f64(nc));
                let (w, s) = binomial_mixture_ln_e(xt, xt.saturating_add(xc), a / (a + b));
                (worse + w, safe + s)
            })
    };
    let threshold = (1.0 / settings.alpha).ln();
    let ln_worse = ln_e(psi0).0;
    let ln_safe = ln_e(psi_widen).1;
    let lower = invert_decreasing(|psi| ln_e(psi).0, threshold, RATIO_RANGE);
    let upper = invert_increasing(|psi| ln_e(psi).1, threshold, RATIO_RANGE);
    let estimate = ratio_f(
        (as_f64(x_t) + 0.5) / as_f64(n_t.max(1)),
        (as_f64(x_c) + 0.5) / as_f64(n_c.max(1)),
    );
    let evidence = Evidence {
        method: Method::ConditionalBinomial,
        scale: Scale::RateRatio,
        treatment: p_t,
        control: p_c,
        estimate,
        lower,
        upper,
        tolerance: psi0,
        widen_tolerance: (psi_widen > psi0).then_some(psi_widen),
        n_treatment: n_t,
        n_control: n_c,
        alpha: settings.alpha,
        e_regressed: Some(finite(ln_worse.exp())),
        e_safe: Some(finite(ln_safe.exp())),
        threshold_ms: None,
        stages: stages.len(),
    };
    // How much more data: the normal projection on the difference scale, towards the bound
    // the estimate is heading for.
    let needed = || {
        let target = if estimate >= psi0 { psi0 } else { psi_widen };
        Contrast {
            treatment: p_t,
            control: p_c,
            estimate: p_t - p_c,
            tolerance: (target - 1.0) * p_c,
            widen_tolerance: (target - 1.0) * p_c,
            variance: smoothed_variance(x_t, n_t) + target.powi(2) * smoothed_variance(x_c, n_c),
            n_treatment: n_t,
            n_control: n_c,
            stages: stages.len(),
        }
        .needed(settings)
    };
    decide(
        evidence,
        ln_worse >= threshold,
        ln_safe >= threshold,
        needed,
        settings,
    )
}

/// One stage's latency contrast: the treatment's share of requests slower than
/// `(1 + max_relative_increase)` times the control's `quantile`, minus the control's share
/// above its `quantile`; and that threshold in milliseconds.
fn latency_contrast(
    control: &LatencySketch,
    treatment: &LatencySketch,
    quantile: f64,
    max_relative_increase: f64,
) -> (StageContrast, f64) {
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
    (
        StageContrast {
            treatment: p_t,
            control: p_c,
            estimate: p_t - p_c,
            variance: smoothed_variance(x_t, n_t) + smoothed_variance(x_c, n_c),
            n_treatment: n_t,
            n_control: n_c,
        },
        threshold_ms,
    )
}

fn latency_verdict(
    stages: &[StageContrast],
    quantile: f64,
    threshold_ms: f64,
    settings: &TestSettings,
) -> Verdict {
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
    let mut verdict = Contrast::combine(stages, |_| 0.0, 1.0).verdict(&TestSettings {
        min_per_arm: minimum,
        ..*settings
    });
    verdict.evidence_mut().threshold_ms = Some(threshold_ms);
    verdict
}

/// The latency guardrail on one stage: the treatment's share of requests slower than
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
    let (contrast, threshold_ms) =
        latency_contrast(control, treatment, quantile, max_relative_increase);
    latency_verdict(&[contrast], quantile, threshold_ms, settings)
}

/// One stage's custom-metric contrast `sign·(T − C)`, with the variance of `θ̂` (which, for a
/// relative tolerance, moves with the control's mean).
fn metric_contrast(
    control: &MetricSums,
    treatment: &MetricSums,
    direction: Direction,
    tolerance: Tolerance,
) -> StageContrast {
    let (mean_c, var_c) = control.mean_and_variance().unwrap_or((0.0, 0.0));
    let (mean_t, var_t) = treatment.mean_and_variance().unwrap_or((0.0, 0.0));
    let sign = match direction {
        Direction::HigherIsWorse => 1.0,
        Direction::LowerIsWorse => -1.0,
    };
    // θ = sign·(T − C) − tolerance; a relative tolerance r·|C| also moves with C.
    let control_weight = match tolerance {
        Tolerance::Absolute(_) => sign,
        Tolerance::Relative(r) => sign + r * mean_c.signum(),
    };
    let (n_c, n_t) = (control.count, treatment.count);
    StageContrast {
        treatment: mean_t,
        control: mean_c,
        estimate: sign * (mean_t - mean_c),
        variance: var_t / as_f64(n_t.max(1)) + control_weight.powi(2) * var_c / as_f64(n_c.max(1)),
        n_treatment: n_t,
        n_control: n_c,
    }
}

fn metric_verdict(
    stages: &[StageContrast],
    tolerance: Tolerance,
    widen_to: f64,
    settings: &TestSettings,
) -> Verdict {
    let allowed = move |control: f64| match tolerance {
        Tolerance::Absolute(t) => t,
        Tolerance::Relative(r) => r * control.abs(),
    };
    Contrast::combine(stages, allowed, widen_to).verdict(&TestSettings {
        min_per_arm: settings.min_per_arm.max(2),
        ..*settings
    })
}

/// The custom-metric guardrail on the means of one stage's winsorised values.
#[must_use]
pub fn metric_mean(
    control: &MetricSums,
    treatment: &MetricSums,
    direction: Direction,
    tolerance: Tolerance,
    settings: &TestSettings,
) -> Verdict {
    let contrast = metric_contrast(control, treatment, direction, tolerance);
    metric_verdict(&[contrast], tolerance, 1.0, settings)
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
        widen_tolerance: None,
        n_treatment: n,
        n_control: 0,
        alpha: settings.alpha,
        e_regressed: Some(finite(ln_worse.exp())),
        e_safe: Some(finite(ln_safe.exp())),
        threshold_ms: None,
        stages: 1,
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
    /// The tolerance `Safe` is judged against (at least `tolerance`).
    widen_tolerance: f64,
    /// The variance of `d̂ − tolerance`.
    variance: f64,
    n_treatment: u64,
    n_control: u64,
    stages: usize,
}

impl Contrast {
    /// The inverse-variance combination of the stages' estimates (each stage's weight depends
    /// only on its split and length, so the combined sequence is the normal mixture over all of
    /// the release's data), with the tolerance `allowed(pooled control)` and its widening.
    fn combine(stages: &[StageContrast], allowed: impl Fn(f64) -> f64, widen_to: f64) -> Self {
        let (mut weight, mut weighted) = (0.0, 0.0);
        let (mut n_t, mut n_c) = (0_u64, 0_u64);
        let (mut sum_t, mut sum_c) = (0.0, 0.0);
        for stage in stages {
            // A stage without spread (identical values) carries no usable variance.
            let w = if stage.variance > 0.0 && stage.variance.is_finite() {
                1.0 / stage.variance
            } else {
                0.0
            };
            weight += w;
            weighted += w * stage.estimate;
            n_t = n_t.saturating_add(stage.n_treatment);
            n_c = n_c.saturating_add(stage.n_control);
            sum_t += stage.treatment * as_f64(stage.n_treatment);
            sum_c += stage.control * as_f64(stage.n_control);
        }
        let last = stages.last();
        let (estimate, variance) = if weight > 0.0 {
            (weighted / weight, 1.0 / weight)
        } else {
            (
                last.map_or(0.0, |s| s.estimate),
                last.map_or(0.0, |s| s.variance),
            )
        };
        let control = ratio_f(sum_c, as_f64(n_c));
        let tolerance = allowed(control);
        Self {
            treatment: ratio_f(sum_t, as_f64(n_t)),
            control,
            estimate,
            tolerance,
            widen_tolerance: tolerance / widen_to,
            variance,
            n_treatment: n_t,
            n_control: n_c,
            stages: stages.len(),
        }
    }

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
            widen_tolerance: (self.widen_tolerance > self.tolerance)
                .then_some(self.widen_tolerance),
            n_treatment: self.n_treatment,
            n_control: self.n_control,
            alpha: settings.alpha,
            e_regressed: None,
            e_safe: None,
            threshold_ms: None,
            stages: self.stages,
        };
        // Deciding on the reported numbers keeps the outcome and the bounds in agreement.
        let regressed = evidence.lower > evidence.tolerance;
        let safe = evidence.upper < evidence.widen_tolerance.unwrap_or(evidence.tolerance);
        decide(
            evidence,
            regressed,
            safe,
            || self.needed(settings),
            settings,
        )
    }

    fn needed(&self, settings: &TestSettings) -> Option<Needed> {
        // Towards the bound the estimate is heading for.
        let gap = if self.estimate > self.tolerance {
            self.estimate - self.tolerance
        } else {
            self.widen_tolerance - self.estimate
        };
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
    if let Some(x) = &mut evidence.widen_tolerance {
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
