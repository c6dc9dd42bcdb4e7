//! The OpenFeature Remote Evaluation Protocol (OFREP): evaluations for any OpenFeature SDK.
//!
//! `POST /ofrep/v1/evaluate/flags/{key}` and `POST /ofrep/v1/evaluate/flags`, authenticated
//! with an environment's SDK key (server or client kind) as `Authorization: Bearer …` or
//! `X-API-Key`. Answers come from the environment's in-memory snapshot; the database is read
//! only to look a key up the first time it is seen.
//!
//! The bulk answer carries OFREP 0.3.0's `eventStreams`: one Server-Sent Events stream,
//! `GET /ofrep/v1/events`, that sends `refetchEvaluation` whenever the environment changes
//! (ADR-0008 of open-feature/protocol). Server-side SDKs that evaluate locally use
//! `/sdk/v1/config` and `/sdk/v1/stream` instead: the whole configuration, then patches.

use std::collections::HashMap;
use std::sync::RwLock;

use anchor_engine::{ErrorCode, Evaluation, EvaluationContext, evaluate, evaluate_all};
use anchor_store::SdkKeyRecord;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::AppState;
use crate::auth::token_hash;
use crate::snapshots::{EnvironmentSnapshot, Patch};

/// The SDK routes; the OFREP ones answer browsers of `cors_origins` (CORS), the others never.
pub fn routes(cors_origins: &[String]) -> axum::Router<AppState> {
    let mut ofrep = axum::Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(evaluate_one))
        .route("/ofrep/v1/evaluate/flags", post(evaluate_bulk))
        .route(EVENTS_PATH, axum::routing::get(events));
    let origins: Vec<HeaderValue> = cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if !origins.is_empty() {
        use axum::http::{HeaderName, Method};
        ofrep = ofrep.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                    header::IF_NONE_MATCH,
                    HeaderName::from_static("x-api-key"),
                    HeaderName::from_static("last-event-id"),
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

/// The most `/sdk/v1/stream` streams one SDK key may hold open.
pub const MAX_STREAMS_PER_KEY: usize = 100;

/// The most `/ofrep/v1/events` streams one SDK key may hold open: a client key is shared by
/// every browser of an application, each with its own stream.
pub const MAX_EVENT_STREAMS_PER_KEY: usize = 10_000;

/// Counts a stream as open until it is dropped.
struct StreamSlot {
    counter: std::sync::Arc<StreamCounter>,
    key_id: String,
}

impl StreamCounter {
    fn acquire(
        counter: &std::sync::Arc<StreamCounter>,
        key_id: &str,
        limit: usize,
    ) -> Option<StreamSlot> {
        let mut open = counter.open.lock().ok()?;
        let n = open.entry(key_id.to_string()).or_insert(0);
        if *n >= limit {
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

fn config_event(held: &EnvironmentSnapshot) -> Event {
    Event::default()
        .event("config")
        .id(held.revision.to_string())
        .json_data(json!({
            "revision": held.revision,
            "flags": held.config.flags,
            "segments": held.config.segments,
            "watchedFlags": held.watched_flags,
            "coverage": held.coverage,
        }))
        .unwrap_or_else(|_| Event::default().comment("unserialisable"))
}

fn patch_event(patch: &Patch) -> Event {
    Event::default()
        .event("patch")
        .id(patch.revision.to_string())
        .data(&patch.json)
}

/// The revision a reconnecting client last received, from `Last-Event-ID`.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// What a `/sdk/v1/stream` stream holds between events.
struct SdkStream {
    /// The whole configuration, still to be sent first.
    first: Option<std::sync::Arc<EnvironmentSnapshot>>,
    /// Patches that catch a reconnecting client up, still to be sent.
    catch_up: std::vec::IntoIter<std::sync::Arc<Patch>>,
    patches: broadcast::Receiver<std::sync::Arc<Patch>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _slot: StreamSlot,
}

impl SdkStream {
    /// The next event, or `None` to end the stream: at shutdown, or when the client has fallen
    /// so far behind that the patches it missed are gone (it reconnects with `Last-Event-ID`
    /// and is sent the whole configuration).
    async fn next(&mut self) -> Option<Event> {
        if let Some(held) = self.first.take() {
            return Some(config_event(&held));
        }
        if let Some(patch) = self.catch_up.next() {
            return Some(patch_event(&patch));
        }
        tokio::select! {
            received = self.patches.recv() => received.ok().map(|patch| patch_event(&patch)),
            _ = self.shutdown.wait_for(|stopping| *stopping) => None,
        }
    }
}

/// Server-Sent Events for server-side SDKs (server keys only): the environment's whole
/// configuration on connect (`event: config`), then one `event: patch` per change with only
/// the flags and segments that changed, each with the revision as its id; a heartbeat comment
/// every 15 s. A client reconnecting with `Last-Event-ID` gets the patches it missed while the
/// history still holds them, else the whole configuration; a reader that falls further behind
/// than the history is disconnected. Streams end when the server shuts down.
async fn stream(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let key = match authenticate(&state, &headers, None).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    if key.kind != anchor_store::SdkKeyKind::Server {
        return StatusCode::FORBIDDEN.into_response();
    }
    let Some(slot) = StreamCounter::acquire(&state.streams, &key.id, MAX_STREAMS_PER_KEY) else {
        return too_many_streams();
    };
    let subscription = match state
        .snapshots
        .subscribe(
            state.store.as_ref(),
            &key.project,
            &key.environment,
            last_event_id(&headers),
        )
        .await
    {
        Ok(subscription) => subscription,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let (first, catch_up) = match subscription.catch_up {
        Some(patches) => (None, patches),
        None => (Some(subscription.current), Vec::new()),
    };
    let stream = SdkStream {
        first,
        catch_up: catch_up.into_iter(),
        patches: subscription.patches,
        shutdown: state.shutdown.subscribe(),
        _slot: slot,
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), stream))
    });
    Sse::new(events).keep_alive(heartbeat()).into_response()
}

fn heartbeat() -> KeepAlive {
    KeepAlive::new()
        .interval(std::time::Duration::from_secs(15))
        .text("heartbeat")
}

fn too_many_streams() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({"errorDetails": "too many open streams for this SDK key"})),
    )
        .into_response()
}

/// The path of the OFREP change notifications.
const EVENTS_PATH: &str = "/ofrep/v1/events";

/// The flag configuration validator of a revision, as `refetchEvaluation` carries it in
/// `etag` and providers send it back as `flagConfigEtag` (and as `/sdk/v1/config`'s `ETag`).
fn config_etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

/// The revision a configuration validator names.
fn revision_of(etag: &str) -> Option<u64> {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

fn refetch_event(revision: u64) -> Event {
    Event::default()
        .event("message")
        .id(revision.to_string())
        .json_data(json!({"type": "refetchEvaluation", "etag": config_etag(revision)}))
        .unwrap_or_else(|_| Event::default().comment("unserialisable"))
}

/// What a `/ofrep/v1/events` stream holds between events.
struct OfrepStream {
    /// Whether a reconnecting client missed changes and must be told at once.
    missed: Option<u64>,
    patches: broadcast::Receiver<std::sync::Arc<Patch>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _slot: StreamSlot,
}

impl OfrepStream {
    /// The next notification, or `None` at shutdown. Notifications only say "fetch again", so
    /// a burst of changes (or a reader that lagged behind them) becomes one notification
    /// naming the latest revision, and nobody is disconnected for being slow.
    async fn next(&mut self) -> Option<Event> {
        if let Some(revision) = self.missed.take() {
            return Some(refetch_event(revision));
        }
        let mut latest = loop {
            tokio::select! {
                received = self.patches.recv() => match received {
                    Ok(patch) => break patch.revision,
                    // The newest patches are still there: the next receive returns them.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.shutdown.wait_for(|stopping| *stopping) => return None,
            }
        };
        loop {
            match self.patches.try_recv() {
                Ok(patch) => latest = latest.max(patch.revision),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        Some(refetch_event(latest))
    }
}

/// OFREP change notifications (ADR-0008): `event: message`, the revision as `id`, data
/// `{"type": "refetchEvaluation", "etag": "\"<revision>\""}` after every change of the key's
/// environment; a heartbeat comment every 15 s. Nothing is sent on connect unless
/// `Last-Event-ID` names an older revision than the current one, which gets one notification
/// at once. Browsers' `EventSource` cannot send headers, so a client key may also come as the
/// `key` query parameter (the `eventStreams` entry of a client key's bulk answer includes it);
/// a server key must come in a header, so that it never lands in URLs and their logs.
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Response {
    let key = match authenticate(&state, &headers, query.key.as_deref()).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    let Some(slot) =
        StreamCounter::acquire(&state.event_streams, &key.id, MAX_EVENT_STREAMS_PER_KEY)
    else {
        return too_many_streams();
    };
    let last_seen = last_event_id(&headers);
    let subscription = match state
        .snapshots
        .subscribe(state.store.as_ref(), &key.project, &key.environment, None)
        .await
    {
        Ok(subscription) => subscription,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let current = subscription.current.revision;
    let stream = OfrepStream {
        missed: last_seen.filter(|seen| *seen != current).map(|_| current),
        patches: subscription.patches,
        shutdown: state.shutdown.subscribe(),
        _slot: slot,
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), stream))
    });
    Sse::new(events).keep_alive(heartbeat()).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    key: Option<String>,
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

/// The environment an SDK key belongs to, if the key is valid now (and within its rate). The
/// key comes in a header, or else (for client keys only, which browsers hold anyway) as
/// `from_query`.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    from_query: Option<&str>,
) -> Result<SdkKeyRecord, Response> {
    let unauthorized = || StatusCode::UNAUTHORIZED.into_response();
    let secret = match presented_key(headers) {
        Some(secret) => secret,
        None => from_query
            .map(str::trim)
            .filter(|secret| secret.starts_with("anc_cli_"))
            .ok_or_else(unauthorized)?
            .to_string(),
    };
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
    // A key over its rate is still in use.
    state
        .credential_uses
        .note(anchor_store::CredentialKind::SdkKey, &record.id, now);
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
    // A key still cached by this server after its environment was deleted (until the deletion
    // reaches the cache) finds no environment: it is no longer a valid key, not a server fault.
    let gone = || StatusCode::UNAUTHORIZED.into_response();
    state
        .snapshots
        .refresh(state.store.as_ref(), &key.project, &key.environment)
        .await
        .map_err(|e| match e {
            anchor_store::StoreError::NotFound { .. } => gone(),
            _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        })?;
    state
        .snapshots
        .get(&key.project, &key.environment)
        .ok_or_else(gone)
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

/// `{"flags": [...], "eventStreams": [...]}`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Bulk<'a> {
    flags: Vec<Answer<'a>>,
    event_streams: [EventStream; 1],
}

/// An `eventStreams` entry (OFREP 0.3.0): a Server-Sent Events stream on this server, named by
/// its request target so that the provider puts it after the OFREP base URL it already uses
/// (proxies and all).
#[derive(serde::Serialize)]
struct EventStream {
    #[serde(rename = "type")]
    kind: &'static str,
    endpoint: EventStreamEndpoint,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EventStreamEndpoint {
    request_uri: String,
}

/// The `eventStreams` entry for a caller with `key`: browsers cannot send headers on an event
/// stream, so a client key (which they hold anyway) goes in its query; a server key never does
/// (its provider sends the key in a header, as for evaluations).
fn event_stream_for(key: &SdkKeyRecord, secret: Option<&str>) -> EventStream {
    let url_safe = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let request_uri = match secret {
        Some(secret) if key.kind == anchor_store::SdkKeyKind::Client && url_safe(secret) => {
            format!("{EVENTS_PATH}?key={secret}")
        }
        _ => EVENTS_PATH.to_string(),
    };
    EventStream {
        kind: "sse",
        endpoint: EventStreamEndpoint { request_uri },
    }
}

async fn evaluate_one(
    State(state): State<AppState>,
    Path(flag): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let key = match authenticate(&state, &headers, None).await {
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

/// The query of a bulk evaluation: `flagConfigEtag` (OFREP 0.3.0) is the `etag` of the
/// `refetchEvaluation` notification that prompted it (`flagConfigLastModified` is never sent by
/// this server, so it is ignored).
#[derive(Debug, serde::Deserialize)]
struct BulkQuery {
    #[serde(rename = "flagConfigEtag")]
    flag_config_etag: Option<String>,
}

async fn evaluate_bulk(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<BulkQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Response {
    // The query is only a hint: one that does not parse is ignored rather than refused.
    let flag_config_etag = query.ok().and_then(|Query(q)| q.flag_config_etag);
    let key = match authenticate(&state, &headers, None).await {
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
    let mut held = match snapshot(&state, &key).await {
        Ok(held) => held,
        Err(response) => return response,
    };
    // A notification naming a revision this server does not hold yet came from another server
    // over the same store: catch up before answering, so the refetch it prompted is not stale.
    // The cheap read of the revision comes first, so a made-up revision costs one small query
    // rather than a read of the whole environment.
    let announced = flag_config_etag.as_deref().and_then(revision_of);
    if announced.is_some_and(|announced| announced > held.revision) {
        let stored = state
            .store
            .environment(&key.project, &key.environment)
            .await
            .map(|environment| environment.revision);
        let refreshed = match stored {
            Ok(stored) if stored > held.revision => {
                state
                    .snapshots
                    .refresh(state.store.as_ref(), &key.project, &key.environment)
                    .await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = refreshed {
            tracing::warn!(error = %e, "cannot catch up with a notified revision");
        }
        if let Some(fresh) = state.snapshots.get(&key.project, &key.environment) {
            held = fresh;
        }
    }
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
                event_streams: [event_stream_for(&key, presented_key(&headers).as_deref())],
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
    let key = match authenticate(&state, &headers, None).await {
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
            "watchedFlags": held.watched_flags,
            "coverage": held.coverage,
        }))
        .into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}
