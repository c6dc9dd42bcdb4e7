//! The evaluation corpus (`testdata/evaluation/*.json`) through the SDK, offline and against a
//! live server, and through the server's OFREP endpoint: all three must give exactly what the
//! corpus expects (the engine's own test, `crates/anchor-engine/tests/corpus.rs`, checks the
//! same cases on the engine directly).
//!
//! The live server gets each corpus file as its own project, written through the store as-is.
//! Files whose configuration has validation errors (`diagnostics`) run offline only: the
//! management API refuses such configurations, so a server never holds them.
//! OFREP has no typed accessors: for the cases with a `type`, its answer is compared with the
//! SDK's untyped evaluation of the same case instead.

mod support;

use std::path::{Path, PathBuf};

use anchor_engine::{Flag, FlagConfig};
use anchor_sdk::{Client, Details, EvaluationContext};
use anchor_store::{Actor, NewEnvironment, SdkKeyKind, SegmentChange};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use support::Server;

#[derive(Deserialize)]
struct CorpusFile {
    config: Value,
    #[serde(default)]
    diagnostics: Vec<Value>,
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone)]
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

fn files() -> Vec<(String, CorpusFile)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/evaluation");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 9, "the corpus is there");
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let file = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (name, file)
        })
        .collect()
}

/// A typed answer always has a value (the default on errors); an untyped one only when served.
fn summary<T: serde::Serialize>(details: &Details<T>) -> Map<String, Value> {
    summary_with(details, Some(serde_json::to_value(&details.value).unwrap()))
}

fn untyped(details: &Details<Option<Value>>) -> Map<String, Value> {
    summary_with(details, details.value.clone())
}

fn summary_with<T>(details: &Details<T>, value: Option<Value>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(value) = value {
        m.insert("value".into(), value);
    }
    if let Some(v) = &details.variant {
        m.insert("variant".into(), json!(v));
    }
    m.insert("reason".into(), json!(details.reason));
    if let Some(c) = details.error_code {
        m.insert("errorCode".into(), json!(c));
    }
    if let Some(r) = &details.rule_id {
        m.insert("ruleId".into(), json!(r));
    }
    m
}

/// The SDK's answer to a case, in the corpus's terms. `failedPrerequisite` is not part of the
/// SDK's details; it is compared through OFREP's metadata.
fn through_sdk(client: &Client, case: &Case) -> Map<String, Value> {
    let ctx = EvaluationContext::from_map(case.context.clone()).unwrap();
    let key = case.flag.as_str();
    let default = case.default.clone().unwrap_or(Value::Null);
    match case.typ.as_deref() {
        None => untyped(&client.evaluate(key, &ctx)),
        Some("boolean") => summary(&client.bool_details(key, &ctx, default.as_bool().unwrap())),
        Some("string") => summary(&client.string_details(key, &ctx, default.as_str().unwrap())),
        Some("number") => summary(&client.number_details(key, &ctx, default.as_f64().unwrap())),
        Some("integer") => summary(&client.integer_details(key, &ctx, default.as_i64().unwrap())),
        Some("json") => summary(&client.json_details(key, &ctx, default)),
        Some(other) => panic!("unknown type {other}"),
    }
}

fn without_prerequisite(expect: &Map<String, Value>) -> Map<String, Value> {
    let mut e = expect.clone();
    e.remove("failedPrerequisite");
    e
}

/// OFREP's answer in the corpus's terms: a failure is reason `ERROR` with its code.
async fn through_ofrep(server: &Server, key: &str, case: &Case) -> Map<String, Value> {
    let response = server
        .http
        .post(format!(
            "{}/ofrep/v1/evaluate/flags/{}",
            server.url, case.flag
        ))
        .header("X-API-Key", key)
        .json(&json!({"context": case.context}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let mut m = Map::new();
    if let Some(code) = body.get("errorCode") {
        m.insert("reason".into(), json!("ERROR"));
        m.insert("errorCode".into(), code.clone());
        return m;
    }
    for field in ["value", "variant", "reason"] {
        if let Some(v) = body.get(field) {
            m.insert(field.into(), v.clone());
        }
    }
    for field in ["ruleId", "failedPrerequisite"] {
        if let Some(v) = body["metadata"].get(field) {
            m.insert(field.into(), v.clone());
        }
    }
    m
}

async fn load_into_server(server: &Server, project: &str, config: &Value) {
    let actor = Actor::system("corpus");
    let store = server.store.as_ref();
    store
        .create_project(&actor, project, project)
        .await
        .unwrap();
    store
        .create_environment(
            &actor,
            project,
            &NewEnvironment {
                key: "production".into(),
                name: "Production".into(),
                requires_approval: false,
                requires_comment: false,
            },
        )
        .await
        .unwrap();
    for segment in config["segments"].as_array().into_iter().flatten() {
        store
            .create_segment(&SegmentChange {
                actor: &actor,
                project,
                environment: "production",
                segment: &serde_json::from_value(segment.clone()).unwrap(),
                expected_version: None,
                comment: None,
            })
            .await
            .unwrap();
    }
    for entry in config["flags"].as_array().into_iter().flatten() {
        let flag: Flag = serde_json::from_value(entry["flag"].clone()).unwrap();
        let flag_config: FlagConfig = serde_json::from_value(entry["config"].clone()).unwrap();
        store
            .create_flag(&actor, project, &flag, &flag_config)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_corpus_gives_the_same_answers_offline_live_and_through_ofrep() {
    let server = Server::start("corpus").await;
    let mut failures = Vec::new();
    let mut counted = (0, 0, 0);
    for (name, file) in files() {
        let path = server.dir.join(format!("{name}.json"));
        std::fs::write(&path, file.config.to_string()).unwrap();
        let offline = Client::offline(&path).build().await.unwrap();
        let live = if file.diagnostics.is_empty() {
            let project = format!("corpus-{name}");
            load_into_server(&server, &project, &file.config).await;
            let key = server
                .sdk_key(&project, "production", SdkKeyKind::Server)
                .await;
            let client = Client::builder(&server.url, &key).build().await.unwrap();
            Some((client, key))
        } else {
            None
        };
        for case in &file.cases {
            let expected = without_prerequisite(&case.expect);
            let got = through_sdk(&offline, case);
            counted.0 += 1;
            if got != expected {
                failures.push(format!(
                    "offline {name}: {}: {got:?} != {expected:?}",
                    case.name
                ));
            }
            let Some((client, key)) = &live else { continue };
            counted.1 += 1;
            let got = through_sdk(client, case);
            if got != expected {
                failures.push(format!(
                    "live {name}: {}: {got:?} != {expected:?}",
                    case.name
                ));
            }
            counted.2 += 1;
            let got = through_ofrep(&server, key, case).await;
            let mut expected = match case.typ {
                None => case.expect.clone(),
                Some(_) => {
                    let ctx = EvaluationContext::from_map(case.context.clone()).unwrap();
                    let mut answer = untyped(&client.evaluate(&case.flag, &ctx));
                    if let Some(p) = case.expect.get("failedPrerequisite") {
                        answer.insert("failedPrerequisite".into(), p.clone());
                    }
                    answer
                }
            };
            if expected.contains_key("errorCode") {
                // OFREP's failure object carries no metadata, so no rule id.
                expected.remove("ruleId");
            }
            if got != expected {
                failures.push(format!(
                    "ofrep {name}: {}: {got:?} != {expected:?}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every case ran offline; all but the validation files' ran live and through OFREP.
    assert!(counted.0 >= 474, "{counted:?}");
    assert!(counted.1 >= 400 && counted.1 == counted.2, "{counted:?}");
}
