//! Several servers sharing one PostgreSQL database, each on a real socket: what is committed
//! through one reaches the others' evaluations, streams and SDK-key checks within moments, also
//! after their connections to the database were cut.
//! Skipped without `ANCHOR_TEST_POSTGRES_URL` (SQLite has one process, so nothing to share).

use std::time::{Duration, Instant};

use anchor_server::{AppState, Secret, bootstrap, launch};
use anchor_store::{SqlStore, Store};
use base64::Engine;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
/// How long a change may take to reach another replica before the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// A running server.
struct Replica {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Replica {
    /// Starts a server on the schema (bootstrapping it first when `first`), ready to serve.
    async fn start(url: &str, schema: &str, first: bool) -> Replica {
        let store = SqlStore::open_postgres(url, Some(schema)).await.unwrap();
        if first {
            bootstrap(&store, Some(&Secret::new(PASSWORD)))
                .await
                .unwrap();
        }
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(launch(listener, AppState::new(store).unwrap(), async {
            let _ = stopped.await;
        }));
        let replica = Replica { base, stop, served };
        let client = reqwest::Client::new();
        eventually("the replica is ready", || async {
            let ready = client.get(format!("{}/readyz", replica.base)).send().await;
            ready.is_ok_and(|r| r.status() == 200).then_some(())
        })
        .await;
        replica
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.served.await.unwrap().unwrap();
    }
}

/// Calls `probe` until it answers `Some`, for at most [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn admin() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
    )
}

/// An API call as the admin: status and JSON body.
async fn call(method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method.parse().unwrap(), url)
        .header("authorization", admin());
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// An OFREP evaluation of `checkout` with the SDK key: status and the flag's value.
async fn evaluate(replica: &Replica, key: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/ofrep/v1/evaluate/flags/checkout", replica.base))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(json!({"context": {"targetingKey": "user-1"}}).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
    (status, body["value"].clone())
}

/// Reads the stream until a chunk contains `needle`.
async fn stream_until(stream: &mut reqwest::Response, needle: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if seen.contains(needle) {
                    return;
                }
            }
            other => panic!("no `{needle}` on the stream ({other:?}); saw: {seen}"),
        }
    }
}

#[tokio::test]
#[allow(clippy::print_stderr, reason = "a skipped test says why")]
async fn a_change_through_one_replica_reaches_the_others_evaluations_streams_and_key_checks() {
    let Ok(url) = std::env::var("ANCHOR_TEST_POSTGRES_URL") else {
        eprintln!("ANCHOR_TEST_POSTGRES_URL is not set: replicas not tested");
        return;
    };
    let bytes = anchor_server::auth::random_bytes::<8>().unwrap();
    let schema = format!(
        "anchor_replicas_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let a = Replica::start(&url, &schema, true).await;
    let b = Replica::start(&url, &schema, false).await;
    let project = |replica: &Replica| format!("{}/api/v1/projects/default", replica.base);

    // A flag and a server key, made through A after B has built its snapshots.
    let flag = json!({
        "key": "checkout", "kind": "boolean",
        "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]
    });
    let (status, body) = call("POST", format!("{}/flags", project(&a)), Some(flag)).await;
    assert_eq!(status, 201, "{body}");
    let keys = format!("{}/environments/production/keys", project(&a));
    let (status, created) = call("POST", keys.clone(), Some(json!({"kind": "server"}))).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let key_id = created["id"].as_str().unwrap().to_string();

    // B evaluates the new flag (disabled: off) and streams its environment.
    eventually("B knows the new flag", || async {
        (evaluate(&b, &key).await == (200, json!(false))).then_some(())
    })
    .await;
    let mut stream = reqwest::Client::new()
        .get(format!("{}/sdk/v1/stream", b.base))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    stream_until(&mut stream, "\"enabled\":false").await;

    // The flag is switched on through A: B's evaluations and B's stream follow.
    let config = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}});
    let (status, body) = call(
        "PUT",
        format!("{}/environments/production/flags/checkout", project(&a)),
        Some(config),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually("B serves the change made through A", || async {
        (evaluate(&b, &key).await == (200, json!(true))).then_some(())
    })
    .await;
    stream_until(&mut stream, "\"enabled\":true").await;

    // The key is revoked through A: B, which has it cached, refuses it promptly.
    let (status, body) = call("DELETE", format!("{keys}/{key_id}"), None).await;
    assert_eq!(status, 204, "{body}");
    eventually("B refuses the revoked key", || async {
        (evaluate(&b, &key).await.0 == 401).then_some(())
    })
    .await;

    // The replicas' change-feed connections die (a database restart, a network cut): they
    // reconnect, catch up, and hear changes again.
    use sqlx::{Connection, Executor, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let killed: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'anchor-change-feed' AND query LIKE '%anchor_changes_{schema}%'"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert_eq!(killed, 2, "the change feeds' connections");
    let (status, created) = call("POST", keys.clone(), Some(json!({"kind": "server"}))).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let config = json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}});
    let (status, body) = call(
        "PUT",
        format!("{}/environments/production/flags/checkout", project(&a)),
        Some(config),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "B serves a change made after its feed reconnected",
        || async { (evaluate(&b, &key).await == (200, json!(false))).then_some(()) },
    )
    .await;

    drop(stream);
    a.stop().await;
    b.stop().await;
    conn.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await
        .unwrap();
}
