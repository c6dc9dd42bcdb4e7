//! Per-variant outcomes of watched flags, aggregated per minute for the rollout guardrails.
//!
//! A flag is watched when the builder names it ([`crate::Builder::watch_flags`]) or the
//! server's configuration lists it (`watchedFlags`). For each watched flag the SDK keeps, per
//! (flag, variant, minute): the units first exposed (see below) and their coverage breakdown,
//! the requests and errors that
//! [`crate::Client::record`] reported, their latencies in a [`LatencySketch`], and the custom
//! metrics that [`crate::Client::track`] reported, winsorised at a cap per metric. The
//! telemetry task drains them into the same batches as the evaluation counts.
//!
//! ## Exposures
//! A unit is the context's targeting key, kept as a 64-bit hash. A unit counts as an exposure
//! only the first time this SDK instance serves it the flag **since the flag's configuration
//! last changed** (a release's stage change is such a change: it sets the flag's rollout
//! share): each watched flag keeps one set of the units seen, emptied when the flag's compiled
//! configuration changes (a config or patch event that changes the flag itself; segment changes
//! do not count). Each exposure lands in the minute of that first sight, so the sum of a
//! stage's minutes is the number of distinct units this instance exposed in the stage, each
//! counted once under the variant it was first served: a returning user does not count again
//! every minute, and the sums are draws of the configured split, as the sample-ratio test
//! assumes. The set holds at most [`MAX_UNITS_PER_FLAG`] hashes (about 16 MB): beyond it, new
//! units of that flag are not counted until its next change (logged once), so exposures
//! under-count rather than grow memory without bound. A context without a targeting key
//! exposes nothing. Units are distinct per instance: the server adds instances up, so a unit
//! served by two instances counts twice.
//!
//! ## Coverage
//! For a flag whose release names coverage attributes (the server's `coverage` map), each
//! first exposure is also counted under the value of every such attribute in the context
//! (read as the engine's conditions read an attribute path): strings as they are, numbers and
//! booleans as their JSON text, a missing or null attribute as `(none)`. At most
//! [`MAX_COVERAGE_VALUES`] distinct values per attribute are named per flag and stage; later
//! ones count under `other`, as do empty values, values with control characters and values
//! longer than [`MAX_COVERAGE_VALUE_CHARS`] characters, so a row's breakdown stays small.
//!
//! ## Locking
//! All of it sits behind one mutex, held for a few hash-map operations. `record` and `track`
//! take it (they are not the hot evaluation path); the evaluation methods only *try* it when
//! they serve a watched flag and, when another thread holds it, leave that exposure out rather
//! than wait. The unit is counted by its next evaluation or `record`/`track` in the minute, so
//! little is lost; flags that are not watched never touch it.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use anchor_engine::EvaluationContext;
use anchor_rollout::coverage::{MISSING_VALUE, OTHER_VALUE};
use anchor_rollout::{LatencySketch, MetricSums};
use serde::Serialize;
use serde_json::Value;

/// The most distinct units remembered per flag between two changes of its configuration.
pub const MAX_UNITS_PER_FLAG: usize = 1_000_000;

/// The most distinct values of one coverage attribute named per flag between two changes of
/// its configuration; later values count as `other`.
pub const MAX_COVERAGE_VALUES: usize = 20;

/// The longest coverage value sent as it is (in characters); longer ones count as `other`.
pub const MAX_COVERAGE_VALUE_CHARS: usize = 128;

/// The most custom metrics kept per (flag, variant, minute), as the server accepts per row.
pub const MAX_METRICS_PER_ARM: usize = 32;

/// The cap of a custom metric the builder did not configure: values beyond ±1e12 count as
/// ±1e12.
pub const DEFAULT_METRIC_CAP: f64 = 1e12;

/// The most finished (flag, variant, minute) rows kept while they wait for the telemetry task.
const MAX_FINISHED_ROWS: usize = 10_000;

/// What happened to one request (or unit of work) that `record` attributes to variants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// How long it took, if measured.
    pub latency: Option<Duration>,
    /// Whether it failed.
    pub error: bool,
}

/// Whether `name` can name a custom metric: 1 to 64 characters of `[a-zA-Z0-9._-]`, as the
/// server accepts.
pub(crate) fn is_metric_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The start of the current minute, in unix seconds.
pub(crate) fn current_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60 * 60)
}

/// The hash by which a unit is told apart from others.
pub(crate) fn unit_hash(key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// One (flag, variant, minute) row as the server takes it (`outcomes` in a telemetry batch).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OutcomeRow {
    pub minute: u64,
    pub flag: String,
    pub variant: String,
    pub exposures: u64,
    pub requests: u64,
    pub errors: u64,
    pub latency: LatencySketch,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, MetricSums>,
    /// First exposures by coverage attribute, then value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub coverage: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The current minute's aggregate of one (flag, variant), since the last drain.
#[derive(Debug, Default)]
struct Arm {
    /// First exposures.
    exposures: u64,
    coverage: BTreeMap<String, BTreeMap<String, u64>>,
    requests: u64,
    errors: u64,
    latency: LatencySketch,
    metrics: BTreeMap<String, MetricSums>,
}

impl Arm {
    /// What was added since the last drain, as a row; `None` when nothing was.
    fn take(&mut self, minute: u64, flag: &str, variant: &str) -> Option<OutcomeRow> {
        if self.exposures == 0 && self.requests == 0 && self.metrics.is_empty() {
            return None;
        }
        Some(OutcomeRow {
            minute,
            flag: flag.to_string(),
            variant: variant.to_string(),
            exposures: std::mem::take(&mut self.exposures),
            coverage: std::mem::take(&mut self.coverage),
            requests: std::mem::take(&mut self.requests),
            errors: std::mem::take(&mut self.errors),
            latency: std::mem::take(&mut self.latency),
            metrics: std::mem::take(&mut self.metrics),
        })
    }
}

/// What one flag has seen since its configuration last changed.
#[derive(Debug, Default)]
struct FlagStage {
    /// The units exposed so far.
    seen: HashSet<u64>,
    /// The coverage attributes, each with the values named so far.
    attributes: Vec<(String, HashSet<String>)>,
    warned_units: bool,
}

impl FlagStage {
    fn new(attributes: &[String]) -> Self {
        FlagStage {
            attributes: attributes
                .iter()
                .map(|a| (a.clone(), HashSet::new()))
                .collect(),
            ..FlagStage::default()
        }
    }

    /// The value `context` has for attribute `index`, as counted: named while fewer than
    /// [`MAX_COVERAGE_VALUES`] are, else `other`.
    fn value_of(&mut self, index: usize, context: &EvaluationContext) -> String {
        let Some((attribute, named)) = self.attributes.get_mut(index) else {
            return OTHER_VALUE.to_string();
        };
        let value = match context.lookup(attribute) {
            None => MISSING_VALUE.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let sendable = !value.is_empty()
            && value.chars().count() <= MAX_COVERAGE_VALUE_CHARS
            && !value.chars().any(char::is_control);
        if !sendable {
            return OTHER_VALUE.to_string();
        }
        if named.contains(&value) {
            return value;
        }
        if named.len() < MAX_COVERAGE_VALUES {
            named.insert(value.clone());
            return value;
        }
        OTHER_VALUE.to_string()
    }
}

#[derive(Debug, Default)]
struct State {
    /// The minute (unix seconds) `arms` belong to.
    minute: u64,
    /// By flag key, then variant name.
    arms: HashMap<String, HashMap<String, Arm>>,
    /// Rows of earlier minutes not drained yet, oldest first.
    finished: VecDeque<OutcomeRow>,
    /// By flag key: what each watched flag has seen since its last change.
    stages: HashMap<String, FlagStage>,
    /// By flag key: the coverage attributes the server asked for.
    coverage: HashMap<String, Vec<String>>,
    warned_metrics: bool,
}

impl State {
    /// Moves to `minute`, setting the arms of an earlier one aside as finished rows.
    fn roll(&mut self, minute: u64) {
        if minute == self.minute {
            return;
        }
        let old = std::mem::replace(&mut self.minute, minute);
        for (flag, variants) in std::mem::take(&mut self.arms) {
            for (variant, mut arm) in variants {
                if let Some(row) = arm.take(old, &flag, &variant) {
                    self.finished.push_back(row);
                }
            }
        }
        while self.finished.len() > MAX_FINISHED_ROWS {
            self.finished.pop_front();
            tracing::warn!("dropping outcomes the telemetry task could not send in time");
        }
    }

    fn arm(&mut self, flag: &str, variant: &str) -> &mut Arm {
        arm_of(&mut self.arms, flag, variant)
    }

    /// Counts `unit` as exposed to `variant` of `flag` if this is its first sight since the
    /// flag last changed, with its coverage values read from `context`.
    fn expose(&mut self, served: &Served<'_>, context: &EvaluationContext) {
        let Some(unit) = served.unit else { return };
        let flag = served.flag;
        let stage = match self.stages.entry(flag.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(FlagStage::new(
                self.coverage.get(flag).map_or(&[][..], Vec::as_slice),
            )),
        };
        if stage.seen.contains(&unit) {
            return;
        }
        if stage.seen.len() >= MAX_UNITS_PER_FLAG {
            if !stage.warned_units {
                stage.warned_units = true;
                tracing::warn!(
                    flag,
                    "more than {MAX_UNITS_PER_FLAG} units since the flag last changed: further ones are not counted as exposures"
                );
            }
            return;
        }
        stage.seen.insert(unit);
        let values: Vec<(String, String)> = (0..stage.attributes.len())
            .map(|i| {
                let value = stage.value_of(i, context);
                (stage.attributes[i].0.clone(), value)
            })
            .collect();
        let arm = arm_of(&mut self.arms, flag, served.variant);
        arm.exposures = arm.exposures.saturating_add(1);
        for (attribute, value) in values {
            let n = arm
                .coverage
                .entry(attribute)
                .or_default()
                .entry(value)
                .or_insert(0);
            *n = n.saturating_add(1);
        }
    }
}

fn arm_of<'a>(
    arms: &'a mut HashMap<String, HashMap<String, Arm>>,
    flag: &str,
    variant: &str,
) -> &'a mut Arm {
    let variants = match arms.entry(flag.to_string()) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(HashMap::new()),
    };
    variants.entry(variant.to_string()).or_default()
}

/// The outcome aggregates of one client.
#[derive(Debug)]
pub(crate) struct Outcomes {
    state: Mutex<State>,
    /// Winsorisation bounds by metric name; others use [`DEFAULT_METRIC_CAP`].
    caps: HashMap<String, f64>,
}

/// Where a flag's outcome goes: its key, the variant served, and the unit's hash.
pub(crate) struct Served<'a> {
    pub flag: &'a str,
    pub variant: &'a str,
    pub unit: Option<u64>,
}

impl Outcomes {
    pub(crate) fn new(caps: HashMap<String, f64>) -> Self {
        Outcomes {
            state: Mutex::new(State::default()),
            caps,
        }
    }

    /// Takes a new configuration into account: the flags in `changed` (whose configuration
    /// changed) start a new stage, forgetting the units they saw; `coverage` is the server's
    /// map of coverage attributes by flag (a flag whose attributes change keeps its units but
    /// names its values afresh); flags no longer in `watched` are forgotten.
    pub(crate) fn configure(
        &self,
        changed: &[&str],
        coverage: &BTreeMap<String, Vec<String>>,
        watched: &[&str],
    ) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.coverage = coverage
            .iter()
            .map(|(flag, attributes)| (flag.clone(), attributes.clone()))
            .collect();
        let State {
            stages, coverage, ..
        } = &mut *state;
        stages.retain(|flag, _| {
            watched.contains(&flag.as_str()) && !changed.contains(&flag.as_str())
        });
        for (flag, stage) in stages.iter_mut() {
            let wanted = coverage.get(flag).map_or(&[][..], Vec::as_slice);
            let current = stage.attributes.iter().map(|(a, _)| a);
            if !current.eq(wanted.iter()) {
                stage.attributes = FlagStage::new(wanted).attributes;
            }
        }
    }

    /// Counts an exposure from the evaluation path, only if the lock is free right now.
    pub(crate) fn try_expose(&self, minute: u64, served: &Served<'_>, context: &EvaluationContext) {
        if let Ok(mut state) = self.state.try_lock() {
            state.roll(minute);
            state.expose(served, context);
        }
    }

    /// Adds one outcome to each (flag, variant) served, exposing the unit too.
    pub(crate) fn record(
        &self,
        minute: u64,
        served: &[Served<'_>],
        context: &EvaluationContext,
        outcome: Outcome,
    ) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.roll(minute);
        for s in served {
            state.expose(s, context);
            let arm = state.arm(s.flag, s.variant);
            arm.requests = arm.requests.saturating_add(1);
            if outcome.error {
                arm.errors = arm.errors.saturating_add(1);
            }
            if let Some(latency) = outcome.latency {
                arm.latency.record(latency.as_secs_f64() * 1_000.0);
            }
        }
    }

    /// Adds `value` to the metric `name` of each (flag, variant) served, exposing the unit too.
    pub(crate) fn track(
        &self,
        minute: u64,
        served: &[Served<'_>],
        context: &EvaluationContext,
        name: &str,
        value: f64,
    ) {
        let cap = self.caps.get(name).copied().unwrap_or(DEFAULT_METRIC_CAP);
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.roll(minute);
        let mut refused = false;
        for s in served {
            state.expose(s, context);
            let arm = state.arm(s.flag, s.variant);
            let room = arm.metrics.len() < MAX_METRICS_PER_ARM;
            match arm.metrics.get_mut(name) {
                Some(sums) => sums.record_capped(value, cap),
                None if room => {
                    let mut sums = MetricSums::default();
                    sums.record_capped(value, cap);
                    arm.metrics.insert(name.to_string(), sums);
                }
                None => refused = true,
            }
        }
        if refused && !state.warned_metrics {
            state.warned_metrics = true;
            tracing::warn!(
                metric = name,
                "more than {MAX_METRICS_PER_ARM} metrics for one variant in one minute: further ones are dropped"
            );
        }
    }

    /// Everything not sent yet, as of `minute`: finished minutes, then what the current one
    /// gathered since the last drain (units stay remembered until their flag changes, so they
    /// count once).
    pub(crate) fn drain(&self, minute: u64) -> Vec<OutcomeRow> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        state.roll(minute);
        let mut rows: Vec<OutcomeRow> = state.finished.drain(..).collect();
        let current = state.minute;
        for (flag, variants) in &mut state.arms {
            for (variant, arm) in variants {
                rows.extend(arm.take(current, flag, variant));
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served<'a>(flag: &'a str, variant: &'a str, unit: &str) -> Served<'a> {
        Served {
            flag,
            variant,
            unit: Some(unit_hash(unit)),
        }
    }

    fn ctx(unit: &str) -> EvaluationContext {
        EvaluationContext::with_targeting_key(unit)
    }

    #[test]
    fn units_count_once_per_stage_across_minutes_and_drains_and_again_after_a_change() {
        let outcomes = Outcomes::new(HashMap::new());
        let slow = Outcome {
            latency: Some(Duration::from_millis(250)),
            error: true,
        };
        outcomes.record(60, &[served("f", "on", "u1")], &ctx("u1"), slow);
        outcomes.try_expose(60, &served("f", "on", "u1"), &ctx("u1"));
        outcomes.try_expose(60, &served("f", "on", "u2"), &ctx("u2"));
        let rows = outcomes.drain(60);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.exposures, row.requests, row.errors), (2, 1, 1));
        let p50 = row.latency.quantile(0.5).unwrap();
        assert!((p50 - 250.0).abs() <= 2.5, "{p50}");
        // Later in the same minute: u1 again adds no exposure; u3 does.
        outcomes.record(
            60,
            &[served("f", "on", "u1")],
            &ctx("u1"),
            Outcome::default(),
        );
        outcomes.try_expose(60, &served("f", "on", "u3"), &ctx("u3"));
        let rows = outcomes.drain(60);
        assert_eq!((rows[0].exposures, rows[0].requests), (1, 1));
        assert_eq!(rows[0].latency.count(), 0);
        assert!(
            outcomes.drain(60).is_empty(),
            "each outcome is drained once"
        );
        // The next minute: u1 returns and is not exposed again; u4 is new.
        outcomes.try_expose(120, &served("f", "on", "u1"), &ctx("u1"));
        outcomes.try_expose(120, &served("f", "on", "u4"), &ctx("u4"));
        let rows = outcomes.drain(120);
        assert_eq!((rows[0].minute, rows[0].exposures), (120, 1));
        // Another flag's change leaves f's units alone; f's own change starts afresh.
        outcomes.configure(&["g"], &BTreeMap::new(), &["f", "g"]);
        outcomes.try_expose(180, &served("f", "on", "u1"), &ctx("u1"));
        assert!(outcomes.drain(180).is_empty());
        outcomes.configure(&["f"], &BTreeMap::new(), &["f", "g"]);
        outcomes.try_expose(180, &served("f", "on", "u1"), &ctx("u1"));
        outcomes.try_expose(240, &served("f", "on", "u1"), &ctx("u1"));
        let rows = outcomes.drain(240);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].minute, rows[0].exposures), (180, 1));
    }

    #[test]
    fn first_exposures_are_broken_down_by_coverage_values_with_bounded_cardinality() {
        let outcomes = Outcomes::new(HashMap::new());
        let coverage: BTreeMap<String, Vec<String>> = [(
            "f".to_string(),
            vec!["platform".to_string(), "app.build".to_string()],
        )]
        .into();
        outcomes.configure(&[], &coverage, &["f"]);
        let contexts = [
            ctx("a")
                .with("platform", "ios")
                .with("app", serde_json::json!({"build": 7})),
            ctx("b").with("platform", "ios"),
            ctx("c").with("platform", true),
            ctx("d").with("platform", ""),
        ];
        for c in &contexts {
            let unit = c.targeting_key().unwrap();
            outcomes.try_expose(60, &served("f", "on", unit), c);
            // Seen again: counted once.
            outcomes.try_expose(60, &served("f", "on", unit), c);
        }
        // 30 more platforms: 18 fill the 20 names (with ios and true), the rest are "other".
        for i in 0..30 {
            let unit = format!("p{i}");
            let c = ctx(&unit).with("platform", format!("os{i}"));
            outcomes.try_expose(60, &served("f", "off", &unit), &c);
        }
        let mut rows = outcomes.drain(60);
        rows.sort_by(|a, b| a.variant.cmp(&b.variant));
        let off = &rows[0].coverage["platform"];
        assert_eq!(off.len(), 19, "{off:?}");
        assert_eq!(off["other"], 30 - 18);
        let on = &rows[1];
        assert_eq!(on.exposures, 4);
        let expected: BTreeMap<String, u64> = [("ios", 2), ("true", 1), ("other", 1)]
            .map(|(v, n)| (v.to_string(), n))
            .into();
        assert_eq!(on.coverage["platform"], expected);
        let builds: BTreeMap<String, u64> = [("7", 1), ("(none)", 3)]
            .map(|(v, n)| (v.to_string(), n))
            .into();
        assert_eq!(on.coverage["app.build"], builds);
        let json = serde_json::to_value(on).unwrap();
        assert_eq!(json["coverage"]["platform"]["ios"], 2);
    }

    #[test]
    fn finished_minutes_are_kept_until_drained_and_metrics_are_capped() {
        let caps = [("revenue".to_string(), 100.0)].into();
        let outcomes = Outcomes::new(caps);
        let c = ctx("u");
        outcomes.track(60, &[served("f", "on", "u1")], &c, "revenue", 1_000.0);
        outcomes.track(60, &[served("f", "on", "u1")], &c, "revenue", 20.0);
        outcomes.track(60, &[served("f", "off", "u2")], &c, "clicks", 1e15);
        outcomes.record(120, &[served("f", "on", "u1")], &c, Outcome::default());
        let mut rows = outcomes.drain(120);
        rows.sort_by_key(|r| (r.minute, r.variant.clone()));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].variant, "off");
        assert_eq!(rows[0].metrics["clicks"].sum, DEFAULT_METRIC_CAP);
        let revenue = rows[1].metrics["revenue"];
        assert_eq!((revenue.count, revenue.sum), (2, 120.0));
        assert_eq!((rows[2].minute, rows[2].requests), (120, 1));
    }

    #[test]
    fn metric_names_follow_the_servers_rule() {
        for good in ["revenue", "checkout.total_eur", "a-b", &"x".repeat(64)] {
            assert!(is_metric_name(good), "{good}");
        }
        for bad in ["", "two words", "a/b", "é", &"x".repeat(65)] {
            assert!(!is_metric_name(bad), "{bad}");
        }
    }
}
