//! Evaluation counts, sent to the server (`POST /sdk/v1/telemetry`) once a minute.
//!
//! Counting happens on the evaluation path, in a counter block of the evaluating thread (see
//! `held::Counters` and `local`); this task drains them, groups them by flag and
//! variant for the minute the counting began in, and posts them as a batch with a random id.
//! A batch that fails is retried with the same id, which the server records, so a retry after a
//! lost answer is never counted twice. Memory is bounded: at most `MAX_PENDING_ROWS` rows wait;
//! beyond that the oldest batches are dropped (and logged).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::Shared;

/// The most rows kept while the server cannot be reached.
const MAX_PENDING_ROWS: usize = 100_000;

/// The server accepts at most this many rows per batch.
const MAX_BATCH_ROWS: usize = 10_000;

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
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(MAX_BATCH_ROWS));
            pending.batches.push_back(Batch {
                batch_id: uuid::Uuid::new_v4().to_string(),
                sdk: concat!("anchor-rust/", env!("CARGO_PKG_VERSION")),
                evaluations: std::mem::replace(&mut rows, rest),
            });
        }
        let mut waiting: usize = pending.batches.iter().map(|b| b.evaluations.len()).sum();
        while waiting > MAX_PENDING_ROWS {
            let Some(dropped) = pending.batches.pop_front() else {
                break;
            };
            waiting -= dropped.evaluations.len();
            tracing::warn!(
                rows = dropped.evaluations.len(),
                "dropping evaluation counts the server could not take in time"
            );
        }
        while let Some(batch) = pending.batches.front() {
            match self.send(batch).await {
                Sent::Done => {
                    pending.batches.pop_front();
                }
                Sent::Rejected(why) => {
                    // Sending it again would be rejected again.
                    tracing::warn!(reason = %why, "the server rejected evaluation counts");
                    pending.batches.pop_front();
                }
                Sent::Retry(why) => {
                    tracing::debug!(reason = %why, "evaluation counts will be retried");
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
