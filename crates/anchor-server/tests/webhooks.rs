//! Webhooks end to end: a real server on a port, managed through its HTTP API, delivering to a
//! real receiver (a small axum server in the test) that records every request and can be told
//! to fail. The dispatcher runs with a retry schedule of milliseconds instead of minutes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchor_server::webhooks::WebhookSettings;
use anchor_server::{AppState, Secret, bootstrap, launch};
use anchor_store::{Role, SqlStore, Store};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

mod support;

use support::on_every_backend;

const PASSWORD: &str = "correct horse battery staple";
const WEBHOOKS: &str = "/api/v1/projects/default/webhooks";
const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(400)];

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver on 127.0.0.1: records requests, answers 500 to the next `fail` ones and
/// 204 to the rest.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    fail: Arc<AtomicUsize>,
    url: String,
}

impl Receiver {
    async fn start() -> Receiver {
        let mut receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        receiver.url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    state.received.lock().unwrap().push(Received {
                        at: Instant::now(),
                        headers,
                        body: body.to_vec(),
                    });
                    let failing = state
                        .fail
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if failing {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    fn fail_next(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(|| {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

/// Polls `check` until it gives a value, for at most 10 seconds.
async fn eventually<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Server {
    base: String,
    client: reqwest::Client,
    state: AppState,
    admin: String,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Reply {
    /// The JSON pointers of a 422 problem.
    fn problem_paths(&self) -> Vec<String> {
        assert_eq!(
            self.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            self.body
        );
        assert_eq!(self.content_type, "application/problem+json");
        let mut paths: Vec<String> = self.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap().to_string())
            .collect();
        paths.sort();
        paths
    }
}

fn basic(user: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{PASSWORD}"))
    )
}

impl Server {
    async fn start() -> Server {
        let dir = std::env::temp_dir().join(format!(
            "anchor-webhooks-{}",
            anchor_server::auth::random_token_body().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap());
        Server::start_on(store).await
    }

    /// A server on `store`, bootstrapping it if it is new.
    async fn start_on(store: Arc<dyn Store>) -> Server {
        bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
            .await
            .unwrap();
        let settings = WebhookSettings {
            backoff: BACKOFF.to_vec(),
            timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(25),
            lease: Duration::from_secs(5),
            ..WebhookSettings::default()
        };
        let state = AppState::new(store)
            .unwrap()
            .with_webhook_settings(settings)
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(launch(listener, state.clone(), std::future::pending()));
        let server = Server {
            base,
            client: reqwest::Client::new(),
            state,
            admin: basic("admin"),
        };
        // Ready once every snapshot is built.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = server
                .client
                .get(format!("{}/readyz", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "the server never got ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    async fn call(&self, method: &str, path: &str, auth: &str, body: Option<Value>) -> Reply {
        let mut request = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("authorization", auth);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            content_type,
            body,
        }
    }

    /// Creates a webhook as the admin: (its id, its secret).
    async fn webhook(&self, body: Value) -> (String, String) {
        let reply = self.call("POST", WEBHOOKS, &self.admin, Some(body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        (
            reply.body["id"].as_str().unwrap().to_string(),
            reply.body["secret"].as_str().unwrap().to_string(),
        )
    }

    /// Creates the boolean flag `checkout` (disabled everywhere).
    async fn flag(&self) {
        let flag = json!({
            "key": "checkout", "kind": "boolean",
            "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]
        });
        let reply = self
            .call(
                "POST",
                "/api/v1/projects/default/flags",
                &self.admin,
                Some(flag),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }

    /// Sets `checkout`'s configuration in production.
    async fn configure(&self, enabled: bool) {
        let config = json!({
            "enabled": enabled, "offVariant": "off", "defaultServe": {"variant": "on"}
        });
        let reply = self
            .call(
                "PUT",
                "/api/v1/projects/default/environments/production/flags/checkout",
                &self.admin,
                Some(config),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }

    async fn deliveries(&self, id: &str) -> Vec<Value> {
        let reply = self
            .call(
                "GET",
                &format!("{WEBHOOKS}/{id}/deliveries"),
                &self.admin,
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body.as_array().unwrap().clone()
    }

    /// Waits until the newest delivery of the webhook has `status`, and returns it.
    async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.deliveries(id).await;
            if let Some(newest) = log.first()
                && newest["status"] == status
            {
                return newest.clone();
            }
            assert!(Instant::now() < deadline, "no {status} delivery: {log:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A user with `role` in project `default` (or in none).
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

/// A server on SQLite, or on PostgreSQL in the schema given.
async fn start_server(postgres: Option<(String, String)>) -> Server {
    let Some((url, schema)) = postgres else {
        return Server::start().await;
    };
    Server::start_on(Arc::new(
        SqlStore::open_postgres(&url, Some(&schema)).await.unwrap(),
    ))
    .await
}

on_every_backend!(
    start: start_server;
    flag_changes_applied_requests_and_release_steps_arrive_with_the_data_they_always_had,
);

/// The events are recorded by the writes that make the changes (in their transactions), and
/// reach receivers with exactly the data they had when they were recorded after the writes.
async fn flag_changes_applied_requests_and_release_steps_arrive_with_the_data_they_always_had(
    server: Server,
) {
    let receiver = Receiver::start().await;
    server
        .webhook(json!({"name": "ops", "url": receiver.url}))
        .await;
    server.flag().await;
    server.configure(true).await;
    // A scheduled change, applied by hand before its time.
    let later = json!({
        "enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
        "comment": "serve off first", "applyAt": server.state.now_ms() + 3_600_000,
    });
    let reply = server
        .call(
            "PUT",
            "/api/v1/projects/default/environments/production/flags/checkout",
            &server.admin,
            Some(later),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let request = reply.body["id"].as_str().unwrap().to_string();
    let reply = server
        .call(
            "POST",
            &format!("/api/v1/projects/default/change-requests/{request}/apply"),
            &server.admin,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // A release started, then rolled back by a person.
    let started = server
        .call(
            "POST",
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            &server.admin,
            Some(json!({"template": "default", "control": "off", "treatment": "on"})),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let release = started.body["id"].as_str().unwrap().to_string();
    let rolled = server
        .call(
            "POST",
            &format!("/api/v1/projects/default/releases/{release}/commands"),
            &server.admin,
            Some(json!({"command": "rollBack"})),
        )
        .await;
    assert_eq!(rolled.status, StatusCode::OK, "{}", rolled.body);

    let admin = json!({"kind": "user", "id": "admin"});
    let release_step = |view: &Value| {
        json!({
            "release": release,
            "flag": "checkout",
            "environment": "production",
            "state": view["state"],
            "message": view["decisions"].as_array().unwrap().last().unwrap()["message"],
            "actor": admin,
        })
    };
    let expected = [
        (
            "flag.changed",
            json!({
                "flag": "checkout", "environment": "production", "version": 2, "actor": admin,
                "action": "flag.config.updated", "comment": null,
            }),
        ),
        (
            "flag.changed",
            json!({
                "flag": "checkout", "environment": "production", "version": 3, "actor": admin,
                "action": "change_request.applied", "comment": "serve off first",
                "changeRequest": request,
            }),
        ),
        ("release.stage_advanced", release_step(&started.body)),
        ("release.rolled_back", release_step(&rolled.body)),
    ];
    let arrived = |got: &[Received]| -> Vec<(String, Value)> {
        got.iter()
            .map(|r| {
                (
                    r.header("x-anchor-event").to_string(),
                    r.json()["data"].clone(),
                )
            })
            .collect()
    };
    let got = eventually(|| {
        let got = arrived(&receiver.received());
        expected
            .iter()
            .all(|(kind, data)| got.contains(&(kind.to_string(), data.clone())))
            .then_some(got)
    })
    .await;
    for (kind, data) in &expected {
        let times = got.iter().filter(|(k, d)| k == kind && d == data).count();
        assert_eq!(times, 1, "{kind} {data} arrived {times} times: {got:?}");
    }
}

/// The signature a receiver expects: HMAC-SHA256 over `<timestamp>.<body>`, computed here
/// independently of the server's code.
fn expected_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Checks a request as a receiver would: the signature matches and the timestamp is recent.
fn assert_signed(request: &Received, secret: &str) {
    let timestamp = request.header("x-anchor-timestamp");
    let sent: i64 = timestamp.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - sent).abs() <= 300,
        "a stale timestamp: {sent}, now {now}"
    );
    assert_eq!(
        request.header("x-anchor-signature"),
        expected_signature(secret, timestamp, &request.body)
    );
}

#[tokio::test]
async fn a_webhook_shows_its_secret_once_and_a_flag_change_sends_a_signed_delivery() {
    let server = Server::start().await;
    let receiver = Receiver::start().await;
    let reply = server
        .call(
            "POST",
            WEBHOOKS,
            &server.admin,
            Some(json!({"name": "ops", "url": receiver.url})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    let secret = reply.body["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    assert_eq!(reply.body["events"], json!(["*"]));
    assert_eq!(reply.body["format"], "json");
    assert_eq!(reply.body["enabled"], true);
    // Never again.
    let one = server
        .call("GET", &format!("{WEBHOOKS}/{id}"), &server.admin, None)
        .await;
    assert_eq!(one.status, StatusCode::OK);
    let all = server.call("GET", WEBHOOKS, &server.admin, None).await;
    assert_eq!(all.body.as_array().unwrap().len(), 1);
    for body in [&one.body, &all.body[0]] {
        assert_eq!(body["id"], id.as_str());
        assert!(body.get("secret").is_none(), "{body}");
        assert!(!body.to_string().contains(&secret));
    }

    server.flag().await;
    server.configure(true).await;
    let got = receiver.wait_for(1).await;
    let request = &got[0];
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("x-anchor-event"), "flag.changed");
    assert_signed(request, &secret);
    let body = request.json();
    assert_eq!(body["id"], request.header("x-anchor-delivery"));
    assert_eq!(body["type"], "flag.changed");
    assert_eq!(body["project"], "default");
    let occurred = body["occurredAt"].as_str().unwrap();
    assert!(
        occurred.len() == 24 && occurred.ends_with('Z'),
        "{occurred}"
    );
    assert_eq!(body["data"]["flag"], "checkout");
    assert_eq!(body["data"]["environment"], "production");
    assert_eq!(body["data"]["version"], 2);
    assert_eq!(body["data"]["action"], "flag.config.updated");
    assert_eq!(
        body["data"]["actor"],
        json!({"kind": "user", "id": "admin"})
    );

    let delivered = server.wait_for_status(&id, "succeeded").await;
    assert_eq!(delivered["id"], body["id"]);
    assert_eq!(delivered["attempts"], 1);
    assert_eq!(delivered["lastHttpStatus"], 204);
    assert_eq!(delivered["eventType"], "flag.changed");

    // A new secret signs what follows; the kill switch is an event too.
    let rotated = server
        .call(
            "POST",
            &format!("{WEBHOOKS}/{id}/rotate-secret"),
            &server.admin,
            None,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    server.configure(false).await;
    let got = receiver.wait_for(2).await;
    assert_signed(&got[1], &new_secret);
    assert_eq!(got[1].json()["data"]["action"], "flag.killed");

    // Creating, rotating and deleting are audited under the webhook's id; no secret in sight.
    let deleted = server
        .call("DELETE", &format!("{WEBHOOKS}/{id}"), &server.admin, None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = server
        .call("GET", &format!("{WEBHOOKS}/{id}"), &server.admin, None)
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.content_type, "application/problem+json");
    let audit = server
        .call(
            "GET",
            &format!("/api/v1/projects/default/audit?flag={id}"),
            &server.admin,
            None,
        )
        .await;
    let actions: Vec<_> = audit
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions,
        [
            "webhook.deleted",
            "webhook.secret_rotated",
            "webhook.created"
        ]
    );
    assert!(!audit.body.to_string().contains("whsec_"));
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_backoff_until_failed_and_a_recovering_one_succeeds() {
    let server = Server::start().await;
    let receiver = Receiver::start().await;
    let (id, secret) = server
        .webhook(json!({"name": "flaky", "url": receiver.url}))
        .await;
    receiver.fail_next(usize::MAX);
    let reply = server
        .call(
            "POST",
            &format!("{WEBHOOKS}/{id}/test"),
            &server.admin,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["eventType"], "ping");
    assert_eq!(reply.body["status"], "pending");
    let failed = server.wait_for_status(&id, "failed").await;
    assert_eq!(failed["attempts"], 3, "{failed}");
    assert_eq!(failed["lastHttpStatus"], 500);
    assert!(
        failed["lastError"].as_str().unwrap().contains("500"),
        "{failed}"
    );
    assert_eq!(failed["nextAttemptAt"], Value::Null);
    let got = receiver.received();
    assert_eq!(got.len(), 3, "one initial attempt and two retries");
    for request in &got {
        assert_eq!(request.header("x-anchor-delivery"), failed["id"]);
        assert_eq!(request.header("x-anchor-event"), "ping");
        assert_eq!(
            request.body, got[0].body,
            "every attempt sends the same body"
        );
        assert_signed(request, &secret);
    }
    for (i, wait) in BACKOFF.iter().enumerate() {
        let gap = got[i + 1].at - got[i].at;
        assert!(
            gap >= *wait,
            "retry {} after {gap:?}, before {wait:?}",
            i + 1
        );
    }

    // The receiver recovers after one more failure: the second attempt succeeds.
    receiver.fail_next(1);
    server
        .call(
            "POST",
            &format!("{WEBHOOKS}/{id}/test"),
            &server.admin,
            None,
        )
        .await;
    let succeeded = server.wait_for_status(&id, "succeeded").await;
    assert_eq!(succeeded["attempts"], 2, "{succeeded}");
    assert_eq!(succeeded["lastHttpStatus"], 204);
    assert_eq!(succeeded["lastError"], Value::Null);
    let log = server.deliveries(&id).await;
    assert_eq!(log.len(), 2);
    assert_eq!(log[1]["status"], "failed");
    assert_eq!(receiver.received().len(), 5);
}

#[tokio::test]
async fn the_slack_format_sends_a_readable_line_and_blocks() {
    let server = Server::start().await;
    let receiver = Receiver::start().await;
    let (id, secret) = server
        .webhook(json!({
            "name": "chat", "url": receiver.url, "format": "slack", "events": ["flag.changed"]
        }))
        .await;
    server.flag().await;
    server.configure(true).await;
    let got = receiver.wait_for(1).await;
    assert_signed(&got[0], &secret);
    let body = got[0].json();
    let text = body["text"].as_str().unwrap();
    assert_eq!(
        text,
        "admin changed flag `checkout` in `production` of `default` (version 2)."
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["text"], text);
    assert_eq!(blocks[1]["type"], "context");
    server.wait_for_status(&id, "succeeded").await;
}

#[tokio::test]
async fn disabled_and_unsubscribed_webhooks_get_no_events_but_the_test_endpoint_pings_them() {
    let server = Server::start().await;
    let receiver = Receiver::start().await;
    let (off, _) = server
        .webhook(json!({"name": "off", "url": receiver.url, "enabled": false}))
        .await;
    let (releases, _) = server
        .webhook(json!({
            "name": "releases", "url": receiver.url, "events": ["release.rolled_back"]
        }))
        .await;
    server.flag().await;
    server.configure(true).await;
    for id in [&off, &releases] {
        assert!(server.deliveries(id).await.is_empty());
    }
    let reply = server
        .call(
            "POST",
            &format!("{WEBHOOKS}/{off}/test"),
            &server.admin,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].header("x-anchor-event"), "ping");
    let body = got[0].json();
    assert_eq!(body["type"], "ping");
    assert_eq!(body["data"]["actor"]["id"], "admin");
    server.wait_for_status(&off, "succeeded").await;
    // Enabling it again, through PATCH, lets events through.
    let patched = server
        .call(
            "PATCH",
            &format!("{WEBHOOKS}/{off}"),
            &server.admin,
            Some(json!({"enabled": true, "name": "on again"})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["enabled"], true);
    assert_eq!(patched.body["name"], "on again");
    assert!(patched.body.get("secret").is_none());
    server.configure(false).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].header("x-anchor-event"), "flag.changed");
}

#[tokio::test]
async fn admins_manage_webhooks_viewers_read_them_and_outsiders_are_refused() {
    let server = Server::start().await;
    let viewer = server.member("vera", Some(Role::Viewer)).await;
    let editor = server.member("eddie", Some(Role::Editor)).await;
    let outsider = server.member("olga", None).await;
    let (id, _) = server
        .webhook(json!({"name": "ops", "url": "https://hooks.example.com/services/T0/B0/token"}))
        .await;
    // The path of a URL can be a credential (Slack's are): only admins see it.
    let seen = server
        .call("GET", &format!("{WEBHOOKS}/{id}"), &viewer, None)
        .await;
    assert_eq!(seen.body["url"], "https://hooks.example.com/…");
    let listed = server.call("GET", WEBHOOKS, &editor, None).await;
    assert_eq!(listed.body[0]["url"], "https://hooks.example.com/…");
    let seen = server
        .call("GET", &format!("{WEBHOOKS}/{id}"), &server.admin, None)
        .await;
    assert_eq!(
        seen.body["url"],
        "https://hooks.example.com/services/T0/B0/token"
    );
    let create = json!({"name": "mine", "url": "https://hooks.example.com/y"});
    for who in [&viewer, &editor] {
        let reply = server
            .call("POST", WEBHOOKS, who, Some(create.clone()))
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
        assert_eq!(reply.content_type, "application/problem+json");
        for (method, path) in [
            ("PATCH", format!("{WEBHOOKS}/{id}")),
            ("DELETE", format!("{WEBHOOKS}/{id}")),
            ("POST", format!("{WEBHOOKS}/{id}/rotate-secret")),
            ("POST", format!("{WEBHOOKS}/{id}/test")),
        ] {
            let body = (method == "PATCH").then(|| json!({"enabled": false}));
            let reply = server.call(method, &path, who, body).await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        }
    }
    for path in [
        WEBHOOKS.to_string(),
        format!("{WEBHOOKS}/{id}"),
        format!("{WEBHOOKS}/{id}/deliveries"),
    ] {
        let reply = server.call("GET", &path, &viewer, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        assert!(!reply.body.to_string().contains("whsec_"));
        let reply = server.call("GET", &path, &outsider, None).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
        let reply = server.call("GET", &path, "Bearer nope", None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // A non-member learns nothing of the request body's problems, only that it may not.
    let reply = server
        .call("POST", WEBHOOKS, &outsider, Some(json!({"url": "ftp://x"})))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn invalid_webhooks_are_refused_with_every_field_named() {
    let server = Server::start().await;
    let cases = [
        (
            json!({"name": "", "url": "ftp://example.com/x", "events": ["nope", "flag.changed", "release.typo"], "format": "xml"}),
            vec!["/events/0", "/events/2", "/format", "/name", "/url"],
        ),
        (json!({}), vec!["/name", "/url"]),
        (json!({"name": "relative", "url": "/hook"}), vec!["/url"]),
        (json!({"name": "no host", "url": "http://"}), vec!["/url"]),
        (
            json!({"name": "nothing", "url": "https://example.com", "events": []}),
            vec!["/events"],
        ),
        (
            json!({"name": "x".repeat(101), "url": "https://example.com"}),
            vec!["/name"],
        ),
    ];
    for (body, paths) in cases {
        let reply = server
            .call("POST", WEBHOOKS, &server.admin, Some(body.clone()))
            .await;
        assert_eq!(reply.problem_paths(), paths, "{body}");
    }
    // An unknown field is refused rather than ignored.
    let reply = server
        .call(
            "POST",
            WEBHOOKS,
            &server.admin,
            Some(json!({"name": "a", "url": "https://example.com", "secret": "mine"})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert!(reply.body["detail"].as_str().unwrap().contains("secret"));
    let (id, _) = server
        .webhook(json!({"name": "ok", "url": "https://example.com/hook"}))
        .await;
    let reply = server
        .call(
            "PATCH",
            &format!("{WEBHOOKS}/{id}"),
            &server.admin,
            Some(json!({"url": "mailto:ops@example.com", "format": "teams"})),
        )
        .await;
    assert_eq!(reply.problem_paths(), ["/format", "/url"]);
    let reply = server
        .call(
            "GET",
            &format!("{WEBHOOKS}/{id}/deliveries?limit=0"),
            &server.admin,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = server
        .call("GET", &format!("{WEBHOOKS}/missing"), &server.admin, None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn reverts_and_applied_change_requests_are_flag_changes_too() {
    let server = Server::start().await;
    let receiver = Receiver::start().await;
    server
        .webhook(json!({"name": "ops", "url": receiver.url, "events": ["flag.changed"]}))
        .await;
    server.flag().await;
    server.configure(true).await;
    let reply = server
        .call(
            "POST",
            "/api/v1/projects/default/environments/production/flags/checkout/revert",
            &server.admin,
            Some(json!({"version": 1, "comment": "back to off"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // A scheduled change, applied by the server's scheduler within a second.
    let scheduled = json!({
        "enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"},
        "applyAt": server.state.now_ms() - 1,
    });
    let reply = server
        .call(
            "PUT",
            "/api/v1/projects/default/environments/production/flags/checkout",
            &server.admin,
            Some(scheduled),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let request_id = reply.body["id"].as_str().unwrap().to_string();
    let got = receiver.wait_for(3).await;
    let data: Vec<Value> = got.iter().map(|r| r.json()["data"].clone()).collect();
    assert_eq!(data[0]["action"], "flag.config.updated");
    assert_eq!(data[1]["action"], "flag.reverted");
    assert_eq!(data[1]["version"], 3);
    assert_eq!(data[1]["comment"], "back to off");
    assert_eq!(data[2]["action"], "change_request.applied");
    assert_eq!(data[2]["version"], 4);
    assert_eq!(data[2]["changeRequest"], request_id.as_str());
    assert_eq!(
        data[2]["actor"],
        json!({"kind": "system", "id": "scheduler"})
    );
}

/// Two servers share one PostgreSQL schema, and both dispatchers race for the same pending
/// deliveries: each is sent exactly once.
#[tokio::test]
#[allow(clippy::print_stderr, reason = "a skipped test says why")]
async fn two_servers_on_one_postgres_send_each_delivery_once() {
    let Ok(url) = std::env::var("ANCHOR_TEST_POSTGRES_URL") else {
        eprintln!("ANCHOR_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    let schema = format!(
        "anchor_webhooks_{}",
        anchor_server::auth::random_token_body().unwrap()[..12]
            .to_ascii_lowercase()
            .replace('-', "_")
    );
    let open = || async {
        let store: Arc<dyn Store> =
            Arc::new(SqlStore::open_postgres(&url, Some(&schema)).await.unwrap());
        store
    };
    let one = Server::start_on(open().await).await;
    let two = Server::start_on(open().await).await;
    let receiver = Receiver::start().await;
    let (id, _) = one
        .webhook(json!({"name": "ops", "url": receiver.url}))
        .await;
    // Queued straight into the store, waking neither dispatcher: both find them by polling.
    let mut queued = Vec::new();
    for n in 0..40 {
        let store = if n % 2 == 0 {
            &one.state.store
        } else {
            &two.state.store
        };
        let made = store
            .enqueue_webhook_deliveries("default", "ping", &json!({ "n": n }), None)
            .await
            .unwrap();
        queued.extend(made.into_iter().map(|d| d.id));
    }
    receiver.wait_for(40).await;
    // Time for a duplicate to arrive, if there were one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.received();
    let mut sent: Vec<String> = got
        .iter()
        .map(|r| r.header("x-anchor-delivery").to_string())
        .collect();
    sent.sort();
    queued.sort();
    assert_eq!(sent, queued, "every delivery exactly once");
    let log = two.deliveries(&id).await;
    assert!(
        log.iter()
            .all(|d| d["status"] == "succeeded" && d["attempts"] == 1)
    );

    use sqlx::{Connection, Executor};
    drop((one, two));
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await
        .unwrap();
}
