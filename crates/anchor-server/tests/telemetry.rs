//! SDK telemetry through the HTTP surface (the router, without a socket): batches posted with
//! an SDK key, counted once however often they are retried, judged field by field, and read
//! back by the project's members.

mod support;

use std::sync::Arc;

use anchor_server::{AppState, Secret, bootstrap, router};
use anchor_store::{Role, SqlStore, Store};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use serde_json::{Value, json};
use support::{PASSWORD, on_every_backend};
use tower::ServiceExt;

const TELEMETRY: &str = "/sdk/v1/telemetry";
const EVALUATIONS: &str =
    "/api/v1/projects/default/environments/production/flags/checkout/evaluations";
const OUTCOMES: &str = "/api/v1/projects/default/environments/production/flags/checkout/outcomes";

on_every_backend!(
    start: App::new;
    accepted_counts_appear_in_the_read_endpoint_and_a_retried_batch_counts_once,
    every_bad_field_is_named_by_its_json_pointer_and_nothing_is_stored,
    telemetry_needs_a_live_sdk_key_of_either_kind,
    reading_counts_needs_a_viewer_of_the_project_and_a_sane_range,
    outcomes_are_stored_with_their_batch_once_and_read_back_per_variant,
    every_bad_outcome_field_is_named_and_nothing_of_the_batch_is_stored,
    compacted_hours_keep_their_totals_in_the_read_endpoints,
    the_flag_api_reports_each_environments_lifecycle_from_telemetry_and_revisions,
);

struct App {
    router: Router,
    state: AppState,
    admin: String,
    /// A server key and a client key of `default/production`.
    server_key: String,
    client_key: String,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Reply {
    /// The JSON pointers a problem names, checking that it is a problem.
    fn problem_paths(&self) -> Vec<String> {
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/problem+json",
            "{}",
            self.body
        );
        self.body["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|d| d["path"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn basic(user: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{PASSWORD}"))
    )
}

/// The start of the current minute, in unix seconds.
fn this_minute() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now / 60 * 60
}

impl App {
    async fn new(postgres: Option<(String, String)>) -> App {
        let store: Arc<dyn Store> = match postgres {
            None => {
                let dir =
                    std::env::temp_dir().join(format!("anchor-telemetry-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&dir).unwrap();
                Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap())
            }
            Some((url, schema)) => {
                Arc::new(SqlStore::open_postgres(&url, Some(&schema)).await.unwrap())
            }
        };
        bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
            .await
            .unwrap();
        let state = AppState::new(store).unwrap();
        state.set_ready(true);
        let mut app = App {
            router: router(state.clone()),
            state,
            admin: basic("admin"),
            server_key: String::new(),
            client_key: String::new(),
        };
        let flag = json!({
            "key": "checkout", "kind": "boolean",
            "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]
        });
        let reply = app
            .call(
                "POST",
                "/api/v1/projects/default/flags",
                Some(&app.admin),
                Some(flag),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        app.server_key = app.sdk_key("server").await;
        app.client_key = app.sdk_key("client").await;
        app
    }

    async fn sdk_key(&self, kind: &str) -> String {
        let reply = self
            .call(
                "POST",
                "/api/v1/projects/default/environments/production/keys",
                Some(&self.admin),
                Some(json!({ "kind": kind })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["key"].as_str().unwrap().to_string()
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Posts a batch with the server key.
    async fn post(&self, batch: Value) -> Reply {
        let auth = format!("Bearer {}", self.server_key);
        self.call("POST", TELEMETRY, Some(&auth), Some(batch)).await
    }

    /// A user with `role` in project `default` (or in none), signing in with a password.
    async fn member(&self, name: &str, role: Option<Role>) -> String {
        let hash = anchor_server::auth::hash_password(PASSWORD).unwrap();
        let store = &self.state.store;
        let system = anchor_store::Actor::system("test");
        let user = store
            .create_user(&system, name, &hash, false)
            .await
            .unwrap();
        if let Some(role) = role {
            store
                .set_project_role(&system, "default", &user.id, role)
                .await
                .unwrap();
        }
        basic(name)
    }
}

async fn accepted_counts_appear_in_the_read_endpoint_and_a_retried_batch_counts_once(app: App) {
    let minute = this_minute();
    let batch = json!({
        "batchId": "0193a1b2-batch-1",
        "sdk": "anchor-rust/0.1.0",
        "evaluations": [
            {"minute": minute - 60, "flag": "checkout", "variant": "on", "count": 42},
            {"minute": minute - 60, "flag": "checkout", "variant": "off", "count": 3},
            {"minute": minute - 60, "flag": "checkout", "variant": null, "count": 1},
            {"minute": minute, "flag": "checkout", "variant": "on", "count": 5},
            {"minute": minute, "flag": "unknown-flag", "variant": null, "count": 9},
        ]
    });
    let reply = app.post(batch.clone()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body, json!({"accepted": 5}));
    // The SDK never heard the answer and sends the batch again: counted once.
    let reply = app.post(batch).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.body, json!({"accepted": 0, "duplicate": true}));
    // Another batch, with a client key, adds to the same minute.
    let reply = app
        .call(
            "POST",
            TELEMETRY,
            Some(&format!("Bearer {}", app.client_key)),
            Some(json!({
                "batchId": "browser-7",
                "evaluations": [{"minute": minute, "flag": "checkout", "variant": "on", "count": 2}]
            })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let mut reply = app.call("GET", EVALUATIONS, Some(&app.admin), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // By default the last 24 hours, to the end of the current minute (which may have moved on
    // since `minute` was taken).
    let body = reply.body.as_object_mut().unwrap();
    let (from, to) = (body.remove("from").unwrap(), body.remove("to").unwrap());
    assert_eq!(to.as_i64().unwrap() - from.as_i64().unwrap(), 86_400);
    assert!(to.as_i64().unwrap() > minute);
    assert_eq!(
        reply.body,
        json!({
            "flag": "checkout",
            "environment": "production",
            "minutes": [
                {"minute": minute - 60, "variants": {"off": 3, "on": 42}, "default": 1},
                {"minute": minute, "variants": {"on": 7}, "default": 0},
            ],
            "totals": {"variants": {"off": 3, "on": 49}, "default": 1},
            "evaluations": 53,
        })
    );
    // A range of one minute.
    let reply = app
        .call(
            "GET",
            &format!("{EVALUATIONS}?from={}&to={minute}", minute - 60),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.body["evaluations"], 46, "{}", reply.body);
    // Counts belong to their environment.
    let reply = app
        .call(
            "GET",
            "/api/v1/projects/default/environments/development/flags/checkout/evaluations",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["minutes"], json!([]));
}

async fn every_bad_field_is_named_by_its_json_pointer_and_nothing_is_stored(app: App) {
    let minute = this_minute();
    let good = json!({"minute": minute, "flag": "checkout", "variant": "on", "count": 1});
    let cases = [
        (
            json!({"batchId": "", "evaluations": [good]}),
            vec!["/batchId"],
        ),
        (json!({"evaluations": [good]}), vec!["/batchId"]),
        (json!({"batchId": "b"}), vec!["/evaluations"]),
        (
            json!({"batchId": "b", "sdk": 1, "evaluations": [good]}),
            vec!["/sdk"],
        ),
        (
            json!({"batchId": "b", "evaluations": [
                good,
                {"minute": minute + 30, "flag": "checkout", "variant": "on", "count": 1},
                {"minute": minute + 3600, "flag": "checkout", "variant": "on", "count": 1},
                {"minute": minute - 8 * 86_400, "flag": "checkout", "variant": "on", "count": 1},
                {"minute": minute, "flag": "", "variant": "", "count": 0},
                {"minute": minute, "variant": 3, "count": "many"},
            ]}),
            vec![
                "/evaluations/1/minute",
                "/evaluations/2/minute",
                "/evaluations/3/minute",
                "/evaluations/4/flag",
                "/evaluations/4/variant",
                "/evaluations/4/count",
                "/evaluations/5/flag",
                "/evaluations/5/variant",
                "/evaluations/5/count",
            ],
        ),
    ];
    for (batch, expected) in cases {
        let reply = app.post(batch.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{batch}");
        assert_eq!(reply.problem_paths(), expected, "{batch}");
    }
    // More rows than a batch may carry.
    let rows: Vec<Value> = (0..10_001).map(|_| good.clone()).collect();
    let reply = app
        .post(json!({"batchId": "huge", "evaluations": rows}))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.problem_paths(), ["/evaluations"]);
    // A body over the server's limit (1 MiB).
    let padding = "x".repeat(anchor_server::MAX_BODY);
    let reply = app
        .post(json!({"batchId": "big", "sdk": padding, "evaluations": []}))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    reply.problem_paths();
    // Not JSON at all.
    let request = Request::builder()
        .method("POST")
        .uri(TELEMETRY)
        .header("x-api-key", &app.server_key)
        .body(Body::from("{not json"))
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // None of it was counted, and a refused batch id stays free for a corrected batch.
    let reply = app.call("GET", EVALUATIONS, Some(&app.admin), None).await;
    assert_eq!(reply.body["evaluations"], 0, "{}", reply.body);
    let reply = app
        .post(json!({"batchId": "b", "evaluations": [good]}))
        .await;
    assert_eq!(reply.body, json!({"accepted": 1}));
}

async fn telemetry_needs_a_live_sdk_key_of_either_kind(app: App) {
    let batch = json!({"batchId": "k", "evaluations": []});
    let post = |headers: Vec<(&'static str, String)>| {
        let mut request = Request::builder()
            .method("POST")
            .uri(TELEMETRY)
            .header(header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Body::from(batch.to_string())).unwrap();
        let router = app.router.clone();
        async move { router.oneshot(request).await.unwrap().status() }
    };
    assert_eq!(post(vec![]).await, StatusCode::UNAUTHORIZED);
    let wrong = "anc_srv_0000000000000000000000000000000000000000000".to_string();
    assert_eq!(
        post(vec![("authorization", format!("Bearer {wrong}"))]).await,
        StatusCode::UNAUTHORIZED
    );
    // A person's credentials are not an SDK key.
    assert_eq!(
        post(vec![("authorization", app.admin.clone())]).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(vec![("x-api-key", app.client_key.clone())]).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post(vec![(
            "authorization",
            format!("Bearer {}", app.server_key)
        )])
        .await,
        StatusCode::ACCEPTED
    );
    // A revoked key stops working at once.
    let keys = app
        .call(
            "GET",
            "/api/v1/projects/default/environments/production/keys",
            Some(&app.admin),
            None,
        )
        .await
        .body;
    let prefix = &app.client_key[..12];
    let id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["prefix"].as_str().is_some_and(|p| prefix.starts_with(p)))
        .expect("the client key is listed")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = app
        .call(
            "DELETE",
            &format!("/api/v1/projects/default/environments/production/keys/{id}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_eq!(
        post(vec![("x-api-key", app.client_key.clone())]).await,
        StatusCode::UNAUTHORIZED
    );
}

async fn reading_counts_needs_a_viewer_of_the_project_and_a_sane_range(app: App) {
    let viewer = app.member("vera", Some(Role::Viewer)).await;
    let stranger = app.member("stan", None).await;
    assert_eq!(
        app.call("GET", EVALUATIONS, None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.call("GET", EVALUATIONS, Some(&stranger), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // An SDK key reads nothing of the management API.
    let sdk = format!("Bearer {}", app.server_key);
    assert_eq!(
        app.call("GET", EVALUATIONS, Some(&sdk), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let reply = app.call("GET", EVALUATIONS, Some(&viewer), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let unknown = EVALUATIONS.replace("checkout", "nope");
    assert_eq!(
        app.call("GET", &unknown, Some(&viewer), None).await.status,
        StatusCode::NOT_FOUND
    );
    let nowhere = EVALUATIONS.replace("production", "nowhere");
    assert_eq!(
        app.call("GET", &nowhere, Some(&viewer), None).await.status,
        StatusCode::NOT_FOUND
    );
    for query in [
        "?from=100&to=100",
        "?from=200&to=100",
        "?from=0&to=99999999",
        "?from=yesterday",
        "?since=0",
    ] {
        let reply = app
            .call("GET", &format!("{EVALUATIONS}{query}"), Some(&viewer), None)
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        reply.problem_paths();
    }
}

/// A latency sketch (wire shape) of `n` requests of `ms` milliseconds each.
fn sketch(ms: f64, n: u64) -> Value {
    let mut sketch = anchor_rollout::LatencySketch::new();
    sketch.record_n(ms, n);
    serde_json::to_value(sketch).unwrap()
}

async fn outcomes_are_stored_with_their_batch_once_and_read_back_per_variant(app: App) {
    let minute = this_minute();
    let batch = json!({
        "batchId": "with-outcomes",
        "evaluations": [{"minute": minute, "flag": "checkout", "variant": "on", "count": 300}],
        "outcomes": [
            {"minute": minute - 60, "flag": "checkout", "variant": "on", "exposures": 120,
             "requests": 300, "errors": 3, "latency": sketch(100.0, 300),
             "metrics": {"revenue": {"count": 10, "sum": 512.5, "sumOfSquares": 30100.0}}},
            {"minute": minute, "flag": "checkout", "variant": "on", "exposures": 80,
             "requests": 100, "errors": 1, "latency": sketch(400.0, 100)},
            {"minute": minute, "flag": "checkout", "variant": "off", "exposures": 50,
             "requests": 200, "errors": 0, "latency": sketch(50.0, 150)},
        ]
    });
    let reply = app.post(batch.clone()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body, json!({"accepted": 1, "outcomes": 3}));
    let reply = app.post(batch).await;
    assert_eq!(reply.body, json!({"accepted": 0, "duplicate": true}));
    // A batch of outcomes alone, from another SDK, merges into the same minute.
    let reply = app
        .post(
            json!({"batchId": "outcomes-only", "evaluations": [], "outcomes": [
            {"minute": minute, "flag": "checkout", "variant": "off", "exposures": 10,
             "requests": 50, "errors": 1, "latency": sketch(50.0, 50)}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);

    let viewer = app.member("olga", Some(Role::Viewer)).await;
    let stranger = app.member("oscar", None).await;
    assert_eq!(
        app.call("GET", OUTCOMES, Some(&stranger), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let reply = app.call("GET", OUTCOMES, Some(&viewer), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = &reply.body;
    let variants = body["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2, "{body}");
    let (off, on) = (&variants[0], &variants[1]);
    assert_eq!(off["variant"], "off");
    assert_eq!(
        (&off["exposures"], &off["requests"], &off["errors"]),
        (&json!(60), &json!(250), &json!(1))
    );
    assert_eq!(off["errorRate"], json!(0.004));
    assert_eq!(on["variant"], "on");
    assert_eq!(
        (&on["exposures"], &on["requests"], &on["errors"]),
        (&json!(200), &json!(400), &json!(4))
    );
    assert_eq!(on["errorRate"], json!(0.01));
    // 300 requests at 100 ms and 100 at 400 ms: the median is 100 ms, p95 and p99 400 ms,
    // each within the sketch's 1%.
    let close = |value: &Value, expected: f64| {
        let value = value.as_f64().unwrap();
        assert!(
            (value - expected).abs() <= expected * 0.01,
            "{value} vs {expected}"
        );
    };
    close(&on["latency"]["p50"], 100.0);
    close(&on["latency"]["p95"], 400.0);
    close(&on["latency"]["p99"], 400.0);
    assert_eq!(on["latency"]["count"], 400);
    assert_eq!(
        on["metrics"]["revenue"],
        json!({"count": 10, "mean": 51.25})
    );
    assert_eq!(off["metrics"], json!({}));
    // The per-minute series: only minutes with outcomes, oldest first.
    let minutes = body["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 2, "{body}");
    assert_eq!(minutes[0]["minute"], minute - 60);
    assert_eq!(minutes[0]["variants"][0]["requests"], 300);
    assert_eq!(minutes[1]["minute"], minute);
    assert_eq!(minutes[1]["variants"][0]["variant"], "off");
    assert_eq!(minutes[1]["variants"][1]["requests"], 100);
    // A range of one minute; another environment has nothing.
    let reply = app
        .call(
            "GET",
            &format!("{OUTCOMES}?from={}&to={minute}", minute - 60),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(reply.body["variants"][0]["requests"], 300, "{}", reply.body);
    let reply = app
        .call(
            "GET",
            &OUTCOMES.replace("production", "development"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["variants"], json!([]));
    assert_eq!(
        app.call(
            "GET",
            &OUTCOMES.replace("checkout", "nope"),
            Some(&viewer),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let reply = app
        .call(
            "GET",
            &format!("{OUTCOMES}?from=5&to=5"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

async fn every_bad_outcome_field_is_named_and_nothing_of_the_batch_is_stored(app: App) {
    let minute = this_minute();
    let counts = json!([{"minute": minute, "flag": "checkout", "variant": "on", "count": 1}]);
    let good = json!({"minute": minute, "flag": "checkout", "variant": "on", "exposures": 1,
                      "requests": 1, "errors": 0, "latency": sketch(10.0, 1)});
    let reply = app
        .post(
            json!({"batchId": "bad", "evaluations": counts, "outcomes": [
                good,
                {"minute": minute + 3600, "flag": "checkout", "variant": "on", "requests": 1,
                 "errors": 2},
                {"minute": minute, "flag": "checkout", "variant": "on", "requests": 1,
                 "latency": {"zero": 0, "bins": [[99999, 1]]}},
                {"minute": minute, "flag": "checkout", "variant": "on", "requests": 1,
                 "latency": sketch(10.0, 2)},
                {"minute": minute, "flag": "checkout", "variant": "on",
                 "metrics": {"no spaces": {"count": 1, "sum": 1.0, "sumOfSquares": 1.0},
                             "revenue": {"count": 1, "sum": 1.0}}},
                {"minute": minute, "flag": "checkout"},
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(
        reply.problem_paths(),
        [
            "/outcomes/1/minute",
            "/outcomes/1/errors",
            "/outcomes/2/latency",
            "/outcomes/3/latency",
            "/outcomes/4/metrics/no spaces",
            "/outcomes/4/metrics/revenue/sumOfSquares",
            "/outcomes/5/variant",
        ]
    );
    // More outcome rows than a batch may carry.
    let rows: Vec<Value> = (0..=anchor_server::telemetry::MAX_OUTCOME_ROWS)
        .map(|_| good.clone())
        .collect();
    let reply = app
        .post(json!({"batchId": "huge", "evaluations": [], "outcomes": rows}))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.problem_paths(), ["/outcomes"]);
    // Neither the counts nor the outcomes of the refused batches were stored, and the id is
    // free for the corrected batch.
    let reply = app.call("GET", EVALUATIONS, Some(&app.admin), None).await;
    assert_eq!(reply.body["evaluations"], 0, "{}", reply.body);
    let reply = app.call("GET", OUTCOMES, Some(&app.admin), None).await;
    assert_eq!(reply.body["variants"], json!([]), "{}", reply.body);
    let reply = app
        .post(json!({"batchId": "bad", "evaluations": counts, "outcomes": [good]}))
        .await;
    assert_eq!(reply.body, json!({"accepted": 1, "outcomes": 1}));
}

async fn compacted_hours_keep_their_totals_in_the_read_endpoints(app: App) {
    // Two whole hours three days back (inside the week in which late telemetry is accepted),
    // a minute of each variant every five minutes.
    let start = (this_minute() - 3 * 86_400) / 3_600 * 3_600;
    let minutes: Vec<i64> = (0..24).map(|i| start + 300 * i).collect();
    for (i, &minute) in minutes.iter().enumerate() {
        let n = i as u64 + 1;
        let reply = app
            .post(json!({
                "batchId": format!("old-{i}"),
                "evaluations": [
                    {"minute": minute, "flag": "checkout", "variant": "on", "count": n},
                    {"minute": minute, "flag": "checkout", "variant": null, "count": 1}],
                "outcomes": [
                    {"minute": minute, "flag": "checkout", "variant": "on", "exposures": n,
                     "requests": 10 * n, "errors": n, "latency": sketch(10.0 * n as f64, 10 * n),
                     "metrics": {"cpu_ms": {"count": n, "sum": 2.0 * n as f64,
                                            "sumOfSquares": 4.0 * n as f64}}},
                    {"minute": minute, "flag": "checkout", "variant": "off", "exposures": 1,
                     "requests": 5, "errors": 0, "latency": sketch(50.0, 5)}]
            }))
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    let range = format!("?from={start}&to={}", start + 2 * 3_600);
    let read = |path: &'static str| {
        let uri = format!("{path}{range}");
        let app = &app;
        async move {
            let reply = app.call("GET", &uri, Some(&app.admin), None).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            reply.body
        }
    };
    let evaluations = read(EVALUATIONS).await;
    let outcomes = read(OUTCOMES).await;
    assert_eq!(evaluations["minutes"].as_array().unwrap().len(), 24);
    assert_eq!(
        evaluations["evaluations"],
        json!((1..=24).sum::<u64>() + 24)
    );

    // Compacted as if minutes were kept a day: each hour becomes one row at its start.
    let report = app
        .state
        .store
        .compact_telemetry(&anchor_store::TelemetryRetention {
            minute_secs: 86_400,
            keep_secs: 90 * 86_400,
            batch_ids_ms: 30 * 86_400_000,
            rows_per_transaction: 5,
        })
        .await
        .unwrap();
    assert_eq!(report.minutes_merged, 24 * 4, "{report:?}");
    let compacted = read(EVALUATIONS).await;
    assert_eq!(compacted["totals"], evaluations["totals"]);
    assert_eq!(compacted["evaluations"], evaluations["evaluations"]);
    let hours: Vec<&Value> = compacted["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["minute"])
        .collect();
    assert_eq!(hours, [&json!(start), &json!(start + 3_600)]);
    // Rates, quantiles and means over the range are those of the minutes.
    let compacted = read(OUTCOMES).await;
    assert_eq!(compacted["variants"], outcomes["variants"]);
    assert_eq!(compacted["minutes"].as_array().unwrap().len(), 2);
    // A retried batch of a compacted hour is still recognised.
    let reply = app
        .post(json!({"batchId": "old-0", "evaluations": [
            {"minute": start, "flag": "checkout", "variant": "on", "count": 1}]}))
        .await;
    assert_eq!(reply.body, json!({"accepted": 0, "duplicate": true}));
}

/// The `lifecycle` of each environment of `checkout`, by environment, from the flag and from
/// the list (which must agree).
async fn lifecycles(app: &App) -> Value {
    let flag = app
        .call(
            "GET",
            "/api/v1/projects/default/flags/checkout",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(flag.status, StatusCode::OK, "{}", flag.body);
    let list = app
        .call(
            "GET",
            "/api/v1/projects/default/flags?archived=true",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(
        list.body["items"][0], flag.body,
        "the list and the flag agree"
    );
    let by_env: serde_json::Map<String, Value> = flag.body["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["environment"].as_str().unwrap().to_string(),
                e["lifecycle"].clone(),
            )
        })
        .collect();
    json!({"createdAt": flag.body["createdAt"], "status": flag.body["status"], "environments": by_env})
}

async fn the_flag_api_reports_each_environments_lifecycle_from_telemetry_and_revisions(app: App) {
    // Just created: disabled everywhere (one variant, since its creation), never evaluated.
    let seen = lifecycles(&app).await;
    let created = seen["createdAt"].as_i64().unwrap();
    for env in ["development", "staging", "production"] {
        let lifecycle = &seen["environments"][env];
        assert_eq!(lifecycle["status"], "new", "{env}: {seen}");
        assert_eq!(lifecycle["lastEvaluatedAt"], Value::Null);
        assert_eq!(seen["status"], "new", "over all environments: {seen}");
        let since = lifecycle["servingOneVariantSince"].as_i64().unwrap();
        assert!(
            (created..created + 60_000).contains(&since),
            "{since} vs {created}"
        );
    }
    // Evaluated in production: no longer new; still one variant (off) to everyone.
    let minute = this_minute();
    let reply = app
        .post(json!({
            "batchId": "lifecycle-1",
            "evaluations": [
                {"minute": minute - 120, "flag": "checkout", "variant": "off", "count": 4},
                {"minute": minute - 60, "flag": "checkout", "variant": "off", "count": 1},
            ]
        }))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let seen = lifecycles(&app).await;
    let production = &seen["environments"]["production"];
    assert_eq!(production["status"], "rolledOut", "{seen}");
    assert_eq!(production["lastEvaluatedAt"], (minute - 60) * 1000);
    assert_eq!(seen["environments"]["development"]["status"], "new");
    // Over all environments: evaluated somewhere, and one variant to everyone everywhere.
    assert_eq!(seen["status"], "rolledOut", "{seen}");
    // Half of production gets `on`: active, serving more than one variant.
    let config = "/api/v1/projects/default/environments/production/flags/checkout";
    let split = json!({
        "enabled": true, "offVariant": "off",
        "defaultServe": {"rollout": {"variants": [
            {"variant": "on", "weight": 50000}, {"variant": "off", "weight": 50000}]}}
    });
    let reply = app.call("PUT", config, Some(&app.admin), Some(split)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let seen = lifecycles(&app).await;
    let production = &seen["environments"]["production"];
    assert_eq!(production["status"], "active", "{seen}");
    assert_eq!(production["servingOneVariantSince"], Value::Null);
    assert_eq!(seen["status"], "active", "{seen}");
    // Everyone gets `on` (a rollout of one weighted variant), since that revision.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let all_on = json!({
        "enabled": true, "offVariant": "off",
        "defaultServe": {"rollout": {"variants": [
            {"variant": "on", "weight": 100000}, {"variant": "off", "weight": 0}]}}
    });
    let reply = app
        .call("PUT", config, Some(&app.admin), Some(all_on))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let seen = lifecycles(&app).await;
    let production = &seen["environments"]["production"];
    assert_eq!(production["status"], "rolledOut", "{seen}");
    assert!(production["servingOneVariantSince"].as_i64().unwrap() >= before);
    // A temporary flag past its cleanup date is stale everywhere.
    let definition = json!({
        "key": "checkout", "kind": "boolean", "cleanupDate": "2020-01-31",
        "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]
    });
    let reply = app
        .call(
            "PUT",
            "/api/v1/projects/default/flags/checkout",
            Some(&app.admin),
            Some(definition),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let seen = lifecycles(&app).await;
    for env in ["development", "staging", "production"] {
        assert_eq!(
            seen["environments"][env]["status"], "stale",
            "{env}: {seen}"
        );
    }
    assert_eq!(seen["status"], "stale", "{seen}");
}
