//! What the guardrails answer: a verdict per guardrail with the evidence behind it, the sample
//! ratio check, and the report that gathers them.

use serde::{Deserialize, Serialize};

use super::plan::Guardrail;

/// What the evidence's estimate and bounds measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Scale {
    /// Treatment minus control, in the metric's units, signed so that positive is worse.
    Difference,
    /// The treatment's error rate over the control's.
    RateRatio,
    /// The treatment's error rate alone.
    Rate,
}

/// Which test produced the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Method {
    /// The normal-mixture confidence sequence.
    NormalMixture,
    /// The beta-binomial e-process on the treatment's share of the errors.
    ConditionalBinomial,
    /// The beta-binomial e-process on the treatment's error rate alone.
    Binomial,
}

/// The numbers behind a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    pub method: Method,
    pub scale: Scale,
    /// The treatment's measurement: a rate, a share of slow requests, or a mean.
    pub treatment: f64,
    /// The control's measurement, in the same units.
    pub control: f64,
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    /// The regression allowed, on the same scale as the estimate: above it (with the lower
    /// bound) is `Regressed`.
    pub tolerance: f64,
    /// The bound `Safe` was judged against when it is wider than `tolerance`: the tolerance
    /// scaled to the share of traffic the next stage would give the treatment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widen_tolerance: Option<f64>,
    /// The count each arm's measurement rests on (requests, or a metric's values).
    pub n_treatment: u64,
    pub n_control: u64,
    /// The α this guardrail spent.
    pub alpha: f64,
    /// The e-value against "no worse than the tolerance", when an e-process decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_regressed: Option<f64>,
    /// The e-value against "at least the tolerance worse", when an e-process decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_safe: Option<f64>,
    /// For latency, the treatment's threshold in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_ms: Option<f64>,
    /// How many of the release's stages the evidence spans (the current one included).
    #[serde(default = "one_stage")]
    pub stages: usize,
}

fn one_stage() -> usize {
    1
}

/// The additional counts per arm a decision would take if the current estimate held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Needed {
    pub treatment: u64,
    pub control: u64,
}

/// One guardrail's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "outcome",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Verdict {
    /// The lower bound of the regression is above the tolerance: roll back.
    Regressed { evidence: Evidence },
    /// The upper bound of the regression is below the tolerance.
    Safe { evidence: Evidence },
    /// Neither yet; `needed` is `None` when the current estimate sits on the bound it heads for.
    Inconclusive {
        evidence: Evidence,
        needed: Option<Needed>,
    },
    /// An arm has fewer than `minimum_per_arm` counts.
    InsufficientData {
        evidence: Evidence,
        minimum_per_arm: u64,
    },
}

impl Verdict {
    #[must_use]
    pub fn evidence(&self) -> &Evidence {
        match self {
            Self::Regressed { evidence }
            | Self::Safe { evidence }
            | Self::Inconclusive { evidence, .. }
            | Self::InsufficientData { evidence, .. } => evidence,
        }
    }

    pub(super) fn evidence_mut(&mut self) -> &mut Evidence {
        let (Self::Regressed { evidence }
        | Self::Safe { evidence }
        | Self::Inconclusive { evidence, .. }
        | Self::InsufficientData { evidence, .. }) = self;
        evidence
    }

    #[must_use]
    pub fn is_regressed(&self) -> bool {
        matches!(self, Self::Regressed { .. })
    }

    #[must_use]
    pub fn is_safe(&self) -> bool {
        matches!(self, Self::Safe { .. })
    }
}

/// The sample ratio test's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SrmCheck {
    /// `e ≥ 1/α`: the split is not the configured one, so no verdict can be trusted.
    pub mismatch: bool,
    pub expected_share: f64,
    pub observed_share: f64,
    pub n_treatment: u64,
    pub n_control: u64,
    pub e_value: f64,
    pub alpha: f64,
}

/// One guardrail with its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailCheck {
    pub name: String,
    pub guardrail: Guardrail,
    pub verdict: Verdict,
}

/// Every guardrail's verdict and the sample ratio test, at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailReport {
    pub alpha_per_guardrail: f64,
    pub srm: SrmCheck,
    pub checks: Vec<GuardrailCheck>,
}

impl GuardrailReport {
    /// The guardrails that call for a rollback.
    pub fn regressed(&self) -> impl Iterator<Item = &GuardrailCheck> {
        self.checks
            .iter()
            .filter(|check| check.verdict.is_regressed())
    }

    /// Whether every guardrail is `Safe` and the split matches: the stage may advance.
    #[must_use]
    pub fn all_safe(&self) -> bool {
        !self.srm.mismatch && self.checks.iter().all(|check| check.verdict.is_safe())
    }
}
