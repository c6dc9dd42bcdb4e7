//! Evaluation: which variant a context gets, and why.
//!
//! One evaluator serves both the fast path and explanations: it is generic over a [`Tracer`],
//! and the fast path's tracer records nothing, so the compiler removes every trace call. The
//! order is: unknown flag, broken configuration, kill switch, prerequisites, individual
//! targets, rules in order, default serve. Evaluation never panics and never fails: errors are
//! reasons with an error code, and the value is then `None` (the caller's default).

use std::cmp::Ordering;

use serde_json::{Number, Value};

use crate::bucket::{bucket, hash_unit, pick_cumulative, unit_text};
use crate::compile::{
    CompiledCondition, CompiledFlag, CompiledRollout, CompiledRule, CompiledServe, Snapshot,
    StringList, Test, ValueSet,
};
use crate::context::{Entry, EvaluationContext};
use crate::evaluation::{ErrorCode, Evaluation, Reason, Resolution};
use crate::explain::{ConditionTrace, Explanation, SegmentTrace, Step};
use crate::model::{FlagKind, Operator};
use crate::semver::{OwnedVersion, Version};
use crate::timestamp::Timestamp;

/// A guard against runaway recursion; compilation already bounds prerequisite and segment
/// nesting far below it.
const MAX_RECURSION: u32 = 64;

/// Evaluates one flag for one context.
#[inline]
pub fn evaluate<'s>(
    snapshot: &'s Snapshot,
    flag_key: &str,
    context: &EvaluationContext,
) -> Evaluation<'s> {
    match snapshot.flag(flag_key) {
        Some(flag) => eval_flag(snapshot, flag, context, &mut NoTrace, 0),
        None => Evaluation::error(ErrorCode::FlagNotFound, None),
    }
}

/// Evaluates every flag of the snapshot for one context, in key order.
pub fn evaluate_all<'s>(
    snapshot: &'s Snapshot,
    context: &EvaluationContext,
) -> Vec<(&'s str, Evaluation<'s>)> {
    snapshot
        .flags
        .iter()
        .map(|flag| {
            (
                &*flag.key,
                eval_flag(snapshot, flag, context, &mut NoTrace, 0),
            )
        })
        .collect()
}

/// Evaluates one flag and records the path taken: each prerequisite, each rule with the
/// condition that failed and the value it saw, segment memberships, and the bucket number.
pub fn explain<'s>(
    snapshot: &'s Snapshot,
    flag_key: &str,
    context: &EvaluationContext,
) -> Explanation<'s> {
    let mut recorder = Recorder::default();
    let evaluation = match snapshot.flag(flag_key) {
        Some(flag) => eval_flag(snapshot, flag, context, &mut recorder, 0),
        None => {
            recorder.steps.push(Step::FlagNotFound);
            Evaluation::error(ErrorCode::FlagNotFound, None)
        }
    };
    Explanation {
        flag_key: flag_key.to_string(),
        evaluation,
        steps: recorder.steps,
    }
}

/// Evaluates a boolean flag; `default` is returned on error or when the flag is not boolean.
pub fn evaluate_bool<'s>(
    snapshot: &'s Snapshot,
    flag_key: &str,
    context: &EvaluationContext,
    default: bool,
) -> Resolution<'s, bool> {
    typed(
        snapshot,
        flag_key,
        context,
        default,
        FlagKind::Boolean,
        Value::as_bool,
    )
}

/// Evaluates a string flag.
pub fn evaluate_string<'s>(
    snapshot: &'s Snapshot,
    flag_key: &str,
    context: &EvaluationContext,
    default: &'s str,
) -> Resolution<'s, &'s str> {
    typed(
        snapshot,
        flag_key,
        context,
        default,
        FlagKind::String,
        Value::as_str,
    )
}

/// Evaluates a number flag as a float.
pub fn evaluate_number<'s>(
    snapshot: &'s Snapshot,
    flag_key: &str,
    context: &EvaluationContext,
    default: f64,
) -> Resolution<'s, f64> {
    typed(
        snapshot,
        flag_key,
        context,
        default,
        FlagKind::Number,
        Value::as_f64,
    )
}

/// Evaluates a number flag as an integer: a served value with a fraction (or beyond `i64`) is a
/// `TYPE_MISMATCH`.
pub fn evaluate_integer<'s>(
    snapshot: &'s Snapshot,
    flag_key: &str,
    context: &EvaluationContext,
    default: i64,
) -> Resolution<'s, i64> {
    typed(
        snapshot,
        flag_key,
        context,
        default,
        FlagKind::Number,
        |v| {
            v.as_i64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                    .map(|f| f as i64)
            })
        },
    )
}

/// Evaluates a JSON flag.
pub fn evaluate_json<'s>(
    snapshot: &'s Snapshot,
    flag_key: &str,
    context: &EvaluationContext,
    default: &'s Value,
) -> Resolution<'s, &'s Value> {
    typed(snapshot, flag_key, context, default, FlagKind::Json, Some)
}

fn typed<'s, T>(
    snapshot: &'s Snapshot,
    flag_key: &str,
    context: &EvaluationContext,
    default: T,
    kind: FlagKind,
    convert: impl Fn(&'s Value) -> Option<T>,
) -> Resolution<'s, T> {
    let Some(flag) = snapshot.flag(flag_key) else {
        return Resolution {
            value: default,
            details: Evaluation::error(ErrorCode::FlagNotFound, None),
        };
    };
    let mismatch = || Evaluation::error(ErrorCode::TypeMismatch, Some(flag));
    if flag.kind != kind {
        return Resolution {
            value: default,
            details: mismatch(),
        };
    }
    let details = eval_flag(snapshot, flag, context, &mut NoTrace, 0);
    match details.value().map(&convert) {
        None => Resolution {
            value: default,
            details,
        },
        Some(Some(value)) => Resolution { value, details },
        Some(None) => Resolution {
            value: default,
            details: mismatch(),
        },
    }
}

/// Receives the steps of an evaluation. `ON` is a constant so that the fast path's checks
/// compile away.
pub(crate) trait Tracer {
    const ON: bool;
    fn step(&mut self, step: Step);
    fn condition(&mut self, trace: ConditionTrace);
    fn take_conditions(&mut self) -> Vec<ConditionTrace>;
}

struct NoTrace;

impl Tracer for NoTrace {
    const ON: bool = false;
    fn step(&mut self, _: Step) {}
    fn condition(&mut self, _: ConditionTrace) {}
    fn take_conditions(&mut self) -> Vec<ConditionTrace> {
        Vec::new()
    }
}

#[derive(Default)]
struct Recorder {
    steps: Vec<Step>,
    conditions: Vec<ConditionTrace>,
}

impl Tracer for Recorder {
    const ON: bool = true;
    fn step(&mut self, step: Step) {
        self.steps.push(step);
    }
    fn condition(&mut self, trace: ConditionTrace) {
        self.conditions.push(trace);
    }
    fn take_conditions(&mut self) -> Vec<ConditionTrace> {
        std::mem::take(&mut self.conditions)
    }
}

#[inline(always)]
fn served<'s>(
    flag: &'s CompiledFlag,
    variant: u32,
    reason: Reason,
    rule: Option<&'s CompiledRule>,
) -> Evaluation<'s> {
    // Indices were checked at compile time; a miss would be a bug, reported rather than panicked.
    if (variant as usize) < flag.variants.len() {
        Evaluation::served(flag, variant, reason, rule)
    } else {
        Evaluation::error(ErrorCode::General, Some(flag))
    }
}

/// The evaluation bits of a flag whose result does not depend on the context, as
/// [`eval_flag_walk`] would compute them; 0 when it does (see [`CompiledFlag::fixed`]).
pub(crate) fn fixed_bits(flag: &CompiledFlag) -> u64 {
    let Some(config) = &flag.config else {
        return 0;
    };
    let fixed = if !config.enabled {
        Some((config.off_variant, Reason::Disabled))
    } else if config.is_static
        && let CompiledServe::Variant(v) = config.default_serve
    {
        Some((v, Reason::Static))
    } else {
        None
    };
    match fixed {
        Some((v, reason)) if (v as usize) < flag.variants.len() => {
            Evaluation::served(flag, v, reason, None).bits()
        }
        _ => 0,
    }
}

/// Without a tracer, a flag whose result is fixed is answered from the compiled flag, and one
/// with nothing but a default serve goes straight to it: no walk of the configuration.
#[inline(always)]
fn eval_flag<'s, T: Tracer>(
    snapshot: &'s Snapshot,
    flag: &'s CompiledFlag,
    context: &EvaluationContext,
    tracer: &mut T,
    depth: u32,
) -> Evaluation<'s> {
    if !T::ON {
        if flag.fixed != 0 {
            return Evaluation::from_bits(flag, flag.fixed);
        }
        if let Some(config) = &flag.config
            && config.direct
        {
            return serve(flag, &config.default_serve, context, tracer, None);
        }
    }
    eval_flag_walk(snapshot, flag, context, tracer, depth)
}

fn eval_flag_walk<'s, T: Tracer>(
    snapshot: &'s Snapshot,
    flag: &'s CompiledFlag,
    context: &EvaluationContext,
    tracer: &mut T,
    depth: u32,
) -> Evaluation<'s> {
    let Some(config) = &flag.config else {
        if T::ON {
            tracer.step(Step::InvalidConfiguration);
        }
        return Evaluation::error(ErrorCode::ParseError, Some(flag));
    };
    if !config.enabled {
        if T::ON {
            tracer.step(Step::Disabled {
                off_variant: variant_name(flag, config.off_variant),
            });
        }
        return served(flag, config.off_variant, Reason::Disabled, None);
    }
    if config.is_static
        && let CompiledServe::Variant(v) = config.default_serve
    {
        if T::ON {
            tracer.step(Step::Static {
                variant: variant_name(flag, v),
            });
        }
        return served(flag, v, Reason::Static, None);
    }

    for (position, p) in config.prerequisites.iter().enumerate() {
        let Some(required) = snapshot.flags.get(p.flag as usize) else {
            return Evaluation::error(ErrorCode::General, Some(flag));
        };
        let result = if depth < MAX_RECURSION {
            Some(eval_flag(
                snapshot,
                required,
                context,
                &mut NoTrace,
                depth + 1,
            ))
        } else {
            None
        };
        let required_variant = required.variants.get(p.variant as usize).map(|v| &*v.0);
        let served_variant = result.and_then(|r| r.variant());
        let passed = served_variant.is_some() && served_variant == required_variant;
        if T::ON {
            tracer.step(Step::Prerequisite {
                flag: required.key.to_string(),
                required_variant: required_variant.unwrap_or_default().to_string(),
                served_variant: served_variant.map(str::to_string),
                passed,
            });
        }
        if !passed {
            return served(flag, config.off_variant, Reason::PrerequisiteFailed, None)
                .with_failed_prerequisite(position);
        }
    }

    if let Some(targets) = &config.targets {
        if let Some(key) = context.targeting_key()
            && let Some(&v) = targets.get(key)
        {
            if T::ON {
                tracer.step(Step::IndividualTarget {
                    targeting_key: key.to_string(),
                    variant: variant_name(flag, v),
                });
            }
            return served(flag, v, Reason::TargetingMatch, None);
        }
        if T::ON {
            tracer.step(Step::NotTargeted);
        }
    }

    for (index, rule) in config.rules.iter().enumerate() {
        let matched = rule
            .conditions
            .iter()
            .all(|c| condition_holds(snapshot, c, context, tracer, depth));
        if T::ON {
            let conditions = tracer.take_conditions();
            tracer.step(Step::Rule {
                index,
                id: rule.id.to_string(),
                matched,
                conditions,
            });
        }
        if matched {
            return serve(flag, &rule.serve, context, tracer, Some(rule));
        }
    }
    if T::ON {
        tracer.step(Step::DefaultServe);
    }
    serve(flag, &config.default_serve, context, tracer, None)
}

fn serve<'s, T: Tracer>(
    flag: &'s CompiledFlag,
    serve: &'s CompiledServe,
    context: &EvaluationContext,
    tracer: &mut T,
    rule: Option<&'s CompiledRule>,
) -> Evaluation<'s> {
    match serve {
        CompiledServe::Variant(v) => {
            let reason = if rule.is_some() {
                Reason::TargetingMatch
            } else {
                Reason::Default
            };
            served(flag, *v, reason, rule)
        }
        CompiledServe::Rollout(rollout) => match split(rollout, context, tracer, flag) {
            Ok(v) => served(flag, v, Reason::Split, rule),
            Err(code) => Evaluation::error(code, Some(flag)).with_rule(rule),
        },
    }
}

/// Places the context in the rollout, exactly as `docs/bucketing.md` says.
#[inline]
fn split<T: Tracer>(
    rollout: &CompiledRollout,
    context: &EvaluationContext,
    tracer: &mut T,
    flag: &CompiledFlag,
) -> Result<u32, ErrorCode> {
    let value = rollout.bucket_by.lookup(context);
    let Some(hash) = value.and_then(|v| hash_unit(&rollout.hasher, v)) else {
        let code = if rollout.bucket_by.is_targeting_key() {
            ErrorCode::TargetingKeyMissing
        } else {
            ErrorCode::InvalidContext
        };
        if T::ON {
            tracer.step(Step::BucketingFailed {
                attribute: rollout.bucket_by.as_str().to_string(),
                value: value.cloned(),
                error_code: code,
            });
        }
        return Err(code);
    };
    let b = bucket(hash, rollout.total_weight);
    let chosen = pick_cumulative(&rollout.cumulative, b);
    let variant = rollout.variants.get(chosen).map_or(0, |&(v, _)| v);
    if T::ON {
        tracer.step(Step::Bucketed {
            attribute: rollout.bucket_by.as_str().to_string(),
            unit: value.map(unit_text).unwrap_or_default(),
            salt: rollout.salt.to_string(),
            hash,
            bucket: b,
            total_weight: rollout.total_weight,
            variant: variant_name(flag, variant),
        });
    }
    Ok(variant)
}

fn variant_name(flag: &CompiledFlag, v: u32) -> String {
    flag.variants
        .get(v as usize)
        .map_or_else(String::new, |v| v.0.to_string())
}

/// Whether the context satisfies one condition. A missing attribute, or one of a type the
/// operator cannot compare, never matches, whatever `negate` says; only `exists` and
/// `segment_match` are negated unconditionally.
fn condition_holds<T: Tracer>(
    snapshot: &Snapshot,
    c: &CompiledCondition,
    context: &EvaluationContext,
    tracer: &mut T,
    depth: u32,
) -> bool {
    if !T::ON {
        return condition_matches(snapshot, c, context, depth);
    }
    let mut segments = Vec::new();
    let (holds, actual, note) = match &c.test {
        Test::Segments(refs) => {
            let mut member = false;
            for &s in refs.iter() {
                let m = membership(snapshot, s, context, depth);
                member |= m.is_member();
                if T::ON {
                    if let Some(segment) = snapshot.segments.get(s as usize) {
                        segments.push(SegmentTrace {
                            segment: segment.key.to_string(),
                            member: m.is_member(),
                            because: m.describe(segment),
                        });
                    }
                } else if member {
                    break;
                }
            }
            (member ^ c.negate, None, None)
        }
        Test::Exists => {
            let value = c.attribute.lookup(context);
            (value.is_some() ^ c.negate, value, None)
        }
        // Exact `in` on a top-level string: the value's fingerprint was computed with the
        // context, so the list is scanned without looking at the string again.
        Test::In(set) if !set.case_insensitive => match c.attribute.lookup_fingerprinted(context) {
            None => (false, None, None),
            Some((value @ Value::String(s), Some(fp))) => (
                set.strings.contains_known(s, fp) ^ c.negate,
                Some(value),
                None,
            ),
            Some((value, _)) => match test_value(c.operator, &c.test, value) {
                Some(m) => (m ^ c.negate, Some(value), None),
                None => (
                    false,
                    Some(value),
                    Some("the value's type cannot be compared with this operator"),
                ),
            },
        },
        // A top-level string's version was parsed with the context.
        Test::Semver(versions) => match c.attribute.lookup_entry(context) {
            None => (false, None, None),
            Some((value, entry)) => match entry.and_then(Entry::version) {
                Some(x) => (
                    semver_holds(c.operator, versions, &x) ^ c.negate,
                    Some(value),
                    None,
                ),
                // Not a top-level string version: arrays, nested values, non-versions.
                None => match test_value(c.operator, &c.test, value) {
                    Some(m) => (m ^ c.negate, Some(value), None),
                    None => (
                        false,
                        Some(value),
                        Some("the value's type cannot be compared with this operator"),
                    ),
                },
            },
        },
        test => match c.attribute.lookup(context) {
            None => (false, None, None),
            Some(value) => match test_value(c.operator, test, value) {
                Some(m) => (m ^ c.negate, Some(value), None),
                None => (
                    false,
                    Some(value),
                    Some("the value's type cannot be compared with this operator"),
                ),
            },
        },
    };
    if T::ON {
        tracer.condition(ConditionTrace {
            attribute: c.attribute.as_str().to_string(),
            operator: c.operator,
            negate: c.negate,
            values: c.values.to_vec(),
            actual: actual.cloned(),
            matched: holds,
            note: note.map(str::to_string),
            segments,
        });
    }
    holds
}

/// [`condition_holds`] without a tracer: the same answer, with nothing kept for an explanation
/// (no value, note or segment list to build and drop). The corpus tests compare the two paths.
#[inline(always)]
fn condition_matches(
    snapshot: &Snapshot,
    c: &CompiledCondition,
    context: &EvaluationContext,
    depth: u32,
) -> bool {
    let compared =
        |value: &Value| test_value(c.operator, &c.test, value).is_some_and(|m| m ^ c.negate);
    match &c.test {
        Test::Segments(refs) => {
            let member = refs
                .iter()
                .any(|&s| membership(snapshot, s, context, depth).is_member());
            member ^ c.negate
        }
        Test::Exists => c.attribute.lookup(context).is_some() ^ c.negate,
        Test::In(set) if !set.case_insensitive => match c.attribute.lookup_fingerprinted(context) {
            None => false,
            Some((Value::String(s), Some(fp))) => set.strings.contains_known(s, fp) ^ c.negate,
            Some((value, _)) => compared(value),
        },
        Test::Semver(versions) => match c.attribute.lookup_entry(context) {
            None => false,
            Some((value, entry)) => match entry.and_then(Entry::version) {
                Some(x) => semver_holds(c.operator, versions, &x) ^ c.negate,
                None => compared(value),
            },
        },
        _ => c.attribute.lookup(context).is_some_and(compared),
    }
}

/// Arrays match when any element does; elements the operator cannot compare are skipped.
#[inline(always)]
fn test_value(op: Operator, test: &Test, value: &Value) -> Option<bool> {
    match value {
        Value::Array(items) => test_array(op, test, items),
        _ => test_scalar(op, test, value),
    }
}

#[inline(never)]
fn test_array(op: Operator, test: &Test, items: &[Value]) -> Option<bool> {
    // An empty array is a comparable value that nothing is in: `not_in` matches it.
    let mut seen = items.is_empty().then_some(false);
    for item in items {
        match test_scalar(op, test, item) {
            Some(true) => return Some(true),
            Some(false) => seen = Some(false),
            None => {}
        }
    }
    seen
}

#[inline(always)]
fn test_scalar(op: Operator, test: &Test, value: &Value) -> Option<bool> {
    match test {
        Test::In(set) => in_set(set, value),
        Test::StartsWith(list) => string_test(list, value, |s, p| s.starts_with(p)),
        Test::EndsWith(list) => string_test(list, value, |s, p| s.ends_with(p)),
        Test::Contains(list) => string_test(list, value, |s, p| s.contains(p)),
        Test::Matches(regexes) => {
            let s = value.as_str()?;
            Some(regexes.iter().any(|r| r.is_match(s)))
        }
        Test::Number(limits) => {
            let x = value.as_number()?;
            Some(limits.iter().any(|v| {
                let ord = compare_numbers(x, v);
                match op {
                    Operator::Lt => ord == Some(Ordering::Less),
                    Operator::Lte => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                    Operator::Gt => ord == Some(Ordering::Greater),
                    _ => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
                }
            }))
        }
        Test::Semver(versions) => {
            let x = Version::parse(value.as_str()?)?;
            Some(semver_holds(op, versions, &x))
        }
        Test::Time(instants) => {
            let x = Timestamp::from_value(value)?;
            Some(instants.iter().any(|v| match op {
                Operator::Before => x < *v,
                _ => x > *v,
            }))
        }
        // Handled by the caller; unreachable through `test_value`.
        Test::Exists | Test::Segments(_) => None,
    }
}

#[inline(always)]
fn semver_holds(op: Operator, versions: &[OwnedVersion], x: &Version<'_>) -> bool {
    versions.iter().any(|v| {
        let ord = x.precedence(&v.as_version());
        match op {
            Operator::SemverEq => ord == Ordering::Equal,
            Operator::SemverLt => ord == Ordering::Less,
            Operator::SemverLte => ord != Ordering::Greater,
            Operator::SemverGt => ord == Ordering::Greater,
            _ => ord != Ordering::Less,
        }
    })
}

#[inline(always)]
fn in_set(set: &ValueSet, value: &Value) -> Option<bool> {
    match value {
        Value::String(s) => Some(if set.case_insensitive {
            let lower = crate::text::fold_case(s);
            set.strings.contains(&lower)
        } else {
            set.strings.contains(s)
        }),
        Value::Number(n) => Some(
            set.numbers
                .iter()
                .any(|v| compare_numbers(n, v) == Some(Ordering::Equal)),
        ),
        Value::Bool(b) => Some(set.booleans[usize::from(*b)]),
        _ => None,
    }
}

#[inline]
fn string_test(
    list: &StringList,
    value: &Value,
    test: impl Fn(&str, &str) -> bool,
) -> Option<bool> {
    let s = value.as_str()?;
    Some(if list.case_insensitive {
        let lower = crate::text::fold_case(s);
        list.items.iter().any(|p| test(&lower, p))
    } else {
        list.items.iter().any(|p| test(s, p))
    })
}

/// Integers compare exactly (beyond 2^53 too); anything else as doubles.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    fn int(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// How a context relates to a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Excluded,
    Included,
    Rule(usize),
    NoMatch,
}

impl Membership {
    fn is_member(self) -> bool {
        matches!(self, Membership::Included | Membership::Rule(_))
    }

    fn describe(self, segment: &crate::compile::CompiledSegment) -> String {
        match self {
            Membership::Excluded => "the targeting key is excluded".to_string(),
            Membership::Included => "the targeting key is included".to_string(),
            Membership::Rule(i) => {
                let id = segment.rules.get(i).map_or("", |r| &r.id);
                format!("segment rule {i} `{id}` matched")
            }
            Membership::NoMatch => "neither included nor matched by a segment rule".to_string(),
        }
    }
}

fn membership(
    snapshot: &Snapshot,
    index: u32,
    context: &EvaluationContext,
    depth: u32,
) -> Membership {
    let Some(segment) = snapshot.segments.get(index as usize) else {
        return Membership::NoMatch;
    };
    if let Some(key) = context.targeting_key() {
        if !segment.excluded.is_empty() && segment.excluded.contains_key(key) {
            return Membership::Excluded;
        }
        if !segment.included.is_empty() && segment.included.contains_key(key) {
            return Membership::Included;
        }
    }
    if depth >= MAX_RECURSION {
        return Membership::NoMatch;
    }
    for (i, rule) in segment.rules.iter().enumerate() {
        if rule
            .conditions
            .iter()
            .all(|c| condition_holds(snapshot, c, context, &mut NoTrace, depth + 1))
        {
            return Membership::Rule(i);
        }
    }
    Membership::NoMatch
}
