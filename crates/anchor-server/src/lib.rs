//! # anchor-server: Release Anchor's server, the composition root
//!
//! Builds the HTTP application (`router`), starts it on a listener (`launch`), and performs the
//! first-start bootstrap. It owns the one real clock and the one mapping of errors to HTTP
//! (`error`). The binary (`anchor serve`, in `anchor-cli`) only parses configuration and calls
//! [`launch`].
//!
//! ## What this crate must never do
//! It holds no SQL (that is `anchor-store`) and no evaluation logic (that is `anchor-engine`);
//! it never logs a secret; every route under `/api/v1` checks who is calling and what they may
//! do.

mod api;
pub mod auth;
mod bootstrap;
pub mod change_requests;
mod changes;
pub mod config;
pub mod dashboard;
mod error;
pub mod flag_list;
pub mod lifecycle;
pub mod ofrep;
pub mod releases;
pub mod snapshots;
pub mod telemetry;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anchor_store::Store;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

pub use bootstrap::{BootstrapReport, bootstrap};
pub use config::{Secret, ServerConfig};
pub use error::ApiError;

/// The largest request body accepted, in bytes.
pub const MAX_BODY: usize = 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    ready: Arc<AtomicBool>,
    login_throttle: Arc<auth::LoginThrottle>,
    /// Verified against when a username does not exist, so that the answer takes as long.
    dummy_password_hash: Arc<str>,
    /// The compiled environments that evaluations read.
    pub snapshots: Arc<snapshots::Snapshots>,
    /// SDK keys already seen by OFREP.
    pub sdk_keys: Arc<ofrep::SdkKeyCache>,
    /// Each project's flag list as last read, while nothing was written.
    pub flag_lists: Arc<flag_list::FlagListCache>,
    /// Requests per SDK key.
    pub rate_limiter: Arc<ofrep::RateLimiter>,
    /// Origins allowed to call OFREP from a browser.
    cors_origins: Arc<Vec<String>>,
    /// Open SDK streams per key.
    pub streams: Arc<ofrep::StreamCounter>,
    /// Open OFREP event streams per key.
    pub event_streams: Arc<ofrep::StreamCounter>,
    /// Set when the server begins to shut down: streams end so that shutdown can finish.
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    /// Telemetry for minutes older than this many seconds is refused.
    telemetry_max_age_secs: i64,
    /// How long telemetry keeps its minutes and itself, and how often it is compacted.
    telemetry_compaction: telemetry::Compaction,
    /// Sends webhook deliveries; woken by `webhooks::wake` after the writes that record them.
    pub webhooks: Arc<webhooks::Dispatcher>,
    /// The rollout controller's metric source and pace.
    releases: releases::ReleaseSettings,
    /// When tokens and SDK keys were last used, until written to the store.
    pub credential_uses: Arc<auth::UseLog>,
    /// How often those uses are written to the store.
    use_flush_every: std::time::Duration,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(store: Arc<dyn Store>) -> Result<Self, ApiError> {
        let dummy = auth::hash_password(&auth::new_password()?)?;
        Ok(AppState {
            store: Arc::clone(&store),
            ready: Arc::new(AtomicBool::new(false)),
            login_throttle: Arc::default(),
            dummy_password_hash: dummy.into(),
            snapshots: Arc::default(),
            sdk_keys: Arc::default(),
            flag_lists: Arc::default(),
            rate_limiter: Arc::default(),
            cors_origins: Arc::default(),
            streams: Arc::default(),
            event_streams: Arc::default(),
            shutdown: Arc::new(tokio::sync::watch::Sender::new(false)),
            telemetry_max_age_secs: telemetry::DEFAULT_MAX_AGE_SECS,
            telemetry_compaction: telemetry::Compaction::default(),
            webhooks: Arc::new(webhooks::Dispatcher::new(
                webhooks::WebhookSettings::default(),
            )?),
            releases: releases::ReleaseSettings {
                metrics: Arc::new(releases::StoreMetrics(store)),
                tick: std::time::Duration::from_secs(10),
                instance: uuid::Uuid::new_v4().to_string(),
            },
            credential_uses: Arc::default(),
            use_flush_every: auth::USE_FLUSH_EVERY,
        })
    }

    /// Writes when tokens and SDK keys were last used every `every` instead of every
    /// [`auth::USE_FLUSH_EVERY`] (tests). Call before launching.
    pub fn with_use_flush_every(mut self, every: std::time::Duration) -> Self {
        self.use_flush_every = every;
        self
    }

    /// Replaces the webhook dispatcher's clock, retry schedule and timings (tests). Call before
    /// building the router or launching.
    pub fn with_webhook_settings(
        mut self,
        settings: webhooks::WebhookSettings,
    ) -> Result<Self, ApiError> {
        self.webhooks = Arc::new(webhooks::Dispatcher::new(settings)?);
        Ok(self)
    }

    /// Replaces the rollout controller's metric source and how often it judges releases.
    pub fn with_release_metrics(
        mut self,
        metrics: Arc<dyn releases::MetricSource>,
        tick: std::time::Duration,
    ) -> Self {
        self.releases.metrics = metrics;
        self.releases.tick = tick;
        self
    }

    /// Refuses telemetry for minutes older than `max_age` (7 days by default; at most 30 days,
    /// since the store remembers batch ids for 35, and at least a minute).
    pub fn with_telemetry_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.telemetry_max_age_secs = max_age.as_secs().clamp(60, 30 * 24 * 60 * 60) as i64;
        self
    }

    /// Merges telemetry minutes older than `minutes` into hours and deletes telemetry older
    /// than `keep`, checking every `every` (2 days, 90 days and 10 minutes by default). The
    /// minutes are kept at least as long as late telemetry is accepted, whatever is given.
    pub fn with_telemetry_retention(
        mut self,
        minutes: std::time::Duration,
        keep: std::time::Duration,
        every: std::time::Duration,
    ) -> Self {
        self.telemetry_compaction = telemetry::Compaction {
            minute_secs: i64::try_from(minutes.as_secs()).unwrap_or(i64::MAX),
            keep_secs: i64::try_from(keep.as_secs()).unwrap_or(i64::MAX),
            every,
        };
        self
    }

    /// Lets pages of these origins call the OFREP routes from a browser.
    pub fn with_cors_origins(mut self, origins: Vec<String>) -> Self {
        self.cors_origins = Arc::new(origins);
        self
    }

    /// Limits each SDK key to `per_second` requests (bursts up to `burst`).
    pub fn with_rate_limit(mut self, per_second: f64, burst: f64) -> Self {
        self.rate_limiter = Arc::new(ofrep::RateLimiter::new(per_second, burst));
        self
    }

    /// Keeps `patches` recent patches per environment for resuming SDK streams, which is also
    /// how far a stream may fall behind before it is ended (default
    /// [`snapshots::PATCH_HISTORY`]). Call before building the router or launching.
    pub fn with_stream_history(mut self, patches: usize) -> Self {
        self.snapshots = Arc::new(snapshots::Snapshots::with_history(patches));
        self
    }

    /// Marks the server ready to serve (the store answered and everything is loaded).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The one real clock, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Release Anchor management API",
        description = "Projects, environments, flags and their per-environment configuration, \
                       revisions, the audit log, users and tokens. Errors are RFC 9457 problem details."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "identity", description = "Users, project roles and personal access tokens"),
        (name = "projects", description = "Projects and their environments"),
        (name = "flags", description = "Flag definitions, shared by every environment"),
        (name = "configuration", description = "A flag's configuration in one environment, its revisions and revert"),
        (name = "audit", description = "Who changed what, when and why"),
        (name = "segments", description = "Reusable groups of contexts, per environment"),
        (name = "sdk keys", description = "Per-environment keys for SDKs: server and client kinds"),
        (name = "change requests", description = "Approvals and scheduled changes"),
        (name = "telemetry", description = "How often SDKs evaluated each flag, and the outcomes per variant, as they report them"),
        (name = "webhooks", description = "Signed HTTP notifications of a project's events, and their delivery log"),
    )
)]
struct ApiDoc;

/// Bearer personal access tokens for everything; HTTP Basic (a password) as well, which is how
/// the first token is made.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("anc_pat_…")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "password",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        openapi.security = Some(vec![
            SecurityRequirement::new("token", Vec::<String>::new()),
            SecurityRequirement::new("password", Vec::<String>::new()),
        ]);
    }
}

/// The API's routes and the OpenAPI document generated from the same annotations.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    utoipa_axum::router::OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(api::routes())
        .split_for_parts()
}

/// The OpenAPI 3.1 document of the management API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

fn asset(
    content_type: &'static str,
    body: &'static str,
) -> impl Fn() -> std::future::Ready<([(axum::http::HeaderName, &'static str); 1], &'static str)> + Clone
{
    move || std::future::ready(([(axum::http::header::CONTENT_TYPE, content_type)], body))
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (api_router, document) = api();
    let document = Arc::new(document.to_pretty_json().unwrap_or_default());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(api_router)
        .merge(ofrep::routes(&state.cors_origins))
        .merge(telemetry::sdk_routes())
        .merge(dashboard::routes())
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let document = Arc::clone(&document);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document.as_str().to_owned(),
                    )
                }
            }),
        )
        .route(
            "/api/v1/docs",
            get(asset(
                "text/html; charset=utf-8",
                include_str!("../assets/api-reference.html"),
            )),
        )
        .route(
            "/api/v1/docs/reference.js",
            get(asset(
                "text/javascript; charset=utf-8",
                include_str!("../assets/api-reference.js"),
            )),
        )
        .route(
            "/api/v1/docs/reference.css",
            get(asset(
                "text/css; charset=utf-8",
                include_str!("../assets/api-reference.css"),
            )),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refresh_after_writes,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                axum::response::IntoResponse::into_response(ApiError::Internal(
                    "a handler panicked".into(),
                ))
            },
        ))
        .with_state(state)
}

/// After a successful write under `/api/v1/projects/{project}`, rebuilds the snapshots it may
/// have changed (the environment named in the path, else every environment of the project)
/// before answering, so a caller reads its own writes in evaluations.
async fn refresh_after_writes(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // Evaluating is a read that happens to carry a body.
    let write = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) && !request.uri().path().ends_with("/evaluate");
    let scope: Option<(String, Option<String>)> = {
        let mut parts = request.uri().path().split('/').skip(1);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("api"), Some("v1"), Some("projects"), Some(project)) => {
                let environment = match (parts.next(), parts.next()) {
                    (Some("environments"), Some(env)) => Some(env.to_string()),
                    _ => None,
                };
                Some((project.to_string(), environment))
            }
            _ => None,
        }
    };
    let keys_changed = request.uri().path().contains("/keys");
    // Webhooks change nothing that is evaluated.
    let write = write && !request.uri().path().contains("/webhooks");
    let response = next.run(request).await;
    if write && keys_changed && response.status().is_success() {
        state.sdk_keys.clear();
    }
    if write
        && response.status().is_success()
        && let Some((project, environment)) = scope
    {
        let store = state.store.as_ref();
        let refreshed = match environment {
            Some(env) => state.snapshots.refresh(store, &project, &env).await,
            None => state.snapshots.refresh_project(store, &project).await,
        };
        if let Err(e) = refreshed {
            tracing::warn!(error = %e, %project, "cannot rebuild snapshots after a write");
        }
    }
    response
}

/// Ready once bootstrapped, and only while the store answers.
async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if !state.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting");
    }
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unreachable"),
    }
}

/// A server that has opened its store, bootstrapped it and bound its port, ready to
/// [`launch`].
#[derive(Debug)]
pub struct Started {
    pub listener: TcpListener,
    pub state: AppState,
    pub local_addr: std::net::SocketAddr,
    /// Set by the first start on an empty store only.
    pub bootstrap: Option<BootstrapReport>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] anchor_store::StoreError),
    #[error("first-start setup failed: {0}")]
    Bootstrap(ApiError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the store named by `config` (creating the SQLite data directory if needed), applies
/// migrations, bootstraps an empty store and binds the listening socket.
pub async fn start(config: &ServerConfig) -> Result<Started, StartError> {
    let store: Arc<dyn Store> = match &config.database {
        config::Database::Sqlite { path } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            Arc::new(anchor_store::SqlStore::open_sqlite(path).await?)
        }
        config::Database::Postgres { url } => {
            Arc::new(anchor_store::SqlStore::open_postgres(url.expose(), None).await?)
        }
    };
    let report = bootstrap(store.as_ref(), config.admin_password.as_ref())
        .await
        .map_err(StartError::Bootstrap)?;
    let state = AppState::new(store)
        .map_err(StartError::Bootstrap)?
        .with_cors_origins(config.cors_origins.clone())
        .with_telemetry_max_age(config.telemetry_max_age)
        .with_telemetry_retention(
            config.minute_retention(),
            config.telemetry_retention,
            telemetry::COMPACTION_EVERY,
        );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    Ok(Started {
        listener,
        state,
        local_addr,
        bootstrap: report,
    })
}

/// Serves the application on `listener` until `shutdown` completes; requests in flight then
/// finish before this returns. On a store that several servers share, it also follows the
/// changes the others commit (see `changes`).
pub async fn launch(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Not ready until every environment's snapshot is built.
    state
        .snapshots
        .build_all(state.store.as_ref())
        .await
        .map_err(|e| std::io::Error::other(format!("building the environments' snapshots: {e}")))?;
    state.set_ready(true);
    // Other servers' commits: the follower's first change, once it listens, is a resync, so
    // whatever was committed since the snapshots were built is not missed.
    let follower = state
        .store
        .changes()
        .map(|feed| tokio::spawn(changes::follow(state.clone(), feed)));
    // The scheduler applies due change requests every second until the server stops; an
    // apply cut short rolls back with its transaction.
    let scheduler_state = state.clone();
    let scheduler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            change_requests::run_due(&scheduler_state).await;
        }
    });
    // The webhook dispatcher sends due deliveries until the server stops; an attempt cut short
    // is made again when its claim's lease ends, here or on another server.
    let dispatcher = tokio::spawn(webhooks::run(state.clone()));
    // The rollout controller; a step cut short rolls back with its transaction, and the lease
    // it held lapses for the next server.
    let controller = tokio::spawn(releases::run(state.clone(), state.releases.clone()));
    // Telemetry compaction; a step cut short rolls back with its transaction.
    let compactor = tokio::spawn(telemetry::compact(state.clone()));
    // When keys and tokens were last used: written every minute, and once more when the
    // requests in flight have finished, so that a graceful stop loses none.
    let (stop_uses, uses_stopped) = tokio::sync::oneshot::channel();
    let uses = tokio::spawn(auth::record_uses(
        state.clone(),
        state.use_flush_every,
        uses_stopped,
    ));
    // Open streams never end by themselves: tell them to, or graceful shutdown would wait
    // for them forever.
    let stopping = Arc::clone(&state.shutdown);
    // `into_make_service` hands each connection a clone of one shared router; serving the
    // `Router` itself would rebuild every route for each connection (about 26 KiB each).
    let served = axum::serve(listener, router(state).into_make_service())
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping.send_replace(true);
        })
        .await;
    scheduler.abort();
    dispatcher.abort();
    controller.abort();
    compactor.abort();
    if let Some(follower) = follower {
        follower.abort();
    }
    let _ = stop_uses.send(());
    if let Err(e) = uses.await {
        tracing::warn!(error = %e, "the last-used recorder ended badly");
    }
    served
}
