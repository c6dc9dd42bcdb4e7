//! GuardBench through the HTTP surface: seeded synthetic users are bucketed by the
//! configuration the server serves to SDKs (`GET /sdk/v1/config`, evaluated with the engine as
//! an SDK does), their requests aggregated per minute and variant as the SDK does, posted as
//! telemetry batches to `POST /sdk/v1/telemetry`, stored, read back by the server's own metric
//! source and judged by the running release controller, whose share changes reach the next
//! minute's users through the same configuration.
//!
//! Simulated time runs [`SPEED`] times faster than the real clock: a simulated minute lasts
//! [`REAL_MS_PER_MINUTE`] real milliseconds, and the template's dwell and warm-up are written in
//! real milliseconds (15 and 1 simulated minutes). The controller judges with the real clock,
//! so its metric source ([`Warped`]) maps the real times it asks for to simulated ones before
//! reading the store (`StoreMetrics`, what `anchor serve` uses). Simulated minutes lie three
//! days back, inside the window in which the server accepts late telemetry.
//!
//! The model is GuardBench's (`docs/guardbench.md`): errors at the arm's rate, lognormal
//! latencies (median 100 ms, σ = 0.6), `1 + Binomial(4, ½)` requests per active user. Active
//! users are drawn from a population large enough that few return within a release (400,000
//! users, 2,000 a minute), so that per-minute exposures are nearly independent draws of the
//! split (GuardBench's finding on repeated users and the sample-ratio test).

#![allow(
    clippy::print_stderr,
    reason = "each run reports how long it took, in simulated minutes"
)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anchor_engine::{EnvironmentConfig, EvaluationContext};
use anchor_rollout::{LatencySketch, Observations};
use anchor_server::releases::{MetricSource, StoreMetrics};
use anchor_server::{AppState, Secret, bootstrap, launch};
use anchor_store::{ReleaseRecord, SqlStore, Store};
use serde_json::{Value, json};
use support::{PASSWORD, on_every_backend};

/// How long a simulated minute lasts in real time.
const REAL_MS_PER_MINUTE: i64 = 500;
/// Simulated milliseconds per real millisecond.
const SPEED: i64 = 60_000 / REAL_MS_PER_MINUTE;
const POPULATION: u64 = 400_000;
const ACTIVE_PER_MINUTE: u64 = 2_000;
const BASELINE_ERROR_RATE: f64 = 0.02;
/// A run ends after this many simulated minutes whatever the release's state.
const MAX_MINUTES: i64 = 90;

on_every_backend!(
    start: Server::start;
    test: #[tokio::test(flavor = "multi_thread", worker_threads = 2)];
    healthy_releases_advance_through_every_stage_and_complete,
    releases_whose_treatment_fails_five_times_as_often_roll_back_at_the_first_stage,
);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Real time to simulated time: both in unix milliseconds, simulated time starting three
/// days before the real start, at a minute's start.
#[derive(Clone, Copy, Debug)]
struct Warp {
    real_base: i64,
    sim_base: i64,
}

impl Warp {
    fn new() -> Self {
        let real_base = now_ms();
        Warp {
            real_base,
            sim_base: (real_base - 3 * 24 * 3_600_000).div_euclid(60_000) * 60_000,
        }
    }

    fn sim(self, real: i64) -> i64 {
        self.sim_base + (real - self.real_base) * SPEED
    }

    fn real(self, sim: i64) -> i64 {
        self.real_base + (sim - self.sim_base).div_euclid(SPEED)
    }
}

/// The server's own metric source, asked in simulated time.
struct Warped {
    store: StoreMetrics,
    warp: Warp,
}

#[async_trait::async_trait]
impl MetricSource for Warped {
    async fn observe(
        &self,
        release: &ReleaseRecord,
        from_ms: i64,
        to_ms: i64,
        share: f64,
    ) -> Result<Observations, String> {
        let (from, to) = (self.warp.sim(from_ms), self.warp.sim(to_ms));
        self.store.observe(release, from, to, share).await
    }
}

struct Server {
    url: String,
    http: reqwest::Client,
    warp: Warp,
    /// A server key of `default/production`, as SDKs hold.
    key: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    /// A server on SQLite, or on PostgreSQL in `schema`, with the controller ticking every
    /// 50 ms (6 simulated seconds), a server key and the bench's release template.
    async fn start(postgres: Option<(String, String)>) -> Server {
        let store: Arc<dyn Store> = match postgres {
            Some((url, schema)) => {
                Arc::new(SqlStore::open_postgres(&url, Some(&schema)).await.unwrap())
            }
            None => {
                let dir = std::env::temp_dir()
                    .join(format!("anchor-guardbench-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&dir).unwrap();
                Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap())
            }
        };
        bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
            .await
            .unwrap();
        let warp = Warp::new();
        let metrics = Arc::new(Warped {
            store: StoreMetrics(Arc::clone(&store)),
            warp,
        });
        let state = AppState::new(store)
            .unwrap()
            .with_release_metrics(metrics, Duration::from_millis(50));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(launch(listener, state, async {
            let _ = stopped.await;
        }));
        let mut server = Server {
            url,
            http: reqwest::Client::new(),
            warp,
            key: String::new(),
            _stop: stop,
        };
        for _ in 0..200 {
            if server.call(reqwest::Method::GET, "/readyz", None).await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, key) = server
            .call(
                reqwest::Method::POST,
                "/api/v1/projects/default/environments/production/keys",
                Some(json!({"kind": "server"})),
            )
            .await;
        assert_eq!(status, 201, "{key}");
        server.key = key["key"].as_str().unwrap().to_string();
        // 10% → 50% → 100%, 15 simulated minutes each after a 1-minute warm-up, judged on the
        // error rate (+50% relative) and the p95 latency (+20%).
        let minutes = |n: i64| n * REAL_MS_PER_MINUTE;
        let stage = |percentage: f64| json!({"percentage": percentage, "dwellMs": minutes(15), "warmupMs": minutes(1)});
        let (status, body) = server
            .call(
                reqwest::Method::PUT,
                "/api/v1/projects/default/release-templates/bench",
                Some(json!({"name": "GuardBench", "template": {
                    "stages": [stage(10.0), stage(50.0), stage(100.0)],
                    "guardrails": {"guardrails": [
                        {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.5},
                        {"name": "p95 latency", "kind": "latency", "quantile": 0.95,
                         "maxRelativeIncrease": 0.2}
                    ]},
                    "maxExtensionMs": minutes(30)
                }})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        server
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .basic_auth("admin", Some(PASSWORD));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// What SDKs download: the environment's configuration, compiled as an SDK does.
    async fn sdk_snapshot(&self) -> anchor_engine::Snapshot {
        let body: Value = self
            .http
            .get(format!("{}/sdk/v1/config", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let config: EnvironmentConfig =
            serde_json::from_value(json!({"flags": body["flags"], "segments": body["segments"]}))
                .unwrap();
        anchor_engine::compile(&config).0
    }
}

/// splitmix64 (Steele, Lea and Flood 2014), seeded: the same seed gives the same users.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One variant's minute, as the SDK aggregates it.
#[derive(Default)]
struct Arm {
    exposures: u64,
    requests: u64,
    errors: u64,
    latency: LatencySketch,
}

/// What a run ended with: the release as the API shows it, and the requests posted per
/// variant over the simulated minutes `[from, to)` (unix seconds).
struct Run {
    release: Value,
    posted: BTreeMap<String, u64>,
    from: i64,
    to: i64,
    /// Simulated minutes the controller's clock ran from the first minute to the end (more
    /// than `(to - from) / 60` when posting fell behind the simulated clock on a busy machine).
    clock_minutes: i64,
}

/// Releases a flag of its own (`bench-<seed>`) from `off` to `on` under the bench template
/// while seeded users whose treatment fails `error_factor` times as often as the control send
/// their outcomes, minute by minute, until the release finishes.
async fn run(server: &Server, seed: u64, error_factor: f64) -> Run {
    let flag = format!("bench-{seed}");
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/api/v1/projects/default/flags",
            Some(json!({"key": flag, "kind": "boolean", "variants": [
                {"name": "on", "value": true}, {"name": "off", "value": false}]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/default/environments/production/flags/{flag}"),
            Some(json!({"enabled": true, "offVariant": "off",
                        "defaultServe": {"variant": "off"}, "comment": "on, serving off"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/projects/default/environments/production/flags/{flag}/releases"),
            Some(json!({"template": "bench", "control": "off", "treatment": "on"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let warp = server.warp;
    let first_minute = warp.sim(now_ms()).div_euclid(60_000) * 60_000 + 60_000;
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut posted: BTreeMap<String, u64> = BTreeMap::new();
    let mut release = Value::Null;
    let mut minute = first_minute;
    while minute < first_minute + MAX_MINUTES * 60_000 {
        // The minute is over (in simulated time) before the SDK reports it.
        let wait = warp.real(minute + 60_000) - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let snapshot = server.sdk_snapshot().await;
        let mut arms: BTreeMap<String, Arm> = BTreeMap::new();
        for _ in 0..ACTIVE_PER_MINUTE {
            let user = rng.next_u64() % POPULATION;
            let context = EvaluationContext::with_targeting_key(format!("user-{user}"));
            let evaluation = anchor_engine::evaluate(&snapshot, &flag, &context);
            let variant = evaluation.variant().expect("the flag serves a variant");
            let rate = if variant == "on" {
                BASELINE_ERROR_RATE * error_factor
            } else {
                BASELINE_ERROR_RATE
            };
            let arm = arms.entry(variant.to_string()).or_default();
            arm.exposures += 1;
            let requests = 1 + (0..4).filter(|_| rng.uniform() < 0.5).count() as u64;
            for _ in 0..requests {
                arm.requests += 1;
                arm.errors += u64::from(rng.uniform() < rate);
                arm.latency.record(100.0 * (0.6 * rng.normal()).exp());
            }
        }
        let at = minute / 1_000;
        let evaluations: Vec<Value> = arms
            .iter()
            .map(|(variant, arm)| {
                json!({"minute": at, "flag": flag, "variant": variant, "count": arm.exposures})
            })
            .collect();
        let outcomes: Vec<Value> = arms
            .iter()
            .map(|(variant, arm)| {
                json!({"minute": at, "flag": flag, "variant": variant,
                       "exposures": arm.exposures, "requests": arm.requests,
                       "errors": arm.errors, "latency": arm.latency})
            })
            .collect();
        let reply = server
            .http
            .post(format!("{}/sdk/v1/telemetry", server.url))
            .bearer_auth(&server.key)
            .json(
                &json!({"batchId": format!("{flag}-{at}"), "sdk": "guardbench",
                          "evaluations": evaluations, "outcomes": outcomes}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            reply.status().as_u16(),
            202,
            "{}",
            reply.text().await.unwrap()
        );
        for (variant, arm) in &arms {
            *posted.entry(variant.clone()).or_default() += arm.requests;
        }
        minute += 60_000;
        release = server
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/projects/default/releases/{id}"),
                None,
            )
            .await
            .1;
        if matches!(
            release["state"]["state"].as_str(),
            Some("completed" | "rolledBack")
        ) {
            break;
        }
    }
    Run {
        release,
        posted,
        from: first_minute / 1_000,
        to: minute / 1_000,
        clock_minutes: (warp.sim(now_ms()) - first_minute) / 60_000,
    }
}

fn messages(release: &Value) -> Vec<String> {
    release["decisions"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| d["message"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The requests the server stored for a run's flag, per variant, over its minutes.
async fn stored_requests(server: &Server, seed: u64, run: &Run) -> BTreeMap<String, u64> {
    let (status, outcomes) = server
        .call(
            reqwest::Method::GET,
            &format!(
                "/api/v1/projects/default/environments/production/flags/bench-{seed}/outcomes\
                 ?from={}&to={}",
                run.from, run.to
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{outcomes}");
    outcomes["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["variant"].as_str().unwrap().to_string(),
                v["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Runs the seeds at once, each with its own flag.
async fn runs(server: &Server, seeds: &[u64], error_factor: f64) -> Vec<Run> {
    futures_util::future::join_all(seeds.iter().map(|&seed| run(server, seed, error_factor))).await
}

const SEEDS: [u64; 2] = [1, 2];

async fn healthy_releases_advance_through_every_stage_and_complete(server: Server) {
    for (seed, run) in SEEDS.iter().zip(runs(&server, &SEEDS, 1.0).await) {
        let log = messages(&run.release);
        eprintln!(
            "healthy, seed {seed}: {} after {} simulated minutes posted ({} on the controller's \
             clock), requests {:?}",
            run.release["state"]["state"],
            (run.to - run.from) / 60,
            run.clock_minutes,
            run.posted
        );
        assert_eq!(
            run.release["state"]["state"], "completed",
            "seed {seed}: {log:#?}"
        );
        assert!(
            log.iter()
                .any(|m| m.starts_with("advanced from 10%") && m.contains("every guardrail safe")),
            "seed {seed}: {log:#?}"
        );
        // Everything posted went through ingestion into the store the controller read.
        assert_eq!(stored_requests(&server, *seed, &run).await, run.posted);
        assert!(
            run.posted["on"] > 0 && run.posted["off"] > 0,
            "{:?}",
            run.posted
        );
    }
}

async fn releases_whose_treatment_fails_five_times_as_often_roll_back_at_the_first_stage(
    server: Server,
) {
    for (seed, run) in SEEDS.iter().zip(runs(&server, &SEEDS, 5.0).await) {
        let release = &run.release;
        let log = messages(release);
        eprintln!(
            "errors ×5, seed {seed}: {} after {} simulated minutes posted ({} on the controller's \
             clock), requests {:?}",
            release["state"]["state"],
            (run.to - run.from) / 60,
            run.clock_minutes,
            run.posted
        );
        assert_eq!(
            release["state"]["state"], "rolledBack",
            "seed {seed}: {log:#?}"
        );
        assert_eq!(release["state"]["check"]["name"], "error rate", "{release}");
        assert!(
            log.iter()
                .any(|m| m.starts_with("rolled back at 10%: error rate")),
            "seed {seed}: {log:#?}"
        );
        // Detected within the first stage's dwell (15 simulated minutes after its warm-up).
        let minutes = (run.to - run.from) / 60;
        assert!(
            minutes <= 16,
            "seed {seed}: rolled back after {minutes} minutes"
        );
        assert_eq!(stored_requests(&server, *seed, &run).await, run.posted);
    }
}
