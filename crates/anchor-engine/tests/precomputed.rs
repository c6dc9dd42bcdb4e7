//! What the context precomputes (value fingerprints, parsed versions) and what the compiler
//! precomputes (fixed results) must give the same answers as evaluating from scratch, also after
//! an attribute is replaced.

use anchor_engine::{EnvironmentConfig, EvaluationContext, Reason, Snapshot, compile, evaluate};
use serde_json::json;

fn snapshot() -> Snapshot {
    let config: EnvironmentConfig = serde_json::from_value(json!({
        "flags": [
            {
                "flag": {"key": "new-app", "kind": "boolean", "variants": [
                    {"name": "on", "value": true}, {"name": "off", "value": false}
                ]},
                "config": {
                    "enabled": true, "offVariant": "off",
                    "rules": [{"id": "recent", "conditions": [
                        {"attribute": "appVersion", "operator": "semver_gt", "values": ["2.0.0"]}
                    ], "serve": {"variant": "on"}}],
                    "defaultServe": {"variant": "off"}
                }
            },
            {
                "flag": {"key": "switched-off", "kind": "boolean", "variants": [
                    {"name": "on", "value": true}, {"name": "off", "value": false}
                ]},
                "config": {"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}}
            },
            {
                "flag": {"key": "everyone", "kind": "boolean", "variants": [
                    {"name": "on", "value": true}, {"name": "off", "value": false}
                ]},
                "config": {"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}
            }
        ]
    }))
    .expect("a valid model");
    let (snapshot, diagnostics) = compile(&config);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    snapshot
}

#[test]
fn replacing_an_app_version_changes_the_semver_answer() {
    let snapshot = snapshot();
    let mut ctx = EvaluationContext::with_targeting_key("u").with("appVersion", "1.9.9");
    assert_eq!(evaluate(&snapshot, "new-app", &ctx).variant(), Some("off"));
    ctx.set("appVersion", "2.0.1");
    assert_eq!(evaluate(&snapshot, "new-app", &ctx).variant(), Some("on"));
    // A pre-release of 2.0.1 is still above 2.0.0; one of 2.0.0 is below it.
    ctx.set("appVersion", "v2.0.1-beta.2");
    assert_eq!(evaluate(&snapshot, "new-app", &ctx).variant(), Some("on"));
    ctx.set("appVersion", "2.0.0-rc.1");
    assert_eq!(evaluate(&snapshot, "new-app", &ctx).variant(), Some("off"));
    // Not a version any more: the condition cannot match.
    ctx.set("appVersion", "latest");
    let e = evaluate(&snapshot, "new-app", &ctx);
    assert_eq!((e.variant(), e.reason()), (Some("off"), Reason::Default));
    // Arrays match when any element does, as before.
    ctx.set("appVersion", json!(["1.0.0", "3.1.0"]));
    assert_eq!(evaluate(&snapshot, "new-app", &ctx).variant(), Some("on"));
}

#[test]
fn flags_with_a_fixed_answer_keep_their_reasons() {
    let snapshot = snapshot();
    let ctx = EvaluationContext::with_targeting_key("u");
    let off = evaluate(&snapshot, "switched-off", &ctx);
    assert_eq!(
        (off.variant(), off.reason()),
        (Some("off"), Reason::Disabled)
    );
    assert_eq!(off.value(), Some(&json!(false)));
    let on = evaluate(&snapshot, "everyone", &ctx);
    assert_eq!((on.variant(), on.reason()), (Some("on"), Reason::Static));
    assert_eq!(on.value(), Some(&json!(true)));
    assert_eq!(
        on.flag_index(),
        snapshot.flag_keys().position(|k| k == "everyone")
    );
    // The explanation walks the configuration and agrees.
    let explained = anchor_engine::explain(&snapshot, "everyone", &ctx);
    assert_eq!(explained.evaluation.variant(), Some("on"));
    assert_eq!(explained.evaluation.reason(), Reason::Static);
}
