//! # anchor-rollout: the statistics behind progressive rollouts
//!
//! Decides, from cumulative per-arm counts, whether a rollout's treatment (the new variant) has
//! regressed against its control (the old one), is safe, or needs more data; holds the
//! latency sketch that SDKs fill and send; and moves release plans from stage to stage on those
//! verdicts.
//!
//! - [`sketch`]: [`LatencySketch`], a DDSketch-style log-bucket histogram with 1% relative
//!   accuracy, mergeable by adding counts, with a stable JSON shape for the wire.
//! - [`stats`]: anytime-valid sequential tests (normal-mixture confidence sequences, beta-binomial
//!   and Dirichlet-multinomial e-processes) for error rates, latency quantiles, custom metric
//!   means, an absolute error-rate backstop and sample ratio mismatch; [`evaluate`] runs a
//!   [`GuardrailPlan`] with its α split across the guardrails and returns a [`Verdict`] per
//!   guardrail, each with the numbers behind it.
//! - [`coverage`]: canary coverage: per coverage attribute and value, the share of the users
//!   and the treated users, with a warning for real shares too thinly treated;
//!   [`step_with_coverage`] keeps a `requireCoverage` stage from advancing until they are.
//! - [`release`]: the release-plan state machine: [`step`] judges a stage on its observations
//!   at a given time, [`command`] applies a person's action; both return the next
//!   [`ReleaseState`], the [`Action`]s for the driver and the [`Decision`] in words.
//!
//! ## What this crate must never do
//! No async, no IO, no clock, no randomness, no logging, no global state: time and data are
//! arguments, so the same observations always give the same verdicts. It depends on serde only.
//! Nothing here panics on any input; degenerate counts give `InsufficientData` or
//! `Inconclusive`.
//!
//! ## Example
//! ```
//! use anchor_rollout::{
//!     ArmObservations, Guardrail, GuardrailPlan, GuardrailSpec, Observations, evaluate,
//! };
//!
//! let plan = GuardrailPlan::new(vec![GuardrailSpec {
//!     name: "errors".into(),
//!     guardrail: Guardrail::ErrorRate {
//!         max_relative_increase: 0.1,
//!         min_absolute_increase: 0.0,
//!     },
//! }]);
//! let arm = |requests, errors| ArmObservations {
//!     exposures: requests,
//!     requests,
//!     errors,
//!     ..ArmObservations::default()
//! };
//! let observations = Observations {
//!     control: arm(285_000, 1_425),
//!     treatment: arm(15_000, 150),
//!     expected_treatment_share: 0.05,
//! };
//! let report = evaluate(&plan, &observations);
//! assert!(report.checks[0].verdict.is_regressed());
//! assert!(!report.srm.mismatch);
//! ```

mod special;

pub mod coverage;
pub mod release;
pub mod sketch;
pub mod stats;

pub use coverage::{
    CoverageGap, CoverageObservations, CoveragePlan, CoverageRow, CoverageThresholds,
    coverage_table, step_with_coverage,
};
pub use release::{
    Action, Command, CommandRefused, Decision, Event, HoldReason, MetricProjection, Projection,
    ProjectionLimit, ReleaseState, ReleaseTemplate, Stage, StageClock, StageRecord, Transition,
    command, step,
};
pub use sketch::LatencySketch;
pub use stats::{
    ArmObservations, Direction, ErrorCounts, Evidence, Guardrail, GuardrailCheck, GuardrailPlan,
    GuardrailReport, GuardrailSpec, Method, MetricSums, Needed, Observations, PlanProblem, Scale,
    SrmCheck, StageEvidence, TestSettings, Tolerance, Verdict, evaluate, evaluate_release,
};
