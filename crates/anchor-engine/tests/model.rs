//! Properties of the model: JSON round trips, and that compiling and evaluating any model —
//! however wrong — neither panics nor disagrees with its explanation.

use anchor_engine::{
    Condition, ConfiguredFlag, EnvironmentConfig, EvaluationContext, Flag, FlagConfig, FlagKind,
    Lifecycle, Operator, Prerequisite, Reason, Rollout, Rule, Segment, SegmentRule, Serve, Variant,
    WeightedVariant, compile, evaluate, evaluate_all, evaluate_bool, evaluate_integer,
    evaluate_json, evaluate_number, evaluate_string, explain,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        "[a-zA-Z0-9 ._:-]{0,12}".prop_map(Value::from),
        "\\PC{0,6}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Names drawn from a small pool, so that references sometimes resolve and sometimes not.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["on", "off", "a", "b", "f1", "f2", "s1", "s2"]).prop_map(String::from),
        1 => "[a-zA-Z0-9._ -]{0,8}",
    ]
}

fn operator() -> impl Strategy<Value = Operator> {
    prop::sample::select(vec![
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
    ])
}

fn condition_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        leaf(),
        prop::sample::select(vec![
            "1.2.3",
            "v2",
            "2.0.0-beta.1",
            "2026-01-01T00:00:00Z",
            "^a.*",
            "s1",
            "s2",
            "DE"
        ])
        .prop_map(Value::from),
    ]
}

fn condition() -> impl Strategy<Value = Condition> {
    (
        prop::sample::select(vec![
            "targetingKey",
            "country",
            "app.version",
            "n",
            "when",
            "tags",
            "",
        ]),
        operator(),
        proptest::collection::vec(condition_value(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(attribute, operator, values, negate, case_insensitive)| Condition {
                attribute: attribute.to_string(),
                operator,
                values,
                negate,
                case_insensitive,
            },
        )
}

fn serve() -> impl Strategy<Value = Serve> {
    prop_oneof![
        name().prop_map(Serve::Variant),
        (
            proptest::collection::vec((name(), 0u32..100_000), 0..4),
            proptest::option::of(prop::sample::select(vec![
                "targetingKey",
                "n",
                "country",
                ""
            ])),
            proptest::option::of("[a-z:]{0,6}"),
        )
            .prop_map(|(variants, bucket_by, salt)| Serve::Rollout(Rollout {
                variants: variants
                    .into_iter()
                    .map(|(variant, weight)| WeightedVariant { variant, weight })
                    .collect(),
                bucket_by: bucket_by.map(String::from),
                salt,
            })),
    ]
}

fn flag() -> impl Strategy<Value = ConfiguredFlag> {
    let kind = prop::sample::select(vec![
        FlagKind::Boolean,
        FlagKind::String,
        FlagKind::Number,
        FlagKind::Json,
    ]);
    let variants = proptest::collection::vec((name(), json_value()), 0..4);
    let definition = (
        name(),
        kind,
        variants,
        "[a-z ]{0,10}",
        proptest::collection::vec("[a-z]{0,5}", 0..2),
        any::<bool>(),
        proptest::option::of("20[0-9]{2}-[01][0-9]-[0-3][0-9]"),
    )
        .prop_map(
            |(key, kind, variants, description, tags, permanent, cleanup_date)| Flag {
                key,
                kind,
                variants: variants
                    .into_iter()
                    .map(|(name, value)| Variant {
                        name,
                        value,
                        description: String::new(),
                    })
                    .collect(),
                description,
                tags,
                lifecycle: if permanent {
                    Lifecycle::Permanent
                } else {
                    Lifecycle::Temporary
                },
                cleanup_date,
            },
        );
    let rule = (
        "[a-z0-9]{0,4}",
        proptest::collection::vec(condition(), 0..3),
        serve(),
    )
        .prop_map(|(id, conditions, serve)| Rule {
            id,
            description: String::new(),
            conditions,
            serve,
        });
    let config = (
        any::<bool>(),
        name(),
        proptest::collection::btree_map(
            name(),
            proptest::collection::vec("[a-z0-9-]{0,6}", 0..3),
            0..2,
        ),
        proptest::collection::vec(rule, 0..3),
        serve(),
        proptest::collection::vec(
            (name(), name()).prop_map(|(flag, variant)| Prerequisite { flag, variant }),
            0..2,
        ),
        any::<u64>(),
    )
        .prop_map(
            |(enabled, off_variant, targets, rules, default_serve, prerequisites, version)| {
                FlagConfig {
                    enabled,
                    off_variant,
                    targets,
                    rules,
                    default_serve,
                    prerequisites,
                    version,
                }
            },
        );
    (definition, config).prop_map(|(flag, config)| ConfiguredFlag { flag, config })
}

fn segment() -> impl Strategy<Value = Segment> {
    (
        name(),
        proptest::collection::vec("[a-z0-9-]{0,6}", 0..3),
        proptest::collection::vec("[a-z0-9-]{0,6}", 0..2),
        proptest::collection::vec(
            ("[a-z]{0,3}", proptest::collection::vec(condition(), 0..3))
                .prop_map(|(id, conditions)| SegmentRule { id, conditions }),
            0..3,
        ),
        any::<u64>(),
    )
        .prop_map(|(key, included, excluded, rules, version)| Segment {
            key,
            description: String::new(),
            included,
            excluded,
            rules,
            version,
        })
}

fn environment() -> impl Strategy<Value = EnvironmentConfig> {
    (
        proptest::collection::vec(flag(), 0..5),
        proptest::collection::vec(segment(), 0..3),
    )
        .prop_map(|(flags, segments)| EnvironmentConfig { flags, segments })
}

fn context() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(
        prop::sample::select(vec![
            "targetingKey",
            "country",
            "app",
            "n",
            "when",
            "tags",
            "app.version",
        ])
        .prop_map(String::from),
        json_value(),
        0..5,
    )
    .prop_map(|m| {
        let mut map: Map<String, Value> = m.into_iter().collect();
        // A non-string targeting key is rejected at the edge; keep the context valid.
        if map.get("targetingKey").is_some_and(|v| !v.is_string()) {
            map.insert("targetingKey".into(), Value::from("user-1"));
        }
        map
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn environments_survive_a_json_round_trip(env in environment()) {
        let text = serde_json::to_string(&env).unwrap();
        let back: EnvironmentConfig = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &env);
        let value = serde_json::to_value(&env).unwrap();
        prop_assert_eq!(serde_json::from_value::<EnvironmentConfig>(value).unwrap(), env);
    }

    #[test]
    fn contexts_survive_a_json_round_trip(map in context()) {
        let ctx = EvaluationContext::from_map(map).unwrap();
        let back: EvaluationContext = serde_json::from_str(&serde_json::to_string(&ctx).unwrap()).unwrap();
        prop_assert_eq!(back, ctx);
    }

    #[test]
    fn any_model_compiles_and_evaluates_without_panicking(env in environment(), map in context()) {
        let (snapshot, diagnostics) = compile(&env);
        let ctx = EvaluationContext::from_map(map).unwrap();
        let all = evaluate_all(&snapshot, &ctx);
        prop_assert_eq!(all.len(), snapshot.len());
        for (key, e) in all {
            prop_assert_eq!(evaluate(&snapshot, key, &ctx), e);
            let explanation = explain(&snapshot, key, &ctx);
            prop_assert_eq!(explanation.evaluation, e);
            prop_assert!(!explanation.to_string().is_empty());
            prop_assert!(serde_json::to_string(&explanation).is_ok());
            // A value is served exactly when there is no error.
            prop_assert_eq!(e.value().is_some(), e.error_code().is_none());
            prop_assert_eq!(e.reason() == Reason::Error, e.error_code().is_some());
            let _ = evaluate_bool(&snapshot, key, &ctx, false);
            let _ = evaluate_string(&snapshot, key, &ctx, "");
            let _ = evaluate_number(&snapshot, key, &ctx, 0.0);
            let _ = evaluate_integer(&snapshot, key, &ctx, 0);
            let _ = evaluate_json(&snapshot, key, &ctx, &Value::Null);
        }
        // Every diagnostic points into the input (at a value, or at a missing member of an
        // object that is there).
        let input = serde_json::to_value(&env).unwrap();
        for d in &diagnostics {
            let parent = d.path.rsplit_once('/').map_or("", |(p, _)| p);
            prop_assert!(input.pointer(&d.path).is_some() || input.pointer(parent).is_some_and(Value::is_object),
                "{} does not point into the input", d.path);
        }
    }
}

#[test]
fn snapshots_and_contexts_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<anchor_engine::Snapshot>();
    shareable::<EvaluationContext>();
    let (snapshot, _) = compile(&EnvironmentConfig::default());
    let snapshot = std::sync::Arc::new(snapshot);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let s = std::sync::Arc::clone(&snapshot);
            std::thread::spawn(move || evaluate(&s, "missing", &EvaluationContext::new()).reason())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Reason::Error);
    }
}

#[test]
fn compiling_reports_every_problem_at_once_with_its_json_pointer() {
    let env: EnvironmentConfig = serde_json::from_value(serde_json::json!({
        "flags": [{
            "flag": {"key": "bad key", "kind": "boolean", "variants": [
                {"name": "on", "value": "yes"}, {"name": "off", "value": false}]},
            "config": {
                "enabled": true, "offVariant": "nope",
                "rules": [{"id": "r", "conditions": [
                    {"attribute": "v", "operator": "semver_gt", "values": ["not-a-version"]},
                    {"attribute": "e", "operator": "matches", "values": ["("]}
                ], "serve": {"rollout": {"variants": [{"variant": "on", "weight": 0}]}}}],
                "defaultServe": {"variant": "missing"}
            }
        }]
    }))
    .unwrap();
    let (_, diagnostics) = compile(&env);
    let paths: Vec<&str> = diagnostics.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/flags/0/flag/key",
            "/flags/0/flag/variants/0/value",
            "/flags/0/config/offVariant",
            "/flags/0/config/rules/0/conditions/0/values/0",
            "/flags/0/config/rules/0/conditions/1/values/0",
            "/flags/0/config/rules/0/serve/rollout/variants",
            "/flags/0/config/defaultServe/variant",
        ]
    );
}
