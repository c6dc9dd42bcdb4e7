//! Explanations read as sentences that answer "why does this user get this value?".
//!
//! Each case states a flag, a context and the whole explanation text, so a change in wording
//! shows up as a readable diff.

use anchor_engine::{EnvironmentConfig, EvaluationContext, compile, explain};
use serde_json::{Value, json};

fn environment() -> EnvironmentConfig {
    serde_json::from_value(json!({
        "flags": [
            {
                "flag": {"key": "payments-v2", "kind": "boolean", "variants": [
                    {"name": "on", "value": true}, {"name": "off", "value": false}]},
                "config": {"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"},
                           "targets": {"off": ["user-blocked"]}, "version": 2}
            },
            {
                "flag": {"key": "new-checkout", "kind": "string", "variants": [
                    {"name": "one-page", "value": "one-page"}, {"name": "classic", "value": "classic"}]},
                "config": {
                    "enabled": true, "offVariant": "classic", "version": 7,
                    "prerequisites": [{"flag": "payments-v2", "variant": "on"}],
                    "rules": [
                        {"id": "staff", "conditions": [
                            {"attribute": "email", "operator": "ends_with", "values": ["@anchor.dev"], "caseInsensitive": true}
                        ], "serve": {"variant": "one-page"}},
                        {"id": "beta", "conditions": [
                            {"attribute": "targetingKey", "operator": "segment_match", "values": ["beta"]},
                            {"attribute": "app.version", "operator": "semver_gte", "values": ["2.1"]}
                        ], "serve": {"variant": "one-page"}},
                        {"id": "eu-canary", "conditions": [
                            {"attribute": "country", "operator": "in", "values": ["DE", "FR"]}
                        ], "serve": {"rollout": {"variants": [
                            {"variant": "one-page", "weight": 5000}, {"variant": "classic", "weight": 95000}]}}}
                    ],
                    "defaultServe": {"variant": "classic"}
                }
            },
            {
                "flag": {"key": "killed", "kind": "boolean", "variants": [
                    {"name": "on", "value": true}, {"name": "off", "value": false}]},
                "config": {"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}}
            },
            {
                "flag": {"key": "by-company", "kind": "boolean", "variants": [
                    {"name": "on", "value": true}, {"name": "off", "value": false}]},
                "config": {"enabled": true, "offVariant": "off", "defaultServe": {"rollout": {
                    "bucketBy": "companyId", "variants": [{"variant": "on", "weight": 1}, {"variant": "off", "weight": 1}]}}}
            }
        ],
        "segments": [
            {"key": "beta", "included": ["user-7"], "excluded": ["user-8"],
             "rules": [{"id": "testers", "conditions": [{"attribute": "role", "operator": "in", "values": ["tester"]}]}]}
        ]
    }))
    .unwrap()
}

fn check(flag: &str, context: Value, expected: &str) {
    let (snapshot, diagnostics) = compile(&environment());
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let ctx = EvaluationContext::from_value(context).unwrap();
    let got = explain(&snapshot, flag, &ctx).to_string();
    assert_eq!(got.trim(), expected.trim(), "\n--- got ---\n{got}\n");
}

#[test]
fn a_matching_rule_names_the_condition_and_the_value_it_saw() {
    check(
        "new-checkout",
        json!({"targetingKey": "user-1", "email": "Ann@Anchor.DEV"}),
        r#"
flag `new-checkout` (version 7)
1. prerequisite `payments-v2` must serve `on`: it serves `on`, passed
2. rule 0 `staff` matched: `email` ends_with ["@anchor.dev"] (got "Ann@Anchor.DEV")
=> variant `one-page` ("one-page"), reason TARGETING_MATCH
"#,
    );
}

#[test]
fn failed_rules_name_the_failing_condition_and_a_split_shows_its_bucket() {
    check(
        "new-checkout",
        json!({"targetingKey": "user-7", "app": {"version": "2.0.9"}, "country": "DE"}),
        r#"
flag `new-checkout` (version 7)
1. prerequisite `payments-v2` must serve `on`: it serves `on`, passed
2. rule 0 `staff` did not match: condition 0 failed, `email` ends_with ["@anchor.dev"] (attribute missing)
3. rule 1 `beta` did not match: condition 1 failed, `app.version` semver_gte ["2.1"] (got "2.0.9")
4. rule 2 `eu-canary` matched: `country` in ["DE","FR"] (got "DE")
5. bucketed by targetingKey `user-7` with salt `new-checkout`: hash 3904895597, bucket 90917 of 100000 => `classic`
=> variant `classic` ("classic"), reason SPLIT
"#,
    );
}

#[test]
fn segment_membership_says_which_segment_rule_matched() {
    check(
        "new-checkout",
        json!({"targetingKey": "user-9", "role": "tester", "app": {"version": "2.1.0"}}),
        r#"
flag `new-checkout` (version 7)
1. prerequisite `payments-v2` must serve `on`: it serves `on`, passed
2. rule 0 `staff` did not match: condition 0 failed, `email` ends_with ["@anchor.dev"] (attribute missing)
3. rule 1 `beta` matched: in segments `beta` (member: segment rule 0 `testers` matched) and `app.version` semver_gte ["2.1"] (got "2.1.0")
=> variant `one-page` ("one-page"), reason TARGETING_MATCH
"#,
    );
}

#[test]
fn an_excluded_key_is_reported_as_excluded_and_falls_through_to_the_default() {
    check(
        "new-checkout",
        json!({"targetingKey": "user-8", "role": "tester", "country": "US"}),
        r#"
flag `new-checkout` (version 7)
1. prerequisite `payments-v2` must serve `on`: it serves `on`, passed
2. rule 0 `staff` did not match: condition 0 failed, `email` ends_with ["@anchor.dev"] (attribute missing)
3. rule 1 `beta` did not match: condition 0 failed, in segments `beta` (not a member: the targeting key is excluded)
4. rule 2 `eu-canary` did not match: condition 0 failed, `country` in ["DE","FR"] (got "US")
5. no target or rule applied: the default serve
=> variant `classic` ("classic"), reason DEFAULT
"#,
    );
}

#[test]
fn a_failing_prerequisite_stops_evaluation_with_the_off_variant() {
    check(
        "new-checkout",
        json!({"targetingKey": "user-blocked"}),
        r#"
flag `new-checkout` (version 7)
1. prerequisite `payments-v2` must serve `on`: it serves `off`, failed: off variant
=> variant `classic` ("classic"), reason PREREQUISITE_FAILED
"#,
    );
}

#[test]
fn a_context_that_cannot_be_bucketed_is_explained_with_its_error_code() {
    check(
        "new-checkout",
        json!({"country": "FR"}),
        r#"
flag `new-checkout` (version 7)
1. prerequisite `payments-v2` must serve `on`: it serves `on`, passed
2. rule 0 `staff` did not match: condition 0 failed, `email` ends_with ["@anchor.dev"] (attribute missing)
3. rule 1 `beta` did not match: condition 0 failed, in segments `beta` (not a member: neither included nor matched by a segment rule)
4. rule 2 `eu-canary` matched: `country` in ["DE","FR"] (got "FR")
5. cannot bucket by targetingKey: the context has no such attribute (TARGETING_KEY_MISSING)
=> no value (the caller's default), reason ERROR, error TARGETING_KEY_MISSING
"#,
    );
    check(
        "by-company",
        json!({"companyId": true}),
        r#"
flag `by-company` (version 0)
1. no target or rule applied: the default serve
2. cannot bucket by companyId: true is not a non-empty string or an integer (INVALID_CONTEXT)
=> no value (the caller's default), reason ERROR, error INVALID_CONTEXT
"#,
    );
}

#[test]
fn disabled_and_unknown_flags_say_so() {
    check(
        "killed",
        json!({}),
        r#"
flag `killed` (version 0)
1. the flag is disabled (kill switch): off variant `off`
=> variant `off` (false), reason DISABLED
"#,
    );
    check(
        "missing",
        json!({}),
        r#"
flag `missing`
1. the flag does not exist in this environment
=> no value (the caller's default), reason ERROR, error FLAG_NOT_FOUND
"#,
    );
}

#[test]
fn explanations_serialise_to_json_with_the_bucket_numbers() {
    let (snapshot, _) = compile(&environment());
    let ctx = EvaluationContext::from_value(json!({"companyId": 42})).unwrap();
    let value = serde_json::to_value(explain(&snapshot, "by-company", &ctx)).unwrap();
    assert_eq!(
        value,
        json!({
            "flagKey": "by-company",
            "evaluation": {"value": false, "variant": "off", "reason": "SPLIT", "flagVersion": 0},
            "steps": [
                {"step": "default_serve"},
                {"step": "bucketed", "attribute": "companyId", "unit": "42", "salt": "by-company",
                 "hash": 3057710346u32, "bucket": 1, "totalWeight": 2, "variant": "off"}
            ]
        })
    );
}
