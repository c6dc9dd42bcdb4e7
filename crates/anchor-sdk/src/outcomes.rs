//! Per-variant outcomes of watched flags, aggregated per minute for the rollout guardrails.
//!
//! A flag is watched when the builder names it ([`crate::Builder::watch_flags`]) or the
//! server's configuration lists it (`watchedFlags`). For each watched flag the SDK keeps, per
//! (flag, variant, minute): the distinct units exposed, the requests and errors that
//! [`crate::Client::record`] reported, their latencies in a [`LatencySketch`], and the custom
//! metrics that [`crate::Client::track`] reported, winsorised at a cap per metric. The
//! telemetry task drains them into the same batches as the evaluation counts.
//!
//! ## Exposures
//! A unit is the context's targeting key, kept as a 64-bit hash in a set per (flag, variant,
//! minute), so a unit evaluated a hundred times in a minute counts once. The set holds at most
//! [`MAX_UNITS_PER_ARM`] hashes: beyond it, further new units of that minute are not counted
//! (logged once), so exposures under-count rather than grow memory without bound. A context
//! without a targeting key exposes nothing. Exposures are distinct per minute and per SDK
//! instance: the server adds them up, so a unit seen in two minutes (or by two instances)
//! counts twice over the range.
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

use anchor_rollout::{LatencySketch, MetricSums};
use serde::Serialize;

/// The most distinct units counted per (flag, variant, minute).
pub const MAX_UNITS_PER_ARM: usize = 100_000;

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
}

/// The current minute's aggregate of one (flag, variant).
#[derive(Debug, Default)]
struct Arm {
    units: HashSet<u64>,
    /// How many of `units` were already sent (the minute may be drained before it ends).
    units_sent: usize,
    requests: u64,
    errors: u64,
    latency: LatencySketch,
    metrics: BTreeMap<String, MetricSums>,
}

impl Arm {
    /// What was added since the last drain, as a row; `None` when nothing was.
    fn take(&mut self, minute: u64, flag: &str, variant: &str) -> Option<OutcomeRow> {
        let exposures = (self.units.len() - self.units_sent) as u64;
        if exposures == 0 && self.requests == 0 && self.metrics.is_empty() {
            return None;
        }
        self.units_sent = self.units.len();
        Some(OutcomeRow {
            minute,
            flag: flag.to_string(),
            variant: variant.to_string(),
            exposures,
            requests: std::mem::take(&mut self.requests),
            errors: std::mem::take(&mut self.errors),
            latency: std::mem::take(&mut self.latency),
            metrics: std::mem::take(&mut self.metrics),
        })
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
    warned_units: bool,
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
        let variants = match self.arms.entry(flag.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(HashMap::new()),
        };
        variants.entry(variant.to_string()).or_default()
    }

    fn expose(&mut self, flag: &str, variant: &str, unit: Option<u64>) {
        let Some(unit) = unit else { return };
        let arm = self.arm(flag, variant);
        if arm.units.len() < MAX_UNITS_PER_ARM {
            arm.units.insert(unit);
        } else if !arm.units.contains(&unit) && !self.warned_units {
            self.warned_units = true;
            tracing::warn!(
                flag,
                variant,
                "more than {MAX_UNITS_PER_ARM} units in one minute: further ones are not counted as exposures"
            );
        }
    }
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

    /// Counts an exposure from the evaluation path, only if the lock is free right now.
    pub(crate) fn try_expose(&self, minute: u64, served: &Served<'_>) {
        if let Ok(mut state) = self.state.try_lock() {
            state.roll(minute);
            state.expose(served.flag, served.variant, served.unit);
        }
    }

    /// Adds one outcome to each (flag, variant) served, exposing the unit too.
    pub(crate) fn record(&self, minute: u64, served: &[Served<'_>], outcome: Outcome) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.roll(minute);
        for s in served {
            state.expose(s.flag, s.variant, s.unit);
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
    pub(crate) fn track(&self, minute: u64, served: &[Served<'_>], name: &str, value: f64) {
        let cap = self.caps.get(name).copied().unwrap_or(DEFAULT_METRIC_CAP);
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.roll(minute);
        let mut refused = false;
        for s in served {
            state.expose(s.flag, s.variant, s.unit);
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
    /// gathered since the last drain (its units stay remembered, so they count once).
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

    #[test]
    fn units_count_once_per_minute_even_across_drains() {
        let outcomes = Outcomes::new(HashMap::new());
        let slow = Outcome {
            latency: Some(Duration::from_millis(250)),
            error: true,
        };
        outcomes.record(60, &[served("f", "on", "u1")], slow);
        outcomes.try_expose(60, &served("f", "on", "u1"));
        outcomes.try_expose(60, &served("f", "on", "u2"));
        let rows = outcomes.drain(60);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.exposures, row.requests, row.errors), (2, 1, 1));
        let p50 = row.latency.quantile(0.5).unwrap();
        assert!((p50 - 250.0).abs() <= 2.5, "{p50}");
        // Later in the same minute: u1 again adds no exposure; u3 does.
        outcomes.record(60, &[served("f", "on", "u1")], Outcome::default());
        outcomes.try_expose(60, &served("f", "on", "u3"));
        let rows = outcomes.drain(60);
        assert_eq!((rows[0].exposures, rows[0].requests), (1, 1));
        assert_eq!(rows[0].latency.count(), 0);
        assert!(
            outcomes.drain(60).is_empty(),
            "each outcome is drained once"
        );
        // The next minute starts afresh.
        outcomes.try_expose(120, &served("f", "on", "u1"));
        let rows = outcomes.drain(120);
        assert_eq!((rows[0].minute, rows[0].exposures), (120, 1));
    }

    #[test]
    fn finished_minutes_are_kept_until_drained_and_metrics_are_capped() {
        let caps = [("revenue".to_string(), 100.0)].into();
        let outcomes = Outcomes::new(caps);
        outcomes.track(60, &[served("f", "on", "u1")], "revenue", 1_000.0);
        outcomes.track(60, &[served("f", "on", "u1")], "revenue", 20.0);
        outcomes.track(60, &[served("f", "off", "u2")], "clicks", 1e15);
        outcomes.record(120, &[served("f", "on", "u1")], Outcome::default());
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
