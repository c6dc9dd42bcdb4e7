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

#[tokio::test]
async fn outcomes_of_a_watched_flag_reach_the_server_per_variant() {
    let server = Server::start("outcomes").await;
    let half = json!({"enabled": true, "offVariant": "off", "defaultServe": {"rollout": {
        "variants": [{"variant": "on", "weight": 50000}, {"variant": "off", "weight": 50000}]}}});
    server.flag(on_off("checkout"), half).await;
    server.flag(on_off("other"), serving("on")).await;
    let key = server
        .sdk_key("default", "production", SdkKeyKind::Server)
        .await;
    // Flushed by hand below: a long interval keeps the background task out of the way.
    let client = Client::builder(&server.url, &key)
        .telemetry_interval(Duration::from_secs(3600))
        .watch_flags(["checkout"])
        .metric_cap("revenue", 50.0)
        .build()
        .await
        .unwrap();
    // 400 users, each evaluated twice (one exposure each), each with one request: the new
    // variant is slower (about 120 ms against 40 ms) and fails one request in ten.
    let mut expected = std::collections::HashMap::<&str, (u64, u64)>::new();
    for i in 0..400u64 {
        let context = user(&format!("user-{i}"));
        let on = client.bool_value("checkout", &context, false);
        assert_eq!(client.bool_value("checkout", &context, false), on);
        let (variant, ms, error) = if on {
            ("on", 100 + i % 40, i % 10 == 0)
        } else {
            ("off", 30 + i % 20, false)
        };
        client.record(
            &context,
            anchor_sdk::Outcome {
                latency: Some(Duration::from_millis(ms)),
                error,
            },
        );
        // Capped at 50 by the builder.
        client.track("revenue", &context, if on { 80.0 } else { 20.0 });
        let slot = expected.entry(variant).or_default();
        slot.0 += 1;
        slot.1 += u64::from(error);
    }
    // A flag that is not watched gathers no outcomes, however it is evaluated.
    assert!(client.bool_value("other", &user("user-1"), false));
    assert!(client.flush().await, "everything reached the server");
    let get = |path: &str| {
        let http = server.http.clone();
        let url = format!(
            "{}/api/v1/projects/default/environments/production/flags/{path}",
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
    let body = get("checkout/outcomes").await;
    let variants = body["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2, "{body}");
    for arm in variants {
        let variant = arm["variant"].as_str().unwrap();
        let (requests, errors) = expected[variant];
        assert!(requests > 150, "a 50/50 split of 400: {body}");
        // One exposure per user, even one whose evaluations and request straddled a minute's
        // end: a unit counts the first time it is served until the flag changes.
        assert_eq!(arm["exposures"], requests, "{body}");
        assert_eq!(arm["requests"], requests, "{body}");
        assert_eq!(arm["errors"], errors, "{body}");
        assert_eq!(arm["latency"]["count"], requests, "{body}");
        // The 95th percentile of 100..140 ms (on) or 30..50 ms (off), within the sketch's 1%
        // and one step of the recorded values.
        let p95 = arm["latency"]["p95"].as_f64().unwrap();
        let exact = if variant == "on" { 137.0 } else { 48.0 };
        assert!(
            (p95 - exact).abs() <= exact * 0.03,
            "{variant} p95 {p95}: {body}"
        );
        let mean = if variant == "on" { 50.0 } else { 20.0 };
        assert_eq!(arm["metrics"]["revenue"]["mean"], mean, "{body}");
    }
    assert!(expected["on"].1 > 0, "some requests failed");
    // The outcomes' own evaluations were not counted: two per user, as the app made them.
    let counts = get("checkout/evaluations").await;
    assert_eq!(counts["evaluations"], 800, "{counts}");
    assert_eq!(get("other/evaluations").await["evaluations"], 1);
    let other = get("other/outcomes").await;
    assert_eq!(other["variants"], json!([]), "{other}");
    client.close().await;
}

#[tokio::test]
async fn a_flag_under_a_release_with_coverage_attributes_sends_first_exposures_by_value() {
    let server = Server::start("coverage").await;
    server.flag(on_off("checkout"), serving("off")).await;
    server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/release-templates/covered",
            json!({"name": "Covered", "template": {
                "stages": [
                    {"percentage": 50.0, "dwellMs": 3_600_000, "requireCoverage": true},
                    {"percentage": 100.0, "dwellMs": 1}
                ],
                "guardrails": {"guardrails": [
                    {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.5}
                ]},
                "coverageAttributes": ["platform", "app.tier"]
            }}),
        )
        .await;
    let key = server
        .sdk_key("default", "production", SdkKeyKind::Server)
        .await;
    let client = Client::builder(&server.url, &key)
        .telemetry_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    // The release sets the flag to 50% and tells connected SDKs (in the same patch) to watch
    // it, broken down by platform and tier.
    server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"template": "covered", "control": "off", "treatment": "on"}),
        )
        .await;
    assert!(
        eventually(5, || (0..50).any(|i| client.bool_value(
            "checkout",
            &user(&format!("probe-{i}")),
            false
        )))
        .await,
        "the patch arrived"
    );
    let mut expected: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for i in 0..300u64 {
        let platform = ["ios", "android", "web"][(i % 3) as usize];
        let mut context = user(&format!("user-{i}")).with("platform", platform);
        if i % 2 == 0 {
            context = context.with("app", json!({"tier": "pro"}));
        }
        let on = client.bool_value("checkout", &context, false);
        // Seen again: still one exposure.
        client.bool_value("checkout", &context, false);
        let variant = if on { "on" } else { "off" };
        *expected
            .entry((variant.into(), platform.into()))
            .or_default() += 1;
    }
    assert!(client.flush().await, "everything reached the server");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let counts = server
        .store
        .coverage_counts("default", "production", "checkout", now - 600, now + 600)
        .await
        .unwrap();
    let mut got: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for (variant, attributes) in &counts {
        // The probes above have no platform: "(none)".
        for (value, n) in attributes["platform"]
            .iter()
            .filter(|(v, _)| *v != "(none)")
        {
            got.insert((variant.clone(), value.clone()), *n);
        }
        let tiers = &attributes["app.tier"];
        assert_eq!(
            tiers.keys().collect::<Vec<_>>(),
            ["(none)", "pro"],
            "a missing attribute counts as (none): {counts:?}"
        );
    }
    assert_eq!(got, expected);
    assert!(expected.keys().any(|(v, _)| v == "on") && expected.keys().any(|(v, _)| v == "off"));
    client.close().await;
}
