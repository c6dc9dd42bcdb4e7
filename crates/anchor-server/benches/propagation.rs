//! Propagation: how long a flag change takes to reach every server-side SDK stream.
//!
//! Starts the real server on a port (embedded SQLite in a temporary directory), opens
//! `CLIENTS` (default 1,000) Server-Sent Event streams on `/sdk/v1/stream` spread over server
//! keys (each key may hold 100 streams), then `ROUNDS` (default 10) times changes a flag's
//! configuration through the management API and times, for each stream, the interval from
//! the `PUT`'s 2xx to the stream holding the change (a patch). Prints p50, p99 and max per
//! round and over all rounds, and how long each `PUT` took.
//!
//! `cargo bench -p anchor-server --bench propagation` (`CLIENTS=… ROUNDS=…` to change the setup).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anchor_engine::{Flag, FlagConfig};
use anchor_server::{AppState, Secret, auth, bootstrap, launch};
use anchor_store::{Actor, NewSdkKey, SdkKeyKind, SqlStore, Store};
use serde_json::json;
use tokio::sync::mpsc;

const PASSWORD: &str = "bench password, not a secret";
const STREAMS_PER_KEY: usize = 100;
/// Starts every event: the whole configuration on connect (`event: config`), then each change
/// (`event: patch`); heartbeats are comments and never match.
const MARKER: &[u8] = b"event: ";

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

/// Reads one stream and reports the instant each event (configuration or patch) arrives.
async fn follow(response: reqwest::Response, arrivals: mpsc::UnboundedSender<Instant>) {
    let mut response = response;
    // The marker may straddle two chunks: keep the end of the previous one.
    let mut carry: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let now = Instant::now();
        carry.extend_from_slice(&chunk);
        let found = carry.windows(MARKER.len()).filter(|w| *w == MARKER).count();
        for _ in 0..found {
            if arrivals.send(now).is_err() {
                return;
            }
        }
        // Fewer bytes than the marker cannot hold a counted marker, but may start the next one.
        let keep = (MARKER.len() - 1).min(carry.len());
        carry.drain(..carry.len() - keep);
    }
}

#[tokio::main]
#[allow(clippy::print_stdout, reason = "a benchmark binary prints its table")]
async fn main() {
    let clients = env_number("CLIENTS", 1_000).max(1);
    let rounds = env_number("ROUNDS", 10).max(1);

    let dir = std::env::temp_dir().join(format!("anchor-propagation-{}", std::process::id()));
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

    let http = reqwest::Client::new();
    let token = http
        .post(format!("{base}/api/v1/tokens"))
        .basic_auth("admin", Some(PASSWORD))
        .header("content-type", "application/json")
        .body(json!({"name": "bench"}).to_string())
        .send()
        .await
        .expect("a token request")
        .bytes()
        .await
        .expect("a token");
    let token = serde_json::from_slice::<serde_json::Value>(&token).expect("JSON")["token"]
        .as_str()
        .expect("the token's secret")
        .to_string();

    let opened = Instant::now();
    let mut receivers = Vec::with_capacity(clients);
    for i in 0..clients {
        let response = http
            .get(format!("{base}/sdk/v1/stream"))
            .header("x-api-key", &keys[i / STREAMS_PER_KEY])
            .send()
            .await
            .expect("a stream");
        assert!(
            response.status().is_success(),
            "stream {i}: {}",
            response.status()
        );
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(follow(response, sender));
        receivers.push(receiver);
    }
    // Every stream first receives the whole configuration.
    for receiver in &mut receivers {
        receiver.recv().await.expect("the initial configuration");
    }
    println!(
        "{clients} streams open and holding the configuration after {}",
        ms(opened.elapsed())
    );

    let uri = format!("{base}/api/v1/projects/default/environments/production/flags/checkout");
    let mut all = Vec::with_capacity(clients * rounds);
    // The stricter measure, which also counts the write itself.
    let mut from_sending = Vec::with_capacity(clients * rounds);
    println!();
    println!("| round | PUT until its 2xx | after the 2xx: p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|");
    for round in 1..=rounds {
        let enabled = round % 2 == 1;
        let sent = Instant::now();
        let reply = http
            .put(&uri)
            .bearer_auth(&token)
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
        for receiver in &mut receivers {
            let arrived = receiver.recv().await.expect("the changed configuration");
            // A stream may see the change before the writer sees its 2xx: that counts as 0.
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
        // Let the streams go quiet so rounds do not overlap.
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
    drop(receivers);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = std::fs::remove_dir_all(&dir);
}
