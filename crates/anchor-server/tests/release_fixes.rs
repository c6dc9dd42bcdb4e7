//! Regression tests of release defects, through the real HTTP surface on both backends:
//! a release that ends without changing its flag stops being watched by the environment's SDKs
//! at once (download and stream), and rolling back a release that never served the treatment
//! leaves the flag as it was, even with `rollbackDisablesFlag`.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Server, call, on_every_backend};

on_every_backend!(
    an_aborted_release_leaves_watched_flags_at_once_in_the_download_and_the_stream,
    rolling_back_a_release_waiting_for_its_first_approval_leaves_the_flag_as_it_was,
);

const WAIT: Duration = Duration::from_secs(5);

/// An environment `env` (requiring approval or not) with the editor `ed`, the boolean flag
/// `checkout` on there serving `off`, and the template `kill`: 1% → 5% behind an approval gate
/// → 100%, hour-long stages (the controller never advances during a test), and a rollback that
/// turns the flag off.
async fn setup(server: &Server, env: &str, requires_approval: bool) {
    let (status, body) = call(
        server,
        "admin",
        Method::POST,
        "/api/v1/projects/default/environments",
        json!({"key": env, "name": env, "requiresApproval": requires_approval}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    server.api_create_flag("checkout", "Checkout").await;
    let (status, body) = call(
        server,
        "admin",
        Method::PUT,
        &format!("/api/v1/projects/default/environments/{env}/flags/checkout"),
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
               "breakGlass": requires_approval, "comment": "on, serving off"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.add_user("ed", "editor").await;
    let (status, body) = call(
        server,
        "admin",
        Method::PUT,
        "/api/v1/projects/default/release-templates/kill",
        json!({"name": "kill switch", "template": {
            "stages": [
                {"percentage": 1.0, "dwellMs": 3_600_000},
                {"percentage": 5.0, "dwellMs": 3_600_000, "approval": true},
                {"percentage": 100.0, "dwellMs": 3_600_000}
            ],
            "guardrails": {"guardrails": [
                {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.5}
            ]},
            "rollbackDisablesFlag": true
        }}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Starts a release of `checkout` in `env` from `kill` as `user`; its view.
async fn start_release(server: &Server, user: &str, env: &str) -> Value {
    let (status, body) = call(
        server,
        user,
        Method::POST,
        &format!("/api/v1/projects/default/environments/{env}/flags/checkout/releases"),
        json!({"template": "kill", "control": "off", "treatment": "on"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Gives `command` to release `id` as `user`; the release's view.
async fn steer(server: &Server, user: &str, id: &str, command: &str) -> Value {
    let (status, body) = call(
        server,
        user,
        Method::POST,
        &format!("/api/v1/projects/default/releases/{id}/commands"),
        json!({ "command": command }),
    )
    .await;
    assert_eq!(status, 200, "{command}: {body}");
    body
}

fn state_of(release: &Value) -> &str {
    release["state"]["state"].as_str().unwrap_or("?")
}

/// The flag's configuration in `env`, as the management API shows it (with its version).
async fn config_of(server: &Server, env: &str) -> Value {
    let (status, config) = call(
        server,
        "admin",
        Method::GET,
        &format!("/api/v1/projects/default/environments/{env}/flags/checkout"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{config}");
    config
}

/// A new server SDK key of `env`.
async fn server_key(server: &Server, env: &str) -> String {
    let (status, body) = call(
        server,
        "admin",
        Method::POST,
        &format!("/api/v1/projects/default/environments/{env}/keys"),
        json!({"kind": "server"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["key"].as_str().unwrap().to_string()
}

/// `GET /sdk/v1/config` with `key`, sending `If-None-Match: etag` when given: the status, the
/// ETag and the body.
async fn download(server: &Server, key: &str, etag: Option<&str>) -> (u16, String, Value) {
    let mut request = server
        .http
        .get(format!("{}/sdk/v1/config", server.url))
        .header("x-api-key", key);
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    let text = response.text().await.unwrap();
    (
        status,
        etag,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// `GET /sdk/v1/stream` with `key`, read as an SSE client reads it.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(server: &Server, key: &str) -> Events {
        let response = server
            .http
            .get(format!("{}/sdk/v1/stream", server.url))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's type and data (heartbeat comments skipped); panics after [`WAIT`].
    async fn next(&mut self) -> (String, Value) {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = "message".to_string();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if !data.is_empty() {
                    return (event, serde_json::from_str(&data.join("\n")).unwrap());
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("no event within the wait")
                .unwrap()
                .expect("the stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn an_aborted_release_leaves_watched_flags_at_once_in_the_download_and_the_stream(
    server: Server,
) {
    setup(&server, "live", false).await;
    let key = server_key(&server, "live").await;
    let started = start_release(&server, "admin", "live").await;
    assert_eq!(state_of(&started), "running", "{started}");
    let (status, watched_etag, config) = download(&server, &key, None).await;
    assert_eq!(status, 200);
    assert_eq!(config["watchedFlags"], json!(["checkout"]), "{config}");
    let mut stream = Events::open(&server, &key).await;
    let (event, whole) = stream.next().await;
    assert_eq!(event, "config");
    assert_eq!(whole["watchedFlags"], json!(["checkout"]));
    let before = config_of(&server, "live").await;

    let aborted = steer(&server, "ed", started["id"].as_str().unwrap(), "abort").await;
    assert_eq!(state_of(&aborted), "aborted");
    // The stream hears of it at once, in a patch that changes no flag.
    let (event, patch) = stream.next().await;
    assert_eq!(event, "patch", "{patch}");
    assert_eq!(patch["watchedFlags"], json!([]), "{patch}");
    assert_eq!(patch["previousRevision"], whole["revision"]);
    assert_eq!(patch["flags"], json!([]), "{patch}");
    // A polling SDK holding the old revision downloads the new one, not a 304.
    let (status, etag, config) = download(&server, &key, Some(&watched_etag)).await;
    assert_eq!(status, 200);
    assert_ne!(etag, watched_etag);
    assert_eq!(config["watchedFlags"], json!([]), "{config}");
    assert_eq!(config["revision"], patch["revision"]);
    // An abort leaves the share where it was.
    assert_eq!(config_of(&server, "live").await, before);
}

async fn rolling_back_a_release_waiting_for_its_first_approval_leaves_the_flag_as_it_was(
    server: Server,
) {
    setup(&server, "prod", true).await;
    let key = server_key(&server, "prod").await;
    let before = config_of(&server, "prod").await;
    let waiting = start_release(&server, "ed", "prod").await;
    assert_eq!(state_of(&waiting), "waitingForApproval", "{waiting}");
    assert_eq!(waiting["state"]["stage"], 0);

    let rolled = steer(&server, "ed", waiting["id"].as_str().unwrap(), "rollBack").await;
    assert_eq!(state_of(&rolled), "rolledBack", "{rolled}");
    assert!(
        rolled["decisions"]
            .to_string()
            .contains("rolled back by a person before it served the treatment"),
        "{rolled}"
    );
    // No serving change at all: not the share, not the kill switch, not even a new version.
    assert_eq!(config_of(&server, "prod").await, before);
    assert!(server.enabled_in("checkout", "prod").await);
    let (_, _, config) = download(&server, &key, None).await;
    assert_eq!(config["watchedFlags"], json!([]), "{config}");

    // Once the treatment was served, a rollback at a later gate takes it away and turns the
    // flag off, as before.
    let next = start_release(&server, "ed", "prod").await;
    let id = next["id"].as_str().unwrap();
    let running = steer(&server, "admin", id, "approve").await;
    assert_eq!(running["percentage"], 1.0, "{running}");
    let gated = steer(&server, "admin", id, "skip").await;
    assert_eq!(state_of(&gated), "waitingForApproval", "{gated}");
    assert_eq!(gated["state"]["stage"], 1);
    let rolled = steer(&server, "ed", id, "rollBack").await;
    assert_eq!(state_of(&rolled), "rolledBack", "{rolled}");
    assert_eq!(rolled["percentage"], 0.0, "{rolled}");
    assert!(!server.enabled_in("checkout", "prod").await);
}
