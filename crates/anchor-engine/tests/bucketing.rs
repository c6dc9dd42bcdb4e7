//! The consequences of the bucketing specification (`docs/bucketing.md`), checked through the
//! engine: independent vectors, stickiness as a rollout widens, the observed shares, and the
//! independence of flags with different salts.

use std::path::Path;

use anchor_engine::bucket::{bucket, murmur3_x86_32, pick};
use anchor_engine::{
    EnvironmentConfig, EvaluationContext, Reason, Snapshot, Step, compile, evaluate, explain,
};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// A flag whose default serve is a rollout: key, weights, salt, bucketing attribute.
type RolloutFlag<'a> = (&'a str, &'a [u32], Option<&'a str>, Option<&'a str>);

/// An environment of flags whose default serve is a rollout over variants `v0`, `v1`, ….
fn rollout_snapshot(flags: &[RolloutFlag<'_>]) -> Snapshot {
    let flags: Vec<Value> = flags
        .iter()
        .map(|(key, weights, salt, bucket_by)| {
            let variants: Vec<Value> = (0..weights.len())
                .map(|i| json!({"name": format!("v{i}"), "value": format!("v{i}")}))
                .collect();
            let split: Vec<Value> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| json!({"variant": format!("v{i}"), "weight": w}))
                .collect();
            let mut rollout = json!({ "variants": split });
            if let Some(salt) = salt {
                rollout["salt"] = json!(salt);
            }
            if let Some(by) = bucket_by {
                rollout["bucketBy"] = json!(by);
            }
            json!({
                "flag": {"key": key, "kind": "string", "variants": variants},
                "config": {"enabled": true, "offVariant": "v0", "defaultServe": {"rollout": rollout}}
            })
        })
        .collect();
    let config: EnvironmentConfig = serde_json::from_value(json!({ "flags": flags })).unwrap();
    let (snapshot, diagnostics) = compile(&config);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    snapshot
}

fn variant_index(snapshot: &Snapshot, flag: &str, ctx: &EvaluationContext) -> Option<usize> {
    let e = evaluate(snapshot, flag, ctx);
    e.variant().map(|v| v[1..].parse().unwrap())
}

#[derive(Deserialize)]
struct Vectors {
    description: String,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    salt: String,
    unit: Value,
    weights: Vec<u32>,
    hashed: String,
    h: u32,
    bucket: Option<u32>,
    variant: Option<usize>,
}

#[test]
fn the_published_vectors_computed_independently_match_the_engine() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/bucketing-vectors.json");
    let vectors: Vectors = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(vectors.description.contains("mmh3"));
    assert!(vectors.vectors.len() >= 50);
    let mut non_ascii = 0;
    let mut empty = 0;
    for v in &vectors.vectors {
        assert_eq!(
            murmur3_x86_32(v.hashed.as_bytes(), 0),
            v.h,
            "hash of {:?}",
            v.hashed
        );
        // Through the engine: the unit is an attribute so that integer units are exercised too.
        let snapshot = rollout_snapshot(&[("f", &v.weights, Some(&v.salt), Some("unit"))]);
        let ctx = EvaluationContext::new().with("unit", v.unit.clone());
        assert_eq!(
            variant_index(&snapshot, "f", &ctx),
            v.variant,
            "{:?}",
            v.hashed
        );
        let explanation = explain(&snapshot, "f", &ctx);
        let bucketed = explanation.steps.iter().find_map(|s| match s {
            Step::Bucketed { hash, bucket, .. } => Some((*hash, *bucket)),
            _ => None,
        });
        match v.bucket {
            Some(b) => assert_eq!(bucketed, Some((v.h, b)), "{:?}", v.hashed),
            None => {
                empty += 1;
                assert_eq!(explanation.evaluation.reason(), Reason::Error);
            }
        }
        if !v.hashed.is_ascii() {
            non_ascii += 1;
        }
    }
    assert!(
        non_ascii >= 5 && empty >= 1,
        "the vectors must cover non-ASCII and empty units"
    );
}

#[test]
fn the_documented_example_is_what_the_engine_computes() {
    let h = murmur3_x86_32(b"new-checkout:user-42", 0);
    assert_eq!(h, 1_499_260_774);
    assert_eq!(bucket(h, 100_000), 34_907);
    assert_eq!(pick([50_000, 50_000], 34_907), 0);
}

#[test]
fn the_hash_agrees_with_an_independent_murmur3_crate() {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for len in 0..200 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state = splitmix64(state);
                state as u8
            })
            .collect();
        assert_eq!(
            murmur3_x86_32(&bytes, 0),
            mur3::murmurhash3_x86_32(&bytes, 0)
        );
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Deterministic pseudo-random units shaped like real user ids.
fn units(n: usize, seed: u64) -> impl Iterator<Item = String> {
    let mut state = seed;
    (0..n).map(move |i| {
        state = splitmix64(state);
        format!("user-{i:06}-{:08x}", state as u32)
    })
}

#[test]
fn widening_a_rollout_through_the_stages_never_drops_anyone() {
    let stages = [1_000u32, 5_000, 25_000, 50_000, 100_000];
    let snapshots: Vec<Snapshot> = stages
        .iter()
        .map(|&p| {
            rollout_snapshot(&[
                ("treatment-first", &[p, 100_000 - p], None, None),
                (
                    "treatment-second",
                    &[100_000 - p, p],
                    Some("treatment-first"),
                    None,
                ),
            ])
        })
        .collect();
    for unit in units(20_000, 7) {
        let ctx = EvaluationContext::with_targeting_key(unit.clone());
        let mut had_first = false;
        let mut had_second = false;
        for s in &snapshots {
            let first = variant_index(s, "treatment-first", &ctx) == Some(0);
            let second = variant_index(s, "treatment-second", &ctx) == Some(1);
            assert!(
                first || !had_first,
                "{unit} left treatment as the rollout widened"
            );
            assert!(
                second || !had_second,
                "{unit} left treatment (listed second)"
            );
            had_first = first;
            had_second = second;
        }
        assert!(had_first && had_second, "at 100% everyone is in treatment");
    }
}

#[test]
fn observed_shares_over_a_million_units_are_within_a_fifth_of_a_point() {
    let weights = [1_000u32, 4_000, 20_000, 25_000, 50_000];
    let snapshot = rollout_snapshot(&[("split", &weights, None, None)]);
    let n = 1_000_000;
    let mut counts = [0u32; 5];
    for unit in units(n, 42) {
        let ctx = EvaluationContext::with_targeting_key(unit);
        counts[variant_index(&snapshot, "split", &ctx).unwrap()] += 1;
    }
    for (i, (&c, &w)) in counts.iter().zip(&weights).enumerate() {
        let observed = 100.0 * f64::from(c) / n as f64;
        let configured = f64::from(w) / 1_000.0;
        assert!(
            (observed - configured).abs() <= 0.2,
            "variant {i}: observed {observed:.3}% for a weight of {configured}%"
        );
    }
}

#[test]
fn flags_with_different_salts_place_units_independently() {
    let snapshot = rollout_snapshot(&[
        ("a", &[50_000, 50_000], None, None),
        ("b", &[50_000, 50_000], None, None),
        ("c", &[10_000, 90_000], None, None),
    ]);
    let n = 1_000_000;
    let mut ab = [[0u32; 2]; 2];
    let mut in_a_and_c = 0u32;
    for unit in units(n, 1234) {
        let ctx = EvaluationContext::with_targeting_key(unit);
        let a = variant_index(&snapshot, "a", &ctx).unwrap();
        let b = variant_index(&snapshot, "b", &ctx).unwrap();
        let c = variant_index(&snapshot, "c", &ctx).unwrap();
        ab[a][b] += 1;
        if a == 0 && c == 0 {
            in_a_and_c += 1;
        }
    }
    for (a, row) in ab.iter().enumerate() {
        for (b, &count) in row.iter().enumerate() {
            let share = 100.0 * f64::from(count) / n as f64;
            assert!(
                (share - 25.0).abs() <= 0.2,
                "a={a} b={b}: {share:.3}% instead of 25%"
            );
        }
    }
    let share = 100.0 * f64::from(in_a_and_c) / n as f64;
    assert!(
        (share - 5.0).abs() <= 0.2,
        "in both a (50%) and c (10%): {share:.3}% instead of 5%"
    );
}

#[test]
fn the_same_salt_makes_two_flags_coincide() {
    let snapshot = rollout_snapshot(&[
        ("backend", &[30_000, 70_000], Some("feature"), None),
        ("frontend", &[30_000, 70_000], Some("feature"), None),
    ]);
    for unit in units(5_000, 9) {
        let ctx = EvaluationContext::with_targeting_key(unit);
        assert_eq!(
            variant_index(&snapshot, "backend", &ctx),
            variant_index(&snapshot, "frontend", &ctx)
        );
    }
}

proptest! {
    #[test]
    fn bucketing_is_deterministic_and_in_range(unit in "\\PC{1,40}", salt in "[a-z0-9.-]{0,20}", w in 1u32..=i32::MAX as u32) {
        let data = format!("{salt}:{unit}");
        let h = murmur3_x86_32(data.as_bytes(), 0);
        prop_assert_eq!(h, murmur3_x86_32(data.as_bytes(), 0));
        prop_assert_eq!(h, mur3::murmurhash3_x86_32(data.as_bytes(), 0));
        prop_assert!(bucket(h, w) < w);
    }

    #[test]
    fn a_unit_in_treatment_stays_there_when_the_share_grows(
        unit in "[a-zA-Z0-9-]{1,32}",
        p1 in 0u32..=100_000,
        extra in 0u32..=100_000,
    ) {
        let p2 = (p1 + extra).min(100_000);
        let b = bucket(murmur3_x86_32(format!("flag:{unit}").as_bytes(), 0), 100_000);
        let at_p1 = pick([p1, 100_000 - p1], b) == 0;
        let at_p2 = pick([p2, 100_000 - p2], b) == 0;
        prop_assert!(!at_p1 || at_p2);
    }

    #[test]
    fn every_bucket_maps_to_a_variant_with_positive_weight(
        weights in proptest::collection::vec(0u32..1_000, 1..8),
        h in any::<u32>(),
    ) {
        let total: u32 = weights.iter().sum();
        prop_assume!(total > 0);
        let i = pick(weights.iter().copied(), bucket(h, total));
        prop_assert!(weights[i] > 0);
    }
}
