//! The Release Anchor SDK for Rust: flag decisions in nanoseconds, made locally.
//!
//! A [`Client`] downloads the environment's configuration (flags and segments) from the
//! server's SDK stream, keeps it current as changes stream in, and evaluates every flag in
//! process with `anchor-engine`, the same engine the server uses, so the SDK and the server can
//! never disagree. It keeps serving when the server is away (fail-static): from the last
//! configuration it received, from the cache it wrote to disk (opt-in), or from a bootstrap
//! file, reconnecting in the background with jittered exponential backoff.
//!
//! ```no_run
//! # async fn demo() -> Result<(), anchor_sdk::Error> {
//! use anchor_sdk::{Client, EvaluationContext};
//! let client = Client::builder("http://127.0.0.1:7070", "srv-…").build().await?;
//! let context = EvaluationContext::with_targeting_key("user-42").with("country", "DE");
//! if client.bool_value("new-checkout", &context, false) {
//!     // the new checkout
//! }
//! client.close().await; // flushes the evaluation counts (and outcomes)
//! # Ok(()) }
//! ```
//!
//! For progressive rollouts, the client gathers per-variant outcomes of watched flags (named
//! with [`Builder::watch_flags`], or listed by the server as `watchedFlags`): exposures,
//! requests, errors, latencies and custom metrics, sent with the evaluation counts. It needs no
//! server-side join: the SDK evaluates each watched flag for the context itself.
//!
//! ```no_run
//! # async fn demo() -> Result<(), anchor_sdk::Error> {
//! use std::time::Instant;
//! use anchor_sdk::{Client, EvaluationContext, Outcome};
//! let client = Client::builder("http://127.0.0.1:7070", "srv-…")
//!     .watch_flags(["new-checkout"])
//!     .metric_cap("order-value", 5_000.0)
//!     .build()
//!     .await?;
//! let context = EvaluationContext::with_targeting_key("user-42");
//! let started = Instant::now();
//! let failed = false; // handle the request
//! client.record(&context, Outcome { latency: Some(started.elapsed()), error: failed });
//! client.track("order-value", &context, 129.90);
//! # Ok(()) }
//! ```
//!
//! Offline, from a file (tests, air-gapped use), reloaded when the file changes:
//! `Client::offline("flags.json").watch(Duration::from_secs(1)).build().await`.
//!
//! With the `openfeature` feature, [`provider::AnchorProvider`] plugs the client into the
//! OpenFeature SDK (`open-feature` crate).

mod error;
mod files;
mod held;
mod local;
mod outcomes;
#[cfg(feature = "openfeature")]
pub mod provider;
mod sse;
mod stream;
mod telemetry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use anchor_engine::{ErrorCode, EvaluationContext, Reason};
use anchor_engine::{
    Evaluation, Resolution, evaluate_bool, evaluate_integer, evaluate_json, evaluate_number,
    evaluate_string,
};
use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

pub use error::Error;
use held::{ConfigPayload, Held, Source, changed_flags};
pub use outcomes::{
    DEFAULT_METRIC_CAP, MAX_COVERAGE_VALUES, MAX_METRICS_PER_ARM, MAX_UNITS_PER_FLAG, Outcome,
};
use outcomes::{Outcomes, Served};

/// Whether the client's configuration is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connected and current (or, offline, the file was read).
    Ready,
    /// Serving the last configuration it has while it cannot reach the server.
    Stale,
    /// The server refused the key, or an offline file is unreadable; still serving the last
    /// configuration it has.
    Error,
}

/// What change listeners hear.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeEvent {
    /// A new configuration is in use; `flags` are the keys of the flags whose definition,
    /// configuration or segments changed (every flag when a segment changed).
    Configuration { revision: u64, flags: Vec<String> },
    /// The status changed.
    Status(Status),
}

/// A change listener: see [`Client::changes`].
#[derive(Debug)]
pub struct Changes(broadcast::Receiver<ChangeEvent>);

impl Changes {
    /// The next change; `None` once the client is gone. A listener that fell behind skips
    /// the changes it missed and gets the next one (the configuration in use is always the
    /// client's latest, so nothing is lost by skipping announcements).
    pub async fn recv(&mut self) -> Option<ChangeEvent> {
        loop {
            match self.0.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// A change that has already happened, without waiting.
    pub fn try_recv(&mut self) -> Option<ChangeEvent> {
        loop {
            match self.0.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// One evaluation with everything OpenFeature reports about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Details<T> {
    pub flag_key: String,
    /// The served value, or the caller's default on an error.
    pub value: T,
    pub variant: Option<String>,
    pub reason: Reason,
    pub error_code: Option<ErrorCode>,
    pub error_message: Option<String>,
    /// The id of the rule that decided, if a rule did.
    pub rule_id: Option<String>,
    /// The version of the flag's configuration that decided.
    pub flag_version: Option<u64>,
}

impl<T> Details<T> {
    fn of(flag_key: &str, value: T, evaluation: &Evaluation<'_>) -> Self {
        Details {
            flag_key: flag_key.to_string(),
            value,
            variant: evaluation.variant().map(str::to_string),
            reason: evaluation.reason(),
            error_code: evaluation.error_code(),
            error_message: evaluation.error_message().map(str::to_string),
            rule_id: evaluation.rule().map(|r| r.id.to_string()),
            flag_version: evaluation.flag_version(),
        }
    }
}

/// The most change events a listener may fall behind by before it misses some.
const CHANGE_BUFFER: usize = 64;

/// State shared by the client's handles and its background tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Tells this client's entries apart in threads' caches (see `local`).
    id: u64,
    held: ArcSwap<Held>,
    /// Incremented after every replacement of `held`.
    generation: AtomicU64,
    /// Serialises replacements of `held`, so a late fallback can never replace a newer
    /// configuration.
    install_lock: Mutex<()>,
    status: watch::Sender<Status>,
    last_error: Mutex<Option<String>>,
    changes: broadcast::Sender<ChangeEvent>,
    /// Configurations replaced since the last telemetry drain, whose counters still hold
    /// evaluations.
    retired: Mutex<Vec<Arc<Held>>>,
    counting: bool,
    cache_path: Option<PathBuf>,
    /// Per-variant outcomes of watched flags; `None` without telemetry.
    outcomes: Option<Outcomes>,
    /// The flags the builder asked to watch.
    watch: Vec<String>,
}

impl Shared {
    fn new(counting: bool, cache_path: Option<PathBuf>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            held: ArcSwap::from_pointee(Held::empty()),
            generation: AtomicU64::new(0),
            install_lock: Mutex::new(()),
            status: watch::Sender::new(Status::Stale),
            last_error: Mutex::new(None),
            changes: broadcast::channel(CHANGE_BUFFER).0,
            retired: Mutex::new(Vec::new()),
            counting,
            cache_path,
            outcomes: None,
            watch: Vec::new(),
        }
    }

    /// Gathers outcomes of the flags in `watch` (and of those the server lists), winsorising
    /// custom metrics at `caps`.
    fn with_outcomes(mut self, watch: Vec<String>, caps: HashMap<String, f64>) -> Self {
        self.outcomes = Some(Outcomes::new(caps));
        self.watch = watch;
        self
    }

    /// Counts the exposure of `context`'s unit to the variant served, if the flag is watched.
    #[inline]
    fn expose(&self, held: &Held, evaluation: &Evaluation<'_>, context: &EvaluationContext) {
        let Some(outcomes) = &self.outcomes else {
            return;
        };
        if let Some(flag) = evaluation.flag_index().and_then(|i| held.watched_key(i))
            && let Some(variant) = evaluation.variant()
        {
            outcomes.try_expose(
                outcomes::current_minute(),
                &Served {
                    flag,
                    variant,
                    unit: context.targeting_key().map(outcomes::unit_hash),
                },
                context,
            );
        }
    }

    /// Replaces the configuration if `accept` agrees, given the one held now.
    pub(crate) fn install(
        &self,
        payload: ConfigPayload,
        source: Source,
        touched: Option<Vec<String>>,
        accept: impl FnOnce(&Held) -> bool,
    ) -> bool {
        let Ok(_guard) = self.install_lock.lock() else {
            return false;
        };
        let current = self.held.load_full();
        if !accept(&current) {
            return false;
        }
        let flags = touched.unwrap_or_else(|| changed_flags(&current.config, &payload.config));
        let revision = payload.revision;
        let watched_flags = payload.watched_flags.clone();
        if source == Source::Server
            && let Some(path) = self.cache_path.clone()
        {
            let copy = payload.clone();
            // Off the caller's thread: a slow disk must not delay the swap.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = files::write(&path, &copy) {
                    tracing::warn!(path = %path.display(), error = %e, "could not write the configuration cache");
                }
            });
        }
        let coverage = payload.coverage.clone();
        let fresh = Arc::new(
            Held::new(revision, source, payload.config)
                .watching(watched_flags, &self.watch)
                .covering(coverage),
        );
        let old = self.held.swap(Arc::clone(&fresh));
        if let Some(outcomes) = &self.outcomes {
            // A flag whose own configuration changed (a release's stage sets its share)
            // starts counting its units afresh.
            let before: HashMap<&str, &anchor_engine::ConfiguredFlag> = old
                .config
                .flags
                .iter()
                .map(|f| (f.flag.key.as_str(), f))
                .collect();
            let after: HashMap<&str, &anchor_engine::ConfiguredFlag> = fresh
                .config
                .flags
                .iter()
                .map(|f| (f.flag.key.as_str(), f))
                .collect();
            let changed: Vec<&str> = flags
                .iter()
                .map(String::as_str)
                .filter(|key| before.get(key) != after.get(key))
                .collect();
            let watched: Vec<&str> = fresh.watched.iter().flatten().map(String::as_str).collect();
            outcomes.configure(&changed, &fresh.coverage, &watched);
        }
        self.generation.fetch_add(1, Ordering::Release);
        if self.counting
            && let Ok(mut retired) = self.retired.lock()
        {
            retired.push(old);
        }
        let _ = self
            .changes
            .send(ChangeEvent::Configuration { revision, flags });
        true
    }

    pub(crate) fn set_status(&self, status: Status, error: Option<String>) {
        if (error.is_some() || status == Status::Ready)
            && let Ok(mut last) = self.last_error.lock()
        {
            *last = error;
        }
        let changed = self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
        if changed {
            let _ = self.changes.send(ChangeEvent::Status(status));
        }
    }
}

/// Tells the background tasks to stop when the last handle of a client goes away.
#[derive(Debug)]
struct Tasks {
    shutdown: watch::Sender<bool>,
    telemetry: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    telemetry_state: Option<Arc<telemetry::Telemetry>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// A Release Anchor client: cheap to clone (clones share everything), safe to use from any
/// thread. Evaluation methods never block and never fail: on any problem they return the
/// caller's default, and the `*_details` variants say why.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("revision", &self.revision())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

enum Mode {
    Server { url: String, key: String },
    Offline { path: PathBuf },
}

/// Configures a [`Client`]; see [`Client::builder`] and [`Client::offline`].
pub struct Builder {
    mode: Mode,
    init_timeout: Duration,
    bootstrap: Option<PathBuf>,
    cache: Option<PathBuf>,
    telemetry: bool,
    telemetry_interval: Option<Duration>,
    watch: Option<Duration>,
    backoff: (Duration, Duration),
    watch_flags: Vec<String>,
    metric_caps: HashMap<String, f64>,
}

impl std::fmt::Debug for Builder {
    // Never prints the SDK key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("Builder");
        match &self.mode {
            Mode::Server { url, .. } => s.field("url", url),
            Mode::Offline { path } => s.field("offline", path),
        };
        s.field("init_timeout", &self.init_timeout)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// How long `build` waits for the first configuration (default 5 s) before it falls back
    /// to the cache or bootstrap file, or fails.
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// A configuration file (the JSON of `GET /sdk/v1/config`) to start from when the server
    /// cannot be reached at start and there is no cache.
    pub fn bootstrap_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.bootstrap = Some(path.into());
        self
    }

    /// Persists every configuration received to this file, and starts from it when the server
    /// cannot be reached at start.
    pub fn cache_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache = Some(path.into());
        self
    }

    /// Whether to count evaluations per flag and variant and send the counts to the server
    /// (default: on when connected to a server).
    pub fn telemetry(mut self, on: bool) -> Self {
        self.telemetry = on;
        self
    }

    /// Sends counts this often instead of once a minute, on the minute (for tests). Each send
    /// is attributed to the minute its counting began in.
    pub fn telemetry_interval(mut self, every: Duration) -> Self {
        self.telemetry_interval = Some(every);
        self
    }

    /// Gathers per-variant outcomes of these flags (see [`Client::record`] and
    /// [`Client::track`]), besides the ones the server's configuration lists. Needs telemetry.
    pub fn watch_flags<I, S>(mut self, flags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.watch_flags.extend(flags.into_iter().map(Into::into));
        self
    }

    /// Winsorises the custom metric `name` at `cap`: tracked values above `cap` count as
    /// `cap`, below `-cap` as `-cap`, so one outlier cannot rule the mean (default
    /// [`DEFAULT_METRIC_CAP`]).
    pub fn metric_cap(mut self, name: impl Into<String>, cap: f64) -> Self {
        self.metric_caps.insert(name.into(), cap);
        self
    }

    /// Offline mode: checks the file this often and reloads it when it changed.
    pub fn watch(mut self, every: Duration) -> Self {
        self.watch = Some(every);
        self
    }

    /// The first and the longest delay between reconnection attempts (default 250 ms and
    /// 30 s); each attempt waits a random time between half and all of the current delay.
    pub fn reconnect_backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.backoff = (first, longest.max(first));
        self
    }

    /// Connects and waits for the first configuration (see [`Builder::init_timeout`]).
    pub async fn build(self) -> Result<Client, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        match self.mode {
            Mode::Offline { ref path } => {
                // Stamped before reading: a write in between is seen as a change.
                let stamp = files::stamp(path);
                let payload = files::read(path)?;
                let shared = Arc::new(Shared::new(false, None));
                shared.install(payload, Source::File, None, |_| true);
                shared.set_status(Status::Ready, None);
                let (shutdown, stop) = watch::channel(false);
                if let Some(every) = self.watch {
                    tokio::spawn(stream::watch_file(
                        Arc::clone(&shared),
                        path.clone(),
                        stamp,
                        every,
                        stop,
                    ));
                }
                Ok(Client {
                    shared,
                    tasks: Arc::new(Tasks {
                        shutdown,
                        telemetry: tokio::sync::Mutex::new(None),
                        telemetry_state: None,
                    }),
                })
            }
            Mode::Server { ref url, ref key } => {
                let (url, key) = (url.clone(), key.clone());
                self.connect(url, key).await
            }
        }
    }

    async fn connect(self, url: String, key: String) -> Result<Client, Error> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Url(url));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Url(format!("{url}: {e}")))?;
        let mut shared = Shared::new(self.telemetry, self.cache.clone());
        if self.telemetry {
            shared = shared.with_outcomes(self.watch_flags.clone(), self.metric_caps.clone());
        }
        let shared = Arc::new(shared);
        let (shutdown, stop) = watch::channel(false);
        let (init_tx, mut init_rx) = watch::channel(stream::Init::Pending);
        tokio::spawn(stream::run(
            Arc::clone(&shared),
            stream::Connection {
                http: http.clone(),
                url: base.clone(),
                key: key.clone(),
                backoff: self.backoff,
            },
            init_tx,
            stop.clone(),
        ));
        let (telemetry, telemetry_state) = if self.telemetry {
            let state = Arc::new(telemetry::Telemetry::new(http, base.clone(), key));
            let handle = tokio::spawn(telemetry::run(
                Arc::clone(&shared),
                Arc::clone(&state),
                self.telemetry_interval,
                stop,
            ));
            (Some(handle), Some(state))
        } else {
            (None, None)
        };
        let client = Client {
            shared,
            tasks: Arc::new(Tasks {
                shutdown,
                telemetry: tokio::sync::Mutex::new(telemetry),
                telemetry_state,
            }),
        };
        let waited = tokio::time::timeout(
            self.init_timeout,
            init_rx.wait_for(|init| !matches!(init, stream::Init::Pending)),
        )
        .await;
        let outcome = match waited {
            Ok(Ok(init)) => init.clone(),
            _ => stream::Init::Pending,
        };
        match outcome {
            stream::Init::Ready => Ok(client),
            stream::Init::Refused { status, message } => {
                Err(Error::Unauthorized { status, message })
            }
            stream::Init::Pending => {
                let fallback = [(self.cache, Source::Server), (self.bootstrap, Source::File)]
                    .into_iter()
                    .filter_map(|(path, source)| Some((path?, source)))
                    .find_map(|(path, source)| match files::read(&path) {
                        Ok(payload) => Some((payload, source)),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start from this file");
                            None
                        }
                    });
                let last_error = client
                    .last_error()
                    .unwrap_or_else(|| "no answer".to_string());
                match fallback {
                    Some((payload, source)) => {
                        // Only if the stream has still delivered nothing.
                        client
                            .shared
                            .install(payload, source, None, |held| held.source == Source::Empty);
                        Ok(client)
                    }
                    None => Err(Error::NotReady {
                        url: base,
                        timeout_ms: self.init_timeout.as_millis(),
                        last_error,
                    }),
                }
            }
        }
    }
}

impl Client {
    /// A client of the server at `url` (its base, such as `https://flags.example.com`) with an
    /// environment's server-side SDK key.
    pub fn builder(url: impl Into<String>, server_key: impl Into<String>) -> Builder {
        Builder::new(Mode::Server {
            url: url.into(),
            key: server_key.into(),
        })
    }

    /// A client that evaluates the configuration in a local file (the JSON of
    /// `GET /sdk/v1/config`), never talking to a server.
    pub fn offline(path: impl Into<PathBuf>) -> Builder {
        let mut builder = Builder::new(Mode::Offline { path: path.into() });
        builder.telemetry = false;
        builder
    }

    /// The configuration's revision (the server's counter of changes to the environment).
    pub fn revision(&self) -> u64 {
        self.shared.held.load().revision
    }

    pub fn status(&self) -> Status {
        *self.shared.status.borrow()
    }

    /// Why the status is not `Ready`, if it is not.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().ok()?.clone()
    }

    /// Configuration and status changes from now on. A listener that falls more than 64
    /// events behind misses the oldest.
    pub fn changes(&self) -> Changes {
        Changes(self.shared.changes.subscribe())
    }

    /// Keys of the flags in the configuration, in order.
    pub fn flag_keys(&self) -> Vec<String> {
        self.shared
            .held
            .load()
            .snapshot
            .flag_keys()
            .map(str::to_string)
            .collect()
    }

    #[inline]
    fn with<R>(
        &self,
        context: &EvaluationContext,
        f: impl for<'s> Fn(&'s Held) -> (R, Evaluation<'s>),
    ) -> R {
        self.shared.evaluate(context, f)
    }

    /// A boolean flag's value; `default` on any error (unknown flag, wrong type, …).
    #[inline]
    pub fn bool_value(&self, flag_key: &str, context: &EvaluationContext, default: bool) -> bool {
        self.with(context, |held| {
            let Resolution { value, details } =
                evaluate_bool(&held.snapshot, flag_key, context, default);
            (value, details)
        })
    }

    pub fn bool_details(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
        default: bool,
    ) -> Details<bool> {
        self.with(context, |held| {
            let r = evaluate_bool(&held.snapshot, flag_key, context, default);
            (Details::of(flag_key, r.value, &r.details), r.details)
        })
    }

    pub fn string_value(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
        default: &str,
    ) -> String {
        self.string_details(flag_key, context, default).value
    }

    pub fn string_details(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
        default: &str,
    ) -> Details<String> {
        self.with(context, |held| {
            // The engine's default must live as long as the snapshot; the caller's is applied
            // here instead.
            let r = evaluate_string(&held.snapshot, flag_key, context, "");
            let value = if r.details.is_error() {
                default
            } else {
                r.value
            };
            (
                Details::of(flag_key, value.to_string(), &r.details),
                r.details,
            )
        })
    }

    pub fn number_value(&self, flag_key: &str, context: &EvaluationContext, default: f64) -> f64 {
        self.number_details(flag_key, context, default).value
    }

    pub fn number_details(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
        default: f64,
    ) -> Details<f64> {
        self.with(context, |held| {
            let r = evaluate_number(&held.snapshot, flag_key, context, default);
            (Details::of(flag_key, r.value, &r.details), r.details)
        })
    }

    /// A number flag's value as an integer; a served value with a fraction is a
    /// `TYPE_MISMATCH`.
    pub fn integer_value(&self, flag_key: &str, context: &EvaluationContext, default: i64) -> i64 {
        self.integer_details(flag_key, context, default).value
    }

    pub fn integer_details(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
        default: i64,
    ) -> Details<i64> {
        self.with(context, |held| {
            let r = evaluate_integer(&held.snapshot, flag_key, context, default);
            (Details::of(flag_key, r.value, &r.details), r.details)
        })
    }

    pub fn json_value(&self, flag_key: &str, context: &EvaluationContext, default: Value) -> Value {
        self.json_details(flag_key, context, default).value
    }

    pub fn json_details(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
        default: Value,
    ) -> Details<Value> {
        self.with(context, |held| {
            let r = evaluate_json(&held.snapshot, flag_key, context, &Value::Null);
            // The engine's default must live as long as the snapshot; the caller's is applied
            // here, cloned only when it is served.
            let value = if r.details.is_error() {
                default.clone()
            } else {
                r.value.clone()
            };
            (Details::of(flag_key, value, &r.details), r.details)
        })
    }

    /// One flag of any kind, its value as JSON (`None` where it failed), as OFREP answers.
    pub fn evaluate(&self, flag_key: &str, context: &EvaluationContext) -> Details<Option<Value>> {
        self.with(context, |held| {
            let evaluation = anchor_engine::evaluate(&held.snapshot, flag_key, context);
            (
                Details::of(flag_key, evaluation.value().cloned(), &evaluation),
                evaluation,
            )
        })
    }

    /// Every flag for one context, in key order; `value` is `None` where the flag failed.
    pub fn evaluate_all(&self, context: &EvaluationContext) -> Vec<Details<Option<Value>>> {
        let held = self.shared.held.load();
        anchor_engine::evaluate_all(&held.snapshot, context)
            .into_iter()
            .map(|(key, evaluation)| {
                if self.shared.counting {
                    held.counters.count_shared(&evaluation);
                }
                self.shared.expose(&held, &evaluation, context);
                Details::of(key, evaluation.value().cloned(), &evaluation)
            })
            .collect()
    }

    /// Why this context gets what it gets: one line per step the engine took. Not counted as
    /// an evaluation.
    pub fn explain(&self, flag_key: &str, context: &EvaluationContext) -> String {
        let held = self.shared.held.load();
        anchor_engine::explain(&held.snapshot, flag_key, context).to_string()
    }

    /// Records the outcome of one request (its latency, whether it failed) for every watched
    /// flag, under the variant each serves `context`. The flags are evaluated here, locally,
    /// and these evaluations are not counted as evaluations; the context's unit counts as
    /// exposed. Takes the outcomes' mutex briefly (see the crate's `outcomes` module): call it
    /// once per request, not in a tight loop of its own. Does nothing without telemetry.
    pub fn record(&self, context: &EvaluationContext, outcome: Outcome) {
        self.attribute(None, context, |outcomes, minute, served| {
            outcomes.record(minute, served, context, outcome);
        });
    }

    /// [`Client::record`] for these flags only (watched or not).
    pub fn record_flags(&self, flags: &[&str], context: &EvaluationContext, outcome: Outcome) {
        self.attribute(Some(flags), context, |outcomes, minute, served| {
            outcomes.record(minute, served, context, outcome);
        });
    }

    /// Adds `value` to the custom metric `event` (1 to 64 characters of `[a-zA-Z0-9._-]`;
    /// other names are ignored, since the server would refuse them) for every watched flag,
    /// under the variant each serves `context`, winsorised at the metric's cap (see
    /// [`Builder::metric_cap`]). Like [`Client::record`], it evaluates locally without counting
    /// and takes the outcomes' mutex briefly.
    pub fn track(&self, event: &str, context: &EvaluationContext, value: f64) {
        if !outcomes::is_metric_name(event) {
            tracing::debug!(
                event,
                "not a metric name (1 to 64 characters of [a-zA-Z0-9._-]): ignored"
            );
            return;
        }
        self.attribute(None, context, |outcomes, minute, served| {
            outcomes.track(minute, served, context, event, value);
        });
    }

    /// Evaluates `flags` (every watched flag when `None`) for `context` without counting, and
    /// hands the variants served to `add`.
    fn attribute(
        &self,
        flags: Option<&[&str]>,
        context: &EvaluationContext,
        add: impl FnOnce(&Outcomes, u64, &[Served<'_>]),
    ) {
        let Some(outcomes) = &self.shared.outcomes else {
            return;
        };
        let held = self.shared.held.load();
        let unit = context.targeting_key().map(outcomes::unit_hash);
        let keys: Vec<&str> = match flags {
            Some(flags) => flags.to_vec(),
            None => held.watched.iter().flatten().map(String::as_str).collect(),
        };
        let served: Vec<Served<'_>> = keys
            .into_iter()
            .filter_map(|flag| {
                let variant = anchor_engine::evaluate(&held.snapshot, flag, context).variant()?;
                Some(Served {
                    flag,
                    variant,
                    unit,
                })
            })
            .collect();
        if !served.is_empty() {
            add(outcomes, outcomes::current_minute(), &served);
        }
    }

    /// Sends the evaluation counts and outcomes gathered so far now (the background task does
    /// this once a minute). Returns whether everything pending reached the server.
    pub async fn flush(&self) -> bool {
        match &self.tasks.telemetry_state {
            Some(state) => state.flush(&self.shared).await,
            None => true,
        }
    }

    /// Stops the background work and sends the last evaluation counts and outcomes (waiting at
    /// most 5 s).
    /// The client keeps answering from its last configuration afterwards.
    pub async fn close(&self) {
        self.tasks.shutdown.send_replace(true);
        let handle = self.tasks.telemetry.lock().await.take();
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
    }
}

impl Builder {
    fn new(mode: Mode) -> Self {
        Builder {
            mode,
            init_timeout: Duration::from_secs(5),
            bootstrap: None,
            cache: None,
            telemetry: true,
            telemetry_interval: None,
            watch: None,
            backoff: (Duration::from_millis(250), Duration::from_secs(30)),
            watch_flags: Vec::new(),
            metric_caps: HashMap::new(),
        }
    }
}
