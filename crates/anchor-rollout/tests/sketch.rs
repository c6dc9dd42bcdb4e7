//! Properties of the latency sketch: quantiles within 1% of the exact ones, merging is the
//! sketch of the union (so it is associative and commutative), `count_above` never over-counts,
//! and the JSON form round-trips.

use anchor_rollout::LatencySketch;
use anchor_rollout::sketch::{RELATIVE_ACCURACY, bucket_index};
use proptest::prelude::*;

/// Latencies from 10 µs to 10⁶ ms, spread evenly on a log scale, with repeats.
fn latencies() -> impl Strategy<Value = Vec<f64>> {
    proptest::collection::vec((-2.0f64..6.0).prop_map(|e| 10f64.powf(e)), 1..400)
}

fn sketch_of(values: &[f64]) -> LatencySketch {
    let mut sketch = LatencySketch::new();
    for &value in values {
        sketch.record(value);
    }
    sketch
}

proptest! {
    #[test]
    fn quantiles_are_within_one_percent_of_the_exact_rank(
        values in latencies(), q in 0.0f64..=1.0
    ) {
        let sketch = sketch_of(&values);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank below the vector's length"
        )]
        let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        let estimate = sketch.quantile(q).unwrap();
        prop_assert!(
            (estimate - exact).abs() <= (RELATIVE_ACCURACY + 1e-12) * exact,
            "q = {q}: {estimate} vs {exact}"
        );
    }

    #[test]
    fn merging_is_the_sketch_of_the_union_in_any_grouping(
        a in latencies(), b in latencies(), c in latencies()
    ) {
        let (sa, sb, sc) = (sketch_of(&a), sketch_of(&b), sketch_of(&c));
        let mut left = sa.clone();
        left.merge(&sb);
        left.merge(&sc);
        let mut right_tail = sb.clone();
        right_tail.merge(&sc);
        let mut right = sa.clone();
        right.merge(&right_tail);
        let mut swapped = sc.clone();
        swapped.merge(&sa);
        swapped.merge(&sb);
        let all: Vec<f64> = a.iter().chain(&b).chain(&c).copied().collect();
        let union = sketch_of(&all);
        prop_assert_eq!(&left, &right);
        prop_assert_eq!(&left, &swapped);
        prop_assert_eq!(&left, &union);
        prop_assert_eq!(left.count(), all.len() as u64);
    }

    #[test]
    fn count_above_never_over_counts_and_misses_only_the_straddling_bucket(
        values in latencies(), threshold in (-2.0f64..6.0).prop_map(|e| 10f64.powf(e))
    ) {
        let sketch = sketch_of(&values);
        let exact = values.iter().filter(|&&v| v > threshold).count() as u64;
        let straddling = values
            .iter()
            .filter(|&&v| v > threshold && bucket_index(v) == bucket_index(threshold))
            .count() as u64;
        prop_assert_eq!(sketch.count_above(threshold), exact - straddling);
    }

    #[test]
    fn json_round_trips(values in latencies()) {
        let sketch = sketch_of(&values);
        let json = serde_json::to_string(&sketch).unwrap();
        let back: LatencySketch = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, sketch);
    }
}
