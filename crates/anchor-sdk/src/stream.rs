//! The connection to the server's SDK stream (`GET /sdk/v1/stream`), reconnecting with
//! jittered exponential backoff, and the watcher of offline files.

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use crate::held::{ConfigPayload, Patch, Source};
use crate::sse::{Item, Parser};
use crate::{Shared, Status, files};

/// The server sends a heartbeat every 15 s: a connection silent for three of them is dead
/// even if TCP has not noticed.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

/// How the first connection went, for `build`.
#[derive(Debug, Clone)]
pub(crate) enum Init {
    Pending,
    Ready,
    Refused { status: u16, message: String },
}

pub(crate) struct Connection {
    pub http: reqwest::Client,
    pub url: String,
    pub key: String,
    pub backoff: (Duration, Duration),
}

/// Why a session ended.
enum Ended {
    /// It delivered a configuration before ending: the next attempt starts from the first
    /// delay again.
    AfterProgress(String),
    Failed(String),
    Refused(u16, String),
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    connection: Connection,
    init: watch::Sender<Init>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        let ended = tokio::select! {
            ended = session(&shared, &connection, &init) => ended,
            _ = stop.wait_for(|s| *s) => return,
        };
        let status = match ended {
            Ended::AfterProgress(why) => {
                failures = 0;
                tracing::info!(reason = %why, "SDK stream ended; reconnecting");
                (Status::Stale, why)
            }
            Ended::Failed(why) => {
                tracing::debug!(reason = %why, "SDK stream attempt failed");
                (Status::Stale, why)
            }
            Ended::Refused(code, why) => {
                init.send_if_modified(|current| {
                    let pending = matches!(current, Init::Pending);
                    if pending {
                        *current = Init::Refused {
                            status: code,
                            message: why.clone(),
                        };
                    }
                    pending
                });
                // A refused key does not heal by retrying quickly.
                failures = failures.max(32);
                (Status::Error, why)
            }
        };
        shared.set_status(status.0, Some(status.1));
        let delay = backoff(failures, connection.backoff);
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The delay before attempt `failures + 1`: `first · 2^failures`, at most `longest`, then a
/// uniformly random point between half of it and all of it, so clients cut off together do
/// not come back together.
pub(crate) fn backoff(failures: u32, (first, longest): (Duration, Duration)) -> Duration {
    let full = first.saturating_mul(1u32 << failures.min(20)).min(longest);
    // A randomly seeded hasher is randomness enough for jitter.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(failures);
    let unit = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    full.mul_f64(0.5 + unit / 2.0)
}

async fn session(shared: &Shared, connection: &Connection, init: &watch::Sender<Init>) -> Ended {
    let mut request = connection
        .http
        .get(format!("{}/sdk/v1/stream", connection.url))
        .bearer_auth(&connection.key)
        .header(reqwest::header::ACCEPT, "text/event-stream");
    let resume = {
        let held = shared.held.load();
        (held.source == Source::Server && held.revision > 0).then_some(held.revision)
    };
    if let Some(revision) = resume {
        request = request.header("Last-Event-ID", revision.to_string());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Ended::Failed(format!("cannot reach the server: {e}")),
    };
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let body = response.text().await.unwrap_or_default();
        let message = if body.is_empty() {
            "the key is unknown, revoked or not a server key".to_string()
        } else {
            body
        };
        return Ended::Refused(status.as_u16(), message);
    }
    if !status.is_success() {
        return Ended::Failed(format!("the stream answered {status}"));
    }
    let mut progress = false;
    if resume.is_some() {
        // The server sends the changes since that revision, or the whole configuration, or
        // nothing when the revision is current: connected means current.
        ready(shared, init);
        progress = true;
    }
    let mut body = response.bytes_stream();
    let mut parser = Parser::default();
    let end = |progress: bool, why: String| {
        if progress {
            Ended::AfterProgress(why)
        } else {
            Ended::Failed(why)
        }
    };
    loop {
        let chunk = match tokio::time::timeout(SILENCE_LIMIT, body.next()).await {
            Err(_) => return end(progress, "no heartbeat from the server".into()),
            Ok(None) => return end(progress, "the server closed the stream".into()),
            Ok(Some(Err(e))) => return end(progress, format!("the stream broke: {e}")),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let items = match parser.feed(&chunk) {
            Ok(items) => items,
            Err(_) => return end(progress, "an event exceeded the size limit".into()),
        };
        for item in items {
            let Item::Event(event) = item else { continue };
            match event.name.as_str() {
                "config" => match serde_json::from_str::<ConfigPayload>(&event.data) {
                    Ok(payload) => {
                        shared.install(payload, Source::Server, None, |_| true);
                        ready(shared, init);
                        progress = true;
                    }
                    Err(e) => return end(progress, format!("unreadable configuration: {e}")),
                },
                "patch" => {
                    let patch = match serde_json::from_str::<Patch>(&event.data) {
                        Ok(patch) => patch,
                        Err(e) => return end(progress, format!("unreadable change: {e}")),
                    };
                    let held = shared.held.load_full();
                    if held.source == Source::Server && patch.revision <= held.revision {
                        continue;
                    }
                    if held.source != Source::Server || patch.previous_revision != held.revision {
                        // A gap: reconnecting with our revision gets the missing changes or
                        // the whole configuration.
                        return end(progress, "missed a change; resynchronising".into());
                    }
                    let revision = patch.revision;
                    let watched_flags = patch
                        .watched_flags
                        .clone()
                        .unwrap_or_else(|| held.watched_flags.clone());
                    let coverage = patch
                        .coverage
                        .clone()
                        .unwrap_or_else(|| held.coverage.clone());
                    let (config, touched) = held.patched(patch);
                    shared.install(
                        ConfigPayload {
                            revision,
                            config,
                            watched_flags,
                            coverage,
                        },
                        Source::Server,
                        touched,
                        |current| current.revision == held.revision,
                    );
                    ready(shared, init);
                    progress = true;
                }
                _ => {}
            }
        }
    }
}

fn ready(shared: &Shared, init: &watch::Sender<Init>) {
    shared.set_status(Status::Ready, None);
    init.send_if_modified(|current| {
        let pending = matches!(current, Init::Pending);
        if pending {
            *current = Init::Ready;
        }
        pending
    });
}

/// Offline mode: reloads the file when its modification time or length changes. Polling
/// works on every file system (network mounts, editors that replace the file) at the cost of
/// one `stat` per interval. `seen` is the stamp taken before the file was last read.
pub(crate) async fn watch_file(
    shared: Arc<Shared>,
    path: PathBuf,
    mut seen: Option<(std::time::SystemTime, u64)>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = files::stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match files::read(&path) {
            Ok(payload) => {
                shared.install(payload, Source::File, None, |_| true);
                shared.set_status(Status::Ready, None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping the last configuration");
                shared.set_status(Status::Error, Some(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let b = (Duration::from_millis(100), Duration::from_secs(2));
        for failures in 0..40 {
            let full = Duration::from_millis(100 * (1u64 << failures.min(20))).min(b.1);
            let d = backoff(failures, b);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?} vs {full:?}");
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| backoff(5, b)).collect();
        assert!(spread.len() > 10, "jitter must vary: {spread:?}");
    }
}
