//! Explanations: the answer to "why did this user get this value?".
//!
//! [`explain`](crate::explain()) runs the same evaluator as [`evaluate`](crate::evaluate) with a
//! recording tracer, so an explanation can never disagree with an evaluation. It serialises to
//! JSON for the API and prints as numbered sentences for people.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::evaluation::{ErrorCode, Evaluation};
use crate::model::Operator;

/// An evaluation and the path that led to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation<'a> {
    pub flag_key: String,
    pub evaluation: Evaluation<'a>,
    pub steps: Vec<Step>,
}

/// One step of an evaluation, in the order taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "step",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Step {
    FlagNotFound,
    /// The flag failed to compile; it serves nothing.
    InvalidConfiguration,
    /// The kill switch is off.
    Disabled {
        off_variant: String,
    },
    /// The flag has no targeting: one variant for everyone.
    Static {
        variant: String,
    },
    Prerequisite {
        flag: String,
        required_variant: String,
        /// `None` when the prerequisite flag itself returned an error.
        served_variant: Option<String>,
        passed: bool,
    },
    IndividualTarget {
        targeting_key: String,
        variant: String,
    },
    /// The flag has individual targets and the context is not one of them.
    NotTargeted,
    /// A rule was checked. Its conditions are listed up to the first one that failed.
    Rule {
        index: usize,
        id: String,
        matched: bool,
        conditions: Vec<ConditionTrace>,
    },
    /// No target or rule applied: the default serve.
    DefaultServe,
    Bucketed {
        attribute: String,
        /// The bucketing unit as hashed after `salt + ":"`.
        unit: String,
        salt: String,
        hash: u32,
        /// `(hash * totalWeight) >> 32`.
        bucket: u32,
        total_weight: u32,
        variant: String,
    },
    BucketingFailed {
        attribute: String,
        value: Option<Value>,
        error_code: ErrorCode,
    },
}

/// One condition as checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionTrace {
    pub attribute: String,
    /// `not_in` appears as `in` with `negate` flipped.
    pub operator: Operator,
    pub negate: bool,
    pub values: Vec<Value>,
    /// The context's value of the attribute, if it had one.
    pub actual: Option<Value>,
    pub matched: bool,
    /// Why a condition could not match, when that is not plain inequality.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// For `segment_match`: each segment and whether the context is a member.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentTrace>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentTrace {
    pub segment: String,
    pub member: bool,
    pub because: String,
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flag `{}`", self.flag_key)?;
        if let Some(v) = self.evaluation.flag_version() {
            write!(f, " (version {v})")?;
        }
        writeln!(f)?;
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "{}. {step}", i + 1)?;
        }
        let e = &self.evaluation;
        match (e.variant(), e.value()) {
            (Some(variant), Some(value)) => write!(
                f,
                "=> variant `{variant}` ({value}), reason {}",
                e.reason().as_str()
            )?,
            _ => write!(
                f,
                "=> no value (the caller's default), reason {}",
                e.reason().as_str()
            )?,
        }
        if let Some(code) = e.error_code() {
            write!(f, ", error {}", code.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::FlagNotFound => f.write_str("the flag does not exist in this environment"),
            Step::InvalidConfiguration => {
                f.write_str("the flag's configuration is invalid, so it serves nothing")
            }
            Step::Disabled { off_variant } => {
                write!(
                    f,
                    "the flag is disabled (kill switch): off variant `{off_variant}`"
                )
            }
            Step::Static { variant } => {
                write!(f, "the flag has no targeting: everyone gets `{variant}`")
            }
            Step::Prerequisite {
                flag,
                required_variant,
                served_variant,
                passed,
            } => {
                write!(f, "prerequisite `{flag}` must serve `{required_variant}`: ")?;
                match served_variant {
                    Some(s) => write!(f, "it serves `{s}`")?,
                    None => f.write_str("it served no variant (error)")?,
                }
                f.write_str(if *passed {
                    ", passed"
                } else {
                    ", failed: off variant"
                })
            }
            Step::IndividualTarget {
                targeting_key,
                variant,
            } => write!(
                f,
                "targeting key `{targeting_key}` is an individual target of `{variant}`"
            ),
            Step::NotTargeted => f.write_str("the targeting key is not an individual target"),
            Step::Rule {
                index,
                id,
                matched,
                conditions,
            } => {
                write!(f, "rule {index} `{id}` ")?;
                if *matched {
                    f.write_str("matched")?;
                    if !conditions.is_empty() {
                        f.write_str(": ")?;
                        for (i, c) in conditions.iter().enumerate() {
                            if i > 0 {
                                f.write_str(" and ")?;
                            }
                            write!(f, "{c}")?;
                        }
                    }
                    Ok(())
                } else {
                    f.write_str("did not match")?;
                    match conditions.iter().position(|c| !c.matched) {
                        Some(i) => write!(f, ": condition {i} failed, {}", conditions[i]),
                        None => Ok(()),
                    }
                }
            }
            Step::DefaultServe => f.write_str("no target or rule applied: the default serve"),
            Step::Bucketed {
                attribute,
                unit,
                salt,
                hash,
                bucket,
                total_weight,
                variant,
            } => write!(
                f,
                "bucketed by {attribute} `{unit}` with salt `{salt}`: hash {hash}, bucket {bucket} of {total_weight} => `{variant}`"
            ),
            Step::BucketingFailed {
                attribute,
                value,
                error_code,
            } => {
                write!(f, "cannot bucket by {attribute}: ")?;
                match value {
                    Some(v) => write!(f, "{v} is not a non-empty string or an integer")?,
                    None => f.write_str("the context has no such attribute")?,
                }
                write!(f, " ({})", error_code.as_str())
            }
        }
    }
}

impl fmt::Display for ConditionTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::SegmentMatch {
            f.write_str(if self.negate {
                "not in segments"
            } else {
                "in segments"
            })?;
            for s in &self.segments {
                write!(
                    f,
                    " `{}` ({}: {})",
                    s.segment,
                    if s.member { "member" } else { "not a member" },
                    s.because
                )?;
            }
            return Ok(());
        }
        let values = Value::Array(self.values.clone());
        write!(
            f,
            "`{}` {}{}",
            self.attribute,
            if self.negate { "not " } else { "" },
            self.operator.as_str()
        )?;
        if self.operator != Operator::Exists {
            write!(f, " {values}")?;
        }
        match &self.actual {
            Some(v) => write!(f, " (got {v})")?,
            None => f.write_str(" (attribute missing)")?,
        }
        if let Some(note) = &self.note {
            write!(f, ": {note}")?;
        }
        Ok(())
    }
}
