//! `cargo bench -p anchor-engine --bench table`: the benchmark scenarios as one table.
//!
//! For each scenario it times 15 rounds of a fixed number of evaluations and prints the median
//! and the fastest round in nanoseconds per evaluation, next to the target from the engine's
//! issue and the fastest competing engine measured on the same kind of machine. Medians of
//! rounds are steadier than one long run on a noisy two-core machine. Pass `--instructions` to
//! run each scenario once for a fixed count (for `valgrind --tool=callgrind`).

use std::hint::black_box;
use std::time::Instant;

use anchor_engine::{EvaluationContext, Snapshot, evaluate, evaluate_all};

#[path = "fixtures.rs"]
mod fixtures;

struct Scenario<'a> {
    name: &'static str,
    target_ns: f64,
    /// The fastest of Unleash (yggdrasil), LaunchDarkly, GrowthBook and flagd, in ns.
    fastest_other_ns: Option<f64>,
    run: Box<dyn Fn(usize) + 'a>,
    per_round: usize,
}

fn single<'a>(
    snapshot: &'a Snapshot,
    contexts: &'a [EvaluationContext],
    keys: &'a [String],
) -> Box<dyn Fn(usize) + 'a> {
    // One (context, key) pair per slot and a power-of-two mask: a division per evaluation
    // would cost as much as the cheapest evaluation.
    assert!(contexts.len().is_power_of_two());
    let pairs: Vec<(&EvaluationContext, &str)> = contexts
        .iter()
        .enumerate()
        .map(|(i, c)| (c, keys[i % keys.len()].as_str()))
        .collect();
    let mask = pairs.len() - 1;
    Box::new(move |n| {
        for i in 0..n {
            let (ctx, key) = pairs[i & mask];
            black_box(evaluate(snapshot, black_box(key), ctx));
        }
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[allow(clippy::print_stdout, reason = "a benchmark binary prints its table")]
fn main() {
    let instructions = std::env::args().any(|a| a == "--instructions");
    let contexts = fixtures::contexts();
    let small = fixtures::small_snapshot();
    let many = fixtures::many_snapshot();
    let many_keys = fixtures::many_keys();
    let key = |k: &str| vec![k.to_string()];
    let (on, half, targeted, segment) = (
        key("always-on"),
        key("half"),
        key("targeted"),
        key("in-segment"),
    );
    let scenarios = vec![
        Scenario {
            name: "(a) on for everyone",
            target_ns: 15.0,
            fastest_other_ns: Some(50.0),
            run: single(&small, &contexts, &on),
            per_round: 2_000_000,
        },
        Scenario {
            name: "(b) 50/50 rollout",
            target_ns: 40.0,
            fastest_other_ns: Some(164.0),
            run: single(&small, &contexts, &half),
            per_round: 1_000_000,
        },
        Scenario {
            name: "(c) 3 conditions, 25%",
            target_ns: 70.0,
            fastest_other_ns: Some(212.0),
            run: single(&small, &contexts, &targeted),
            per_round: 1_000_000,
        },
        Scenario {
            name: "(d) (b) among 1,000 flags",
            target_ns: 45.0,
            fastest_other_ns: Some(173.0),
            run: single(&many, &contexts, &many_keys),
            per_round: 1_000_000,
        },
        Scenario {
            name: "(e) segment, 100k keys",
            target_ns: 40.0,
            fastest_other_ns: None,
            run: single(&small, &contexts, &segment),
            per_round: 1_000_000,
        },
        Scenario {
            name: "(f) evaluate_all, 1,000",
            target_ns: 40_000.0,
            fastest_other_ns: None,
            run: Box::new(|n| {
                for i in 0..n {
                    black_box(evaluate_all(&many, &contexts[i & (fixtures::CONTEXTS - 1)]));
                }
            }),
            per_round: 1_000,
        },
    ];
    if instructions {
        // `--instructions c` runs scenario (c) alone, 100,000 evaluations (100 for (f)).
        let only: Option<String> = std::env::args()
            .skip_while(|a| a != "--instructions")
            .nth(1);
        for s in &scenarios {
            if only
                .as_ref()
                .is_none_or(|o| s.name.starts_with(&format!("({o})")))
            {
                (s.run)(s.per_round / 10);
            }
        }
        return;
    }
    println!(
        "| scenario | median ns | fastest ns | target ns | fastest other engine ns | ratio to it |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for s in &scenarios {
        (s.run)(s.per_round / 10);
        let rounds: Vec<f64> = (0..15)
            .map(|_| {
                let start = Instant::now();
                (s.run)(s.per_round);
                start.elapsed().as_nanos() as f64 / s.per_round as f64
            })
            .collect();
        let fastest = rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let m = median(rounds);
        let other = s
            .fastest_other_ns
            .map_or("-".to_string(), |o| format!("{o:.0}"));
        let ratio = s
            .fastest_other_ns
            .map_or("-".to_string(), |o| format!("{:.1}x", o / m));
        println!(
            "| {} | {m:.1} | {fastest:.1} | {:.0} | {other} | {ratio} |",
            s.name, s.target_ns
        );
    }
}
