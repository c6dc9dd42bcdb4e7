//! Changing and deleting environments through the management API, on a real server: renames,
//! reordering, approval turned on and off, who may do it, and what a deletion takes with it
//! (configurations, SDK keys, streams) and what it leaves (the other environments, the audit
//! log).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

mod support;

use support::{Server, call, on_every_backend};

on_every_backend!(
    an_admin_renames_and_reorders_environments_but_never_changes_a_key,
    turning_approval_on_makes_an_editors_change_a_request_and_turning_it_off_needs_a_comment,
    only_project_admins_change_or_delete_environments,
    an_environment_with_a_release_under_way_or_alone_in_its_project_is_not_deleted,
    a_deleted_environment_takes_its_configurations_keys_and_streams_and_leaves_the_others,
);

const ENVIRONMENTS: &str = "/api/v1/projects/default/environments";

fn environment(key: &str) -> String {
    format!("{ENVIRONMENTS}/{key}")
}

/// The JSON pointers a 422 names.
fn paths(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {problem}"))
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

/// The project's environments as `(key, position)`, in display order.
async fn order(server: &Server) -> Vec<(String, i64)> {
    let (status, list) = server.api(Method::GET, ENVIRONMENTS, Value::Null).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_string(),
                e["position"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn order_of(keys: &[&str]) -> Vec<(String, i64)> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), i as i64))
        .collect()
}

/// The project's audit entries with this action, newest first.
async fn audited(server: &Server, action: &str) -> Vec<Value> {
    let (status, entries) = server
        .api(
            Method::GET,
            &format!("/api/v1/projects/default/audit?action={action}"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{entries}");
    entries.as_array().unwrap().clone()
}

/// Puts `checkout` on (serving `on`) in `env` as `user`; the status.
async fn turn_on(server: &Server, user: &str, env: &str) -> (u16, Value) {
    call(
        server,
        user,
        Method::PUT,
        &format!("{}/flags/checkout", environment(env)),
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"},
               "comment": "on"}),
    )
    .await
}

async fn an_admin_renames_and_reorders_environments_but_never_changes_a_key(server: Server) {
    let (status, staging) = server
        .api(
            Method::PATCH,
            &environment("staging"),
            json!({"name": "  QA  ", "position": 0}),
        )
        .await;
    assert_eq!(status, 200, "{staging}");
    assert_eq!(staging["key"], "staging");
    assert_eq!(staging["name"], "QA");
    assert_eq!(staging["position"], 0);
    assert_eq!(
        order(&server).await,
        order_of(&["staging", "development", "production"])
    );
    let (status, body) = server
        .api(
            Method::PATCH,
            &environment("staging"),
            json!({"position": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        order(&server).await,
        order_of(&["development", "production", "staging"])
    );
    let updates = audited(&server, "environment.updated").await;
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert_eq!(updates[1]["resourceKey"], "staging");

    // Bad values, each named; every problem at once; nothing changes.
    let cases = [
        (json!({"key": "qa"}), vec!["/key"]),
        (json!({"name": " "}), vec!["/name"]),
        (json!({"position": 3}), vec!["/position"]),
        (
            json!({"name": "", "position": -1}),
            vec!["/name", "/position"],
        ),
    ];
    for (body, expected) in cases {
        let (status, problem) = server
            .api(Method::PATCH, &environment("staging"), body.clone())
            .await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(paths(&problem), expected, "{body}");
    }
    let (status, problem) = server
        .api(
            Method::PATCH,
            &environment("staging"),
            json!({"colour": "red"}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("colour"),
        "{problem}"
    );
    let (status, _) = server
        .api(Method::PATCH, &environment("nowhere"), json!({"name": "x"}))
        .await;
    assert_eq!(status, 404);
    // The environment's own key is accepted, since it changes nothing.
    let (status, body) = server
        .api(
            Method::PATCH,
            &environment("staging"),
            json!({"key": "staging"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        order(&server).await,
        order_of(&["development", "production", "staging"])
    );
    assert_eq!(audited(&server, "environment.updated").await.len(), 2);
}

async fn turning_approval_on_makes_an_editors_change_a_request_and_turning_it_off_needs_a_comment(
    server: Server,
) {
    server.api_create_flag("checkout", "Checkout").await;
    server.add_user("ed", "editor").await;
    let (status, body) = server
        .api(
            Method::PATCH,
            &environment("production"),
            json!({"requiresApproval": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["requiresApproval"], true);
    let (status, request) = turn_on(&server, "ed", "production").await;
    assert_eq!(status, 202, "now a change request: {request}");
    assert!(!server.enabled_in("checkout", "production").await);

    // Lifting approval needs a reason.
    for comment in [Value::Null, json!("   ")] {
        let (status, problem) = server
            .api(
                Method::PATCH,
                &environment("production"),
                json!({"requiresApproval": false, "comment": comment}),
            )
            .await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(paths(&problem), ["/comment"]);
    }
    let (status, body) = server
        .api(
            Method::PATCH,
            &environment("production"),
            json!({"requiresApproval": false, "comment": "the release train gates production now"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["requiresApproval"], false);
    let updates = audited(&server, "environment.updated").await;
    assert_eq!(
        updates[0]["comment"], "the release train gates production now",
        "{updates:?}"
    );
    assert!(
        updates[0]["diff"].to_string().contains("/requiresApproval"),
        "{updates:?}"
    );
    let (status, body) = turn_on(&server, "ed", "production").await;
    assert_eq!(status, 200, "direct again: {body}");
    assert!(server.enabled_in("checkout", "production").await);
}

async fn only_project_admins_change_or_delete_environments(server: Server) {
    server.add_user("ed", "editor").await;
    server.add_user("vera", "viewer").await;
    for user in ["ed", "vera"] {
        for body in [json!({"name": "Mine"}), json!({"name": ""})] {
            let (status, problem) =
                call(&server, user, Method::PATCH, &environment("staging"), body).await;
            assert_eq!(status, 403, "{user}: {problem}");
        }
        let (status, problem) = call(
            &server,
            user,
            Method::DELETE,
            &environment("staging"),
            Value::Null,
        )
        .await;
        assert_eq!(status, 403, "{user}: {problem}");
    }
    assert_eq!(
        order(&server).await,
        order_of(&["development", "staging", "production"])
    );
}

async fn an_environment_with_a_release_under_way_or_alone_in_its_project_is_not_deleted(
    server: Server,
) {
    server.api_create_flag("checkout", "Checkout").await;
    let (status, body) = turn_on(&server, "admin", "staging").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .api(
            Method::PUT,
            "/api/v1/projects/default/release-templates/slow",
            json!({"name": "Slow", "template": {
                "stages": [{"percentage": 1.0, "dwellMs": 3_600_000},
                           {"percentage": 100.0, "dwellMs": 3_600_000}],
                "guardrails": {"guardrails": []}
            }}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .api(
            Method::POST,
            &format!("{}/flags/checkout/releases", environment("staging")),
            json!({"template": "slow", "control": "off", "treatment": "on"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let (status, problem) = call(
        &server,
        "admin",
        Method::DELETE,
        &environment("staging"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    let why = problem["detail"].as_str().unwrap();
    assert!(why.contains("release") && why.contains("checkout"), "{why}");
    assert!(order(&server).await.iter().any(|(key, _)| key == "staging"));

    for key in ["development", "production"] {
        let (status, body) = server
            .api(Method::DELETE, &environment(key), Value::Null)
            .await;
        assert_eq!(status, 204, "{key}: {body}");
    }
    let (status, problem) = call(
        &server,
        "admin",
        Method::DELETE,
        &environment("staging"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("only environment"),
        "{problem}"
    );
    assert_eq!(order(&server).await, order_of(&["staging"]));
    let (status, _) = server
        .api(Method::DELETE, &environment("nowhere"), Value::Null)
        .await;
    assert_eq!(status, 404);
}

/// A new SDK key of `kind` for `env`; its secret.
async fn sdk_key(server: &Server, env: &str, kind: &str) -> String {
    let (status, body) = server
        .api(
            Method::POST,
            &format!("{}/keys", environment(env)),
            json!({"kind": kind}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["key"].as_str().unwrap().to_string()
}

/// OFREP's evaluation of `checkout` with `key`: the status and the body.
async fn evaluate(server: &Server, key: &str) -> (u16, Value) {
    let response = server
        .http
        .post(format!("{}/ofrep/v1/evaluate/flags/checkout", server.url))
        .header("x-api-key", key)
        .json(&json!({"context": {"targetingKey": "user-1"}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn a_deleted_environment_takes_its_configurations_keys_and_streams_and_leaves_the_others(
    server: Server,
) {
    server.api_create_flag("checkout", "Checkout").await;
    for env in ["staging", "production"] {
        let (status, body) = turn_on(&server, "admin", env).await;
        assert_eq!(status, 200, "{body}");
    }
    let staging_key = sdk_key(&server, "staging", "server").await;
    let production_key = sdk_key(&server, "production", "server").await;
    assert_eq!(evaluate(&server, &staging_key).await.0, 200);
    let (_, production_before) = server
        .api(
            Method::GET,
            &format!("{}/flags/checkout", environment("production")),
            Value::Null,
        )
        .await;
    let mut stream = server
        .http
        .get(format!("{}/sdk/v1/stream", server.url))
        .header("x-api-key", &staging_key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("config"));

    let (status, body) = server
        .api(Method::DELETE, &environment("staging"), Value::Null)
        .await;
    assert_eq!(status, 204, "{body}");

    // The open stream ends (heartbeats may come first), and the key no longer works.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream of a deleted environment ends");
    assert_eq!(evaluate(&server, &staging_key).await.0, 401);
    let (status, _) = server
        .api(
            Method::GET,
            &format!("{}/flags/checkout", environment("staging")),
            Value::Null,
        )
        .await;
    assert_eq!(status, 404);
    let (_, flag) = server
        .api(
            Method::GET,
            "/api/v1/projects/default/flags/checkout",
            Value::Null,
        )
        .await;
    let left: Vec<&str> = flag["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["environment"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["development", "production"]);
    assert_eq!(
        order(&server).await,
        order_of(&["development", "production"])
    );

    // The others are as they were.
    let (status, evaluated) = evaluate(&server, &production_key).await;
    assert_eq!(status, 200, "{evaluated}");
    assert_eq!(evaluated["value"], true);
    let (_, production_after) = server
        .api(
            Method::GET,
            &format!("{}/flags/checkout", environment("production")),
            Value::Null,
        )
        .await;
    assert_eq!(production_after, production_before);

    let deleted = audited(&server, "environment.deleted").await;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["resourceKey"], "staging");
    assert_eq!(deleted[0]["actor"]["id"], "admin");
}

/// Two servers sharing one PostgreSQL database: a deletion through one ends the other's streams
/// of that environment and its SDK keys stop working there too, without waiting for a cache to
/// expire. Skipped without `ANCHOR_TEST_POSTGRES_URL` (SQLite has one process).
#[tokio::test]
#[allow(clippy::print_stderr, reason = "a skipped test says why")]
async fn a_server_sharing_the_store_ends_a_deleted_environments_streams_and_keys() {
    let Ok(url) = std::env::var("ANCHOR_TEST_POSTGRES_URL") else {
        eprintln!("ANCHOR_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    let schema = format!("anchor_test_{}", uuid::Uuid::new_v4().simple());
    let here = Server::start(Some((url.clone(), schema.clone()))).await;
    let there = Server::start(Some((url.clone(), schema.clone()))).await;
    here.api_create_flag("checkout", "Checkout").await;
    let staging_key = sdk_key(&here, "staging", "server").await;
    // The other server has seen the key (and cached it) and follows the environment.
    assert_eq!(evaluate(&there, &staging_key).await.0, 200);
    let mut stream = there
        .http
        .get(format!("{}/sdk/v1/stream", there.url))
        .header("x-api-key", &staging_key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let (status, body) = here
        .api(Method::DELETE, &environment("staging"), Value::Null)
        .await;
    assert_eq!(status, 204, "{body}");

    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the other server ends the stream");
    assert_eq!(evaluate(&there, &staging_key).await.0, 401);
    drop((here, there));
    support::drop_schema(&url, &schema).await;
}
