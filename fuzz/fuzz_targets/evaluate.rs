//! Fuzzes the whole engine from raw bytes: `config JSON [0xFF context JSON]`.
//!
//! The input is split at its first 0xFF byte (a byte that never occurs in UTF-8, so it cannot
//! be part of either JSON document). What comes before it is parsed as an
//! [`EnvironmentConfig`]; inputs that do not parse are skipped. What comes after it is parsed
//! as the evaluation context; when it is absent or is not a valid context, an empty context is
//! used. Every flag of the compiled snapshot then goes through every public evaluation entry
//! point, and the results are rendered as the server and CLI would (JSON, `Display`, `Debug`).
//! The engine promises that evaluation never panics, whatever the configuration and context: any
//! panic here is a bug in `anchor-engine`.

#![no_main]

use anchor_engine::{
    EnvironmentConfig, EvaluationContext, compile, evaluate, evaluate_all, evaluate_bool,
    evaluate_integer, evaluate_json, evaluate_number, evaluate_string, explain,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde_json::Value;

/// A key that no valid configuration can contain (`/` is not allowed in flag keys).
const MISSING_KEY: &str = "no/such/flag";

/// Renders a result the way the server (JSON) and logs (`Debug`) would.
fn render(value: &(impl Serialize + std::fmt::Debug)) {
    std::hint::black_box(serde_json::to_string(value).expect("results serialise to JSON"));
    std::hint::black_box(format!("{value:?}"));
}

fuzz_target!(|data: &[u8]| {
    let (config_bytes, context_bytes) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(config) = serde_json::from_slice::<EnvironmentConfig>(config_bytes) else {
        return;
    };
    let (snapshot, diagnostics) = compile(&config);
    for d in &diagnostics {
        std::hint::black_box(d.to_string());
    }

    let context = serde_json::from_slice::<Value>(context_bytes)
        .ok()
        .and_then(|v| EvaluationContext::from_value(v).ok())
        .unwrap_or_default();

    let default_json = Value::Null;
    for key in snapshot.flag_keys() {
        std::hint::black_box(snapshot.flag_kind(key));
        render(&evaluate(&snapshot, key, &context));
        let explanation = explain(&snapshot, key, &context);
        std::hint::black_box(explanation.to_string());
        render(&explanation);
        render(&evaluate_bool(&snapshot, key, &context, false).details);
        render(&evaluate_string(&snapshot, key, &context, "default").details);
        render(&evaluate_number(&snapshot, key, &context, 0.5).details);
        render(&evaluate_integer(&snapshot, key, &context, -1).details);
        render(&evaluate_json(&snapshot, key, &context, &default_json).details);
    }
    render(&evaluate_all(&snapshot, &context));
    render(&evaluate(&snapshot, MISSING_KEY, &context));
    let explanation = explain(&snapshot, MISSING_KEY, &context);
    std::hint::black_box(explanation.to_string());
    render(&explanation);
});
