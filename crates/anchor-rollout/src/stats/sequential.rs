//! The anytime-valid building blocks: a normal-mixture confidence sequence for a linear contrast
//! of arm means, beta-binomial mixture e-processes for a binomial proportion, and the
//! Dirichlet-multinomial e-process for a sample ratio. The formulas and their references are in
//! the [module documentation](super).

use crate::special::{ln_beta, ln_beta_tails, ln_gamma};

/// Whether `x` is a number above zero (false for NaN).
fn positive(x: f64) -> bool {
    x > 0.0
}

/// `c(α) = 2 ln(1/α) + ln(1 + 2 ln(1/α))`: the ratio `τ²/s²` at which the normal-mixture
/// boundary is narrowest at the sample it is tuned for (Waudby-Smith et al. 2024).
fn tuning_constant(alpha: f64) -> f64 {
    let two_log = 2.0 * (1.0 / alpha).ln();
    two_log + two_log.ln_1p()
}

/// The half-width of the two-sided normal-mixture confidence sequence at level `1 − α`, for an
/// estimate of variance `variance`, after `progress = n / n*` of the sample size `n*` the
/// boundary is tuned for:
///
/// `w = √( s² (1 + s²/τ²) · ( ln(1 + τ²/s²) + 2 ln(1/α) ) )`, with `τ²/s² = progress · c(α)`.
#[must_use]
pub fn normal_mixture_half_width(variance: f64, progress: f64, alpha: f64) -> f64 {
    if !positive(variance) || !positive(progress) {
        return if variance == 0.0 { 0.0 } else { f64::INFINITY };
    }
    let tau_over_s = progress * tuning_constant(alpha);
    (variance * (1.0 + 1.0 / tau_over_s) * (tau_over_s.ln_1p() + 2.0 * (1.0 / alpha).ln())).sqrt()
}

/// How many times the current sample (both arms in their current proportion) the confidence
/// sequence needs before its half-width falls to `gap`: the smallest `k ≥ 1` with
/// `w(s²/k, k·progress) ≤ gap`, or `None` when it would take more than a million times the
/// current sample (or `gap` is zero).
#[must_use]
pub fn sample_multiple_needed(variance: f64, progress: f64, alpha: f64, gap: f64) -> Option<f64> {
    const LIMIT: f64 = 1e6;
    let width = |k: f64| normal_mixture_half_width(variance / k, progress * k, alpha);
    if !positive(gap) || !width(LIMIT).is_finite() || width(LIMIT) > gap {
        return None;
    }
    if width(1.0) <= gap {
        return Some(1.0);
    }
    // The width decreases in k; bisect on ln k.
    let (mut low, mut high) = (0.0_f64, LIMIT.ln());
    for _ in 0..60 {
        let middle = 0.5 * (low + high);
        if width(middle.exp()) <= gap {
            high = middle;
        } else {
            low = middle;
        }
    }
    Some(high.exp())
}

/// The prior of the binomial mixtures: `Beta(1, (1 − p₀)/p₀)`, whose mean is `p₀` and whose
/// density falls like `e^(−p/p₀)`, so it weighs alternatives within a few multiples of `p₀`.
fn binomial_prior(p0: f64) -> (f64, f64) {
    (1.0, (1.0 - p0) / p0)
}

/// The beta-binomial mixture e-values of `successes` out of `trials` Bernoulli draws against a
/// success probability `p0`: `(ln e_above, ln e_below)`.
///
/// `e_above` mixes the likelihood ratio `L(p)/L(p₀)` over the prior restricted to `p > p₀`; it is
/// a nonnegative supermartingale under every `p ≤ p₀` (the binomial family has a monotone
/// likelihood ratio), so by Ville's inequality `P(∃t: e_above ≥ 1/α) ≤ α` when `p ≤ p₀`.
/// `e_below` is its mirror over `p < p₀`, for the null `p ≥ p₀`.
#[must_use]
pub fn binomial_mixture_ln_e(successes: u64, trials: u64, p0: f64) -> (f64, f64) {
    if !positive(p0) || p0 >= 1.0 || successes > trials {
        return (0.0, 0.0);
    }
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    let (x, m) = (successes as f64, trials as f64);
    let (a, b) = binomial_prior(p0);
    let (prior_below, prior_above) = ln_beta_tails(p0, a, b);
    let (post_below, post_above) = ln_beta_tails(p0, a + x, b + m - x);
    let ln_marginal_ratio = ln_beta(a + x, b + m - x) - ln_beta(a, b);
    let ln_null = x * p0.ln() + (m - x) * (-p0).ln_1p();
    (
        ln_marginal_ratio + post_above - prior_above - ln_null,
        ln_marginal_ratio + post_below - prior_below - ln_null,
    )
}

/// The Dirichlet-multinomial mixture e-value (Lindon and Malek 2022) of the observed `counts`
/// against the expected `weights` (normalised here), with prior `Dirichlet(κ·π)`:
///
/// `ln e = ln Γ(κ) − ln Γ(κ + n) + Σ [ln Γ(κπᵢ + xᵢ) − ln Γ(κπᵢ)] − Σ xᵢ ln πᵢ`.
#[must_use]
pub fn dirichlet_multinomial_ln_e(counts: &[u64], weights: &[f64], concentration: f64) -> f64 {
    let total_weight: f64 = weights.iter().sum();
    if counts.len() != weights.len()
        || !positive(total_weight)
        || !positive(concentration)
        || weights.iter().any(|&w| w.is_nan() || w < 0.0)
    {
        return 0.0;
    }
    let mut ln_e = 0.0;
    let mut n = 0.0;
    for (&count, &weight) in counts.iter().zip(weights) {
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
        let x = count as f64;
        let pi = weight / total_weight;
        if pi == 0.0 {
            if count > 0 {
                // A count in an arm that should get nothing is a mismatch beyond doubt.
                return f64::INFINITY;
            }
            continue;
        }
        let prior = concentration * pi;
        ln_e += ln_gamma(prior + x) - ln_gamma(prior) - x * pi.ln();
        n += x;
    }
    ln_e + ln_gamma(concentration) - ln_gamma(concentration + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
            "{actual} vs {expected}"
        );
    }

    #[test]
    fn half_width_matches_the_hand_computed_boundary() {
        // α = 0.05: 2 ln 20 = 5.991465, c = 5.991465 + ln(6.991465) = 7.936155.
        // At progress 1 and s² = 1e-4:
        // w² = 1e-4 · (1 + 1/7.936155) · (ln(8.936155) + 5.991465) = 9.212494e-4, w = 0.0303521.
        let width = normal_mixture_half_width(1e-4, 1.0, 0.05);
        assert!((width - 0.030_352_09).abs() < 1e-8, "{width}");
    }

    #[test]
    fn half_width_is_narrowest_near_the_tuned_sample_size() {
        // Per unit of standard error, the boundary at the tuned size beats a tenth and ten
        // times it.
        let per_se = |progress: f64| normal_mixture_half_width(1.0, progress, 0.002);
        assert!(per_se(1.0) < per_se(0.1));
        assert!(per_se(1.0) < per_se(10.0));
        assert!((per_se(1.0) - 4.03).abs() < 0.02, "{}", per_se(1.0));
    }

    #[test]
    fn sample_multiple_needed_reaches_the_gap() {
        let k = sample_multiple_needed(1e-4, 1.0, 0.05, 0.01).unwrap();
        let width = normal_mixture_half_width(1e-4 / k, k, 0.05);
        assert!((width - 0.01).abs() < 1e-9, "{width}");
        assert_eq!(sample_multiple_needed(1e-4, 1.0, 0.05, 0.5), Some(1.0));
        assert_eq!(sample_multiple_needed(1e-4, 1.0, 0.05, 0.0), None);
    }

    #[test]
    fn binomial_mixture_matches_hand_computed_integrals() {
        // p₀ = 1/2 gives the uniform prior. One success in one trial:
        // e_above = (∫_{1/2}^1 p dp / (1/2)) / (1/2) = 0.75 / 0.5 = 1.5;
        // e_below = (∫_0^{1/2} p dp / (1/2)) / (1/2) = 0.25 / 0.5 = 0.5.
        let (above, below) = binomial_mixture_ln_e(1, 1, 0.5);
        close(above.exp(), 1.5);
        close(below.exp(), 0.5);
        // No draws: both e-values are 1.
        let (above, below) = binomial_mixture_ln_e(0, 0, 0.2);
        close(above, 0.0);
        close(below, 0.0);
    }

    #[test]
    fn binomial_mixture_grows_with_evidence_against_the_null() {
        let (above, _) = binomial_mixture_ln_e(20, 1000, 0.005);
        assert!(above > 20f64.ln(), "{above}");
        let (above, below) = binomial_mixture_ln_e(5, 1000, 0.005);
        assert!(above < 1.0 && below < 1.0);
    }

    #[test]
    fn dirichlet_multinomial_matches_hand_computed_values() {
        // Uniform prior on two equal arms (κ = 2): after (1, 0), e = 1; after (2, 0),
        // e = B(3, 1)/B(1, 1) / (1/2)² = (1/3)/(1/4) = 4/3.
        close(
            dirichlet_multinomial_ln_e(&[1, 0], &[1.0, 1.0], 2.0).exp(),
            1.0,
        );
        close(
            dirichlet_multinomial_ln_e(&[2, 0], &[0.5, 0.5], 2.0).exp(),
            4.0 / 3.0,
        );
        assert_eq!(
            dirichlet_multinomial_ln_e(&[1, 1], &[1.0, 0.0], 10.0),
            f64::INFINITY
        );
    }
}
