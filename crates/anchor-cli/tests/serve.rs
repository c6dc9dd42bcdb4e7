//! `anchor serve` as a user runs it: a real process on a real port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

struct Server {
    child: Child,
    addr: String,
    /// Everything printed to stdout up to "Listening on".
    banner: String,
}

fn start(data_dir: &Path, admin_password: Option<&str>) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_anchor"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("ANCHOR_DATABASE_URL")
        .env_remove("ANCHOR_CONFIG")
        .env("ANCHOR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match admin_password {
        Some(p) => command.env("ANCHOR_ADMIN_PASSWORD", p),
        None => command.env_remove("ANCHOR_ADMIN_PASSWORD"),
    };
    let mut child = command.spawn().expect("the anchor binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = String::new();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server prints where it listens")
            .expect("readable stdout");
        banner.push_str(&line);
        banner.push('\n');
        if let Some(url) = line.strip_prefix("Listening on http://") {
            break url.to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server {
        child,
        addr,
        banner,
    }
}

impl Server {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited on") {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A minimal HTTP/1.1 client: one request per connection. `None` when the connection fails
/// (the server is gone).
fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(auth) = auth {
        request.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let (head, rest) = response.split_once("\r\n\r\n")?;
    // A chunked body: keep the JSON between its first bracket and its last.
    let text = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let start = rest.find(['{', '[']).unwrap_or(0);
        let end = rest.rfind(['}', ']']).map_or(rest.len(), |e| e + 1);
        &rest[start..end.max(start)]
    } else {
        rest
    };
    Some((
        status,
        serde_json::from_str(text).unwrap_or(Value::String(text.to_string())),
    ))
}

fn http(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    try_http(addr, method, path, auth, body).expect("the server answers")
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("anchor-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

#[test]
fn the_first_start_prints_a_one_time_password_and_the_second_prints_no_secret() {
    let dir = temp_dir("first-start");
    let server = start(&dir, None);
    assert!(
        server.banner.contains("one-time password"),
        "{}",
        server.banner
    );
    let password = server
        .banner
        .split("one-time password: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a password in the banner")
        .to_string();
    assert!(dir.join("anchor.db").exists());
    assert_eq!(http(&server.addr, "GET", "/healthz", None, None).0, 200);
    assert_eq!(http(&server.addr, "GET", "/readyz", None, None).0, 200);
    let (status, _) = http(
        &server.addr,
        "POST",
        "/api/v1/tokens",
        Some(&basic("admin", &password)),
        Some(&json!({"name": "cli"})),
    );
    assert_eq!(status, 201, "the printed password signs in");
    server.signal("-TERM");
    assert!(server.wait().success(), "SIGTERM is a clean shutdown");

    let again = start(&dir, None);
    assert!(!again.banner.contains("password"), "{}", again.banner);
    assert!(!again.banner.contains(&password));
    again.signal("-INT");
    assert!(again.wait().success());
}

#[test]
fn a_bad_configuration_is_refused_before_the_port_is_bound() {
    let output = Command::new(env!("CARGO_BIN_EXE_anchor"))
        .args([
            "serve",
            "--listen",
            "nowhere",
            "--database-url",
            "mysql://x",
        ])
        .env_remove("ANCHOR_ADMIN_PASSWORD")
        .output()
        .expect("the anchor binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen address `nowhere`"), "{stderr}");
    assert!(stderr.contains("postgres://"), "{stderr}");
}

/// Writes acknowledged with a 2xx survive `kill -9`: a restarted server holds every one.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = temp_dir("kill-9");
    let server = start(&dir, Some(PASSWORD));
    let (status, token) = http(
        &server.addr,
        "POST",
        "/api/v1/tokens",
        Some(&basic("admin", PASSWORD)),
        Some(&json!({"name": "writer"})),
    );
    assert_eq!(status, 201);
    let auth = format!("Bearer {}", token["token"].as_str().expect("a token"));
    let variants: Vec<Value> = (0..50)
        .map(|i| json!({"name": format!("v{i}"), "value": i}))
        .collect();
    let (status, _) = http(
        &server.addr,
        "POST",
        "/api/v1/projects/default/flags",
        Some(&auth),
        Some(&json!({"key": "f", "kind": "number", "variants": variants})),
    );
    assert_eq!(status, 201);

    // A writer thread changes the flag as fast as it can and records every acknowledged write.
    let addr = server.addr.clone();
    let writer_auth = auth.clone();
    let writer = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0..100_000 {
            let config = json!({"enabled": true, "offVariant": "v0",
                                "defaultServe": {"variant": format!("v{}", i % 50)}});
            match try_http(
                &addr,
                "PUT",
                "/api/v1/projects/default/environments/production/flags/f",
                Some(&writer_auth),
                Some(&config),
            ) {
                Some((200, body)) => acknowledged.push(body["version"].as_u64().unwrap_or(0)),
                _ => break,
            }
        }
        acknowledged
    });
    std::thread::sleep(Duration::from_millis(1500));
    server.signal("-KILL");
    let _ = server.wait();
    let acknowledged = writer.join().expect("the writer thread ends");
    assert!(
        acknowledged.len() > 20,
        "only {} writes before the kill",
        acknowledged.len()
    );

    let restarted = start(&dir, Some(PASSWORD));
    let (status, config) = http(
        &restarted.addr,
        "GET",
        "/api/v1/projects/default/environments/production/flags/f",
        Some(&auth),
        None,
    );
    assert_eq!(status, 200);
    let last = *acknowledged.last().expect("some writes");
    assert!(
        config["version"].as_u64().unwrap_or(0) >= last,
        "{config} < {last}"
    );
    let (_, revisions) = http(
        &restarted.addr,
        "GET",
        "/api/v1/projects/default/environments/production/flags/f/revisions",
        Some(&auth),
        None,
    );
    let stored: Vec<u64> = revisions
        .as_array()
        .expect("a list of revisions")
        .iter()
        .filter_map(|r| r["version"].as_u64())
        .collect();
    for v in &acknowledged {
        assert!(stored.contains(v), "acknowledged version {v} was lost");
    }
    restarted.signal("-TERM");
    assert!(restarted.wait().success());
}

/// SIGTERM lets a request in flight finish: its answer arrives and its write is kept.
#[test]
fn a_request_in_flight_finishes_after_sigterm() {
    let dir = temp_dir("in-flight");
    let server = start(&dir, Some(PASSWORD));
    let (_, token) = http(
        &server.addr,
        "POST",
        "/api/v1/tokens",
        Some(&basic("admin", PASSWORD)),
        Some(&json!({"name": "t"})),
    );
    let auth = format!("Bearer {}", token["token"].as_str().expect("a token"));
    let body = json!({"key": "late", "kind": "boolean",
                      "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]})
    .to_string();
    // Send the headers and half the body, then signal, then the rest.
    let mut stream = TcpStream::connect(&server.addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a timeout");
    let head = format!(
        "POST /api/v1/projects/default/flags HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Authorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).expect("writes");
    stream.write_all(first.as_bytes()).expect("writes");
    std::thread::sleep(Duration::from_millis(300));
    server.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    stream
        .write_all(rest.as_bytes())
        .expect("the server still reads");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("an answer");
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(server.wait().success());

    let restarted = start(&dir, Some(PASSWORD));
    let (status, _) = http(
        &restarted.addr,
        "GET",
        "/api/v1/projects/default/flags/late",
        Some(&auth),
        None,
    );
    assert_eq!(status, 200, "the acknowledged write was kept");
    restarted.signal("-TERM");
    assert!(restarted.wait().success());
}

/// An open SDK stream does not hold up shutdown: SIGTERM ends it and the server exits.
#[test]
fn open_sdk_streams_end_when_the_server_stops() {
    let dir = temp_dir("streams");
    let server = start(&dir, Some(PASSWORD));
    let (_, token) = http(
        &server.addr,
        "POST",
        "/api/v1/tokens",
        Some(&basic("admin", PASSWORD)),
        Some(&json!({"name": "t"})),
    );
    let auth = format!("Bearer {}", token["token"].as_str().expect("a token"));
    let (status, key) = http(
        &server.addr,
        "POST",
        "/api/v1/projects/default/environments/production/keys",
        Some(&auth),
        Some(&json!({"kind": "server"})),
    );
    assert_eq!(status, 201);
    let key = key["key"].as_str().expect("an SDK key").to_string();
    let mut stream = TcpStream::connect(&server.addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a timeout");
    let request = format!(
        "GET /sdk/v1/stream HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).expect("writes");
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.contains("event: config") {
        let n = stream.read(&mut buffer).expect("reads the stream");
        assert!(n > 0, "the stream closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    server.signal("-TERM");
    assert!(
        server.wait().success(),
        "the server stopped despite the open stream"
    );
}
