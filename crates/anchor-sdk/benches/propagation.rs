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

use std::time::{Duration, Instant};

use anchor_sdk::{ChangeEvent, Client, EvaluationContext};
use tokio::sync::mpsc;

#[path = "../../anchor-server/benches/support/mod.rs"]
mod support;
use support::{Bench, STREAMS_PER_KEY, env_number, ms};

#[tokio::main]
#[allow(clippy::print_stdout, reason = "a benchmark binary prints its table")]
async fn main() {
    let clients = env_number("CLIENTS", 1_000).max(1);
    let rounds = env_number("ROUNDS", 10).max(1);
    let bench = Bench::start("sdk-propagation", clients).await;

    let opened = Instant::now();
    let mut sdks = Vec::with_capacity(clients);
    let mut arrivals = Vec::with_capacity(clients);
    for i in 0..clients {
        let client = Client::builder(&bench.base, &bench.keys[i / STREAMS_PER_KEY])
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
    let user = EvaluationContext::with_targeting_key("user-1");
    bench
        .rounds(rounds, &mut arrivals, |enabled| {
            for client in &sdks {
                assert_eq!(
                    client.bool_value("checkout", &user, !enabled),
                    enabled,
                    "the client evaluates with the change"
                );
            }
        })
        .await;
    drop(sdks);
    bench.finish().await;
}
