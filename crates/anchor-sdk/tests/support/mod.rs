//! A live server for the SDK's tests: SQLite in a temporary directory, the bootstrap admin, a
//! real port; flags written through the management API, as a person would.

#![allow(dead_code, reason = "each test file uses part of it")]

use std::sync::Arc;

use anchor_server::{AppState, Secret, auth, bootstrap, launch};
use anchor_store::{Actor, NewSdkKey, SdkKeyKind, SqlStore, Store};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Server {
    pub url: String,
    pub store: Arc<dyn Store>,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub dir: std::path::PathBuf,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "anchor-sdk-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    pub async fn start(name: &str) -> Server {
        let dir = temp_dir(name);
        let store: Arc<dyn Store> =
            Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap());
        bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
            .await
            .unwrap();
        Server::launch_on(store, dir, None).await
    }

    /// Serves `store` on `port` (0: any).
    pub async fn launch_on(
        store: Arc<dyn Store>,
        dir: std::path::PathBuf,
        port: Option<u16>,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(launch(
            listener,
            AppState::new(Arc::clone(&store)).unwrap(),
            async {
                let _ = stopped.await;
            },
        ));
        let server = Server {
            url: format!("http://{addr}"),
            store,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            dir,
        };
        // Ready once it answers.
        for _ in 0..200 {
            if let Ok(r) = server
                .http
                .get(format!("{}/readyz", server.url))
                .send()
                .await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Stops serving (open streams end) and waits until the port is closed.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub async fn sdk_key(&self, project: &str, environment: &str, kind: SdkKeyKind) -> String {
        let prefix = match kind {
            SdkKeyKind::Server => "anc_srv_",
            SdkKeyKind::Client => "anc_cli_",
        };
        let secret = format!("{prefix}{}", auth::random_token_body().unwrap());
        self.store
            .create_sdk_key(
                &Actor::system("test"),
                &NewSdkKey {
                    project: project.into(),
                    environment: environment.into(),
                    kind,
                    key_hash: auth::token_hash(&secret),
                    prefix: secret.chars().take(12).collect(),
                },
            )
            .await
            .unwrap();
        secret
    }

    /// A management API call as the bootstrap admin; panics unless it succeeds.
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.url))
            .basic_auth("admin", Some(PASSWORD))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Creates a flag (in every environment of `default`) and sets its configuration in
    /// `production`.
    pub async fn flag(&self, definition: Value, config: Value) {
        let key = definition["key"].as_str().unwrap().to_string();
        self.api(
            reqwest::Method::POST,
            "/api/v1/projects/default/flags",
            definition,
        )
        .await;
        self.configure(&key, config).await;
    }

    pub async fn configure(&self, key: &str, config: Value) {
        self.api(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/default/environments/production/flags/{key}"),
            config,
        )
        .await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn on_off(key: &str) -> Value {
    json!({"key": key, "kind": "boolean",
           "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]})
}

pub fn serving(variant: &str) -> Value {
    json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": variant}})
}

/// Polls `check` every 10 ms until it holds or `seconds` pass.
pub async fn eventually(seconds: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    check()
}
