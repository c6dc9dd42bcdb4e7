//! Memory per idle SDK stream: the server's resident set size (RSS) before and after `STREAMS`
//! (default 10,000) Server-Sent Event connections on `/sdk/v1/stream`.
//!
//! The server is the real `anchor` binary in its own process, so its RSS counts nothing of the
//! load generator. Streams are spread over server keys (each key may hold 100 streams); every
//! stream is counted only once it has received the whole configuration, then the connections
//! sit idle for two seconds before the second reading.
//!
//! `cargo bench -p anchor-cli --bench sse_memory` (`STREAMS=…` to change the count).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "bench password, not a secret";
const STREAMS_PER_KEY: usize = 100;

/// One request per connection; the JSON body of the answer.
fn call(addr: &str, method: &str, path: &str, auth: &str, body: &Value) -> Value {
    let mut stream = TcpStream::connect(addr).expect("the server accepts");
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
    stream
        .read_to_string(&mut response)
        .expect("the answer is read");
    let (_, rest) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    serde_json::from_str(rest).unwrap_or_else(|_| panic!("a JSON answer: {response}"))
}

/// The kernel's count of the process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is readable");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Opens one stream and returns it once the initial configuration has arrived.
async fn open(addr: String, key: String) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("the server accepts a stream");
    let request =
        format!("GET /sdk/v1/stream HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    while !seen.windows(13).any(|w| w == b"event: config") {
        let n = stream.read(&mut buffer).await.expect("the stream is read");
        assert!(
            n > 0,
            "the stream closed early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
        assert!(
            seen.starts_with(b"HTTP/1.1 200"),
            "the stream was refused: {}",
            String::from_utf8_lossy(&seen)
        );
    }
    stream
}

#[tokio::main]
#[allow(clippy::print_stdout, reason = "a benchmark binary prints its table")]
async fn main() {
    let streams: usize = std::env::var("STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
        .max(1);
    let dir = std::env::temp_dir().join(format!("anchor-sse-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_anchor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("ANCHOR_DATABASE_URL")
        .env_remove("ANCHOR_CONFIG")
        .env("ANCHOR_LOG", "warn")
        .env("ANCHOR_ADMIN_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the anchor binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server prints where it listens")
            .expect("readable stdout");
        if let Some(url) = line.strip_prefix("Listening on http://") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
    );
    let token = call(
        &addr,
        "POST",
        "/api/v1/tokens",
        &basic,
        &json!({"name": "bench"}),
    )["token"]
        .as_str()
        .expect("a token")
        .to_string();
    let bearer = format!("Bearer {token}");
    let keys: Vec<String> = (0..streams.div_ceil(STREAMS_PER_KEY))
        .map(|_| {
            call(
                &addr,
                "POST",
                "/api/v1/projects/default/environments/production/keys",
                &bearer,
                &json!({"kind": "server"}),
            )["key"]
                .as_str()
                .expect("an SDK key")
                .to_string()
        })
        .collect();

    // One stream first, so the reading before counts what a first connection warms up.
    let first = open(addr.clone(), keys[0].clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(child.id());
    let started = Instant::now();
    let mut held = vec![first];
    let mut opening = tokio::task::JoinSet::new();
    for i in 1..streams {
        opening.spawn(open(addr.clone(), keys[i / STREAMS_PER_KEY].clone()));
        // At most 1,000 connects in flight, so the listen backlog never overflows.
        while opening.len() >= 1_000 {
            if let Some(stream) = opening.join_next().await {
                held.push(stream.expect("a stream task"));
            }
        }
    }
    while let Some(stream) = opening.join_next().await {
        held.push(stream.expect("a stream task"));
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(child.id());
    let per = (after.saturating_sub(before)) as f64 / (streams - 1).max(1) as f64;

    println!("| streams | open in | RSS before | RSS after | per stream | target |");
    println!("|---:|---:|---:|---:|---:|---|");
    println!(
        "| {} | {:.2} s | {:.1} MiB | {:.1} MiB | {per:.1} KiB | ≤ 16 KiB |",
        held.len(),
        opened.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
    );

    drop(held);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
