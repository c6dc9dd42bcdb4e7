//! # anchor-engine: the heart of Release Anchor
//!
//! Decides, for a flag and an evaluation context, which variant a user gets and why. The server
//! (for OFREP and the dashboard) and the Rust SDK (for local evaluation) both stand on it, so the
//! same configuration gives the same answer everywhere.
//!
//! - [`model`]: the serde flag model (flags, per-environment configuration, rules, conditions,
//!   segments, rollouts, prerequisites), documented with a JSON example per concept.
//! - [`compile`](compile()): validates an [`EnvironmentConfig`] (every problem at once, each
//!   with a JSON pointer) into an immutable [`Snapshot`].
//! - [`evaluate`], [`evaluate_all`], the typed `evaluate_*` accessors and [`explain`]: pure
//!   functions of a snapshot and an [`EvaluationContext`], returning OpenFeature's reasons and
//!   error codes. Evaluation never panics and never returns `Err`: errors are reasons.
//! - Bucketing follows the published specification in `docs/bucketing.md` exactly.
//!
//! ## Example
//! ```
//! use anchor_engine::{EnvironmentConfig, EvaluationContext, Reason, compile, evaluate, explain};
//!
//! let config: EnvironmentConfig = serde_json::from_str(r#"{
//!   "flags": [{
//!     "flag": { "key": "new-checkout", "kind": "boolean",
//!               "variants": [ { "name": "on", "value": true }, { "name": "off", "value": false } ] },
//!     "config": { "enabled": true, "offVariant": "off",
//!                 "rules": [ { "id": "germany",
//!                              "conditions": [ { "attribute": "country", "operator": "in", "values": ["DE"] } ],
//!                              "serve": { "variant": "on" } } ],
//!                 "defaultServe": { "variant": "off" } }
//!   }]
//! }"#).unwrap();
//! let (snapshot, diagnostics) = compile(&config);
//! assert!(diagnostics.is_empty());
//!
//! let context = EvaluationContext::with_targeting_key("user-42").with("country", "DE");
//! let evaluation = evaluate(&snapshot, "new-checkout", &context);
//! assert_eq!(evaluation.value(), Some(&serde_json::json!(true)));
//! assert_eq!(evaluation.reason(), Reason::TargetingMatch);
//! assert_eq!(evaluation.rule().map(|r| r.id), Some("germany"));
//!
//! // Why? One line per step taken.
//! let why = explain(&snapshot, "new-checkout", &context).to_string();
//! assert!(why.contains("rule 0 `germany` matched: `country` in [\"DE\"] (got \"DE\")"));
//! ```
//!
//! ## What this crate must never do
//! No async, no IO, no clock, no randomness, no logging, no global state. Time enters as
//! context attributes; configuration enters as data. Hash maps use a fixed-seed hasher, so
//! every run of the same inputs does the same work. The evaluation paths (a flag with no
//! targeting, rollouts, rules with `in`/`semver`/`segment_match` conditions) do not allocate.

pub mod bucket;
mod compile;
mod context;
mod eval;
mod evaluation;
mod explain;
mod keymap;
pub mod model;
mod semver;
mod text;
mod timestamp;

pub use compile::{
    Diagnostic, MAX_NESTED_EVALUATIONS, MAX_PREREQUISITE_DEPTH, MAX_PREREQUISITES, MAX_REGEX_LEN,
    MAX_RULES, MAX_SEGMENT_DEPTH, MAX_VARIANTS, Snapshot, compile,
};
pub use context::{ContextError, EvaluationContext, TARGETING_KEY};
pub use eval::{
    evaluate, evaluate_all, evaluate_bool, evaluate_integer, evaluate_json, evaluate_number,
    evaluate_string, explain,
};
pub use evaluation::{ErrorCode, Evaluation, Reason, Resolution, RuleRef};
pub use explain::{ConditionTrace, Explanation, SegmentTrace, Step};
pub use model::{
    Condition, ConfiguredFlag, EnvironmentConfig, Flag, FlagConfig, FlagKind, Lifecycle, Operator,
    Prerequisite, Rollout, Rule, Segment, SegmentRule, Serve, Variant, WeightedVariant,
};
