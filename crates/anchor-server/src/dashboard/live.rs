//! Live updates for the dashboard: `GET /projects/{project}/live`, a stream of Server-Sent
//! Events that tells open pages something in the project changed, so that they fetch
//! themselves again (the asset script replaces `<main>`; see `dashboard.js`).
//!
//! Two sources, because two kinds of change reach the store differently:
//! - a flag's configuration: every committed revision rebuilds the environment's snapshot
//!   (on this server after its own writes, and from the change feed after another server's),
//!   and the rebuild sends a patch on the environment's broadcast channel, the very one the
//!   SDK streams follow. An `event: flag` goes out for each patch, at once.
//! - a release: a step that moves the share is also a revision (so also a `flag` event), but
//!   a pause, a hold or a new guardrail report is not. The stream reads the project's releases
//!   every [`RELEASE_POLL`] and sends `event: release` when one is new or its state's version
//!   moved, and `event: report` when only its latest report did. One small read per open
//!   page per second is cheap next to what a page costs to render, and it sees the writes of
//!   every server sharing the store without any new notification channel.
//!
//! A page may have been rendered a moment before its stream connects, and a change in that
//! moment would be lost: so the page's marker carries when it began reading and the sum of the
//! environments' snapshot revisions then (`?since=…&revisions=…`), and the stream, once it
//! follows everything, first tells of what changed since (a revision sum that moved, a release
//! written or reported on after `since`).
//!
//! Events only say *what* changed (ids, never flag contents): the page fetches itself with
//! the person's own session, so it shows exactly what the person may see. The stream needs
//! the session cookie and the viewer role; without them it answers 401 or 403 (never a
//! redirect, which an `EventSource` could not follow usefully). It ends when the server shuts
//! down, and the browser reconnects by itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use anchor_store::{ReleaseRecord, Role};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use maud::{Markup, html};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::auth;
use crate::error::ApiError;

/// How often the stream reads the project's releases.
pub const RELEASE_POLL: Duration = Duration::from_secs(1);

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/projects/{project}/live", get(live))
}

/// Where a page stood when it began reading what it shows: taken before its reads, so that
/// whatever changed after is told when its stream connects.
pub(crate) struct Since {
    at_ms: i64,
    revisions: u64,
}

/// The moment and the project's revisions, for [`marker`]; call it before the page's reads.
pub(crate) async fn since(state: &AppState, project: &str) -> Since {
    Since {
        at_ms: state.now_ms(),
        // Unknown environments count nothing: at worst the page is refreshed once for nothing.
        revisions: revision_sum(state, project).await.unwrap_or(0),
    }
}

/// The sum of the project's environments' snapshot revisions: it moves with every change of
/// any of them (revisions only grow).
async fn revision_sum(state: &AppState, project: &str) -> Result<u64, ApiError> {
    Ok(state
        .store
        .environments(project)
        .await?
        .iter()
        .filter_map(|e| state.snapshots.get(project, &e.key))
        .map(|snapshot| snapshot.revision)
        .sum())
}

/// The element a page carries to follow the project's changes: `on` names the events that
/// refresh it (`flag`, `release`, `report`); `release` limits `report` events to one release.
pub(crate) fn marker(project: &str, since: &Since, on: &str, release: Option<&str>) -> Markup {
    html! {
        div.live data-live={ "/projects/" (super::encode(project)) "/live?since=" (since.at_ms) "&revisions=" (since.revisions) }
            data-live-on=(on) data-live-release=[release] {}
    }
}

#[derive(serde::Deserialize, Default)]
struct LiveQuery {
    since: Option<i64>,
    revisions: Option<u64>,
}

/// What the stream remembers of a release, to tell what changed.
#[derive(PartialEq)]
struct Seen {
    version: u64,
    reported_at: Option<i64>,
}

fn seen(releases: &[ReleaseRecord]) -> HashMap<String, Seen> {
    releases
        .iter()
        .map(|r| {
            (
                r.id.clone(),
                Seen {
                    version: r.version,
                    reported_at: r.reported_at,
                },
            )
        })
        .collect()
}

struct LiveStream {
    state: AppState,
    project: String,
    /// `(environment, revision)` per patch; `None` for the revision when the receiver fell
    /// behind (something changed; the page refetches anyway).
    patches: SelectAll<BoxStream<'static, (String, Option<u64>)>>,
    releases: HashMap<String, Seen>,
    poll: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
    pending: std::collections::VecDeque<Event>,
}

impl LiveStream {
    /// The next event, or `None` at shutdown.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            // The branches only say what happened; acting on it needs `self` whole.
            let patch = tokio::select! {
                Some(patch) = self.patches.next() => Some(patch),
                _ = self.poll.tick() => None,
                _ = self.shutdown.wait_for(|stopping| *stopping) => return None,
            };
            match patch {
                Some((environment, revision)) => {
                    self.pending.push_back(Event::default().event("flag").data(
                        json!({"environment": environment, "revision": revision}).to_string(),
                    ))
                }
                None => self.read_releases().await,
            }
        }
    }

    async fn read_releases(&mut self) {
        let releases = match self.state.store.releases(&self.project, None, None).await {
            Ok(releases) => releases,
            Err(e) => {
                // The next read tries again; the page keeps what it shows.
                tracing::warn!(error = %e, project = %self.project, "live updates cannot read the releases");
                return;
            }
        };
        for r in &releases {
            let kind = match self.releases.get(&r.id) {
                None => "release",
                Some(old) if old.version != r.version => "release",
                Some(old) if old.reported_at != r.reported_at => "report",
                Some(_) => continue,
            };
            self.pending.push_back(release_event(kind, r));
        }
        self.releases = seen(&releases);
    }
}

/// A release's event: which release, and where it stands (never its evidence).
fn release_event(kind: &'static str, r: &ReleaseRecord) -> Event {
    let state = r.state.get("state").cloned().unwrap_or_default();
    Event::default().event(kind).data(
        json!({"id": r.id, "flag": r.flag, "environment": r.environment,
               "state": state, "version": r.version})
        .to_string(),
    )
}

async fn live(
    State(state): State<AppState>,
    Path(project): Path<String>,
    Query(query): Query<LiveQuery>,
    headers: HeaderMap,
) -> Response {
    let caller = match auth::session_caller(&state, &headers, None).await {
        Ok(Some((caller, _))) => caller,
        Ok(None) => return (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
        Err(e) => return e.into_response(),
    };
    let prepared = async {
        caller.require(&state, &project, Role::Viewer).await?;
        let environments = state.store.environments(&project).await?;
        let releases = state.store.releases(&project, None, None).await?;
        let mut patches = SelectAll::new();
        for environment in environments {
            let subscription = state
                .snapshots
                .subscribe(state.store.as_ref(), &project, &environment.key, None)
                .await?;
            let key = environment.key;
            let stream = futures_util::stream::unfold(
                (subscription.patches, key),
                |(mut receiver, key)| async move {
                    let revision = match receiver.recv().await {
                        Ok(patch) => Some(patch.revision),
                        Err(RecvError::Lagged(_)) => None,
                        Err(RecvError::Closed) => return None,
                    };
                    Some(((key.clone(), revision), (receiver, key)))
                },
            );
            patches.push(stream.boxed());
        }
        // Read after subscribing: a change from here on is a patch too, so none falls between.
        let revisions = revision_sum(&state, &project).await?;
        Ok::<_, ApiError>((patches, releases, revisions))
    };
    let (patches, releases, revisions) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => return e.into_response(),
    };
    // What changed between the page's reads and now.
    let mut pending = std::collections::VecDeque::new();
    if query.revisions.is_some_and(|r| r != revisions) {
        pending.push_back(
            Event::default()
                .event("flag")
                .data(json!({"revisions": revisions}).to_string()),
        );
    }
    if let Some(since) = query.since {
        for r in &releases {
            let kind = if r.updated_at > since {
                "release"
            } else if r.reported_at.is_some_and(|at| at > since) {
                "report"
            } else {
                continue;
            };
            pending.push_back(release_event(kind, r));
        }
    }
    let mut poll = tokio::time::interval(RELEASE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick of an interval is immediate; the releases were just read.
    poll.reset();
    let stream = LiveStream {
        state: state.clone(),
        project,
        patches,
        releases: seen(&releases),
        poll,
        shutdown: state.shutdown.subscribe(),
        pending,
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, Infallible>(event), stream))
    });
    Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("heartbeat"),
        )
        .into_response()
}
