//! The evaluation paths of benchmark scenarios (a) to (e) do not touch the heap.
//!
//! A counting global allocator (this test binary's only test, so no other test allocates
//! concurrently) counts allocations made by this thread while evaluating.

#![allow(
    unsafe_code,
    reason = "a global allocator must implement the unsafe GlobalAlloc trait"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use anchor_engine::{EvaluationContext, Reason, Snapshot, evaluate};

#[path = "../benches/fixtures.rs"]
mod fixtures;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

/// Evaluates `flag` for every context, returning how many allocations that took and how many
/// evaluations gave each reason.
fn run(
    snapshot: &Snapshot,
    contexts: &[EvaluationContext],
    keys: &[String],
) -> (usize, Vec<Reason>) {
    let mut reasons = Vec::with_capacity(contexts.len());
    let count = allocations_during(|| {
        for (ctx, key) in contexts.iter().zip(keys) {
            let e = evaluate(snapshot, key, ctx);
            reasons.push(e.reason());
        }
    });
    (count, reasons)
}

#[test]
fn evaluation_paths_a_to_e_do_not_allocate() {
    let contexts = fixtures::contexts();
    let small = fixtures::small_snapshot();
    let many = fixtures::many_snapshot();
    let many_keys = fixtures::many_keys();

    let one = |key: &str| vec![key.to_string(); contexts.len()];
    let rotating: Vec<String> = (0..contexts.len())
        .map(|i| many_keys[i % many_keys.len()].clone())
        .collect();
    let scenarios = [
        ("(a) on for everyone", &small, one("always-on")),
        ("(b) 50/50 rollout", &small, one("half")),
        ("(c) three conditions then 25%", &small, one("targeted")),
        ("(d) rollout among 1,000 flags", &many, rotating),
        ("(e) segment of 100,000 keys", &small, one("in-segment")),
    ];
    for (name, snapshot, keys) in scenarios {
        let (allocations, reasons) = run(snapshot, &contexts, &keys);
        assert_eq!(
            allocations,
            0,
            "{name} allocated {allocations} times in {} evaluations",
            contexts.len()
        );
        assert!(
            !reasons.contains(&Reason::Error),
            "{name}: an evaluation failed"
        );
        match name.chars().nth(1) {
            Some('a') => assert!(reasons.iter().all(|r| *r == Reason::Static)),
            Some('b' | 'c' | 'd') => assert!(
                reasons.iter().all(|r| *r == Reason::Split),
                "{name}: {reasons:?}"
            ),
            _ => {
                let matched = reasons
                    .iter()
                    .filter(|r| **r == Reason::TargetingMatch)
                    .count();
                assert_eq!(
                    matched,
                    contexts.len() / 2,
                    "{name}: every other context is in the segment"
                );
            }
        }
    }
}
