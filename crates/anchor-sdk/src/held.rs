//! The configuration the client evaluates against, its compiled snapshot and its evaluation
//! counters, replaced as one immutable value on every change.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anchor_engine::{ConfiguredFlag, EnvironmentConfig, Evaluation, Segment, Snapshot, compile};
use serde::{Deserialize, Serialize};

/// Where the held configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Nothing yet: an empty configuration.
    Empty,
    /// The server (stream) or the cache the SDK wrote from it: its revision is the server's.
    Server,
    /// A bootstrap or offline file: its revision is whatever the file says.
    File,
}

/// The configuration as `GET /sdk/v1/config` and the stream's `config` event carry it; also the
/// format of the cache and bootstrap files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigPayload {
    #[serde(default)]
    pub revision: u64,
    #[serde(flatten)]
    pub config: EnvironmentConfig,
    /// Flags whose outcomes the server wants per variant (those under a release plan), on top
    /// of the ones the builder names. Absent from servers that do not send it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watched_flags: Vec<String>,
    /// By watched flag: the context attributes to break its exposures down by (its release's
    /// coverage attributes). Absent from servers that do not send it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub coverage: BTreeMap<String, Vec<String>>,
}

/// A stream `patch` event: what changed on top of `previous_revision`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Patch {
    pub revision: u64,
    pub previous_revision: u64,
    #[serde(default)]
    pub flags: Vec<ConfiguredFlag>,
    #[serde(default)]
    pub deleted_flags: Vec<String>,
    #[serde(default)]
    pub segments: Vec<Segment>,
    #[serde(default)]
    pub deleted_segments: Vec<String>,
    /// The whole `watchedFlags` list, when it changed.
    #[serde(default)]
    pub watched_flags: Option<Vec<String>>,
    /// The whole `coverage` map, when it changed.
    #[serde(default)]
    pub coverage: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Debug)]
pub(crate) struct Held {
    pub revision: u64,
    pub source: Source,
    pub config: EnvironmentConfig,
    pub snapshot: Snapshot,
    pub counters: Counters,
    /// The configuration's own `watchedFlags`, kept so that a patch carries them over.
    pub watched_flags: Vec<String>,
    /// By flag index: the flag's key when its outcomes are watched.
    pub watched: Vec<Option<String>>,
    /// The configuration's `coverage` map, kept so that a patch carries it over.
    pub coverage: BTreeMap<String, Vec<String>>,
}

impl Held {
    pub(crate) fn new(revision: u64, source: Source, config: EnvironmentConfig) -> Self {
        let (snapshot, diagnostics) = compile(&config);
        if !diagnostics.is_empty() {
            // The flags concerned evaluate to PARSE_ERROR; the others are unaffected.
            tracing::warn!(
                problems = diagnostics.len(),
                "the configuration has problems; the flags concerned evaluate to PARSE_ERROR"
            );
        }
        let counters = Counters::for_snapshot(&snapshot);
        let watched = vec![None; snapshot.len()];
        Held {
            revision,
            source,
            config,
            snapshot,
            counters,
            watched_flags: Vec::new(),
            watched,
            coverage: BTreeMap::new(),
        }
    }

    /// Keeps the configuration's coverage attributes by flag.
    pub(crate) fn covering(mut self, coverage: BTreeMap<String, Vec<String>>) -> Self {
        self.coverage = coverage;
        self
    }

    /// Marks the flags whose outcomes are watched: those of the configuration (`listed`, kept
    /// for patches) and those the builder named (`also`).
    pub(crate) fn watching(mut self, listed: Vec<String>, also: &[String]) -> Self {
        for (slot, key) in self.watched.iter_mut().zip(self.snapshot.flag_keys()) {
            if listed.iter().chain(also).any(|k| k == key) {
                *slot = Some(key.to_string());
            }
        }
        self.watched_flags = listed;
        self
    }

    /// The key of the flag at `index` if its outcomes are watched.
    #[inline]
    pub(crate) fn watched_key(&self, index: usize) -> Option<&str> {
        self.watched.get(index)?.as_deref()
    }

    pub(crate) fn empty() -> Self {
        Held::new(0, Source::Empty, EnvironmentConfig::default())
    }

    /// The configuration after a patch, and the keys of the flags it touched (`None` when it
    /// changed segments, which may touch any flag).
    pub(crate) fn patched(&self, patch: Patch) -> (EnvironmentConfig, Option<Vec<String>>) {
        let segments_changed = !patch.segments.is_empty() || !patch.deleted_segments.is_empty();
        let mut config = self.config.clone();
        let mut touched: Vec<String> = patch.deleted_flags.clone();
        config
            .flags
            .retain(|f| !patch.deleted_flags.contains(&f.flag.key));
        for flag in patch.flags {
            touched.push(flag.flag.key.clone());
            match config
                .flags
                .iter_mut()
                .find(|f| f.flag.key == flag.flag.key)
            {
                Some(slot) => *slot = flag,
                None => config.flags.push(flag),
            }
        }
        config
            .segments
            .retain(|s| !patch.deleted_segments.contains(&s.key));
        for segment in patch.segments {
            match config.segments.iter_mut().find(|s| s.key == segment.key) {
                Some(slot) => *slot = segment,
                None => config.segments.push(segment),
            }
        }
        touched.sort();
        touched.dedup();
        (config, (!segments_changed).then_some(touched))
    }
}

/// The keys of flags that differ between two configurations (added, removed or changed).
pub(crate) fn changed_flags(old: &EnvironmentConfig, new: &EnvironmentConfig) -> Vec<String> {
    let before: HashMap<&str, &ConfiguredFlag> =
        old.flags.iter().map(|f| (f.flag.key.as_str(), f)).collect();
    let after: HashMap<&str, &ConfiguredFlag> =
        new.flags.iter().map(|f| (f.flag.key.as_str(), f)).collect();
    // A changed segment can change any flag that uses it: report every flag then.
    let segments_changed = old.segments != new.segments;
    let mut keys: Vec<String> = after
        .iter()
        .filter(|(key, flag)| segments_changed || before.get(*key) != Some(*flag))
        .map(|(key, _)| key.to_string())
        .chain(
            before
                .keys()
                .filter(|key| !after.contains_key(*key))
                .map(|key| key.to_string()),
        )
        .collect();
    keys.sort();
    keys
}

/// Evaluations per flag and variant: one counter per (flag, variant) of the snapshot, plus one
/// per flag for evaluations that served no variant (the caller's default).
///
/// Each thread that evaluates with this configuration counts into a [`Tally`] of its own, so
/// counting is a plain load and store (no atomic read-modify-write, no shared cache line); a
/// thread without one (its thread-local storage is being torn down) counts into `shared` with
/// an atomic add. Counters only grow: a drain reads them and remembers what it read, so it
/// never races a writer and never loses or repeats a count.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Where each flag's counters start; a flag's first slot counts "no variant".
    offsets: Box<[u32]>,
    slots: usize,
    shared: Tally,
    tallies: Mutex<Vec<Arc<Tally>>>,
}

/// One set of monotonic counters and what the last drain read from them.
#[derive(Debug)]
pub(crate) struct Tally {
    counts: Box<[AtomicU64]>,
    drained: Mutex<Box<[u64]>>,
}

impl Tally {
    fn new(slots: usize) -> Self {
        Tally {
            counts: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            drained: Mutex::new(vec![0; slots].into()),
        }
    }

    /// Counts one evaluation; only the tally's own thread calls this.
    #[inline]
    pub(crate) fn add_own(&self, slot: usize) {
        if let Some(counter) = self.counts.get(slot) {
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
    }

    fn add_shared(&self, slot: usize) {
        if let Some(counter) = self.counts.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds what was counted since the last drain to `deltas`.
    fn drain_into(&self, deltas: &mut [u64]) {
        let Ok(mut drained) = self.drained.lock() else {
            return;
        };
        for ((counter, last), delta) in self.counts.iter().zip(drained.iter_mut()).zip(deltas) {
            let now = counter.load(Ordering::Relaxed);
            *delta += now.wrapping_sub(*last);
            *last = now;
        }
    }
}

impl Counters {
    fn for_snapshot(snapshot: &Snapshot) -> Self {
        let mut offsets = Vec::with_capacity(snapshot.len());
        let mut total = 0u32;
        for i in 0..snapshot.len() {
            offsets.push(total);
            total += 1 + snapshot.variant_names(i).count() as u32;
        }
        Counters {
            offsets: offsets.into(),
            slots: total as usize,
            shared: Tally::new(total as usize),
            tallies: Mutex::new(Vec::new()),
        }
    }

    /// The counter an evaluation goes to; `None` for an unknown flag.
    #[inline]
    pub(crate) fn slot(&self, evaluation: &Evaluation<'_>) -> Option<usize> {
        let offset = *self.offsets.get(evaluation.flag_index()?)?;
        Some(offset as usize + evaluation.variant_index().map_or(0, |v| v + 1))
    }

    /// A tally for the calling thread, drained with the others.
    pub(crate) fn new_tally(&self) -> Arc<Tally> {
        let tally = Arc::new(Tally::new(self.slots));
        if let Ok(mut tallies) = self.tallies.lock() {
            tallies.push(Arc::clone(&tally));
        }
        tally
    }

    /// Counts from a thread that has no tally of its own.
    pub(crate) fn count_shared(&self, evaluation: &Evaluation<'_>) {
        if let Some(slot) = self.slot(evaluation) {
            self.shared.add_shared(slot);
        }
    }

    /// Adds the counts since the last drain to `out`, keyed by flag key and variant name.
    pub(crate) fn drain(
        &self,
        snapshot: &Snapshot,
        out: &mut HashMap<(String, Option<String>), u64>,
    ) {
        let mut deltas = vec![0u64; self.slots];
        self.shared.drain_into(&mut deltas);
        if let Ok(tallies) = self.tallies.lock() {
            for tally in tallies.iter() {
                tally.drain_into(&mut deltas);
            }
        }
        for (i, key) in snapshot.flag_keys().enumerate() {
            let Some(&offset) = self.offsets.get(i) else {
                continue;
            };
            let variants = std::iter::once(None).chain(snapshot.variant_names(i).map(Some));
            for (j, variant) in variants.enumerate() {
                let n = deltas.get(offset as usize + j).copied().unwrap_or(0);
                if n > 0 {
                    *out.entry((key.to_string(), variant.map(str::to_string)))
                        .or_insert(0) += n;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchor_engine::EvaluationContext;
    use serde_json::json;

    fn config(value: serde_json::Value) -> EnvironmentConfig {
        serde_json::from_value(value).unwrap()
    }

    fn flag(key: &str, variant: &str) -> serde_json::Value {
        json!({"flag": {"key": key, "kind": "boolean", "variants": [
                   {"name": "on", "value": true}, {"name": "off", "value": false}]},
               "config": {"enabled": true, "offVariant": "off", "defaultServe": {"variant": variant}}})
    }

    #[test]
    fn a_patch_replaces_adds_and_deletes_by_key() {
        let held = Held::new(
            3,
            Source::Server,
            config(
                json!({"flags": [flag("a", "on"), flag("b", "on"), flag("c", "on")],
                          "segments": [{"key": "s", "included": ["u1"]}]}),
            ),
        );
        let patch: Patch = serde_json::from_value(json!({
            "revision": 4, "previousRevision": 3,
            "flags": [flag("b", "off"), flag("d", "on")], "deletedFlags": ["c"]
        }))
        .unwrap();
        let (patched, touched) = held.patched(patch);
        let keys: Vec<&str> = patched.flags.iter().map(|f| f.flag.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "d"]);
        assert_eq!(touched.unwrap(), ["b", "c", "d"]);
        assert_eq!(patched.segments.len(), 1, "segments untouched");
        let after = Held::new(4, Source::Server, patched);
        let ctx = EvaluationContext::with_targeting_key("u1");
        assert_eq!(
            anchor_engine::evaluate(&after.snapshot, "b", &ctx).variant(),
            Some("off")
        );

        let segment_patch: Patch = serde_json::from_value(json!({
            "revision": 5, "previousRevision": 4, "deletedSegments": ["s"]
        }))
        .unwrap();
        let (patched, touched) = after.patched(segment_patch);
        assert!(patched.segments.is_empty());
        assert_eq!(touched, None, "a segment change may touch any flag");
    }

    #[test]
    fn watched_flags_come_from_the_payload_and_the_builder_and_unknown_fields_are_ignored() {
        let payload: ConfigPayload = serde_json::from_value(json!({
            "revision": 2, "flags": [flag("a", "on"), flag("b", "on"), flag("c", "on")],
            "watchedFlags": ["b", "gone"], "somethingNew": {"x": 1}
        }))
        .unwrap();
        assert_eq!(payload.watched_flags, ["b", "gone"]);
        let held = Held::new(2, Source::Server, payload.config)
            .watching(payload.watched_flags, &["c".to_string()]);
        let watched: Vec<Option<&str>> = (0..3).map(|i| held.watched_key(i)).collect();
        assert_eq!(watched, [None, Some("b"), Some("c")]);
        assert_eq!(held.watched_key(7), None);
        // A patch carries the configuration's list over (kept beside the flags).
        assert_eq!(held.watched_flags, ["b", "gone"]);
        let without: ConfigPayload = serde_json::from_value(json!({"flags": []})).unwrap();
        assert!(without.watched_flags.is_empty());
        assert!(without.coverage.is_empty());
        let text = serde_json::to_string(&without).unwrap();
        assert!(!text.contains("watched") && !text.contains("coverage"));
        let covered: ConfigPayload = serde_json::from_value(json!({
            "flags": [], "watchedFlags": ["b"], "coverage": {"b": ["platform", "geo.country"]}
        }))
        .unwrap();
        assert_eq!(covered.coverage["b"], ["platform", "geo.country"]);
        let patch: Patch = serde_json::from_value(json!({
            "revision": 3, "previousRevision": 2, "coverage": {"b": ["platform"]}
        }))
        .unwrap();
        assert_eq!(patch.coverage.unwrap()["b"], ["platform"]);
    }

    #[test]
    fn changed_flags_lists_added_removed_and_changed_flags() {
        let old = config(json!({"flags": [flag("a", "on"), flag("b", "on"), flag("c", "on")]}));
        let new = config(json!({"flags": [flag("a", "on"), flag("b", "off"), flag("d", "on")]}));
        assert_eq!(changed_flags(&old, &new), ["b", "c", "d"]);
        let with_segment = config(json!({"flags": [flag("a", "on")],
                                         "segments": [{"key": "s"}]}));
        let without = config(json!({"flags": [flag("a", "on")]}));
        assert_eq!(changed_flags(&without, &with_segment), ["a"]);
    }

    #[test]
    fn counters_count_per_flag_and_variant_and_drain_to_zero() {
        let held = Held::new(
            1,
            Source::Server,
            config(json!({"flags": [flag("a", "on"), flag("b", "off")]})),
        );
        let ctx = EvaluationContext::with_targeting_key("u1");
        let own = held.counters.new_tally();
        let count = |evaluation: Evaluation<'_>, shared: bool| {
            if shared {
                held.counters.count_shared(&evaluation);
            } else if let Some(slot) = held.counters.slot(&evaluation) {
                own.add_own(slot);
            }
        };
        for i in 0..3 {
            count(anchor_engine::evaluate(&held.snapshot, "a", &ctx), i == 0);
        }
        count(anchor_engine::evaluate(&held.snapshot, "b", &ctx), false);
        // A type mismatch served nothing: counted under no variant.
        count(
            anchor_engine::evaluate_string(&held.snapshot, "b", &ctx, "x").details,
            false,
        );
        count(
            anchor_engine::evaluate(&held.snapshot, "missing", &ctx),
            false,
        );
        let mut out = HashMap::new();
        held.counters.drain(&held.snapshot, &mut out);
        let expected: HashMap<(String, Option<String>), u64> = [
            (("a".to_string(), Some("on".to_string())), 3),
            (("b".to_string(), Some("off".to_string())), 1),
            (("b".to_string(), None), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(out, expected);
        let mut again = HashMap::new();
        held.counters.drain(&held.snapshot, &mut again);
        assert!(again.is_empty(), "a drain takes each count once");
        count(anchor_engine::evaluate(&held.snapshot, "a", &ctx), false);
        held.counters.drain(&held.snapshot, &mut again);
        assert_eq!(again.len(), 1, "later counts are drained later");
    }
}
