//! Runs every case in `testdata/evaluation/*.json` through the engine.
//!
//! Each file holds one environment (`config`), the diagnostics its compilation must produce
//! (`diagnostics`, none when absent), and `cases`: a flag, an evaluation context, optionally a
//! typed accessor (`type` and `default`), and the expected `value`, `variant`, `reason`,
//! `errorCode`, `ruleId` and `failedPrerequisite` (an absent field must be absent in the result).
//! The same corpus is meant to run through the SDK and the OFREP endpoint.

use std::path::{Path, PathBuf};

use anchor_engine::{
    EnvironmentConfig, Evaluation, EvaluationContext, compile, evaluate, evaluate_bool,
    evaluate_integer, evaluate_json, evaluate_number, evaluate_string, explain,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusFile {
    #[allow(dead_code, reason = "documentation for people reading the file")]
    description: String,
    config: EnvironmentConfig,
    #[serde(default)]
    diagnostics: Vec<ExpectedDiagnostic>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedDiagnostic {
    path: String,
    contains: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    flag: String,
    #[serde(default)]
    context: Map<String, Value>,
    #[serde(default, rename = "type")]
    typ: Option<String>,
    #[serde(default)]
    default: Option<Value>,
    expect: Map<String, Value>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/evaluation")
}

fn summary(e: &Evaluation<'_>, typed_value: Option<Value>) -> Map<String, Value> {
    let mut m = Map::new();
    let value = typed_value.or_else(|| e.value().cloned());
    if let Some(v) = value {
        m.insert("value".into(), v);
    }
    if let Some(v) = e.variant() {
        m.insert("variant".into(), json!(v));
    }
    m.insert("reason".into(), json!(e.reason()));
    if let Some(c) = e.error_code() {
        m.insert("errorCode".into(), json!(c));
    }
    if let Some(r) = e.rule() {
        m.insert("ruleId".into(), json!(r.id));
    }
    if let Some(p) = e.failed_prerequisite() {
        m.insert("failedPrerequisite".into(), json!(p));
    }
    m
}

fn run_case(snapshot: &anchor_engine::Snapshot, case: &Case) -> Map<String, Value> {
    let ctx = EvaluationContext::from_map(case.context.clone()).expect("a valid context");
    let key = case.flag.as_str();
    let default = case.default.clone().unwrap_or(Value::Null);
    match case.typ.as_deref() {
        None => summary(&evaluate(snapshot, key, &ctx), None),
        Some("boolean") => {
            let r = evaluate_bool(
                snapshot,
                key,
                &ctx,
                default.as_bool().expect("bool default"),
            );
            summary(&r.details, Some(json!(r.value)))
        }
        Some("string") => {
            let d = default.as_str().expect("string default");
            let r = evaluate_string(snapshot, key, &ctx, d);
            summary(&r.details, Some(json!(r.value)))
        }
        Some("number") => {
            let r = evaluate_number(
                snapshot,
                key,
                &ctx,
                default.as_f64().expect("number default"),
            );
            summary(&r.details, Some(json!(r.value)))
        }
        Some("integer") => {
            let r = evaluate_integer(
                snapshot,
                key,
                &ctx,
                default.as_i64().expect("integer default"),
            );
            summary(&r.details, Some(json!(r.value)))
        }
        Some("json") => {
            let r = evaluate_json(snapshot, key, &ctx, &default);
            summary(&r.details, Some(r.value.clone()))
        }
        Some(other) => panic!("unknown accessor type {other}"),
    }
}

#[test]
fn every_corpus_case_evaluates_as_expected() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("testdata/evaluation exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files found");
    let mut failures = Vec::new();
    let mut count = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let file: CorpusFile =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        let (snapshot, diagnostics) = compile(&file.config);
        for expected in &file.diagnostics {
            if !diagnostics
                .iter()
                .any(|d| d.path == expected.path && d.message.contains(&expected.contains))
            {
                failures.push(format!(
                    "{name}: expected a diagnostic at {} containing {:?}; got {diagnostics:#?}",
                    expected.path, expected.contains
                ));
            }
        }
        if file.diagnostics.is_empty() && !diagnostics.is_empty() {
            failures.push(format!("{name}: unexpected diagnostics {diagnostics:#?}"));
        }
        for case in &file.cases {
            count += 1;
            let got = run_case(&snapshot, case);
            if got != case.expect {
                let why = explain(
                    &snapshot,
                    &case.flag,
                    &EvaluationContext::from_map(case.context.clone()).unwrap(),
                );
                failures.push(format!(
                    "{name}: {}\n  expected {}\n  got      {}\n{why}",
                    case.name,
                    Value::Object(case.expect.clone()),
                    Value::Object(got)
                ));
            }
            // The explanation runs the same evaluator and must agree with it.
            let ctx = EvaluationContext::from_map(case.context.clone()).unwrap();
            let e = explain(&snapshot, &case.flag, &ctx);
            assert_eq!(
                e.evaluation,
                evaluate(&snapshot, &case.flag, &ctx),
                "{name}: {}",
                case.name
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
