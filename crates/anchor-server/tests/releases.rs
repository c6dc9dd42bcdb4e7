//! Progressive releases end to end: a real server on a port, steered through its HTTP API,
//! with the controller ticking every 50 ms on simulated telemetry (a metric source the test
//! controls) and stages of a few hundred milliseconds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchor_rollout::{ArmObservations, Observations};
use anchor_server::releases::MetricSource;
use anchor_server::{AppState, Secret, bootstrap, launch};
use anchor_store::{ReleaseRecord, SqlStore, Store};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

/// What the simulated telemetry reports: healthy, a regression, or an outage.
#[derive(Clone, Copy, Debug)]
enum Health {
    Healthy,
    /// The treatment fails this many times as often as the control.
    Errors(f64),
    /// Healthy, and the treatment's `cpu_ms` per request grows by this much per percent of
    /// traffic it gets (from 100, the control's).
    Cpu(f64),
    Down,
}

#[derive(Clone)]
struct Simulated(Arc<Mutex<Health>>);

#[async_trait::async_trait]
impl MetricSource for Simulated {
    async fn observe(
        &self,
        _: &ReleaseRecord,
        _: i64,
        _: i64,
        share: f64,
    ) -> Result<Observations, String> {
        let health = *self.0.lock().unwrap();
        let (factor, cpu_slope) = match health {
            Health::Healthy => (1.0, None),
            Health::Errors(f) => (f, None),
            Health::Cpu(slope) => (1.0, Some(slope)),
            Health::Down => return Err("the telemetry store timed out".into()),
        };
        let total = 1_000_000u64;
        let treated = (total as f64 * share).round() as u64;
        let arm = |exposures, rate: f64| ArmObservations {
            exposures,
            requests: 400_000,
            errors: (400_000.0 * rate).round() as u64,
            ..ArmObservations::default()
        };
        let mut treatment = arm(treated, 0.01 * factor);
        if let Some(slope) = cpu_slope {
            let mut cpu = anchor_rollout::MetricSums::default();
            for _ in 0..1_000 {
                cpu.record_capped(100.0 + slope * share * 100.0, 1e9);
            }
            treatment.metrics.insert("cpu_ms".into(), cpu);
        }
        Ok(Observations {
            control: arm(total - treated, 0.01),
            treatment,
            expected_treatment_share: share,
        })
    }
}

struct Server {
    url: String,
    http: reqwest::Client,
    health: Arc<Mutex<Health>>,
    store: Arc<dyn Store>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    /// A server judging simulated telemetry.
    async fn start() -> Server {
        Server::start_judging(false).await
    }

    /// A server judging simulated telemetry, or (`real`) what SDKs report, as `anchor serve`
    /// does.
    async fn start_judging(real: bool) -> Server {
        let dir = std::env::temp_dir().join(format!("anchor-releases-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap());
        bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
            .await
            .unwrap();
        let health = Arc::new(Mutex::new(Health::Healthy));
        let metrics: Arc<dyn MetricSource> = if real {
            Arc::new(anchor_server::releases::StoreMetrics(Arc::clone(&store)))
        } else {
            Arc::new(Simulated(Arc::clone(&health)))
        };
        let state = AppState::new(Arc::clone(&store))
            .unwrap()
            .with_release_metrics(metrics, Duration::from_millis(50));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(launch(listener, state, async {
            let _ = stopped.await;
        }));
        let server = Server {
            url,
            http: reqwest::Client::new(),
            health,
            store,
            _stop: stop,
        };
        for _ in 0..200 {
            if server.get("/readyz").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as("admin", method, path, body).await
    }

    async fn call_as(
        &self,
        user: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .basic_auth(user, Some(PASSWORD));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    fn set(&self, health: Health) {
        *self.health.lock().unwrap() = health;
    }

    /// Polls the release until `check` holds (or 10 s pass) and returns its last view.
    async fn until(&self, id: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, release) = self
                .get(&format!("/api/v1/projects/default/releases/{id}"))
                .await;
            if check(&release) || Instant::now() > deadline {
                return release;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A boolean flag `checkout`, on in production and serving `off`, and a quick template.
    async fn setup(&self) {
        let (status, body) = self
            .post(
                "/api/v1/projects/default/flags",
                json!({"key": "checkout", "kind": "boolean", "variants": [
                    {"name": "on", "value": true}, {"name": "off", "value": false}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                "/api/v1/projects/default/environments/production/flags/checkout",
                Some(json!({"enabled": true, "offVariant": "off",
                            "defaultServe": {"variant": "off"}, "comment": "on, serving off"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                "/api/v1/projects/default/release-templates/quick",
                Some(json!({"name": "Quick", "template": {
                    "stages": [
                        {"percentage": 1.0, "dwellMs": 300},
                        {"percentage": 5.0, "dwellMs": 300, "approval": true},
                        {"percentage": 100.0, "dwellMs": 300}
                    ],
                    "guardrails": {"guardrails": [
                        {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.5}
                    ]},
                    "maxExtensionMs": 60000
                }})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn start_release(&self) -> String {
        let (status, body) = self
            .post(
                "/api/v1/projects/default/environments/production/flags/checkout/releases",
                json!({"template": "quick", "control": "off", "treatment": "on"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// The treatment's weight (of 100,000) in production's default serve.
    async fn treatment_weight(&self) -> u64 {
        let (_, flag) = self.get("/api/v1/projects/default/flags/checkout").await;
        let production = flag["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["environment"] == "production")
            .unwrap()
            .clone();
        let serve = &production["config"]["defaultServe"];
        serve["rollout"]["variants"]
            .as_array()
            .map_or(0, |variants| {
                variants
                    .iter()
                    .find(|v| v["variant"] == "on")
                    .map_or(0, |v| v["weight"].as_u64().unwrap())
            })
    }
}

fn state_of(release: &Value) -> &str {
    release["state"]["state"].as_str().unwrap_or("?")
}

fn messages(release: &Value) -> Vec<String> {
    release["decisions"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| d["message"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn templates_are_listed_validated_and_replaced_with_if_match() {
    let server = Server::start().await;
    let (status, list) = server
        .get("/api/v1/projects/default/release-templates")
        .await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["key"], "default");
    assert_eq!(list[0]["builtin"], true);
    assert_eq!(list[0]["template"]["stages"].as_array().unwrap().len(), 5);

    let (status, problem) = server
        .call(
            reqwest::Method::PUT,
            "/api/v1/projects/default/release-templates/bad",
            Some(json!({"name": "", "template": {
                "stages": [{"percentage": 150.0, "dwellMs": 0}],
                "guardrails": {"guardrails": [], "alpha": 3.0}
            }})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let paths: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for expected in [
        "/name",
        "/template/stages/0/percentage",
        "/template/guardrails/alpha",
    ] {
        assert!(paths.contains(&expected), "{expected} in {paths:?}");
    }
    let (status, _) = server
        .call(
            reqwest::Method::PUT,
            "/api/v1/projects/default/release-templates/default",
            Some(json!({"name": "x", "template": {}})),
        )
        .await;
    assert_eq!(status, 409, "the built-in template cannot be replaced");

    server.setup().await;
    let stale = server
        .http
        .put(format!(
            "{}/api/v1/projects/default/release-templates/quick",
            server.url
        ))
        .basic_auth("admin", Some(PASSWORD))
        .header("if-match", "\"7\"")
        .json(
            &json!({"name": "Quick", "template": {"stages": [{"percentage": 100.0, "dwellMs": 1}],
                      "guardrails": {"guardrails": []}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 412);
    let (status, _) = server
        .call(
            reqwest::Method::DELETE,
            "/api/v1/projects/default/release-templates/quick",
            None,
        )
        .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn a_healthy_release_advances_waits_for_approval_and_completes() {
    let server = Server::start().await;
    server.setup().await;
    let id = server.start_release().await;
    let release = server
        .get(&format!("/api/v1/projects/default/releases/{id}"))
        .await
        .1;
    assert_eq!(state_of(&release), "running");
    assert_eq!(release["percentage"], 1.0);
    assert_eq!(server.treatment_weight().await, 1_000, "1% of 100,000");
    // A second release of the same flag is refused.
    let (status, _) = server
        .post(
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"template": "quick", "control": "off", "treatment": "on"}),
        )
        .await;
    assert_eq!(status, 409);

    let waiting = server
        .until(&id, |r| state_of(r) == "waitingForApproval")
        .await;
    assert_eq!(state_of(&waiting), "waitingForApproval", "{waiting}");
    let log = messages(&waiting);
    assert!(
        log.iter()
            .any(|m| m.contains("advanced from 1%") && m.contains("every guardrail safe")),
        "{log:?}"
    );
    assert!(
        waiting["report"]["checks"][0]["verdict"]["outcome"] == "safe",
        "{waiting}"
    );
    assert!(
        waiting["reportedAt"].is_i64(),
        "the evidence is kept: {waiting}"
    );

    // A viewer cannot approve; an editor (the admin here) can.
    let (status, _) = server
        .post(
            &format!("/api/v1/projects/default/releases/{id}/commands"),
            json!({"command": "resume"}),
        )
        .await;
    assert_eq!(status, 409, "resuming a release that waits for approval");
    let (status, approved) = server
        .post(
            &format!("/api/v1/projects/default/releases/{id}/commands"),
            json!({"command": "approve"}),
        )
        .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(server.treatment_weight().await, 5_000);
    let done = server.until(&id, |r| state_of(r) == "completed").await;
    assert_eq!(state_of(&done), "completed", "{done}");
    assert_eq!(server.treatment_weight().await, 100_000);
    assert_eq!(done["active"], false);

    // Every step is a normal revision of the flag, the controller's ones by the controller.
    let revisions: Vec<Value> = server
        .store
        .flag_revisions("default", "production", "checkout")
        .await
        .unwrap()
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    let actors: Vec<(&str, &str)> = revisions
        .iter()
        .take(3)
        .map(|r| {
            (
                r["actor"]["id"].as_str().unwrap(),
                r["comment"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(actors[0].0, "rollout-controller", "{actors:?}");
    assert!(actors[0].1.contains("completed"), "{actors:?}");
    assert_eq!(
        actors[1].0, "admin",
        "the approval was a person's: {actors:?}"
    );
    assert!(
        actors[2].1.starts_with("started; stage 1 of 3: 1%"),
        "{actors:?}"
    );
}

#[tokio::test]
async fn a_custom_metric_projected_above_its_limit_holds_and_a_flatter_one_advances() {
    let server = Server::start().await;
    server.setup().await;
    let (status, body) = server
        .call(
            reqwest::Method::PUT,
            "/api/v1/projects/default/release-templates/projected",
            Some(json!({"name": "Projected", "template": {
                "stages": [
                    {"percentage": 1.0, "dwellMs": 300},
                    {"percentage": 5.0, "dwellMs": 300},
                    {"percentage": 25.0, "dwellMs": 300},
                    {"percentage": 100.0, "dwellMs": 300}
                ],
                "guardrails": {"guardrails": [
                    {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.5}
                ]},
                "maxExtensionMs": 60000,
                "projections": [{"metric": "cpu_ms", "limit": 250.0}]
            }})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["template"]["projections"][0]["metric"], "cpu_ms",
        "{body}"
    );
    // A limit that is no number is named by its pointer.
    let (status, problem) = server
        .call(
            reqwest::Method::PUT,
            "/api/v1/projects/default/release-templates/bad",
            Some(json!({"name": "Bad", "template": {
                "stages": [{"percentage": 100.0, "dwellMs": 300}],
                "guardrails": {"guardrails": []},
                "projections": [{"metric": "", "limit": 1.0}]
            }})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem
            .to_string()
            .contains("/template/projections/0/metric"),
        "{problem}"
    );

    // 4 ms more CPU per request for each percent of traffic: 104 at 1%, 120 at 5%, a line
    // that reaches 500 at 100%.
    server.set(Health::Cpu(4.0));
    let (status, body) = server
        .post(
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"template": "projected", "control": "off", "treatment": "on"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let held = server.until(&id, |r| state_of(r) == "holding").await;
    assert_eq!(state_of(&held), "holding", "{held}");
    assert_eq!(held["state"]["reason"]["kind"], "projectedMetric", "{held}");
    assert_eq!(held["state"]["reason"]["limit"], 250.0);
    assert_eq!(held["state"]["reason"]["projection"]["metric"], "cpu_ms");
    assert_eq!(server.treatment_weight().await, 5_000, "held at 5%");
    let log = messages(&held);
    assert!(
        log.iter().any(|m| m
            == "held at 5%: cpu_ms grew from 104 at 1% to 120 at 5%: projected 500 at 100%, \
                above the limit of 250"),
        "{log:?}"
    );
    // The CPU stops growing with the share: the projection falls below the limit and the
    // release advances, saying so, and completes.
    server.set(Health::Cpu(0.0));
    let done = server.until(&id, |r| state_of(r) == "completed").await;
    assert_eq!(state_of(&done), "completed", "{done}");
    let log = messages(&done);
    assert!(
        log.iter().any(|m| m.starts_with("advanced from 5%")
            && m.contains("cpu_ms fell from 104 at 1% to 100 at 5%: projected")),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_regression_rolls_back_by_itself_with_its_numbers() {
    let server = Server::start().await;
    server.setup().await;
    server.set(Health::Errors(3.0));
    let id = server.start_release().await;
    let rolled = server.until(&id, |r| state_of(r) == "rolledBack").await;
    assert_eq!(state_of(&rolled), "rolledBack", "{rolled}");
    assert_eq!(
        server.treatment_weight().await,
        0,
        "nobody gets the treatment"
    );
    assert_eq!(rolled["state"]["check"]["name"], "error rate");
    let log = messages(&rolled);
    assert!(
        log.iter()
            .any(|m| m.starts_with("rolled back at 1%: error rate:")),
        "{log:?}"
    );
    assert!(rolled["report"]["checks"][0]["verdict"]["outcome"] == "regressed");
    // Finished: commands are refused.
    let (status, problem) = server
        .post(
            &format!("/api/v1/projects/default/releases/{id}/commands"),
            json!({"command": "resume"}),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
}

#[tokio::test]
async fn an_outage_of_the_metric_source_holds_and_people_steer_with_commands() {
    let server = Server::start().await;
    server.setup().await;
    server.set(Health::Down);
    let id = server.start_release().await;
    let held = server.until(&id, |r| state_of(r) == "holding").await;
    assert_eq!(held["state"]["reason"]["kind"], "sourceError", "{held}");
    assert_eq!(
        server.treatment_weight().await,
        1_000,
        "never rolled back on missing data"
    );

    let command = |c: Value| {
        let server = &server;
        let id = id.clone();
        async move {
            server
                .post(
                    &format!("/api/v1/projects/default/releases/{id}/commands"),
                    c,
                )
                .await
        }
    };
    let (status, paused) = command(json!({"command": "pause"})).await;
    assert_eq!((status, state_of(&paused)), (200, "paused"));
    server.set(Health::Errors(3.0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = server
        .get(&format!("/api/v1/projects/default/releases/{id}"))
        .await
        .1;
    assert_eq!(state_of(&still), "paused", "a paused release is not judged");
    let (status, problem) = command(json!({"command": "fly"})).await;
    assert_eq!(status, 422, "{problem}");
    let (status, rolled) = command(json!({"command": "rollBack"})).await;
    assert_eq!((status, state_of(&rolled)), (200, "rolledBack"));
    assert!(
        messages(&rolled)
            .iter()
            .any(|m| m == "rolled back by a person")
    );
    assert_eq!(server.treatment_weight().await, 0);
    // The audit log names the person for their actions and the controller for its own.
    let (_, audit) = server.get("/api/v1/projects/default/audit").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "release.created",
        "release.started",
        "release.holding",
        "release.paused",
        "release.rolled_back",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
}

#[tokio::test]
async fn starting_a_release_checks_its_request_and_the_callers_role() {
    let server = Server::start().await;
    server.setup().await;
    let (status, problem) = server
        .post(
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"template": "nope", "control": "off", "treatment": "blue", "rule": "ghost"}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let paths: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/treatment", "/rule", "/template"], "{problem}");
    let (status, _) = server
        .post(
            "/api/v1/projects/default/environments/production/flags/nope/releases",
            json!({"control": "off", "treatment": "on"}),
        )
        .await;
    assert_eq!(status, 404);
    let anonymous = server
        .http
        .get(format!("{}/api/v1/projects/default/releases", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    // Pending on request: nothing changes until it is started.
    let (status, pending) = server
        .post(
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"control": "off", "treatment": "on", "start": false}),
        )
        .await;
    assert_eq!((status, state_of(&pending)), (201, "pending"));
    assert_eq!(server.treatment_weight().await, 0);
    let (_, list) = server
        .get("/api/v1/projects/default/releases?flag=checkout&environment=production")
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// The whole path: SDK telemetry posted to the server is what the controller judges.
#[tokio::test]
async fn the_controller_judges_the_outcomes_sdks_report_and_sdks_learn_which_flags_to_watch() {
    let server = Server::start_judging(true).await;
    server.setup().await;
    let (status, template) = server
        .call(
            reqwest::Method::PUT,
            "/api/v1/projects/default/release-templates/half",
            Some(json!({"name": "Half", "template": {
                "stages": [{"percentage": 50.0, "dwellMs": 600000}, {"percentage": 100.0, "dwellMs": 1}],
                "guardrails": {"guardrails": [
                    {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.2}
                ]}
            }})),
        )
        .await;
    assert_eq!(status, 200, "{template}");
    let (status, key) = server
        .post(
            "/api/v1/projects/default/environments/production/keys",
            json!({"kind": "server"}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key = key["key"].as_str().unwrap().to_string();
    let (status, release) = server
        .post(
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"template": "half", "control": "off", "treatment": "on"}),
        )
        .await;
    assert_eq!(status, 201, "{release}");
    let id = release["id"].as_str().unwrap().to_string();

    // SDKs are told to gather this flag's outcomes.
    let config: Value = server
        .http
        .get(format!("{}/sdk/v1/config", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["watchedFlags"], json!(["checkout"]));

    // What SDKs report for the next minute (the stage counts minutes that began after it
    // started): the treatment fails ten times as often.
    let next_minute = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
        + 1)
        * 60;
    let row = |variant: &str, errors: u64| {
        json!({"minute": next_minute, "flag": "checkout", "variant": variant,
               "exposures": 5000, "requests": 20000, "errors": errors})
    };
    let reply = server
        .http
        .post(format!("{}/sdk/v1/telemetry", server.url))
        .bearer_auth(&key)
        .json(&json!({"batchId": "b-1", "evaluations": [],
                      "outcomes": [row("off", 200), row("on", 2000)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    let rolled = server.until(&id, |r| state_of(r) == "rolledBack").await;
    assert_eq!(state_of(&rolled), "rolledBack", "{rolled}");
    let evidence = &rolled["state"]["check"]["verdict"]["evidence"];
    assert_eq!(evidence["nTreatment"], 20000, "{evidence}");
    assert_eq!(server.treatment_weight().await, 0);
}

/// Canary coverage through the real HTTP surface: SDKs are told which attributes to break
/// exposures down by, post the breakdown, and a stage that requires coverage holds until a
/// real share of users (Brazil) has enough treated users, then advances.
#[tokio::test]
async fn a_stage_requiring_coverage_holds_until_a_value_has_enough_treated_users_then_advances() {
    let server = Server::start_judging(true).await;
    server.setup().await;
    let (status, template) = server
        .call(
            reqwest::Method::PUT,
            "/api/v1/projects/default/release-templates/covered",
            Some(json!({"name": "Covered", "template": {
                "stages": [
                    {"percentage": 50.0, "dwellMs": 300, "requireCoverage": true},
                    {"percentage": 100.0, "dwellMs": 1}
                ],
                "guardrails": {"guardrails": [
                    {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.5}
                ]},
                "maxExtensionMs": 300,
                "coverageAttributes": ["country"]
            }})),
        )
        .await;
    assert_eq!(status, 200, "{template}");
    // A bad coverage setting is named by its pointer.
    let (status, problem) = server
        .call(
            reqwest::Method::PUT,
            "/api/v1/projects/default/release-templates/bad",
            Some(json!({"name": "Bad", "template": {
                "stages": [{"percentage": 100.0, "dwellMs": 1, "requireCoverage": true}],
                "guardrails": {"guardrails": []},
                "coverageThresholds": {"minShare": 2.0}
            }})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        pointers.contains(&"/template/stages/0/requireCoverage")
            && pointers.contains(&"/template/coverageThresholds/minShare"),
        "{problem}"
    );
    let (_, key) = server
        .post(
            "/api/v1/projects/default/environments/production/keys",
            json!({"kind": "server"}),
        )
        .await;
    let key = key["key"].as_str().unwrap().to_string();
    let (status, release) = server
        .post(
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"template": "covered", "control": "off", "treatment": "on"}),
        )
        .await;
    assert_eq!(status, 201, "{release}");
    let id = release["id"].as_str().unwrap().to_string();

    // SDKs learn which attributes to break the flag's exposures down by.
    let config: Value = server
        .http
        .get(format!("{}/sdk/v1/config", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["coverage"], json!({"checkout": ["country"]}));

    let next_minute = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
        + 1)
        * 60;
    let post = |batch: &'static str, outcomes: Value| {
        let request = server
            .http
            .post(format!("{}/sdk/v1/telemetry", server.url))
            .bearer_auth(&key)
            .json(&json!({"batchId": batch, "evaluations": [], "outcomes": outcomes}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Healthy and evenly split, but Brazil (10% of users) has had 10 treated users.
    let row = |variant: &str, exposures: u64, coverage: Value| {
        json!({"minute": next_minute, "flag": "checkout", "variant": variant,
               "exposures": exposures, "requests": exposures * 20, "errors": exposures / 5,
               "coverage": {"country": coverage}})
    };
    let first = json!([
        row("off", 50_000, json!({"DE": 40_000, "BR": 10_000})),
        row("on", 50_000, json!({"DE": 49_990, "BR": 10})),
    ]);
    assert_eq!(post("c-1", first).await, 202);
    let held = server.until(&id, |r| state_of(r) == "holding").await;
    assert_eq!(
        held["state"]["reason"]["kind"], "insufficientCoverage",
        "{held}"
    );
    let message = messages(&held).last().cloned().unwrap();
    assert_eq!(
        message,
        "held at 50%: country=BR has 10 of 50 treated users; the canary does not cover the user base yet"
    );
    let table = held["coverage"].as_array().unwrap();
    let brazil = table.iter().find(|r| r["value"] == "BR").unwrap();
    assert_eq!(brazil["attribute"], "country");
    assert_eq!(brazil["treatedUsers"], 10);
    assert_eq!(brazil["users"], 10_010);
    assert!((brazil["share"].as_f64().unwrap() - 0.1001).abs() < 1e-9);
    assert_eq!(brazil["warning"], true);
    let germany = table.iter().find(|r| r["value"] == "DE").unwrap();
    assert_eq!(germany["warning"], false);

    // Enough Brazilian users reach the treatment: the hold clears and the release advances
    // (to 100%, completing it).
    let more = json!([row("on", 100, json!({"BR": 100}))]);
    assert_eq!(post("c-2", more).await, 202);
    let done = server.until(&id, |r| state_of(r) == "completed").await;
    assert_eq!(state_of(&done), "completed", "{done}");
    assert_eq!(server.treatment_weight().await, 100_000);
}
