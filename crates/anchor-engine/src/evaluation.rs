//! What an evaluation returns: a value (or none, meaning "use your default"), the variant, and
//! OpenFeature's reason and error code.

use serde::Serialize;
use serde_json::Value;

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
}

/// The rule that decided an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RuleRef<'a> {
    pub id: &'a str,
    /// Its position in the flag's rule list.
    pub index: usize,
}

/// The result of evaluating one flag for one context. It borrows from the snapshot, so producing
/// it never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation<'a> {
    /// The served value; `None` when the caller's default applies (reason `ERROR`).
    pub value: Option<&'a Value>,
    pub variant: Option<&'a str>,
    pub reason: Reason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef<'a>>,
    /// With reason `PREREQUISITE_FAILED`: the first prerequisite flag that did not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_prerequisite: Option<&'a str>,
    /// The version of the flag's configuration that decided; `None` for an unknown flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag_version: Option<u64>,
}

impl<'a> Evaluation<'a> {
    pub(crate) fn error(code: ErrorCode, message: &'static str, version: Option<u64>) -> Self {
        Evaluation {
            value: None,
            variant: None,
            reason: Reason::Error,
            error_code: Some(code),
            error_message: Some(message),
            rule: None,
            failed_prerequisite: None,
            flag_version: version,
        }
    }

    pub fn is_error(&self) -> bool {
        self.error_code.is_some()
    }
}

/// A typed evaluation: the value (the caller's default on error) and the details.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution<'a, T> {
    pub value: T,
    pub details: Evaluation<'a>,
}
