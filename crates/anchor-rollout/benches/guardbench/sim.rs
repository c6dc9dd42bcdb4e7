//! GuardBench's simulator: seeded synthetic rollouts in simulated minutes, judged by the real
//! release controller (`release::step`) or by one of two simple baselines.
//!
//! Shared by the bench binary (`benches/guardbench.rs`, the full table) and the reduced test
//! (`tests/guardbench.rs`, the asserted bounds); `docs/guardbench.md` explains the model.
//!
//! ## The model
//! - A population of `USERS_PER_RPS × rps` users named `user-<i>`. Each run is a release of a
//!   flag of its own (salt `guardbench-<seed>`), and every user's bucket comes from the real
//!   published algorithm (`anchor_engine::bucket`, MurmurHash3 of `salt:unit`, `W = 100,000`);
//!   a user is treated at share `p` exactly when its bucket is below `p · 1,000`, so the treated
//!   set only grows from stage to stage (sticky), and its size is the realised one, not `p · N`.
//! - Each minute every user is active with probability `ACTIVE_PER_MINUTE` and an active user
//!   sends `1 + Binomial(4, ½)` requests (3 on average), so the traffic is `rps · 60` requests
//!   a minute on average. The SDK reports per arm and minute what it saw: exposures (users
//!   seen for the first time since the flag's configuration last changed, i.e. in this stage,
//!   as the SDK counts them), requests, errors and a latency sketch; the controller reads their sums since
//!   the stage's `observe_from_ms`, as the server's store would give them.
//! - Errors are independent Bernoulli draws at the arm's rate; latencies are lognormal (median
//!   100 ms, σ = 0.6), transformed per scenario for the treatment.
//!
//! ## Shortcuts (statistically exact, not approximations)
//! - Per-minute counts are drawn in aggregate rather than request by request: active users as
//!   `Binomial(users, a)`, extra requests as `Binomial(4 · active, ½)`, errors as
//!   `Binomial(requests, rate)` and latency bucket counts as one multinomial over the sketch's
//!   own buckets (conditional binomials, with each bucket's probability from the lognormal
//!   CDF). These have exactly the distributions of the per-request draws; no count is scaled.
//! - The binomial sampler is exact: inversion by geometric jumps when `n·p` is small, otherwise
//!   the beta order-statistic recursion (Knuth, TAOCP vol. 2, §3.4.1; Devroye 1986, X.4), with
//!   Marsaglia and Tsang's exact gamma sampler.
//! - The normal CDF uses the Chebyshev fit of `erfc` from Numerical Recipes (relative error
//!   below 1.2e-7), which only shapes the latency distribution, not the test statistics.

use std::fmt::Write as _;

use anchor_engine::bucket::{bucket, murmur3_x86_32};
use anchor_rollout::sketch::{bucket_index, bucket_upper_edge, bucket_value};
use anchor_rollout::{
    Action, ArmObservations, Command, HoldReason, LatencySketch, Observations, ReleaseState,
    ReleaseTemplate, command, step,
};

pub const MINUTE_MS: i64 = 60_000;
/// Users in the population per request per second of traffic.
pub const USERS_PER_RPS: u64 = 400;
/// The chance that a user is active in a given minute.
pub const ACTIVE_PER_MINUTE: f64 = 0.05;
/// A run ends after this many simulated minutes whatever the controller's state.
pub const MAX_MINUTES: i64 = 240;
/// The minutes (from the start) of the shared incident and of the metric-source outage.
pub const DISTURBANCE: (i64, i64) = (20, 30);
const LATENCY_MEDIAN_MS: f64 = 100.0;
const LATENCY_SIGMA: f64 = 0.6;
/// The rollout's total weight and the treatment's weight per percent (docs/bucketing.md).
const TOTAL_WEIGHT: u32 = 100_000;

/// splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014):
/// the crate itself has no randomness, so the simulator brings its own, seeded.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let mut rng = Self(seed ^ 0xD1B5_4A32_D192_ED03);
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1), never 0 so its logarithm is finite.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Gamma(shape, 1) for shape ≥ 1 (Marsaglia and Tsang 2000, exact by rejection).
    fn gamma(&mut self, shape: f64) -> f64 {
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            if self.uniform().ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        x / (x + self.gamma(b))
    }

    /// Binomial(n, p), exactly.
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p.is_nan() || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        if n as f64 * p < 20.0 {
            // Geometric jumps between successes: O(n·p) uniforms.
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
        // The i-th smallest of n uniforms is Beta(i, n + 1 − i); the i − 1 below it are
        // uniform on (0, y) and the n − i above it uniform on (y, 1).
        let i = n / 2 + 1;
        let y = self.beta(i as f64, (n + 1 - i) as f64);
        if p < y {
            self.binomial(i - 1, p / y)
        } else {
            i + self.binomial(n - i, (p - y) / (1.0 - y))
        }
    }
}

/// `erfc` (Numerical Recipes' `erfcc`, relative error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The CDF of the baseline lognormal latency.
fn lognormal_cdf(ms: f64) -> f64 {
    if ms <= 0.0 {
        return 0.0;
    }
    let z = (ms / LATENCY_MEDIAN_MS).ln() / LATENCY_SIGMA;
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// How the treatment's latencies differ from the control's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyShift {
    None,
    /// Every request `factor` times slower.
    Whole(f64),
    /// Requests slower than the control's `quantile` become `factor` times slower.
    Tail {
        quantile_ms: f64,
        factor: f64,
    },
}

impl LatencyShift {
    /// The CDF of the shifted latency.
    fn cdf(self, ms: f64) -> f64 {
        match self {
            Self::None => lognormal_cdf(ms),
            Self::Whole(factor) => lognormal_cdf(ms / factor),
            Self::Tail {
                quantile_ms,
                factor,
            } => {
                let base = lognormal_cdf(ms.min(quantile_ms));
                let above = (lognormal_cdf(ms / factor) - lognormal_cdf(quantile_ms)).max(0.0);
                base + above
            }
        }
    }
}

/// An arm's latency distribution over the sketch's buckets, largest first, for multinomial draws.
#[derive(Debug, Clone)]
pub struct LatencyModel {
    buckets: Vec<(i32, f64)>,
}

impl LatencyModel {
    #[must_use]
    pub fn new(shift: LatencyShift) -> Self {
        let low = bucket_index(LATENCY_MEDIAN_MS * (-7.0 * LATENCY_SIGMA).exp()).unwrap_or(0);
        let high = bucket_index(LATENCY_MEDIAN_MS * (7.0 * LATENCY_SIGMA).exp() * 2.0).unwrap_or(0);
        let mut buckets = Vec::new();
        let mut below = 0.0;
        for index in low..=high {
            // The lowest and highest buckets also take the mass beyond them.
            let upper = if index == high {
                1.0
            } else {
                shift.cdf(bucket_upper_edge(index))
            };
            let mass = upper - below;
            below = upper;
            if mass > 0.0 {
                buckets.push((index, mass));
            }
        }
        buckets.sort_by(|a, b| b.1.total_cmp(&a.1));
        Self { buckets }
    }

    /// Draws `n` latencies as bucket counts (one multinomial) and adds them to `sketches`.
    fn draw(&self, rng: &mut Rng, n: u64, sketches: &mut [&mut LatencySketch]) {
        let mut remaining = n;
        let mut mass = 1.0;
        for (i, &(index, p)) in self.buckets.iter().enumerate() {
            if remaining == 0 {
                break;
            }
            let k = if i + 1 == self.buckets.len() || mass <= p {
                remaining
            } else {
                rng.binomial(remaining, (p / mass).min(1.0))
            };
            mass -= p;
            remaining -= k;
            for sketch in sketches.iter_mut() {
                sketch.record_n(bucket_value(index), k);
            }
        }
    }
}

/// The baseline latency quantile `q` in milliseconds (by bisection on the CDF).
#[must_use]
pub fn latency_quantile(q: f64) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 1e5_f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if lognormal_cdf(mid) < q {
            lo = mid
        } else {
            hi = mid
        }
    }
    0.5 * (lo + hi)
}

/// What happens to the treatment (and sometimes to both arms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    /// A/A: the treatment is the control.
    Healthy,
    /// The treatment's error rate is this many times the control's.
    Errors(f64),
    /// Every treatment request is this many times slower.
    Latency(f64),
    /// The treatment's slowest 5% (above the control's p95) are this many times slower.
    TailLatency(f64),
    /// Both arms' error rates ×5 during `DISTURBANCE`.
    SharedIncident,
    /// 20% more users than configured get the treatment: the exposures show a mismatch.
    BiasedSplit,
    /// The metric source fails during `DISTURBANCE`.
    SourceOutage,
    /// Nobody evaluates the flag.
    NoTraffic,
}

impl Scenario {
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Self::Healthy => "healthy (A/A)".into(),
            Self::Errors(k) => format!("error rate ×{k}"),
            Self::Latency(k) => format!("latency +{:.0}%", (k - 1.0) * 100.0),
            Self::TailLatency(k) => format!("slowest 5% +{:.0}%", (k - 1.0) * 100.0),
            Self::SharedIncident => "shared incident (both ×5, 10 min)".into(),
            Self::BiasedSplit => "biased split (SRM, 20% more users treated)".into(),
            Self::SourceOutage => "metric source outage (10 min)".into(),
            Self::NoTraffic => "no traffic".into(),
        }
    }

    /// Whether the treatment is worse than the guardrails' tolerances (a rollback is right).
    #[must_use]
    pub fn is_worse(self) -> bool {
        match self {
            Self::Errors(k) => k > 1.1,
            Self::Latency(k) | Self::TailLatency(k) => k > 1.2,
            _ => false,
        }
    }

    fn latency_shift(self) -> LatencyShift {
        match self {
            Self::Latency(k) => LatencyShift::Whole(k),
            Self::TailLatency(k) => LatencyShift::Tail {
                quantile_ms: latency_quantile(0.95),
                factor: k,
            },
            _ => LatencyShift::None,
        }
    }

    fn code(self) -> u64 {
        match self {
            Self::Healthy => 1,
            Self::Errors(k) => 2 + (k * 1000.0) as u64,
            Self::Latency(k) => 3 + (k * 1_000_000.0) as u64,
            Self::TailLatency(k) => 4 + (k * 1_000_000_000.0) as u64,
            Self::SharedIncident => 5,
            Self::BiasedSplit => 6,
            Self::SourceOutage => 7,
            Self::NoTraffic => 8,
        }
    }
}

/// Who decides: Release Anchor's controller or a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// `release::step` with `ReleaseTemplate::builtin()`.
    Guardrails,
    /// A check per 1-minute window (error rate above the control's by more than 10%, or p99
    /// above the control's by more than 20%); the fifth failed check rolls back (Flagger's
    /// default threshold).
    StaticThreshold,
    /// One-sided z-tests at α = 0.05 every minute on the stage's cumulative counts (error
    /// rate, and the p95/p99 tail shares), rolling back at the first significant one.
    NaiveZ,
    /// A bound, not a design: Wald's sequential probability ratio test of the treatment's error
    /// rate that is told both true rates (the control's, and the treatment's under the
    /// scenario, or twice the control's when the scenario does not change errors). It tests
    /// `p_t ≤ p₀` (the builtin's tolerance: the control's rate plus its 10% or 0.05 percentage
    /// points) against `p_t = p₁`, one look a minute after the warm-up, at the error-rate
    /// guardrail's α share (`α / 3`). Among tests of the error rate at that level it needs the
    /// least data on average to reject when `p₁` is true (Wald and Wolfowitz 1948), so no real
    /// controller, which knows neither rate, detects faster on average.
    OracleSprt,
    /// The same oracle with every concession: all of α, no warm-up and no tolerance (`p₀` is
    /// the control's rate itself).
    OracleSprtUnconstrained,
}

impl Controller {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Guardrails => "Release Anchor",
            Self::StaticThreshold => "static 5×1 min",
            Self::NaiveZ => "naive z-test",
            Self::OracleSprt => "oracle SPRT (bound)",
            Self::OracleSprtUnconstrained => "oracle SPRT, all α, no warm-up or tolerance",
        }
    }

    /// Whether this is one of the oracle bounds, which only make sense where the question is
    /// the error rate (healthy or more errors).
    #[must_use]
    pub fn is_oracle(self) -> bool {
        matches!(self, Self::OracleSprt | Self::OracleSprtUnconstrained)
    }
}

/// One cell of the table: a scenario at a traffic level and baseline error rate.
#[derive(Debug, Clone)]
pub struct Cell {
    pub scenario: Scenario,
    pub rps: u64,
    pub baseline_error_rate: f64,
    pub controller: Controller,
    /// The release template: `ReleaseTemplate::builtin()` unless [`Cell::with_first_stage`].
    pub template: ReleaseTemplate,
    control_latency: LatencyModel,
    treatment_latency: LatencyModel,
}

impl Cell {
    #[must_use]
    pub fn new(
        scenario: Scenario,
        rps: u64,
        baseline_error_rate: f64,
        controller: Controller,
    ) -> Self {
        Self {
            scenario,
            rps,
            baseline_error_rate,
            controller,
            template: ReleaseTemplate::builtin(),
            control_latency: LatencyModel::new(LatencyShift::None),
            treatment_latency: LatencyModel::new(scenario.latency_shift()),
        }
    }

    /// The builtin template with its first stage at `percentage` instead of 1%, to measure
    /// what a larger first stage buys (it must stay below the second stage's 5%).
    #[must_use]
    pub fn with_first_stage(mut self, percentage: f64) -> Self {
        self.template.stages[0].percentage = percentage;
        self
    }

    /// The seed of one run: the same for every controller, so they face the same population.
    fn run_seed(&self, seed: u64) -> u64 {
        let mut rng = Rng::new(seed);
        let mut mixed = rng.next_u64() ^ self.scenario.code().wrapping_mul(0x9E37_79B9);
        mixed ^= self.rps.wrapping_mul(0xA24B_AED4_963E_E407);
        mixed ^= ((self.baseline_error_rate * 1e6) as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25);
        mixed
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    RolledBack,
    Completed,
    HoldingInsufficientData,
    HoldingMismatch,
    HoldingOther,
    /// Still running (extending a stage) when the simulated time ran out.
    Running,
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub end: End,
    /// Minutes from the start to the rollback.
    pub rollback_minute: Option<i64>,
    /// The stage index (0 = 1%) at which the release rolled back.
    pub rollback_stage: Option<usize>,
    /// The check that fired (`None` for a baseline).
    pub fired: Option<String>,
    /// Distinct users served the treatment before the run ended.
    pub treated_users: u64,
    /// Treatment errors minus what the control's rate would have produced on its requests.
    pub excess_errors: f64,
    /// Whether the release ever held for insufficient data.
    pub held_insufficient: bool,
    /// Whether it ever held for a sample ratio mismatch.
    pub held_mismatch: bool,
    /// Whether it ever left the first stage without having held for insufficient data.
    pub advanced_unheld: bool,
    /// The last stage reached.
    pub last_stage: usize,
}

/// The bucket of every user for this run's flag, by the real published algorithm.
#[must_use]
pub fn population_buckets(salt: &str, users: u64) -> Vec<u32> {
    let mut unit = String::with_capacity(salt.len() + 24);
    (0..users)
        .map(|i| {
            unit.clear();
            let _ = write!(unit, "{salt}:user-{i}");
            bucket(murmur3_x86_32(unit.as_bytes(), 0), TOTAL_WEIGHT)
        })
        .collect()
}

/// One minute of one arm, as the SDK reports it.
#[derive(Debug, Default)]
struct Minute {
    exposures: u64,
    requests: u64,
    errors: u64,
    latency: LatencySketch,
}

/// What the baseline controllers remember.
#[derive(Debug, Default)]
struct BaselineState {
    failed_checks: u32,
    /// The oracle's log likelihood ratio so far.
    oracle_llr: f64,
}

/// The simulated world of one run.
struct World<'a> {
    cell: &'a Cell,
    rng: Rng,
    buckets: Vec<u32>,
    /// Treated users (at the current share) never yet exposed to the treatment.
    unexposed: u64,
    /// Treated users exposed before, but not yet in the current stage.
    treated_unseen: u64,
    /// Control users not yet exposed in the current stage.
    control_unseen: u64,
    treated: u64,
    share: f64,
    exposed_ever: u64,
    excess_errors: f64,
}

impl World<'_> {
    fn set_share(&mut self, percentage: f64) {
        // A biased split treats 20% more users than configured (a second rule, a stale
        // cache): the exposures show it, the outcomes do not.
        let served = if self.cell.scenario == Scenario::BiasedSplit {
            (percentage * 1.2).min(100.0)
        } else {
            percentage
        };
        let threshold = (served * f64::from(TOTAL_WEIGHT) / 100.0).round() as u32;
        let treated = self.buckets.iter().filter(|&&b| b < threshold).count() as u64;
        // Sticky: widening only adds users, and they have not seen the treatment yet.
        self.unexposed += treated.saturating_sub(self.treated);
        self.treated = treated;
        self.share = percentage;
        // The SDK counts a unit once per configuration of the flag: a new stage starts the
        // count afresh for everyone.
        self.treated_unseen = treated - self.unexposed;
        self.control_unseen = self.buckets.len() as u64 - treated;
    }

    /// Simulates minute `[t − 1, t)` and returns both arms' reports.
    fn minute(&mut self, t: i64) -> (Minute, Minute) {
        let cell = self.cell;
        let users = self.buckets.len() as u64;
        let in_disturbance = (DISTURBANCE.0..DISTURBANCE.1).contains(&(t - 1));
        let mut control_rate = cell.baseline_error_rate;
        if cell.scenario == Scenario::SharedIncident && in_disturbance {
            control_rate *= 5.0;
        }
        let treatment_rate = match cell.scenario {
            Scenario::Errors(k) => control_rate * k,
            _ => control_rate,
        }
        .min(1.0);
        let treated_activity = ACTIVE_PER_MINUTE;
        let rng = &mut self.rng;
        // Treated users: never exposed, exposed before this stage, exposed in this stage.
        let first_time = rng.binomial(self.unexposed, treated_activity);
        let first_in_stage = rng.binomial(self.treated_unseen, treated_activity);
        let seen = self.treated - self.unexposed - self.treated_unseen;
        let again = rng.binomial(seen, treated_activity);
        self.unexposed -= first_time;
        self.treated_unseen -= first_in_stage;
        self.exposed_ever += first_time;
        let treated_active = first_time + first_in_stage + again;
        let treated_new = first_time + first_in_stage;
        let control_users = users - self.treated;
        let control_new = rng.binomial(self.control_unseen, ACTIVE_PER_MINUTE);
        let control_again = rng.binomial(control_users - self.control_unseen, ACTIVE_PER_MINUTE);
        self.control_unseen -= control_new;
        let control_active = control_new + control_again;
        let arm = |rng: &mut Rng, active: u64, new: u64, rate: f64, model: &LatencyModel| {
            let requests = active + rng.binomial(4 * active, 0.5);
            let errors = rng.binomial(requests, rate);
            let mut minute = Minute {
                exposures: new,
                requests,
                errors,
                latency: LatencySketch::new(),
            };
            model.draw(rng, requests, &mut [&mut minute.latency]);
            minute
        };
        let control = arm(
            rng,
            control_active,
            control_new,
            control_rate,
            &cell.control_latency,
        );
        let treatment = arm(
            rng,
            treated_active,
            treated_new,
            treatment_rate,
            &cell.treatment_latency,
        );
        self.excess_errors += treatment.errors as f64 - control_rate * treatment.requests as f64;
        (control, treatment)
    }
}

fn add(cumulative: &mut ArmObservations, minute: &Minute) {
    cumulative.exposures += minute.exposures;
    cumulative.requests += minute.requests;
    cumulative.errors += minute.errors;
    cumulative.latency.merge(&minute.latency);
}

/// Runs one seeded rollout under the cell's controller.
#[must_use]
pub fn run(cell: &Cell, seed: u64) -> Outcome {
    let template = &cell.template;
    let salt = format!("guardbench-{seed}");
    let users = if cell.scenario == Scenario::NoTraffic {
        0
    } else {
        USERS_PER_RPS * cell.rps
    };
    let mut world = World {
        cell,
        rng: Rng::new(cell.run_seed(seed)),
        buckets: population_buckets(&salt, users),
        unexposed: 0,
        treated_unseen: 0,
        control_unseen: 0,
        treated: 0,
        share: 0.0,
        exposed_ever: 0,
        excess_errors: 0.0,
    };
    let mut outcome = Outcome {
        end: End::Running,
        rollback_minute: None,
        rollback_stage: None,
        fired: None,
        treated_users: 0,
        excess_errors: 0.0,
        held_insufficient: false,
        held_mismatch: false,
        advanced_unheld: false,
        last_stage: 0,
    };
    let start = command(template, &ReleaseState::Pending, &Command::Start, 0)
        .expect("a pending release starts");
    let mut state = start.state;
    world.set_share(template.stages[0].percentage);
    // The baselines keep their own stage clock; the same stages, dwell and warm-up.
    let warmup = |stage: usize| {
        if cell.controller == Controller::OracleSprtUnconstrained {
            0
        } else {
            i64::try_from(template.stages[stage].warmup_ms).unwrap_or(i64::MAX)
        }
    };
    let oracle = cell.controller.is_oracle().then(|| Oracle::new(cell));
    let (mut stage, mut since, mut observe_from) = (0usize, 0i64, warmup(0));
    let mut baseline = BaselineState::default();
    let mut control = ArmObservations::default();
    let mut treatment = ArmObservations::default();
    for t in 1..=MAX_MINUTES {
        let now = t * MINUTE_MS;
        let (c, tr) = world.minute(t);
        // The minute's data count in the stage when the minute began after the warm-up.
        let minute_start = now - MINUTE_MS;
        let observe_from_ms = match (&state, cell.controller) {
            (
                ReleaseState::Running { clock } | ReleaseState::Holding { clock, .. },
                Controller::Guardrails,
            ) => clock.observe_from_ms,
            _ => observe_from,
        };
        if minute_start >= observe_from_ms {
            add(&mut control, &c);
            add(&mut treatment, &tr);
        }
        let outage =
            cell.scenario == Scenario::SourceOutage && (DISTURBANCE.0..DISTURBANCE.1).contains(&t);
        let observations = Observations {
            control: std::mem::take(&mut control),
            treatment: std::mem::take(&mut treatment),
            expected_treatment_share: world.share / 100.0,
        };
        let mut new_stage = false;
        match cell.controller {
            Controller::Guardrails => {
                let source = if outage {
                    Err("metric source unavailable")
                } else {
                    Ok(&observations)
                };
                let before = state.stage();
                let next = step(template, &state, source, now);
                for action in &next.actions {
                    match action {
                        Action::SetShare { percentage } => {
                            world.set_share(*percentage);
                            new_stage = true;
                        }
                        Action::RollBack { .. } => {
                            outcome.end = End::RolledBack;
                            outcome.rollback_minute = Some(t);
                            outcome.rollback_stage = before;
                        }
                        Action::Notify { .. } => {}
                    }
                }
                match &next.state {
                    ReleaseState::Holding { reason, .. } => match reason {
                        HoldReason::InsufficientData { .. } => outcome.held_insufficient = true,
                        HoldReason::SampleRatioMismatch { .. } => outcome.held_mismatch = true,
                        _ => {}
                    },
                    ReleaseState::RolledBack { check, .. } => {
                        outcome.fired = check.as_ref().map(|c| c.name.clone());
                    }
                    _ => {}
                }
                if new_stage && before == Some(0) && !outcome.held_insufficient {
                    outcome.advanced_unheld = true;
                }
                state = next.state;
                if let Some(s) = state.stage() {
                    outcome.last_stage = s;
                }
            }
            Controller::StaticThreshold
            | Controller::NaiveZ
            | Controller::OracleSprt
            | Controller::OracleSprtUnconstrained => {
                let judged = now > observe_from && !outage;
                let regressed = judged
                    && match (cell.controller, &oracle) {
                        (Controller::StaticThreshold, _) => {
                            if minute_start >= observe_from && window_fails(&c, &tr) {
                                baseline.failed_checks += 1;
                            }
                            baseline.failed_checks >= 5
                        }
                        (_, Some(oracle)) => {
                            if minute_start >= observe_from {
                                baseline.oracle_llr += oracle.llr(&tr);
                            }
                            baseline.oracle_llr >= oracle.threshold
                        }
                        _ => naive_z_regressed(&observations),
                    };
                if regressed {
                    outcome.end = End::RolledBack;
                    outcome.rollback_minute = Some(t);
                    outcome.rollback_stage = Some(stage);
                    state = ReleaseState::RolledBack {
                        stage,
                        at_ms: now,
                        check: None,
                    };
                } else if now >= since + template.stages[stage].dwell_ms as i64 {
                    stage += 1;
                    if stage == 1 {
                        outcome.advanced_unheld = true;
                    }
                    let next = &template.stages[stage];
                    world.set_share(next.percentage);
                    new_stage = true;
                    since = now;
                    observe_from = now + warmup(stage);
                    if next.percentage >= 100.0 {
                        state = ReleaseState::Completed { at_ms: now };
                    }
                }
                outcome.last_stage = stage;
            }
        }
        if new_stage {
            control = ArmObservations::default();
            treatment = ArmObservations::default();
        } else {
            control = observations.control;
            treatment = observations.treatment;
        }
        match state {
            ReleaseState::RolledBack { .. } => {
                outcome.end = End::RolledBack;
                break;
            }
            ReleaseState::Completed { .. } => {
                outcome.end = End::Completed;
                break;
            }
            _ => {}
        }
    }
    if outcome.end == End::Running {
        outcome.end = match &state {
            ReleaseState::Holding { reason, .. } => match reason {
                HoldReason::InsufficientData { .. } => End::HoldingInsufficientData,
                HoldReason::SampleRatioMismatch { .. } => End::HoldingMismatch,
                _ => End::HoldingOther,
            },
            _ => End::Running,
        };
    }
    outcome.treated_users = world.exposed_ever;
    outcome.excess_errors = world.excess_errors;
    outcome
}

/// The oracle SPRT's constants: the null and alternative error rates and the rejection
/// threshold `ln(1/α')`.
struct Oracle {
    p0: f64,
    p1: f64,
    threshold: f64,
}

impl Oracle {
    fn new(cell: &Cell) -> Self {
        let control = cell.baseline_error_rate;
        let treatment = match cell.scenario {
            Scenario::Errors(k) => control * k,
            _ => control * 2.0,
        }
        .min(1.0);
        let plan = &cell.template.guardrails;
        let (p0, alpha) = if cell.controller == Controller::OracleSprtUnconstrained {
            (control, plan.alpha)
        } else {
            let tolerance = plan
                .guardrails
                .iter()
                .find_map(|g| match g.guardrail {
                    anchor_rollout::Guardrail::ErrorRate {
                        max_relative_increase,
                        min_absolute_increase,
                    } => Some((control * max_relative_increase).max(min_absolute_increase)),
                    _ => None,
                })
                .unwrap_or(0.0);
            (
                control + tolerance,
                plan.alpha / plan.guardrails.len() as f64,
            )
        };
        Self {
            p0,
            p1: treatment,
            threshold: (1.0 / alpha).ln(),
        }
    }

    /// The log likelihood ratio of one minute of the treatment's requests.
    fn llr(&self, treatment: &Minute) -> f64 {
        let (x, n) = (treatment.errors as f64, treatment.requests as f64);
        x * (self.p1 / self.p0).ln() + (n - x) * ((1.0 - self.p1) / (1.0 - self.p0)).ln()
    }
}

/// The static threshold's check of one 1-minute window: failed when the treatment's error
/// rate is above the control's by more than 10% or its p99 by more than 20%. A window without
/// treatment requests is skipped (Flagger would count a query without data as failed).
fn window_fails(control: &Minute, treatment: &Minute) -> bool {
    if treatment.requests == 0 || control.requests == 0 {
        return false;
    }
    let rate = |m: &Minute| m.errors as f64 / m.requests as f64;
    let errors = rate(treatment) > 1.1 * rate(control);
    let p99 = match (
        treatment.latency.quantile(0.99),
        control.latency.quantile(0.99),
    ) {
        (Some(t), Some(c)) => t > 1.2 * c,
        _ => false,
    };
    errors || p99
}

/// One-sided z > 1.645 (α = 0.05) for `treatment − factor · control` of two proportions,
/// with the unpooled (Wald) variance; no correction for repeated looks or several tests.
fn z_significant(x_t: u64, n_t: u64, x_c: u64, n_c: u64, factor: f64) -> bool {
    if n_t == 0 || n_c == 0 {
        return false;
    }
    let (p_t, p_c) = (x_t as f64 / n_t as f64, x_c as f64 / n_c as f64);
    let variance =
        p_t * (1.0 - p_t) / n_t as f64 + factor * factor * p_c * (1.0 - p_c) / n_c as f64;
    variance > 0.0 && (p_t - factor * p_c) / variance.sqrt() > 1.645
}

fn naive_z_regressed(o: &Observations) -> bool {
    let (c, t) = (&o.control, &o.treatment);
    if z_significant(t.errors, t.requests, c.errors, c.requests, 1.1) {
        return true;
    }
    [0.95, 0.99].into_iter().any(|q| {
        let Some(Some(index)) = c.latency.quantile_bucket(q) else {
            return false;
        };
        let x_c = c.latency.count_above_bucket(index);
        let x_t = t.latency.count_above(1.2 * bucket_upper_edge(index));
        z_significant(x_t, t.latency.count(), x_c, c.latency.count(), 1.0)
    })
}

/// A row of the table.
#[derive(Debug, Clone)]
pub struct Summary {
    pub runs: usize,
    pub rollback_rate: f64,
    pub rollback_before_25: f64,
    pub detect_median: Option<f64>,
    pub detect_p90: Option<f64>,
    pub treated_median: f64,
    pub excess_median: f64,
    pub excess_p90: f64,
    pub held_insufficient: f64,
    pub ended_insufficient: f64,
    pub held_mismatch: f64,
    pub completed: f64,
    pub advanced_unheld: usize,
}

/// The `q`-quantile of `values` (nearest rank), or `None` when empty.
#[must_use]
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[must_use]
pub fn summarize(outcomes: &[Outcome]) -> Summary {
    let n = outcomes.len().max(1) as f64;
    let share = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as f64 / n;
    let minutes: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.rollback_minute.map(|m| m as f64))
        .collect();
    let treated: Vec<f64> = outcomes.iter().map(|o| o.treated_users as f64).collect();
    let excess: Vec<f64> = outcomes.iter().map(|o| o.excess_errors).collect();
    Summary {
        runs: outcomes.len(),
        rollback_rate: share(&|o| o.end == End::RolledBack),
        rollback_before_25: share(&|o| o.rollback_stage.is_some_and(|s| s < 2)),
        detect_median: quantile(&minutes, 0.5),
        detect_p90: quantile(&minutes, 0.9),
        treated_median: quantile(&treated, 0.5).unwrap_or(0.0),
        excess_median: quantile(&excess, 0.5).unwrap_or(0.0),
        excess_p90: quantile(&excess, 0.9).unwrap_or(0.0),
        held_insufficient: share(&|o| o.held_insufficient),
        ended_insufficient: share(&|o| o.end == End::HoldingInsufficientData),
        held_mismatch: share(&|o| o.held_mismatch),
        completed: share(&|o| o.end == End::Completed),
        advanced_unheld: outcomes.iter().filter(|o| o.advanced_unheld).count(),
    }
}

/// Runs `seeds` seeded rollouts of one cell.
#[must_use]
pub fn run_cell(cell: &Cell, seeds: std::ops::Range<u64>) -> Vec<Outcome> {
    seeds.map(|seed| run(cell, seed)).collect()
}

/// The table's header (markdown).
#[must_use]
pub fn header() -> String {
    "| scenario | rps | base err | controller | runs | rollback | before 25% | detect p50 / p90 (min) | treated users p50 | excess errors p50 / p90 | held: insufficient data (ever / at end) | held: SRM | completed |\n\
     |---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        .to_owned()
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// One markdown row.
#[must_use]
pub fn row(cell: &Cell, s: &Summary) -> String {
    let minutes = |m: Option<f64>| m.map_or("–".to_owned(), |m| format!("{m:.0}"));
    let rollback = if cell.scenario.is_worse() {
        pct(s.rollback_rate)
    } else {
        format!("**{}** (false)", pct(s.rollback_rate))
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.0} | {:.1} / {:.1} | {} / {} | {} | {} |",
        cell.scenario.name(),
        cell.rps,
        pct(cell.baseline_error_rate),
        cell.controller.name(),
        s.runs,
        rollback,
        pct(s.rollback_before_25),
        minutes(s.detect_median),
        minutes(s.detect_p90),
        s.treated_median,
        s.excess_median,
        s.excess_p90,
        pct(s.held_insufficient),
        pct(s.ended_insufficient),
        pct(s.held_mismatch),
        pct(s.completed),
    )
}

/// The cells of the full matrix: every baseline error rate for the healthy and ×2 scenarios,
/// 0.5% for the others; every traffic level; each controller.
#[must_use]
pub fn matrix(controllers: &[Controller], rps_levels: &[u64]) -> Vec<Cell> {
    let scenarios: [(Scenario, &[f64]); 9] = [
        (Scenario::Healthy, &[0.001, 0.005, 0.02]),
        (Scenario::Errors(2.0), &[0.001, 0.005, 0.02]),
        (Scenario::Errors(5.0), &[0.005]),
        (Scenario::Latency(1.3), &[0.005]),
        (Scenario::TailLatency(1.3), &[0.005]),
        (Scenario::Latency(1.1), &[0.005]),
        (Scenario::SharedIncident, &[0.005]),
        (Scenario::BiasedSplit, &[0.005]),
        (Scenario::SourceOutage, &[0.005]),
    ];
    let mut cells = Vec::new();
    for (scenario, baselines) in scenarios {
        for &baseline in baselines {
            for &rps in rps_levels {
                for &controller in controllers {
                    if controller.is_oracle()
                        && !matches!(scenario, Scenario::Healthy | Scenario::Errors(_))
                    {
                        continue;
                    }
                    cells.push(Cell::new(scenario, rps, baseline, controller));
                }
            }
        }
    }
    // No traffic at all: one row per controller.
    for &controller in controllers.iter().filter(|c| !c.is_oracle()) {
        cells.push(Cell::new(Scenario::NoTraffic, 0, 0.005, controller));
    }
    cells
}
