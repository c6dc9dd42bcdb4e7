//! When SDK keys and access tokens were last used, through the real HTTP surface: a fresh key
//! or token shows `lastUsedAt: null`; a request it authenticates is noted in memory and shows in
//! the listings once the server writes its uses (every 100 ms here, every minute by default),
//! never before; a graceful stop writes the uses not yet written; the keys page says it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anchor_server::{AppState, Secret, bootstrap, launch};
use anchor_store::{SqlStore, Store};
use serde_json::{Value, json};
use support::{PASSWORD, form_body, on_every_backend};

on_every_backend!(
    start: bootstrapped_store;
    a_key_and_a_token_show_null_until_used_then_when_they_were_used,
    a_use_reaches_the_store_only_when_the_server_writes_its_uses,
    a_graceful_stop_writes_the_uses_not_yet_written,
    the_keys_page_says_when_each_key_and_token_was_last_used,
);

const KEYS: &str = "/api/v1/projects/default/environments/production/keys";
/// How long a test waits for a flush it expects.
const WAIT: Duration = Duration::from_secs(10);

/// A bootstrapped store: SQLite in a temporary directory, or PostgreSQL `(url, schema)`.
async fn bootstrapped_store(postgres: Option<(String, String)>) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = match postgres {
        Some((url, schema)) => {
            Arc::new(SqlStore::open_postgres(&url, Some(&schema)).await.unwrap())
        }
        None => {
            let dir = std::env::temp_dir()
                .join(format!("anchor-last-used-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap())
        }
    };
    bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
        .await
        .unwrap();
    store
}

struct Server {
    base: String,
    state: AppState,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// A server on `store` writing its uses every `flush_every`.
    async fn launch(store: Arc<dyn Store>, flush_every: Duration) -> Server {
        let state = AppState::new(store)
            .unwrap()
            .with_use_flush_every(flush_every);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(launch(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        let server = Server {
            base,
            state,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            stop: Some(stop),
            served: Some(served),
        };
        let started = Instant::now();
        while server.get("/readyz", None).await.0 != 200 {
            assert!(started.elapsed() < WAIT, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    /// Stops the server gracefully and waits until it has.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.served.take().unwrap().await.unwrap().unwrap();
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A GET with `authorization` if given.
    async fn get(&self, path: &str, authorization: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        self.send(request).await
    }

    /// A management API call as the admin with their password, which is no token: it marks
    /// nothing used.
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .basic_auth("admin", Some(PASSWORD));
        if !body.is_null() {
            request = request.json(&body);
        }
        let (status, body) = self.send(request).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {body}"
        );
        body
    }

    /// A new SDK key of production: (id, secret).
    async fn new_key(&self, kind: &str) -> (String, String) {
        let created = self
            .admin(reqwest::Method::POST, KEYS, json!({"kind": kind}))
            .await;
        assert_eq!(created["lastUsedAt"], Value::Null, "{created}");
        (
            created["id"].as_str().unwrap().to_string(),
            created["key"].as_str().unwrap().to_string(),
        )
    }

    /// A new access token of the admin: (id, secret).
    async fn new_token(&self, name: &str) -> (String, String) {
        let created = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/tokens",
                json!({"name": name}),
            )
            .await;
        (
            created["id"].as_str().unwrap().to_string(),
            created["token"].as_str().unwrap().to_string(),
        )
    }

    /// An OFREP evaluation with the SDK key `secret`.
    async fn evaluate(&self, secret: &str) {
        let request = self
            .http
            .post(format!("{}/ofrep/v1/evaluate/flags", self.base))
            .bearer_auth(secret)
            .json(&json!({"context": {"targetingKey": "user-1"}}));
        let (status, body) = self.send(request).await;
        assert_eq!(status, 200, "{body}");
    }

    /// `lastUsedAt` of the production key and of the admin's token with these ids, as listed.
    async fn last_used(&self, key: &str, token: &str) -> (Value, Value) {
        let keys = self.admin(reqwest::Method::GET, KEYS, Value::Null).await;
        let tokens = self
            .admin(reqwest::Method::GET, "/api/v1/tokens", Value::Null)
            .await;
        let of = |list: &Value, id: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|item| item["id"] == id)
                .unwrap_or_else(|| panic!("{id} is not listed in {list}"))["lastUsedAt"]
                .clone()
        };
        (of(&keys, key), of(&tokens, token))
    }

    /// Waits until the listings show a use of both the key and the token.
    async fn until_used(&self, key: &str, token: &str) -> (i64, i64) {
        let started = Instant::now();
        loop {
            if let (Value::Number(key), Value::Number(token)) = self.last_used(key, token).await {
                return (key.as_i64().unwrap(), token.as_i64().unwrap());
            }
            assert!(started.elapsed() < WAIT, "the uses were never written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn a_key_and_a_token_show_null_until_used_then_when_they_were_used(store: Arc<dyn Store>) {
    let server = Server::launch(store, Duration::from_millis(100)).await;
    let (used_key, used_secret) = server.new_key("server").await;
    let (idle_key, _) = server.new_key("client").await;
    let (used_token, token_secret) = server.new_token("ci").await;
    let (idle_token, _) = server.new_token("laptop").await;
    assert_eq!(
        server.last_used(&used_key, &used_token).await,
        (Value::Null, Value::Null)
    );

    let before = now_ms();
    server.evaluate(&used_secret).await;
    let (status, _) = server
        .get(
            "/api/v1/projects/default/flags",
            Some(&format!("Bearer {token_secret}")),
        )
        .await;
    assert_eq!(status, 200);
    let after = now_ms();

    let (key_at, token_at) = server.until_used(&used_key, &used_token).await;
    assert!(
        (before..=after).contains(&key_at),
        "{before} {key_at} {after}"
    );
    assert!(
        (before..=after).contains(&token_at),
        "{before} {token_at} {after}"
    );
    assert_eq!(
        server.last_used(&idle_key, &idle_token).await,
        (Value::Null, Value::Null),
        "a key and a token never used stay null"
    );
    server.stop().await;
}

async fn a_use_reaches_the_store_only_when_the_server_writes_its_uses(store: Arc<dyn Store>) {
    // Never on its own within the test: the default minute.
    let server = Server::launch(store, anchor_server::auth::USE_FLUSH_EVERY).await;
    let (key, secret) = server.new_key("server").await;
    let (token, token_secret) = server.new_token("ci").await;
    for _ in 0..20 {
        server.evaluate(&secret).await;
        let (status, _) = server
            .get("/api/v1/tokens", Some(&format!("Bearer {token_secret}")))
            .await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.last_used(&key, &token).await,
        (Value::Null, Value::Null),
        "evaluations do not write to the store"
    );
    let written = anchor_server::auth::flush_uses(&server.state)
        .await
        .unwrap();
    assert_eq!(written, 2, "twenty uses of each are one write of each");
    let (key_at, token_at) = server.until_used(&key, &token).await;
    assert!(key_at <= token_at, "the token was used last");
    assert_eq!(
        anchor_server::auth::flush_uses(&server.state)
            .await
            .unwrap(),
        0,
        "nothing new to write"
    );
    server.stop().await;
}

async fn a_graceful_stop_writes_the_uses_not_yet_written(store: Arc<dyn Store>) {
    let server = Server::launch(Arc::clone(&store), anchor_server::auth::USE_FLUSH_EVERY).await;
    let (key, secret) = server.new_key("client").await;
    server.evaluate(&secret).await;
    let keys = store.sdk_keys("default", "production").await.unwrap();
    assert_eq!(
        keys.iter().find(|k| k.id == key).unwrap().last_used_at,
        None
    );
    server.stop().await;
    let keys = store.sdk_keys("default", "production").await.unwrap();
    assert!(
        keys.iter()
            .find(|k| k.id == key)
            .unwrap()
            .last_used_at
            .is_some(),
        "written on the way out"
    );
}

async fn the_keys_page_says_when_each_key_and_token_was_last_used(store: Arc<dyn Store>) {
    let server = Server::launch(store, Duration::from_millis(100)).await;
    let (key, secret) = server.new_key("server").await;
    let (token, token_secret) = server.new_token("ci").await;
    server.evaluate(&secret).await;
    let (status, _) = server
        .get("/api/v1/tokens", Some(&format!("Bearer {token_secret}")))
        .await;
    assert_eq!(status, 200);
    server.new_key("client").await;
    server.until_used(&key, &token).await;

    let signed_in = server
        .http
        .post(format!("{}/sign-in", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("username", "admin"), ("password", PASSWORD)]))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = server
        .http
        .get(format!("{}/projects/default/settings/keys", server.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let keys = &page[page.find("<table class=\"keys\"").unwrap()..];
    let keys = &keys[..keys.find("</table>").unwrap()];
    assert!(keys.contains("Last used"), "{keys}");
    assert_eq!(keys.matches("within the last minute").count(), 1, "{keys}");
    assert_eq!(keys.matches(">never<").count(), 1, "the client key: {keys}");
    let tokens = &page[page.find("<table class=\"tokens\"").unwrap()..];
    let tokens = &tokens[..tokens.find("</table>").unwrap()];
    assert!(tokens.contains("Last used"), "{tokens}");
    assert!(tokens.contains("within the last minute"), "{tokens}");
    server.stop().await;
}
