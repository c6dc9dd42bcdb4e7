//! Guardrail verdicts on hand-computed cases. The reference numbers come from the formulas in
//! `stats`' module documentation, evaluated in arbitrary precision with Python's `mpmath`
//! (`loggamma`, and `betainc` for the truncated beta mixtures).

use anchor_rollout::stats::{error_rate, error_rate_limit, latency, metric_mean, sample_ratio};
use anchor_rollout::{
    ArmObservations, Direction, ErrorCounts, Guardrail, GuardrailPlan, GuardrailSpec,
    LatencySketch, Method, MetricSums, Observations, Scale, TestSettings, Tolerance, Verdict,
    evaluate,
};

fn counts(requests: u64, errors: u64) -> ErrorCounts {
    ErrorCounts::new(requests, errors)
}

fn settings(alpha: f64) -> TestSettings {
    TestSettings {
        alpha,
        min_per_arm: 100,
        tuned_for: 10_000,
    }
}

/// The expected outcome and numbers of one verdict; `None` skips a number.
struct Expect {
    outcome: &'static str,
    scale: Scale,
    method: Method,
    estimate: Option<f64>,
    lower: Option<f64>,
    upper: Option<f64>,
    tolerance: Option<f64>,
    e_regressed: Option<f64>,
    e_safe: Option<f64>,
}

const ANY: Expect = Expect {
    outcome: "",
    scale: Scale::Difference,
    method: Method::NormalMixture,
    estimate: None,
    lower: None,
    upper: None,
    tolerance: None,
    e_regressed: None,
    e_safe: None,
};

fn check(verdict: &Verdict, expect: &Expect) {
    let outcome = match verdict {
        Verdict::Regressed { .. } => "regressed",
        Verdict::Safe { .. } => "safe",
        Verdict::Inconclusive { .. } => "inconclusive",
        Verdict::InsufficientData { .. } => "insufficientData",
    };
    let evidence = verdict.evidence();
    assert_eq!(outcome, expect.outcome, "{verdict:#?}");
    assert_eq!(evidence.scale, expect.scale, "{verdict:#?}");
    assert_eq!(evidence.method, expect.method, "{verdict:#?}");
    let close = |name: &str, actual: f64, expected: Option<f64>| {
        if let Some(expected) = expected {
            assert!(
                (actual - expected).abs() <= 1e-6 * expected.abs().max(1e-3),
                "{name}: {actual} vs {expected} in {verdict:#?}"
            );
        }
    };
    close("estimate", evidence.estimate, expect.estimate);
    close("lower", evidence.lower, expect.lower);
    close("upper", evidence.upper, expect.upper);
    close("tolerance", evidence.tolerance, expect.tolerance);
    close(
        "e_regressed",
        evidence.e_regressed.unwrap_or(f64::NAN),
        expect.e_regressed,
    );
    close("e_safe", evidence.e_safe.unwrap_or(f64::NAN), expect.e_safe);
}

#[test]
fn doubled_error_rate_on_a_five_percent_arm_is_regressed_by_the_conditional_e_process() {
    // 1% against 0.5%, 10% relative tolerance, α = 0.01: the exact conditional test decides at
    // every count, on the rate-ratio scale.
    let verdict = error_rate(
        counts(285_000, 1_425),
        counts(15_000, 150),
        0.1,
        &settings(0.01),
    );
    check(
        &verdict,
        &Expect {
            outcome: "regressed",
            scale: Scale::RateRatio,
            method: Method::ConditionalBinomial,
            tolerance: Some(1.1),
            ..ANY
        },
    );
    let e = verdict.evidence();
    assert!((e.estimate - 150.5 / 15_000.0 / (1_425.5 / 285_000.0)).abs() < 1e-12);
    assert!(e.lower > 1.1 && e.lower < 2.0 && e.upper > 2.0, "{e:?}");
    assert!(e.e_regressed.unwrap() >= 100.0);
    assert_eq!(verdict.evidence().n_treatment, 15_000);
    assert_eq!(verdict.evidence().alpha, 0.01);
}

#[test]
fn rare_errors_use_the_exact_conditional_e_process() {
    // 8 against 1 error in 1,000 requests each, tolerance 0: p₀ = 1/2, the uniform prior, and
    // e_worse = (∫_{1/2}^1 p⁸(1 − p) dp / ½) / ½⁹ = 11.2556, e_safe = 0.12222. Both are far from
    // 2/0.005 = 400.
    let verdict = error_rate(counts(1_000, 1), counts(1_000, 8), 0.0, &settings(0.01));
    check(
        &verdict,
        &Expect {
            outcome: "inconclusive",
            scale: Scale::RateRatio,
            method: Method::ConditionalBinomial,
            tolerance: Some(1.0),
            estimate: Some(8.5 / 1.5),
            e_regressed: Some(11.255_555_555_555_556),
            e_safe: Some(0.122_222_222_222_222_22),
            ..ANY
        },
    );
    let evidence = verdict.evidence();
    assert!(evidence.lower < 1.0 && evidence.upper > 1.0, "{evidence:?}");
}

#[test]
fn rare_errors_far_above_the_tolerance_are_regressed_with_bounds_that_agree() {
    let verdict = error_rate(counts(2_000, 0), counts(2_000, 14), 0.1, &settings(0.01));
    let evidence = verdict.evidence();
    assert!(verdict.is_regressed(), "{verdict:#?}");
    assert!(evidence.lower > evidence.tolerance, "{evidence:?}");
}

#[test]
fn a_small_sample_is_insufficient_data_whatever_it_shows() {
    let verdict = error_rate(counts(50, 0), counts(50, 40), 0.1, &settings(0.01));
    assert!(matches!(
        verdict,
        Verdict::InsufficientData {
            minimum_per_arm: 100,
            ..
        }
    ));
}

#[test]
fn equal_error_rates_with_a_generous_tolerance_are_safe() {
    let verdict = error_rate(
        counts(200_000, 1_000),
        counts(200_000, 1_000),
        0.5,
        &settings(0.01),
    );
    check(
        &verdict,
        &Expect {
            outcome: "safe",
            scale: Scale::RateRatio,
            method: Method::ConditionalBinomial,
            tolerance: Some(1.5),
            ..ANY
        },
    );
    assert!(verdict.evidence().upper < 1.5);
}

#[test]
fn an_undecided_error_rate_says_how_much_more_data_it_needs() {
    let verdict = error_rate(counts(50_000, 250), counts(5_000, 35), 0.1, &settings(0.01));
    let Verdict::Inconclusive {
        needed: Some(needed),
        ..
    } = verdict
    else {
        panic!("{verdict:#?}");
    };
    // The arms keep their 10:1 ratio.
    assert!(needed.treatment > 0);
    assert!(
        needed.control.abs_diff(10 * needed.treatment) <= 10,
        "{needed:?}"
    );
}

#[test]
fn backstop_is_judged_on_the_treatment_rate_alone() {
    // 12 errors in 1,000 requests against a 0.5% limit: the Beta(1, 199) mixture gives
    // e_worse = 14.97968 and e_safe = 0.07595574; with α = 0.2 the threshold 2/α is 10.
    let expect = |outcome| Expect {
        outcome,
        scale: Scale::Rate,
        method: Method::Binomial,
        estimate: Some(0.012),
        tolerance: Some(0.005),
        e_regressed: Some(14.979_678_748_616_12),
        e_safe: Some(0.075_955_737_442_410_56),
        ..ANY
    };
    let regressed = error_rate_limit(counts(1_000, 12), 0.005, &settings(0.2));
    check(&regressed, &expect("regressed"));
    assert!(regressed.evidence().lower > 0.005);
    check(
        &error_rate_limit(counts(1_000, 12), 0.005, &settings(0.01)),
        &expect("inconclusive"),
    );
    let safe = error_rate_limit(counts(400_000, 400), 0.005, &settings(0.01));
    check(
        &safe,
        &Expect {
            outcome: "safe",
            scale: Scale::Rate,
            method: Method::Binomial,
            ..ANY
        },
    );
    assert!(safe.evidence().upper < 0.005 && safe.evidence().lower < 0.001);
}

fn sums(count: u64, mean: f64, variance: f64) -> MetricSums {
    let n = count as f64;
    MetricSums {
        count,
        sum: n * mean,
        sum_of_squares: (n - 1.0) * variance + n * mean * mean,
    }
}

#[test]
fn metric_means_use_the_confidence_sequence_in_either_direction() {
    // Means 10.5 against 10, variance 4, 10,000 each: s² = 8e-4, w = 0.1010210 at α = 0.01.
    let control = sums(10_000, 10.0, 4.0);
    let treatment = sums(10_000, 10.5, 4.0);
    check(
        &metric_mean(
            &control,
            &treatment,
            Direction::HigherIsWorse,
            Tolerance::Absolute(0.1),
            &settings(0.01),
        ),
        &Expect {
            outcome: "regressed",
            estimate: Some(0.5),
            lower: Some(0.5 - 0.101_020_950_891_664_24),
            upper: Some(0.5 + 0.101_020_950_891_664_24),
            tolerance: Some(0.1),
            ..ANY
        },
    );
    // The same data against a tolerance of 0.4 is undecided: 0.39898 < 0.4 < 0.60102.
    check(
        &metric_mean(
            &control,
            &treatment,
            Direction::HigherIsWorse,
            Tolerance::Absolute(0.4),
            &settings(0.01),
        ),
        &Expect {
            outcome: "inconclusive",
            ..ANY
        },
    );
    // Where lower is worse, a higher treatment is an improvement: regression −0.5 against an
    // allowed 5% of 10.
    check(
        &metric_mean(
            &control,
            &treatment,
            Direction::LowerIsWorse,
            Tolerance::Relative(0.05),
            &settings(0.01),
        ),
        &Expect {
            outcome: "safe",
            estimate: Some(-0.5),
            tolerance: Some(0.5),
            ..ANY
        },
    );
}

fn sketch(values: impl IntoIterator<Item = (f64, u64)>) -> LatencySketch {
    let mut sketch = LatencySketch::new();
    for (value, count) in values {
        sketch.record_n(value, count);
    }
    sketch
}

/// 10,000 exponential latencies of mean `mean_ms`, at evenly spaced quantiles.
fn exponential(mean_ms: f64) -> LatencySketch {
    sketch((0..10_000).map(|i| (-mean_ms * (1.0 - (f64::from(i) + 0.5) / 10_000.0).ln(), 1)))
}

#[test]
fn latency_compares_the_shares_above_the_control_quantile() {
    // Exponential latencies of mean 30 ms: p95 = 30 ln 20 = 89.9 ms. With a 20% tolerance the
    // treatment's threshold is 1.2 × the upper edge of p95's bucket, about 108 ms, and an equal
    // treatment has exp(−1.2 ln 20) = 2.7% of its requests above it, against the control's 5%.
    let control = exponential(30.0);
    let verdict = latency(&control, &exponential(30.0), 0.95, 0.2, &settings(0.01));
    let evidence = verdict.evidence();
    let threshold = evidence.threshold_ms.unwrap();
    assert!(
        (threshold / (1.2 * 30.0 * 20f64.ln()) - 1.0).abs() < 0.021,
        "{evidence:?}"
    );
    assert!((evidence.control - 0.05).abs() < 0.001, "{evidence:?}");
    // The threshold's bucket is left out of the count, so the treatment's share is a little
    // lower: 2.56%.
    assert!((evidence.treatment - 0.0256).abs() < 0.0005, "{evidence:?}");
    assert!(verdict.is_safe(), "{verdict:#?}");

    // 50% slower everywhere: exp(−1.2 ln 20 / 1.5) = 9.1% above the threshold, 8.7% once the
    // threshold sits on a bucket edge and its own bucket is left out.
    let verdict = latency(&control, &exponential(45.0), 0.95, 0.2, &settings(0.01));
    assert!(verdict.is_regressed(), "{verdict:#?}");
    let share = verdict.evidence().treatment;
    assert!((share - 0.087).abs() < 0.001, "{share}");

    // The tail needs 10 expected values: 199 requests are not enough for a p95.
    let few = sketch([(100.0, 199)]);
    assert!(matches!(
        latency(&few, &few, 0.95, 0.2, &settings(0.01)),
        Verdict::InsufficientData {
            minimum_per_arm: 200,
            ..
        }
    ));
}

#[test]
fn sample_ratio_mismatch_matches_the_dirichlet_multinomial_e_value() {
    // κ = 1000, expected 1/2: e = 0.218166 at 10,000/10,000, 9.84965 at 10,200/9,800 and
    // 4.8254e9 at 10,500/9,500.
    let balanced = sample_ratio(10_000, 10_000, 0.5, 0.01, 1_000.0);
    assert!(!balanced.mismatch);
    assert!((balanced.e_value - 0.218_165_939_789_372_7).abs() < 1e-9);
    let slight = sample_ratio(9_800, 10_200, 0.5, 0.01, 1_000.0);
    assert!(!slight.mismatch);
    assert!((slight.e_value - 9.849_654_024_671_76).abs() < 1e-8);
    let skewed = sample_ratio(9_500, 10_500, 0.5, 0.01, 1_000.0);
    assert!(skewed.mismatch);
    assert!((skewed.e_value / 4_825_431_924.613_921 - 1.0).abs() < 1e-9);
    assert_eq!(skewed.observed_share, 0.525);
}

fn arm(requests: u64, errors: u64) -> ArmObservations {
    ArmObservations {
        exposures: requests,
        requests,
        errors,
        ..ArmObservations::default()
    }
}

fn spec(name: &str, guardrail: Guardrail) -> GuardrailSpec {
    GuardrailSpec {
        name: name.into(),
        guardrail,
    }
}

#[test]
fn evaluate_splits_alpha_evenly_and_reports_every_guardrail() {
    let plan = GuardrailPlan::new(vec![
        spec(
            "errors",
            Guardrail::ErrorRate {
                max_relative_increase: 0.1,
                min_absolute_increase: 0.0,
            },
        ),
        spec(
            "p99",
            Guardrail::Latency {
                quantile: 0.99,
                max_relative_increase: 0.2,
            },
        ),
        spec("backstop", Guardrail::ErrorRateLimit { limit: 0.005 }),
        spec(
            "checkout",
            Guardrail::Metric {
                metric: "checkout".into(),
                direction: Direction::LowerIsWorse,
                tolerance: Tolerance::Relative(0.05),
            },
        ),
    ]);
    let observations = Observations {
        control: arm(285_000, 1_425),
        treatment: arm(15_000, 150),
        expected_treatment_share: 0.05,
    };
    let report = evaluate(&plan, &observations);
    assert_eq!(report.alpha_per_guardrail, 0.0025);
    let outcomes: Vec<_> = report
        .checks
        .iter()
        .map(|check| {
            assert_eq!(check.verdict.evidence().alpha, 0.0025);
            (check.name.as_str(), check.verdict.is_regressed())
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("errors", true),
            ("p99", false),
            ("backstop", true),
            ("checkout", false)
        ]
    );
    assert_eq!(report.regressed().count(), 2);
    assert!(!report.all_safe());
    assert!(!report.srm.mismatch);
}

#[test]
fn verdicts_and_plans_have_a_stable_json_shape() {
    let verdict = error_rate(counts(50, 0), counts(50, 1), 0.1, &settings(0.01));
    let json = serde_json::to_value(&verdict).unwrap();
    assert_eq!(json["outcome"], "insufficientData");
    assert_eq!(json["minimumPerArm"], 100);
    assert_eq!(json["evidence"]["method"], "conditionalBinomial");
    assert_eq!(json["evidence"]["nTreatment"], 50);
    let back: Verdict = serde_json::from_value(json).unwrap();
    assert_eq!(back, verdict);

    let plan: GuardrailPlan = serde_json::from_str(
        r#"{"guardrails": [
              {"name": "errors", "kind": "errorRate", "maxRelativeIncrease": 0.1},
              {"name": "p95", "kind": "latency", "quantile": 0.95, "maxRelativeIncrease": 0.2},
              {"name": "revenue", "kind": "metric", "metric": "revenue",
               "direction": "lowerIsWorse", "tolerance": {"relative": 0.05}},
              {"name": "backstop", "kind": "errorRateLimit", "limit": 0.005}
            ]}"#,
    )
    .unwrap();
    assert_eq!(plan.alpha, 0.01);
    assert_eq!(plan.guardrails.len(), 4);
    assert!(plan.problems().is_empty());
}

#[test]
fn the_builtin_plan_guards_error_rate_and_tail_latency() {
    let plan = GuardrailPlan::builtin();
    assert!(plan.problems().is_empty());
    assert_eq!(
        serde_json::to_value(&plan).unwrap(),
        serde_json::json!({
            "guardrails": [
                {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.1,
                 "minAbsoluteIncrease": 0.0005},
                {"name": "p95 latency", "kind": "latency", "quantile": 0.95,
                 "maxRelativeIncrease": 0.2},
                {"name": "p99 latency", "kind": "latency", "quantile": 0.99,
                 "maxRelativeIncrease": 0.2}
            ],
            "alpha": 0.01,
            "srmAlpha": 0.01,
            "srmConcentration": 1000.0,
            "minPerArm": 100,
            "tunedFor": 10000
        })
    );
}

#[test]
fn plan_problems_are_all_reported_with_json_pointers() {
    let mut plan = GuardrailPlan::new(vec![
        spec(
            "p95",
            Guardrail::Latency {
                quantile: 95.0,
                max_relative_increase: -0.2,
            },
        ),
        spec("backstop", Guardrail::ErrorRateLimit { limit: 0.0 }),
    ]);
    plan.alpha = 0.0;
    let paths: Vec<_> = plan.problems().into_iter().map(|p| p.path).collect();
    assert_eq!(
        paths,
        [
            "/alpha",
            "/guardrails/0/quantile",
            "/guardrails/0/maxRelativeIncrease",
            "/guardrails/1/limit"
        ]
    );
}

#[test]
fn metric_values_are_winsorised_at_the_cap_and_nan_is_not_counted() {
    let mut sums = MetricSums::default();
    for value in [3.0, 1_000.0, -1_000.0, f64::NAN] {
        sums.record_capped(value, 100.0);
    }
    assert_eq!(
        sums,
        MetricSums {
            count: 3,
            sum: 3.0,
            sum_of_squares: 9.0 + 10_000.0 + 10_000.0,
        }
    );
    let (mean, variance) = sums.mean_and_variance().unwrap();
    assert_eq!(mean, 1.0);
    // ((9 + 20,000) − 3 · 1²) / 2 = 10,003.
    assert_eq!(variance, 10_003.0);
}
