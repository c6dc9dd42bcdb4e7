//! A real server on a real port and a plain HTTP client for the dashboard's tests.
#![allow(
    dead_code,
    reason = "each test binary that includes this module uses a part of it"
)]

pub mod browser;

use std::sync::Arc;
use std::time::Duration;

use anchor_server::{AppState, Secret, bootstrap, launch};
use anchor_store::{SqlStore, Store};
use reqwest::StatusCode;
use serde_json::Value;

/// Declares one test per backend running the same story; PostgreSQL only when
/// `ANCHOR_TEST_POSTGRES_URL` is set (each test in a fresh schema, dropped afterwards). The
/// server comes from `Server::start`, or from `start: f;`, an `async fn f(postgres)` of the test
/// file (`postgres` an `Option<(url, schema)>`) whose answer each test takes. The tests run
/// under `#[tokio::test]`, or under the attribute `test: #[…];` names after `start`.
#[allow(
    unused_macros,
    reason = "not every test binary that includes this module uses it"
)]
macro_rules! on_every_backend {
    (start: $start:path; test: #[$test:meta]; $($name:ident),* $(,)?) => {
        mod sqlite {
            // The test file's items, for `start`.
            use super::*;
            $(
                #[$test]
                async fn $name() {
                    super::$name($start(None).await).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[$test]
                async fn $name() {
                    let Ok(url) = std::env::var("ANCHOR_TEST_POSTGRES_URL") else {
                        eprintln!("ANCHOR_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
                        return;
                    };
                    let schema = format!("anchor_test_{}", uuid::Uuid::new_v4().simple());
                    let server = $start(Some((url.clone(), schema.clone()))).await;
                    super::$name(server).await;
                    super::support::drop_schema(&url, &schema).await;
                }
            )*
        }
    };
    (start: $start:path; $($name:ident),* $(,)?) => {
        on_every_backend!(start: $start; test: #[tokio::test]; $($name),*);
    };
    ($($name:ident),* $(,)?) => {
        on_every_backend!(start: Server::start; $($name),*);
    };
}
#[allow(
    unused_imports,
    reason = "not every test binary that includes this module uses it"
)]
pub(crate) use on_every_backend;

pub const PASSWORD: &str = "correct horse battery staple";
/// The password of every user `Server::add_user` makes.
pub const MEMBER_PASSWORD: &str = "a long enough password";

/// The management API as `user` (HTTP Basic; `admin` or a user made by `Server::add_user`); a
/// failure must come as a problem document.
pub async fn call(
    server: &Server,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let password = if user == "admin" {
        PASSWORD
    } else {
        MEMBER_PASSWORD
    };
    let mut request = server
        .http
        .request(method, format!("{}{path}", server.url))
        .basic_auth(user, Some(password));
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let problem = response
        .headers()
        .get("content-type")
        .is_some_and(|c| c.as_bytes() == b"application/problem+json");
    let text = response.text().await.unwrap();
    if status >= 400 {
        assert!(problem, "{status} without a problem body: {text}");
    }
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub struct Server {
    pub url: String,
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
            .to_string()
    }
}

/// `application/x-www-form-urlencoded`, as a browser sends a form.
pub fn form_body(fields: &[(&str, &str)]) -> String {
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                other => format!("%{other:02X}"),
            })
            .collect()
    }
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of the hidden field `name` in a page.
pub fn hidden_value(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden field {name} in the page"))
        + marker.len();
    body[at..at + body[at..].find('"').unwrap()].to_string()
}

/// The CSRF token the page's forms carry.
pub fn csrf_of(body: &str) -> String {
    hidden_value(body, "csrf")
}

pub async fn drop_schema(url: &str, schema: &str) {
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await
        .unwrap();
}

impl Server {
    /// A bootstrapped server (admin, project `default` with development, staging and
    /// production) on SQLite, or on PostgreSQL in `(url, schema)`.
    pub async fn start(postgres: Option<(String, String)>) -> Server {
        Server::start_with(postgres, None).await
    }

    /// As [`Server::start`], the rollout controller judging `metrics` every `tick`.
    pub async fn start_with(
        postgres: Option<(String, String)>,
        metrics: Option<(Arc<dyn anchor_server::releases::MetricSource>, Duration)>,
    ) -> Server {
        let store: Arc<dyn Store> = match postgres {
            None => {
                let dir =
                    std::env::temp_dir().join(format!("anchor-dashboard-{}", uuid::Uuid::new_v4()));
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
        let mut state = AppState::new(Arc::clone(&store)).unwrap();
        if let Some((metrics, tick)) = metrics {
            state = state.with_release_metrics(metrics, tick);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(launch(listener, state, async {
            let _ = stopped.await;
        }));
        let server = Server {
            url,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            store,
            _stop: stop,
        };
        for _ in 0..250 {
            if server.get("/readyz", None).await.status == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        reply(request).await
    }

    pub async fn post_form(
        &self,
        path: &str,
        cookie: Option<&str>,
        fields: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(fields));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        reply(request).await
    }

    /// Signs in through the dashboard's form; the `cookie` header value of the session.
    pub async fn sign_in(&self, username: &str, password: &str) -> String {
        let reply = self
            .post_form(
                "/sign-in",
                None,
                &[("username", username), ("password", password)],
            )
            .await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        reply
            .header("set-cookie")
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }

    /// The management API as the admin (HTTP Basic).
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .basic_auth("admin", Some(PASSWORD));
        if !body.is_null() {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A boolean flag with variants `on` and `off`, off everywhere.
    pub async fn api_create_flag(&self, key: &str, description: &str) {
        let (status, body) = self
            .api(
                reqwest::Method::POST,
                "/api/v1/projects/default/flags",
                serde_json::json!({"key": key, "kind": "boolean", "description": description,
                    "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// A user with this role in `default`, whose password is `MEMBER_PASSWORD`.
    pub async fn add_user(&self, username: &str, role: &str) {
        let (status, body) = self
            .api(
                reqwest::Method::POST,
                "/api/v1/users",
                serde_json::json!({"username": username, "password": MEMBER_PASSWORD}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .api(
                reqwest::Method::PUT,
                &format!("/api/v1/projects/default/members/{username}"),
                serde_json::json!({"role": role}),
            )
            .await;
        assert!(status == 200 || status == 204, "{status} {body}");
    }

    pub async fn enabled_in(&self, flag: &str, environment: &str) -> bool {
        let (status, config) = self
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/projects/default/environments/{environment}/flags/{flag}"),
                Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{config}");
        config["enabled"].as_bool().unwrap()
    }
}

async fn reply(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}
