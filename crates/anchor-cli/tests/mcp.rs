//! `anchor mcp` driven by a real MCP client, the official Python SDK (tests/mcp_client.py),
//! over stdio and streamable HTTP, against a real server on a free port (SQLite and, when
//! `ANCHOR_TEST_POSTGRES_URL` is set, PostgreSQL). Needs python3 with the `mcp` package
//! (`.ci/run` installs it); without them the tests fail, saying so. Over HTTP every caller
//! sends its own token (`MCP_BEARER` for the script), and the tools act with it.

#[macro_use]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use support::*;

on_every_backend!(
    every_tool_works_over_stdio_and_http_and_a_gated_write_becomes_a_change_request,
    a_viewer_token_is_refused_a_write,
    over_http_each_caller_acts_with_their_own_token_and_none_is_refused,
);

/// Runs tests/mcp_client.py and returns its JSON report; fails clearly when python3 or the
/// `mcp` package is missing, so a machine without them never passes silently.
fn client(args: &[&str], env: &[(&str, &str)], config: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py");
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .args(args)
        .env_remove("ANCHOR_URL")
        .env_remove("ANCHOR_TOKEN")
        .env_remove("ANCHOR_PROJECT")
        .env_remove("ANCHOR_ENV")
        .env("XDG_CONFIG_HOME", config)
        .env("HOME", config);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!("python3 must be installed to test `anchor mcp` with a real MCP client: {e}")
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("MISSING-MCP-PACKAGE"),
        "the Python `mcp` package is missing: python3 -m pip install mcp==2.3.0 (see .ci/run)\n{stderr}"
    );
    assert!(output.status.success(), "mcp_client.py failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("mcp_client.py printed no JSON ({e}): {stdout}\n{stderr}"))
}

/// The call to `tool` numbered `nth` (from 0) among the calls to that tool.
fn call<'a>(report: &'a Value, tool: &str, nth: usize) -> &'a Value {
    report["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["tool"] == tool)
        .nth(nth)
        .unwrap_or_else(|| panic!("no call {nth} of {tool}: {report}"))
}

fn ok(report: &Value, tool: &str, nth: usize) -> Value {
    let called = call(report, tool, nth);
    assert_eq!(called["isError"], false, "{tool}: {called}");
    let text = called["text"].as_str().unwrap_or("");
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn error<'a>(report: &'a Value, tool: &str, nth: usize) -> &'a str {
    let called = call(report, tool, nth);
    assert_eq!(called["isError"], true, "{tool} should fail: {called}");
    called["text"].as_str().unwrap_or("")
}

/// `anchor mcp --http` on a free port, and its URL; the child is killed when dropped.
struct HttpMcp {
    child: std::process::Child,
    url: String,
}

impl Drop for HttpMcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_mcp(env: &[(&str, &str)], config: &Path) -> HttpMcp {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_anchor"));
    command
        .args(["mcp", "--http", &listen])
        .env_remove("ANCHOR_URL")
        .env_remove("ANCHOR_TOKEN")
        .env_remove("ANCHOR_PROJECT")
        .env_remove("ANCHOR_ENV")
        .env("XDG_CONFIG_HOME", config)
        .env("HOME", config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("anchor mcp --http starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("streamable HTTP on") => break,
            Some(Ok(_)) => {}
            other => panic!("anchor mcp --http ended before listening: {other:?}"),
        }
    }
    // Drain the rest so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    HttpMcp {
        child,
        url: format!("http://{listen}/mcp"),
    }
}

fn every_tool_works_over_stdio_and_http_and_a_gated_write_becomes_a_change_request(server: Server) {
    let bearer = format!("Bearer {}", server.token);
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v1/projects/default/environments",
        &bearer,
        &json!({"key": "gated", "name": "Gated", "requiresApproval": true}),
    );
    assert_eq!(status, 201, "{body}");
    let code = temp_dir("code");
    std::fs::create_dir_all(code.join("src")).unwrap();
    std::fs::write(
        code.join("src/checkout.ts"),
        "if (await client.getBooleanValue('checkout', false)) {}\n",
    )
    .unwrap();
    let code = code.to_string_lossy().into_owned();
    let env = [
        ("ANCHOR_URL", server.url.as_str()),
        ("ANCHOR_TOKEN", server.token.as_str()),
    ];

    let report = client(
        &["stdio", env!("CARGO_BIN_EXE_anchor"), "full", &code],
        &env,
        &server.config,
    );
    check_full(&report, &server.url);

    // Streamable HTTP, in a second project so the same story starts afresh.
    server_project(&server, "web");
    for (key, gated) in [("production", false), ("gated", true)] {
        let (status, body) = http(
            &server.addr,
            "POST",
            "/api/v1/projects/web/environments",
            &bearer,
            &json!({"key": key, "name": key, "requiresApproval": gated}),
        );
        assert_eq!(status, 201, "{body}");
    }
    let mcp = http_mcp(
        &[
            ("ANCHOR_URL", server.url.as_str()),
            ("ANCHOR_PROJECT", "web"),
        ],
        &server.config,
    );
    let report = client(
        &["http", &mcp.url, "full", &code],
        &[("MCP_BEARER", &server.token)],
        &server.config,
    );
    check_full(&report, &server.url);
    let audit = ok(&report, "read_audit_log", 0);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["project"] != "default"),
        "the HTTP server acts in project web: {audit}"
    );
}

fn server_project(server: &Server, key: &str) {
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v1/projects",
        &format!("Bearer {}", server.token),
        &json!({"key": key, "name": key}),
    );
    assert_eq!(status, 201, "{body}");
}

fn check_full(report: &Value, url: &str) {
    let tools = report["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 15, "{tools:?}");
    let annotations = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no tool {name}"))["annotations"]
            .clone()
    };
    assert_eq!(annotations("toggle_flag")["destructiveHint"], true);
    assert_eq!(annotations("toggle_flag")["idempotentHint"], true);
    assert_eq!(annotations("rollback_release")["destructiveHint"], true);
    assert_eq!(annotations("list_flags")["readOnlyHint"], true);
    assert_eq!(annotations("list_environments")["readOnlyHint"], true);
    let schema = &tools.iter().find(|t| t["name"] == "set_rollout").unwrap()["inputSchema"];
    assert!(
        schema["properties"]["percent"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("0 to 100")),
        "{schema}"
    );

    assert_eq!(ok(report, "create_flag", 0)["flag"]["key"], "checkout");
    let listed = ok(report, "list_flags", 0);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(listed[0]["flag"]["key"], "checkout", "{listed}");
    // Both projects' environments end with `gated`, added last; only it requires approval.
    let environments = ok(report, "list_environments", 0);
    let environments = environments.as_array().expect("environments");
    let gated = environments.last().expect("environments");
    assert_eq!(gated["key"], "gated", "{environments:?}");
    assert_eq!(gated["requiresApproval"], true, "{environments:?}");
    assert!(
        environments[..environments.len() - 1]
            .iter()
            .all(|e| e["requiresApproval"] == false),
        "{environments:?}"
    );
    assert_eq!(
        ok(report, "get_flag", 0)["flag"]["description"],
        "the new checkout"
    );
    assert!(error(report, "get_flag", 1).starts_with("404"));
    let toggled = ok(report, "toggle_flag", 0);
    assert_eq!(toggled["applied"], true, "{toggled}");
    assert_eq!(toggled["result"]["enabled"], true, "{toggled}");
    let targeted = ok(report, "update_targeting", 0);
    assert_eq!(targeted["result"]["targets"]["on"], json!(["user-1"]));
    let rollout = ok(report, "set_rollout", 0);
    assert_eq!(
        rollout["result"]["defaultServe"]["rollout"]["variants"][0],
        json!({"variant": "on", "weight": 25000})
    );
    assert_eq!(
        error(report, "set_rollout", 1),
        "percent must be between 0 and 100, not 150"
    );
    assert!(error(report, "create_flag", 2).contains("a string flag needs its variants"));
    let explained = ok(report, "explain_evaluation", 0);
    let evaluation = &explained["explanation"]["evaluation"];
    assert_eq!(evaluation["variant"], "on", "{explained}");
    assert_eq!(evaluation["reason"], "TARGETING_MATCH", "{explained}");
    let started = ok(report, "start_release", 0);
    assert_eq!(started["result"]["state"]["state"], "running", "{started}");
    let release = ok(report, "get_release", 0);
    assert_eq!(release["id"], started["result"]["id"]);
    assert_eq!(ok(report, "pause_release", 0)["state"]["state"], "paused");
    let rolled = ok(report, "rollback_release", 0);
    assert_ne!(rolled["state"]["state"], "running", "{rolled}");
    let audit = ok(report, "read_audit_log", 0);
    assert!(!audit.as_array().expect("entries").is_empty(), "{audit}");
    let stale = ok(report, "find_stale_flags", 0);
    let stale_flags: Vec<&str> = stale["stale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["flag"].as_str().unwrap())
        .collect();
    assert_eq!(stale_flags, ["unused-banner"], "{stale}");
    let ts = ok(report, "generate_flag_code", 0);
    let ts = ts.as_str().expect("code");
    assert!(
        ts.contains("getBooleanValue(\"checkout\", false, context)"),
        "{ts}"
    );
    assert!(ts.contains(&format!("baseUrl: \"{url}\"")), "{ts}");
    let rust = ok(report, "generate_flag_code", 1);
    assert!(
        rust.as_str()
            .unwrap()
            .contains("client.bool_value(\"checkout\"")
    );
    let held = ok(report, "toggle_flag", 1);
    assert_eq!(held["applied"], false, "{held}");
    assert!(
        held["message"]
            .as_str()
            .is_some_and(|m| m.contains("gated requires approval") && m.contains("change request")),
        "{held}"
    );
    assert!(held["changeRequest"]["id"].is_string(), "{held}");
}

fn a_viewer_token_is_refused_a_write(server: Server) {
    server_flag(&server, "checkout");
    let viewer = member_token(&server, "watcher", "viewer");
    let report = client(
        &["stdio", env!("CARGO_BIN_EXE_anchor"), "toggle"],
        &[("ANCHOR_URL", &server.url), ("ANCHOR_TOKEN", &viewer)],
        &server.config,
    );
    assert_eq!(ok(&report, "get_flag", 0)["flag"]["key"], "checkout");
    let refused = error(&report, "toggle_flag", 0);
    assert!(refused.starts_with("403"), "{refused}");
}

/// One HTTP server shared by several callers: each is served with exactly what its own token
/// may do. It is started with the admin's token in ANCHOR_TOKEN, which must never be used.
fn over_http_each_caller_acts_with_their_own_token_and_none_is_refused(server: Server) {
    server_flag(&server, "checkout");
    let viewer = member_token(&server, "watcher", "viewer");
    let editor = member_token(&server, "author", "editor");
    let mcp = http_mcp(
        &[("ANCHOR_URL", &server.url), ("ANCHOR_TOKEN", &server.token)],
        &server.config,
    );
    let addr = mcp
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp");

    for authorization in [
        None,
        Some("Basic YWRtaW46eA=="),
        Some("Bearer "),
        Some("Bearer a b"),
    ] {
        let (status, headers, body) = post_mcp(addr, addr, authorization);
        assert_eq!(status, 401, "{authorization:?}: {body}");
        assert!(
            headers.contains("www-authenticate: bearer realm="),
            "{authorization:?}: {headers}"
        );
        assert!(
            headers.contains("content-type: application/problem+json"),
            "{headers}"
        );
        let problem: Value = serde_json::from_str(&body).expect("a problem");
        assert_eq!(problem["status"], 401, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("the Authorization header is")),
            "{problem}"
        );
    }
    let anonymous = client(&["http", &mcp.url, "toggle"], &[], &server.config);
    assert!(anonymous["refused"].is_string(), "{anonymous}");
    // The DNS-rebinding guard still holds for a caller with a token.
    let (status, _, body) = post_mcp(addr, "evil.example", Some(&format!("Bearer {editor}")));
    assert_eq!(status, 403, "{body}");

    let report = client(
        &["http", &mcp.url, "toggle"],
        &[("MCP_BEARER", &viewer)],
        &server.config,
    );
    assert_eq!(ok(&report, "get_flag", 0)["flag"]["key"], "checkout");
    let refused = error(&report, "toggle_flag", 0);
    assert!(refused.starts_with("403"), "{refused}");

    let report = client(
        &["http", &mcp.url, "toggle"],
        &[("MCP_BEARER", &editor)],
        &server.config,
    );
    let toggled = ok(&report, "toggle_flag", 0);
    assert_eq!(toggled["applied"], true, "{toggled}");
    assert_eq!(toggled["result"]["enabled"], true, "{toggled}");

    let report = client(
        &["http", &mcp.url, "toggle"],
        &[("MCP_BEARER", "anc_pat_not-a-real-token")],
        &server.config,
    );
    for tool in ["get_flag", "toggle_flag"] {
        let refused = error(&report, tool, 0);
        assert!(refused.starts_with("401"), "{tool}: {refused}");
    }

    // Within one session each request still acts with its own token, not the first one's.
    let (status, head, body) = post_mcp(addr, addr, Some(&format!("Bearer {editor}")));
    assert_eq!(status, 200, "{body}");
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .expect("a session id")
        .trim()
        .to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, body) = post_mcp_message(
        addr,
        addr,
        Some(&format!("Bearer {editor}")),
        Some(&session),
        &initialized,
    );
    assert_eq!(status, 202, "{body}");
    for (id, token, allowed) in [(2, &editor, true), (3, &viewer, false), (4, &editor, true)] {
        let toggle = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "toggle_flag",
            "arguments": {"flag": "checkout", "environment": "production", "on": false}}});
        let (status, _, body) = post_mcp_message(
            addr,
            addr,
            Some(&format!("Bearer {token}")),
            Some(&session),
            &toggle,
        );
        assert_eq!(status, 200, "{body}");
        let answer: Value = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str(data.trim()).ok())
            .find(|m: &Value| m["id"] == id)
            .unwrap_or_else(|| panic!("no answer to call {id}: {body}"));
        let result = &answer["result"];
        assert_eq!(result["isError"], !allowed, "call {id}: {answer}");
        if !allowed {
            let text = result["content"][0]["text"].as_str().unwrap_or("");
            assert!(text.starts_with("403"), "call {id}: {text}");
        }
    }
}

/// An MCP `initialize` POSTed by hand, to see the status, the headers (lowercased) and the
/// body that an SDK would hide.
fn post_mcp(addr: &str, host: &str, authorization: Option<&str>) -> (u16, String, String) {
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}});
    post_mcp_message(addr, host, authorization, None, &initialize)
}

/// One JSON-RPC message POSTed by hand, in the session given if any.
fn post_mcp_message(
    addr: &str,
    host: &str,
    authorization: Option<&str>,
    session: Option<&str>,
    message: &Value,
) -> (u16, String, String) {
    let body = message.to_string();
    let mut headers = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    if let Some(session) = session {
        headers.push_str(&format!(
            "Mcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\n"
        ));
    }
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\
         Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(addr).expect("anchor mcp accepts");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("a timeout");
    stream.write_all(request.as_bytes()).expect("sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("an answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let status = head[9..12].parse().expect("a status");
    (status, head.to_lowercase(), body.to_string())
}

fn server_flag(server: &Server, key: &str) {
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v1/projects/default/flags",
        &format!("Bearer {}", server.token),
        &json!({"key": key, "kind": "boolean",
                "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]}),
    );
    assert_eq!(status, 201, "{body}");
}

#[test]
fn without_a_server_or_a_token_the_tools_are_listed_and_each_call_fails_clearly() {
    let config = temp_dir("offline");
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for transport in ["stdio", "http"] {
        let env = [("ANCHOR_URL", url.as_str()), ("ANCHOR_TOKEN", "ra_pat_x")];
        let report = if transport == "stdio" {
            client(
                &["stdio", env!("CARGO_BIN_EXE_anchor"), "offline"],
                &env,
                &config,
            )
        } else {
            let mcp = http_mcp(&env[..1], &config);
            client(
                &["http", &mcp.url, "offline"],
                &[("MCP_BEARER", "ra_pat_x")],
                &config,
            )
        };
        assert_eq!(report["tools"].as_array().map(Vec::len), Some(15));
        let message = error(&report, "get_flag", 0);
        assert!(
            message.starts_with(&format!("cannot reach the server at {url}")),
            "{message}"
        );
    }
    let report = client(
        &["stdio", env!("CARGO_BIN_EXE_anchor"), "offline"],
        &[],
        &config,
    );
    assert_eq!(report["tools"].as_array().map(Vec::len), Some(15));
    assert!(error(&report, "get_flag", 0).contains("no server: run `anchor login <url>`"));
    let report = client(
        &["stdio", env!("CARGO_BIN_EXE_anchor"), "offline"],
        &[("ANCHOR_URL", &url)],
        &config,
    );
    assert!(error(&report, "get_flag", 0).contains("no token"));
}
