//! `cargo bench -p anchor-rollout --bench guardbench`: GuardBench's full table (markdown on
//! standard output), each scenario × traffic level × baseline error rate under Release Anchor's
//! controller and the two baselines. `docs/guardbench.md` explains the model and the columns.
//!
//! Environment variables (all optional):
//! - `GUARDBENCH_SEEDS`: runs per row (default 500);
//! - `GUARDBENCH_FIRST_SEED`: the first seed (default 0), so batches can be added up;
//! - `GUARDBENCH_RPS`: traffic levels, comma-separated (default `10,100,1000`);
//! - `GUARDBENCH_SCENARIO`: only rows whose scenario name contains this text;
//! - `GUARDBENCH_THREADS`: worker threads (default 2);
//! - `GUARDBENCH_CONTROLLERS`: only controllers whose name contains one of these
//!   comma-separated texts (for example `Release Anchor,oracle`);
//! - `GUARDBENCH_FIRST_STAGE`: the first stage's percentage instead of the builtin's 1 (below 5).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a bench binary prints its table and its progress"
)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[path = "guardbench/sim.rs"]
#[allow(
    dead_code,
    reason = "the simulator also serves the reduced test, which reads more of it"
)]
mod sim;

use sim::{Controller, matrix, row, run_cell, summarize};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() {
    let seeds: u64 = env_or("GUARDBENCH_SEEDS", 500);
    let first: u64 = env_or("GUARDBENCH_FIRST_SEED", 0);
    let threads: usize = env_or("GUARDBENCH_THREADS", 2usize).max(1);
    let rps: Vec<u64> = std::env::var("GUARDBENCH_RPS")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let filter = std::env::var("GUARDBENCH_SCENARIO").unwrap_or_default();
    let wanted = std::env::var("GUARDBENCH_CONTROLLERS").unwrap_or_default();
    let controllers: Vec<Controller> = [
        Controller::Guardrails,
        Controller::StaticThreshold,
        Controller::NaiveZ,
        Controller::OracleSprt,
        Controller::OracleSprtUnconstrained,
    ]
    .into_iter()
    .filter(|c| wanted.is_empty() || wanted.split(',').any(|w| c.name().contains(w.trim())))
    .collect();
    let first_stage: Option<f64> = std::env::var("GUARDBENCH_FIRST_STAGE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|p| *p > 0.0 && *p < 5.0);
    let cells: Vec<_> = matrix(&controllers, &rps)
        .into_iter()
        .filter(|c| c.scenario.name().contains(&filter))
        .map(|c| match first_stage {
            Some(p) => c.with_first_stage(p),
            None => c,
        })
        .collect();
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let rows = Mutex::new(vec![String::new(); cells.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(cell) = cells.get(i) else { break };
                    let cell_started = Instant::now();
                    let summary = summarize(&run_cell(cell, first..first + seeds));
                    let line = row(cell, &summary);
                    eprintln!("{line} ({:.1} s)", cell_started.elapsed().as_secs_f64());
                    rows.lock().expect("no worker panics")[i] = line;
                }
            });
        }
    });
    println!(
        "GuardBench: {seeds} runs per row (seeds {first}..{}), first stage {}%, {} rows, {threads} threads, {:.0} s",
        first + seeds,
        first_stage.unwrap_or(1.0),
        cells.len(),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("{}", sim::header());
    for line in rows.into_inner().expect("no worker panics") {
        println!("{line}");
    }
}
