//! One compiled engine snapshot per environment, held in memory so that evaluations never touch
//! the database, and the recent changes between them, for streams.
//!
//! Snapshots are built for every environment at start-up (the server is not ready before) and
//! rebuilt after every committed change. A rebuild reads the environment's configuration and
//! revision from the store in one snapshot read and replaces the held snapshot only when its
//! revision is newer, so rebuilds racing each other can never step back in time.
//!
//! Each replacement also yields a [`Patch`]: the flags and segments added, changed or removed
//! since the snapshot it replaces, serialised once for every stream. Patches go out on a
//! broadcast channel and the last [`PATCH_HISTORY`] of them are kept, so that a stream which
//! reconnects with the last revision it holds is sent the patches it missed rather than the
//! whole configuration. The broadcast channel holds the same number of patches: a stream that
//! falls further behind than the history cannot be caught up by patches any more, so it is
//! ended (see `ofrep`) and its client reconnects. A waiting stream holds only a broadcast
//! receiver (a pointer and a position), never a queue of its own. A stream learns that it fell
//! behind when it is next polled: at once for a reader that is merely slow, and for a stalled
//! one once it reads what its socket's buffers already hold.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use anchor_engine::{ConfiguredFlag, Diagnostic, EnvironmentConfig, Segment, Snapshot, compile};
use anchor_store::{Store, StoreError};
use tokio::sync::broadcast;

/// How many recent patches each environment keeps for resuming streams, and how far behind the
/// latest patch a stream may fall before it is ended. Rounded up to a power of two (the
/// broadcast channel's own rule), so that both bounds are the same number.
pub const PATCH_HISTORY: usize = 128;

/// The most bytes of patches each environment keeps for resuming streams: a change to a segment
/// of 100,000 keys carries the whole segment, and a history of such patches could otherwise
/// weigh hundreds of megabytes. The oldest patches go first; a client resuming from before them
/// gets the whole configuration, as it would if the count bound had dropped them.
pub const PATCH_HISTORY_BYTES: usize = 16 * 1024 * 1024;

/// A compiled environment and the revision it was compiled from.
#[derive(Debug)]
pub struct EnvironmentSnapshot {
    pub project: String,
    pub environment: String,
    pub revision: u64,
    pub snapshot: Snapshot,
    /// The configuration compiled, as server-side SDKs download it.
    pub config: EnvironmentConfig,
    /// Problems the compiler found (flags with problems evaluate to `PARSE_ERROR`).
    pub diagnostics: Vec<Diagnostic>,
    /// Flags with an active release here, sorted: SDKs gather their outcomes per variant
    /// (`watchedFlags`). Read when a new revision is built; a release that ends without
    /// changing the flag (aborted, say) still moves the environment's revision (see
    /// `Store::update_release`), so its flag leaves the list, and the patch, at once.
    pub watched_flags: Vec<String>,
    /// By watched flag whose release's template names coverage attributes: those attributes
    /// (`coverage`), by which SDKs break the flag's exposures down. Read with
    /// `watched_flags`, so it changes with the environment's revisions.
    pub coverage: BTreeMap<String, Vec<String>>,
}

/// What changed from `previous_revision` to `revision`; a client holding `previous_revision`
/// applies it and then holds `revision`.
#[derive(Debug)]
pub struct Patch {
    pub revision: u64,
    pub previous_revision: u64,
    /// `{"revision", "previousRevision", "flags", "deletedFlags", "segments",
    /// "deletedSegments"}` (and `watchedFlags`, `coverage` when they changed): the added or
    /// changed flags and segments whole, the removed ones (deleted or archived) by key.
    pub json: String,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PatchBody<'a> {
    revision: u64,
    previous_revision: u64,
    flags: Vec<&'a ConfiguredFlag>,
    deleted_flags: Vec<&'a str>,
    segments: Vec<&'a Segment>,
    deleted_segments: Vec<&'a str>,
    /// The whole list, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    watched_flags: Option<&'a [String]>,
    /// The whole map, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    coverage: Option<&'a BTreeMap<String, Vec<String>>>,
}

/// The items of `new` that are not in `old` as they are, and the keys of `old` that `new` lacks.
fn changes<'a, T: PartialEq>(
    old: &'a [T],
    new: &'a [T],
    key: impl Fn(&T) -> &str,
) -> (Vec<&'a T>, Vec<&'a str>) {
    let before: HashMap<&str, &T> = old.iter().map(|item| (key(item), item)).collect();
    let after: HashSet<&str> = new.iter().map(&key).collect();
    let changed = new
        .iter()
        .filter(|item| before.get(key(item)).is_none_or(|was| *was != *item))
        .collect();
    let removed = old
        .iter()
        .map(&key)
        .filter(|k| !after.contains(k))
        .collect();
    (changed, removed)
}

impl Patch {
    fn between(old: &EnvironmentSnapshot, new: &EnvironmentSnapshot) -> Patch {
        let (flags, deleted_flags) = changes(&old.config.flags, &new.config.flags, |f| {
            f.flag.key.as_str()
        });
        let (segments, deleted_segments) =
            changes(&old.config.segments, &new.config.segments, |s| {
                s.key.as_str()
            });
        let body = PatchBody {
            revision: new.revision,
            previous_revision: old.revision,
            flags,
            deleted_flags,
            segments,
            deleted_segments,
            watched_flags: (old.watched_flags != new.watched_flags)
                .then_some(new.watched_flags.as_slice()),
            coverage: (old.coverage != new.coverage).then_some(&new.coverage),
        };
        Patch {
            revision: new.revision,
            previous_revision: old.revision,
            // The model is plain data: serialising it cannot fail.
            json: serde_json::to_string(&body).unwrap_or_default(),
        }
    }
}

/// One environment: its current snapshot, the recent patches and the channel they go out on.
#[derive(Debug)]
struct Channel {
    current: RwLock<Arc<EnvironmentSnapshot>>,
    /// Oldest first, each applying on top of the one before. Its lock also serialises the
    /// writers of `current`, and subscribers take it to see `current`, the history and the
    /// broadcast at one consistent point.
    history: Mutex<History>,
    patches: broadcast::Sender<Arc<Patch>>,
}

#[derive(Debug, Default)]
struct History {
    patches: VecDeque<Arc<Patch>>,
    /// The sum of the patches' JSON lengths.
    bytes: usize,
}

/// What a new stream starts from.
#[derive(Debug)]
pub struct Subscription {
    /// The environment as the stream starts.
    pub current: Arc<EnvironmentSnapshot>,
    /// When the client's last revision is known: the patches that bring it to `current`, in
    /// order (none when it already holds `current`). `None`: it must get the whole
    /// configuration.
    pub catch_up: Option<Vec<Arc<Patch>>>,
    /// Every later patch, in order; lags once more than the history's worth is unread.
    pub patches: broadcast::Receiver<Arc<Patch>>,
}

type Key = (String, String);

#[derive(Debug)]
pub struct Snapshots {
    held: RwLock<HashMap<Key, Arc<Channel>>>,
    history_limit: usize,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots::with_history(PATCH_HISTORY)
    }
}

fn key(project: &str, environment: &str) -> Key {
    (project.to_string(), environment.to_string())
}

impl Snapshots {
    /// Keeps `limit` patches per environment (at least one, rounded up to a power of two)
    /// instead of [`PATCH_HISTORY`].
    pub fn with_history(limit: usize) -> Self {
        Snapshots {
            held: RwLock::default(),
            history_limit: limit.max(1).next_power_of_two(),
        }
    }

    fn channel(&self, project: &str, environment: &str) -> Option<Arc<Channel>> {
        let held = self.held.read().unwrap_or_else(PoisonError::into_inner);
        held.get(&key(project, environment)).map(Arc::clone)
    }

    /// The current snapshot of an environment, if one was built.
    pub fn get(&self, project: &str, environment: &str) -> Option<Arc<EnvironmentSnapshot>> {
        let channel = self.channel(project, environment)?;
        let current = channel
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Some(Arc::clone(&current))
    }

    /// Starts following an environment (building its snapshot if needed) for a client that
    /// last held `last_seen`.
    pub async fn subscribe(
        &self,
        store: &dyn Store,
        project: &str,
        environment: &str,
        last_seen: Option<u64>,
    ) -> Result<Subscription, StoreError> {
        if self.get(project, environment).is_none() {
            self.refresh(store, project, environment).await?;
        }
        let channel = self
            .channel(project, environment)
            .ok_or_else(|| StoreError::NotFound {
                what: "environment",
                key: environment.to_string(),
            })?;
        let history = channel
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = Arc::clone(
            &channel
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let catch_up = last_seen.and_then(|seen| chain(&history.patches, seen, current.revision));
        Ok(Subscription {
            current,
            catch_up,
            patches: channel.patches.subscribe(),
        })
    }

    /// Builds the snapshots of every environment of every project.
    pub async fn build_all(&self, store: &dyn Store) -> Result<(), StoreError> {
        for project in store.projects().await? {
            self.refresh_project(store, &project.key).await?;
        }
        Ok(())
    }

    /// Forgets a deleted environment. Dropping its channel drops the sender of its patches, so
    /// the streams that follow it see the channel closed and end.
    pub fn remove(&self, project: &str, environment: &str) {
        let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
        held.remove(&key(project, environment));
    }

    /// Rebuilds every environment of a project (after a change that may touch several).
    pub async fn refresh_project(
        &self,
        store: &dyn Store,
        project: &str,
    ) -> Result<(), StoreError> {
        for environment in store.environments(project).await? {
            self.refresh(store, project, &environment.key).await?;
        }
        Ok(())
    }

    /// Rebuilds one environment's snapshot from the store and, if it is newer than the one
    /// held, replaces it and sends the patch between them.
    pub async fn refresh(
        &self,
        store: &dyn Store,
        project: &str,
        environment: &str,
    ) -> Result<(), StoreError> {
        let (config, revision) = match store.environment_config(project, environment).await {
            Ok(found) => found,
            // Deleted, on this server or another sharing the store: nothing to build, and the
            // streams that follow it end.
            Err(StoreError::NotFound { .. }) => {
                self.remove(project, environment);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if self
            .get(project, environment)
            .is_some_and(|held| held.revision >= revision)
        {
            return Ok(());
        }
        let (snapshot, diagnostics) = compile(&config);
        let releases: Vec<_> = store
            .active_releases()
            .await?
            .into_iter()
            .filter(|r| r.project == project && r.environment == environment)
            .collect();
        let mut coverage = BTreeMap::new();
        for release in &releases {
            // Only the attributes are needed; a template that does not read as one (it was
            // validated when written) simply asks for no breakdown.
            let attributes: Vec<String> = release
                .template
                .get("coverageAttributes")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            if !attributes.is_empty() {
                coverage.insert(release.flag.clone(), attributes);
            }
        }
        let mut watched_flags: Vec<String> = releases.into_iter().map(|r| r.flag).collect();
        watched_flags.sort();
        watched_flags.dedup();
        let fresh = Arc::new(EnvironmentSnapshot {
            project: project.to_string(),
            environment: environment.to_string(),
            revision,
            snapshot,
            config,
            diagnostics,
            watched_flags,
            coverage,
        });
        let channel = {
            let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
            match held.get(&key(project, environment)) {
                Some(channel) => Arc::clone(channel),
                None => {
                    let (patches, _) = broadcast::channel(self.history_limit);
                    held.insert(
                        key(project, environment),
                        Arc::new(Channel {
                            current: RwLock::new(fresh),
                            history: Mutex::default(),
                            patches,
                        }),
                    );
                    return Ok(());
                }
            }
        };
        let mut history = channel
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = Arc::clone(
            &channel
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if previous.revision >= revision {
            return Ok(());
        }
        // Computed before taking the write lock: evaluations keep reading meanwhile.
        let patch = Arc::new(Patch::between(&previous, &fresh));
        *channel
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        history.bytes += patch.json.len();
        history.patches.push_back(Arc::clone(&patch));
        while history.patches.len() > self.history_limit
            || (history.bytes > PATCH_HISTORY_BYTES && history.patches.len() > 1)
        {
            if let Some(oldest) = history.patches.pop_front() {
                history.bytes -= oldest.json.len();
            }
        }
        // An error only means that no stream is listening.
        let _ = channel.patches.send(patch);
        Ok(())
    }
}

/// The patches of `history` that lead from `from` to `to` without a gap: none when `from` is
/// `to`; `None` when the history holds no such chain (`from` unknown, too old or ahead).
fn chain(history: &VecDeque<Arc<Patch>>, from: u64, to: u64) -> Option<Vec<Arc<Patch>>> {
    if from == to {
        return Some(Vec::new());
    }
    let start = history.iter().position(|p| p.previous_revision == from)?;
    let mut at = from;
    let mut patches = Vec::with_capacity(history.len() - start);
    for patch in history.iter().skip(start) {
        if patch.previous_revision != at {
            return None;
        }
        at = patch.revision;
        patches.push(Arc::clone(patch));
    }
    (at == to).then_some(patches)
}
