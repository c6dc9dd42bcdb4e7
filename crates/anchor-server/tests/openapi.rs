//! The OpenAPI document: served, complete, in sync with the routes, and committed.

use std::path::Path;
use std::sync::Arc;

use anchor_server::{AppState, openapi, router};
use anchor_store::{SqlStore, Store};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

async fn app() -> axum::Router {
    // A directory per call: tests run in parallel and must not share a database.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("anchor-openapi-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap());
    router(AppState::new(store).unwrap())
}

async fn get(app: &axum::Router, method: &str, uri: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_every_operation_is_described() {
    let app = app().await;
    let (status, text) = get(&app, "GET", "/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 18, "{} paths", paths.len());
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(op["tags"].is_array(), "{method} {path} has no tag");
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} does not document 401"
            );
        }
    }
    for name in [
        "Flag",
        "FlagConfig",
        "Condition",
        "Problem",
        "Diagnostic",
        "FlagRecord",
        "Revision",
    ] {
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "schema {name} is missing"
        );
    }
}

/// Every documented operation exists and is protected: without credentials it answers 401,
/// never 404 or 405.
#[tokio::test]
async fn every_documented_operation_is_routed_and_requires_credentials() {
    let app = app().await;
    let doc: Value = serde_json::to_value(openapi()).unwrap();
    let mut count = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    if matches!(segment, "{version}" | "{from}" | "{to}") {
                        "1"
                    } else {
                        "x"
                    }
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            if uri == "/api/v1/session" && method == "post" {
                continue; // signing in takes a password in its body
            }
            let (status, _) = get(&app, &method.to_uppercase(), &uri).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
            count += 1;
        }
    }
    assert_eq!(
        count, 63,
        "operations documented and routed (besides signing in)"
    );
}

/// `docs/openapi.json` is the document the code generates. Regenerate it with
/// `ANCHOR_UPDATE_GENERATED=1 cargo test -p anchor-server --test openapi`.
#[test]
fn the_committed_document_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = openapi().to_pretty_json().unwrap() + "\n";
    if std::env::var_os("ANCHOR_UPDATE_GENERATED").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        // Left beside the build for a diff.
        let _ = std::fs::write(
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("openapi.generated.json"),
            &generated,
        );
    }
    assert!(
        committed == generated,
        "docs/openapi.json is out of date: run ANCHOR_UPDATE_GENERATED=1 cargo test -p anchor-server --test openapi"
    );
}

#[tokio::test]
async fn the_reference_page_works_offline() {
    let app = app().await;
    let (status, html) = get(&app, "GET", "/api/v1/docs").await;
    assert_eq!(status, StatusCode::OK);
    for asset in ["/api/v1/docs/reference.js", "/api/v1/docs/reference.css"] {
        assert!(html.contains(asset));
        assert_eq!(get(&app, "GET", asset).await.0, StatusCode::OK);
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external requests"
    );
    assert!(!html.contains("<script>"), "no inline script");
}
