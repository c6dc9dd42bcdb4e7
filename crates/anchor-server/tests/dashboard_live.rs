//! The release page's charts and coverage, starting a release from the dashboard, and the live
//! updates stream, through the real HTTP surface (a server on a real port, SDK telemetry
//! posted as SDKs post it, the controller ticking every 50 ms on what the store holds).

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anchor_rollout::{CoverageObservations, Observations};
use anchor_server::releases::{MetricSource, StoreMetrics};
use anchor_store::{ReleaseRecord, Store};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{PASSWORD, Server, csrf_of, on_every_backend};

on_every_backend!(
    start: judging;
    the_release_page_charts_each_guardrail_over_time_against_its_tolerance,
    the_release_page_marks_thinly_treated_values_in_the_coverage_table,
    a_release_started_from_the_flag_page_shows_problems_next_to_fields_then_runs,
    the_live_stream_needs_a_session_and_tells_of_flag_and_release_changes,
);

/// The server's own telemetry store as the controller's metric source, as `anchor serve` has
/// it; the store exists only once the server does, so it is handed over after the start.
struct StoreBacked(Arc<OnceLock<Arc<dyn Store>>>);

#[async_trait::async_trait]
impl MetricSource for StoreBacked {
    async fn observe(
        &self,
        release: &ReleaseRecord,
        from_ms: i64,
        to_ms: i64,
        share: f64,
    ) -> Result<Observations, String> {
        let store = self.0.get().ok_or("the store is not there yet")?;
        StoreMetrics(Arc::clone(store))
            .observe(release, from_ms, to_ms, share)
            .await
    }

    async fn coverage(
        &self,
        release: &ReleaseRecord,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<CoverageObservations>, String> {
        let store = self.0.get().ok_or("the store is not there yet")?;
        StoreMetrics(Arc::clone(store))
            .coverage(release, from_ms, to_ms)
            .await
    }
}

/// A server whose controller judges the SDK telemetry in its store every 50 ms.
async fn judging(postgres: Option<(String, String)>) -> Server {
    let slot = Arc::new(OnceLock::new());
    let metrics: Arc<dyn MetricSource> = Arc::new(StoreBacked(Arc::clone(&slot)));
    let server = Server::start_with(postgres, Some((metrics, Duration::from_millis(50)))).await;
    let _ = slot.set(Arc::clone(&server.store));
    server
}

/// `checkout` on in production, serving `off` to everyone.
async fn checkout(server: &Server) {
    server.api_create_flag("checkout", "Checkout").await;
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/production/flags/checkout",
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn put_template(server: &Server, key: &str, template: Value) {
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/default/release-templates/{key}"),
            json!({"name": key, "template": template}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn start_release(server: &Server, template: &str) -> String {
    let (status, release) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"template": template, "control": "off", "treatment": "on"}),
        )
        .await;
    assert_eq!(status, 201, "{release}");
    release["id"].as_str().unwrap().to_string()
}

async fn server_key(server: &Server) -> String {
    let (status, key) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments/production/keys",
            json!({"kind": "server"}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().unwrap().to_string()
}

/// The start of the minute after this one: a stage counts the minutes that began after it
/// started, and the ingestion accepts minutes a little ahead of the server's clock.
fn next_minute() -> u64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
        + 1)
        * 60
}

async fn post_outcomes(server: &Server, key: &str, batch: &str, outcomes: Value) {
    let reply = server
        .http
        .post(format!("{}/sdk/v1/telemetry", server.url))
        .bearer_auth(key)
        .json(&json!({"batchId": batch, "evaluations": [], "outcomes": outcomes}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
}

/// The release as the API shows it, once `check` holds (or after five seconds).
async fn release_until(server: &Server, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, release) = server
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/projects/default/releases/{id}"),
                Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{release}");
        if check(&release) {
            return release;
        }
        last = release;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the release never got there: {last}");
}

/// The `<svg …>…</svg>` of each guardrail chart in a page.
fn charts(body: &str) -> Vec<&str> {
    body.match_indices("<svg class=\"guardrail-chart\"")
        .map(|(at, _)| &body[at..at + body[at..].find("</svg>").unwrap()])
        .collect()
}

async fn the_release_page_charts_each_guardrail_over_time_against_its_tolerance(server: Server) {
    checkout(&server).await;
    put_template(
        &server,
        "watched",
        json!({
            "stages": [{"percentage": 50.0, "dwellMs": 600000}, {"percentage": 100.0, "dwellMs": 1}],
            "guardrails": {"guardrails": [
                {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.2},
                {"name": "strict error rate", "kind": "errorRate", "maxRelativeIncrease": 0.05}
            ]}
        }),
    )
    .await;
    let key = server_key(&server).await;
    let id = start_release(&server, "watched").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let path = format!("/projects/default/releases/{id}");
    let page = server.get(&path, Some(&session)).await;
    assert!(
        charts(&page.body).is_empty(),
        "no telemetry, no chart: {}",
        page.body
    );

    // Two minutes of healthy telemetry, the second posted after the controller judged the
    // first: each minute is a point of the chart.
    let minute = next_minute();
    let row = |minute: u64, variant: &str, errors: u64| {
        json!({"minute": minute, "flag": "checkout", "variant": variant,
               "exposures": 5000, "requests": 20000, "errors": errors})
    };
    post_outcomes(
        &server,
        &key,
        "m-1",
        json!([row(minute, "off", 200), row(minute, "on", 190)]),
    )
    .await;
    let judged = release_until(&server, &id, |r| r["reportedAt"].is_i64()).await;
    assert_eq!(judged["report"]["checks"].as_array().unwrap().len(), 2);
    post_outcomes(
        &server,
        &key,
        "m-2",
        json!([row(minute + 60, "off", 240), row(minute + 60, "on", 210)]),
    )
    .await;

    let page = server.get(&path, Some(&session)).await;
    assert_eq!(page.status, StatusCode::OK);
    let found = charts(&page.body);
    assert_eq!(found.len(), 2, "one chart per guardrail: {}", page.body);
    for (chart, name) in found.iter().zip(["error rate", "strict error rate"]) {
        assert!(
            chart.contains("<title id=") && chart.contains(&format!("{name} over time")),
            "{chart}"
        );
        assert_eq!(
            chart.matches("class=\"chart-tolerance\"").count(),
            1,
            "{chart}"
        );
        // The two minutes, each judged as the controller judges: estimate and interval.
        assert!(
            chart.matches("chart-point chart-estimate").count() >= 2,
            "{chart}"
        );
        assert!(chart.matches("class=\"chart-ci\"").count() >= 2, "{chart}");
        assert!(
            chart.contains("chart-treatment") && chart.contains("chart-control"),
            "{chart}"
        );
        // The stage the release started with is marked where it began.
        assert!(
            chart.contains("class=\"chart-stage\"") && chart.contains(">50%<"),
            "{chart}"
        );
        assert!(chart.contains("time (UTC)"), "{chart}");
        // The error rate is judged as a ratio: its line of no change is 1, and it says so.
        assert!(chart.contains("ratio of error rates"), "{chart}");
        assert!(chart.contains("class=\"chart-zero\""), "{chart}");
    }
    // The text alternative states the latest numbers in words; the tolerances differ.
    assert!(
        page.body.contains("against a tolerance of"),
        "{}",
        page.body
    );
    // Both minutes summed: (190 + 210) / 40000 and (200 + 240) / 40000.
    assert!(page.body.contains("treatment 0.0100"), "{}", page.body);
    assert!(page.body.contains("control 0.0110"), "{}", page.body);
    // No inline style slipped into the drawing (the policy would block it).
    assert!(!page.body.to_ascii_lowercase().contains(" style="));
}

async fn the_release_page_marks_thinly_treated_values_in_the_coverage_table(server: Server) {
    checkout(&server).await;
    put_template(
        &server,
        "covered",
        json!({
            "stages": [{"percentage": 50.0, "dwellMs": 600000}, {"percentage": 100.0, "dwellMs": 1}],
            "guardrails": {"guardrails": [
                {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.5}
            ]},
            "coverageAttributes": ["country"]
        }),
    )
    .await;
    let key = server_key(&server).await;
    let id = start_release(&server, "covered").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let path = format!("/projects/default/releases/{id}");
    let page = server.get(&path, Some(&session)).await;
    assert!(page.body.contains("Canary coverage"));
    assert!(page.body.contains("No exposures broken down"));

    // Brazil is a tenth of the users, yet the treatment has served ten of them.
    let minute = next_minute();
    let row = |variant: &str, exposures: u64, coverage: Value| {
        json!({"minute": minute, "flag": "checkout", "variant": variant,
               "exposures": exposures, "requests": exposures * 20, "errors": exposures / 5,
               "coverage": {"country": coverage}})
    };
    post_outcomes(
        &server,
        &key,
        "c-1",
        json!([
            row("off", 50_000, json!({"DE": 40_000, "BR": 10_000})),
            row("on", 50_000, json!({"DE": 49_990, "BR": 10})),
        ]),
    )
    .await;
    let page = server.get(&path, Some(&session)).await;
    let table = &page.body[page.body.find("<table class=\"coverage\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let row_of = |value: &str| {
        let at = table
            .find(&format!("<th scope=\"row\">{value}</th>"))
            .unwrap_or_else(|| panic!("no row for {value}: {table}"));
        let start = table[..at].rfind("<tr").unwrap();
        &table[start..start + table[start..].find("</tr>").unwrap()]
    };
    let brazil = row_of("BR");
    assert!(brazil.starts_with("<tr class=\"warn\""), "{brazil}");
    assert!(brazil.contains("too thinly treated"), "{brazil}");
    assert!(brazil.contains("<td>10</td>"), "treated users: {brazil}");
    assert!(brazil.contains("<td>10010</td>"), "users: {brazil}");
    let germany = row_of("DE");
    assert!(!germany.contains("warn"), "{germany}");
    assert!(germany.contains("enough"), "{germany}");
}

async fn a_release_started_from_the_flag_page_shows_problems_next_to_fields_then_runs(
    server: Server,
) {
    checkout(&server).await;
    server.add_user("vera", "viewer").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let flag = server
        .get("/projects/default/flags/checkout", Some(&session))
        .await;
    let form_path = "/projects/default/flags/checkout/environments/production/release";
    assert!(
        flag.body.contains(&format!("href=\"{form_path}\"")),
        "{}",
        flag.body
    );
    let form = server.get(form_path, Some(&session)).await;
    assert_eq!(form.status, StatusCode::OK);
    for label in [
        "for=\"template\"",
        "for=\"rule\"",
        "for=\"control\"",
        "for=\"treatment\"",
    ] {
        assert!(form.body.contains(label), "{label}");
    }
    // The control offered first is what production serves now.
    assert!(
        form.body
            .contains("<option value=\"off\" selected>off</option>"),
        "{}",
        form.body
    );
    let csrf = csrf_of(&form.body);

    // The same variant on both sides, and a template the project does not have: both
    // problems at once, each next to its field.
    let reply = server
        .post_form(
            form_path,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("template", "nope"),
                ("rule", ""),
                ("control", "on"),
                ("treatment", "on"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem_after(&reply.body, "id=\"template\"", "no release template `nope`");
    assert_problem_after(
        &reply.body,
        "id=\"treatment\"",
        "must differ from the control",
    );
    let reply = server
        .post_form(
            form_path,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("template", "default"),
                ("rule", "no-such-rule"),
                ("control", "off"),
                ("treatment", "on"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem_after(&reply.body, "id=\"rule\"", "no rule `no-such-rule`");
    // Without the session's CSRF token nothing starts.
    let reply = server
        .post_form(
            form_path,
            Some(&session),
            &[
                ("csrf", "forged"),
                ("template", "default"),
                ("control", "off"),
                ("treatment", "on"),
            ],
        )
        .await;
    assert_ne!(reply.status, StatusCode::SEE_OTHER);
    // A viewer gets no form, and the handler refuses a viewer's post anyway.
    let viewer = server.sign_in("vera", "a long enough password").await;
    let flag = server
        .get("/projects/default/flags/checkout", Some(&viewer))
        .await;
    assert!(!flag.body.contains("Start a release"));
    assert_eq!(
        server.get(form_path, Some(&viewer)).await.status,
        StatusCode::FORBIDDEN
    );
    let viewer_form = server.get("/projects/default/flags", Some(&viewer)).await;
    let viewer_csrf = csrf_of(&viewer_form.body);
    let reply = server
        .post_form(
            form_path,
            Some(&viewer),
            &[
                ("csrf", &viewer_csrf),
                ("template", "default"),
                ("control", "off"),
                ("treatment", "on"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let (_, releases) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/releases",
            Value::Null,
        )
        .await;
    assert_eq!(releases, json!([]), "nothing started so far");

    // A good request starts the release and shows its page.
    let reply = server
        .post_form(
            form_path,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("template", "default"),
                ("rule", ""),
                ("control", "off"),
                ("treatment", "on"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let location = reply.header("location");
    assert!(location.starts_with("/projects/default/releases/"));
    let page = server.get(&location, Some(&session)).await;
    assert!(
        page.body.contains("<span class=\"b rel\">running</span>")
            && page.body.contains("now <strong>1%</strong>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("started; stage 1 of 5"), "{}", page.body);
    let (_, releases) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/releases",
            Value::Null,
        )
        .await;
    assert_eq!(releases[0]["createdBy"]["id"], "admin", "{releases}");
    assert_eq!(releases[0]["percentage"], 1.0, "{releases}");
    // One active release per flag and environment: the form says so.
    let flag = server
        .get("/projects/default/flags/checkout", Some(&session))
        .await;
    assert!(!flag.body.contains("Start a release in Production"));
    let reply = server
        .post_form(
            form_path,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("template", "default"),
                ("control", "off"),
                ("treatment", "on"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.body.contains("field-problem"), "{}", reply.body);
}

fn assert_problem_after(body: &str, marker: &str, text: &str) {
    let at = body
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} missing"));
    let rest = &body[at..];
    let problem = rest
        .find("field-problem")
        .expect("no field problem after the field");
    assert!(
        rest[problem..].contains(text),
        "`{text}` is not the problem after {marker}: {}",
        &rest[problem..(problem + 300).min(rest.len())]
    );
}

/// Reads an event stream until `wanted` appears in what arrived, for at most five seconds.
async fn read_until(response: &mut reqwest::Response, seen: &mut String, wanted: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains(wanted) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `{wanted}` within 5 s; the stream said: {seen}"))
            .unwrap()
            .expect("the stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn the_live_stream_needs_a_session_and_tells_of_flag_and_release_changes(server: Server) {
    checkout(&server).await;
    let live = format!("{}/projects/default/live", server.url);
    // No session, or a bearer token instead of one: no stream.
    let reply = server.http.get(&live).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    let reply = server
        .http
        .get(&live)
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    let session = server.sign_in("admin", PASSWORD).await;
    let reply = server
        .http
        .get(format!("{}/projects/nope/live", server.url))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_client_error(), "{}", reply.status());

    // Pages with a live marker point at the stream, saying where they stood when rendered.
    let page = server
        .get("/projects/default/flags/checkout", Some(&session))
        .await;
    let marker = "data-live=\"";
    let at = page.body.find(marker).expect("a live marker") + marker.len();
    let from_page = page.body[at..at + page.body[at..].find('"').unwrap()].replace("&amp;", "&");
    assert!(
        from_page.starts_with("/projects/default/live?since="),
        "{from_page}"
    );
    // A change between the page's rendering and its stream's start is told at once.
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/development/flags/checkout",
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut late = server
        .http
        .get(format!("{}{from_page}", server.url))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), StatusCode::OK);
    let mut told = String::new();
    read_until(&mut late, &mut told, "event: flag").await;
    drop(late);

    let mut stream = server
        .http
        .get(&live)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // A change made through the API, elsewhere than the page: the stream tells at once.
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/staging/flags/checkout",
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "event: flag").await;
    read_until(&mut stream, &mut seen, "\"environment\":\"staging\"").await;
    // A release started and then paused (a pause is no revision of the flag) is told too.
    let id = start_release(&server, "default").await;
    read_until(&mut stream, &mut seen, "event: release").await;
    read_until(&mut stream, &mut seen, &format!("\"id\":\"{id}\"")).await;
    seen.clear();
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/projects/default/releases/{id}/commands"),
            json!({"command": "pause"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    read_until(&mut stream, &mut seen, "\"state\":\"paused\"").await;
    assert!(seen.contains("event: release"), "{seen}");
}

/// How long the release page takes with a stage of six hours of per-minute telemetry (the
/// chart's points are recomputed from the stored minutes, at most 120 reads):
/// `cargo test --release -p anchor-server --test dashboard_live -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement: run it in release mode"]
#[allow(clippy::print_stdout, reason = "a measurement prints its numbers")]
async fn the_release_page_of_a_six_hour_stage_stays_fast() {
    let server = Server::start(None).await;
    checkout(&server).await;
    put_template(
        &server,
        "slow",
        json!({
            "stages": [{"percentage": 50.0, "dwellMs": 172_800_000u64}, {"percentage": 100.0, "dwellMs": 1}],
            "guardrails": {"guardrails": [
                {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.2},
                {"name": "strict error rate", "kind": "errorRate", "maxRelativeIncrease": 0.05}
            ]}
        }),
    )
    .await;
    let key = server_key(&server).await;
    let id = start_release(&server, "slow").await;
    // The stage began six hours ago (written as the controller writes a state).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let began = now_ms - 6 * 3_600_000;
    let record = server.store.release("default", &id).await.unwrap();
    server
        .store
        .update_release(&anchor_store::ReleaseUpdate {
            actor: &anchor_server::releases::controller(),
            project: "default",
            id: &id,
            expected_version: record.version,
            state: &json!({"state": "running", "stage": 0, "sinceMs": began, "observeFromMs": began}),
            active: true,
            flag_config: None,
            action: "release.updated",
            message: None,
            report: None,
            events: &[],
        })
        .await
        .unwrap();
    let first = (began / 1000 / 60 + 1) * 60;
    let rows: Vec<Value> = (0..360)
        .flat_map(|i| {
            let minute = first + i * 60;
            [("off", 20), ("on", 21)].map(|(variant, errors)| {
                json!({"minute": minute, "flag": "checkout", "variant": variant,
                       "exposures": 500, "requests": 2000, "errors": errors})
            })
        })
        .collect();
    post_outcomes(&server, &key, "six-hours", Value::Array(rows)).await;
    let session = server.sign_in("admin", PASSWORD).await;
    let path = format!("/projects/default/releases/{id}");
    let mut took = Vec::new();
    for _ in 0..11 {
        let start = std::time::Instant::now();
        let page = server.get(&path, Some(&session)).await;
        took.push(start.elapsed());
        assert_eq!(page.status, StatusCode::OK);
        for chart in charts(&page.body) {
            let points = chart.matches("chart-point chart-estimate").count();
            // 367 minutes (with those ahead of the clock) in steps of 4: 92 reads, each a
            // point when it added minutes.
            assert!((80..=121).contains(&points), "{points} points");
        }
    }
    took.sort();
    println!(
        "release page, 6 h stage, 2 guardrails: median {:?}, slowest {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
}
