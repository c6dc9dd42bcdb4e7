//! SDK telemetry: how often each flag was evaluated, and to which variant, minute by minute.
//!
//! SDKs post batches of per-minute counts to `POST /sdk/v1/telemetry` with their SDK key (server
//! or client kind, as for OFREP); people read one flag's counts in one environment through
//! `GET /api/v1/projects/{project}/environments/{environment}/flags/{flag}/evaluations`. A
//! batch carries an id of the SDK's making: the store records it with the counts in one
//! transaction, so an SDK that retries a batch (its answer was lost) never counts it twice.
//!
//! A batch is judged whole before anything is stored: every problem is reported at once, each
//! with its JSON pointer, and a batch with any problem stores nothing.

use std::collections::BTreeMap;

use anchor_engine::Diagnostic;
use anchor_store::{EvaluationCount, Role};
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

/// The SDK route: ingestion.
pub fn sdk_routes() -> axum::Router<AppState> {
    axum::Router::new().route("/sdk/v1/telemetry", axum::routing::post(ingest))
}

/// The management API's route: reading counts.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(flag_evaluations))
}

/// A batch that passed every check.
struct Batch {
    id: String,
    rows: Vec<EvaluationCount>,
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
        let minute = match row.get("minute").map(Value::as_i64) {
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
        };
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
    if problems.0.is_empty() {
        Ok(Batch { id, rows })
    } else {
        Err(ApiError::Malformed(problems.0))
    }
}

/// `POST /sdk/v1/telemetry`: adds a batch of evaluation counts to the key's environment.
/// 202 `{"accepted": <rows>}`; a batch already counted, 202 `{"accepted": 0, "duplicate":
/// true}`; 400 (problem details naming every bad field) and nothing stored otherwise.
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
        .record_evaluations(&key.project, &key.environment, &batch.id, &batch.rows)
        .await?;
    let answer = if fresh {
        json!({ "accepted": batch.rows.len() })
    } else {
        json!({ "accepted": 0, "duplicate": true })
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
    let now = state.now_ms() / 1000;
    let to = query.to.unwrap_or((now.div_euclid(60) + 1) * 60);
    let from = query.from.unwrap_or(to - 24 * 60 * 60);
    if from >= to || to - from > MAX_RANGE_SECS {
        return Err(ApiError::BadRequest(format!(
            "from ({from}) must come before to ({to}), by at most {MAX_RANGE_SECS} seconds (31 days)"
        )));
    }
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
}
