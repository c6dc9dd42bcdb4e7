//! GuardBench, reduced: the simulator of `benches/guardbench` with a few hundred seeds, and
//! the targets of the release controller asserted with Monte-Carlo slack.
//!
//! The full table is `cargo bench -p anchor-rollout --bench guardbench` (see
//! `docs/guardbench.md`). Debug builds run fewer seeds per case (see [`seeds`]) so the suite stays
//! within a couple of minutes on two busy cores; `cargo test -p anchor-rollout --release --test
//! guardbench -- --nocapture` runs the larger counts and prints what it measured.
//!
//! Targets the current statistics do not meet are `#[ignore]`d tests named after the gap, each
//! with the numbers measured, so the suite stays green and the gap stays visible:
//! `cargo test -p anchor-rollout --test guardbench -- --ignored` runs them.

#![allow(
    clippy::print_stderr,
    reason = "the simulation reports the rates it measured"
)]

#[path = "../benches/guardbench/sim.rs"]
#[allow(dead_code, reason = "the bench binary reads the rest of the simulator")]
mod sim;

use sim::{Cell, Controller, End, Outcome, Scenario, quantile, run_cell, summarize};

/// Runs per case: fewer in debug builds, where a 1,000 rps run holding for four simulated hours
/// costs about a second.
fn seeds(debug: u64, release: u64) -> std::ops::Range<u64> {
    // Seeds from 10,000 on, apart from the bench's default 0..500, so the test is a fresh sample.
    let n = if cfg!(debug_assertions) {
        debug
    } else {
        release
    };
    10_000..10_000 + n
}

fn outcomes(scenario: Scenario, rps: u64, baseline: f64, controller: Controller) -> Vec<Outcome> {
    let runs = match rps {
        0..=10 => seeds(40, 200),
        11..=100 => seeds(30, 200),
        _ => seeds(20, 100),
    };
    let cell = Cell::new(scenario, rps, baseline, controller);
    let outcomes = run_cell(&cell, runs);
    let s = summarize(&outcomes);
    eprintln!(
        "{} at {rps} rps, {:.1}% errors, {}: {} runs, rolled back {:.3} (before 25% {:.3}), \
         detect p50 {:?} p90 {:?} min, excess errors p50 {:.1}, held for insufficient data {:.3}, \
         held for SRM {:.3}, completed {:.3}",
        scenario.name(),
        baseline * 100.0,
        controller.name(),
        s.runs,
        s.rollback_rate,
        s.rollback_before_25,
        s.detect_median,
        s.detect_p90,
        s.excess_median,
        s.held_insufficient,
        s.held_mismatch,
        s.completed
    );
    outcomes
}

fn rolled_back(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| o.end == End::RolledBack).count()
}

/// The most false rollbacks we accept in `runs` healthy runs for a 1% target: 1% plus three
/// binomial standard errors (a controller exactly at 1% fails this about once in a thousand).
fn false_rollback_limit(runs: usize) -> usize {
    let n = runs as f64;
    (0.01 * n + 3.0 * (0.01 * 0.99 * n).sqrt()).floor() as usize
}

#[test]
fn healthy_rollouts_are_falsely_rolled_back_in_at_most_one_percent_of_runs() {
    let mut runs = 0;
    let mut false_rollbacks = 0;
    for (rps, baseline) in [(100, 0.005), (1_000, 0.005), (1_000, 0.02), (100, 0.001)] {
        let o = outcomes(Scenario::Healthy, rps, baseline, Controller::Guardrails);
        runs += o.len();
        false_rollbacks += rolled_back(&o);
    }
    let limit = false_rollback_limit(runs);
    assert!(
        false_rollbacks <= limit,
        "{false_rollbacks} false rollbacks in {runs} healthy runs (limit {limit})"
    );
}

#[test]
fn latency_ten_percent_slower_under_a_twenty_percent_tolerance_is_not_rolled_back() {
    let o = outcomes(Scenario::Latency(1.1), 1_000, 0.005, Controller::Guardrails);
    let limit = false_rollback_limit(o.len());
    assert!(
        rolled_back(&o) <= limit,
        "{} of {}",
        rolled_back(&o),
        o.len()
    );
}

/// No rollback at all (not even within the 1% budget): none of these is the treatment's fault.
fn never_rolls_back(scenario: Scenario) -> Vec<Outcome> {
    let mut all = Vec::new();
    for rps in [100, 1_000] {
        let o = outcomes(scenario, rps, 0.005, Controller::Guardrails);
        assert_eq!(rolled_back(&o), 0, "{} at {rps} rps", scenario.name());
        all.extend(o);
    }
    all
}

#[test]
fn a_shared_incident_hitting_both_arms_never_rolls_back() {
    never_rolls_back(Scenario::SharedIncident);
}

#[test]
fn a_metric_source_outage_never_rolls_back() {
    never_rolls_back(Scenario::SourceOutage);
}

#[test]
fn a_biased_split_never_rolls_back_and_holds_for_sample_ratio_mismatch() {
    let runs = never_rolls_back(Scenario::BiasedSplit);
    assert!(runs.iter().all(|run| run.end != End::Completed));
    // At 100 rps the mismatch of a 1% stage takes a while to show; most runs hold by the end.
    let held = runs.iter().filter(|run| run.held_mismatch).count();
    assert!(
        held as f64 >= 0.9 * runs.len() as f64,
        "{held} of {}",
        runs.len()
    );
}

#[test]
fn simulated_users_are_placed_by_the_published_bucketing_algorithm() {
    // docs/bucketing.md's worked example: salt `new-checkout`, unit `user-42`, W = 100,000.
    let buckets = sim::population_buckets("new-checkout", 43);
    assert_eq!(buckets[42], 34_907);
}

#[test]
fn at_10_rps_every_healthy_run_holds_for_insufficient_data_rather_than_advancing() {
    for baseline in [0.001, 0.005, 0.02] {
        let o = outcomes(Scenario::Healthy, 10, baseline, Controller::Guardrails);
        for run in &o {
            // A run may hold for a (false, within α) sample ratio mismatch before its dwell and
            // extension are over; it holds either way, and never advances without having said
            // that its data are insufficient.
            assert!(run.held_insufficient || run.held_mismatch, "{run:?}");
            assert!(!run.advanced_unheld, "{run:?}");
            assert_ne!(run.end, End::Completed, "{run:?}");
        }
        let reported = o.iter().filter(|run| run.held_insufficient).count();
        assert!(
            reported as f64 >= 0.9 * o.len() as f64,
            "{reported} of {}",
            o.len()
        );
    }
}

#[test]
fn no_traffic_holds_for_insufficient_data() {
    let o = outcomes(Scenario::NoTraffic, 0, 0.005, Controller::Guardrails);
    assert!(
        o.iter()
            .all(|o| o.end == End::HoldingInsufficientData && o.last_stage == 0)
    );
}

#[test]
fn doubled_error_rate_at_1000_rps_rolls_back_before_the_25_percent_stage_in_95_percent_of_runs() {
    let o = outcomes(Scenario::Errors(2.0), 1_000, 0.005, Controller::Guardrails);
    let early = summarize(&o).rollback_before_25;
    // 95% with three standard errors of slack for the run count.
    let slack = 3.0 * (0.05 * 0.95 / o.len() as f64).sqrt();
    assert!(early >= 0.95 - slack, "{early}");
}

/// Issue 5's target: error ×2 at a 0.5% baseline and 1,000 rps rolled back in a median of at
/// most 5 minutes. Not met (about 9), and out of reach of any valid test at the builtin
/// template's settings: the bench's `oracle SPRT (bound)`, a sequential probability ratio test
/// told both true error rates, which no test of the error rate at the same α share, warm-up and
/// tolerance beats on average (Wald and Wolfowitz 1948), has a median of 8 minutes on the same
/// runs (see `the_controller_detects_within_two_minutes_of_the_oracle_bound` and
/// `docs/guardbench.md`). At a 1% first stage the treatment gets about 600 requests a minute,
/// 3 errors at 0.5% and 6 under the regression: about 0.9 nats of evidence a minute against
/// the ln 300 = 5.7 nats that α/3 demands, after the 1-minute warm-up. A larger first stage
/// reaches 5 minutes but breaks the target of at most 30 excess errors (2%: 6 minutes and 34
/// errors; 3%: 4 minutes and 39), so the two targets cannot both be met at the builtin's α,
/// warm-up and tolerance.
#[test]
#[ignore = "gap: median detection of a doubled error rate at 1,000 rps is about 9 minutes"]
fn gap_doubled_error_rate_at_1000_rps_is_detected_in_a_median_of_five_minutes() {
    let o = outcomes(Scenario::Errors(2.0), 1_000, 0.005, Controller::Guardrails);
    let minutes: Vec<f64> = o
        .iter()
        .map(|o| o.rollback_minute.map_or(f64::INFINITY, |m| m as f64))
        .collect();
    let median = quantile(&minutes, 0.5).unwrap_or(f64::INFINITY);
    assert!(median <= 5.0, "median {median} minutes");
}

/// How close the controller, which knows neither error rate, comes to the oracle that knows
/// both, on the same populations and counts (the oracle's α share, warm-up and tolerance are
/// the builtin template's): the full bench measures medians of 9 against 8 minutes.
#[test]
fn the_controller_detects_within_two_minutes_of_the_oracle_bound() {
    let median_minutes = |controller| {
        let o = outcomes(Scenario::Errors(2.0), 1_000, 0.005, controller);
        let minutes: Vec<f64> = o
            .iter()
            .map(|o| o.rollback_minute.map_or(f64::INFINITY, |m| m as f64))
            .collect();
        quantile(&minutes, 0.5).unwrap_or(f64::INFINITY)
    };
    let ours = median_minutes(Controller::Guardrails);
    let oracle = median_minutes(Controller::OracleSprt);
    assert!(
        oracle > 5.0,
        "the oracle bound fell to {oracle}: revisit the gap test"
    );
    assert!(ours <= oracle + 2.0, "ours {ours}, oracle {oracle}");
}

/// The oracle is a valid test, so it is a fair bound: on healthy traffic it rolls back no more
/// often than its α share allows.
#[test]
fn the_oracle_bound_does_not_roll_back_healthy_releases() {
    let o = outcomes(Scenario::Healthy, 1_000, 0.005, Controller::OracleSprt);
    assert!(
        rolled_back(&o) <= false_rollback_limit(o.len()),
        "{}",
        rolled_back(&o)
    );
}

#[test]
fn median_excess_errors_before_rollback_are_at_most_30_at_every_traffic_level() {
    for scenario in [Scenario::Errors(2.0), Scenario::Errors(5.0)] {
        for rps in [10, 100, 1_000] {
            let o = outcomes(scenario, rps, 0.005, Controller::Guardrails);
            let excess: Vec<f64> = o.iter().map(|o| o.excess_errors).collect();
            let median = quantile(&excess, 0.5).unwrap_or(0.0);
            // The bench's 40–200 runs measure 7–30; fewer runs here, so a few errors of slack
            // for the median's own noise.
            assert!(median <= 33.0, "{} at {rps} rps: {median}", scenario.name());
        }
    }
}

#[test]
fn healthy_releases_at_1000_rps_complete_by_themselves() {
    for baseline in [0.001, 0.005, 0.02] {
        let o = outcomes(Scenario::Healthy, 1_000, baseline, Controller::Guardrails);
        let completed = o.iter().filter(|run| run.end == End::Completed).count();
        assert!(
            completed as f64 >= 0.9 * o.len() as f64,
            "{completed} of {} at {baseline}",
            o.len()
        );
    }
}

#[test]
fn the_baselines_run_in_the_same_harness_and_the_naive_z_test_cries_wolf() {
    // Not a target, a sanity check: the same healthy traffic through the baselines.
    let z = outcomes(Scenario::Healthy, 100, 0.005, Controller::NaiveZ);
    let fixed = outcomes(Scenario::Healthy, 100, 0.005, Controller::StaticThreshold);
    let ours = outcomes(Scenario::Healthy, 100, 0.005, Controller::Guardrails);
    assert!(rolled_back(&z) > rolled_back(&ours));
    assert!(rolled_back(&fixed) > rolled_back(&ours));
}
