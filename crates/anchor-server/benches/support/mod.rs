//! What the propagation benchmarks share (this crate's, over raw SDK streams, and
//! `anchor-sdk`'s, over SDK clients, which includes this file): the real server on a loopback
//! port (embedded SQLite in a temporary directory) with one flag and enough server keys, the
//! rounds of changes with their timing, and the table.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchor_engine::{Flag, FlagConfig};
use anchor_server::{AppState, Secret, auth, bootstrap, launch};
use anchor_store::{Actor, NewSdkKey, SdkKeyKind, SqlStore, Store};
use serde_json::json;
use tokio::sync::mpsc;

const PASSWORD: &str = "bench password, not a secret";
/// Each SDK key may hold 100 streams.
pub const STREAMS_PER_KEY: usize = 100;

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A running server with the flag `checkout` (boolean, disabled, default serve `on`).
pub struct Bench {
    pub base: String,
    /// Server keys, one per `STREAMS_PER_KEY` clients.
    pub keys: Vec<String>,
    /// A personal access token: a password would cost an Argon2 check on every change.
    token: String,
    http: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    dir: PathBuf,
}

impl Bench {
    pub async fn start(name: &str, clients: usize) -> Bench {
        let dir = std::env::temp_dir().join(format!("anchor-{name}-{}", std::process::id()));
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
        Bench {
            base,
            keys,
            token,
            http,
            stop,
            server,
            dir,
        }
    }

    /// `rounds` times turns `checkout` on or off through the management API and times, for
    /// each receiver, the interval from the change's 2xx to the instant it reports; `check` then
    /// runs with whether the flag is now enabled. Prints p50, p99 and max per round and over all
    /// rounds, and how long each change took.
    #[allow(clippy::print_stdout, reason = "a benchmark binary prints its table")]
    pub async fn rounds(
        &self,
        rounds: usize,
        receivers: &mut [mpsc::UnboundedReceiver<Instant>],
        check: impl Fn(bool),
    ) {
        let uri = format!(
            "{}/api/v1/projects/default/environments/production/flags/checkout",
            self.base
        );
        let mut all = Vec::with_capacity(receivers.len() * rounds);
        // The stricter measure, which also counts the write itself.
        let mut from_sending = Vec::with_capacity(receivers.len() * rounds);
        println!();
        println!("| round | PUT until its 2xx | after the 2xx: p50 | p99 | max |");
        println!("|---:|---:|---:|---:|---:|");
        for round in 1..=rounds {
            let enabled = round % 2 == 1;
            let sent = Instant::now();
            let reply = self
                .http
                .put(&uri)
                .bearer_auth(&self.token)
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
            let mut latencies = Vec::with_capacity(receivers.len());
            for receiver in receivers.iter_mut() {
                let arrived = receiver.recv().await.expect("the change");
                // A receiver may have the change before the writer has its 2xx: that counts
                // as 0.
                latencies.push(arrived.saturating_duration_since(acknowledged));
                from_sending.push(arrived - sent);
            }
            check(enabled);
            latencies.sort();
            println!(
                "| {round} | {} | {} | {} | {} |",
                ms(acknowledged - sent),
                ms(percentile(&latencies, 50.0)),
                ms(percentile(&latencies, 99.0)),
                ms(*latencies.last().expect("a latency"))
            );
            all.extend(latencies);
            // Let the receivers go quiet so rounds do not overlap.
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
    }

    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
