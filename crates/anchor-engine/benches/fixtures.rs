//! The benchmark scenarios, shared by the criterion benchmarks and the allocation test.
//!
//! A pool of 1,024 pre-built contexts with ids like `user-000123-9f3a2b1c` and three attributes
//! (`country`, `plan`, `appVersion`), and the snapshots of scenarios (a) to (f).

use anchor_engine::{EnvironmentConfig, EvaluationContext, Snapshot, compile};
use serde_json::{Value, json};

pub const CONTEXTS: usize = 1024;
pub const MANY_FLAGS: usize = 1000;
pub const SEGMENT_KEYS: usize = 100_000;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id of user `i`: `user-000123-9f3a2b1c`.
pub fn user_id(i: usize) -> String {
    format!("user-{i:06}-{:08x}", splitmix64(i as u64) as u32)
}

pub fn contexts() -> Vec<EvaluationContext> {
    let countries = ["DE", "FR", "US", "GB", "NL"];
    let plans = ["pro", "team", "enterprise"];
    (0..CONTEXTS)
        .map(|i| {
            // Every other user is in the big segment (ids of even users are included).
            EvaluationContext::with_targeting_key(user_id(i * 97))
                .with("country", countries[i % countries.len()])
                .with("plan", plans[i % plans.len()])
                .with("appVersion", format!("2.{}.{}", 1 + i % 7, i % 13))
        })
        .collect()
}

fn boolean_flag(key: &str, config: Value) -> Value {
    json!({
        "flag": {"key": key, "kind": "boolean", "variants": [
            {"name": "on", "value": true}, {"name": "off", "value": false}
        ]},
        "config": config
    })
}

fn half(key: &str) -> Value {
    boolean_flag(
        key,
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"rollout": {"variants": [
            {"variant": "on", "weight": 50000}, {"variant": "off", "weight": 50000}
        ]}}}),
    )
}

fn build(config: Value) -> Snapshot {
    let config: EnvironmentConfig = serde_json::from_value(config).expect("a valid model");
    let (snapshot, diagnostics) = compile(&config);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    snapshot
}

/// Scenarios (a), (b), (c) and (e): flags `always-on`, `half`, `targeted`, `in-segment`.
pub fn small_snapshot() -> Snapshot {
    build(small_config())
}

/// The configuration of [`small_snapshot`], as JSON.
pub fn small_config() -> Value {
    let segment_keys: Vec<String> = (0..SEGMENT_KEYS).map(|i| user_id(i * 97 * 2)).collect();
    json!({
        "flags": [
            boolean_flag("always-on", json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}})),
            half("half"),
            boolean_flag("targeted", json!({
                "enabled": true, "offVariant": "off",
                "rules": [{
                    "id": "eligible",
                    "conditions": [
                        {"attribute": "country", "operator": "in", "values": ["DE", "FR", "US", "GB", "NL"]},
                        {"attribute": "plan", "operator": "in", "values": ["pro", "team", "enterprise"]},
                        {"attribute": "appVersion", "operator": "semver_gt", "values": ["2.0.0"]}
                    ],
                    "serve": {"rollout": {"variants": [
                        {"variant": "on", "weight": 25000}, {"variant": "off", "weight": 75000}
                    ]}}
                }],
                "defaultServe": {"variant": "off"}
            })),
            boolean_flag("in-segment", json!({
                "enabled": true, "offVariant": "off",
                "rules": [{"id": "big", "conditions": [
                    {"attribute": "targetingKey", "operator": "segment_match", "values": ["big"]}
                ], "serve": {"variant": "on"}}],
                "defaultServe": {"variant": "off"}
            }))
        ],
        "segments": [{"key": "big", "included": segment_keys}]
    })
}

/// The keys of the 1,000 flags of scenarios (d) and (f).
pub fn many_keys() -> Vec<String> {
    (0..MANY_FLAGS).map(|i| format!("flag-{i:04}")).collect()
}

/// Scenarios (d) and (f): 1,000 flags, each a 50/50 rollout.
pub fn many_snapshot() -> Snapshot {
    build(many_config())
}

/// The configuration of [`many_snapshot`], as JSON.
pub fn many_config() -> Value {
    let flags: Vec<Value> = many_keys().iter().map(|k| half(k)).collect();
    json!({ "flags": flags })
}
