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
/// It is 16 bytes: a reference to the compiled flag and a packed word of indices (served variant,
/// deciding rule, failed prerequisite) with the reason and error code, so it is returned in two
/// registers, producing it never allocates, and the accessors read through the snapshot. It
/// serialises to JSON as `{value, variant, reason, errorCode, errorMessage, rule,
/// failedPrerequisite, flagVersion}` with absent fields left out.
#[derive(Clone, Copy)]
pub struct Evaluation<'a> {
    flag: Option<&'a CompiledFlag>,
    /// Bits 0–3 reason, 4–7 error code (0: none), 8–31 variant index + 1, 32–47 rule index + 1,
    /// 48–63 failed prerequisite position + 1; 0 means "none" for each index. The compiler
    /// bounds the counts ([`MAX_VARIANTS`](crate::MAX_VARIANTS) and friends) so they fit.
    bits: u64,
}

const VARIANT_SHIFT: u32 = 8;
const RULE_SHIFT: u32 = 32;
const PREREQUISITE_SHIFT: u32 = 48;

fn reason_bits(reason: Reason) -> u64 {
    match reason {
        Reason::Static => 0,
        Reason::TargetingMatch => 1,
        Reason::Split => 2,
        Reason::Disabled => 3,
        Reason::Default => 4,
        Reason::PrerequisiteFailed => 5,
        Reason::Error => 6,
    }
}

fn code_bits(code: Option<ErrorCode>) -> u64 {
    (match code {
        None => 0,
        Some(ErrorCode::FlagNotFound) => 1,
        Some(ErrorCode::TypeMismatch) => 2,
        Some(ErrorCode::ParseError) => 3,
        Some(ErrorCode::TargetingKeyMissing) => 4,
        Some(ErrorCode::InvalidContext) => 5,
        Some(ErrorCode::General) => 6,
    }) << 4
}

/// `index + 1` in the field at `shift`, `width` bits wide; 0 (none) when it does not fit, which
/// the compiler's limits rule out.
fn index_bits(index: usize, shift: u32, width: u32) -> u64 {
    let v = index as u64 + 1;
    if v < (1 << width) { v << shift } else { 0 }
}

impl<'a> Evaluation<'a> {
    pub(crate) fn error(code: ErrorCode, flag: Option<&'a CompiledFlag>) -> Self {
        Evaluation {
            flag,
            bits: reason_bits(Reason::Error) | code_bits(Some(code)),
        }
    }

    /// `variant` must be an index into the flag's variants.
    #[inline]
    pub(crate) fn served(
        flag: &'a CompiledFlag,
        variant: u32,
        reason: Reason,
        rule: Option<&'a CompiledRule>,
    ) -> Self {
        Evaluation {
            flag: Some(flag),
            bits: reason_bits(reason) | index_bits(variant as usize, VARIANT_SHIFT, 24),
        }
        .with_rule(rule)
    }

    #[inline]
    pub(crate) fn with_rule(mut self, rule: Option<&'a CompiledRule>) -> Self {
        if let Some(rule) = rule {
            self.bits |= index_bits(rule.index as usize, RULE_SHIFT, 16);
        }
        self
    }

    /// `position` is the prerequisite's position in the flag's list.
    /// The packed fields, for [`CompiledFlag::fixed`].
    pub(crate) fn bits(&self) -> u64 {
        self.bits
    }

    /// An evaluation of `flag` from bits [`Evaluation::bits`] returned for it.
    #[inline(always)]
    pub(crate) fn from_bits(flag: &'a CompiledFlag, bits: u64) -> Self {
        Evaluation {
            flag: Some(flag),
            bits,
        }
    }

    pub(crate) fn with_failed_prerequisite(mut self, position: usize) -> Self {
        self.bits |= index_bits(position, PREREQUISITE_SHIFT, 16);
        self
    }

    fn field(&self, shift: u32, width: u32) -> Option<usize> {
        let v = (self.bits >> shift) & ((1 << width) - 1);
        (v != 0).then(|| v as usize - 1)
    }

    #[inline]
    fn served_entry(&self) -> Option<&'a (Box<str>, Value)> {
        self.flag?.variants.get(self.field(VARIANT_SHIFT, 24)?)
    }

    /// The served value; `None` when the caller's default applies (reason `ERROR`).
    #[inline]
    pub fn value(&self) -> Option<&'a Value> {
        self.served_entry().map(|s| &s.1)
    }

    /// The flag's position in the snapshot's key order; `None` for an unknown flag. Callers
    /// that keep a table per flag (an SDK's evaluation counters) index it with this.
    #[inline]
    pub fn flag_index(&self) -> Option<usize> {
        self.flag.map(|f| f.index as usize)
    }

    /// The served variant's position among the flag's variants; `None` when nothing was served.
    #[inline]
    pub fn variant_index(&self) -> Option<usize> {
        self.field(VARIANT_SHIFT, 24)
    }

    /// The served variant's name.
    #[inline]
    pub fn variant(&self) -> Option<&'a str> {
        self.served_entry().map(|s| &*s.0)
    }

    #[inline]
    pub fn reason(&self) -> Reason {
        match self.bits & 0xf {
            0 => Reason::Static,
            1 => Reason::TargetingMatch,
            2 => Reason::Split,
            3 => Reason::Disabled,
            4 => Reason::Default,
            5 => Reason::PrerequisiteFailed,
            _ => Reason::Error,
        }
    }

    #[inline]
    pub fn error_code(&self) -> Option<ErrorCode> {
        match (self.bits >> 4) & 0xf {
            0 => None,
            1 => Some(ErrorCode::FlagNotFound),
            2 => Some(ErrorCode::TypeMismatch),
            3 => Some(ErrorCode::ParseError),
            4 => Some(ErrorCode::TargetingKeyMissing),
            5 => Some(ErrorCode::InvalidContext),
            _ => Some(ErrorCode::General),
        }
    }

    pub fn error_message(&self) -> Option<&'static str> {
        self.error_code().map(ErrorCode::message)
    }

    pub fn is_error(&self) -> bool {
        self.error_code().is_some()
    }

    /// The rule that decided, if one did.
    pub fn rule(&self) -> Option<RuleRef<'a>> {
        let rule = self
            .flag?
            .config
            .as_ref()?
            .rules
            .get(self.field(RULE_SHIFT, 16)?)?;
        Some(RuleRef {
            id: &rule.id,
            index: rule.index as usize,
        })
    }

    /// With reason `PREREQUISITE_FAILED`: the first prerequisite flag that did not hold.
    pub fn failed_prerequisite(&self) -> Option<&'a str> {
        let config = self.flag?.config.as_ref()?;
        let p = config
            .prerequisites
            .get(self.field(PREREQUISITE_SHIFT, 16)?)?;
        Some(&p.key)
    }

    /// The version of the flag's configuration that decided; `None` for an unknown flag.
    pub fn flag_version(&self) -> Option<u64> {
        self.flag.map(|f| f.version)
    }
}

/// Equal when both served the same thing for the same reason from the same snapshot.
impl PartialEq for Evaluation<'_> {
    fn eq(&self, other: &Self) -> bool {
        let same_flag = match (self.flag, other.flag) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_flag && self.bits == other.bits
    }
}

impl fmt::Debug for Evaluation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evaluation")
            .field("value", &self.value())
            .field("variant", &self.variant())
            .field("reason", &self.reason())
            .field("error_code", &self.error_code())
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
        s.serialize_field("reason", &self.reason())?;
        if let Some(code) = self.error_code() {
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
