//! The evaluation path: each thread keeps, per client, the configuration it last used and its
//! own evaluation counters, and checks one atomic generation number per evaluation to see
//! whether the client installed a newer configuration since.
//!
//! Loading the configuration through the `ArcSwap` on every call (a few atomic operations on
//! shared cache lines) and counting with an atomic add would cost more than evaluating a simple
//! flag; this way an evaluation adds a thread-local lookup, one relaxed load that stays in the
//! core's cache while nothing changes, and a plain increment of a counter no other thread
//! writes. The price: a thread keeps the configuration it last used alive until it evaluates
//! again (or exits), so an idle thread may hold an old configuration's memory; and a thread
//! remembers at most `MAX_CLIENTS_PER_THREAD` clients (more evicts the oldest, which then
//! reloads).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anchor_engine::{Evaluation, EvaluationContext};

use crate::Shared;
use crate::held::{Held, Tally};

const MAX_CLIENTS_PER_THREAD: usize = 8;

struct Entry {
    client: u64,
    generation: u64,
    held: Arc<Held>,
    /// `None` when the client does not count evaluations.
    tally: Option<Arc<Tally>>,
}

thread_local! {
    static CACHE: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

impl Shared {
    fn entry(&self, generation: u64) -> Entry {
        let held = self.held.load_full();
        let tally = self.counting.then(|| held.counters.new_tally());
        Entry {
            client: self.id,
            generation,
            held,
            tally,
        }
    }

    /// Runs one evaluation of `context` against the configuration in use and counts it (and,
    /// for a watched flag, its exposure).
    #[inline]
    pub(crate) fn evaluate<R>(
        &self,
        context: &EvaluationContext,
        f: impl for<'s> Fn(&'s Held) -> (R, Evaluation<'s>),
    ) -> R {
        let generation = self.generation.load(Ordering::Acquire);
        let fast = CACHE
            .try_with(|cache| {
                // Busy only if an evaluation re-entered this one, which the engine never does.
                let mut cache = cache.try_borrow_mut().ok()?;
                let position = match cache.iter().position(|e| e.client == self.id) {
                    Some(position) => position,
                    None => {
                        if cache.len() >= MAX_CLIENTS_PER_THREAD {
                            cache.remove(0);
                        }
                        cache.push(self.entry(generation));
                        cache.len() - 1
                    }
                };
                let entry = cache.get_mut(position)?;
                if entry.generation != generation {
                    *entry = self.entry(generation);
                }
                let (result, evaluation) = f(&entry.held);
                if let Some(tally) = &entry.tally
                    && let Some(slot) = entry.held.counters.slot(&evaluation)
                {
                    tally.add_own(slot);
                }
                self.expose(&entry.held, &evaluation, context);
                Some(result)
            })
            .ok()
            .flatten();
        match fast {
            Some(result) => result,
            None => {
                // The thread's storage is gone (the thread is exiting): the shared way.
                let held = self.held.load();
                let (result, evaluation) = f(&held);
                if self.counting {
                    held.counters.count_shared(&evaluation);
                }
                self.expose(&held, &evaluation, context);
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use anchor_engine::{EvaluationContext, evaluate};
    use serde_json::json;

    use crate::Shared;
    use crate::held::{ConfigPayload, Source};

    fn payload(revision: u64, variant: &str) -> ConfigPayload {
        serde_json::from_value(json!({"revision": revision, "flags": [{
            "flag": {"key": "f", "kind": "boolean", "variants": [
                {"name": "on", "value": true}, {"name": "off", "value": false}]},
            "config": {"enabled": true, "offVariant": "off", "defaultServe": {"variant": variant}}
        }]}))
        .unwrap()
    }

    fn drain(shared: &Shared) -> HashMap<(String, Option<String>), u64> {
        let mut out = HashMap::new();
        let current = shared.held.load_full();
        current.counters.drain(&current.snapshot, &mut out);
        for old in shared.retired.lock().unwrap().iter() {
            old.counters.drain(&old.snapshot, &mut out);
        }
        out
    }

    #[test]
    fn counts_from_many_threads_add_up_across_a_change() {
        let shared = Shared::new(true, None);
        shared.install(payload(1, "on"), Source::Server, None, |_| true);
        let ctx = EvaluationContext::with_targeting_key("u");
        let evaluate_n = |n: usize| {
            for _ in 0..n {
                shared.evaluate(&ctx, |held| ((), evaluate(&held.snapshot, "f", &ctx)));
            }
        };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| evaluate_n(10_000));
            }
        });
        shared.install(payload(2, "off"), Source::Server, None, |_| true);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| evaluate_n(1_000));
            }
        });
        // Threads see the change on their next evaluation.
        let served = shared.evaluate(&ctx, |held| {
            let e = evaluate(&held.snapshot, "f", &ctx);
            (e.variant().map(str::to_string), e)
        });
        assert_eq!(served.as_deref(), Some("off"));
        let counts = drain(&shared);
        assert_eq!(counts[&("f".to_string(), Some("on".to_string()))], 40_000);
        assert_eq!(counts[&("f".to_string(), Some("off".to_string()))], 3_001);
        assert!(drain(&shared).is_empty(), "each count is drained once");
    }
}
