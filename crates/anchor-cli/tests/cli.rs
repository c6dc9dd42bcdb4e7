//! The management commands as a user runs them: the real `anchor` binary against a real server
//! on a free port, each test with its own server, store and config directory. Every story runs
//! on SQLite and, when `ANCHOR_TEST_POSTGRES_URL` is set, on PostgreSQL in a fresh schema.

#[macro_use]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use support::*;

on_every_backend!(
    login_checks_the_token_and_stores_it_in_a_file_only_the_user_can_read,
    flags_are_created_listed_and_switched_on_and_off_per_environment,
    targeting_edits_change_what_a_context_is_served,
    errors_print_one_line_and_exit_with_the_documented_code,
    export_then_import_into_another_project_is_idempotent_and_dry_run_shows_the_diff,
    a_release_is_started_inspected_and_steered_by_flag_key,
    segments_and_sdk_keys_round_trip_and_a_secret_prints_once,
    a_change_in_an_environment_that_requires_approval_waits_for_someone_else,
    scan_joins_the_code_with_the_servers_flags_and_fails_a_ci_gate_on_stale_ones,
    environments_are_listed_created_changed_and_deleted,
    deleting_the_only_environment_or_one_with_a_release_under_way_prints_the_conflict,
    a_viewer_lists_environments_but_may_not_change_or_delete_them,
);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Server {
    /// `anchor ARGS` logged in by flags (the stored configuration is tested on its own).
    fn anchor(&self, args: &[&str]) -> Run {
        let mut full = vec!["--url", &self.url, "--token", &self.token];
        full.extend_from_slice(args);
        run(&self.config, &full, None)
    }

    fn create_project(&self, key: &str) {
        let (status, body) = http(
            &self.addr,
            "POST",
            "/api/v1/projects",
            &format!("Bearer {}", self.token),
            &json!({"key": key, "name": key}),
        );
        assert_eq!(status, 201, "{body}");
    }
}

fn run(config: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_anchor"));
    command
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("HOME", config)
        .env_remove("ANCHOR_URL")
        .env_remove("ANCHOR_TOKEN")
        .env_remove("ANCHOR_PROJECT")
        .env_remove("ANCHOR_ENV")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the anchor binary runs");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.unwrap_or("").as_bytes());
    }
    let output = child.wait_with_output().expect("the anchor binary ends");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A child's output, line by line, as it comes.
fn lines_of(output: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// Collects lines into `seen` until one contains `needle` (20 s at most).
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str, seen: &mut String) {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("`{needle}` never came; so far:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return;
        }
    }
}

fn enabled_in(record: &Value, env: &str) -> bool {
    record["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .find(|e| e["environment"] == env)
        .map(|e| e["config"]["enabled"] == true)
        .expect("a configuration in the environment")
}

fn login_checks_the_token_and_stores_it_in_a_file_only_the_user_can_read(server: Server) {
    let refused = run(
        &server.config,
        &["login", &server.url, "--token", "ra_nope"],
        None,
    );
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    let file = server.config.join("anchor/config.toml");
    assert!(!file.exists(), "a refused token is not stored");

    // The token comes from stdin when it is no terminal, and is never printed.
    let login = run(
        &server.config,
        &["login", &server.url],
        Some(&format!("{}\n", server.token)),
    )
    .ok();
    assert!(!login.stdout.contains(&server.token) && !login.stderr.contains(&server.token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("the config file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let stored = std::fs::read_to_string(&file).expect("readable");
    assert!(stored.contains(&server.url) && stored.contains(&server.token));

    // Stored credentials serve later commands; flags and the environment override them.
    let listed = run(&server.config, &["-o", "json", "flags", "list"], None).ok();
    assert_eq!(listed.json(), json!([]));
    let overridden = run(
        &server.config,
        &["--token", "ra_wrong", "flags", "list"],
        None,
    );
    assert_eq!(overridden.code, 3, "{}", overridden.stderr);
}

fn flags_are_created_listed_and_switched_on_and_off_per_environment(server: Server) {
    let created = server
        .anchor(&["flags", "create", "new-checkout", "--tag", "web"])
        .ok();
    assert!(
        created.stdout.contains("Created flag new-checkout"),
        "{}",
        created.stdout
    );
    server
        .anchor(&[
            "flags",
            "create",
            "banner",
            "--kind",
            "string",
            "--variant",
            "a=\"A\"",
            "--variant",
            "b=B",
            "--description",
            "the banner's text",
        ])
        .ok();

    let list = server.anchor(&["-o", "json", "flags", "list"]).ok().json();
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["flag"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["banner", "new-checkout"]);
    let banner = server
        .anchor(&["-o", "json", "flags", "get", "banner"])
        .ok()
        .json();
    assert_eq!(
        banner["flag"]["variants"],
        json!([{"name": "a", "value": "A"}, {"name": "b", "value": "B"}])
    );

    server
        .anchor(&[
            "flags",
            "on",
            "new-checkout",
            "--env",
            "production",
            "-m",
            "ship it",
        ])
        .ok();
    let record = server
        .anchor(&["-o", "json", "flags", "get", "new-checkout"])
        .ok()
        .json();
    assert!(enabled_in(&record, "production"));
    assert!(
        !enabled_in(&record, "development"),
        "the default environment is untouched"
    );
    let table = server
        .anchor(&["flags", "list", "--tag", "web"])
        .ok()
        .stdout;
    assert!(table.starts_with("KEY"), "{table}");
    assert!(
        table.contains("new-checkout") && !table.contains("banner"),
        "{table}"
    );

    server
        .anchor(&["flags", "off", "new-checkout", "-e", "production"])
        .ok();
    let record = server
        .anchor(&["-o", "json", "flags", "get", "new-checkout"])
        .ok()
        .json();
    assert!(!enabled_in(&record, "production"));
    let quiet = server.anchor(&["-q", "flags", "on", "new-checkout"]).ok();
    assert_eq!(quiet.stdout, "");

    server.anchor(&["flags", "archive", "banner"]).ok();
    let list = server.anchor(&["-o", "json", "flags", "list"]).ok().json();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "archived flags are not listed: {list}"
    );
}

fn targeting_edits_change_what_a_context_is_served(server: Server) {
    server.anchor(&["flags", "create", "checkout"]).ok();
    server
        .anchor(&["flags", "on", "checkout", "-e", "staging"])
        .ok();
    server
        .anchor(&["targeting", "serve", "checkout", "on", "-e", "staging"])
        .ok();
    server
        .anchor(&[
            "targeting",
            "rollout",
            "checkout",
            "on",
            "12.5",
            "-e",
            "staging",
        ])
        .ok();
    server
        .anchor(&[
            "targeting",
            "add-target",
            "checkout",
            "off",
            "u1",
            "u2",
            "-e",
            "staging",
        ])
        .ok();
    server
        .anchor(&[
            "targeting",
            "remove-target",
            "checkout",
            "u2",
            "-e",
            "staging",
        ])
        .ok();
    let config = server
        .anchor(&[
            "-o",
            "json",
            "targeting",
            "show",
            "checkout",
            "-e",
            "staging",
        ])
        .ok()
        .json();
    assert_eq!(
        config["defaultServe"],
        json!({"rollout": {"variants": [{"variant": "on", "weight": 12500}, {"variant": "off", "weight": 87500}]}})
    );
    assert_eq!(config["targets"], json!({"off": ["u1"]}));

    let explained = server
        .anchor(&[
            "evaluate",
            "checkout",
            "-e",
            "staging",
            "--context",
            r#"{"targetingKey": "u1"}"#,
            "--explain",
        ])
        .ok()
        .stdout;
    assert!(explained.contains("TARGETING_MATCH"), "{explained}");
    assert!(explained.contains("individual target"), "{explained}");

    let history = server
        .anchor(&["-o", "json", "history", "checkout", "-e", "staging"])
        .ok()
        .json();
    assert_eq!(history.as_array().unwrap().len(), 6);
    let diff = server
        .anchor(&["diff", "checkout", "1", "2", "-e", "staging"])
        .ok()
        .stdout;
    assert!(diff.contains("/enabled"), "{diff}");
    server
        .anchor(&["revert", "checkout", "1", "-e", "staging"])
        .ok();
    let config = server
        .anchor(&[
            "-o",
            "json",
            "targeting",
            "show",
            "checkout",
            "-e",
            "staging",
        ])
        .ok()
        .json();
    assert_eq!(config["enabled"], false);
    let audit = server
        .anchor(&["-o", "json", "audit", "--flag", "checkout"])
        .ok()
        .json();
    assert!(audit.as_array().unwrap().len() >= 7, "{audit}");
    // `--action` narrows it to what the revert wrote.
    let reverted = server
        .anchor(&[
            "-o",
            "json",
            "audit",
            "--flag",
            "checkout",
            "--action",
            "flag.reverted",
        ])
        .ok()
        .json();
    let actions: Vec<&str> = reverted
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["flag.reverted"], "{reverted}");
}

fn errors_print_one_line_and_exit_with_the_documented_code(server: Server) {
    // The server's validation problem, every field by its JSON pointer.
    let invalid = server.anchor(&[
        "flags",
        "create",
        "bad key",
        "--kind",
        "string",
        "--variant",
        "a=1",
    ]);
    assert_eq!(invalid.code, 1, "{}", invalid.stderr);
    assert_eq!(invalid.stderr.lines().count(), 1, "{}", invalid.stderr);
    assert!(
        invalid
            .stderr
            .starts_with("error: 422 Unprocessable Entity: /key: invalid flag key"),
        "{}",
        invalid.stderr
    );
    assert!(invalid.stderr.contains("/variants/0"), "{}", invalid.stderr);

    let missing = server.anchor(&["flags", "get", "nope"]);
    assert_eq!(missing.code, 4, "{}", missing.stderr);
    assert!(missing.stderr.contains("nope"), "{}", missing.stderr);

    let bad_context = server.anchor(&["evaluate", "x", "--context", "{not json"]);
    assert_eq!(bad_context.code, 2, "{}", bad_context.stderr);
    let bad_usage = server.anchor(&["flags", "frobnicate"]);
    assert_eq!(bad_usage.code, 2);

    // Nonsense is a usage error, never a panic.
    for args in [
        &["release", "status", "x", "--watch", "--interval", "NaN"][..],
        &["targeting", "rollout", "f", "on", "NaN"],
        &["targeting", "rollout", "f", "on", "101"],
        &["evaluate", "x", "--context", "[1]"],
        &["flags", "create", "f", "--variant", "novalue"],
    ] {
        let run = server.anchor(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
    }
    let not_an_export = server.config.join("not-an-export.json");
    std::fs::create_dir_all(&server.config).unwrap();
    std::fs::write(&not_an_export, "{\"flags\": 1}").unwrap();
    let import = server.anchor(&["import", not_an_export.to_str().unwrap()]);
    assert_eq!(import.code, 2, "{}", import.stderr);
    let bad_url = run(
        &server.config,
        &["--url", "ftp://x", "--token", "t", "flags", "list"],
        None,
    );
    assert_eq!(bad_url.code, 2, "{}", bad_url.stderr);

    let no_token = run(
        &server.config,
        &["--url", &server.url, "flags", "list"],
        None,
    );
    assert_eq!(no_token.code, 3, "{}", no_token.stderr);
    assert!(
        no_token.stderr.contains("anchor login"),
        "{}",
        no_token.stderr
    );
    let no_url = run(&server.config, &["flags", "list"], None);
    assert_eq!(no_url.code, 2, "{}", no_url.stderr);
}

#[test]
fn an_unreachable_server_is_a_clear_error_with_exit_code_5() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = temp_dir("unreachable");
    let url = format!("http://127.0.0.1:{port}");
    let run = run(
        &config,
        &["--url", &url, "--token", "t", "flags", "list"],
        None,
    );
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with(&format!("error: cannot reach the server at {url}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("refused"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1);
}

fn export_then_import_into_another_project_is_idempotent_and_dry_run_shows_the_diff(
    server: Server,
) {
    server
        .anchor(&["flags", "create", "checkout", "--tag", "web"])
        .ok();
    server
        .anchor(&[
            "flags",
            "create",
            "theme",
            "--kind",
            "string",
            "--variant",
            "dark=dark",
            "--variant",
            "light=light",
        ])
        .ok();
    server
        .anchor(&[
            "segments",
            "create",
            "beta",
            "-e",
            "production",
            "--include",
            "u1",
            "--description",
            "testers",
        ])
        .ok();
    server
        .anchor(&["flags", "on", "checkout", "-e", "production"])
        .ok();
    server
        .anchor(&[
            "targeting",
            "rollout",
            "checkout",
            "on",
            "25",
            "-e",
            "production",
        ])
        .ok();
    let dir = temp_dir("transfer-files");
    let json_file = dir.join("export.json");
    let yaml_file = dir.join("export.yaml");
    server
        .anchor(&["export", "--file", json_file.to_str().unwrap()])
        .ok();
    server
        .anchor(&[
            "export",
            "--format",
            "yaml",
            "--file",
            yaml_file.to_str().unwrap(),
        ])
        .ok();
    let stdout_export = server.anchor(&["export"]).ok().json();
    assert_eq!(stdout_export["flags"].as_array().unwrap().len(), 2);

    server.create_project("copy");
    let dry = server
        .anchor(&[
            "-p",
            "copy",
            "import",
            json_file.to_str().unwrap(),
            "--dry-run",
        ])
        .ok()
        .stdout;
    for expected in [
        "+ environment production",
        "+ segment beta in production",
        "+ flag checkout",
        "~ flag checkout in production",
        "~ /enabled false → true",
        "+ /defaultServe/rollout",
        "nothing was written",
    ] {
        assert!(dry.contains(expected), "`{expected}` missing from:\n{dry}");
    }
    assert!(
        !dry.contains("checkout in development"),
        "unchanged configurations are left out:\n{dry}"
    );
    let copy = server.anchor(&["-p", "copy", "-o", "json", "flags", "list"]);
    assert_eq!(
        copy.code, 0,
        "the dry run created nothing, not even environments: {}",
        copy.stderr
    );
    assert_eq!(copy.json(), json!([]));

    server
        .anchor(&["-p", "copy", "import", yaml_file.to_str().unwrap()])
        .ok();
    let again = server
        .anchor(&[
            "-p",
            "copy",
            "-o",
            "json",
            "import",
            json_file.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(again["changes"], 0, "{again}");
    let copied = server.anchor(&["-p", "copy", "export"]).ok().json();
    assert_eq!(copied["flags"], stdout_export["flags"]);
    assert_eq!(copied["segments"], stdout_export["segments"]);

    // A change in the source shows as exactly that change.
    server
        .anchor(&["flags", "off", "checkout", "-e", "production"])
        .ok();
    server
        .anchor(&["export", "--file", json_file.to_str().unwrap()])
        .ok();
    let dry = server
        .anchor(&[
            "-p",
            "copy",
            "-o",
            "json",
            "import",
            json_file.to_str().unwrap(),
            "--dry-run",
        ])
        .ok()
        .json();
    assert_eq!(dry["changes"], 1, "{dry}");
    assert_eq!(dry["steps"][0]["diff"], json!(["~ /enabled true → false"]));
}

fn a_release_is_started_inspected_and_steered_by_flag_key(server: Server) {
    server.anchor(&["flags", "create", "checkout"]).ok();
    server
        .anchor(&["flags", "on", "checkout", "-e", "production"])
        .ok();
    let started = server
        .anchor(&[
            "-o",
            "json",
            "release",
            "start",
            "checkout",
            "-e",
            "production",
            "--control",
            "off",
            "--treatment",
            "on",
        ])
        .ok()
        .json();
    assert_eq!(started["state"]["state"], "running", "{started}");
    let id = started["id"].as_str().unwrap();

    let status = server
        .anchor(&[
            "-o",
            "json",
            "release",
            "status",
            "checkout",
            "-e",
            "production",
        ])
        .ok()
        .json();
    assert_eq!(status["id"], id);
    assert_eq!(status["percentage"], 1.0);
    let table = server.anchor(&["release", "status", id]).ok().stdout;
    assert!(table.contains("stage            1 of 5"), "{table}");
    assert!(table.contains("1% of traffic to the treatment"), "{table}");

    let paused = server
        .anchor(&[
            "-o",
            "json",
            "release",
            "pause",
            "checkout",
            "-e",
            "production",
        ])
        .ok()
        .json();
    assert_eq!(paused["state"]["state"], "paused");
    let conflict = server.anchor(&["release", "pause", id]);
    assert_eq!(
        conflict.code, 1,
        "pausing twice is refused: {}",
        conflict.stderr
    );
    server.anchor(&["release", "rollback", id]).ok();
    let missing = server.anchor(&["release", "pause", "checkout", "-e", "production"]);
    assert_eq!(
        missing.code, 4,
        "no active release is left: {}",
        missing.stderr
    );

    // Watching follows a running release until it ends: each change is printed again.
    server
        .anchor(&[
            "release",
            "start",
            "checkout",
            "-e",
            "production",
            "--control",
            "off",
            "--treatment",
            "on",
        ])
        .ok();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_anchor"))
        .args([
            "--url",
            &server.url,
            "--token",
            &server.token,
            "release",
            "status",
            "checkout",
            "-e",
            "production",
            "--watch",
            "--interval",
            "0.2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the anchor binary runs");
    // Each step waits until the watcher has shown the state before, so no timing is assumed.
    let lines = lines_of(watch.stdout.take().expect("piped stdout"));
    let mut watched = String::new();
    wait_for_line(&lines, "state            running", &mut watched);
    server
        .anchor(&["release", "pause", "checkout", "-e", "production"])
        .ok();
    wait_for_line(&lines, "state            paused", &mut watched);
    server
        .anchor(&["release", "abort", "checkout", "-e", "production"])
        .ok();
    wait_for_line(&lines, "state            aborted", &mut watched);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while watch.try_wait().expect("waitable").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "--watch did not return after the release ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(watch.wait().expect("the watch ends").success());
    let views = watched.matches("release          ").count();
    assert!(
        views >= 3,
        "a view per change (running, paused, aborted):\n{watched}"
    );

    // Watching a finished release (the flag's latest) prints it once and returns.
    let watched = server
        .anchor(&[
            "release",
            "status",
            "checkout",
            "-e",
            "production",
            "--watch",
        ])
        .ok()
        .stdout;
    assert_eq!(watched.matches("release          ").count(), 1, "{watched}");
    assert!(watched.contains("state            aborted"), "{watched}");
    let list = server
        .anchor(&["-o", "json", "release", "status"])
        .ok()
        .json();
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2, "{list}");
    assert!(
        states.contains(&"rolledBack") && states.contains(&"aborted"),
        "{list}"
    );
}

fn segments_and_sdk_keys_round_trip_and_a_secret_prints_once(server: Server) {
    server
        .anchor(&[
            "segments",
            "create",
            "beta",
            "--include",
            "a",
            "--include",
            "b",
        ])
        .ok();
    server
        .anchor(&[
            "segments",
            "update",
            "beta",
            "--exclude",
            "a",
            "--description",
            "beta users",
        ])
        .ok();
    let segment = server
        .anchor(&["-o", "json", "segments", "get", "beta"])
        .ok()
        .json();
    assert_eq!(segment["segment"]["included"], json!(["b"]));
    assert_eq!(segment["segment"]["excluded"], json!(["a"]));
    assert_eq!(segment["segment"]["description"], "beta users");
    server.anchor(&["segments", "delete", "beta"]).ok();
    assert_eq!(server.anchor(&["segments", "get", "beta"]).code, 4);

    // A new key's secret is printed once: alone with --quiet, never in the list.
    let secret = server
        .anchor(&[
            "-q",
            "keys",
            "create",
            "--kind",
            "server",
            "-e",
            "production",
        ])
        .ok()
        .stdout;
    let secret = secret.trim();
    assert!(secret.len() > 20 && !secret.contains(' '), "{secret}");
    let keys = server
        .anchor(&["-o", "json", "keys", "list", "-e", "production"])
        .ok();
    assert!(!keys.stdout.contains(secret));
    let id = keys.json()[0]["id"].as_str().unwrap().to_string();
    server
        .anchor(&["keys", "revoke", &id, "-e", "production"])
        .ok();
    let keys = server
        .anchor(&["-o", "json", "keys", "list", "-e", "production"])
        .ok()
        .json();
    assert_eq!(keys[0]["revoked"], true);
    // The table says when each key was last used: this one never was.
    let table = server
        .anchor(&["keys", "list", "-e", "production"])
        .ok()
        .stdout;
    assert!(table.contains("LAST USED (UTC)"), "{table}");
    assert!(table.contains("never"), "{table}");

    assert_eq!(server.anchor(&["change-requests", "get", "nope"]).code, 4);
}

fn a_change_in_an_environment_that_requires_approval_waits_for_someone_else(server: Server) {
    let bearer = format!("Bearer {}", server.token);
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v1/projects/default/environments",
        &bearer,
        &json!({"key": "gated", "name": "Gated", "requiresApproval": true}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v1/users",
        &bearer,
        &json!({"username": "reviewer", "password": PASSWORD}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        &server.addr,
        "PUT",
        "/api/v1/projects/default/members/reviewer",
        &bearer,
        &json!({"role": "editor"}),
    );
    assert_eq!(status, 204, "{body}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("reviewer:{PASSWORD}"))
    );
    let (status, created) = http(
        &server.addr,
        "POST",
        "/api/v1/tokens",
        &basic,
        &json!({"name": "review"}),
    );
    assert_eq!(status, 201, "{created}");
    let reviewer_token = created["token"].as_str().unwrap();

    server.anchor(&["flags", "create", "checkout"]).ok();
    let held = server
        .anchor(&["flags", "on", "checkout", "-e", "gated", "-m", "please"])
        .ok()
        .stdout;
    assert!(
        held.contains("gated requires approval: change request"),
        "{held}"
    );
    let record = server
        .anchor(&["-o", "json", "flags", "get", "checkout"])
        .ok()
        .json();
    assert!(!enabled_in(&record, "gated"), "nothing changed yet");

    let requests = server
        .anchor(&["-o", "json", "change-requests", "list", "--status", "open"])
        .ok()
        .json();
    let id = requests[0]["id"].as_str().unwrap().to_string();
    let shown = server.anchor(&["change-requests", "get", &id]).ok().stdout;
    assert!(shown.contains("~ /enabled true"), "{shown}");

    let own = server.anchor(&["change-requests", "approve", &id]);
    assert_eq!(
        own.code, 3,
        "authors do not approve their own: {}",
        own.stderr
    );
    let approved = run(
        &server.config,
        &[
            "--url",
            &server.url,
            "--token",
            reviewer_token,
            "-o",
            "json",
            "change-requests",
            "approve",
            &id,
            "-m",
            "ok",
        ],
        None,
    )
    .ok()
    .json();
    assert_eq!(approved["status"], "approved");
    server.anchor(&["change-requests", "apply", &id]).ok();
    let record = server
        .anchor(&["-o", "json", "flags", "get", "checkout"])
        .ok()
        .json();
    assert!(enabled_in(&record, "gated"));
}

fn scan_joins_the_code_with_the_servers_flags_and_fails_a_ci_gate_on_stale_ones(server: Server) {
    let bearer = format!("Bearer {}", server.token);
    for key in ["checkout", "unused", "old-banner"] {
        let flag = json!({"key": key, "kind": "boolean",
            "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]});
        let (status, body) = http(
            &server.addr,
            "POST",
            "/api/v1/projects/default/flags",
            &bearer,
            &flag,
        );
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v1/projects/default/flags/old-banner/archive",
        &bearer,
        &Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    let code = temp_dir("scan-code");
    std::fs::create_dir_all(code.join("src")).unwrap();
    std::fs::create_dir_all(code.join("generated")).unwrap();
    std::fs::write(
        code.join("src/app.ts"),
        "const on = await client.getBooleanValue('checkout', false);\n\
         // client.getBooleanValue('unused', false) is only a comment\n\
         if (await client.getBooleanValue('old-banner', false)) { banner(); }\n",
    )
    .unwrap();
    std::fs::write(
        code.join("src/jobs.py"),
        "if client.get_boolean_value(\"ghost\", False):\n    run()\n",
    )
    .unwrap();
    // Ignored by .gitignore: its reference does not count.
    std::fs::write(code.join(".gitignore"), "generated/\n").unwrap();
    std::fs::write(
        code.join("generated/all.ts"),
        "client.getBooleanValue('unused', false)",
    )
    .unwrap();
    let dir = code.to_str().unwrap();

    // Offline: no server, no token; only what the code says.
    let offline = run(
        &server.config,
        &["scan", "--offline", dir, "-o", "json"],
        None,
    )
    .ok();
    let report = offline.json();
    let keys: Vec<(&str, u64)> = report["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["key"].as_str().unwrap(),
                f["references"].as_array().unwrap().len() as u64,
            )
        })
        .collect();
    assert_eq!(keys, [("checkout", 1), ("ghost", 1), ("old-banner", 1)]);
    assert_eq!(report["files"], 2, "the ignored file is not read: {report}");
    let first = &report["flags"][0]["references"][0];
    assert_eq!(
        (
            first["line"].as_u64(),
            first["column"].as_u64(),
            first["language"].as_str()
        ),
        (Some(1), Some(24), Some("javascript"))
    );
    assert!(first["file"].as_str().unwrap().ends_with("src/app.ts"));

    // With the server: each flag's staleness.
    let online = server.anchor(&["scan", dir, "-o", "json"]).ok();
    let stale: Vec<(String, Value)> = online.json()["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["key"].as_str().unwrap().to_string(), f["stale"].clone()))
        .collect();
    assert_eq!(
        stale,
        [
            ("checkout".to_string(), json!([])),
            ("ghost".to_string(), json!(["unknown"])),
            ("old-banner".to_string(), json!(["archived"])),
            ("unused".to_string(), json!(["unreferenced"])),
        ]
    );
    let table = server.anchor(&["scan", dir]).ok();
    assert!(
        table.stdout.contains("referenced nowhere in the code"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("not defined on the server"),
        "{}",
        table.stdout
    );

    // The CI gate: the documented exit code, the report still printed.
    let gate = server.anchor(&["scan", dir, "--fail-on-stale", "-q"]);
    assert_eq!(
        gate.code, 6,
        "stdout: {}\nstderr: {}",
        gate.stdout, gate.stderr
    );
    assert_eq!(gate.stderr.trim(), "error: 3 stale flags (--fail-on-stale)");
    let clean = temp_dir("scan-clean");
    std::fs::write(
        clean.join("main.go"),
        "v, _ := c.BooleanValue(ctx, \"checkout\", false, ec)\nw, _ := c.BooleanValue(ctx, \"unused\", false, ec)\n",
    )
    .unwrap();
    server
        .anchor(&["scan", clean.to_str().unwrap(), "--fail-on-stale", "-q"])
        .ok();

    // SARIF 2.1.0: a result per stale reference, each naming a declared rule and a place.
    let sarif = server.anchor(&["scan", dir, "-o", "sarif"]).ok().json();
    assert_eq!(sarif["version"], "2.1.0");
    assert!(sarif["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "anchor scan");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let results = run["results"].as_array().unwrap();
    let mut seen: Vec<(&str, &str, u64)> = Vec::new();
    for result in results {
        let rule = result["ruleId"].as_str().unwrap();
        let index = result["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index]["id"], rule, "ruleIndex points at its rule");
        assert!(rules[index]["shortDescription"]["text"].is_string());
        assert!(!result["message"]["text"].as_str().unwrap().is_empty());
        let location = &result["locations"][0]["physicalLocation"];
        let uri = location["artifactLocation"]["uri"].as_str().unwrap();
        let line = location["region"]["startLine"].as_u64().unwrap();
        assert!(location["region"]["startColumn"].as_u64().unwrap() >= 1);
        seen.push((rule, uri.rsplit('/').next().unwrap(), line));
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            ("anchor/archived-flag", "app.ts", 3),
            ("anchor/unknown-flag", "jobs.py", 1)
        ]
    );

    // Usage errors are told as such.
    let bad = server.anchor(&["scan", dir, "--pattern", "no-group"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let bad = server.anchor(&["flags", "list", "-o", "sarif"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

/// The project's environments as `anchor -o json envs list` gives them: (key, name,
/// position, requires approval, requires comment), in display order.
fn environments_of(server: &Server) -> Vec<(String, String, i64, bool, bool)> {
    let list = server.anchor(&["-o", "json", "envs", "list"]).ok().json();
    list.as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_string(),
                e["name"].as_str().unwrap().to_string(),
                e["position"].as_i64().unwrap(),
                e["requiresApproval"] == true,
                e["requiresComment"] == true,
            )
        })
        .collect()
}

fn keys_of(envs: &[(String, String, i64, bool, bool)]) -> Vec<&str> {
    envs.iter().map(|e| e.0.as_str()).collect()
}

/// A failed run: its exit code, and its one line on stderr, which starts with `start`.
fn refused(run: &Run, code: i32, start: &str) {
    assert_eq!(run.code, code, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(start),
        "`{start}` expected: {}",
        run.stderr
    );
}

fn environments_are_listed_created_changed_and_deleted(server: Server) {
    assert_eq!(
        keys_of(&environments_of(&server)),
        ["development", "staging", "production"]
    );
    let created = server
        .anchor(&["envs", "create", "qa", "--name", "QA", "--requires-comment"])
        .ok();
    assert!(
        created.stdout.contains("Created environment qa"),
        "{}",
        created.stdout
    );
    let table = server.anchor(&["envs", "list"]).ok().stdout;
    assert!(
        table
            .starts_with("KEY          NAME         POSITION  REQUIRES APPROVAL  REQUIRES COMMENT"),
        "{table}"
    );
    assert!(
        table.contains("qa           QA           3         no                 yes"),
        "{table}"
    );

    server
        .anchor(&[
            "envs",
            "update",
            "qa",
            "--name",
            "Quality",
            "--position",
            "0",
            "--requires-approval",
            "true",
        ])
        .ok();
    let envs = environments_of(&server);
    assert_eq!(
        envs[0],
        ("qa".to_string(), "Quality".to_string(), 0, true, true)
    );
    assert_eq!(
        keys_of(&envs),
        ["qa", "development", "staging", "production"]
    );

    // Lifting a safeguard needs a reason; the server's problem names the field.
    let lifted = server.anchor(&["envs", "update", "qa", "--requires-approval", "false"]);
    refused(&lifted, 1, "error: 422 Unprocessable Entity: /comment: ");
    server
        .anchor(&[
            "envs",
            "update",
            "qa",
            "--requires-approval",
            "false",
            "-m",
            "QA needs no gate",
        ])
        .ok();
    assert!(!environments_of(&server)[0].3);
    let out_of_range = server.anchor(&["envs", "update", "qa", "--position", "9"]);
    refused(
        &out_of_range,
        1,
        "error: 422 Unprocessable Entity: /position: ",
    );
    let nothing = server.anchor(&["envs", "update", "qa", "-m", "why"]);
    refused(&nothing, 2, "error: nothing to change");
    let not_a_bool = server.anchor(&["envs", "update", "qa", "--requires-comment", "maybe"]);
    assert_eq!(not_a_bool.code, 2, "{}", not_a_bool.stderr);

    // Without a terminal to ask, deleting needs --yes; nothing is deleted without it.
    let unconfirmed = server.anchor(&["envs", "delete", "qa"]);
    refused(
        &unconfirmed,
        2,
        "error: deleting environment `qa` cannot be undone",
    );
    assert!(
        unconfirmed.stderr.contains("--yes"),
        "{}",
        unconfirmed.stderr
    );
    assert_eq!(environments_of(&server).len(), 4);
    let deleted = server.anchor(&["envs", "delete", "qa", "--yes"]).ok();
    assert!(
        deleted.stdout.contains("Deleted environment qa"),
        "{}",
        deleted.stdout
    );
    assert_eq!(
        keys_of(&environments_of(&server)),
        ["development", "staging", "production"]
    );
    let gone = server.anchor(&["envs", "update", "qa", "--name", "QA"]);
    assert_eq!(gone.code, 4, "{}", gone.stderr);
}

fn deleting_the_only_environment_or_one_with_a_release_under_way_prints_the_conflict(
    server: Server,
) {
    server.create_project("solo");
    server
        .anchor(&["-p", "solo", "envs", "create", "only", "--name", "Only"])
        .ok();
    let only = server.anchor(&["-p", "solo", "envs", "delete", "only", "--yes"]);
    refused(&only, 1, "error: 409 Conflict: ");
    assert!(
        only.stderr
            .contains("`only` is the project's only environment"),
        "{}",
        only.stderr
    );

    server.anchor(&["flags", "create", "checkout"]).ok();
    server
        .anchor(&["flags", "on", "checkout", "-e", "production"])
        .ok();
    server
        .anchor(&[
            "release",
            "start",
            "checkout",
            "-e",
            "production",
            "--control",
            "off",
            "--treatment",
            "on",
        ])
        .ok();
    let releasing = server.anchor(&["envs", "delete", "production", "--yes"]);
    refused(&releasing, 1, "error: 409 Conflict: ");
    assert!(
        releasing
            .stderr
            .contains("release is still under way in `production`"),
        "{}",
        releasing.stderr
    );
    assert_eq!(environments_of(&server).len(), 3);
}

fn a_viewer_lists_environments_but_may_not_change_or_delete_them(server: Server) {
    let viewer = member_token(&server, "watcher", "viewer");
    let as_viewer = |args: &[&str]| {
        let mut full = vec!["--url", &server.url, "--token", &viewer];
        full.extend_from_slice(args);
        run(&server.config, &full, None)
    };
    let listed = as_viewer(&["-o", "json", "envs", "list"]).ok().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    refused(
        &as_viewer(&["envs", "update", "staging", "--name", "Stage"]),
        3,
        "error: 403 ",
    );
    refused(
        &as_viewer(&["envs", "create", "qa", "--name", "QA"]),
        3,
        "error: 403 ",
    );
    refused(
        &as_viewer(&["envs", "delete", "staging", "--yes"]),
        3,
        "error: 403 ",
    );
    assert_eq!(environments_of(&server)[1].1, "Staging");
}
