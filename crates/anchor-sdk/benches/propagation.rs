//! Propagation through the SDK: how long a flag change takes, from the 2xx of the `PUT` that
//! makes it, until 1,000 `anchor_sdk::Client`s evaluate with it.
//!
//! Starts the real server on a loopback port (embedded SQLite in a temporary directory),
//! connects `CLIENTS` (default 1,000) SDK clients, each with its own connection, spread over
//! server keys (each key may hold 100 streams), then `ROUNDS` (default 10) times changes a
//! flag through the management API. A client counts as having the change when it announces
//! the new configuration to its change listeners, which it does right after swapping it in;
//! the bench then checks the value with `bool_value`. Prints p50, p99 and max per round and
//! over all rounds.
//!
//! `cargo bench -p anchor-sdk --bench propagation` (`CLIENTS=… ROUNDS=…` to change the setup).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anchor_engine::{Flag, FlagConfig};
use anchor_sdk::{ChangeEvent, Client, EvaluationContext};
use anchor_server::{AppState, Secret, auth, bootstrap, launch};
use anchor_store::{Actor, NewSdkKey, SdkKeyKind, SqlStore, Store};
use serde_json::json;
use tokio::sync::mpsc;

const PASSWORD: &str = "bench password, not a secret";
const STREAMS_PER_KEY: usize = 100;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
#[allow(clippy::print_stdout, reason = "a benchmark binary prints its table")]
async fn main() {
    let clients = env_number("CLIENTS", 1_000).max(1);
    let rounds = env_number("ROUNDS", 10).max(1);

    let dir = std::env::temp_dir().join(format!("anchor-sdk-propagation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let store: Arc<dyn Store> = Arc::new(
        SqlStore::open_sqlite(&dir.join("anchor.db"))
            .await
            .expect("the store"),
    );
    bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
        .await
        .expect("bootstrap");
    let actor = Actor::system("bench");
    let flag: Flag = serde_json::from_value(json!({"key": "checkout", "kind": "boolean",
        "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]}))
    .expect("a flag");
    let config: FlagConfig = serde_json::from_value(
        json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}}),
    )
    .expect("a configuration");
    store
        .create_flag(&actor, "default", &flag, &config)
        .await
        .expect("the flag is created");
    let mut keys = Vec::new();
    for _ in 0..clients.div_ceil(STREAMS_PER_KEY) {
        let secret = format!("anc_srv_{}", auth::random_token_body().expect("randomness"));
        store
            .create_sdk_key(
                &actor,
                &NewSdkKey {
                    project: "default".into(),
                    environment: "production".into(),
                    kind: SdkKeyKind::Server,
                    key_hash: auth::token_hash(&secret),
                    prefix: secret.chars().take(12).collect(),
                },
            )
            .await
            .expect("an SDK key");
        keys.push(secret);
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(launch(
        listener,
        AppState::new(store).expect("the app state"),
        async {
            let _ = stopped.await;
        },
    ));

    let opened = Instant::now();
    let mut sdks = Vec::with_capacity(clients);
    let mut arrivals = Vec::with_capacity(clients);
    for i in 0..clients {
        let client = Client::builder(&base, &keys[i / STREAMS_PER_KEY])
            .telemetry(false)
            .init_timeout(Duration::from_secs(30))
            .build()
            .await
            .expect("an SDK client");
        let mut changes = client.changes();
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = changes.recv().await {
                if matches!(event, ChangeEvent::Configuration { .. })
                    && sender.send(Instant::now()).is_err()
                {
                    return;
                }
            }
        });
        sdks.push(client);
        arrivals.push(receiver);
    }
    println!(
        "{clients} SDK clients connected and holding the configuration after {}",
        ms(opened.elapsed())
    );

    let http = reqwest::Client::new();
    let uri = format!("{base}/api/v1/projects/default/environments/production/flags/checkout");
    let user = EvaluationContext::with_targeting_key("user-1");
    let mut all = Vec::with_capacity(clients * rounds);
    let mut from_sending = Vec::with_capacity(clients * rounds);
    println!();
    println!("| round | PUT until its 2xx | after the 2xx: p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|");
    for round in 1..=rounds {
        let enabled = round % 2 == 1;
        let sent = Instant::now();
        let reply = http
            .put(&uri)
            .basic_auth("admin", Some(PASSWORD))
            .header("content-type", "application/json")
            .body(
                json!({"enabled": enabled, "offVariant": "off", "defaultServe": {"variant": "on"}})
                    .to_string(),
            )
            .send()
            .await
            .expect("the change");
        assert!(
            reply.status().is_success(),
            "the change: {}",
            reply.status()
        );
        let acknowledged = Instant::now();
        let mut latencies = Vec::with_capacity(clients);
        for (client, receiver) in sdks.iter().zip(&mut arrivals) {
            let arrived = receiver.recv().await.expect("the changed configuration");
            assert_eq!(
                client.bool_value("checkout", &user, !enabled),
                enabled,
                "the client evaluates with the change"
            );
            // A client may have the change before the writer sees its 2xx: that counts as 0.
            latencies.push(arrived.saturating_duration_since(acknowledged));
            from_sending.push(arrived - sent);
        }
        latencies.sort();
        println!(
            "| {round} | {} | {} | {} | {} |",
            ms(acknowledged - sent),
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 99.0)),
            ms(*latencies.last().expect("a latency"))
        );
        all.extend(latencies);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all.sort();
    from_sending.sort();
    println!(
        "| all | | {} | {} | {} |",
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 99.0)),
        ms(*all.last().expect("a latency"))
    );
    println!(
        "| all, from sending the PUT | | {} | {} | {} |",
        ms(percentile(&from_sending, 50.0)),
        ms(percentile(&from_sending, 99.0)),
        ms(*from_sending.last().expect("a latency"))
    );

    let _ = stop.send(());
    drop(sdks);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = std::fs::remove_dir_all(&dir);
}
