//! Following the changes other servers commit to a shared store (PostgreSQL).
//!
//! Each server rebuilds its own snapshots after its own writes (see `refresh_after_writes`).
//! When several servers share one database, the store's [`ChangeFeed`] tells each of them
//! about every commit, wherever it was made: a new revision of an environment rebuilds that
//! snapshot (unless it is already that new: the server that wrote it rebuilt it before
//! answering), a change of SDK keys empties the key cache, and a `Resync` (the first change of
//! every feed, and the one after it reconnects, when changes may have been missed) rebuilds
//! every snapshot and empties the key cache. A rebuild never steps back in time, so changes
//! heard twice or out of order do no harm.

use std::time::Duration;

use anchor_store::{Change, ChangeFeed, StoreError};

use crate::AppState;

/// The first pause after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Applies every change of `feed` to the server's state, until the task is aborted.
pub(crate) async fn follow(state: AppState, mut feed: Box<dyn ChangeFeed>) {
    let mut backoff = FIRST_BACKOFF;
    // A change that could not be applied (the store did not answer) is retried as a resync:
    // by then more may have been missed.
    let mut pending: Option<Change> = None;
    loop {
        let change = match pending.take() {
            Some(change) => change,
            None => match feed.next().await {
                Ok(change) => change,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the store's change feed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        match apply(&state, &change).await {
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(e) => {
                tracing::warn!(error = %e, ?change, "cannot apply a change committed elsewhere");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pending = Some(Change::Resync);
            }
        }
    }
}

async fn apply(state: &AppState, change: &Change) -> Result<(), StoreError> {
    let store = state.store.as_ref();
    match change {
        Change::Environment {
            project,
            environment,
            revision,
        } => {
            let held = state.snapshots.get(project, environment);
            if held.is_none_or(|held| held.revision < *revision) {
                state.snapshots.refresh(store, project, environment).await?;
            }
        }
        Change::SdkKeys => state.sdk_keys.clear(),
        Change::Resync => {
            state.sdk_keys.clear();
            state.snapshots.build_all(store).await?;
        }
    }
    Ok(())
}
