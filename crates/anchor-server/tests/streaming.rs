//! Streaming through the real HTTP surface: the server on a port, SDK streams read as a client
//! reads them. `/sdk/v1/stream` sends the whole configuration on connect, then a patch per
//! change, resumes from `Last-Event-ID` with the patches missed, and ends the stream of a reader
//! that fell too far behind; OFREP's bulk answer names `/ofrep/v1/events`, which says
//! `refetchEvaluation` after every change.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anchor_server::{AppState, Secret, bootstrap, launch, router};
use anchor_store::{SqlStore, Store};
use serde_json::{Value, json};
use support::{PASSWORD, on_every_backend};

const PRODUCTION: &str = "/api/v1/projects/default/environments/production";
const WAIT: Duration = Duration::from_secs(5);
/// How long a stream must stay silent to count as sending nothing.
const QUIET: Duration = Duration::from_millis(300);
/// The patch history of the test servers: small, so a few changes outrun it.
const HISTORY: usize = 4;

on_every_backend!(
    start: Server::start;
    a_change_to_one_flag_sends_a_patch_with_only_that_flag,
    archiving_a_flag_lists_it_in_deleted_flags_and_restoring_sends_it_whole,
    segment_changes_send_the_segment_whole_and_deletions_by_key,
    resuming_from_a_recent_revision_sends_the_missed_patches_in_order,
    resuming_from_an_unknown_or_forgotten_revision_sends_the_whole_configuration,
    a_reader_that_falls_more_than_the_history_behind_is_disconnected,
    the_bulk_answer_names_an_event_stream_that_says_refetch_after_every_change,
    a_refetch_naming_a_newer_revision_catches_up_a_server_that_missed_the_change,
    both_kinds_of_stream_end_when_the_server_shuts_down,
);

struct Server {
    base: String,
    state: AppState,
    http: reqwest::Client,
    admin: String,
    server_key: String,
    client_key: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A bootstrapped store: SQLite in a temporary directory, or PostgreSQL `(url, schema)`.
async fn store(postgres: Option<(String, String)>) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = match postgres {
        Some((url, schema)) => {
            Arc::new(SqlStore::open_postgres(&url, Some(&schema)).await.unwrap())
        }
        None => {
            let dir = std::env::temp_dir()
                .join(format!("anchor-streaming-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap())
        }
    };
    bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
        .await
        .unwrap();
    store
}

impl Server {
    /// A server on a port with two configured flags (`new-checkout`, `dark-mode`), a server
    /// key and a client key for production, and a history of [`HISTORY`] patches.
    async fn start(postgres: Option<(String, String)>) -> Server {
        let state = AppState::new(store(postgres).await)
            .unwrap()
            .with_cors_origins(vec!["https://app.example.com".into()])
            .with_stream_history(HISTORY);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(launch(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let reply = http
            .post(format!("{base}/api/v1/tokens"))
            .basic_auth("admin", Some(PASSWORD))
            .header("content-type", "application/json")
            .body(json!({"name": "tests"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201);
        let token: Value = serde_json::from_slice(&reply.bytes().await.unwrap()).unwrap();
        let mut server = Server {
            base,
            state,
            http,
            admin: format!("Bearer {}", token["token"].as_str().unwrap()),
            server_key: String::new(),
            client_key: String::new(),
            stop: Some(stop),
        };
        for flag in ["new-checkout", "dark-mode"] {
            server
                .call(
                    "POST",
                    "/api/v1/projects/default/flags",
                    json!({"key": flag, "kind": "boolean",
                        "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]}),
                )
                .await;
            server.configure(flag, false).await;
        }
        server.server_key = server.new_key("server").await;
        server.client_key = server.new_key("client").await;
        server
    }

    /// A management API call as the admin; panics unless it succeeds.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call_with(method, path, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Value {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("authorization", &self.admin);
        if !body.is_null() {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let reply = request.send().await.unwrap();
        let status = reply.status();
        let bytes = reply.bytes().await.unwrap();
        assert!(
            status.is_success(),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    async fn configure(&self, flag: &str, enabled: bool) {
        self.call(
            "PUT",
            &format!("{PRODUCTION}/flags/{flag}"),
            json!({"enabled": enabled, "offVariant": "off", "defaultServe": {"variant": "on"}}),
        )
        .await;
    }

    async fn new_key(&self, kind: &str) -> String {
        self.call("POST", &format!("{PRODUCTION}/keys"), json!({"kind": kind}))
            .await["key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn revision(&self) -> u64 {
        self.state
            .snapshots
            .get("default", "production")
            .unwrap()
            .revision
    }

    /// Opens `/sdk/v1/stream` with the server key, resuming from `last` if given.
    async fn stream(&self, last: Option<&str>) -> Events {
        let mut request = self
            .http
            .get(format!("{}/sdk/v1/stream", self.base))
            .header("x-api-key", &self.server_key);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        Events::new(response)
    }

    /// Bulk OFREP evaluation with `key`, `query` appended to the path.
    async fn bulk(&self, key: &str, query: &str) -> (reqwest::StatusCode, Value) {
        let reply = self
            .http
            .post(format!("{}/ofrep/v1/evaluate/flags{query}", self.base))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(json!({"context": {"targetingKey": "user-1"}}).to_string())
            .send()
            .await
            .unwrap();
        let status = reply.status();
        (
            status,
            serde_json::from_slice(&reply.bytes().await.unwrap()).unwrap_or(Value::Null),
        )
    }
}

/// One Server-Sent Event.
#[derive(Debug)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

impl Sse {
    fn revision(&self) -> u64 {
        self.id.as_deref().unwrap().parse().unwrap()
    }

    fn keys(&self, field: &str) -> Vec<String> {
        self.data[field]
            .as_array()
            .unwrap_or_else(|| panic!("{field} in {:?}", self.data))
            .iter()
            .map(|item| {
                item.as_str()
                    .or_else(|| item["flag"]["key"].as_str())
                    .or_else(|| item["key"].as_str())
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

#[derive(Debug)]
enum Next {
    Event(Sse),
    /// The server ended the stream.
    End,
    /// Nothing within the wait.
    Quiet,
}

/// A stream read as an SSE client reads it: heartbeat comments skipped, events whole.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Events {
        Events {
            response,
            buffer: String::new(),
        }
    }

    async fn next(&mut self, wait: Duration) -> Next {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (None, None, Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Next::Event(Sse {
                    event: event.unwrap_or_else(|| "message".into()),
                    id,
                    data: serde_json::from_str(&data.join("\n")).unwrap(),
                });
            }
            match tokio::time::timeout(wait, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(_) => return Next::End,
                Err(_) => return Next::Quiet,
            }
        }
    }

    async fn event(&mut self) -> Sse {
        match self.next(WAIT).await {
            Next::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

async fn a_change_to_one_flag_sends_a_patch_with_only_that_flag(server: Server) {
    let mut stream = server.stream(None).await;
    let config = stream.event().await;
    assert_eq!(config.event, "config");
    assert_eq!(config.revision(), server.revision());
    assert_eq!(config.data["revision"], config.revision());
    assert_eq!(config.keys("flags"), ["dark-mode", "new-checkout"]);

    server.configure("new-checkout", true).await;
    let patch = stream.event().await;
    assert_eq!(patch.event, "patch");
    assert_eq!(patch.revision(), server.revision());
    assert_eq!(patch.data["revision"], patch.revision());
    assert_eq!(patch.data["previousRevision"], config.revision());
    assert_eq!(patch.keys("flags"), ["new-checkout"]);
    assert_eq!(patch.data["flags"][0]["config"]["enabled"], true);
    assert_eq!(patch.data["flags"][0]["flag"]["kind"], "boolean");
    for field in ["deletedFlags", "segments", "deletedSegments"] {
        assert!(patch.keys(field).is_empty(), "{field}: {:?}", patch.data);
    }
}

async fn archiving_a_flag_lists_it_in_deleted_flags_and_restoring_sends_it_whole(server: Server) {
    let mut stream = server.stream(None).await;
    let config = stream.event().await;

    server
        .call(
            "POST",
            "/api/v1/projects/default/flags/dark-mode/archive",
            Value::Null,
        )
        .await;
    let archived = stream.event().await;
    assert_eq!(archived.event, "patch");
    assert_eq!(archived.data["previousRevision"], config.revision());
    assert_eq!(archived.keys("deletedFlags"), ["dark-mode"]);
    assert!(archived.keys("flags").is_empty());

    server
        .call(
            "POST",
            "/api/v1/projects/default/flags/dark-mode/restore",
            Value::Null,
        )
        .await;
    let restored = stream.event().await;
    assert_eq!(restored.data["previousRevision"], archived.revision());
    assert_eq!(restored.keys("flags"), ["dark-mode"]);
    assert!(restored.keys("deletedFlags").is_empty());
}

async fn segment_changes_send_the_segment_whole_and_deletions_by_key(server: Server) {
    let mut stream = server.stream(None).await;
    stream.event().await;
    let segments = format!("{PRODUCTION}/segments");

    server
        .call(
            "POST",
            &segments,
            json!({"key": "beta", "included": ["user-1"]}),
        )
        .await;
    let created = stream.event().await;
    assert_eq!(created.keys("segments"), ["beta"]);
    assert_eq!(created.data["segments"][0]["included"], json!(["user-1"]));
    assert!(created.keys("flags").is_empty());

    server
        .call_with(
            "PUT",
            &format!("{segments}/beta"),
            json!({"key": "beta", "included": ["user-1", "user-2"]}),
            &[("if-match", "\"1\"")],
        )
        .await;
    let changed = stream.event().await;
    assert_eq!(changed.data["previousRevision"], created.revision());
    assert_eq!(changed.keys("segments"), ["beta"]);
    assert_eq!(
        changed.data["segments"][0]["included"],
        json!(["user-1", "user-2"])
    );

    server
        .call("DELETE", &format!("{segments}/beta"), Value::Null)
        .await;
    let deleted = stream.event().await;
    assert_eq!(deleted.keys("deletedSegments"), ["beta"]);
    assert!(deleted.keys("segments").is_empty());
}

async fn resuming_from_a_recent_revision_sends_the_missed_patches_in_order(server: Server) {
    let mut stream = server.stream(None).await;
    let config = stream.event().await;
    drop(stream);

    server.configure("new-checkout", true).await;
    server.configure("dark-mode", true).await;
    server.configure("new-checkout", false).await;

    let last = config.revision().to_string();
    let mut resumed = server.stream(Some(&last)).await;
    let mut at = config.revision();
    let mut changed = Vec::new();
    for _ in 0..3 {
        let patch = resumed.event().await;
        assert_eq!(patch.event, "patch", "{patch:?}");
        assert_eq!(patch.data["previousRevision"], at);
        at = patch.revision();
        changed.extend(patch.keys("flags"));
    }
    assert_eq!(changed, ["new-checkout", "dark-mode", "new-checkout"]);
    assert_eq!(at, server.revision());
    assert!(matches!(resumed.next(QUIET).await, Next::Quiet));

    // Resuming at the current revision sends nothing until the next change.
    let mut current = server.stream(Some(&at.to_string())).await;
    assert!(matches!(current.next(QUIET).await, Next::Quiet));
    server.configure("dark-mode", false).await;
    let patch = current.event().await;
    assert_eq!(patch.data["previousRevision"], at);
}

async fn resuming_from_an_unknown_or_forgotten_revision_sends_the_whole_configuration(
    server: Server,
) {
    let mut stream = server.stream(None).await;
    let config = stream.event().await;
    drop(stream);
    let current = server.revision();
    for last in [format!("{}", current + 1000), "not-a-revision".into()] {
        let mut resumed = server.stream(Some(&last)).await;
        let first = resumed.event().await;
        assert_eq!(first.event, "config", "Last-Event-ID {last}");
        assert_eq!(first.revision(), current);
    }

    // More changes than the history holds: the patches from there are gone.
    for round in 0..=HISTORY {
        server.configure("new-checkout", round % 2 == 0).await;
    }
    let mut resumed = server.stream(Some(&config.revision().to_string())).await;
    let first = resumed.event().await;
    assert_eq!(first.event, "config");
    assert_eq!(first.revision(), server.revision());
    assert!(matches!(resumed.next(QUIET).await, Next::Quiet));
}

async fn a_reader_that_falls_more_than_the_history_behind_is_disconnected(server: Server) {
    use futures_util::StreamExt;
    // Through the router, without a socket: the stream is polled only when this test reads,
    // exactly like a server whose socket buffers toward a stalled client are full. (Through a
    // real socket, the kernel's buffers would take these small patches and the server would
    // only see the reader as slow once they fill.)
    let request = axum::http::Request::builder()
        .uri("/sdk/v1/stream")
        .header("x-api-key", &server.server_key)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(router(server.state.clone()), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body().into_data_stream();
    let config = tokio::time::timeout(WAIT, body.next()).await.unwrap();
    let config = String::from_utf8(config.unwrap().unwrap().to_vec()).unwrap();
    assert!(config.contains("event: config"), "{config}");

    for round in 0..=HISTORY {
        server.configure("new-checkout", round % 2 == 0).await;
    }
    match tokio::time::timeout(WAIT, body.next()).await {
        Ok(None) => {}
        other => panic!("the stream should have ended, got {other:?}"),
    }

    // A reader that keeps up within the history is not disconnected.
    let mut stream = server.stream(None).await;
    stream.event().await;
    for round in 0..HISTORY {
        server.configure("dark-mode", round % 2 == 0).await;
    }
    for _ in 0..HISTORY {
        assert_eq!(stream.event().await.event, "patch");
    }
}

async fn the_bulk_answer_names_an_event_stream_that_says_refetch_after_every_change(
    server: Server,
) {
    let (status, answer) = server.bulk(&server.client_key, "").await;
    assert_eq!(status, 200);
    let streams = answer["eventStreams"].as_array().expect("eventStreams");
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["type"], "sse");
    assert!(streams[0].get("url").is_none(), "url or endpoint, not both");
    let request_uri = streams[0]["endpoint"]["requestUri"].as_str().unwrap();
    assert_eq!(
        request_uri,
        format!("/ofrep/v1/events?key={}", server.client_key)
    );
    // A server key is never written into a URL: its provider sends it in a header.
    let (_, answer) = server.bulk(&server.server_key, "").await;
    assert_eq!(
        answer["eventStreams"][0]["endpoint"]["requestUri"],
        "/ofrep/v1/events"
    );

    // Connected as a browser's EventSource would: no headers but the page's origin.
    let response = server
        .http
        .get(format!("{}{request_uri}", server.base))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let mut events = Events::new(response);
    assert!(matches!(events.next(QUIET).await, Next::Quiet));

    server.configure("new-checkout", true).await;
    let refetch = events.event().await;
    let revision = server.revision();
    assert_eq!(refetch.event, "message");
    assert_eq!(refetch.revision(), revision);
    assert_eq!(
        refetch.data,
        json!({"type": "refetchEvaluation", "etag": format!("\"{revision}\"")})
    );
    let (status, answer) = server
        .bulk(
            &server.client_key,
            &format!("?flagConfigEtag=%22{revision}%22"),
        )
        .await;
    assert_eq!(status, 200);
    let checkout = answer["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "new-checkout")
        .unwrap();
    assert_eq!(checkout["value"], true);

    // A reconnecting client that missed a change is told at once; one that did not, is not.
    let reconnect = |last: u64, key: &str| {
        server
            .http
            .get(format!("{}/ofrep/v1/events", server.base))
            .header("x-api-key", key)
            .header("last-event-id", last.to_string())
            .send()
    };
    let mut behind = Events::new(reconnect(revision - 1, &server.server_key).await.unwrap());
    assert_eq!(behind.event().await.revision(), revision);
    let mut current = Events::new(reconnect(revision, &server.server_key).await.unwrap());
    assert!(matches!(current.next(QUIET).await, Next::Quiet));

    // Server keys never come in the query; nor do unknown keys.
    for key in [&server.server_key, &"anc_cli_nonsense".to_string()] {
        let status = server
            .http
            .get(format!("{}/ofrep/v1/events?key={key}", server.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
}

async fn a_refetch_naming_a_newer_revision_catches_up_a_server_that_missed_the_change(
    server: Server,
) {
    // A second server over the same store, that learns of no change by itself.
    let other = AppState::new(Arc::clone(&server.state.store)).unwrap();
    other
        .snapshots
        .build_all(other.store.as_ref())
        .await
        .unwrap();
    other.set_ready(true);
    let bulk = |query: String| {
        let request = axum::http::Request::builder()
            .method("POST")
            .uri(format!("/ofrep/v1/evaluate/flags{query}"))
            .header("x-api-key", &server.client_key)
            .body(axum::body::Body::from(
                json!({"context": {"targetingKey": "user-1"}}).to_string(),
            ))
            .unwrap();
        tower::ServiceExt::oneshot(router(other.clone()), request)
    };
    let value = |body: &Value| {
        body["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == "new-checkout")
            .unwrap()["value"]
            .clone()
    };
    server.configure("new-checkout", true).await;
    let read = |response: axum::response::Response| async move {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    let stale = read(bulk(String::new()).await.unwrap()).await;
    assert_eq!(value(&stale), false);
    let revision = server.revision();
    let fresh = read(
        bulk(format!("?flagConfigEtag=%22{revision}%22"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(value(&fresh), true);
}

async fn both_kinds_of_stream_end_when_the_server_shuts_down(server: Server) {
    let mut sdk = server.stream(None).await;
    assert_eq!(sdk.event().await.event, "config");
    let mut ofrep = Events::new(
        server
            .http
            .get(format!("{}/ofrep/v1/events", server.base))
            .bearer_auth(&server.client_key)
            .send()
            .await
            .unwrap(),
    );
    assert!(matches!(ofrep.next(QUIET).await, Next::Quiet));
    server.state.shutdown.send_replace(true);
    assert!(matches!(sdk.next(WAIT).await, Next::End));
    assert!(matches!(ofrep.next(WAIT).await, Next::End));
}
