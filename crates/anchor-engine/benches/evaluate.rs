//! `cargo bench -p anchor-engine`: single evaluations in scenarios (a) to (e) and bulk
//! evaluation (f). Building contexts and snapshots is not timed.

use std::hint::black_box;

use anchor_engine::{evaluate, evaluate_all};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "fixtures.rs"]
mod fixtures;

fn single(c: &mut Criterion) {
    let contexts = fixtures::contexts();
    let small = fixtures::small_snapshot();
    let many = fixtures::many_snapshot();
    let keys = fixtures::many_keys();
    let mut group = c.benchmark_group("evaluate");
    for (name, flag) in [
        ("a_on_for_everyone", "always-on"),
        ("b_rollout_50_50", "half"),
        ("c_three_conditions_then_25pct", "targeted"),
        ("e_segment_100k_keys", "in-segment"),
    ] {
        group.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (fixtures::CONTEXTS - 1);
                black_box(evaluate(&small, black_box(flag), &contexts[i]))
            })
        });
    }
    group.bench_function("d_rollout_among_1000_flags", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (fixtures::CONTEXTS - 1);
            let key = &keys[i % keys.len()];
            black_box(evaluate(&many, black_box(key), &contexts[i]))
        })
    });
    group.finish();

    c.bench_function("f_evaluate_all_1000_flags", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (fixtures::CONTEXTS - 1);
            black_box(evaluate_all(&many, &contexts[i]))
        })
    });
}

criterion_group!(benches, single);
criterion_main!(benches);
