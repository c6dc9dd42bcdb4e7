//! Canary coverage: the table of shares and treated users, its warnings, the template's
//! checks, and a `requireCoverage` stage that waits for treated users before it advances.

use anchor_rollout::coverage::{CoverageGap, coverage_gaps};
use anchor_rollout::{
    ArmObservations, Command, CoverageObservations, CoverageRow, Guardrail, GuardrailPlan,
    GuardrailSpec, HoldReason, Observations, ReleaseState, ReleaseTemplate, command,
    coverage_table, step_with_coverage,
};
use serde_json::json;

const MINUTE: i64 = 60_000;

/// Two stages of 10 minutes (5% requiring coverage, then 100%), a 5-minute extension, the
/// error-rate guardrail only, coverage by `platform` and `country`: written as JSON, as people
/// send it.
fn template(require: bool) -> ReleaseTemplate {
    let mut t: ReleaseTemplate = serde_json::from_value(json!({
        "stages": [
            {"percentage": 5.0, "dwellMs": 10 * MINUTE, "requireCoverage": require},
            {"percentage": 100.0, "dwellMs": 10 * MINUTE}
        ],
        "guardrails": serde_json::to_value(ReleaseTemplate::builtin().guardrails).unwrap(),
        "maxExtensionMs": 5 * MINUTE,
        "coverageAttributes": ["platform", "country"]
    }))
    .unwrap();
    t.guardrails = GuardrailPlan::new(vec![GuardrailSpec {
        name: "error rate".into(),
        guardrail: Guardrail::ErrorRate {
            max_relative_increase: 0.5,
            min_absolute_increase: 0.0,
        },
    }]);
    t
}

/// Healthy, decisive observations at a 5% split.
fn healthy() -> Observations {
    let arm = |exposures: u64| ArmObservations {
        exposures,
        requests: exposures * 20,
        errors: exposures / 5,
        ..ArmObservations::default()
    };
    Observations {
        control: arm(950_000),
        treatment: arm(50_000),
        expected_treatment_share: 0.05,
    }
}

/// `(attribute, value, control, treatment)` rows as observations.
fn counts(rows: &[(&str, &str, u64, u64)]) -> CoverageObservations {
    let mut observed = CoverageObservations::default();
    for &(attribute, value, control, treatment) in rows {
        for (arm, n) in [
            (&mut observed.control, control),
            (&mut observed.treatment, treatment),
        ] {
            if n > 0 {
                arm.entry(attribute.into())
                    .or_default()
                    .insert(value.into(), n);
            }
        }
    }
    observed
}

fn check(observed: &[(&str, &str, u64, u64)], expected: &[(&str, &str, f64, u64, bool)]) {
    let table = coverage_table(&template(true).coverage, &counts(observed));
    let got: Vec<(String, String, f64, u64, bool)> = table
        .iter()
        .map(|r: &CoverageRow| {
            (
                r.attribute.clone(),
                r.value.clone(),
                (r.share * 1_000.0).round() / 1_000.0,
                r.treated_users,
                r.warning,
            )
        })
        .collect();
    let want: Vec<(String, String, f64, u64, bool)> = expected
        .iter()
        .map(|&(a, v, s, t, w)| (a.into(), v.into(), s, t, w))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_table_gives_each_values_share_and_treated_users_and_warns_on_thin_real_shares() {
    check(
        &[
            ("platform", "ios", 600, 60),
            ("platform", "android", 300, 20),
            ("platform", "web", 19, 1),
            ("country", "DE", 810, 90),
            ("country", "other", 96, 4),
            // An attribute the template does not name is left out.
            ("plan", "free", 10, 10),
        ],
        &[
            // The platforms first, in the template's order; the most users first.
            ("platform", "ios", 0.66, 60, false),
            // 32% of users with 20 treated: too few to judge.
            ("platform", "android", 0.32, 20, true),
            // 2%: not a real share.
            ("platform", "web", 0.02, 1, false),
            ("country", "DE", 0.9, 90, false),
            // "other" is many small values: it never warns.
            ("country", "other", 0.1, 4, false),
        ],
    );
    check(&[], &[]);
}

#[test]
fn gaps_name_warned_values_and_attributes_without_counts() {
    let plan = template(true).coverage;
    let observed = counts(&[
        ("platform", "ios", 500, 12),
        ("platform", "android", 500, 80),
    ]);
    let gaps = coverage_gaps(&plan, &coverage_table(&plan, &observed));
    let described: Vec<String> = gaps.iter().map(CoverageGap::describe).collect();
    assert_eq!(
        described,
        [
            "platform=ios has 12 of 50 treated users",
            "no exposures broken down by country yet"
        ]
    );
}

#[test]
fn a_template_names_at_most_five_valid_attributes_and_sane_thresholds() {
    let mut t = template(true);
    assert!(t.problems().is_empty(), "{:?}", t.problems());
    t.coverage.coverage_attributes = ["a", "", "b..c", "a", "d", "e"].map(String::from).to_vec();
    t.coverage.coverage_thresholds.min_share = 1.5;
    t.coverage.coverage_thresholds.min_treated_users = 0;
    let paths: Vec<String> = t.problems().into_iter().map(|p| p.path).collect();
    assert_eq!(
        paths,
        [
            "/coverageAttributes",
            "/coverageAttributes/1",
            "/coverageAttributes/2",
            "/coverageAttributes/3",
            "/coverageThresholds/minShare",
            "/coverageThresholds/minTreatedUsers",
        ]
    );
    let mut without = template(true);
    without.coverage.coverage_attributes.clear();
    let paths: Vec<String> = without.problems().into_iter().map(|p| p.path).collect();
    assert_eq!(paths, ["/stages/0/requireCoverage"]);
}

#[test]
fn coverage_settings_default_and_round_trip_through_json() {
    let t = template(true);
    assert_eq!(t.coverage.coverage_thresholds.min_share, 0.05);
    assert_eq!(t.coverage.coverage_thresholds.min_treated_users, 50);
    let value = serde_json::to_value(&t).unwrap();
    assert_eq!(value["coverageAttributes"], json!(["platform", "country"]));
    assert_eq!(
        value["coverageThresholds"],
        json!({"minShare": 0.05, "minTreatedUsers": 50})
    );
    assert_eq!(value["stages"][0]["requireCoverage"], json!(true));
    let back: ReleaseTemplate = serde_json::from_value(value).unwrap();
    assert_eq!(back, t);
    // Templates written before coverage existed read as none.
    let builtin = serde_json::to_value(ReleaseTemplate::builtin()).unwrap();
    assert!(builtin.get("coverageAttributes").is_none());
    let old: ReleaseTemplate = serde_json::from_value(builtin).unwrap();
    assert!(old.coverage.coverage_attributes.is_empty());
    assert!(!old.stages[0].require_coverage);
}

#[test]
fn a_stage_requiring_coverage_extends_then_holds_until_treated_users_arrive_then_advances() {
    let t = template(true);
    let started = command(&t, &ReleaseState::Pending, &Command::Start, 0).unwrap();
    let thin = counts(&[
        ("platform", "ios", 900, 60),
        ("country", "BR", 300, 12),
        ("country", "DE", 600, 48),
    ]);
    // After the dwell, the guardrails are safe but Brazil has 12 treated users: extended.
    let extended = step_with_coverage(&t, &started.state, Ok(&healthy()), Some(&thin), 11 * MINUTE);
    assert_eq!(extended.state, started.state);
    assert!(extended.actions.is_empty() && extended.decision.is_none());
    assert!(extended.report.is_some(), "the guardrails were judged");
    // After the extension, it holds and says which values lack treated users.
    let held = step_with_coverage(&t, &started.state, Ok(&healthy()), Some(&thin), 16 * MINUTE);
    let ReleaseState::Holding {
        reason: HoldReason::InsufficientCoverage { gaps },
        ..
    } = &held.state
    else {
        panic!("expected a coverage hold, got {:?}", held.state);
    };
    assert_eq!(gaps.len(), 2);
    assert_eq!(
        held.decision.unwrap().message,
        "held at 5%: country=DE has 48 of 50 treated users; country=BR has 12 of 50 treated users; the canary does not cover the user base yet"
    );
    // Still thin: no new decision.
    let again = step_with_coverage(&t, &held.state, Ok(&healthy()), Some(&thin), 17 * MINUTE);
    assert_eq!(again.state, held.state);
    assert!(again.decision.is_none());
    // Enough treated users of every real value: it advances (here to 100%, completing).
    let covered = counts(&[
        ("platform", "ios", 900, 60),
        ("country", "BR", 300, 50),
        ("country", "DE", 600, 50),
    ]);
    let advanced = step_with_coverage(&t, &held.state, Ok(&healthy()), Some(&covered), 18 * MINUTE);
    assert!(
        matches!(advanced.state, ReleaseState::Completed { .. }),
        "{:?}",
        advanced.state
    );
}

#[test]
fn coverage_never_delays_a_stage_that_does_not_require_it_nor_a_rollback() {
    let t = template(false);
    let started = command(&t, &ReleaseState::Pending, &Command::Start, 0).unwrap();
    let next = step_with_coverage(&t, &started.state, Ok(&healthy()), None, 11 * MINUTE);
    assert!(matches!(next.state, ReleaseState::Completed { .. }));
    // Requiring it, with no counts at all, holds after the extension.
    let t = template(true);
    let held = step_with_coverage(&t, &started.state, Ok(&healthy()), None, 16 * MINUTE);
    assert!(matches!(
        held.state,
        ReleaseState::Holding {
            reason: HoldReason::InsufficientCoverage { .. },
            ..
        }
    ));
    // A regression rolls back whatever the coverage.
    let mut bad = healthy();
    bad.treatment.errors = bad.treatment.requests / 2;
    let rolled = step_with_coverage(&t, &started.state, Ok(&bad), None, 2 * MINUTE);
    assert!(matches!(rolled.state, ReleaseState::RolledBack { .. }));
}

proptest::proptest! {
    /// Any counts (up to the largest a row may carry) give finite shares in [0, 1] that add
    /// up to 1 per attribute, and a warning exactly by the rule.
    #[test]
    fn every_table_has_finite_shares_adding_up_and_warnings_by_the_rule(
        cells in proptest::collection::vec(
            (0usize..2, 0usize..25, 0u64..1_000_000_000_000, 0u64..1_000_000_000_000),
            0..60,
        )
    ) {
        let plan = template(true).coverage;
        let mut observed = CoverageObservations::default();
        for (attribute, value, control, treatment) in cells {
            let attribute = ["platform", "country"][attribute].to_string();
            let value = if value == 24 { "other".to_string() } else { format!("v{value}") };
            observed.control.entry(attribute.clone()).or_default().insert(value.clone(), control);
            observed.treatment.entry(attribute).or_default().insert(value, treatment);
        }
        let table = coverage_table(&plan, &observed);
        for attribute in ["platform", "country"] {
            let rows: Vec<&CoverageRow> = table.iter().filter(|r| r.attribute == attribute).collect();
            let users: u64 = rows.iter().map(|r| r.users).sum();
            let shares: f64 = rows.iter().map(|r| r.share).sum();
            proptest::prop_assert!(users == 0 || (shares - 1.0).abs() < 1e-9, "{shares}");
            for r in rows {
                proptest::prop_assert!(r.share.is_finite() && (0.0..=1.0).contains(&r.share));
                let warn = r.value != "other" && r.share >= 0.05 && r.treated_users < 50;
                proptest::prop_assert_eq!(r.warning, warn);
            }
        }
    }
}
