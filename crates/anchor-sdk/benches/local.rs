//! `cargo bench -p anchor-sdk --bench local`: the SDK's local evaluation against the engine's
//! own, for the engine's benchmark scenarios (a) to (e), measured in one run.
//!
//! The client is a real server-connected client, evaluation counting on, exactly as an
//! application runs it: a stub server on loopback answers its stream with the scenario's
//! configuration (and nothing else, so telemetry, which is sent once a minute, never goes out
//! during the measurement). For each scenario it times 15 rounds and prints the medians in
//! nanoseconds per evaluation of `anchor_engine::evaluate_bool` on a snapshot and of
//! `Client::bool_value`, and their ratio (target: at most 1.5).

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anchor_engine::{EvaluationContext, Snapshot, evaluate_bool};
use anchor_sdk::Client;
use serde_json::Value;

#[allow(
    dead_code,
    reason = "shared with the engine's benchmarks, which use all of it"
)]
#[path = "../../anchor-engine/benches/fixtures.rs"]
mod fixtures;

/// Answers every request on a loopback port with an SSE stream holding one `config` event,
/// then keeps the connection open.
fn stub_server(config: &Value) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().expect("an address");
    let mut payload = config.clone();
    payload["revision"] = Value::from(1);
    let body = format!(
        "event: config\nid: 1\ndata: {}\n\n",
        serde_json::to_string(&payload).expect("json")
    );
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(
                format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n{body}")
                    .as_bytes(),
            );
            open.push(stream);
        }
    });
    format!("http://{address}")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn time(rounds: usize, per_round: usize, run: impl Fn(usize)) -> f64 {
    run(per_round / 10);
    median(
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                run(per_round);
                start.elapsed().as_nanos() as f64 / per_round as f64
            })
            .collect(),
    )
}

#[allow(clippy::print_stdout, reason = "a benchmark binary prints its table")]
fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let connect = |config: &Value| {
        let url = stub_server(config);
        runtime
            .block_on(
                Client::builder(url, "bench-key")
                    .init_timeout(Duration::from_secs(30))
                    .build(),
            )
            .expect("the client gets the configuration")
    };
    let small_client = connect(&fixtures::small_config());
    let many_client = connect(&fixtures::many_config());
    let small = fixtures::small_snapshot();
    let many = fixtures::many_snapshot();
    let contexts = fixtures::contexts();
    let many_keys = fixtures::many_keys();
    let scenarios: Vec<(&str, &Snapshot, &Client, Vec<String>)> = vec![
        (
            "(a) on for everyone",
            &small,
            &small_client,
            vec!["always-on".into()],
        ),
        (
            "(b) 50/50 rollout",
            &small,
            &small_client,
            vec!["half".into()],
        ),
        (
            "(c) 3 conditions, 25%",
            &small,
            &small_client,
            vec!["targeted".into()],
        ),
        ("(d) (b) among 1,000 flags", &many, &many_client, many_keys),
        (
            "(e) segment, 100k keys",
            &small,
            &small_client,
            vec!["in-segment".into()],
        ),
    ];
    println!("| scenario | engine `evaluate_bool` ns | `Client::bool_value` ns | ratio | target |");
    println!("|---|---:|---:|---:|---:|");
    for (name, snapshot, client, keys) in &scenarios {
        let pairs: Vec<(&EvaluationContext, &str)> = contexts
            .iter()
            .enumerate()
            .map(|(i, c)| (c, keys[i % keys.len()].as_str()))
            .collect();
        let mask = pairs.len() - 1;
        let per_round = 1_000_000;
        let engine = time(15, per_round, |n| {
            for i in 0..n {
                let (ctx, key) = pairs[i & mask];
                black_box(evaluate_bool(snapshot, black_box(key), ctx, false).value);
            }
        });
        let sdk = time(15, per_round, |n| {
            for i in 0..n {
                let (ctx, key) = pairs[i & mask];
                black_box(client.bool_value(black_box(key), ctx, false));
            }
        });
        println!(
            "| {name} | {engine:.1} | {sdk:.1} | {:.2} | ≤ 1.50 |",
            sdk / engine
        );
    }
}
