//! Snapshot refresh: what one write costs, through the store and the snapshot refresh that
//! follows it, as the number of flags grows.
//!
//! For each size (100, 1,000 and 5,000 flags by default; `SIZES=100,1000` to change them) a
//! fresh embedded SQLite store in a temporary directory is filled with that many flags (its
//! snapshots built once), then `ROUNDS` (default 30) times:
//! - one flag's configuration is written in one environment and that environment refreshed,
//!   as the management API's `PUT` does;
//! - one flag is created and every environment of the project refreshed, as its `POST` does.
//!
//! Prints the median and p90 of each, per size, and the median divided by the flag count; then
//! what a full refresh is made of: the median of reading the environment's configuration from
//! the store and of compiling it.
//!
//! `cargo bench -p anchor-server --bench snapshot_refresh`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anchor_engine::{Flag, FlagConfig};
use anchor_server::bootstrap;
use anchor_server::snapshots::Snapshots;
use anchor_store::{Actor, ConfigChange, SqlStore, Store};
use serde_json::json;

const PROJECT: &str = "default";
const ENVIRONMENT: &str = "production";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sizes() -> Vec<usize> {
    std::env::var("SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000, 5_000])
}

fn flag(key: &str) -> Flag {
    serde_json::from_value(json!({"key": key, "kind": "boolean",
        "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]}))
    .expect("a flag")
}

/// A configuration with a rule, so that compiling it does some work.
fn config(enabled: bool) -> FlagConfig {
    serde_json::from_value(json!({
        "enabled": enabled,
        "offVariant": "off",
        "rules": [{"id": "r1", "conditions": [
            {"attribute": "country", "operator": "in", "values": ["de", "fr"]}],
            "serve": {"variant": "on"}}],
        "defaultServe": {"variant": "off"}
    }))
    .expect("a configuration")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

struct Row {
    flags: usize,
    put: Vec<Duration>,
    create: Vec<Duration>,
    read: Vec<Duration>,
    compile: Vec<Duration>,
}

async fn measure(flags: usize, rounds: usize) -> Row {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("anchor-refresh-{}-{flags}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let store = SqlStore::open_sqlite(&dir.join("anchor.db"))
        .await
        .expect("the store");
    bootstrap(&store, None).await.expect("bootstrap");
    let actor = Actor::system("bench");
    for i in 0..flags {
        store
            .create_flag(
                &actor,
                PROJECT,
                &flag(&format!("flag-{i:05}")),
                &config(true),
            )
            .await
            .expect("the flag is created");
    }
    let snapshots = Snapshots::default();
    snapshots.build_all(&store).await.expect("the snapshots");

    let mut put = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let key = format!("flag-{:05}", (round * 7919) % flags.max(1));
        let started = Instant::now();
        store
            .update_flag_config(&ConfigChange {
                actor: &actor,
                project: PROJECT,
                environment: ENVIRONMENT,
                flag: &key,
                config: &config(round % 2 == 0),
                expected_version: None,
                comment: None,
                action: "flag.config.updated",
                event: None,
            })
            .await
            .expect("the configuration is written");
        snapshots
            .refresh(&store, PROJECT, ENVIRONMENT)
            .await
            .expect("the refresh");
        put.push(started.elapsed());
    }
    let mut create = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let started = Instant::now();
        store
            .create_flag(
                &actor,
                PROJECT,
                &flag(&format!("new-{round:05}")),
                &config(true),
            )
            .await
            .expect("the flag is created");
        snapshots
            .refresh_project(&store, PROJECT)
            .await
            .expect("the refresh");
        create.push(started.elapsed());
    }
    let mut read = Vec::with_capacity(rounds);
    let mut compile = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let (config, _) = store
            .environment_config(PROJECT, ENVIRONMENT)
            .await
            .expect("the configuration");
        read.push(started.elapsed());
        let started = Instant::now();
        let compiled = anchor_engine::compile(&config);
        compile.push(started.elapsed());
        drop(compiled);
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    for samples in [&mut put, &mut create, &mut read, &mut compile] {
        samples.sort();
    }
    Row {
        flags,
        put,
        create,
        read,
        compile,
    }
}

#[allow(
    clippy::print_stdout,
    reason = "a benchmark binary: its table on stdout is its output"
)]
fn main() {
    let rounds = env_number("ROUNDS", 30).max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "{:>6}  {:>12}  {:>12}  {:>14}  {:>12}  {:>12}  {:>15}  {:>12}  {:>12}",
        "flags",
        "PUT p50",
        "PUT p90",
        "PUT p50/flag",
        "create p50",
        "create p90",
        "create p50/flag",
        "read p50",
        "compile p50"
    );
    for flags in sizes() {
        let row = runtime.block_on(measure(flags, rounds));
        let per_flag = |d: Duration| format!("{:.2} µs", d.as_secs_f64() * 1e6 / row.flags as f64);
        let (put50, create50) = (percentile(&row.put, 50.0), percentile(&row.create, 50.0));
        println!(
            "{:>6}  {:>12}  {:>12}  {:>14}  {:>12}  {:>12}  {:>15}  {:>12}  {:>12}",
            row.flags,
            ms(put50),
            ms(percentile(&row.put, 90.0)),
            per_flag(put50),
            ms(create50),
            ms(percentile(&row.create, 90.0)),
            per_flag(create50),
            ms(percentile(&row.read, 50.0)),
            ms(percentile(&row.compile, 50.0)),
        );
    }
}
