//! Interoperability: the official OpenFeature OFREP provider for Rust (`open-feature-ofrep`, on
//! the `open-feature` SDK) against a live server on a real port.
//!
//! `open-feature-ofrep` 0.1.2 reads `value` and `variant` from the answer but reports every
//! success with reason `STATIC`, and maps every 400 to `INVALID_CONTEXT`: the assertions below
//! check what this client reports; `tests/api.rs` checks the protocol's reasons and error codes
//! on the wire.

use std::sync::Arc;

use anchor_engine::{Flag, FlagConfig};
use anchor_server::{AppState, Secret, auth, bootstrap, launch};
use anchor_store::{Actor, ConfigChange, NewSdkKey, SdkKeyKind, SqlStore, Store};
use open_feature::provider::FeatureProvider;
use open_feature::{EvaluationContext, EvaluationErrorCode, Value};
use open_feature_ofrep::{OfrepOptions, OfrepProvider};
use serde_json::json;

async fn flag(store: &dyn Store, definition: serde_json::Value, config: serde_json::Value) {
    let actor = Actor::system("test");
    let flag: Flag = serde_json::from_value(definition).unwrap();
    let config: FlagConfig = serde_json::from_value(config).unwrap();
    store
        .create_flag(&actor, "default", &flag, &config)
        .await
        .unwrap();
    store
        .update_flag_config(&ConfigChange {
            actor: &actor,
            project: "default",
            environment: "production",
            flag: &flag.key,
            config: &config,
            expected_version: None,
            comment: None,
            action: "flag.config.updated",
            event: None,
        })
        .await
        .unwrap();
}

fn on_off(key: &str) -> serde_json::Value {
    json!({"key": key, "kind": "boolean",
           "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]})
}

#[tokio::test]
async fn the_official_rust_ofrep_provider_evaluates_every_kind_of_flag() {
    let dir = std::env::temp_dir().join(format!("anchor-ofrep-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap());
    bootstrap(
        store.as_ref(),
        Some(&Secret::new("correct horse battery staple")),
    )
    .await
    .unwrap();
    let s = store.as_ref();
    flag(
        s,
        on_off("checkout"),
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
               "rules": [{"id": "germany", "conditions": [{"attribute": "country", "operator": "in", "values": ["DE"]}],
                          "serve": {"variant": "on"}}]}),
    )
    .await;
    flag(
        s,
        json!({"key": "banner", "kind": "string", "variants": [{"name": "blue", "value": "blue"}]}),
        json!({"enabled": true, "offVariant": "blue", "defaultServe": {"variant": "blue"}}),
    )
    .await;
    flag(
        s,
        json!({"key": "limit", "kind": "number", "variants": [{"name": "high", "value": 42}]}),
        json!({"enabled": true, "offVariant": "high", "defaultServe": {"variant": "high"}}),
    )
    .await;
    flag(
        s,
        json!({"key": "ratio", "kind": "number", "variants": [{"name": "quarter", "value": 0.25}]}),
        json!({"enabled": true, "offVariant": "quarter", "defaultServe": {"variant": "quarter"}}),
    )
    .await;
    flag(
        s,
        json!({"key": "layout", "kind": "json", "variants": [{"name": "grid", "value": {"columns": 3}}]}),
        json!({"enabled": true, "offVariant": "grid", "defaultServe": {"variant": "grid"}}),
    )
    .await;
    flag(
        s,
        json!({"key": "experiment", "kind": "string",
               "variants": [{"name": "a", "value": "A"}, {"name": "b", "value": "B"}]}),
        json!({"enabled": true, "offVariant": "a", "defaultServe": {"rollout": {"variants": [
            {"variant": "a", "weight": 50000}, {"variant": "b", "weight": 50000}]}}}),
    )
    .await;
    flag(
        s,
        on_off("killed"),
        json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}}),
    )
    .await;
    let secret = format!("anc_cli_{}", auth::random_token_body().unwrap());
    store
        .create_sdk_key(
            &Actor::system("test"),
            &NewSdkKey {
                project: "default".into(),
                environment: "production".into(),
                kind: SdkKeyKind::Client,
                key_hash: auth::token_hash(&secret),
                prefix: secret.chars().take(12).collect(),
            },
        )
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(launch(listener, AppState::new(store).unwrap(), async {
        let _ = stopped.await;
    }));

    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("X-API-Key", secret.parse().unwrap());
    let provider = OfrepProvider::new(OfrepOptions {
        base_url: format!("http://{addr}"),
        headers,
        ..Default::default()
    })
    .await
    .unwrap();
    let german = EvaluationContext::default()
        .with_targeting_key("user-42")
        .with_custom_field("country", "DE");

    let r = provider
        .resolve_bool_value("checkout", &german)
        .await
        .unwrap();
    assert_eq!((r.value, r.variant.as_deref()), (true, Some("on")));
    let french = EvaluationContext::default()
        .with_targeting_key("user-43")
        .with_custom_field("country", "FR");
    let r = provider
        .resolve_bool_value("checkout", &french)
        .await
        .unwrap();
    assert_eq!((r.value, r.variant.as_deref()), (false, Some("off")));
    let r = provider
        .resolve_string_value("banner", &german)
        .await
        .unwrap();
    assert_eq!(r.value, "blue");
    let r = provider.resolve_int_value("limit", &german).await.unwrap();
    assert_eq!(r.value, 42);
    let r = provider
        .resolve_float_value("ratio", &german)
        .await
        .unwrap();
    assert_eq!(r.value, 0.25);
    let r = provider
        .resolve_struct_value("layout", &german)
        .await
        .unwrap();
    assert!(
        matches!(r.value.fields.get("columns"), Some(Value::Int(3))),
        "{:?}",
        r.value
    );
    let r = provider
        .resolve_string_value("experiment", &german)
        .await
        .unwrap();
    let expected = match r.variant.as_deref() {
        Some("a") => "A",
        Some("b") => "B",
        other => panic!("an unexpected variant {other:?}"),
    };
    assert_eq!(
        r.value, expected,
        "the value matches the variant of the split"
    );
    let again = provider
        .resolve_string_value("experiment", &german)
        .await
        .unwrap();
    assert_eq!(again.value, r.value, "sticky");
    let r = provider
        .resolve_bool_value("killed", &german)
        .await
        .unwrap();
    assert_eq!(
        (r.value, r.variant.as_deref()),
        (false, Some("off")),
        "disabled: the off variant"
    );

    let e = provider
        .resolve_bool_value("missing", &german)
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::FlagNotFound);
    let e = provider
        .resolve_bool_value("banner", &german)
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        EvaluationErrorCode::ParseError,
        "a string asked as a boolean"
    );
    let no_key = EvaluationContext::default();
    let e = provider
        .resolve_string_value("experiment", &no_key)
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        EvaluationErrorCode::InvalidContext,
        "TARGETING_KEY_MISSING on the wire; this client reports every 400 so"
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
