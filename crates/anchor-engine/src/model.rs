//! The flag model: what people write, what the server stores, what SDKs receive.
//!
//! Everything here is plain serde data with no behaviour beyond (de)serialisation; the
//! [`compile`](crate::compile) step turns it into a validated [`Snapshot`](crate::Snapshot). Field
//! names are camelCase in JSON, operator names snake_case, so that the model reads like the
//! OpenFeature documents it sits next to (`targetingKey`, `variant`, `reason`).
//!
//! # A flag
//! The definition of a flag is shared by every environment of a project:
//! ```json
//! {
//!   "key": "new-checkout",
//!   "kind": "boolean",
//!   "variants": [
//!     { "name": "on", "value": true },
//!     { "name": "off", "value": false }
//!   ],
//!   "description": "The one-page checkout",
//!   "tags": ["checkout", "team-payments"],
//!   "lifecycle": "temporary",
//!   "cleanupDate": "2027-03-31"
//! }
//! ```
//! Keys match `[a-zA-Z0-9._-]{1,128}`. Variant names follow the same rule. Every variant's value
//! must be of the flag's kind: `boolean`, `string`, `number` or `json` (any JSON value).
//!
//! # A flag's configuration in one environment
//! ```json
//! {
//!   "enabled": true,
//!   "offVariant": "off",
//!   "targets": { "on": ["user-1", "user-2"] },
//!   "rules": [
//!     {
//!       "id": "beta-testers",
//!       "description": "Everyone in the beta segment",
//!       "conditions": [ { "attribute": "targetingKey", "operator": "segment_match", "values": ["beta"] } ],
//!       "serve": { "variant": "on" }
//!     }
//!   ],
//!   "defaultServe": {
//!     "rollout": { "variants": [ { "variant": "on", "weight": 5000 }, { "variant": "off", "weight": 95000 } ] }
//!   },
//!   "prerequisites": [ { "flag": "payments-v2", "variant": "on" } ],
//!   "version": 7
//! }
//! ```
//! `enabled: false` is the kill switch: every context gets `offVariant` with reason `DISABLED`.
//! Evaluation order: kill switch, prerequisites, individual targets, rules in order, default serve.
//!
//! # A rule and its conditions
//! ```json
//! {
//!   "id": "eu-pro",
//!   "conditions": [
//!     { "attribute": "country", "operator": "in", "values": ["DE", "FR"] },
//!     { "attribute": "plan", "operator": "in", "values": ["free"], "negate": true },
//!     { "attribute": "email", "operator": "ends_with", "values": ["@example.com"], "caseInsensitive": true },
//!     { "attribute": "app.version", "operator": "semver_gte", "values": ["2.1"] }
//!   ],
//!   "serve": { "variant": "on" }
//! }
//! ```
//! Conditions are AND-ed. `attribute` is a dotted path into the evaluation context
//! (`app.version` reads `{"app": {"version": …}}`, or a top-level attribute literally named
//! `app.version`); `targetingKey` is the targeting key. The operators and what their `values` hold
//! are listed on [`Operator`].
//!
//! # A segment
//! ```json
//! {
//!   "key": "beta",
//!   "description": "Beta testers",
//!   "included": ["user-1", "user-7"],
//!   "excluded": ["user-666"],
//!   "rules": [ { "id": "staff", "conditions": [ { "attribute": "email", "operator": "ends_with", "values": ["@anchor.dev"] } ] } ],
//!   "version": 3
//! }
//! ```
//! A context is a member when its targeting key is not excluded and it is either included or
//! matches some rule (a segment rule's conditions are AND-ed, the rules OR-ed).
//!
//! # A rollout
//! ```json
//! { "variants": [ { "variant": "on", "weight": 25000 }, { "variant": "off", "weight": 75000 } ],
//!   "bucketBy": "targetingKey", "salt": "new-checkout" }
//! ```
//! Weights are non-negative integers; the API writes percentages as weights out of 100,000 (so
//! 0.001% precision). `bucketBy` defaults to the targeting key and `salt` to the flag key.
//! The exact algorithm is published in `docs/bucketing.md`.
//!
//! # A whole environment
//! What [`compile`](crate::compile) takes, and what an SDK receives:
//! ```json
//! {
//!   "flags": [
//!     {
//!       "flag": { "key": "dark-mode", "kind": "boolean",
//!                 "variants": [ { "name": "on", "value": true }, { "name": "off", "value": false } ] },
//!       "config": { "enabled": true, "offVariant": "off", "defaultServe": { "variant": "on" }, "version": 1 }
//!     }
//!   ],
//!   "segments": [ { "key": "beta", "included": ["user-1"] } ]
//! }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A flag's definition, shared by every environment of a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Flag {
    pub key: String,
    pub kind: FlagKind,
    pub variants: Vec<Variant>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// The day after which a temporary flag should be gone from the code, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_date: Option<String>,
}

/// The type of every variant value of a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    Boolean,
    String,
    Number,
    Json,
}

impl FlagKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagKind::Boolean => "boolean",
            FlagKind::String => "string",
            FlagKind::Number => "number",
            FlagKind::Json => "json",
        }
    }

    /// Whether `value` may be a variant value of a flag of this kind.
    pub fn admits(self, value: &Value) -> bool {
        match self {
            FlagKind::Boolean => value.is_boolean(),
            FlagKind::String => value.is_string(),
            FlagKind::Number => value.is_number(),
            FlagKind::Json => true,
        }
    }
}

/// Whether a flag is meant to be removed once its release is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// A release or experiment flag: it should leave the code after its cleanup date.
    #[default]
    Temporary,
    /// An operational or entitlement flag that lives as long as the product.
    Permanent,
}

/// One named value a flag can serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    pub name: String,
    pub value: Value,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// How a flag behaves in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FlagConfig {
    /// The kill switch. `false`: every context gets `offVariant` with reason `DISABLED`.
    pub enabled: bool,
    /// Served when the flag is disabled or a prerequisite fails.
    pub off_variant: String,
    /// Individual targets: variant name to the targeting keys that always get it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// What a context gets when no target or rule applies (the fallthrough).
    pub default_serve: Serve,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prerequisites: Vec<Prerequisite>,
    /// Incremented by the store on every change; reported in evaluation metadata.
    #[serde(default)]
    pub version: u64,
}

/// A targeting rule: when every condition holds, serve something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub serve: Serve,
}

/// What a rule or the default serve hands out: one variant, or a sticky percentage split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum Serve {
    Variant(String),
    Rollout(Rollout),
}

/// A sticky weighted split between variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub variants: Vec<WeightedVariant>,
    /// The context attribute whose value is hashed; the targeting key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_by: Option<String>,
    /// Mixed into the hash so that flags place units independently; the flag key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WeightedVariant {
    pub variant: String,
    pub weight: u32,
}

/// One test on the evaluation context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub attribute: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Value>,
    /// Inverts the outcome, except when the attribute is missing or of the wrong type: such a
    /// condition never matches (so `negate` cannot turn "no country" into "not in DE").
    #[serde(default, skip_serializing_if = "is_false")]
    pub negate: bool,
    /// For `starts_with`, `ends_with`, `contains` and `in`/`not_in` on strings: both sides are
    /// case-folded character by character (Unicode lowercase, final sigma as sigma).
    #[serde(default, skip_serializing_if = "is_false")]
    pub case_insensitive: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Condition operators. When the context attribute is an array, a condition matches when any
/// element does (before `negate` is applied); an empty array matches nothing, so `not_in`
/// matches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// Equal to one of `values` (strings, numbers, booleans; no coercion between types;
    /// integers compare exactly, other numbers as doubles).
    In,
    /// The negation of `in`.
    NotIn,
    /// The string starts with one of `values`.
    StartsWith,
    /// The string ends with one of `values`.
    EndsWith,
    /// The string contains one of `values`.
    Contains,
    /// The string matches one of the regular expressions in `values` (Rust `regex` syntax,
    /// linear time, patterns up to 1,024 bytes).
    Matches,
    /// The number is less than one of `values`.
    Lt,
    Lte,
    Gt,
    Gte,
    /// Semantic versions (SemVer 2.0; a leading `v` and partial versions like `1.2` accepted).
    SemverEq,
    SemverLt,
    SemverLte,
    SemverGt,
    SemverGte,
    /// The timestamp (RFC 3339 string or unix seconds) is before one of `values`.
    Before,
    After,
    /// The attribute is present and not null. Takes no values.
    Exists,
    /// The context is in any of the segments named in `values`. The attribute is ignored.
    SegmentMatch,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "in",
            Operator::NotIn => "not_in",
            Operator::StartsWith => "starts_with",
            Operator::EndsWith => "ends_with",
            Operator::Contains => "contains",
            Operator::Matches => "matches",
            Operator::Lt => "lt",
            Operator::Lte => "lte",
            Operator::Gt => "gt",
            Operator::Gte => "gte",
            Operator::SemverEq => "semver_eq",
            Operator::SemverLt => "semver_lt",
            Operator::SemverLte => "semver_lte",
            Operator::SemverGt => "semver_gt",
            Operator::SemverGte => "semver_gte",
            Operator::Before => "before",
            Operator::After => "after",
            Operator::Exists => "exists",
            Operator::SegmentMatch => "segment_match",
        }
    }
}

/// This flag applies only while `flag` serves `variant` to the same context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Prerequisite {
    pub flag: String,
    pub variant: String,
}

/// A reusable group of contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Targeting keys that are members regardless of the rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included: Vec<String>,
    /// Targeting keys that are never members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<SegmentRule>,
    #[serde(default)]
    pub version: u64,
}

/// A segment rule: a context matching every condition is a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SegmentRule {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A flag definition together with its configuration in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfiguredFlag {
    pub flag: Flag,
    pub config: FlagConfig,
}

/// Everything needed to evaluate flags in one environment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvironmentConfig {
    #[serde(default)]
    pub flags: Vec<ConfiguredFlag>,
    #[serde(default)]
    pub segments: Vec<Segment>,
}

/// Whether `key` is a valid flag, segment or variant key: `[a-zA-Z0-9._-]{1,128}`.
pub fn is_valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every JSON example in this module's documentation parses as one of the model's types, so
    /// the documentation cannot drift from the code.
    #[test]
    fn every_documented_json_example_is_a_valid_model() {
        let source = include_str!("model.rs");
        let mut blocks = Vec::new();
        let mut current: Option<String> = None;
        for line in source.lines() {
            let Some(doc) = line.strip_prefix("//!") else {
                continue;
            };
            let doc = doc.strip_prefix(' ').unwrap_or(doc);
            match (&mut current, doc.trim()) {
                (None, "```json") => current = Some(String::new()),
                (Some(_), "```") => blocks.extend(current.take()),
                (Some(block), _) => {
                    block.push_str(doc);
                    block.push('\n');
                }
                (None, _) => {}
            }
        }
        assert!(blocks.len() >= 6, "found {} examples", blocks.len());
        for block in blocks {
            let parses = serde_json::from_str::<Flag>(&block).is_ok()
                || serde_json::from_str::<FlagConfig>(&block).is_ok()
                || serde_json::from_str::<Rule>(&block).is_ok()
                || serde_json::from_str::<Segment>(&block).is_ok()
                || serde_json::from_str::<Rollout>(&block).is_ok()
                || serde_json::from_str::<EnvironmentConfig>(&block)
                    .is_ok_and(|e| !e.flags.is_empty());
            assert!(
                parses,
                "this documented example is not a valid model:\n{block}"
            );
        }
    }

    #[test]
    fn keys_are_limited_to_the_documented_alphabet_and_length() {
        assert!(is_valid_key("new-checkout_v2.1"));
        assert!(is_valid_key(&"k".repeat(128)));
        assert!(!is_valid_key(&"k".repeat(129)));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("with space"));
        assert!(!is_valid_key("ünïcode"));
    }
}
