//! The SDK against a live server: first configuration, streamed changes, listeners,
//! fail-static (stale serving, reconnection, cache and bootstrap files), offline files.

mod support;

use std::time::Duration;

use anchor_sdk::{ChangeEvent, Client, Error, ErrorCode, EvaluationContext, Reason, Status};
use anchor_store::SdkKeyKind;
use serde_json::json;
use support::{Server, eventually, on_off, serving, temp_dir};

fn user(id: &str) -> EvaluationContext {
    EvaluationContext::with_targeting_key(id)
}

async fn connect(server: &Server, key: &str) -> Client {
    Client::builder(&server.url, key)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn evaluates_locally_and_follows_every_change() {
    let server = Server::start("changes").await;
    server.flag(on_off("checkout"), serving("on")).await;
    server
        .flag(
            json!({"key": "banner", "kind": "string",
                   "variants": [{"name": "blue", "value": "blue"}, {"name": "red", "value": "red"}]}),
            json!({"enabled": true, "offVariant": "blue", "defaultServe": {"variant": "blue"},
                   "rules": [{"id": "germany", "conditions": [{"attribute": "country", "operator": "in", "values": ["DE"]}],
                              "serve": {"variant": "red"}}]}),
        )
        .await;
    let key = server
        .sdk_key("default", "production", SdkKeyKind::Server)
        .await;
    let client = connect(&server, &key).await;
    assert_eq!(client.status(), Status::Ready);
    assert!(client.bool_value("checkout", &user("u1"), false));
    let german = user("u1").with("country", "DE");
    let details = client.string_details("banner", &german, "none");
    assert_eq!(details.value, "red");
    assert_eq!(details.variant.as_deref(), Some("red"));
    assert_eq!(details.reason, Reason::TargetingMatch);
    assert_eq!(details.rule_id.as_deref(), Some("germany"));
    assert!(
        client
            .explain("banner", &german)
            .contains("rule 0 `germany` matched"),
        "{}",
        client.explain("banner", &german)
    );
    // Errors give the caller's default and say why.
    let wrong = client.bool_details("banner", &german, true);
    assert_eq!(
        (wrong.value, wrong.error_code),
        (true, Some(ErrorCode::TypeMismatch))
    );
    let missing = client.string_details("nope", &german, "fallback");
    assert_eq!(
        (missing.value.as_str(), missing.error_code),
        ("fallback", Some(ErrorCode::FlagNotFound))
    );
    let all = client.evaluate_all(&german);
    assert_eq!(
        all.iter().map(|d| d.flag_key.as_str()).collect::<Vec<_>>(),
        ["banner", "checkout"]
    );

    let mut changes = client.changes();
    let before = client.revision();
    server.configure("checkout", serving("off")).await;
    assert!(
        eventually(5, || !client.bool_value("checkout", &user("u1"), true)).await,
        "the change reaches the client"
    );
    assert!(client.revision() > before);
    let event = tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .unwrap()
        .unwrap();
    match event {
        ChangeEvent::Configuration { flags, revision } => {
            assert_eq!(flags, ["checkout"]);
            assert_eq!(revision, client.revision());
        }
        other => panic!("expected a configuration change, got {other:?}"),
    }
    // A new flag appears without a restart.
    server.flag(on_off("fresh"), serving("on")).await;
    assert!(eventually(5, || client.bool_value("fresh", &user("u1"), false)).await);
    client.close().await;
}

#[tokio::test]
async fn keeps_serving_while_the_server_is_away_and_catches_up_after() {
    let mut server = Server::start("fail-static").await;
    server.flag(on_off("checkout"), serving("on")).await;
    let key = server
        .sdk_key("default", "production", SdkKeyKind::Server)
        .await;
    let client = connect(&server, &key).await;
    let mut changes = client.changes();
    assert!(client.bool_value("checkout", &user("u1"), false));

    let port = server.port();
    let store = std::sync::Arc::clone(&server.store);
    server.stop().await;
    assert!(
        eventually(5, || client.status() == Status::Stale).await,
        "the client notices the server is gone"
    );
    assert!(
        client.bool_value("checkout", &user("u1"), false),
        "and keeps serving the last configuration"
    );
    let mut saw_stale = false;
    while let Some(event) = changes.try_recv() {
        saw_stale |= event == ChangeEvent::Status(Status::Stale);
    }
    assert!(saw_stale, "listeners hear the status change");

    // The server comes back on the same port; a change made meanwhile arrives.
    let back = Server::launch_on(store, temp_dir("fail-static-back"), Some(port)).await;
    back.configure("checkout", serving("off")).await;
    assert!(
        eventually(10, || client.status() == Status::Ready
            && !client.bool_value("checkout", &user("u1"), true))
        .await,
        "reconnects and catches up: {:?} {:?}",
        client.status(),
        client.last_error()
    );
}

#[tokio::test]
async fn starts_from_its_cache_or_a_bootstrap_file_when_the_server_is_unreachable() {
    let mut server = Server::start("cache").await;
    server.flag(on_off("checkout"), serving("on")).await;
    let key = server
        .sdk_key("default", "production", SdkKeyKind::Server)
        .await;
    let dir = temp_dir("cache-files");
    let cache = dir.join("cache.json");
    let client = Client::builder(&server.url, &key)
        .cache_path(&cache)
        .build()
        .await
        .unwrap();
    let revision = client.revision();
    assert!(
        eventually(5, || cache.exists()).await,
        "the cache is written"
    );
    let url = server.url.clone();
    server.stop().await;
    drop(client);

    let restarted = Client::builder(&url, &key)
        .cache_path(&cache)
        .init_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("starts from the cache");
    assert_eq!(restarted.status(), Status::Stale);
    assert_eq!(restarted.revision(), revision);
    assert!(restarted.bool_value("checkout", &user("u1"), false));

    let bootstrap = dir.join("bootstrap.json");
    std::fs::write(
        &bootstrap,
        json!({"flags": [{"flag": on_off("checkout"), "config": serving("off")}]}).to_string(),
    )
    .unwrap();
    let from_file = Client::builder(&url, &key)
        .bootstrap_file(&bootstrap)
        .init_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("starts from the bootstrap file");
    assert!(!from_file.bool_value("checkout", &user("u1"), true));

    let error = Client::builder(&url, &key)
        .init_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotReady { .. }), "{error}");
    assert!(
        error.to_string().contains("no cache or bootstrap file"),
        "{error}"
    );
}

#[tokio::test]
async fn a_refused_key_fails_the_build_clearly() {
    let server = Server::start("refused").await;
    let client_key = server
        .sdk_key("default", "production", SdkKeyKind::Client)
        .await;
    for key in ["anc_srv_not-a-key", client_key.as_str()] {
        let error = Client::builder(&server.url, key).build().await.unwrap_err();
        assert!(matches!(error, Error::Unauthorized { .. }), "{error}");
        assert!(
            !error.to_string().contains(key),
            "never prints the key: {error}"
        );
    }
    let error = Client::builder("ftp://example.com", "k")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Url(_)), "{error}");
}

#[tokio::test]
async fn offline_mode_reads_a_file_and_reloads_it_when_it_changes() {
    let dir = temp_dir("offline");
    let path = dir.join("flags.json");
    let write = |variant: &str| {
        std::fs::write(
            &path,
            json!({"revision": 1, "flags": [{"flag": on_off("checkout"), "config": serving(variant)}]})
                .to_string(),
        )
        .unwrap();
    };
    write("on");
    let client = Client::offline(&path)
        .watch(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    assert_eq!(client.status(), Status::Ready);
    assert!(client.bool_value("checkout", &user("u1"), false));
    write("off");
    assert!(eventually(5, || !client.bool_value("checkout", &user("u1"), true)).await);

    std::fs::write(&path, "{ not json").unwrap();
    assert!(eventually(5, || client.status() == Status::Error).await);
    assert!(
        !client.bool_value("checkout", &user("u1"), true),
        "a broken file keeps the last configuration"
    );
    assert!(
        client
            .last_error()
            .unwrap()
            .contains("not a flag configuration")
    );
    write("on");
    assert!(
        eventually(5, || client.status() == Status::Ready
            && client.bool_value("checkout", &user("u1"), false))
        .await
    );

    let error = Client::offline(dir.join("missing.json"))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::File { .. }), "{error}");
}

#[tokio::test]
async fn evaluation_counts_reach_the_server_and_close_flushes_the_rest() {
    let server = Server::start("telemetry").await;
    server.flag(on_off("checkout"), serving("on")).await;
    let key = server
        .sdk_key("default", "production", SdkKeyKind::Server)
        .await;
    let client = Client::builder(&server.url, &key)
        .telemetry_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    for i in 0..5 {
        assert!(client.bool_value("checkout", &user(&format!("u{i}")), false));
    }
    let counts = |server: &Server| {
        let http = server.http.clone();
        let url = format!(
            "{}/api/v1/projects/default/environments/production/flags/checkout/evaluations",
            server.url
        );
        async move {
            let body: serde_json::Value = http
                .get(url)
                .basic_auth("admin", Some(support::PASSWORD))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = counts(&server).await;
        if body["totals"]["variants"]["on"] == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sent in the background: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A type mismatch serves the caller's default: counted as such.
    assert_eq!(client.string_value("checkout", &user("u1"), "x"), "x");
    // A change replaces the configuration; counts made before it still go out.
    let mut changes = client.changes();
    server.configure("checkout", serving("off")).await;
    // Waiting on the listener, not on evaluations, which would be counted.
    while !matches!(
        tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .unwrap(),
        Some(ChangeEvent::Configuration { .. })
    ) {}
    assert!(!client.bool_value("checkout", &user("u9"), true));
    client.close().await;
    let body = counts(&server).await;
    assert_eq!(body["totals"]["variants"]["on"], 5, "{body}");
    assert_eq!(body["totals"]["default"], 1, "{body}");
    assert_eq!(
        body["totals"]["variants"]["off"], 1,
        "close flushed the last counts: {body}"
    );
}
