//! `cargo bench -p anchor-store --bench writes`: flag configuration writes per second, each
//! with its revision, audit entry and environment revision in one transaction.
//!
//! SQLite always (a fresh file in the temp directory); PostgreSQL too when
//! `ANCHOR_TEST_POSTGRES_URL` is set (in a fresh schema, dropped afterwards). One writer, then
//! four concurrent writers on different flags; then both again with each write carrying its
//! `flag.changed` event to three subscribed webhooks (the transactional outbox's cost); prints a
//! table.

use std::sync::Arc;
use std::time::Instant;

use anchor_engine::{Flag, FlagConfig};
use anchor_store::{
    Actor, ConfigChange, NewEnvironment, NewWebhook, OutboxEvent, SqlStore, Store, WebhookFormat,
};
use serde_json::json;

const FLAGS: usize = 100;

/// A name, the store, and the PostgreSQL URL and schema to drop afterwards.
type Backend = (&'static str, Arc<dyn Store>, Option<(String, String)>);
const WRITES: usize = 2_000;

async fn seed(store: &dyn Store) {
    let admin = Actor::user("bench");
    store
        .create_project(&admin, "bench", "Bench")
        .await
        .unwrap();
    for env in ["development", "production"] {
        store
            .create_environment(
                &admin,
                "bench",
                &NewEnvironment {
                    key: env.into(),
                    name: env.into(),
                    requires_approval: false,
                    requires_comment: false,
                },
            )
            .await
            .unwrap();
    }
    for i in 0..FLAGS {
        let flag: Flag = serde_json::from_value(json!({
            "key": format!("flag-{i:03}"), "kind": "boolean",
            "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]
        }))
        .unwrap();
        store
            .create_flag(&admin, "bench", &flag, &config(0))
            .await
            .unwrap();
    }
}

/// A realistic configuration: a rule and a rollout whose share changes with `n`.
fn config(n: usize) -> FlagConfig {
    let share = (n % 100) as u32 * 1_000;
    serde_json::from_value(json!({
        "enabled": true, "offVariant": "off",
        "rules": [{"id": "staff", "conditions": [
            {"attribute": "email", "operator": "ends_with", "values": ["@example.com"]}
        ], "serve": {"variant": "on"}}],
        "defaultServe": {"rollout": {"variants": [
            {"variant": "on", "weight": share}, {"variant": "off", "weight": 100_000 - share}
        ]}}
    }))
    .unwrap()
}

/// Three enabled webhooks subscribed to every event, so that each event makes three deliveries.
async fn subscribe(store: &dyn Store) {
    for i in 0..3 {
        let webhook = NewWebhook {
            name: format!("hook-{i}"),
            url: format!("https://hooks.example.com/{i}"),
            secret: format!("whsec_bench_{i}"),
            events: vec!["*".into()],
            format: WebhookFormat::Json,
            enabled: true,
        };
        store
            .create_webhook(&Actor::user("bench"), "bench", &webhook)
            .await
            .unwrap();
    }
}

async fn writes(store: Arc<dyn Store>, writers: usize, announced: bool) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let actor = Actor::user(format!("writer-{w}"));
            for n in (w..WRITES).step_by(writers) {
                let flag = format!("flag-{:03}", n % FLAGS);
                let config = config(n);
                let data = json!({"flag": flag, "environment": "production", "actor": actor});
                store
                    .update_flag_config(&ConfigChange {
                        actor: &actor,
                        project: "bench",
                        environment: "production",
                        flag: &flag,
                        config: &config,
                        expected_version: None,
                        comment: None,
                        action: "flag.config.updated",
                        event: announced.then_some(OutboxEvent {
                            event_type: "flag.changed",
                            data: &data,
                        }),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    WRITES as f64 / start.elapsed().as_secs_f64()
}

#[allow(clippy::print_stdout, reason = "a benchmark binary prints its table")]
#[tokio::main]
async fn main() {
    let mut backends: Vec<Backend> = Vec::new();
    let dir = std::env::temp_dir().join(format!("anchor-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap();
    backends.push(("SQLite (WAL)", Arc::new(sqlite), None));
    if let Ok(url) = std::env::var("ANCHOR_TEST_POSTGRES_URL") {
        let schema = format!("anchor_bench_{}", uuid::Uuid::new_v4().simple());
        let pg = SqlStore::open_postgres(&url, Some(&schema)).await.unwrap();
        backends.push(("PostgreSQL", Arc::new(pg), Some((url, schema))));
    }
    println!("| backend | writers | event to 3 webhooks | writes/s |");
    println!("|---|---:|---|---:|");
    for (name, store, cleanup) in backends {
        seed(store.as_ref()).await;
        for announced in [false, true] {
            if announced {
                subscribe(store.as_ref()).await;
            }
            for writers in [1, 4] {
                let rate = writes(Arc::clone(&store), writers, announced).await;
                let event = if announced { "yes" } else { "no" };
                println!("| {name} | {writers} | {event} | {rate:.0} |");
            }
        }
        if let Some((url, schema)) = cleanup {
            drop(store);
            use sqlx::{Connection, Executor};
            let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
            conn.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .await
                .unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
