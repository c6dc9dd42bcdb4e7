//! Anytime-valid guardrail statistics: tests that may be looked at every minute, on cumulative
//! counts, for as long as a stage lasts, without inflating their false alarms.
//!
//! Every guardrail compares the treatment (the new variant) with the control (the old one) among
//! the users who evaluated the flag; a positive difference is a regression. Each returns a
//! [`Verdict`]: [`Regressed`](Verdict::Regressed) when the lower confidence bound of the
//! regression is above the tolerance, [`Safe`](Verdict::Safe) when the upper bound is below it
//! (widened for the next stage, see *Widening*),
//! [`Inconclusive`](Verdict::Inconclusive) otherwise (with the extra sample it would take under the
//! current estimate), and [`InsufficientData`](Verdict::InsufficientData) below a minimum count.
//! Every verdict carries its [`Evidence`]: estimate, bounds, tolerance, sample sizes and the α it
//! spent, so a person can see why the controller acted.
//!
//! # What the caller must pass
//! Cumulative counts per arm since the current stage's warm-up ended, with one configured split
//! over that span ([`Observations`]), and what the release's earlier stages measured
//! ([`StageEvidence`], from [`stage_evidence`] when each stage ended). The tests treat requests
//! (and metric values) as independent; strong clustering within users (one user's requests
//! failing together) makes the variances too small, which the plug-in estimates do not see.
//!
//! # One test per guardrail over the whole release
//! [`evaluate_release`] judges the current stage together with the finished ones, so a guardrail
//! spends its α once over the release rather than once per stage, and evidence seen at 1% still
//! counts at 5%:
//! - the error rate multiplies the stages' conditional e-processes (below). Each stage's is a
//!   nonnegative supermartingale under the null given everything before the stage, so their
//!   product is one over the release (Ramdas et al. 2023, §5 on optional continuation); each
//!   stage needs its own factor because its split, and so the null probability `p₀`, differ;
//! - latency and metric guardrails combine the stages' estimates by inverse variance,
//!   `θ̂ = Σ θ̂ₖ/vₖ / Σ 1/vₖ` with variance `1/Σ 1/vₖ`. A stage's weight per request depends only
//!   on its split (`1/vₖ = nₖ / (σ_T²/s + σ_C²/(1 − s))`), known when it starts, so this is the
//!   normal mixture over all of the release's data with predictable weights;
//! - the backstop adds up the treatment's requests and errors (the split does not enter it).
//!
//! The price: evidence *for* the null in early stages (an e-value below one) has to be made up
//! before a regression that only appears at a larger share can be flagged.
//!
//! # Widening: `Safe` for the next stage
//! `Regressed` always compares the lower bound with the guardrail's tolerance `t`. `Safe`, which
//! lets a stage advance, compares the upper bound with `t / s'`, where `s'` is the share of
//! traffic the next stage would give the treatment (at most [`MAX_WIDENING`] times `t`): the
//! question before widening is whether the wider stage could raise the metric over *all*
//! traffic by more than `t`. Leaving 1% for 5% needs the treatment's error rate proven below
//! `1 + 10 r` times the control's; the last widening, to 100%, needs `1 + r`. Without it, a
//! 10% relative tolerance on a 0.5% error rate takes about 400,000 treatment requests to prove
//! at the first stage (ten hours at 1,000 rps and 1%), and no healthy release would finish.
//!
//! # The normal-mixture confidence sequence (proportions, means, latency tail shares)
//! For an estimate `θ̂` of a contrast `θ` (a difference of arm means, or the excess of the
//! treatment over the control scaled by the tolerance) with estimated variance `s²`, the
//! two-sided confidence sequence at level `1 − α` is `θ̂ ± w` with
//!
//! ```text
//! w = √( s² (1 + s²/τ²) · ( ln(1 + τ²/s²) + 2 ln(1/α) ) )
//! ```
//!
//! This is the two-sided normal-mixture boundary `|S_t| < √((V_t + ρ) ln((V_t + ρ)/(ρα²)))` of
//! Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
//! sequences" (Ann. Statist. 2021), with `S_t = (θ̂ − θ)/s²`, `V_t = 1/s²` and `ρ = 1/τ²`; it is
//! also the always-valid interval of the mixture SPRT with a `N(0, τ²)` mixing distribution
//! (Johari, Koomen, Pekelis and Walsh, "Always valid inference: continuous monitoring of A/B
//! tests", Oper. Res. 2022; Johari, Pekelis and Walsh 2017, with `V/n = s²`). The variances are
//! plug-in estimates, which makes the sequence asymptotically valid (Waudby-Smith, Arbour, Sinha,
//! Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences",
//! Ann. Statist. 2024, whose conjugate-mixture margin this is); the simulation tests check the
//! false alarm rate at the counts a rollout sees.
//!
//! **Tuning τ.** The boundary is (nearly) narrowest when
//! `τ²/s² = c(α) = 2 ln(1/α) + ln(1 + 2 ln(1/α))` (the optimum of Waudby-Smith et al. 2024 for
//! a target time). We set `τ²/s² = c(α) · n/n*` where `n` is the smaller arm's count and `n*` is
//! [`TestSettings::tuned_for`] (default 10,000 requests): the boundary is tightest at the sample a
//! stage typically reaches when a regression of a few times the tolerance becomes decidable,
//! and it widens only logarithmically after it (at α = 0.002 the half-width is 4.03 s at `n*`,
//! 4.19 s at `10 n*`, 4.45 s at `100 n*`, 4.72 s at `n*/10`). Since `s² ∝ 1/n`, this keeps τ
//! fixed as the sample grows, as a mixture requires.
//!
//! **Variances.** A proportion `x/n` uses `p̃(1 − p̃)/n` with `p̃ = (x + 1)/(n + 2)`, so zero
//! counts do not give a zero variance. A mean uses the sample variance from `(count, sum, sum of
//! squares)`; the SDK winsorises every value at a configured bound when it records it, so the
//! sums cannot be ruled by a single outlier and the central limit theorem applies early.
//!
//! **Relative tolerances.** "At most `r` worse than control" is the contrast
//! `θ = T − (1 + r) C ≤ 0` (for means where lower is worse, `θ = (1 − r) C − T`), whose variance
//! is `var_T/n_T + (1 + r)² var_C/n_C`. The evidence shows the plain difference `T − C` with the
//! bounds `T − C ± w`, against the tolerance `r · Ĉ`, so `lower > tolerance` exactly when
//! `θ̂ − w > 0`.
//!
//! # Error rates: the exact conditional count e-process
//! Conditional on the total `m = x_T + x_C` errors, and treating errors as Poisson in the
//! requests `n_T`, `n_C`, the treatment's errors are `Binomial(m, p)` with
//! `p = ψ n_T / (ψ n_T + n_C)`, where `ψ = λ_T/λ_C` is the rate ratio (the classical
//! conditional test of two Poisson means; Lehmann and Romano, *Testing Statistical Hypotheses*).
//! At the tolerance `ψ₀`, `p₀ = n_T ψ₀ / (n_T ψ₀ + n_C)`. The e-process is the beta-binomial
//! mixture likelihood ratio
//!
//! ```text
//! e_worse = ∫_{p > p₀} p^x (1 − p)^(m − x) dπ(p)  /  ( π(p > p₀) · p₀^x (1 − p₀)^(m − x) )
//!         = B(a + x, b + m − x) · Ī_{p₀}(a + x, b + m − x) / ( B(a, b) · Ī_{p₀}(a, b) · p₀^x (1 − p₀)^(m − x) )
//! ```
//!
//! with `Ī = 1 − I` the upper tail of the regularised incomplete beta function and the prior
//! `π = Beta(1, (1 − p₀)/p₀)` (mean `p₀`, mass on ratios up to a few times the tolerance). Each
//! new error is a Bernoulli(p) draw, so this is a nonnegative supermartingale under every
//! `ψ ≤ ψ₀` and, by Ville's inequality, `P(∃t: e_worse ≥ 1/α) ≤ α` (Robbins, "Statistical
//! methods related to the law of the iterated logarithm", 1970; Howard et al. 2021;
//! Ramdas, Grünwald, Vovk and Shafer, "Game-theoretic statistics and safe anytime-valid
//! inference", Statist. Sci. 2023). It needs a constant split within the stage, which is why
//! each stage has its own factor.
//!
//! **At every count, not only for rare errors.** Below [`RARE_EXPECTED_ERRORS`] expected
//! errors the normal approximation is poor, but the exact test is also the better one above
//! it when the arms are unbalanced (1% against 99%): the normal confidence sequence must use
//! the treatment's own variance, which under a regression is twice the null's, and it is
//! two-sided. At 1,000 rps and a 1% share it took 18 minutes to flag a doubled 0.5% error rate
//! where the exact test takes about 9 (GuardBench). For binomial rather than Poisson errors the
//! conditional law is hypergeometric, whose variance is smaller by `1 − rate`, so the test is
//! conservative, by a few percent at the error rates a service lives with.
//!
//! **The tolerance.** `ψ₀ = max(1 + r, 1 + a / p̂_C)` for a relative tolerance `r` and an
//! absolute floor `a` (0.05 percentage points in the built-in guardrail), with `p̂_C` the
//! control's pooled rate (`(x_C + ½)/n_C`, so a control without errors gives a large, finite
//! ratio): ten percent of a 0.1% error rate is one failure in 100,000 requests, which no rollout
//! can tell from noise, while 0.05 points is one in 2,000.
//!
//! **"Safe".** The mirror e-process `e_safe` mixes over `p < p₀'` at the widened tolerance
//! `ψ₀' = 1 + (ψ₀ − 1)·w` (see *Widening*) and rejects "the treatment is at least that much
//! worse" when `e_safe ≥ 1/α`. With few errors it needs many control errors, so a low-traffic
//! stage stays [`Inconclusive`](Verdict::Inconclusive): the data cannot tell a ratio of 1
//! from 1.5 when there are five errors. That is the honest answer.
//!
//! Both directions use the guardrail's whole `α`: `e_worse` bounds false rollbacks, `e_safe`
//! false advances, and they are different errors. The evidence is on the rate-ratio scale: the
//! estimate is `((x_T + ½)/n_T) / ((x_C + ½)/n_C)` over all stages (the halves keep it finite
//! without errors), and the bounds invert the product e-processes over `ψ₀` (bisection on
//! `ln ψ₀` within `[10⁻³, 10³]`; the e-values decrease and increase in `ψ₀`, which the property
//! tests check by comparing outcomes with bounds).
//!
//! # How much more data
//! An `Inconclusive` verdict projects, under the current estimate and variance, the smallest
//! multiple `k` of the current sample (both arms growing in their current proportion) at which
//! the normal-mixture half-width falls to the distance between the estimate and the tolerance,
//! and reports `(k − 1)·n` more per arm, in the guardrail's own unit (requests, or a metric's
//! values). Rare errors and the backstop use the same normal projection as an estimate.
//!
//! # Latency p95/p99: the share of slow requests
//! Let `k` be the control sketch's bucket holding its `q`-quantile. The control's share above
//! `γ^k` (its buckets above `k`, counted exactly) is compared with the treatment's share above
//! `(1 + r) γ^k` (its buckets entirely above that threshold, see
//! [`LatencySketch::count_above`](crate::LatencySketch::count_above)). If the treatment's latencies are at most `(1 + r)` times the
//! control's in distribution, the treatment's share is at most the control's, so the regression
//! is the difference of the two shares, with tolerance 0, judged by the confidence sequence
//! above. Comparing with the control's measured share rather than the nominal `1 − q` accounts for
//! the control's own noise and for the bucket edges; the straddling bucket is left out of the
//! treatment's count, which can only make a rollback less likely.
//!
//! # The absolute backstop
//! "The treatment's error rate is above `L`" is judged on a confidence sequence for the
//! treatment's rate alone: the beta-binomial mixture e-processes above with `p₀ = L` over all
//! of the treatment's requests, `Regressed` when `e_worse ≥ 2/α`, `Safe` when `e_safe ≥ 2/α`; the
//! bounds invert them over `p₀`. Never on one window.
//!
//! # Sample ratio mismatch
//! The Dirichlet-multinomial e-process of Lindon and Malek, "Anytime-valid inference for
//! multinomial count data" (NeurIPS 2022): with expected shares `π` and prior
//! `Dirichlet(κπ)`,
//!
//! ```text
//! e = Γ(κ)/Γ(κ + n) · Π Γ(κπᵢ + xᵢ)/Γ(κπᵢ) / Π πᵢ^xᵢ
//! ```
//!
//! is a test martingale under the configured split when each exposure is an independent unit
//! (count distinct users, not evaluations); a mismatch is `e ≥ 1/α`. `κ` defaults to
//! 1,000 (the prior's standard deviation of a 5% share is 0.7 points, the size of a mismatch
//! worth catching). A mismatch means no verdict can be trusted: the caller holds and alerts
//! rather than rolls back, so it has its own α.
//!
//! # Spending α across guardrails
//! [`evaluate`] gives each of its `k` guardrails `α/k` (Bonferroni). Each test is anytime-valid
//! and spans the release, so the chance that any of them ever falsely reports `Regressed`
//! during the release is at most `Σ α/k = α`, however often it is checked and whatever the
//! dependence between the metrics.

mod guardrails;
mod plan;
pub mod sequential;
mod verdict;

pub use guardrails::{
    MAX_WIDENING, RARE_EXPECTED_ERRORS, error_rate, error_rate_limit, error_rate_over_stages,
    evaluate, evaluate_release, latency, metric_mean, sample_ratio, stage_evidence,
};
pub use plan::{
    ArmObservations, DEFAULT_MIN_ABSOLUTE_INCREASE, Direction, ErrorCounts, Guardrail,
    GuardrailPlan, GuardrailSpec, MetricSums, Observations, PlanProblem, StageContrast,
    StageCounts, StageEvidence, TestSettings, Tolerance,
};
pub use verdict::{
    Evidence, GuardrailCheck, GuardrailReport, Method, Needed, Scale, SrmCheck, Verdict,
};
