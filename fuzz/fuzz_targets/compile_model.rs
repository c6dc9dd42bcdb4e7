//! Structure-aware fuzzing of the compiler and evaluator.
//!
//! Random bytes rarely make a JSON document that deserialises into an `EnvironmentConfig`, let
//! alone one that compiles without errors (and a flag with an error only ever evaluates to
//! `PARSE_ERROR`, so the evaluator is never reached). Here the bytes drive a generator built on
//! `arbitrary::Unstructured` that writes configurations which are valid by construction most of
//! the time: keys, variant names, attributes and condition values come from small vocabularies
//! that refer to each other, condition values fit their operator, rollout weights add up. About
//! one choice in sixteen is replaced by something arbitrary or invalid (an unknown variant, a
//! raw string, a value of the wrong type, a duplicate, a bad date, …), so the compiler's
//! validation is exercised too. The evaluation context is generated from the same vocabularies,
//! nested paths included, so that conditions, segments and rollouts actually see values.
//!
//! Besides "nothing panics", it checks invariants the engine documents:
//! - `explain` decides exactly as `evaluate`, and `evaluate_all` as `evaluate` for each key, in
//!   `flag_keys` order;
//! - the typed accessor of a flag's own kind reports the same details as `evaluate` (boolean,
//!   string, number and json flags; integer is left out because a fraction is a mismatch);
//! - an evaluation has a value and a variant exactly when it is not an error, reason `ERROR` and
//!   an error message exactly when it has an error code; `GENERAL` ("internal error") never
//!   happens;
//! - a configuration compiled without diagnostics has no flag failing with `PARSE_ERROR`;
//! - an unknown flag is `FLAG_NOT_FOUND`;
//! - results serialise to JSON.
//!
//! `cargo +nightly fuzz fmt compile_model <input>` prints the generated configuration and context
//! as JSON (the `Debug` form below), ready to be replayed through the `evaluate` target or a test.

#![no_main]

use std::fmt;

use anchor_engine::{
    Condition, ConfiguredFlag, EnvironmentConfig, ErrorCode, Evaluation, EvaluationContext, Flag,
    FlagConfig, FlagKind, Lifecycle, Operator, Prerequisite, Reason, Rollout, Rule, Segment,
    SegmentRule, Serve, Variant, WeightedVariant, compile, evaluate, evaluate_all, evaluate_bool,
    evaluate_integer, evaluate_json, evaluate_number, evaluate_string, explain,
};
use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Number, Value, json};

const MISSING_KEY: &str = "no/such/flag";

const FLAG_KEYS: &[&str] = &["a", "b", "c", "new-checkout", "e.f_g-h", "payments-v2"];
const SEGMENT_KEYS: &[&str] = &["beta", "staff", "eu", "vip"];
/// Every flag has at least the first two, so prerequisites can always name `on` or `off`.
const VARIANTS: &[&str] = &["on", "off", "red", "blue"];
const TARGETING_KEYS: &[&str] = &["user-1", "user-2", "user-7", "user-42"];
const ATTRIBUTES: &[&str] = &[
    "targetingKey",
    "country",
    "plan",
    "email",
    "app.version",
    "now",
    "age",
    "tags",
    "company.id",
    "device.os",
];
const OPERATORS: &[Operator] = &[
    Operator::In,
    Operator::NotIn,
    Operator::StartsWith,
    Operator::EndsWith,
    Operator::Contains,
    Operator::Matches,
    Operator::Lt,
    Operator::Lte,
    Operator::Gt,
    Operator::Gte,
    Operator::SemverEq,
    Operator::SemverLt,
    Operator::SemverLte,
    Operator::SemverGt,
    Operator::SemverGte,
    Operator::Before,
    Operator::After,
    Operator::Exists,
    Operator::SegmentMatch,
];
const KINDS: &[FlagKind] = &[
    FlagKind::Boolean,
    FlagKind::String,
    FlagKind::Number,
    FlagKind::Json,
];

/// Values of `in` and `not_in` conditions (and of context attributes).
fn in_pool() -> Vec<Value> {
    vec![
        json!("DE"),
        json!("fr"),
        json!("pro"),
        json!("free"),
        json!("user-1"),
        json!("user-42"),
        json!("Jane.Doe@Example.com"),
        json!("ÄÖÜ"),
        json!("İstanbul"),
        json!(18),
        json!(42),
        json!(65.5),
        json!(-1),
        json!(true),
        json!(false),
    ]
}

fn string_pool() -> Vec<Value> {
    vec![
        json!("Jane"),
        json!("@example.com"),
        json!("@Anchor.dev"),
        json!("D"),
        json!("pro"),
        json!("user-"),
        json!(""),
        json!("ö"),
        json!("İ"),
    ]
}

fn regex_pool() -> Vec<Value> {
    vec![
        json!("^(user|admin)-[0-9]+$"),
        json!("(?i)^de$"),
        json!("example\\.(com|org)$"),
        json!("^$"),
        json!(".*"),
        json!("[0-9]{2,}"),
        json!("\\p{Lu}"),
        json!("(a+)+$"),
    ]
}

fn number_pool() -> Vec<Value> {
    vec![
        json!(0),
        json!(18),
        json!(65.5),
        json!(-1),
        json!(1e300),
        json!(-0.0),
        json!(9007199254740993u64),
        json!(u64::MAX),
        json!(i64::MIN),
    ]
}

fn semver_pool() -> Vec<Value> {
    vec![
        json!("1.0.0"),
        json!("2.1"),
        json!("v2.1.0-beta.1"),
        json!("3"),
        json!("10.20.30+build.5"),
        json!("1.0.0-alpha.beta"),
        json!("2.1.0-rc.1"),
        json!("0.0.0"),
        json!("18446744073709551615.0.0"),
    ]
}

fn time_pool() -> Vec<Value> {
    vec![
        json!("2026-03-01T00:00:00Z"),
        json!(1767225600),
        json!("2026-06-01T00:00:00.5+02:00"),
        json!(0),
        json!(-1.5),
        json!("1970-01-01t00:00:00z"),
        json!("2024-02-29 23:59:60-12:30"),
        json!("9999-12-31T23:59:59.999999999999Z"),
        json!(4.5e18),
        json!(i64::MIN),
    ]
}

/// Everything a context attribute may hold: the union of the pools above.
fn context_pool() -> Vec<Value> {
    let mut pool = in_pool();
    pool.extend(string_pool());
    pool.extend(number_pool());
    pool.extend(semver_pool());
    pool.extend(time_pool());
    pool.push(json!("admin@anchor.dev"));
    pool.push(json!("user-7"));
    pool
}

/// A generated environment and context.
struct Generated {
    config: EnvironmentConfig,
    context: Map<String, Value>,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = serde_json::to_string_pretty(&self.config).map_err(|_| fmt::Error)?;
        let context = serde_json::to_string_pretty(&self.context).map_err(|_| fmt::Error)?;
        writeln!(f, "config: {config}")?;
        write!(f, "context: {context}")
    }
}

impl<'a> Arbitrary<'a> for Generated {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut g = Generator { u };
        let segment_count = g.u.int_in_range(0..=SEGMENT_KEYS.len())?;
        let flag_count = g.u.int_in_range(0..=FLAG_KEYS.len())?;
        let segments = (0..segment_count)
            .map(|i| g.segment(i, segment_count))
            .collect::<Result<_>>()?;
        let flags = (0..flag_count)
            .map(|i| g.flag(i, flag_count, segment_count))
            .collect::<Result<_>>()?;
        let context = g.context()?;
        Ok(Generated {
            config: EnvironmentConfig { flags, segments },
            context,
        })
    }
}

struct Generator<'u, 'a> {
    u: &'u mut Unstructured<'a>,
}

impl Generator<'_, '_> {
    /// One choice in `n`. Exhausted input (which reads as zeros) gives the common outcome, so
    /// that a short input makes a small, valid configuration rather than a broken one.
    fn one_in(&mut self, n: u8) -> Result<bool> {
        Ok(self.u.int_in_range(0..=n - 1)? == n - 1)
    }

    /// One choice in sixteen: the escape hatch to something arbitrary or invalid.
    fn rarely(&mut self) -> Result<bool> {
        self.one_in(16)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Result<T> {
        self.u.choose(items).cloned()
    }

    fn count(&mut self, max: usize) -> Result<usize> {
        self.u.int_in_range(0..=max)
    }

    /// A short arbitrary string.
    fn raw_string(&mut self) -> Result<String> {
        let s = String::arbitrary(self.u)?;
        Ok(s.chars().take(24).collect())
    }

    /// An arbitrary JSON value (shallow).
    fn raw_value(&mut self) -> Result<Value> {
        Ok(match self.u.int_in_range(0..=6u8)? {
            0 => Value::Null,
            1 => Value::Bool(bool::arbitrary(self.u)?),
            2 => Value::from(i64::arbitrary(self.u)?),
            3 => Value::from(u64::arbitrary(self.u)?),
            4 => Number::from_f64(f64::arbitrary(self.u)?).map_or(Value::Null, Value::Number),
            5 => Value::String(self.raw_string()?),
            _ => json!([self.raw_string()?, i32::arbitrary(self.u)?]),
        })
    }

    fn key_or_raw(&mut self, key: String) -> Result<String> {
        Ok(if self.rarely()? {
            match self.u.int_in_range(0..=2u8)? {
                0 => self.raw_string()?,
                1 => "bad key!".into(),
                _ => "x".repeat(129),
            }
        } else {
            key
        })
    }

    fn variant_ref(&mut self, variant_count: usize) -> Result<String> {
        Ok(if self.rarely()? {
            "nope".into()
        } else {
            VARIANTS[self.u.choose_index(variant_count)?].into()
        })
    }

    fn attribute(&mut self) -> Result<String> {
        Ok(if self.rarely()? {
            if bool::arbitrary(self.u)? {
                String::new()
            } else {
                self.raw_string()?
            }
        } else {
            self.pick(ATTRIBUTES)?.into()
        })
    }

    fn variant_value(&mut self, kind: FlagKind, j: usize) -> Result<Value> {
        if self.rarely()? {
            return self.raw_value();
        }
        Ok(match kind {
            FlagKind::Boolean => Value::Bool(j.is_multiple_of(2)),
            FlagKind::String => Value::String(format!("value-{j}")),
            FlagKind::Number => match j {
                0 => json!(10),
                1 => json!(2.5),
                2 => json!(-3),
                _ => json!(1e20),
            },
            FlagKind::Json => match j {
                0 => json!({ "discount": 10, "codes": ["A", "B"] }),
                1 => Value::Null,
                2 => json!([1, "two", false]),
                _ => json!("plain"),
            },
        })
    }

    /// A value that fits the operator (most of the time).
    fn condition_value(&mut self, operator: Operator, segment_count: usize) -> Result<Value> {
        if self.rarely()? {
            return self.raw_value();
        }
        let pool = match operator {
            Operator::In | Operator::NotIn => in_pool(),
            Operator::StartsWith | Operator::EndsWith | Operator::Contains => string_pool(),
            Operator::Matches => regex_pool(),
            Operator::Lt | Operator::Lte | Operator::Gt | Operator::Gte => number_pool(),
            Operator::SemverEq
            | Operator::SemverLt
            | Operator::SemverLte
            | Operator::SemverGt
            | Operator::SemverGte => semver_pool(),
            Operator::Before | Operator::After => time_pool(),
            Operator::Exists => context_pool(),
            Operator::SegmentMatch => {
                return Ok(if segment_count == 0 || self.rarely()? {
                    json!("ghosts")
                } else {
                    json!(SEGMENT_KEYS[self.u.choose_index(segment_count)?])
                });
            }
        };
        self.pick(&pool)
    }

    fn condition(&mut self, segment_count: usize) -> Result<Condition> {
        let operator = self.pick(OPERATORS)?;
        let value_count = match operator {
            Operator::Exists => usize::from(self.rarely()?),
            _ if self.rarely()? => 0,
            _ => 1 + self.count(2)?,
        };
        let values = (0..value_count)
            .map(|_| self.condition_value(operator, segment_count))
            .collect::<Result<_>>()?;
        let folds = matches!(
            operator,
            Operator::In
                | Operator::NotIn
                | Operator::StartsWith
                | Operator::EndsWith
                | Operator::Contains
        );
        Ok(Condition {
            attribute: self.attribute()?,
            operator,
            values,
            negate: self.one_in(4)?,
            case_insensitive: if folds {
                bool::arbitrary(self.u)?
            } else {
                self.rarely()?
            },
        })
    }

    fn conditions(&mut self, segment_count: usize, max: usize) -> Result<Vec<Condition>> {
        let n = self.count(max)?;
        (0..n).map(|_| self.condition(segment_count)).collect()
    }

    fn serve(&mut self, variant_count: usize) -> Result<Serve> {
        if bool::arbitrary(self.u)? {
            return Ok(Serve::Variant(self.variant_ref(variant_count)?));
        }
        let mut variants: Vec<WeightedVariant> = Vec::new();
        for (j, name) in VARIANTS.iter().enumerate().take(variant_count) {
            if j > 0 && self.one_in(3)? {
                continue;
            }
            let weight = if self.rarely()? {
                u32::arbitrary(self.u)?
            } else {
                u32::from(u16::arbitrary(self.u)?) + u32::from(j == 0)
            };
            variants.push(WeightedVariant {
                variant: (*name).into(),
                weight,
            });
        }
        if self.rarely()? {
            // A duplicate, an unknown variant or no variants at all.
            match self.u.int_in_range(0..=2u8)? {
                0 => variants.push(variants[0].clone()),
                1 => variants.push(WeightedVariant {
                    variant: "nope".into(),
                    weight: 1,
                }),
                _ => variants.clear(),
            }
        }
        let bucket_by = if self.one_in(3)? {
            Some(self.attribute()?)
        } else {
            None
        };
        let salt = if self.rarely()? {
            Some(self.raw_string()?)
        } else {
            None
        };
        Ok(Serve::Rollout(Rollout {
            variants,
            bucket_by,
            salt,
        }))
    }

    fn flag(
        &mut self,
        i: usize,
        flag_count: usize,
        segment_count: usize,
    ) -> Result<ConfiguredFlag> {
        let key = self.key_or_raw(FLAG_KEYS[i].into())?;
        let kind = self.pick(KINDS)?;
        let variant_count = 2 + self.count(2)?;
        let mut variants: Vec<Variant> = (0..variant_count)
            .map(|j| {
                Ok(Variant {
                    name: VARIANTS[j].into(),
                    value: self.variant_value(kind, j)?,
                    description: String::new(),
                })
            })
            .collect::<Result<_>>()?;
        if self.rarely()? {
            variants[variant_count - 1].name = self.key_or_raw("on".into())?;
        }
        let cleanup_date = match self.u.int_in_range(0..=15u8)? {
            0..=7 => None,
            8..=14 => {
                let (y, m, d) = <(u16, u8, u8)>::arbitrary(self.u)?;
                Some(format!(
                    "{:04}-{:02}-{:02}",
                    y % 10_000,
                    m % 12 + 1,
                    d % 28 + 1
                ))
            }
            _ => Some(self.raw_string()?),
        };

        let mut targets = std::collections::BTreeMap::<String, Vec<String>>::new();
        let mut targeted = Vec::new();
        for _ in 0..self.count(2)? {
            let variant = self.variant_ref(variant_count)?;
            for _ in 0..1 + self.count(2)? {
                let key = self.pick(TARGETING_KEYS)?;
                if targeted.contains(&key) && !self.rarely()? {
                    continue;
                }
                targeted.push(key);
                targets.entry(variant.clone()).or_default().push(key.into());
            }
        }
        if self.rarely()? {
            targets.entry("on".into()).or_default().push(String::new());
        }

        let mut rules = Vec::new();
        for j in 0..self.count(4)? {
            let id = if self.rarely()? {
                match self.u.int_in_range(0..=2u8)? {
                    0 => String::new(),
                    1 => "rule-0".into(),
                    _ => self.raw_string()?,
                }
            } else {
                format!("rule-{j}")
            };
            rules.push(Rule {
                id,
                description: String::new(),
                conditions: self.conditions(segment_count, 3)?,
                serve: self.serve(variant_count)?,
            });
        }

        let mut prerequisites = Vec::new();
        for _ in 0..self.count(2)? {
            if flag_count == 0 {
                break;
            }
            let target = self.u.choose_index(flag_count)?;
            if target == i && !self.rarely()? {
                continue;
            }
            prerequisites.push(Prerequisite {
                flag: if self.rarely()? {
                    "nope".into()
                } else {
                    FLAG_KEYS[target].into()
                },
                variant: self.variant_ref(2)?,
            });
        }

        Ok(ConfiguredFlag {
            flag: Flag {
                key,
                kind,
                variants,
                description: String::new(),
                tags: Vec::new(),
                lifecycle: if bool::arbitrary(self.u)? {
                    Lifecycle::Permanent
                } else {
                    Lifecycle::Temporary
                },
                cleanup_date,
            },
            config: FlagConfig {
                enabled: !self.one_in(8)?,
                off_variant: self.variant_ref(variant_count)?,
                targets,
                rules,
                default_serve: self.serve(variant_count)?,
                prerequisites,
                version: u64::arbitrary(self.u)?,
            },
        })
    }

    fn segment(&mut self, i: usize, segment_count: usize) -> Result<Segment> {
        let key = self.key_or_raw(SEGMENT_KEYS[i].into())?;
        let mut included = Vec::new();
        for _ in 0..self.count(2)? {
            included.push(self.pick(TARGETING_KEYS)?.to_owned());
        }
        let mut excluded = Vec::new();
        for _ in 0..self.count(1)? {
            excluded.push(self.pick(TARGETING_KEYS)?.to_owned());
        }
        if self.rarely()? {
            included.push(String::new());
        }
        let rules = (0..self.count(2)?)
            .map(|j| {
                Ok(SegmentRule {
                    id: format!("segment-rule-{j}"),
                    conditions: self.conditions(segment_count, 2)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Segment {
            key,
            description: String::new(),
            included,
            excluded,
            rules,
            version: u64::arbitrary(self.u)?,
        })
    }

    fn context_value(&mut self, depth: u32) -> Result<Value> {
        Ok(match self.u.int_in_range(0..=15u8)? {
            0..=10 => self.pick(&context_pool())?,
            11 | 12 => {
                let n = self.count(3)?;
                let items = (0..n)
                    .map(|_| self.context_value(depth + 1))
                    .collect::<Result<Vec<_>>>()?;
                Value::Array(items)
            }
            13 if depth < 3 => {
                let mut map = Map::new();
                for _ in 0..self.count(2)? {
                    let name = self.pick(&["version", "id", "os", "name"])?;
                    map.insert(name.into(), self.context_value(depth + 1)?);
                }
                Value::Object(map)
            }
            14 => Value::Null,
            _ => self.raw_value()?,
        })
    }

    fn context(&mut self) -> Result<Map<String, Value>> {
        let mut context = Map::new();
        if !self.one_in(8)? {
            let key = if self.rarely()? {
                json!(self.raw_string()?)
            } else {
                json!(self.pick(TARGETING_KEYS)?)
            };
            context.insert("targetingKey".into(), key);
        }
        for _ in 0..self.count(6)? {
            let attribute = self.attribute()?;
            let value = self.context_value(0)?;
            // `app.version` is read from `{"app": {"version": …}}` first, then from a top-level
            // attribute with the dotted name: write either.
            match attribute.split_once('.') {
                Some((head, tail)) if bool::arbitrary(self.u)? => {
                    let entry = context
                        .entry(head.to_owned())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(map) = entry {
                        map.insert(tail.to_owned(), value);
                    }
                }
                _ => {
                    context.insert(attribute, value);
                }
            }
        }
        Ok(context)
    }
}

/// The invariants every single evaluation must satisfy.
fn check_shape(key: &str, e: &Evaluation<'_>) {
    assert_eq!(
        e.is_error(),
        e.value().is_none(),
        "`{key}`: a value exactly when not an error: {e:?}"
    );
    assert_eq!(
        e.value().is_some(),
        e.variant().is_some(),
        "`{key}`: a variant exactly when a value: {e:?}"
    );
    assert_eq!(
        e.reason() == Reason::Error,
        e.error_code().is_some(),
        "`{key}`: reason ERROR exactly when an error code: {e:?}"
    );
    assert_eq!(
        e.error_message().is_some(),
        e.error_code().is_some(),
        "`{key}`: an error message exactly when an error code: {e:?}"
    );
    assert_ne!(
        e.error_code(),
        Some(ErrorCode::General),
        "`{key}`: an internal error: {e:?}"
    );
    std::hint::black_box((e.rule(), e.failed_prerequisite(), e.flag_version()));
    std::hint::black_box(serde_json::to_string(e).expect("an evaluation serialises"));
}

fuzz_target!(|input: Generated| {
    let (snapshot, diagnostics) = compile(&input.config);
    for d in &diagnostics {
        std::hint::black_box(d.to_string());
    }
    // A non-string targeting key is rejected; evaluate with an empty context then.
    let context = EvaluationContext::from_map(input.context).unwrap_or_default();

    let keys: Vec<&str> = snapshot.flag_keys().collect();
    assert_eq!(keys.len(), snapshot.len());
    let all = evaluate_all(&snapshot, &context);
    assert_eq!(all.len(), keys.len(), "evaluate_all covers every flag");

    let null = Value::Null;
    for (&key, (all_key, all_eval)) in keys.iter().zip(&all) {
        let e = evaluate(&snapshot, key, &context);
        check_shape(key, &e);
        assert_eq!(*all_key, key, "evaluate_all follows flag_keys order");
        assert_eq!(*all_eval, e, "`{key}`: evaluate_all differs from evaluate");
        if diagnostics.is_empty() {
            assert_ne!(
                e.error_code(),
                Some(ErrorCode::ParseError),
                "`{key}`: PARSE_ERROR without a diagnostic"
            );
        }

        let explanation = explain(&snapshot, key, &context);
        assert_eq!(
            explanation.evaluation, e,
            "`{key}`: explain differs from evaluate"
        );
        std::hint::black_box(explanation.to_string());
        std::hint::black_box(serde_json::to_string(&explanation).expect("explanations serialise"));

        let kind = snapshot.flag_kind(key).expect("a listed key has a kind");
        let b = evaluate_bool(&snapshot, key, &context, false).details;
        let s = evaluate_string(&snapshot, key, &context, "default").details;
        let n = evaluate_number(&snapshot, key, &context, 0.5).details;
        let j = evaluate_json(&snapshot, key, &context, &null).details;
        let i = evaluate_integer(&snapshot, key, &context, -1).details;
        for typed in [&b, &s, &n, &j, &i] {
            check_shape(key, typed);
        }
        let own = match kind {
            FlagKind::Boolean => b,
            FlagKind::String => s,
            FlagKind::Number => n,
            FlagKind::Json => j,
        };
        assert_eq!(
            own, e,
            "`{key}`: the typed accessor of its own kind differs"
        );
    }

    let missing = evaluate(&snapshot, MISSING_KEY, &context);
    assert_eq!(missing.error_code(), Some(ErrorCode::FlagNotFound));
    std::hint::black_box(explain(&snapshot, MISSING_KEY, &context).to_string());
});
