//! What the CLI's integration tests share: a real server on a free port with an admin token
//! and a config directory for the CLI, on SQLite or PostgreSQL, and a minimal HTTP client for
//! what the CLI does not do itself.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of the support"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anchor_server::{AppState, Secret, bootstrap, launch};
use anchor_store::{SqlStore, Store};
use base64::Engine;
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";

pub enum Backend {
    Sqlite,
    Postgres { url: String, schema: String },
}

/// Declares one test per backend running the same story; PostgreSQL only when
/// `ANCHOR_TEST_POSTGRES_URL` is set.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(super::start(stringify!($name), super::Backend::Sqlite));
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    let Ok(url) = std::env::var("ANCHOR_TEST_POSTGRES_URL") else {
                        eprintln!("ANCHOR_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
                        return;
                    };
                    let schema = format!("anchor_cli_{}", super::unique());
                    super::$name(super::start(
                        stringify!($name),
                        super::Backend::Postgres { url, schema },
                    ));
                }
            )*
        }
    };
}

/// A server with an admin token, and a config directory for the CLI. Dropping it stops the
/// server and drops its PostgreSQL schema.
pub struct Server {
    pub runtime: Option<tokio::runtime::Runtime>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub backend: Backend,
    pub addr: String,
    pub url: String,
    pub token: String,
    pub config: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(runtime), Backend::Postgres { url, schema }) = (&self.runtime, &self.backend) {
            runtime.block_on(async {
                use sqlx::{Connection, Executor};
                sqlx::any::install_default_drivers();
                if let Ok(mut conn) = sqlx::AnyConnection::connect(url).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                        .await;
                }
            });
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}_{nanos}", std::process::id())
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anchor-cli-{name}-{}", unique()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

pub fn start(name: &str, backend: Backend) -> Server {
    let dir = temp_dir(name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (addr, stop) = runtime.block_on(async {
        let store: Arc<dyn Store> = match &backend {
            Backend::Sqlite => Arc::new(
                SqlStore::open_sqlite(&dir.join("anchor.db"))
                    .await
                    .expect("SQLite opens"),
            ),
            Backend::Postgres { url, schema } => Arc::new(
                SqlStore::open_postgres(url, Some(schema))
                    .await
                    .expect("PostgreSQL opens"),
            ),
        };
        bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
            .await
            .expect("the first start's bootstrap");
        let state = AppState::new(store).expect("the application state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("an address").to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(launch(listener, state, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    });
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
    );
    for _ in 0..200 {
        if TcpStream::connect(&addr).is_ok()
            && http(&addr, "GET", "/readyz", &basic, &Value::Null).0 == 200
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, created) = http(
        &addr,
        "POST",
        "/api/v1/tokens",
        &basic,
        &json!({"name": "cli"}),
    );
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().expect("a token").to_string();
    Server {
        runtime: Some(runtime),
        stop: Some(stop),
        backend,
        url: format!("http://{addr}"),
        addr,
        token,
        config: dir.join("config"),
    }
}

/// A user with `role` in the default project, and a personal access token of theirs.
pub fn member_token(server: &Server, username: &str, role: &str) -> String {
    let bearer = format!("Bearer {}", server.token);
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v1/users",
        &bearer,
        &json!({"username": username, "password": PASSWORD}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        &server.addr,
        "PUT",
        &format!("/api/v1/projects/default/members/{username}"),
        &bearer,
        &json!({ "role": role }),
    );
    assert_eq!(status, 204, "{body}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{PASSWORD}"))
    );
    let (status, created) = http(
        &server.addr,
        "POST",
        "/api/v1/tokens",
        &basic,
        &json!({"name": "assistant"}),
    );
    assert_eq!(status, 201, "{created}");
    created["token"].as_str().expect("a token").to_string()
}

/// A minimal HTTP/1.1 request, for what the CLI does not do (making tokens and projects).
pub fn http(addr: &str, method: &str, path: &str, auth: &str, body: &Value) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("the server accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a timeout");
    let body = body.to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("the request is sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("an answer");
    let status = response[9..12].parse().expect("a status");
    let (_, rest) = response.split_once("\r\n\r\n").expect("a body");
    let start = rest.find(['{', '[']).unwrap_or(0);
    let end = rest.rfind(['}', ']']).map_or(rest.len(), |e| e + 1);
    (
        status,
        serde_json::from_str(&rest[start..end.max(start)]).unwrap_or(Value::Null),
    )
}
