//! A reduced Monte-Carlo check of the guardrail statistics themselves: simulated minutes of
//! traffic, cumulative counts, a look every minute, many seeds.
//!
//! - Healthy (A/A) rollouts at the tolerance boundary must be falsely `Regressed` in at most α of
//!   the seeds (plus a Monte-Carlo slack), however many minutes are looked at.
//! - A doubled error rate must be caught within about five minutes; latency 30% slower must be
//!   caught; latency 10% slower under a 20% tolerance must not be flagged beyond α.
//!
//! The randomness is a seeded splitmix64 written here; the crate itself has none. Debug builds
//! run fewer seeds to keep the suite fast; `cargo test -p anchor-rollout --release --test
//! simulation -- --nocapture` runs the full counts and prints the measured rates.

#![allow(
    clippy::print_stderr,
    reason = "the simulation reports the rates it measured"
)]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "counts and seeds far below 2^53"
)]

use anchor_rollout::sketch::{MAX_INDEX, MIN_INDEX, bucket_index, bucket_value};
use anchor_rollout::stats::{error_rate, latency, metric_mean, sample_ratio};
use anchor_rollout::{
    Direction, ErrorCounts, LatencySketch, MetricSums, TestSettings, Tolerance, Verdict,
};

/// splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Binomial(n, p) for small p, by geometric jumps between successes: O(np) work.
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        let log_q = (-p).ln_1p();
        let (mut position, mut successes) = (0u64, 0u64);
        loop {
            let jump = (self.uniform().ln() / log_q).floor();
            if jump >= (n - position) as f64 {
                return successes;
            }
            position += jump as u64 + 1;
            successes += 1;
        }
    }

    /// A standard normal draw (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn seeds(debug: u64, release: u64) -> u64 {
    if cfg!(debug_assertions) {
        debug
    } else {
        release
    }
}

fn settings(alpha: f64) -> TestSettings {
    TestSettings {
        alpha,
        min_per_arm: 100,
        tuned_for: 10_000,
    }
}

/// The largest false alarm rate we accept for a test at level α over `runs` seeds: α plus three
/// binomial standard errors (a healthy test fails this check about once in a thousand).
fn alarm_limit(alpha: f64, runs: u64) -> f64 {
    alpha + 3.0 * (alpha * (1.0 - alpha) / runs as f64).sqrt()
}

/// One simulated error-rate rollout: requests per minute and error rates per arm.
struct ErrorScenario {
    control_per_minute: u64,
    treatment_per_minute: u64,
    control_rate: f64,
    treatment_rate: f64,
    max_relative_increase: f64,
    alpha: f64,
}

impl ErrorScenario {
    /// The first minute (1-based) at which the guardrail says `Regressed`, if any.
    fn first_regression(&self, seed: u64, minutes: u64) -> Option<u64> {
        let mut rng = Rng::new(seed);
        let (mut control, mut treatment) = (ErrorCounts::default(), ErrorCounts::default());
        for minute in 1..=minutes {
            control.requests += self.control_per_minute;
            control.errors += rng.binomial(self.control_per_minute, self.control_rate);
            treatment.requests += self.treatment_per_minute;
            treatment.errors += rng.binomial(self.treatment_per_minute, self.treatment_rate);
            let verdict = error_rate(
                control,
                treatment,
                self.max_relative_increase,
                &settings(self.alpha),
            );
            if verdict.is_regressed() {
                return Some(minute);
            }
        }
        None
    }
}

fn false_alarm_rate(runs: u64, mut regressed: impl FnMut(u64) -> bool) -> f64 {
    (0..runs).filter(|&seed| regressed(seed)).count() as f64 / runs as f64
}

#[test]
fn healthy_error_rates_are_falsely_regressed_in_at_most_alpha_of_rollouts() {
    let alpha = 0.01;
    // Tolerance 0: the healthy rollout sits exactly on the null's boundary, the hardest case.
    let cases = [
        ("1,000 requests/min per arm", 1_000, 1_000),
        ("1,000 rps, 5% treatment", 57_000, 3_000),
    ];
    for (name, control_per_minute, treatment_per_minute) in cases {
        let runs = seeds(300, 2_000);
        let scenario = ErrorScenario {
            control_per_minute,
            treatment_per_minute,
            control_rate: 0.005,
            treatment_rate: 0.005,
            max_relative_increase: 0.0,
            alpha,
        };
        let rate = false_alarm_rate(runs, |seed| scenario.first_regression(seed, 60).is_some());
        eprintln!("A/A error rate 0.5%, {name}, 60 looks, {runs} seeds: false Regressed {rate:.4}");
        assert!(rate <= alarm_limit(alpha, runs), "{name}: {rate}");
    }
}

#[test]
fn doubled_error_rate_is_caught_within_about_five_minutes() {
    // 1,000 rps in all, 0.5% against 1%, a 10% tolerance, and α shared by three guardrails.
    let alpha = 0.01 / 3.0;
    for share in [0.05, 0.10, 0.25] {
        let runs = seeds(100, 1_000);
        let scenario = ErrorScenario {
            control_per_minute: (60_000.0 * (1.0 - share)) as u64,
            treatment_per_minute: (60_000.0 * share) as u64,
            control_rate: 0.005,
            treatment_rate: 0.01,
            max_relative_increase: 0.1,
            alpha,
        };
        let mut minutes: Vec<u64> = (0..runs)
            .map(|seed| scenario.first_regression(seed, 30).unwrap_or(u64::MAX))
            .collect();
        minutes.sort_unstable();
        let median = minutes[minutes.len() / 2];
        let p90 = minutes[minutes.len() * 9 / 10];
        let within_five = minutes.iter().filter(|&&m| m <= 5).count() as f64 / runs as f64;
        eprintln!(
            "error ×2 at 0.5%, 1,000 rps, {:.0}% treatment, {runs} seeds: median {median} min, \
             p90 {p90} min, caught within 5 min in {within_five:.3}",
            share * 100.0
        );
        assert!(median <= 5, "share {share}: median {median}");
        assert!(within_five >= 0.75, "share {share}: {within_five}");
        assert!(p90 <= 8, "share {share}: p90 {p90}");
    }
}

/// Per-minute latency histograms, pre-aggregated by bucket as an SDK does.
struct LatencyArm {
    counts: Vec<u64>,
    sketch: LatencySketch,
}

impl LatencyArm {
    fn new() -> Self {
        Self {
            counts: vec![0; (MAX_INDEX - MIN_INDEX + 1) as usize],
            sketch: LatencySketch::new(),
        }
    }

    fn record(&mut self, value_ms: f64) {
        if let Some(index) = bucket_index(value_ms) {
            self.counts[(index - MIN_INDEX) as usize] += 1;
        }
    }

    /// Sends the minute: adds its buckets to the cumulative sketch.
    fn flush(&mut self) {
        for (offset, count) in self.counts.iter_mut().enumerate() {
            if *count > 0 {
                self.sketch
                    .record_n(bucket_value(offset as i32 + MIN_INDEX), *count);
                *count = 0;
            }
        }
    }
}

/// One simulated latency rollout: log-normal latencies (median 100 ms, σ = 0.5), the treatment's
/// multiplied by `slowdown`.
struct LatencyScenario {
    control_per_minute: u64,
    treatment_per_minute: u64,
    slowdown: f64,
    quantile: f64,
    max_relative_increase: f64,
    alpha: f64,
}

impl LatencyScenario {
    fn first_regression(&self, seed: u64, minutes: u64) -> Option<u64> {
        let mut rng = Rng::new(seed);
        let (mut control, mut treatment) = (LatencyArm::new(), LatencyArm::new());
        let draw = |rng: &mut Rng| 100.0 * (0.5 * rng.normal()).exp();
        for minute in 1..=minutes {
            for _ in 0..self.control_per_minute {
                control.record(draw(&mut rng));
            }
            for _ in 0..self.treatment_per_minute {
                treatment.record(self.slowdown * draw(&mut rng));
            }
            control.flush();
            treatment.flush();
            let verdict = latency(
                &control.sketch,
                &treatment.sketch,
                self.quantile,
                self.max_relative_increase,
                &settings(self.alpha),
            );
            if verdict.is_regressed() {
                return Some(minute);
            }
        }
        None
    }
}

#[test]
fn healthy_latency_is_falsely_regressed_in_at_most_alpha_of_rollouts() {
    let alpha = 0.01;
    for quantile in [0.95, 0.99] {
        let runs = seeds(100, 1_000);
        // Tolerance 0 and no slowdown: the boundary of the null again.
        let scenario = LatencyScenario {
            control_per_minute: 3_000,
            treatment_per_minute: 1_000,
            slowdown: 1.0,
            quantile,
            max_relative_increase: 0.0,
            alpha,
        };
        let minutes = seeds(20, 60);
        let rate = false_alarm_rate(runs, |seed| {
            scenario.first_regression(seed, minutes).is_some()
        });
        eprintln!(
            "A/A latency p{:.0}, tolerance 0, {minutes} looks, {runs} seeds: \
             false Regressed {rate:.4}",
            quantile * 100.0
        );
        assert!(rate <= alarm_limit(alpha, runs), "p{quantile}: {rate}");
    }
}

#[test]
fn latency_thirty_percent_slower_is_caught_and_ten_percent_under_a_twenty_percent_tolerance_is_not()
{
    let alpha = 0.01 / 3.0;
    let runs = seeds(100, 1_000);
    let slow = LatencyScenario {
        control_per_minute: 4_500,
        treatment_per_minute: 1_500,
        slowdown: 1.3,
        quantile: 0.95,
        max_relative_increase: 0.2,
        alpha,
    };
    let mut minutes: Vec<u64> = (0..runs)
        .map(|seed| slow.first_regression(seed, 15).unwrap_or(u64::MAX))
        .collect();
    minutes.sort_unstable();
    let median = minutes[minutes.len() / 2];
    let caught = minutes.iter().filter(|&&m| m <= 15).count() as f64 / runs as f64;
    eprintln!(
        "latency +30%, p95, 20% tolerance, 100 rps at 25% treatment, {runs} seeds: \
         median {median} min, caught within 15 min in {caught:.3}"
    );
    assert!(caught >= 0.95, "{caught}");
    assert!(median <= 8, "{median}");

    let mild = LatencyScenario {
        slowdown: 1.1,
        ..slow
    };
    let looks = seeds(20, 60);
    let rate = false_alarm_rate(runs, |seed| mild.first_regression(seed, looks).is_some());
    eprintln!("latency +10%, p95, 20% tolerance, {looks} looks, {runs} seeds: Regressed {rate:.4}");
    assert!(rate <= alarm_limit(alpha, runs), "{rate}");
}

#[test]
fn healthy_skewed_metric_means_are_falsely_regressed_in_at_most_alpha_of_rollouts() {
    // Revenue per request: 90% zero, else exponential with mean 50, capped at 500 by the SDK.
    // A small treatment arm (100 a minute against 500) makes the normal approximation work
    // hardest; tolerance 0 puts the healthy rollout on the null's boundary.
    let alpha = 0.01;
    let runs = seeds(200, 2_000);
    let draw = |rng: &mut Rng| {
        if rng.uniform() < 0.9 {
            0.0
        } else {
            -50.0 * rng.uniform().ln()
        }
    };
    let rate = false_alarm_rate(runs, |seed| {
        let mut rng = Rng::new(seed);
        let (mut control, mut treatment) = (MetricSums::default(), MetricSums::default());
        (1..=60).any(|_| {
            for _ in 0..500 {
                control.record_capped(draw(&mut rng), 500.0);
            }
            for _ in 0..100 {
                treatment.record_capped(draw(&mut rng), 500.0);
            }
            metric_mean(
                &control,
                &treatment,
                Direction::LowerIsWorse,
                Tolerance::Absolute(0.0),
                &settings(alpha),
            )
            .is_regressed()
        })
    });
    eprintln!(
        "A/A skewed metric mean, 100 against 500 a minute, 60 looks, {runs} seeds: \
         false Regressed {rate:.4}"
    );
    assert!(rate <= alarm_limit(alpha, runs), "{rate}");
}

#[test]
fn sample_ratio_test_stays_quiet_on_the_configured_split_and_catches_a_biased_one() {
    let alpha = 0.01;
    let runs = seeds(300, 2_000);
    // 60,000 exposures a minute, 5% configured to the treatment.
    let mismatch_minute = |seed: u64, actual_share: f64, minutes: u64| {
        let mut rng = Rng::new(seed);
        let (mut control, mut treatment) = (0, 0);
        (1..=minutes).find(|_| {
            let treated = rng.binomial(60_000, actual_share);
            treatment += treated;
            control += 60_000 - treated;
            sample_ratio(control, treatment, 0.05, alpha, 1_000.0).mismatch
        })
    };
    let rate = false_alarm_rate(runs, |seed| mismatch_minute(seed, 0.05, 60).is_some());
    eprintln!("SRM on the configured 5% split, 60 looks, {runs} seeds: false mismatch {rate:.4}");
    assert!(rate <= alarm_limit(alpha, runs), "{rate}");

    let caught = (0..runs)
        .filter(|&seed| mismatch_minute(seed, 0.045, 5).is_some())
        .count() as f64
        / runs as f64;
    eprintln!("SRM with 4.5% delivered instead of 5%: caught within 5 min in {caught:.3}");
    assert!(caught >= 0.95, "{caught}");
}

#[test]
fn rare_errors_at_low_traffic_give_no_false_alarms_and_catch_a_gross_regression() {
    // 10 rps in all, 5% treatment: about 0.15 treatment errors a minute at 0.5%.
    let runs = seeds(300, 2_000);
    let healthy = ErrorScenario {
        control_per_minute: 570,
        treatment_per_minute: 30,
        control_rate: 0.005,
        treatment_rate: 0.005,
        max_relative_increase: 0.0,
        alpha: 0.01,
    };
    let rate = false_alarm_rate(runs, |seed| healthy.first_regression(seed, 60).is_some());
    eprintln!("A/A error rate 0.5% at 10 rps, 5% treatment, 60 looks: false Regressed {rate:.4}");
    assert!(rate <= alarm_limit(0.01, runs), "{rate}");

    let broken = ErrorScenario {
        treatment_rate: 0.2,
        ..healthy
    };
    let caught = (0..runs)
        .filter(|&seed| broken.first_regression(seed, 15).is_some())
        .count() as f64
        / runs as f64;
    eprintln!(
        "error rate 0.5% -> 20% at 10 rps, 5% treatment: caught within 15 min in {caught:.3}"
    );
    assert!(caught >= 0.95, "{caught}");
}

#[test]
fn a_verdict_at_low_traffic_is_never_safe_on_a_handful_of_errors() {
    let verdict = error_rate(
        ErrorCounts::new(570, 3),
        ErrorCounts::new(30, 0),
        0.1,
        &settings(0.01),
    );
    assert!(matches!(
        verdict,
        Verdict::InsufficientData { .. } | Verdict::Inconclusive { .. }
    ));
}
