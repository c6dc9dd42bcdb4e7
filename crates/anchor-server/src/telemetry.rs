//! SDK telemetry: how often each flag was evaluated, and to which variant, minute by minute;
//! and, per variant, the outcomes that progressive rollouts judge.
//!
//! SDKs post batches of per-minute counts to `POST /sdk/v1/telemetry` with their SDK key (server
//! or client kind, as for OFREP); people read one flag's counts in one environment through
//! `GET /api/v1/projects/{project}/environments/{environment}/flags/{flag}/evaluations`. A
//! batch carries an id of the SDK's making: the store records it with the counts in one
//! transaction, so an SDK that retries a batch (its answer was lost) never counts it twice.
//!
//! A batch may also carry `outcomes`: per minute, flag and variant, the exposures (units the
//! SDK served the variant for the first time since the flag's configuration last changed, so
//! a stage's minutes add up to its distinct units per SDK instance), the requests and errors
//! recorded, the requests' latencies as an [`anchor_rollout::LatencySketch`], custom metrics'
//! sums, and `coverage`: those exposures by the values of the release's coverage attributes
//! (`{"platform": {"ios": 12, "android": 30, "other": 1}}`; at most
//! [`MAX_COVERAGE_ATTRIBUTES`] attributes of at most [`MAX_COVERAGE_VALUES`] values, none
//! counting more than the row's exposures). They are stored with the counts, under the same
//! batch id, and read by people through `GET …/flags/{flag}/outcomes` (rates, quantiles and
//! means) and the release view (coverage), and by the rollout controller through the store.
//!
//! A batch is judged whole before anything is stored: every problem is reported at once, each
//! with its JSON pointer, and a batch with any problem stores nothing.

use std::collections::BTreeMap;

use anchor_engine::Diagnostic;
use anchor_rollout::{ArmObservations, LatencySketch, MetricSums};
use anchor_store::{EvaluationCount, OutcomeAggregate, Role};
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};

/// The most rows one batch may carry.
pub const MAX_ROWS: usize = 10_000;
/// The most outcome rows one batch may carry (each may hold a sketch of up to
/// [`MAX_SKETCH_BINS`] buckets; the body limit of 1 MiB applies too).
pub const MAX_OUTCOME_ROWS: usize = 1_000;
/// The most custom metrics one outcome row may carry.
pub const MAX_METRICS: usize = 32;
/// The most `[index, count]` pairs one sketch may list: one per bucket of the mapping.
pub const MAX_SKETCH_BINS: usize =
    (anchor_rollout::sketch::MAX_INDEX - anchor_rollout::sketch::MIN_INDEX + 1) as usize;
/// The most coverage attributes one outcome row may break its exposures down by (as a
/// template may name).
pub const MAX_COVERAGE_ATTRIBUTES: usize = anchor_rollout::coverage::MAX_COVERAGE_ATTRIBUTES;
/// The most values one coverage attribute may list in a row: the SDK names 20 and counts the
/// rest as `other`; a little room for other SDKs' choices.
pub const MAX_COVERAGE_VALUES: usize = 32;
/// The longest coverage value.
const MAX_COVERAGE_VALUE: usize = 128;
/// The longest custom metric name.
const MAX_METRIC_NAME: usize = 64;
/// How far ahead of the server's clock a minute may start (clocks differ).
pub const MAX_FUTURE_SECS: i64 = 5 * 60;
/// How old a minute may be by default; see [`crate::AppState::with_telemetry_max_age`].
pub const DEFAULT_MAX_AGE_SECS: i64 = 7 * 24 * 60 * 60;
/// The most that one row may count: far beyond any SDK's minute, and small enough that sums
/// never overflow.
const MAX_COUNT: u64 = 1_000_000_000_000;
/// The longest batch id, flag key, variant name and SDK name accepted.
const MAX_BATCH_ID: usize = 64;
const MAX_NAME: usize = 256;
/// The most problems reported for one batch: enough to fix it, small enough to send.
const MAX_PROBLEMS: usize = 100;
/// The widest range of minutes one read returns.
const MAX_RANGE_SECS: i64 = 31 * 24 * 60 * 60;

/// How often the server compacts old telemetry by default.
pub const COMPACTION_EVERY: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// How long telemetry keeps its minutes (`minute_secs`) and itself (`keep_secs`), and how
/// often the server compacts it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compaction {
    pub minute_secs: i64,
    pub keep_secs: i64,
    pub every: std::time::Duration,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            minute_secs: i64::from(crate::config::DEFAULT_MINUTE_RETENTION_DAYS) * 86_400,
            keep_secs: i64::from(crate::config::DEFAULT_RETENTION_DAYS) * 86_400,
            every: COMPACTION_EVERY,
        }
    }
}

/// The most rows one compaction transaction merges or deletes: a few milliseconds of work, so
/// ingestion never waits long behind it.
const COMPACTION_ROWS_PER_TRANSACTION: u32 = 500;

/// What the store is asked to compact, from the server's settings. Minutes stay minutes at
/// least as long as late data for them is accepted (and an hour more, for clocks that differ),
/// since ingestion adds to a minute's row; batch ids are forgotten once a retry could only
/// carry minutes that ingestion refuses (the window plus the minutes accepted ahead of the
/// clock, with an hour to spare).
fn retention(settings: Compaction, window: i64) -> anchor_store::TelemetryRetention {
    let minute_secs = settings.minute_secs.max(window + 3_600);
    anchor_store::TelemetryRetention {
        minute_secs,
        keep_secs: settings.keep_secs.max(minute_secs),
        batch_ids_ms: (window + MAX_FUTURE_SECS + 3_600) * 1_000,
        rows_per_transaction: COMPACTION_ROWS_PER_TRANSACTION,
    }
}

/// Compacts old telemetry every [`Compaction::every`] until the server stops (see
/// [`anchor_store::Store::compact_telemetry`]: several servers on one database may do it at
/// once). A failed run is logged and tried again at the next tick.
pub(crate) async fn compact(state: AppState) {
    let mut interval = tokio::time::interval(state.telemetry_compaction.every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let retention = retention(state.telemetry_compaction, state.telemetry_max_age_secs);
        match state.store.compact_telemetry(&retention).await {
            Ok(report) if report == anchor_store::CompactionReport::default() => {}
            Ok(report) => tracing::info!(
                merged = report.minutes_merged,
                expired = report.rows_expired,
                forgotten = report.batch_ids_forgotten,
                "compacted telemetry"
            ),
            Err(error) => tracing::warn!(%error, "compacting telemetry failed; trying again later"),
        }
    }
}

/// The SDK route: ingestion.
pub fn sdk_routes() -> axum::Router<AppState> {
    axum::Router::new().route("/sdk/v1/telemetry", axum::routing::post(ingest))
}

/// The management API's route: reading counts.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(flag_evaluations))
        .routes(routes!(flag_outcomes))
}

/// A batch that passed every check.
struct Batch {
    id: String,
    rows: Vec<EvaluationCount>,
    outcomes: Vec<OutcomeAggregate>,
}

/// Collects the problems of a batch, up to [`MAX_PROBLEMS`].
#[derive(Default)]
struct Problems(Vec<Diagnostic>);

impl Problems {
    fn add(&mut self, path: String, message: impl Into<String>) {
        if self.0.len() < MAX_PROBLEMS {
            self.0.push(Diagnostic {
                path,
                message: message.into(),
            });
        }
    }
}

/// A string field of 1 to `max` characters without control characters.
fn text(value: &Value, max: usize) -> Result<&str, String> {
    match value.as_str() {
        Some(s) if s.is_empty() || s.chars().count() > max => {
            Err(format!("must be 1 to {max} characters"))
        }
        Some(s) if s.chars().any(char::is_control) => {
            Err("must not contain control characters".into())
        }
        Some(s) => Ok(s),
        None => Err("must be a string".into()),
    }
}

/// A minute field: unix seconds, the start of a minute, not too far ahead of `now` and not
/// before `oldest`.
fn minute(value: Option<&Value>, now: i64, oldest: i64, max_age: i64) -> Result<i64, String> {
    match value.map(Value::as_i64) {
        None => Err("is required".to_string()),
        Some(None) => Err("must be an integer: unix seconds".to_string()),
        Some(Some(m)) if m % 60 != 0 => Err(format!(
            "{m} is not the start of a minute: unix seconds, a multiple of 60"
        )),
        Some(Some(m)) if m > now + MAX_FUTURE_SECS => Err(format!(
            "{m} is more than {MAX_FUTURE_SECS} seconds ahead of the server's clock ({now})"
        )),
        Some(Some(m)) if m < oldest => Err(format!(
            "{m} is older than the server keeps accepting ({oldest}, {max_age} seconds ago)"
        )),
        Some(Some(m)) => Ok(m),
    }
}

/// A count field of an outcome row: an integer from 0 to [`MAX_COUNT`], 0 when absent.
fn count(value: Option<&Value>) -> Result<u64, String> {
    match value.map(Value::as_u64) {
        None => Ok(0),
        Some(Some(c)) if c <= MAX_COUNT => Ok(c),
        Some(_) => Err(format!("must be an integer from 0 to {MAX_COUNT}")),
    }
}

/// A custom metric name: 1 to 64 characters of `[a-zA-Z0-9._-]`.
fn is_metric_name(name: &str) -> bool {
    (1..=MAX_METRIC_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A JSON pointer token for an object key (RFC 6901: `~` as `~0`, `/` as `~1`).
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// One custom metric's sums, reporting each bad field under `at`.
fn metric_sums(value: &Value, at: &str, problems: &mut Problems) -> Option<MetricSums> {
    let Some(object) = value.as_object() else {
        problems.add(
            at.to_string(),
            "must be an object: count, sum, sumOfSquares",
        );
        return None;
    };
    let mut ok = true;
    let count = match object.get("count").map(Value::as_u64) {
        Some(Some(c)) if c <= MAX_COUNT => c,
        _ => {
            problems.add(
                format!("{at}/count"),
                format!("must be an integer from 0 to {MAX_COUNT}"),
            );
            ok = false;
            0
        }
    };
    let mut number = |field: &str, nonnegative: bool| match object.get(field).map(Value::as_f64) {
        Some(Some(x)) if x.is_finite() && (!nonnegative || x >= 0.0) => x,
        _ => {
            let what = if nonnegative {
                "must be a finite number, zero or more"
            } else {
                "must be a finite number"
            };
            problems.add(format!("{at}/{field}"), what);
            ok = false;
            0.0
        }
    };
    let sum = number("sum", false);
    let sum_of_squares = number("sumOfSquares", true);
    for field in object.keys() {
        if !matches!(field.as_str(), "count" | "sum" | "sumOfSquares") {
            problems.add(
                format!("{at}/{}", pointer_token(field)),
                "is not a field of metric sums",
            );
            ok = false;
        }
    }
    ok.then_some(MetricSums {
        count,
        sum,
        sum_of_squares,
    })
}

/// One outcome row (`/outcomes/{i}`), its problems reported with their JSON pointers.
fn outcome_row(
    row: &Value,
    i: usize,
    clock: (i64, i64, i64),
    problems: &mut Problems,
) -> Option<OutcomeAggregate> {
    let (now, oldest, max_age) = clock;
    let Some(row) = row.as_object() else {
        problems.add(format!("/outcomes/{i}"), "must be an object");
        return None;
    };
    let at = |field: &str| format!("/outcomes/{i}/{field}");
    let before = problems.0.len();
    let report = |problems: &mut Problems, field: &str, result: Result<(), &String>| {
        if let Err(message) = result {
            problems.add(at(field), message.clone());
        }
    };
    let minute = minute(row.get("minute"), now, oldest, max_age);
    report(problems, "minute", minute.as_ref().map(|_| ()));
    let flag = match row.get("flag") {
        Some(v) => text(v, MAX_NAME),
        None => Err("is required".into()),
    };
    report(problems, "flag", flag.as_ref().map(|_| ()));
    let variant = match row.get("variant") {
        Some(v) => text(v, MAX_NAME),
        None => Err("is required: outcomes are kept per variant".into()),
    };
    report(problems, "variant", variant.as_ref().map(|_| ()));
    let exposures = count(row.get("exposures"));
    report(problems, "exposures", exposures.as_ref().map(|_| ()));
    let requests = count(row.get("requests"));
    report(problems, "requests", requests.as_ref().map(|_| ()));
    let errors = count(row.get("errors"));
    report(problems, "errors", errors.as_ref().map(|_| ()));
    if let (Ok(requests), Ok(errors)) = (&requests, &errors)
        && errors > requests
    {
        problems.add(
            at("errors"),
            format!("{errors} errors is more than the {requests} requests"),
        );
    }
    let latency = match row.get("latency") {
        None | Some(Value::Null) => Ok(LatencySketch::new()),
        Some(Value::Object(sketch))
            if sketch
                .get("bins")
                .and_then(Value::as_array)
                .is_some_and(|bins| bins.len() > MAX_SKETCH_BINS) =>
        {
            Err(format!(
                "a sketch lists at most {MAX_SKETCH_BINS} buckets (one per index)"
            ))
        }
        // serde would also take a struct's fields as an array; the wire shape is an object.
        Some(v) if !v.is_object() => {
            Err("must be an object: {\"zero\": n, \"bins\": [[index, count], …]}".into())
        }
        Some(v) => serde_json::from_value::<LatencySketch>(v.clone()).map_err(|e| {
            format!("is not a latency sketch ({{\"zero\": n, \"bins\": [[index, count], …]}}): {e}")
        }),
    };
    match (&latency, &requests) {
        (Ok(sketch), Ok(requests)) if sketch.count() > *requests => problems.add(
            at("latency"),
            format!(
                "holds {} latencies, more than the {requests} requests",
                sketch.count()
            ),
        ),
        (Err(message), _) => problems.add(at("latency"), message.clone()),
        _ => {}
    }
    let mut metrics = BTreeMap::new();
    match row.get("metrics") {
        None | Some(Value::Null) => {}
        Some(Value::Object(named)) if named.len() > MAX_METRICS => problems.add(
            at("metrics"),
            format!(
                "{} metrics: a row carries at most {MAX_METRICS}",
                named.len()
            ),
        ),
        Some(Value::Object(named)) => {
            for (name, sums) in named {
                let path = at(&format!("metrics/{}", pointer_token(name)));
                if !is_metric_name(name) {
                    problems.add(
                        path,
                        format!(
                            "a metric name is 1 to {MAX_METRIC_NAME} characters of [a-zA-Z0-9._-]"
                        ),
                    );
                    continue;
                }
                if let Some(sums) = metric_sums(sums, &path, problems) {
                    metrics.insert(name.clone(), sums);
                }
            }
        }
        Some(_) => problems.add(at("metrics"), "must be an object: name → sums"),
    }
    let coverage = coverage(
        row.get("coverage"),
        &at("coverage"),
        exposures.as_ref().ok().copied(),
        problems,
    );
    if problems.0.len() != before {
        return None;
    }
    Some(OutcomeAggregate {
        minute: minute.ok()?,
        flag: flag.ok()?.to_string(),
        variant: variant.ok()?.to_string(),
        observations: ArmObservations {
            exposures: exposures.ok()?,
            requests: requests.ok()?,
            errors: errors.ok()?,
            latency: latency.ok()?,
            metrics,
        },
        coverage,
    })
}

/// An outcome row's `coverage` (`{"platform": {"ios": 12, "other": 1}}`), reporting each bad
/// field under `at`: at most [`MAX_COVERAGE_ATTRIBUTES`] attribute paths of 1 to 256
/// characters, each with at most [`MAX_COVERAGE_VALUES`] values of 1 to 128 characters
/// counting 1 or more, and no attribute counting more than the row's `exposures` (each first
/// exposure is counted once per attribute).
fn coverage(
    value: Option<&Value>,
    at: &str,
    exposures: Option<u64>,
    problems: &mut Problems,
) -> anchor_rollout::coverage::ValueCounts {
    let mut out = BTreeMap::new();
    let attributes = match value {
        None | Some(Value::Null) => return out,
        Some(Value::Object(attributes)) if attributes.len() > MAX_COVERAGE_ATTRIBUTES => {
            problems.add(
                at.to_string(),
                format!(
                    "{} attributes: a row breaks exposures down by at most {MAX_COVERAGE_ATTRIBUTES}",
                    attributes.len()
                ),
            );
            return out;
        }
        Some(Value::Object(attributes)) => attributes,
        Some(_) => {
            problems.add(
                at.to_string(),
                "must be an object: attribute → value → exposures",
            );
            return out;
        }
    };
    for (attribute, values) in attributes {
        let path = format!("{at}/{}", pointer_token(attribute));
        if let Err(message) = text(&Value::String(attribute.clone()), MAX_NAME) {
            problems.add(path, format!("an attribute path {message}"));
            continue;
        }
        let values = match values {
            Value::Object(values) if values.len() > MAX_COVERAGE_VALUES => {
                problems.add(
                    path,
                    format!(
                        "{} values: at most {MAX_COVERAGE_VALUES} per attribute (count the rest as `other`)",
                        values.len()
                    ),
                );
                continue;
            }
            Value::Object(values) => values,
            _ => {
                problems.add(path, "must be an object: value → exposures");
                continue;
            }
        };
        let mut counts = BTreeMap::new();
        let mut total = 0u64;
        for (value, n) in values {
            let value_path = format!("{path}/{}", pointer_token(value));
            if let Err(message) = text(&Value::String(value.clone()), MAX_COVERAGE_VALUE) {
                problems.add(value_path, format!("a value {message}"));
                continue;
            }
            match n.as_u64() {
                Some(n) if (1..=MAX_COUNT).contains(&n) => {
                    total = total.saturating_add(n);
                    counts.insert(value.clone(), n);
                }
                _ => problems.add(
                    value_path,
                    format!("must be an integer from 1 to {MAX_COUNT}"),
                ),
            }
        }
        if let Some(exposures) = exposures
            && total > exposures
        {
            problems.add(
                path,
                format!("counts {total} exposures, more than the row's {exposures}"),
            );
            continue;
        }
        out.insert(attribute.clone(), counts);
    }
    out
}

/// Judges a batch (`body`) against the server's clock (`now`, unix seconds) and the oldest
/// minute it accepts (`max_age`, seconds).
fn parse_batch(body: &Value, now: i64, max_age: i64) -> Result<Batch, ApiError> {
    let mut problems = Problems::default();
    let Some(object) = body.as_object() else {
        return Err(ApiError::Malformed(vec![Diagnostic {
            path: String::new(),
            message: "the body must be a JSON object".into(),
        }]));
    };
    let id = match object.get("batchId").map(|v| text(v, MAX_BATCH_ID)) {
        Some(Ok(id)) => id.to_string(),
        Some(Err(message)) => {
            problems.add("/batchId".into(), message);
            String::new()
        }
        None => {
            problems.add("/batchId".into(), "is required");
            String::new()
        }
    };
    if let Some(Err(message)) = object
        .get("sdk")
        .filter(|v| !v.is_null())
        .map(|v| text(v, MAX_NAME))
    {
        problems.add("/sdk".into(), message);
    }
    let empty = Vec::new();
    let evaluations = match object.get("evaluations") {
        Some(Value::Array(rows)) if rows.len() > MAX_ROWS => {
            return Err(ApiError::Malformed(vec![Diagnostic {
                path: "/evaluations".into(),
                message: format!(
                    "{} rows: a batch carries at most {MAX_ROWS}; send several",
                    rows.len()
                ),
            }]));
        }
        Some(Value::Array(rows)) => rows,
        Some(_) => {
            problems.add("/evaluations".into(), "must be an array");
            &empty
        }
        None => {
            problems.add("/evaluations".into(), "is required");
            &empty
        }
    };
    let oldest = now - max_age;
    let mut rows = Vec::with_capacity(evaluations.len());
    for (i, row) in evaluations.iter().enumerate() {
        let at = |field: &str| format!("/evaluations/{i}/{field}");
        let Some(row) = row.as_object() else {
            problems.add(format!("/evaluations/{i}"), "must be an object");
            continue;
        };
        let minute = minute(row.get("minute"), now, oldest, max_age);
        let flag = match row.get("flag") {
            Some(v) => text(v, MAX_NAME),
            None => Err("is required".into()),
        };
        let variant = match row.get("variant") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => text(v, MAX_NAME).map(Some),
        };
        let count = match row.get("count").map(Value::as_u64) {
            None => Err("is required".to_string()),
            Some(Some(c)) if (1..=MAX_COUNT).contains(&c) => Ok(c),
            Some(_) => Err(format!("must be an integer from 1 to {MAX_COUNT}")),
        };
        match (minute, flag, variant, count) {
            (Ok(minute), Ok(flag), Ok(variant), Ok(count)) => rows.push(EvaluationCount {
                minute,
                flag: flag.to_string(),
                variant: variant.map(str::to_string),
                count,
            }),
            (minute, flag, variant, count) => {
                for (field, result) in [
                    ("minute", minute.err()),
                    ("flag", flag.err()),
                    ("variant", variant.err()),
                    ("count", count.err()),
                ] {
                    if let Some(message) = result {
                        problems.add(at(field), message);
                    }
                }
            }
        }
    }
    let outcome_rows = match object.get("outcomes") {
        None | Some(Value::Null) => &empty,
        Some(Value::Array(rows)) if rows.len() > MAX_OUTCOME_ROWS => {
            return Err(ApiError::Malformed(vec![Diagnostic {
                path: "/outcomes".into(),
                message: format!(
                    "{} rows: a batch carries at most {MAX_OUTCOME_ROWS} outcome rows; send several",
                    rows.len()
                ),
            }]));
        }
        Some(Value::Array(rows)) => rows,
        Some(_) => {
            problems.add("/outcomes".into(), "must be an array");
            &empty
        }
    };
    let mut outcomes = Vec::with_capacity(outcome_rows.len());
    for (i, row) in outcome_rows.iter().enumerate() {
        if let Some(row) = outcome_row(row, i, (now, oldest, max_age), &mut problems) {
            outcomes.push(row);
        }
    }
    if problems.0.is_empty() {
        Ok(Batch { id, rows, outcomes })
    } else {
        Err(ApiError::Malformed(problems.0))
    }
}

/// `POST /sdk/v1/telemetry`: adds a batch of evaluation counts (and outcomes) to the key's
/// environment. 202 `{"accepted": <rows>}` (with `"outcomes": <rows>` when it had some); a
/// batch already counted, 202 `{"accepted": 0, "duplicate": true}`; 400 (problem details
/// naming every bad field) and nothing stored otherwise.
async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let key = match crate::ofrep::authenticate(&state, &headers, None).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    match ingest_batch(&state, &key, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn ingest_batch(
    state: &AppState,
    key: &anchor_store::SdkKeyRecord,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let batch = parse_batch(&value, state.now_ms() / 1000, state.telemetry_max_age_secs)?;
    let fresh = state
        .store
        .record_telemetry(
            &key.project,
            &key.environment,
            &batch.id,
            &batch.rows,
            &batch.outcomes,
        )
        .await?;
    // `outcomes` only when the batch had some, so the answer to a batch of counts alone is
    // what it always was.
    let answer = match (fresh, batch.outcomes.len()) {
        (false, _) => json!({ "accepted": 0, "duplicate": true }),
        (true, 0) => json!({ "accepted": batch.rows.len() }),
        (true, outcomes) => json!({ "accepted": batch.rows.len(), "outcomes": outcomes }),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    /// Unix seconds: the first minute included (default: 24 hours before `to`).
    from: Option<i64>,
    /// Unix seconds: minutes that start at or after it are left out (default: the end of the
    /// current minute). At most 31 days after `from`.
    to: Option<i64>,
}

/// Counts by variant name, and of the caller's default.
#[derive(Serialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct VariantCounts {
    /// Evaluations that served each variant.
    variants: BTreeMap<String, u64>,
    /// Evaluations that served the caller's default (an error, or a flag the SDK did not
    /// know): reported by SDKs as `"variant": null`.
    default: u64,
}

impl VariantCounts {
    fn add(&mut self, variant: Option<String>, count: u64) {
        let slot = match variant {
            Some(v) => self.variants.entry(v).or_default(),
            None => &mut self.default,
        };
        *slot = slot.saturating_add(count);
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct MinuteCounts {
    /// Unix seconds at the start of the minute.
    minute: i64,
    #[serde(flatten)]
    counts: VariantCounts,
}

/// One flag's evaluations in one environment as SDKs reported them, minute by minute.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct FlagEvaluations {
    flag: String,
    environment: String,
    /// The range read, in unix seconds: `[from, to)`.
    from: i64,
    to: i64,
    /// Only the minutes with evaluations, oldest first.
    minutes: Vec<MinuteCounts>,
    /// The sums over the range.
    totals: VariantCounts,
    /// Every evaluation in the range.
    evaluations: u64,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}/evaluations", tag = "telemetry", summary = "How often SDKs evaluated a flag, per minute and variant (the last 24 hours by default)", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key"), RangeQuery), responses((status = 200, body = FlagEvaluations), (status = 400, description = "A bad range", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn flag_evaluations(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag)): Path<(String, String, String)>,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<FlagEvaluations>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (from, to) = range(&state, &query)?;
    // An unknown flag is a 404, not an empty answer (the store keeps counts of any key SDKs
    // report, known or not).
    state.store.flag(&project, &flag).await?;
    let rows = state
        .store
        .evaluation_counts(&project, &environment, &flag, from, to)
        .await?;
    let mut minutes: Vec<MinuteCounts> = Vec::new();
    let mut totals = VariantCounts::default();
    let mut evaluations = 0u64;
    for row in rows {
        evaluations = evaluations.saturating_add(row.count);
        totals.add(row.variant.clone(), row.count);
        match minutes.last_mut() {
            Some(last) if last.minute == row.minute => last.counts.add(row.variant, row.count),
            _ => {
                let mut counts = VariantCounts::default();
                counts.add(row.variant, row.count);
                minutes.push(MinuteCounts {
                    minute: row.minute,
                    counts,
                });
            }
        }
    }
    Ok(Json(FlagEvaluations {
        flag,
        environment,
        from,
        to,
        minutes,
        totals,
        evaluations,
    }))
}

/// The latency quantiles of a variant, in milliseconds, each within 1% of the exact value.
#[derive(Serialize, utoipa::ToSchema)]
struct LatencyQuantiles {
    p50: f64,
    p95: f64,
    p99: f64,
    /// The latencies recorded (requests may be recorded without one).
    count: u64,
}

/// A custom metric of a variant: how many values were recorded and their (winsorised) mean.
#[derive(Serialize, utoipa::ToSchema)]
struct MetricSummary {
    count: u64,
    /// `null` without values.
    mean: Option<f64>,
}

/// One variant's outcomes over a range (or a minute).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct VariantOutcomes {
    variant: String,
    /// Units first served the variant, summed over minutes and SDK instances: an SDK counts a
    /// unit once, in the minute it first serves it, until the flag's configuration changes (a
    /// release's stage change does), so over one stage this is the distinct units each instance
    /// exposed (a unit served by two instances counts twice).
    exposures: u64,
    requests: u64,
    errors: u64,
    /// Errors per request; `null` without requests.
    error_rate: Option<f64>,
    /// `null` without latencies.
    latency: Option<LatencyQuantiles>,
    /// By metric name.
    metrics: BTreeMap<String, MetricSummary>,
}

impl VariantOutcomes {
    fn of(variant: String, arm: &ArmObservations) -> Self {
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let quantile = |q| arm.latency.quantile(q).unwrap_or(0.0);
        VariantOutcomes {
            variant,
            exposures: arm.exposures,
            requests: arm.requests,
            errors: arm.errors,
            error_rate: ratio(arm.errors, arm.requests),
            latency: (arm.latency.count() > 0).then(|| LatencyQuantiles {
                p50: quantile(0.5),
                p95: quantile(0.95),
                p99: quantile(0.99),
                count: arm.latency.count(),
            }),
            metrics: arm
                .metrics
                .iter()
                .map(|(name, sums)| {
                    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
                    let mean = (sums.count > 0).then(|| sums.sum / sums.count as f64);
                    (
                        name.clone(),
                        MetricSummary {
                            count: sums.count,
                            mean,
                        },
                    )
                })
                .collect(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct MinuteOutcomes {
    /// Unix seconds at the start of the minute.
    minute: i64,
    variants: Vec<VariantOutcomes>,
}

/// One flag's per-variant outcomes in one environment as SDKs reported them.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct FlagOutcomes {
    flag: String,
    environment: String,
    /// The range read, in unix seconds: `[from, to)`.
    from: i64,
    to: i64,
    /// Each variant over the whole range, by name.
    variants: Vec<VariantOutcomes>,
    /// Only the minutes with outcomes, oldest first.
    minutes: Vec<MinuteOutcomes>,
}

/// Adds `other` into `arm`, as the store merges minutes.
fn merge_into(arm: &mut ArmObservations, other: &ArmObservations) {
    arm.exposures = arm.exposures.saturating_add(other.exposures);
    arm.requests = arm.requests.saturating_add(other.requests);
    arm.errors = arm.errors.saturating_add(other.errors);
    arm.latency.merge(&other.latency);
    for (name, sums) in &other.metrics {
        arm.metrics.entry(name.clone()).or_default().merge(sums);
    }
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}/outcomes", tag = "telemetry", summary = "Per-variant outcomes SDKs reported for a flag: exposures, error rate, latency quantiles, metric means (the last 24 hours by default)", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key"), RangeQuery), responses((status = 200, body = FlagOutcomes), (status = 400, description = "A bad range", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn flag_outcomes(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag)): Path<(String, String, String)>,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<FlagOutcomes>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (from, to) = range(&state, &query)?;
    state.store.flag(&project, &flag).await?;
    let rows = state
        .store
        .outcome_minutes(&project, &environment, &flag, from, to)
        .await?;
    let mut totals: BTreeMap<String, ArmObservations> = BTreeMap::new();
    let mut minutes: Vec<MinuteOutcomes> = Vec::new();
    for row in rows {
        merge_into(
            totals.entry(row.variant.clone()).or_default(),
            &row.observations,
        );
        let variant = VariantOutcomes::of(row.variant, &row.observations);
        match minutes.last_mut() {
            Some(last) if last.minute == row.minute => last.variants.push(variant),
            _ => minutes.push(MinuteOutcomes {
                minute: row.minute,
                variants: vec![variant],
            }),
        }
    }
    Ok(Json(FlagOutcomes {
        flag,
        environment,
        from,
        to,
        variants: totals
            .into_iter()
            .map(|(variant, arm)| VariantOutcomes::of(variant, &arm))
            .collect(),
        minutes,
    }))
}

/// The range a read covers: `[from, to)` in unix seconds, by default the 24 hours up to the end
/// of the current minute.
fn range(state: &AppState, query: &RangeQuery) -> ApiResult<(i64, i64)> {
    let now = state.now_ms() / 1000;
    let to = query.to.unwrap_or((now.div_euclid(60) + 1) * 60);
    let from = query.from.unwrap_or(to - 24 * 60 * 60);
    if from >= to || to - from > MAX_RANGE_SECS {
        return Err(ApiError::BadRequest(format!(
            "from ({from}) must come before to ({to}), by at most {MAX_RANGE_SECS} seconds (31 days)"
        )));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_769_630;

    fn paths(body: Value) -> Vec<String> {
        match parse_batch(&body, NOW, DEFAULT_MAX_AGE_SECS) {
            Ok(_) => Vec::new(),
            Err(ApiError::Malformed(d)) => d.into_iter().map(|d| d.path).collect(),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn minutes_outlive_the_late_data_window_and_batch_ids_outlive_a_retry() {
        let day = 86_400;
        let settings = |minutes: i64, keep: i64| Compaction {
            minute_secs: minutes * day,
            keep_secs: keep * day,
            every: COMPACTION_EVERY,
        };
        // Two days of minutes, a week's window: minutes stay an hour past the window.
        let r = retention(settings(2, 90), 7 * day);
        assert_eq!(r.minute_secs, 7 * day + 3_600);
        assert_eq!(r.keep_secs, 90 * day);
        assert_eq!(r.batch_ids_ms, (7 * day + MAX_FUTURE_SECS + 3_600) * 1_000);
        // Longer minute retentions stand; the retention never undercuts the minutes.
        let r = retention(settings(10, 3), day);
        assert_eq!((r.minute_secs, r.keep_secs), (10 * day, 10 * day));
    }

    #[test]
    fn every_bad_field_is_named_by_its_json_pointer() {
        let minute = NOW / 60 * 60;
        let cases = [
            (json!({"batchId": "b", "evaluations": []}), vec![]),
            (
                json!({"batchId": "b", "sdk": null, "evaluations": [
                    {"minute": minute, "flag": "f", "variant": null, "count": 1}
                ]}),
                vec![],
            ),
            (json!({"evaluations": []}), vec!["/batchId"]),
            (json!({"batchId": "", "evaluations": []}), vec!["/batchId"]),
            (
                json!({"batchId": "x".repeat(65), "evaluations": []}),
                vec!["/batchId"],
            ),
            (
                json!({"batchId": "b", "sdk": 3}),
                vec!["/sdk", "/evaluations"],
            ),
            (
                json!({"batchId": "b", "evaluations": [
                    {"minute": minute, "flag": "f", "variant": "on", "count": 1},
                    {"minute": minute + 1, "flag": "", "variant": "", "count": 0},
                    {"minute": minute + 600, "flag": "f", "count": 1},
                    {"minute": minute - DEFAULT_MAX_AGE_SECS - 60, "flag": "f", "count": 1},
                    {"minute": "now", "flag": 1, "variant": 2, "count": -1},
                    {"flag": "f"},
                    7
                ]}),
                vec![
                    "/evaluations/1/minute",
                    "/evaluations/1/flag",
                    "/evaluations/1/variant",
                    "/evaluations/1/count",
                    "/evaluations/2/minute",
                    "/evaluations/3/minute",
                    "/evaluations/4/minute",
                    "/evaluations/4/flag",
                    "/evaluations/4/variant",
                    "/evaluations/4/count",
                    "/evaluations/5/minute",
                    "/evaluations/5/count",
                    "/evaluations/6",
                ],
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(paths(body.clone()), expected, "{body}");
        }
    }

    #[test]
    fn every_bad_outcome_field_is_named_by_its_json_pointer() {
        let minute = NOW / 60 * 60;
        let batch =
            |outcomes: Value| json!({"batchId": "b", "evaluations": [], "outcomes": outcomes});
        let good = json!({"minute": minute, "flag": "f", "variant": "on", "exposures": 3,
            "requests": 5, "errors": 1, "latency": {"zero": 1, "bins": [[231, 4]]},
            "metrics": {"revenue.eur": {"count": 2, "sum": 10.5, "sumOfSquares": 60.25}}});
        let many_metrics: serde_json::Map<String, Value> = (0..=MAX_METRICS)
            .map(|i| {
                (
                    format!("m{i}"),
                    json!({"count": 1, "sum": 1.0, "sumOfSquares": 1.0}),
                )
            })
            .collect();
        let cases = [
            (batch(json!([good])), vec![]),
            (batch(Value::Null), vec![]),
            (
                batch(json!([{"minute": minute, "flag": "f", "variant": "on"}])),
                vec![],
            ),
            (batch(json!({})), vec!["/outcomes"]),
            (
                batch(json!([
                    good,
                    {"minute": minute + 1, "flag": "", "exposures": -1, "requests": 1.5,
                     "errors": "x", "latency": [], "metrics": []},
                    {"minute": minute, "flag": "f", "variant": "on", "requests": 2, "errors": 3,
                     "latency": {"bins": [[5000, 1]]}},
                    {"minute": minute, "flag": "f", "variant": "on", "requests": 2,
                     "latency": {"bins": [[1, 3]]}, "metrics": {
                        "": {"count": 1, "sum": 1.0, "sumOfSquares": 1.0},
                        "a/b": {"count": 1, "sum": 1.0, "sumOfSquares": 1.0},
                        "ok": {"count": -1, "sum": "x", "sumOfSquares": -1.0, "extra": 1}}},
                    {"minute": minute, "flag": "f", "variant": "on", "metrics": many_metrics},
                    "row",
                ])),
                vec![
                    "/outcomes/1/minute",
                    "/outcomes/1/flag",
                    "/outcomes/1/variant",
                    "/outcomes/1/exposures",
                    "/outcomes/1/requests",
                    "/outcomes/1/errors",
                    "/outcomes/1/latency",
                    "/outcomes/1/metrics",
                    "/outcomes/2/errors",
                    "/outcomes/2/latency",
                    "/outcomes/3/latency",
                    "/outcomes/3/metrics/",
                    "/outcomes/3/metrics/a~1b",
                    "/outcomes/3/metrics/ok/count",
                    "/outcomes/3/metrics/ok/sum",
                    "/outcomes/3/metrics/ok/sumOfSquares",
                    "/outcomes/3/metrics/ok/extra",
                    "/outcomes/4/metrics",
                    "/outcomes/5",
                ],
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(paths(body.clone()), expected, "{body}");
        }
        let parsed = parse_batch(&batch(json!([good])), NOW, DEFAULT_MAX_AGE_SECS)
            .ok()
            .unwrap();
        assert!(parsed.outcomes[0].coverage.is_empty());
        let row = &parsed.outcomes[0].observations;
        assert_eq!((row.exposures, row.requests, row.errors), (3, 5, 1));
        assert_eq!(row.latency.count(), 5);
        assert_eq!(row.metrics["revenue.eur"].sum, 10.5);
    }

    #[test]
    fn every_bad_coverage_field_is_named_by_its_json_pointer() {
        let minute = NOW / 60 * 60;
        let row = |coverage: Value| {
            json!({"batchId": "b", "evaluations": [], "outcomes": [
                {"minute": minute, "flag": "f", "variant": "on", "exposures": 10,
                 "coverage": coverage}]})
        };
        let many_values: serde_json::Map<String, Value> = (0..=MAX_COVERAGE_VALUES)
            .map(|i| (format!("v{i}"), json!(1)))
            .collect();
        let many_attributes: serde_json::Map<String, Value> = (0..=MAX_COVERAGE_ATTRIBUTES)
            .map(|i| (format!("a{i}"), json!({"x": 1})))
            .collect();
        let good = json!({"platform": {"ios": 6, "android": 3, "other": 1},
                          "geo.country": {"(none)": 10}});
        let cases = [
            (row(good.clone()), vec![]),
            (row(Value::Null), vec![]),
            (row(json!([])), vec!["/outcomes/0/coverage"]),
            (
                row(Value::Object(many_attributes)),
                vec!["/outcomes/0/coverage"],
            ),
            (
                row(json!({
                    "": {"x": 1},
                    "platform": [],
                    "many": many_values,
                    "counts": {"": 1, "zero": 0, "neg": -1, "text": "1", "a/b": 1},
                    "too.many": {"a": 6, "b": 5},
                })),
                vec![
                    "/outcomes/0/coverage/",
                    "/outcomes/0/coverage/counts/",
                    "/outcomes/0/coverage/counts/neg",
                    "/outcomes/0/coverage/counts/text",
                    "/outcomes/0/coverage/counts/zero",
                    "/outcomes/0/coverage/many",
                    "/outcomes/0/coverage/platform",
                    "/outcomes/0/coverage/too.many",
                ],
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(paths(body.clone()), expected, "{body}");
        }
        let parsed = parse_batch(&row(good), NOW, DEFAULT_MAX_AGE_SECS)
            .ok()
            .unwrap();
        let coverage = &parsed.outcomes[0].coverage;
        assert_eq!(coverage["platform"]["ios"], 6);
        assert_eq!(coverage["geo.country"]["(none)"], 10);
    }
}
