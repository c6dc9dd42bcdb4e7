//! What an evaluation returns: a value (or none, meaning "use your default"), the variant, and
//! OpenFeature's reason and error code.

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::compile::{CompiledFlag, CompiledRule};

/// Why a value was served (OpenFeature's resolution reasons, plus `PREREQUISITE_FAILED`, which
/// OpenFeature allows as a custom reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The flag has no targeting at all: every context gets the same value.
    Static,
    /// An individual target or a rule serving a fixed variant matched.
    TargetingMatch,
    /// A sticky percentage rollout placed the context (in a rule or the default serve).
    Split,
    /// The kill switch is off: the off variant.
    Disabled,
    /// No target or rule applied: the default serve's variant.
    Default,
    /// A prerequisite flag does not serve the required variant: the off variant.
    PrerequisiteFailed,
    /// No value: the caller's default applies; see the error code.
    Error,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Disabled => "DISABLED",
            Reason::Default => "DEFAULT",
            Reason::PrerequisiteFailed => "PREREQUISITE_FAILED",
            Reason::Error => "ERROR",
        }
    }
}

/// OpenFeature's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    FlagNotFound,
    TypeMismatch,
    /// The flag's configuration is invalid (it failed to compile).
    ParseError,
    /// A rollout buckets by the targeting key and the context has none usable.
    TargetingKeyMissing,
    /// A rollout buckets by an attribute that is missing or not a string or integer.
    InvalidContext,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }

    /// A sentence for people (OpenFeature's error message).
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "the flag does not exist in this environment",
            ErrorCode::TypeMismatch => "the flag's kind differs from the requested type",
            ErrorCode::ParseError => "the flag's configuration is invalid",
            ErrorCode::TargetingKeyMissing => {
                "the rollout buckets by the targeting key and the context has none (or an empty one)"
            }
            ErrorCode::InvalidContext => {
                "the rollout's bucketing attribute is missing, empty, or not a string or integer"
            }
            ErrorCode::General => "the evaluation failed",
        }
    }
}

/// The rule that decided an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RuleRef<'a> {
    pub id: &'a str,
    /// Its position in the flag's rule list.
    pub index: usize,
}

/// The result of evaluating one flag for one context.
///
/// It is a handful of references into the snapshot, so producing it never allocates and
/// returning it copies 40 bytes; the accessors read through them. It serialises to JSON as
/// `{value, variant, reason, errorCode, errorMessage, rule, failedPrerequisite, flagVersion}`
/// with absent fields left out.
#[derive(Clone, Copy)]
pub struct Evaluation<'a> {
    flag: Option<&'a CompiledFlag>,
    /// The served (variant name, value); `None` on error.
    served: Option<&'a (Box<str>, Value)>,
    rule: Option<&'a CompiledRule>,
    failed_prerequisite: Option<&'a CompiledFlag>,
    reason: Reason,
    error_code: Option<ErrorCode>,
}

impl<'a> Evaluation<'a> {
    pub(crate) fn error(code: ErrorCode, flag: Option<&'a CompiledFlag>) -> Self {
        Evaluation {
            flag,
            served: None,
            rule: None,
            failed_prerequisite: None,
            reason: Reason::Error,
            error_code: Some(code),
        }
    }

    pub(crate) fn served(
        flag: &'a CompiledFlag,
        served: &'a (Box<str>, Value),
        reason: Reason,
        rule: Option<&'a CompiledRule>,
    ) -> Self {
        Evaluation {
            flag: Some(flag),
            served: Some(served),
            rule,
            failed_prerequisite: None,
            reason,
            error_code: None,
        }
    }

    pub(crate) fn with_rule(mut self, rule: Option<&'a CompiledRule>) -> Self {
        self.rule = rule;
        self
    }

    pub(crate) fn with_failed_prerequisite(mut self, flag: &'a CompiledFlag) -> Self {
        self.failed_prerequisite = Some(flag);
        self
    }

    /// The served value; `None` when the caller's default applies (reason `ERROR`).
    #[inline]
    pub fn value(&self) -> Option<&'a Value> {
        self.served.map(|s| &s.1)
    }

    /// The served variant's name.
    #[inline]
    pub fn variant(&self) -> Option<&'a str> {
        self.served.map(|s| &*s.0)
    }

    #[inline]
    pub fn reason(&self) -> Reason {
        self.reason
    }

    #[inline]
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error_code
    }

    pub fn error_message(&self) -> Option<&'static str> {
        self.error_code.map(ErrorCode::message)
    }

    pub fn is_error(&self) -> bool {
        self.error_code.is_some()
    }

    /// The rule that decided, if one did.
    pub fn rule(&self) -> Option<RuleRef<'a>> {
        self.rule.map(|r| RuleRef {
            id: &r.id,
            index: r.index as usize,
        })
    }

    /// With reason `PREREQUISITE_FAILED`: the first prerequisite flag that did not hold.
    pub fn failed_prerequisite(&self) -> Option<&'a str> {
        self.failed_prerequisite.map(|f| &*f.key)
    }

    /// The version of the flag's configuration that decided; `None` for an unknown flag.
    pub fn flag_version(&self) -> Option<u64> {
        self.flag.map(|f| f.version)
    }
}

/// Equal when both served the same thing for the same reason from the same snapshot.
impl PartialEq for Evaluation<'_> {
    fn eq(&self, other: &Self) -> bool {
        fn same<T>(a: Option<&T>, b: Option<&T>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => std::ptr::eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        same(self.flag, other.flag)
            && same(self.served, other.served)
            && same(self.rule, other.rule)
            && same(self.failed_prerequisite, other.failed_prerequisite)
            && self.reason == other.reason
            && self.error_code == other.error_code
    }
}

impl fmt::Debug for Evaluation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evaluation")
            .field("value", &self.value())
            .field("variant", &self.variant())
            .field("reason", &self.reason)
            .field("error_code", &self.error_code)
            .field("rule", &self.rule())
            .field("failed_prerequisite", &self.failed_prerequisite())
            .field("flag_version", &self.flag_version())
            .finish()
    }
}

impl Serialize for Evaluation<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Evaluation", 8)?;
        if let Some(v) = self.value() {
            s.serialize_field("value", v)?;
        }
        if let Some(v) = self.variant() {
            s.serialize_field("variant", v)?;
        }
        s.serialize_field("reason", &self.reason)?;
        if let Some(code) = self.error_code {
            s.serialize_field("errorCode", &code)?;
            s.serialize_field("errorMessage", code.message())?;
        }
        if let Some(rule) = self.rule() {
            s.serialize_field("rule", &rule)?;
        }
        if let Some(p) = self.failed_prerequisite() {
            s.serialize_field("failedPrerequisite", p)?;
        }
        if let Some(v) = self.flag_version() {
            s.serialize_field("flagVersion", &v)?;
        }
        s.end()
    }
}

/// A typed evaluation: the value (the caller's default on error) and the details.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution<'a, T> {
    pub value: T,
    pub details: Evaluation<'a>,
}
