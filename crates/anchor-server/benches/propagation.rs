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

use std::time::Instant;

use tokio::sync::mpsc;

mod support;
use support::{Bench, STREAMS_PER_KEY, env_number, ms};

/// Starts every event: the whole configuration on connect (`event: config`), then each change
/// (`event: patch`); heartbeats are comments and never match.
const MARKER: &[u8] = b"event: ";

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
    let bench = Bench::start("propagation", clients).await;

    let http = reqwest::Client::new();
    let opened = Instant::now();
    let mut receivers = Vec::with_capacity(clients);
    for i in 0..clients {
        let response = http
            .get(format!("{}/sdk/v1/stream", bench.base))
            .header("x-api-key", &bench.keys[i / STREAMS_PER_KEY])
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
    bench.rounds(rounds, &mut receivers, |_| {}).await;
    drop(receivers);
    bench.finish().await;
}
