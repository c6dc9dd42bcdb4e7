//! The OpenFeature Remote Evaluation Protocol (OFREP): evaluations for any OpenFeature SDK.
//!
//! `POST /ofrep/v1/evaluate/flags/{key}` and `POST /ofrep/v1/evaluate/flags`, authenticated
//! with an environment's SDK key (server or client kind) as `Authorization: Bearer …` or
//! `X-API-Key`. Answers come from the environment's in-memory snapshot; the database is read
//! only to look a key up the first time it is seen.

use std::collections::HashMap;
use std::sync::RwLock;

use anchor_engine::{ErrorCode, Evaluation, EvaluationContext, evaluate, evaluate_all};
use anchor_store::SdkKeyRecord;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::token_hash;
use crate::snapshots::EnvironmentSnapshot;

/// The SDK routes; the OFREP ones answer browsers of `cors_origins` (CORS), the others never.
pub fn routes(cors_origins: &[String]) -> axum::Router<AppState> {
    let mut ofrep = axum::Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(evaluate_one))
        .route("/ofrep/v1/evaluate/flags", post(evaluate_bulk));
    let origins: Vec<HeaderValue> = cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if !origins.is_empty() {
        use axum::http::{HeaderName, Method};
        ofrep = ofrep.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::POST, Method::OPTIONS])
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                    header::IF_NONE_MATCH,
                    HeaderName::from_static("x-api-key"),
                ])
                .expose_headers([header::ETAG, header::RETRY_AFTER]),
        );
    }
    ofrep
        .route("/sdk/v1/config", axum::routing::get(download_config))
        .route("/sdk/v1/stream", axum::routing::get(stream))
}

/// Open streams per SDK key, so one key cannot exhaust the server.
#[derive(Debug, Default)]
pub struct StreamCounter {
    open: std::sync::Mutex<HashMap<String, usize>>,
}

/// The most streams one SDK key may hold open.
pub const MAX_STREAMS_PER_KEY: usize = 100;

/// Counts a stream as open until it is dropped.
struct StreamSlot {
    counter: std::sync::Arc<StreamCounter>,
    key_id: String,
}

impl StreamCounter {
    fn acquire(counter: &std::sync::Arc<StreamCounter>, key_id: &str) -> Option<StreamSlot> {
        let mut open = counter.open.lock().ok()?;
        let n = open.entry(key_id.to_string()).or_insert(0);
        if *n >= MAX_STREAMS_PER_KEY {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            counter: std::sync::Arc::clone(counter),
            key_id: key_id.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.counter.open.lock()
            && let Some(n) = open.get_mut(&self.key_id)
        {
            *n = n.saturating_sub(1);
        }
    }
}

fn config_event(held: &EnvironmentSnapshot) -> axum::response::sse::Event {
    axum::response::sse::Event::default()
        .event("config")
        .id(held.revision.to_string())
        .json_data(json!({
            "revision": held.revision,
            "flags": held.config.flags,
            "segments": held.config.segments,
        }))
        .unwrap_or_else(|_| axum::response::sse::Event::default().comment("unserialisable"))
}

/// Server-Sent Events for server-side SDKs (server keys only): the environment's whole
/// configuration on connect (unless `Last-Event-ID` names the current revision), then again
/// after every change, each with the revision as its id; a heartbeat comment every 15 s. A
/// slow reader skips to the latest configuration. Streams end when the server shuts down.
async fn stream(State(state): State<AppState>, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let key = match authenticate(&state, &headers).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    if key.kind != anchor_store::SdkKeyKind::Server {
        return StatusCode::FORBIDDEN.into_response();
    }
    let Some(slot) = StreamCounter::acquire(&state.streams, &key.id) else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"errorDetails": "too many open streams for this SDK key"})),
        )
            .into_response();
    };
    let mut updates = match state
        .snapshots
        .subscribe(state.store.as_ref(), &key.project, &key.environment)
        .await
    {
        Ok(updates) => updates,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let last_seen: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let current = std::sync::Arc::clone(&updates.borrow_and_update());
    let first = (last_seen != Some(current.revision)).then_some(current);
    let shutdown = state.shutdown.subscribe();
    let events = futures_util::stream::unfold(
        (updates, first, shutdown, slot),
        |(mut updates, first, mut shutdown, slot)| async move {
            if let Some(held) = first {
                let event: Result<Event, std::convert::Infallible> = Ok(config_event(&held));
                return Some((event, (updates, None, shutdown, slot)));
            }
            let changed = tokio::select! {
                changed = updates.changed() => changed.is_ok(),
                _ = shutdown.wait_for(|stopping| *stopping) => false,
            };
            if !changed {
                return None;
            }
            let held = std::sync::Arc::clone(&updates.borrow_and_update());
            Some((Ok(config_event(&held)), (updates, None, shutdown, slot)))
        },
    );
    Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(std::time::Duration::from_secs(15))
                .text("heartbeat"),
        )
        .into_response()
}

/// Requests per SDK key: a token bucket refilled at `per_second`, holding at most `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: std::sync::Mutex<HashMap<String, (f64, std::time::Instant)>>,
}

impl Default for RateLimiter {
    /// Generous: a client key is shared by every user of an application, and one server
    /// answers tens of thousands of evaluations a second.
    fn default() -> Self {
        RateLimiter::new(100_000.0, 200_000.0)
    }
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: f64) -> Self {
        RateLimiter {
            per_second,
            burst,
            buckets: std::sync::Mutex::default(),
        }
    }

    /// `Ok` to go ahead, or the number of whole seconds after which a request would be allowed.
    fn take(&self, key_id: &str) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        let (tokens, since) = buckets
            .entry(key_id.to_string())
            .or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*since).as_secs_f64() * self.per_second).min(self.burst);
        *since = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// SDK keys already looked up, by the hash of their secret. Emptied whenever keys change
/// through the API, so a revoked key stops working at once.
#[derive(Debug, Default)]
pub struct SdkKeyCache {
    keys: RwLock<HashMap<String, SdkKeyRecord>>,
}

impl SdkKeyCache {
    pub fn clear(&self) {
        if let Ok(mut keys) = self.keys.write() {
            keys.clear();
        }
    }
}

fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim().to_string());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_string())
}

/// The environment an SDK key belongs to, if the key is valid now (and within its rate).
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<SdkKeyRecord, Response> {
    let unauthorized = || StatusCode::UNAUTHORIZED.into_response();
    let secret = presented_key(headers).ok_or_else(unauthorized)?;
    if !(secret.starts_with("anc_srv_") || secret.starts_with("anc_cli_")) {
        return Err(unauthorized());
    }
    let hash = token_hash(&secret);
    let cached = state
        .sdk_keys
        .keys
        .read()
        .ok()
        .and_then(|keys| keys.get(&hash).cloned());
    let record = match cached {
        Some(record) => record,
        None => {
            let record = state
                .store
                .sdk_key_by_hash(&hash)
                .await
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())?
                .ok_or_else(unauthorized)?;
            if let Ok(mut keys) = state.sdk_keys.keys.write() {
                keys.insert(hash, record.clone());
            }
            record
        }
    };
    let now = state.now_ms();
    if record.revoked || record.expires_at.is_some_and(|t| t <= now) {
        return Err(unauthorized());
    }
    if let Err(seconds) = state.rate_limiter.take(&record.id) {
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"errorDetails": "this SDK key is over its rate limit"})),
        )
            .into_response();
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Err(response);
    }
    Ok(record)
}

async fn snapshot(
    state: &AppState,
    key: &SdkKeyRecord,
) -> Result<std::sync::Arc<EnvironmentSnapshot>, Response> {
    if let Some(held) = state.snapshots.get(&key.project, &key.environment) {
        return Ok(held);
    }
    state
        .snapshots
        .refresh(state.store.as_ref(), &key.project, &key.environment)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
    state
        .snapshots
        .get(&key.project, &key.environment)
        .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The evaluation context of a request body `{"context": {…}}` (an absent body or context is
/// an empty context).
fn context_of(body: &[u8]) -> Result<EvaluationContext, (&'static str, String)> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(EvaluationContext::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ("GENERAL", format!("the body is not JSON: {e}")))?;
    match value.get("context") {
        None | Some(Value::Null) => Ok(EvaluationContext::new()),
        Some(context) => EvaluationContext::from_value(context.clone())
            .map_err(|e| ("INVALID_CONTEXT", e.to_string())),
    }
}

fn failure(key: &str, code: &str, details: &str) -> Value {
    json!({ "key": key, "errorCode": code, "errorDetails": details })
}

/// One flag's answer as OFREP shapes it: success, or failure with its error code. It is
/// serialised straight from the evaluation, with no intermediate JSON tree: a bulk answer for
/// 1,000 flags is written in one pass.
struct Answer<'a> {
    key: &'a str,
    evaluation: Evaluation<'a>,
}

impl serde::Serialize for Answer<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = &self.evaluation;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("key", self.key)?;
        match (e.error_code(), e.value()) {
            (None, Some(value)) => {
                map.serialize_entry("value", value)?;
                map.serialize_entry("reason", e.reason().as_str())?;
                map.serialize_entry("variant", &e.variant())?;
                map.serialize_entry("metadata", &Metadata(e))?;
            }
            (code, _) => {
                map.serialize_entry("errorCode", code.unwrap_or(ErrorCode::General).as_str())?;
                map.serialize_entry(
                    "errorDetails",
                    e.error_message().unwrap_or("the evaluation failed"),
                )?;
            }
        }
        map.end()
    }
}

/// `flagVersion`, and `ruleId` / `failedPrerequisite` when there is one.
struct Metadata<'a, 'b>(&'b Evaluation<'a>);

impl serde::Serialize for Metadata<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.0;
        let mut map = serializer.serialize_map(None)?;
        if let Some(version) = e.flag_version() {
            map.serialize_entry("flagVersion", &version)?;
        }
        if let Some(rule) = e.rule() {
            map.serialize_entry("ruleId", rule.id)?;
        }
        if let Some(p) = e.failed_prerequisite() {
            map.serialize_entry("failedPrerequisite", p)?;
        }
        map.end()
    }
}

/// `{"flags": [...]}`.
#[derive(serde::Serialize)]
struct Bulk<'a> {
    flags: Vec<Answer<'a>>,
}

async fn evaluate_one(
    State(state): State<AppState>,
    Path(flag): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let key = match authenticate(&state, &headers).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    let context = match context_of(&body) {
        Ok(context) => context,
        Err((code, details)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(failure(&flag, code, &details)),
            )
                .into_response();
        }
    };
    let held = match snapshot(&state, &key).await {
        Ok(held) => held,
        Err(response) => return response,
    };
    let e = evaluate(&held.snapshot, &flag, &context);
    let status = match e.error_code() {
        None => StatusCode::OK,
        Some(ErrorCode::FlagNotFound) => StatusCode::NOT_FOUND,
        Some(_) => StatusCode::BAD_REQUEST,
    };
    (
        status,
        Json(Answer {
            key: &flag,
            evaluation: e,
        }),
    )
        .into_response()
}

async fn evaluate_bulk(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let key = match authenticate(&state, &headers).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    let context = match context_of(&body) {
        Ok(context) => context,
        Err((code, details)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "errorCode": code, "errorDetails": details })),
            )
                .into_response();
        }
    };
    let held = match snapshot(&state, &key).await {
        Ok(held) => held,
        Err(response) => return response,
    };
    // The ETag covers the configuration (its revision) and the context.
    let context_json = serde_json::to_string(&context.to_map()).unwrap_or_default();
    let etag = format!(
        "\"{}\"",
        &token_hash(&format!("{}:{}", held.revision, context_json))[..32]
    );
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            StatusCode::OK,
            Json(Bulk {
                flags: evaluate_all(&held.snapshot, &context)
                    .into_iter()
                    .map(|(key, evaluation)| Answer { key, evaluation })
                    .collect(),
            }),
        )
            .into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The whole configuration of the key's environment, for server-side SDKs that evaluate
/// locally: server keys only (a client key never sees rules or segment lists). `ETag` is the
/// environment's revision; `If-None-Match` with it gets 304.
async fn download_config(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let key = match authenticate(&state, &headers).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    if key.kind != anchor_store::SdkKeyKind::Server {
        return StatusCode::FORBIDDEN.into_response();
    }
    let held = match snapshot(&state, &key).await {
        Ok(held) => held,
        Err(response) => return response,
    };
    let etag = format!("\"{}\"", held.revision);
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(json!({
            "revision": held.revision,
            "flags": held.config.flags,
            "segments": held.config.segments,
        }))
        .into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}
