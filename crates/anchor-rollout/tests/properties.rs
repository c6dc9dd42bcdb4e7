//! Properties of the verdicts on arbitrary counts: nothing panics, every number is finite (so
//! every verdict serialises and reads back), and the outcome agrees with the bounds.

use anchor_rollout::stats::{error_rate, error_rate_limit};
use anchor_rollout::{
    ArmObservations, Direction, ErrorCounts, Guardrail, GuardrailPlan, GuardrailSpec,
    LatencySketch, MetricSums, Observations, TestSettings, Tolerance, Verdict, evaluate,
};
use proptest::prelude::*;

/// The outcome must follow from the bounds: `Regressed` exactly when the lower bound is above
/// the tolerance, `Safe` exactly when the upper bound is below it (given enough data).
fn agrees_with_bounds(verdict: &Verdict) -> bool {
    let e = verdict.evidence();
    match verdict {
        Verdict::Regressed { .. } => e.lower > e.tolerance,
        Verdict::Safe { .. } => e.upper < e.tolerance,
        Verdict::Inconclusive { .. } => e.lower <= e.tolerance && e.upper >= e.tolerance,
        Verdict::InsufficientData { .. } => true,
    }
}

fn settings(alpha: f64) -> TestSettings {
    TestSettings {
        alpha,
        min_per_arm: 100,
        tuned_for: 10_000,
    }
}

fn arm() -> impl Strategy<Value = ArmObservations> {
    (
        0u64..1_000_000,
        0u64..1_000_000,
        0u64..5_000,
        proptest::collection::vec((-1.0f64..5.0, 1u64..1_000), 0..20),
        (0u64..10_000, -1e6f64..1e6, 0.0f64..1e9),
    )
        .prop_map(
            |(exposures, requests, errors, latencies, (count, sum, squares))| {
                let mut latency = LatencySketch::new();
                for (exponent, n) in latencies {
                    latency.record_n(10f64.powf(exponent), n);
                }
                ArmObservations {
                    exposures,
                    requests,
                    errors,
                    latency,
                    metrics: [(
                        "m".to_owned(),
                        MetricSums {
                            count,
                            sum,
                            sum_of_squares: squares,
                        },
                    )]
                    .into(),
                }
            },
        )
}

fn plan() -> GuardrailPlan {
    let spec = |name: &str, guardrail| GuardrailSpec {
        name: name.into(),
        guardrail,
    };
    GuardrailPlan::new(vec![
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
        spec(
            "m",
            Guardrail::Metric {
                metric: "m".into(),
                direction: Direction::HigherIsWorse,
                tolerance: Tolerance::Relative(0.05),
            },
        ),
        spec("backstop", Guardrail::ErrorRateLimit { limit: 0.005 }),
    ])
}

proptest! {
    #[test]
    fn any_observations_give_finite_serialisable_verdicts_that_agree_with_their_bounds(
        control in arm(), treatment in arm(), share in 0.0f64..=1.0
    ) {
        let observations = Observations { control, treatment, expected_treatment_share: share };
        let report = evaluate(&plan(), &observations);
        for check in &report.checks {
            let e = check.verdict.evidence();
            for x in [e.treatment, e.control, e.estimate, e.lower, e.upper, e.tolerance] {
                prop_assert!(x.is_finite(), "{check:?}");
            }
            prop_assert!(agrees_with_bounds(&check.verdict), "{check:?}");
        }
        let json = serde_json::to_string(&report).unwrap();
        let back: anchor_rollout::GuardrailReport = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, report);
    }

    #[test]
    fn extreme_counts_neither_panic_nor_give_numbers_json_cannot_hold(
        exposures in any::<u64>(), requests in any::<u64>(), errors in any::<u64>(),
        share in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY)]
    ) {
        let arm = ArmObservations { exposures, requests, errors, ..ArmObservations::default() };
        let observations = Observations {
            control: arm.clone(),
            treatment: arm,
            expected_treatment_share: share,
        };
        let report = evaluate(&plan(), &observations);
        let json = serde_json::to_string(&report).unwrap();
        let back: anchor_rollout::GuardrailReport = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back.checks.len(), report.checks.len());
    }

    #[test]
    fn rare_error_verdicts_agree_with_their_bounds(
        n_c in 100u64..5_000, n_t in 100u64..5_000, x_c in 0u64..20, x_t in 0u64..40,
        r in 0.0f64..1.0
    ) {
        let verdict = error_rate(
            ErrorCounts::new(n_c, x_c), ErrorCounts::new(n_t, x_t), r, &settings(0.01),
        );
        prop_assert!(agrees_with_bounds(&verdict), "{verdict:?}");
    }

    #[test]
    fn backstop_verdicts_agree_with_their_bounds(
        n in 100u64..200_000, x in 0u64..2_000, limit in 0.001f64..0.05
    ) {
        let verdict = error_rate_limit(ErrorCounts::new(n, x), limit, &settings(0.01));
        prop_assert!(agrees_with_bounds(&verdict), "{verdict:?}");
    }
}
