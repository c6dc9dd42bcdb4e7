//! A DDSketch-style latency histogram with 1% relative accuracy, mergeable by adding counts.
//!
//! ## The mapping
//! Masson, Rim and Lee, "DDSketch: a fast and fully-mergeable quantile sketch with
//! relative-error guarantees" (VLDB 2019), §2: with a relative accuracy `a = 0.01` and
//! `γ = (1 + a) / (1 − a)`, a value `x > 0` goes to bucket `i = ⌈log_γ x⌉`, which covers
//! `(γ^(i−1), γ^i]`. The bucket's representative value `2γ^i / (γ + 1)` is within a relative
//! error `a` of every value in the bucket, so a quantile read from the sketch is within 1% of the
//! exact quantile of the recorded values.
//!
//! Values at or below [`MIN_VALUE_MS`] (one microsecond), negative values and NaN go to a separate
//! zero bucket, reported as `0`. Values above [`MAX_VALUE_MS`] (about 11.6 days) go to the top
//! bucket. So the index lies in `[MIN_INDEX, MAX_INDEX]` and a sketch never holds more than about
//! 1,400 buckets, whatever it is fed or sent.
//!
//! ## The JSON shape (the wire format of SDK telemetry)
//! ```json
//! { "zero": 0, "bins": [[-346, 2], [235, 17], [236, 4]] }
//! ```
//! `zero` counts the zero bucket; `bins` lists `[index, count]` pairs sorted by index, without
//! empty buckets. The mapping (γ, the index formula, the bounds) is fixed by this module and is
//! not repeated on the wire: a sketch of another accuracy is a different type. A sender may list
//! an index twice (the counts are added); an index outside `[MIN_INDEX, MAX_INDEX]` is refused.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The relative accuracy of every quantile read from a [`LatencySketch`].
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// `γ = (1 + a) / (1 − a)`: the ratio between the edges of one bucket.
pub const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// Values at or below this many milliseconds count in the zero bucket.
pub const MIN_VALUE_MS: f64 = 1e-3;

/// Values above this many milliseconds count in the top bucket.
pub const MAX_VALUE_MS: f64 = 1e9;

/// The bucket of values just above [`MIN_VALUE_MS`].
pub const MIN_INDEX: i32 = -345;

/// The bucket of [`MAX_VALUE_MS`].
pub const MAX_INDEX: i32 = 1037;

/// A mergeable log-bucket histogram of latencies in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SketchWire", into = "SketchWire")]
pub struct LatencySketch {
    zero: u64,
    bins: BTreeMap<i32, u64>,
}

/// The bucket index of a value in milliseconds, or `None` for the zero bucket.
#[must_use]
pub fn bucket_index(value_ms: f64) -> Option<i32> {
    if value_ms.is_nan() || value_ms <= MIN_VALUE_MS {
        return None;
    }
    let clamped = value_ms.min(MAX_VALUE_MS);
    // The cast saturates and the clamp keeps rounding at the edges inside the documented range.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the value is a small whole number"
    )]
    let index = (clamped.ln() / GAMMA.ln()).ceil() as i32;
    Some(index.clamp(MIN_INDEX, MAX_INDEX))
}

/// The upper edge `γ^i` of bucket `i`; the bucket covers `(γ^(i−1), γ^i]`.
#[must_use]
pub fn bucket_upper_edge(index: i32) -> f64 {
    GAMMA.powi(index)
}

/// The value reported for bucket `i`: `2γ^i / (γ + 1)`, within 1% of every value in the bucket.
#[must_use]
pub fn bucket_value(index: i32) -> f64 {
    2.0 * GAMMA.powi(index) / (GAMMA + 1.0)
}

impl LatencySketch {
    /// An empty sketch.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one latency in milliseconds.
    pub fn record(&mut self, value_ms: f64) {
        self.record_n(value_ms, 1);
    }

    /// Records `count` latencies of the same value, as an SDK does when it pre-aggregates.
    pub fn record_n(&mut self, value_ms: f64, count: u64) {
        if count == 0 {
            return;
        }
        match bucket_index(value_ms) {
            None => self.zero = self.zero.saturating_add(count),
            Some(index) => self.add_to_bin(index, count),
        }
    }

    fn add_to_bin(&mut self, index: i32, count: u64) {
        let slot = self.bins.entry(index).or_insert(0);
        *slot = slot.saturating_add(count);
    }

    /// Adds every count of `other` into this sketch: the sketch of the union of both streams.
    pub fn merge(&mut self, other: &Self) {
        self.zero = self.zero.saturating_add(other.zero);
        for (&index, &count) in &other.bins {
            self.add_to_bin(index, count);
        }
    }

    /// The number of recorded values.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.bins
            .values()
            .fold(self.zero, |total, &count| total.saturating_add(count))
    }

    /// The number of values in the zero bucket.
    #[must_use]
    pub fn zero_count(&self) -> u64 {
        self.zero
    }

    /// The non-empty buckets as `(index, count)`, by increasing index.
    pub fn bins(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.bins.iter().map(|(&index, &count)| (index, count))
    }

    /// The bucket holding the value of rank `⌊q·(n − 1)⌋` (0-based) among the `n` recorded
    /// values, or `None` when the sketch is empty. `Some(None)` is the zero bucket.
    #[must_use]
    pub fn quantile_bucket(&self, q: f64) -> Option<Option<i32>> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank below n, which fits in f64 with ample precision for a quantile"
        )]
        let rank = (q * (n - 1) as f64).floor() as u64;
        let mut seen = self.zero;
        if seen > rank {
            return Some(None);
        }
        for (&index, &count) in &self.bins {
            seen = seen.saturating_add(count);
            if seen > rank {
                return Some(Some(index));
            }
        }
        self.bins.keys().next_back().map(|&index| Some(index))
    }

    /// The `q`-quantile (`0 ≤ q ≤ 1`) in milliseconds, within 1% of the exact value of rank
    /// `⌊q·(n − 1)⌋`; `None` when the sketch is empty.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.quantile_bucket(q)
            .map(|bucket| bucket.map_or(0.0, bucket_value))
    }

    /// The number of values certainly above `threshold_ms`: those in buckets that lie entirely
    /// above it.
    ///
    /// The bucket that contains the threshold (it straddles it) is not counted, even though
    /// some of its values may lie above the threshold: the count is a lower bound on the true
    /// one, off by at most that one bucket, a 2% band of values. A guardrail that counts the
    /// treatment's slow requests with this function can therefore only under-count them, which
    /// errs toward not rolling back.
    #[must_use]
    pub fn count_above(&self, threshold_ms: f64) -> u64 {
        match bucket_index(threshold_ms) {
            // A threshold in the zero bucket: every bucket above it holds only larger values.
            None if threshold_ms.is_nan() => 0,
            None => self.bins.values().sum(),
            Some(index) => self.count_above_bucket(index),
        }
    }

    /// The number of values in buckets of index greater than `index`, that is the values
    /// above `γ^index` exactly.
    #[must_use]
    pub fn count_above_bucket(&self, index: i32) -> u64 {
        self.bins
            .range(index.saturating_add(1)..)
            .fold(0, |total: u64, (_, &count)| total.saturating_add(count))
    }
}

/// The serde form documented in the module header.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SketchWire {
    #[serde(default)]
    zero: u64,
    #[serde(default)]
    bins: Vec<(i32, u64)>,
}

/// Why a sketch sent as JSON was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SketchError {
    /// The offending bucket index.
    pub index: i32,
}

impl fmt::Display for SketchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bucket index {} is outside [{MIN_INDEX}, {MAX_INDEX}]",
            self.index
        )
    }
}

impl std::error::Error for SketchError {}

impl TryFrom<SketchWire> for LatencySketch {
    type Error = SketchError;

    fn try_from(wire: SketchWire) -> Result<Self, Self::Error> {
        let mut sketch = Self {
            zero: wire.zero,
            bins: BTreeMap::new(),
        };
        for (index, count) in wire.bins {
            if !(MIN_INDEX..=MAX_INDEX).contains(&index) {
                return Err(SketchError { index });
            }
            if count > 0 {
                sketch.add_to_bin(index, count);
            }
        }
        Ok(sketch)
    }
}

impl From<LatencySketch> for SketchWire {
    fn from(sketch: LatencySketch) -> Self {
        Self {
            zero: sketch.zero,
            bins: sketch.bins.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_bounds_match_the_value_bounds() {
        assert_eq!(bucket_index(MIN_VALUE_MS * 1.000_001), Some(MIN_INDEX));
        assert_eq!(bucket_index(MAX_VALUE_MS), Some(MAX_INDEX));
        assert_eq!(bucket_index(f64::INFINITY), Some(MAX_INDEX));
        assert_eq!(bucket_index(MIN_VALUE_MS), None);
        assert_eq!(bucket_index(-3.0), None);
        assert_eq!(bucket_index(f64::NAN), None);
    }

    #[test]
    fn one_millisecond_is_bucket_zero_and_the_next_bucket_starts_just_above_it() {
        // ln(1) = 0, so 1 ms is the top edge of bucket 0.
        assert_eq!(bucket_index(1.0), Some(0));
        assert_eq!(bucket_index(1.000_1), Some(1));
        assert_eq!(bucket_index(GAMMA), Some(1));
        // 100 ms: ln(100) / ln(1.0202…) = 4.6052 / 0.020001 = 230.25, so bucket 231.
        assert_eq!(bucket_index(100.0), Some(231));
    }

    #[test]
    fn bucket_value_is_within_one_percent_of_both_edges() {
        for index in [MIN_INDEX, -10, 0, 1, 231, MAX_INDEX] {
            let value = bucket_value(index);
            let upper = bucket_upper_edge(index);
            let lower = bucket_upper_edge(index - 1);
            assert!((upper - value) / upper <= RELATIVE_ACCURACY + 1e-12);
            assert!((value - lower) / lower <= RELATIVE_ACCURACY + 1e-12);
        }
    }

    #[test]
    fn quantiles_of_a_small_sketch_read_the_right_ranks() {
        let mut sketch = LatencySketch::new();
        for value in [10.0, 20.0, 30.0, 40.0, 0.0] {
            sketch.record(value);
        }
        assert_eq!(sketch.count(), 5);
        assert_eq!(sketch.quantile(0.0), Some(0.0));
        let median = sketch.quantile(0.5).unwrap();
        assert!((median - 20.0).abs() <= 0.2, "{median}");
        let max = sketch.quantile(1.0).unwrap();
        assert!((max - 40.0).abs() <= 0.4, "{max}");
        assert_eq!(LatencySketch::new().quantile(0.5), None);
    }

    #[test]
    fn count_above_leaves_out_the_bucket_that_straddles_the_threshold() {
        let mut sketch = LatencySketch::new();
        sketch.record_n(100.0, 3);
        sketch.record_n(100.5, 4);
        sketch.record_n(150.0, 5);
        sketch.record_n(1.0, 7);
        // 100 and 100.5 share bucket 231, which straddles a threshold of 100.2.
        assert_eq!(bucket_index(100.5), Some(231));
        assert_eq!(sketch.count_above(100.2), 5);
        assert_eq!(sketch.count_above(99.0), 12);
        assert_eq!(sketch.count_above(0.0), 19);
        assert_eq!(sketch.count_above(1e6), 0);
    }

    #[test]
    fn json_shape_is_zero_and_sorted_index_count_pairs() {
        let mut sketch = LatencySketch::new();
        sketch.record(100.0);
        sketch.record(100.0);
        sketch.record(1.0);
        sketch.record(0.0);
        let json = serde_json::to_string(&sketch).unwrap();
        assert_eq!(json, r#"{"zero":1,"bins":[[0,1],[231,2]]}"#);
        let back: LatencySketch = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sketch);
    }

    #[test]
    fn json_with_repeated_indices_adds_them_and_out_of_range_indices_are_refused() {
        let sketch: LatencySketch =
            serde_json::from_str(r#"{"bins":[[5,1],[5,2],[6,0]]}"#).unwrap();
        assert_eq!(sketch.bins().collect::<Vec<_>>(), vec![(5, 3)]);
        let refused = serde_json::from_str::<LatencySketch>(r#"{"bins":[[5000,1]]}"#);
        assert!(refused.unwrap_err().to_string().contains("outside"));
        let unknown = serde_json::from_str::<LatencySketch>(r#"{"gamma":1.02}"#);
        assert!(unknown.is_err());
    }
}
