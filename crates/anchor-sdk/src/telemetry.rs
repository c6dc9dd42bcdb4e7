//! Evaluation counts and outcomes of watched flags, sent to the server
//! (`POST /sdk/v1/telemetry`) once a minute.
//!
//! Counting happens on the evaluation path, in a counter block of the evaluating thread (see
//! `held::Counters` and `local`); this task drains them, groups them by flag and
//! variant for the minute the counting began in, and posts them as a batch with a random id.
//! A batch that fails is retried with the same id, which the server records, so a retry after a
//! lost answer is never counted twice. Memory is bounded: at most `MAX_PENDING_ROWS` rows wait;
//! beyond that the oldest batches are dropped (and logged).
//!
//! The outcomes gathered since the last flush (see `outcomes`) travel in the same batches, as
//! `outcomes`, so they share the batch id and its retries: at most `MAX_BATCH_OUTCOMES` rows and
//! about `MAX_BATCH_OUTCOME_BYTES` of them per batch, well inside the server's limits (1,000
//! rows, a 1 MiB body).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::Shared;
use crate::outcomes::{self, OutcomeRow};

/// The most rows kept while the server cannot be reached.
const MAX_PENDING_ROWS: usize = 100_000;

/// The server accepts at most this many rows per batch.
const MAX_BATCH_ROWS: usize = 10_000;

/// The most outcome rows per batch (the server takes 1,000).
const MAX_BATCH_OUTCOMES: usize = 500;

/// About the most bytes of outcome rows per batch (a row's sketch may be long).
const MAX_BATCH_OUTCOME_BYTES: usize = 256 * 1024;

/// Outcomes share a batch with at most this many evaluation counts, so that the two together
/// stay well inside the server's 1 MiB body; larger batches of counts travel alone.
const MAX_SHARED_ROWS: usize = 1_000;

#[derive(Debug, Clone, Serialize)]
struct Row {
    minute: u64,
    flag: String,
    variant: Option<String>,
    count: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Batch {
    batch_id: String,
    sdk: &'static str,
    evaluations: Vec<Row>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outcomes: Vec<OutcomeRow>,
}

impl Batch {
    fn rows(&self) -> usize {
        self.evaluations.len() + self.outcomes.len()
    }
}

#[derive(Debug)]
struct Pending {
    batches: VecDeque<Batch>,
    /// When the counts not yet drained began to accumulate (unix seconds).
    window_start: u64,
}

#[derive(Debug)]
pub(crate) struct Telemetry {
    http: reqwest::Client,
    url: String,
    key: String,
    pending: tokio::sync::Mutex<Pending>,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Telemetry {
    pub(crate) fn new(http: reqwest::Client, url: String, key: String) -> Self {
        Telemetry {
            http,
            url,
            key,
            pending: tokio::sync::Mutex::new(Pending {
                batches: VecDeque::new(),
                window_start: now_seconds(),
            }),
        }
    }

    /// Drains the counters into new batches and sends every pending batch, oldest first;
    /// `true` when nothing is left pending.
    pub(crate) async fn flush(&self, shared: &Shared) -> bool {
        let mut pending = self.pending.lock().await;
        let counts = drain(shared);
        let minute = pending.window_start / 60 * 60;
        pending.window_start = now_seconds();
        let mut rows: Vec<Row> = counts
            .into_iter()
            .map(|((flag, variant), count)| Row {
                minute,
                flag,
                variant,
                count,
            })
            .collect();
        rows.sort_by(|a, b| (&a.flag, &a.variant).cmp(&(&b.flag, &b.variant)));
        let outcome_rows = shared
            .outcomes
            .as_ref()
            .map(|o| o.drain(outcomes::current_minute()))
            .unwrap_or_default();
        pending.batches.extend(batches(rows, outcome_rows));
        let mut waiting: usize = pending.batches.iter().map(Batch::rows).sum();
        while waiting > MAX_PENDING_ROWS {
            let Some(dropped) = pending.batches.pop_front() else {
                break;
            };
            waiting -= dropped.rows();
            tracing::warn!(
                rows = dropped.rows(),
                "dropping evaluation counts and outcomes the server could not take in time"
            );
        }
        while let Some(batch) = pending.batches.front() {
            match self.send(batch).await {
                Sent::Done => {
                    pending.batches.pop_front();
                }
                Sent::Rejected(why) => {
                    // Sending it again would be rejected again.
                    tracing::warn!(reason = %why, "the server rejected evaluation counts or outcomes");
                    pending.batches.pop_front();
                }
                Sent::Retry(why) => {
                    tracing::debug!(reason = %why, "evaluation counts and outcomes will be retried");
                    return false;
                }
            }
        }
        true
    }

    async fn send(&self, batch: &Batch) -> Sent {
        let response = self
            .http
            .post(format!("{}/sdk/v1/telemetry", self.url))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(10))
            .json(batch)
            .send()
            .await;
        match response {
            Err(e) => Sent::Retry(e.to_string()),
            Ok(r) if r.status().is_success() => Sent::Done,
            Ok(r)
                if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || r.status().is_server_error() =>
            {
                Sent::Retry(r.status().to_string())
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                Sent::Rejected(format!("{status}: {body}"))
            }
        }
    }
}

/// Packs evaluation counts and outcome rows into batches the server accepts: counts
/// [`MAX_BATCH_ROWS`] at a time; outcomes [`MAX_BATCH_OUTCOMES`] rows or about
/// [`MAX_BATCH_OUTCOME_BYTES`] at a time, since a row's sketch may be long. A batch of at most
/// [`MAX_SHARED_ROWS`] counts carries outcomes too.
fn batches(mut evaluations: Vec<Row>, outcomes: Vec<OutcomeRow>) -> Vec<Batch> {
    let mut outcome_chunks: Vec<Vec<OutcomeRow>> = Vec::new();
    let mut bytes = 0;
    for row in outcomes {
        let size = serde_json::to_vec(&row).map_or(0, |b| b.len());
        match outcome_chunks.last_mut() {
            Some(chunk)
                if chunk.len() < MAX_BATCH_OUTCOMES && bytes + size <= MAX_BATCH_OUTCOME_BYTES =>
            {
                bytes += size;
                chunk.push(row);
            }
            _ => {
                bytes = size;
                outcome_chunks.push(vec![row]);
            }
        }
    }
    let batch = |evaluations, outcomes| Batch {
        batch_id: uuid::Uuid::new_v4().to_string(),
        sdk: concat!("anchor-rust/", env!("CARGO_PKG_VERSION")),
        evaluations,
        outcomes,
    };
    let mut outcome_chunks = outcome_chunks.into_iter();
    let mut out = Vec::new();
    while !evaluations.is_empty() {
        let rest = evaluations.split_off(evaluations.len().min(MAX_BATCH_ROWS));
        let chunk = std::mem::replace(&mut evaluations, rest);
        let outcomes = if chunk.len() <= MAX_SHARED_ROWS {
            outcome_chunks.next().unwrap_or_default()
        } else {
            Vec::new()
        };
        out.push(batch(chunk, outcomes));
    }
    out.extend(outcome_chunks.map(|outcomes| batch(Vec::new(), outcomes)));
    out
}

enum Sent {
    Done,
    Retry(String),
    Rejected(String),
}

/// Takes the counts of the configuration in use and of those replaced since the last drain.
fn drain(shared: &Shared) -> HashMap<(String, Option<String>), u64> {
    let mut out = HashMap::new();
    let current = shared.held.load_full();
    current.counters.drain(&current.snapshot, &mut out);
    if let Ok(mut retired) = shared.retired.lock() {
        retired.retain(|old| {
            // Checked before draining: once only this list holds it, no evaluation can still
            // be counting into it.
            let idle = Arc::strong_count(old) == 1;
            old.counters.drain(&old.snapshot, &mut out);
            !idle
        });
    }
    out
}

/// Flushes on every minute (or every `every`) until told to stop, then flushes once more.
pub(crate) async fn run(
    shared: Arc<Shared>,
    telemetry: Arc<Telemetry>,
    every: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let wait = every.unwrap_or_else(|| {
            let into_minute = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(Duration::ZERO, |d| {
                    Duration::from_millis((d.as_millis() % 60_000) as u64)
                });
            Duration::from_secs(60).saturating_sub(into_minute)
        });
        let stopping = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        telemetry.flush(&shared).await;
        if stopping {
            return;
        }
    }
}
