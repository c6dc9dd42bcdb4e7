//! The management API through its real HTTP surface (the router, without a socket): sign-in and
//! tokens, roles, flags, per-environment configuration with ETags, validation, revisions,
//! revert, the audit log, and problem details for every error.

mod support;

use std::sync::Arc;

use anchor_server::{AppState, Secret, bootstrap, router};
use anchor_store::{Role, SqlStore, Store};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use serde_json::{Value, json};
use support::{PASSWORD, on_every_backend};
use tower::ServiceExt;

struct App {
    router: Router,
    state: AppState,
    admin: String,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Reply {
    fn etag(&self) -> String {
        self.headers
            .get(header::ETAG)
            .expect("an ETag")
            .to_str()
            .unwrap()
            .to_string()
    }

    fn problem_paths(&self) -> Vec<String> {
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/problem+json"
        );
        self.body["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|d| d["path"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

on_every_backend!(
    start: App::start;
    server_sdks_stream_every_change_and_resume_from_the_last_revision,
    browsers_of_allowed_origins_may_call_ofrep_and_nothing_else,
    server_sdks_download_the_configuration_and_keys_are_rate_limited,
    ofrep_answers_sdk_keys_from_the_live_snapshot_in_the_protocol_shapes,
    every_operation_allows_exactly_the_roles_it_is_designed_for,
    evaluations_follow_every_committed_change_and_explain_themselves,
    dashboard_sessions_use_httponly_cookies_and_csrf_tokens_for_writes,
    every_documented_operation_refuses_sdk_keys_expired_tokens_and_viewers_writes,
    approval_environments_turn_changes_into_change_requests,
    scheduled_changes_apply_once_at_their_time,
    segments_are_validated_versioned_and_protected_while_in_use,
    sdk_keys_are_shown_once_rotated_with_overlap_and_revoked,
    people_and_tokens_are_managed_through_the_api,
    health_is_always_answered_and_readiness_follows_the_store,
    every_api_route_requires_credentials,
    tokens_need_the_right_password_and_sign_ins_are_throttled,
    a_token_never_has_more_rights_than_its_creator_and_expired_tokens_fail,
    roles_decide_who_reads_and_who_writes,
    flags_are_created_validated_and_listed,
    configuration_writes_use_etags_and_a_stale_if_match_changes_nothing,
    invalid_configurations_are_rejected_with_every_problem_and_its_path,
    history_diff_and_revert_are_revisions_and_audit_entries,
    environments_that_require_comments_refuse_changes_without_one,
    a_definition_change_that_breaks_an_environment_is_refused,
);

impl App {
    async fn start(postgres: Option<(String, String)>) -> App {
        let store: Arc<dyn Store> = match postgres {
            None => {
                let dir =
                    std::env::temp_dir().join(format!("anchor-api-test-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&dir).unwrap();
                Arc::new(SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap())
            }
            Some((url, schema)) => {
                Arc::new(SqlStore::open_postgres(&url, Some(&schema)).await.unwrap())
            }
        };
        bootstrap(store.as_ref(), Some(&Secret::new(PASSWORD)))
            .await
            .unwrap();
        let state = AppState::new(store).unwrap();
        state.set_ready(true);
        let router = router(state.clone());
        let mut app = App {
            router,
            state,
            admin: String::new(),
        };
        let reply = app
            .call(
                "POST",
                "/api/v1/tokens",
                Some(&basic("admin", PASSWORD)),
                Some(json!({"name": "tests"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        app.admin = format!("Bearer {}", reply.body["token"].as_str().unwrap());
        app
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.call_with(method, uri, auth, body.map(|b| b.to_string()), &[])
            .await
    }

    async fn call_with(
        &self,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A user with `role` in project `default` and a token for them.
    async fn member(&self, name: &str, role: Role) -> String {
        let hash = anchor_server::auth::hash_password(PASSWORD).unwrap();
        let store = &self.state.store;
        let system = anchor_store::Actor::system("test");
        let user = store
            .create_user(&system, name, &hash, false)
            .await
            .unwrap();
        store
            .set_project_role(&system, "default", &user.id, role)
            .await
            .unwrap();
        let reply = self
            .call(
                "POST",
                "/api/v1/tokens",
                Some(&basic(name, PASSWORD)),
                Some(json!({"name": "t"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        format!("Bearer {}", reply.body["token"].as_str().unwrap())
    }

    async fn create_checkout_flag(&self) {
        let reply = self
            .call(
                "POST",
                "/api/v1/projects/default/flags",
                Some(&self.admin),
                Some(json!({
                    "key": "new-checkout", "kind": "boolean",
                    "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}],
                    "tags": ["checkout"]
                })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
}

const CONFIG: &str = "/api/v1/projects/default/environments/production/flags/new-checkout";

async fn health_is_always_answered_and_readiness_follows_the_store(app: App) {
    let reply = app.call("GET", "/healthz", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        app.call("GET", "/readyz", None, None).await.status,
        StatusCode::OK
    );
    app.state.set_ready(false);
    assert_eq!(
        app.call("GET", "/readyz", None, None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

async fn every_api_route_requires_credentials(app: App) {
    app.create_checkout_flag().await;
    let routes = [
        ("GET", "/api/v1/projects"),
        ("POST", "/api/v1/projects"),
        ("GET", "/api/v1/projects/default"),
        ("GET", "/api/v1/projects/default/environments"),
        ("POST", "/api/v1/projects/default/environments"),
        ("GET", "/api/v1/projects/default/flags"),
        ("POST", "/api/v1/projects/default/flags"),
        ("GET", "/api/v1/projects/default/flags/new-checkout"),
        ("PUT", "/api/v1/projects/default/flags/new-checkout"),
        (
            "POST",
            "/api/v1/projects/default/flags/new-checkout/archive",
        ),
        (
            "POST",
            "/api/v1/projects/default/flags/new-checkout/restore",
        ),
        ("GET", CONFIG),
        ("PUT", CONFIG),
        (
            "GET",
            "/api/v1/projects/default/environments/production/flags/new-checkout/revisions",
        ),
        (
            "GET",
            "/api/v1/projects/default/environments/production/flags/new-checkout/revisions/1",
        ),
        (
            "POST",
            "/api/v1/projects/default/environments/production/flags/new-checkout/revert",
        ),
        ("GET", "/api/v1/projects/default/audit"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/some-id"),
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/users"),
        ("GET", "/api/v1/audit"),
        ("PUT", "/api/v1/projects/default/members/admin"),
        (
            "GET",
            "/api/v1/projects/default/environments/production/flags/new-checkout/revisions/1/diff/1",
        ),
    ];
    let wrong_token = "Bearer anc_pat_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (method, uri) in routes {
        for auth in [
            None,
            Some(wrong_token),
            Some("Bearer not-a-token"),
            Some("Digest x"),
        ] {
            let reply = app.call(method, uri, auth, Some(json!({}))).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {auth:?}"
            );
            assert_eq!(
                reply.headers.get(header::CONTENT_TYPE).unwrap(),
                "application/problem+json"
            );
        }
    }
}

async fn tokens_need_the_right_password_and_sign_ins_are_throttled(app: App) {
    let reply = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&basic("admin", "wrong password")),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&basic("nobody", PASSWORD)),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    for _ in 0..10 {
        app.call(
            "POST",
            "/api/v1/tokens",
            Some(&basic("admin", "guess")),
            Some(json!({"name": "x"})),
        )
        .await;
    }
    let reply = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&basic("admin", PASSWORD)),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    // A token keeps working: the throttle is on passwords only.
    let reply = app
        .call("GET", "/api/v1/projects", Some(&app.admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body[0]["key"], "default");
}

async fn a_token_never_has_more_rights_than_its_creator_and_expired_tokens_fail(app: App) {
    let viewer = app.member("vera", Role::Viewer).await;
    // A viewer's token acts as a viewer, whatever it asks for.
    let reply = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&viewer),
            Some(json!({"name": "y", "role": "viewer"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let reply = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&viewer),
            Some(json!({"name": "y", "role": "admin"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // An admin's read-only token cannot write.
    let reply = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&app.admin),
            Some(json!({"name": "ro", "role": "viewer"})),
        )
        .await;
    let read_only = format!("Bearer {}", reply.body["token"].as_str().unwrap());
    let reply = app
        .call(
            "POST",
            "/api/v1/projects/default/flags",
            Some(&read_only),
            Some(
                json!({"key": "x", "kind": "boolean", "variants": [{"name": "on", "value": true}]}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // A token that expired is refused.
    let reply = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&app.admin),
            Some(json!({"name": "old", "expiresInDays": 0})),
        )
        .await;
    let expired = format!("Bearer {}", reply.body["token"].as_str().unwrap());
    let reply = app
        .call("GET", "/api/v1/projects", Some(&expired), None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

async fn roles_decide_who_reads_and_who_writes(app: App) {
    app.create_checkout_flag().await;
    let viewer = app.member("vera", Role::Viewer).await;
    let editor = app.member("ed", Role::Editor).await;
    let outsider = {
        let hash = anchor_server::auth::hash_password(PASSWORD).unwrap();
        app.state
            .store
            .create_user(&anchor_store::Actor::system("test"), "olga", &hash, false)
            .await
            .unwrap();
        let reply = app
            .call(
                "POST",
                "/api/v1/tokens",
                Some(&basic("olga", PASSWORD)),
                Some(json!({"name": "t"})),
            )
            .await;
        format!("Bearer {}", reply.body["token"].as_str().unwrap())
    };
    let on = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}});
    let new_env = json!({"key": "qa", "name": "QA"});
    // (who, request, expected status)
    let cases: Vec<(&str, &str, &str, Option<Value>, StatusCode)> = vec![
        (&viewer, "GET", CONFIG, None, StatusCode::OK),
        (
            &viewer,
            "PUT",
            CONFIG,
            Some(on.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            &viewer,
            "GET",
            "/api/v1/projects/default/audit",
            None,
            StatusCode::OK,
        ),
        (&editor, "PUT", CONFIG, Some(on.clone()), StatusCode::OK),
        (
            &editor,
            "POST",
            "/api/v1/projects/default/environments",
            Some(new_env.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            &editor,
            "POST",
            "/api/v1/projects",
            Some(json!({"key": "p2", "name": "P2"})),
            StatusCode::FORBIDDEN,
        ),
        (&outsider, "GET", CONFIG, None, StatusCode::FORBIDDEN),
        (
            &outsider,
            "GET",
            "/api/v1/projects/default/flags",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            &app.admin,
            "POST",
            "/api/v1/projects/default/environments",
            Some(new_env),
            StatusCode::CREATED,
        ),
        (
            &app.admin,
            "POST",
            "/api/v1/projects",
            Some(json!({"key": "p2", "name": "P2"})),
            StatusCode::CREATED,
        ),
        (
            &app.admin,
            "GET",
            "/api/v1/projects/nope/flags",
            None,
            StatusCode::NOT_FOUND,
        ),
    ];
    for (who, method, uri, body, expected) in cases {
        let reply = app.call(method, uri, Some(who), body).await;
        assert_eq!(reply.status, expected, "{method} {uri}: {}", reply.body);
    }
    let reply = app
        .call("GET", "/api/v1/projects", Some(&outsider), None)
        .await;
    assert_eq!(reply.body, json!([]), "an outsider sees no projects");
}

async fn flags_are_created_validated_and_listed(app: App) {
    app.create_checkout_flag().await;
    let reply = app
        .call(
            "POST",
            "/api/v1/projects/default/flags",
            Some(&app.admin),
            Some(json!({"key": "new-checkout", "kind": "boolean", "variants": [{"name": "on", "value": true}]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let reply = app
        .call(
            "POST",
            "/api/v1/projects/default/flags",
            Some(&app.admin),
            Some(json!({"key": "bad key", "kind": "boolean",
                        "variants": [{"name": "on", "value": "yes"}, {"name": "on", "value": false}]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.problem_paths(),
        ["/key", "/variants/0/value", "/variants/1/name"],
        "{}",
        reply.body
    );
    let reply = app
        .call(
            "POST",
            "/api/v1/projects/default/flags",
            Some(&app.admin),
            Some(json!({"key": 1})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "wrong shape: {}",
        reply.body
    );
    let reply = app
        .call_with(
            "POST",
            "/api/v1/projects/default/flags",
            Some(&app.admin),
            Some("{not json".into()),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let huge = format!("{{\"key\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let reply = app
        .call_with(
            "POST",
            "/api/v1/projects/default/flags",
            Some(&app.admin),
            Some(huge),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);

    let reply = app
        .call(
            "GET",
            "/api/v1/projects/default/flags?tag=checkout",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["items"][0]["flag"]["key"], "new-checkout");
    assert_eq!(
        reply.body["items"][0]["environments"][2]["config"]["enabled"],
        false
    );
    assert_eq!(
        reply.body["items"][0]["environments"][2]["config"]["offVariant"], "off",
        "a boolean flag starts off, serving false"
    );
    let reply = app
        .call(
            "GET",
            "/api/v1/projects/default/flags?enabledIn=production",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.body["items"], json!([]));
    let reply = app
        .call(
            "GET",
            "/api/v1/projects/default/flags?limit=0",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = app
        .call(
            "GET",
            "/api/v1/projects/default/flags/missing",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

async fn configuration_writes_use_etags_and_a_stale_if_match_changes_nothing(app: App) {
    app.create_checkout_flag().await;
    let reply = app.call("GET", CONFIG, Some(&app.admin), None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let etag = reply.etag();
    assert_eq!(etag, "\"1\"");
    let on = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}})
        .to_string();
    let reply = app
        .call_with(
            "PUT",
            CONFIG,
            Some(&app.admin),
            Some(on.clone()),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.etag(), "\"2\"");
    assert_eq!(reply.body["version"], 2);
    let off = json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "off"}})
        .to_string();
    let reply = app
        .call_with(
            "PUT",
            CONFIG,
            Some(&app.admin),
            Some(off),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    let reply = app.call("GET", CONFIG, Some(&app.admin), None).await;
    assert_eq!(
        reply.body["enabled"], true,
        "the stale write touched nothing"
    );
    assert_eq!(reply.etag(), "\"2\"");
}

async fn invalid_configurations_are_rejected_with_every_problem_and_its_path(app: App) {
    app.create_checkout_flag().await;
    let bad = json!({
        "enabled": true, "offVariant": "gone",
        "rules": [
            {"id": "r1", "conditions": [{"attribute": "version", "operator": "semver_gt", "values": ["x.y"]}],
             "serve": {"variant": "maybe"}},
            {"id": "r1", "conditions": [{"attribute": "plan", "operator": "in", "values": []}],
             "serve": {"rollout": {"variants": [{"variant": "on", "weight": 0}]}}}
        ],
        "defaultServe": {"variant": "on"},
        "prerequisites": [{"flag": "unknown-flag", "variant": "on"}]
    });
    let reply = app.call("PUT", CONFIG, Some(&app.admin), Some(bad)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.problem_paths(),
        [
            "/offVariant",
            "/prerequisites/0/flag",
            "/rules/0/conditions/0/values/0",
            "/rules/0/serve/variant",
            "/rules/1/id",
            "/rules/1/conditions/0/values",
            "/rules/1/serve/rollout/variants",
        ],
        "{:#}",
        reply.body
    );
    let reply = app.call("GET", CONFIG, Some(&app.admin), None).await;
    assert_eq!(reply.body["version"], 1, "nothing was written");
}

async fn history_diff_and_revert_are_revisions_and_audit_entries(app: App) {
    app.create_checkout_flag().await;
    let editor = app.member("ed", Role::Editor).await;
    let on = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"},
                    "comment": "ship it"});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&editor), Some(on))
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call("GET", &format!("{CONFIG}/revisions"), Some(&editor), None)
        .await;
    let versions: Vec<u64> = reply
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);
    assert_eq!(reply.body[0]["comment"], "ship it");
    assert_eq!(reply.body[0]["actor"]["kind"], "token");

    let reply = app
        .call(
            "POST",
            &format!("{CONFIG}/revert"),
            Some(&editor),
            Some(json!({"version": 1, "comment": "roll back"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["version"], 3);
    assert_eq!(reply.body["enabled"], false);
    let reply = app
        .call("GET", &format!("{CONFIG}/revisions/3"), Some(&editor), None)
        .await;
    assert_eq!(reply.body["body"]["enabled"], false);
    let reply = app
        .call(
            "POST",
            &format!("{CONFIG}/revert"),
            Some(&editor),
            Some(json!({"version": 42})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let reply = app
        .call(
            "GET",
            "/api/v1/projects/default/audit?flag=new-checkout&environment=production",
            Some(&editor),
            None,
        )
        .await;
    let actions: Vec<&str> = reply
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["flag.reverted", "flag.config.updated"]);
    let diff = &reply.body[1]["diff"];
    assert!(
        diff.as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/enabled"),
        "{diff:#}"
    );
}

async fn environments_that_require_comments_refuse_changes_without_one(app: App) {
    app.create_checkout_flag().await;
    let reply = app
        .call(
            "POST",
            "/api/v1/projects/default/environments",
            Some(&app.admin),
            Some(json!({"key": "audited", "name": "Audited", "requiresComment": true})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let uri = "/api/v1/projects/default/environments/audited/flags/new-checkout";
    let on = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}});
    let reply = app
        .call("PUT", uri, Some(&app.admin), Some(on.clone()))
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.problem_paths(), ["/comment"]);
    let mut with_comment = on;
    with_comment["comment"] = json!("approved in standup");
    let reply = app
        .call("PUT", uri, Some(&app.admin), Some(with_comment))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

async fn a_definition_change_that_breaks_an_environment_is_refused(app: App) {
    app.create_checkout_flag().await;
    // Production now serves "on" by default; removing the variant would break it.
    let on = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&app.admin), Some(on))
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call(
            "PUT",
            "/api/v1/projects/default/flags/new-checkout",
            Some(&app.admin),
            Some(json!({"key": "new-checkout", "kind": "boolean", "variants": [{"name": "off", "value": false}]})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("production"),
        "{}",
        reply.body
    );
    let reply = app
        .call(
            "PUT",
            "/api/v1/projects/default/flags/new-checkout",
            Some(&app.admin),
            Some(json!({"key": "new-checkout", "kind": "boolean", "description": "One-page checkout",
                        "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["flag"]["description"], "One-page checkout");
    let reply = app
        .call(
            "POST",
            "/api/v1/projects/default/flags/new-checkout/archive",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.body["archived"], true);
}

async fn people_and_tokens_are_managed_through_the_api(app: App) {
    let reply = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&app.admin),
            Some(json!({"username": "ann", "password": "a long enough password"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let reply = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&app.admin),
            Some(json!({"username": "bob", "password": "short"})),
        )
        .await;
    assert_eq!(reply.problem_paths(), ["/password"]);
    let ann_basic = basic("ann", "a long enough password");
    let reply = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&ann_basic),
            Some(json!({"name": "laptop"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(
        reply.body["role"], "viewer",
        "no memberships yet: the lowest role"
    );
    let ann = format!("Bearer {}", reply.body["token"].as_str().unwrap());
    assert_eq!(
        app.call("GET", "/api/v1/projects", Some(&ann), None)
            .await
            .body,
        json!([])
    );
    assert_eq!(
        app.call("GET", "/api/v1/users", Some(&ann), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let reply = app
        .call(
            "PUT",
            "/api/v1/projects/default/members/ann",
            Some(&app.admin),
            Some(json!({"role": "editor"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = app
        .call(
            "PUT",
            "/api/v1/projects/default/members/nobody",
            Some(&app.admin),
            Some(json!({"role": "editor"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let projects = app
        .call("GET", "/api/v1/projects", Some(&ann), None)
        .await
        .body;
    assert_eq!(projects[0]["key"], "default");

    let reply = app.call("GET", "/api/v1/tokens", Some(&ann), None).await;
    assert_eq!(reply.body.as_array().unwrap().len(), 1);
    assert!(
        !reply.body.to_string().contains("anc_pat_"),
        "no secrets in listings"
    );
    let id = reply.body[0]["id"].as_str().unwrap().to_string();
    let reply = app
        .call("DELETE", &format!("/api/v1/tokens/{id}"), Some(&ann), None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.call("GET", "/api/v1/projects", Some(&ann), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "a revoked token stops working"
    );

    let audit = app
        .call("GET", "/api/v1/audit", Some(&app.admin), None)
        .await
        .body;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"user.created") && actions.contains(&"token.revoked"),
        "{actions:?}"
    );
}

const SEGMENTS: &str = "/api/v1/projects/default/environments/production/segments";

async fn segments_are_validated_versioned_and_protected_while_in_use(app: App) {
    app.create_checkout_flag().await;
    let editor = app.member("ed", Role::Editor).await;
    let beta = json!({"key": "beta", "included": ["user-1", "user-2"],
                      "rules": [{"id": "staff", "conditions": [
                          {"attribute": "email", "operator": "ends_with", "values": ["@example.com"]}]}]});
    let reply = app
        .call("POST", SEGMENTS, Some(&editor), Some(beta.clone()))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.etag(), "\"1\"");
    assert_eq!(
        app.call("POST", SEGMENTS, Some(&editor), Some(beta.clone()))
            .await
            .status,
        StatusCode::CONFLICT
    );
    let bad = json!({"key": "bad key", "rules": [{"conditions": [
        {"attribute": "email", "operator": "matches", "values": ["("]},
        {"attribute": "x", "operator": "segment_match", "values": ["nope"]}]}]});
    let reply = app.call("POST", SEGMENTS, Some(&editor), Some(bad)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.problem_paths(),
        [
            "/key",
            "/rules/0/conditions/0/values/0",
            "/rules/0/conditions/1/values/0"
        ],
        "{}",
        reply.body
    );

    // A flag uses the segment, so it cannot be deleted.
    let config = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
        "rules": [{"id": "beta", "conditions": [{"attribute": "targetingKey", "operator": "segment_match", "values": ["beta"]}],
                   "serve": {"variant": "on"}}]});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&editor), Some(config))
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call("DELETE", &format!("{SEGMENTS}/beta"), Some(&editor), None)
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("new-checkout"),
        "{}",
        reply.body
    );

    // Optimistic concurrency, as for flags.
    let mut more = beta.clone();
    more["included"] = json!(["user-1", "user-2", "user-3"]);
    let reply = app
        .call_with(
            "PUT",
            &format!("{SEGMENTS}/beta"),
            Some(&editor),
            Some(more.to_string()),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.etag(), "\"2\"");
    let reply = app
        .call_with(
            "PUT",
            &format!("{SEGMENTS}/beta"),
            Some(&editor),
            Some(beta.to_string()),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    let reply = app.call("GET", SEGMENTS, Some(&editor), None).await;
    assert_eq!(reply.body[0]["includedCount"], 3);
    let reply = app
        .call(
            "GET",
            &format!("{SEGMENTS}/beta/revisions"),
            Some(&editor),
            None,
        )
        .await;
    assert_eq!(reply.body.as_array().unwrap().len(), 2);

    // Once no flag uses it, it can go.
    let plain = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"}});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&editor), Some(plain))
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call("DELETE", &format!("{SEGMENTS}/beta"), Some(&editor), None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.call("GET", &format!("{SEGMENTS}/beta"), Some(&editor), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

async fn sdk_keys_are_shown_once_rotated_with_overlap_and_revoked(app: App) {
    let keys = "/api/v1/projects/default/environments/production/keys";
    let editor = app.member("ed", Role::Editor).await;
    let reply = app
        .call("POST", keys, Some(&editor), Some(json!({"kind": "server"})))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "SDK keys are an admin's business"
    );
    let reply = app
        .call(
            "POST",
            keys,
            Some(&app.admin),
            Some(json!({"kind": "server"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let secret = reply.body["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("anc_srv_") && secret.len() == 8 + 43);
    assert_eq!(reply.body["prefix"].as_str().unwrap(), &secret[..12]);
    let first = reply.body["id"].as_str().unwrap().to_string();
    let reply = app
        .call(
            "POST",
            keys,
            Some(&app.admin),
            Some(json!({"kind": "client"})),
        )
        .await;
    assert!(reply.body["key"].as_str().unwrap().starts_with("anc_cli_"));

    let listing = app.call("GET", keys, Some(&editor), None).await;
    assert_eq!(listing.body.as_array().unwrap().len(), 2);
    assert!(
        !listing.body.to_string().contains(&secret),
        "the secret is shown once"
    );

    let before = app.state.now_ms();
    let reply = app
        .call(
            "POST",
            &format!("{keys}/rotate"),
            Some(&app.admin),
            Some(json!({"kind": "server", "overlapSeconds": 3600})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let listing = app.call("GET", keys, Some(&app.admin), None).await.body;
    let old = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == first.as_str())
        .unwrap();
    let expires = old["expiresAt"].as_i64().unwrap();
    assert!(expires >= before + 3_600_000 && expires <= app.state.now_ms() + 3_600_000);

    let reply = app
        .call("DELETE", &format!("{keys}/{first}"), Some(&app.admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let listing = app.call("GET", keys, Some(&app.admin), None).await.body;
    let old = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == first.as_str())
        .unwrap();
    assert_eq!(old["revoked"], true);
}

const GATED: &str = "/api/v1/projects/default/environments/gated/flags/new-checkout";

async fn approval_environments_turn_changes_into_change_requests(app: App) {
    app.create_checkout_flag().await;
    let reply = app
        .call(
            "POST",
            "/api/v1/projects/default/environments",
            Some(&app.admin),
            Some(json!({"key": "gated", "name": "Gated", "requiresApproval": true})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let ed = app.member("ed", Role::Editor).await;
    let ann = app.member("ann", Role::Editor).await;
    let vera = app.member("vera", Role::Viewer).await;
    let on = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}, "comment": "launch"});

    let reply = app.call("PUT", GATED, Some(&ed), Some(on.clone())).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "open");
    assert_eq!(reply.body["baseVersion"], 1);
    assert!(
        reply.body["diff"]
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/enabled"),
        "{}",
        reply.body
    );
    let location = reply
        .headers
        .get(header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.call("GET", GATED, Some(&ed), None).await.body["enabled"],
        false,
        "nothing applied yet"
    );

    let approve = format!("{location}/approve");
    assert_eq!(
        app.call("POST", &approve, Some(&ed), None).await.status,
        StatusCode::FORBIDDEN,
        "not one's own"
    );
    assert_eq!(
        app.call("POST", &approve, Some(&vera), None).await.status,
        StatusCode::FORBIDDEN,
        "viewers don't review"
    );
    let reply = app
        .call(
            "POST",
            &approve,
            Some(&ann),
            Some(json!({"comment": "lgtm"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "approved");

    // Editing voids the approvals.
    let mut edited = on.clone();
    edited["comment"] = json!("launch, reworded");
    let reply = app.call("PUT", &location, Some(&ed), Some(edited)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "open");
    assert_eq!(reply.body["reviews"], json!([]));
    assert_eq!(
        app.call("PUT", &location, Some(&ann), Some(on.clone()))
            .await
            .status,
        StatusCode::FORBIDDEN,
        "only the author edits"
    );
    let apply = format!("{location}/apply");
    assert_eq!(
        app.call("POST", &apply, Some(&ed), None).await.status,
        StatusCode::CONFLICT,
        "not approved"
    );
    app.call("POST", &approve, Some(&ann), None).await;

    let reply = app.call("POST", &apply, Some(&ed), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "applied");
    let config = app.call("GET", GATED, Some(&ed), None).await.body;
    assert_eq!(config["enabled"], true);
    assert_eq!(config["version"], 2);
    assert_eq!(
        app.call("POST", &apply, Some(&ed), None).await.status,
        StatusCode::CONFLICT,
        "applied once"
    );

    // Segments there wait for approval too.
    let gated_segments = "/api/v1/projects/default/environments/gated/segments";
    let beta = json!({"key": "beta", "included": ["user-1"], "comment": "beta testers"});
    let reply = app
        .call("POST", gated_segments, Some(&ed), Some(beta))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let segment_request = reply
        .headers
        .get(header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.call("GET", &format!("{gated_segments}/beta"), Some(&ed), None)
            .await
            .status,
        StatusCode::NOT_FOUND,
        "not before approval"
    );
    let reply = app.call("GET", &segment_request, Some(&vera), None).await;
    assert_eq!(reply.body["resourceKind"], "segment", "{}", reply.body);
    assert!(
        reply.body["diff"].as_array().is_some_and(|d| !d.is_empty()),
        "{}",
        reply.body
    );
    app.call(
        "POST",
        &format!("{segment_request}/approve"),
        Some(&ann),
        None,
    )
    .await;
    let reply = app
        .call("POST", &format!("{segment_request}/apply"), Some(&ed), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = app
        .call("GET", &format!("{gated_segments}/beta"), Some(&ed), None)
        .await;
    assert_eq!(reply.body["segment"]["included"], json!(["user-1"]));
    // An edit of a segment request voids its approval; a deletion waits too.
    let mut more = json!({"key": "beta", "included": ["user-1", "user-2"]});
    let reply = app
        .call(
            "PUT",
            &format!("{gated_segments}/beta"),
            Some(&ed),
            Some(more.clone()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let update_request = reply
        .headers
        .get(header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    app.call(
        "POST",
        &format!("{update_request}/approve"),
        Some(&ann),
        None,
    )
    .await;
    more["included"] = json!(["user-1", "user-2", "user-3"]);
    let reply = app
        .call("PUT", &update_request, Some(&ed), Some(more))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "open", "the edit voided the approval");
    app.call(
        "POST",
        &format!("{update_request}/approve"),
        Some(&ann),
        None,
    )
    .await;
    assert_eq!(
        app.call("POST", &format!("{update_request}/apply"), Some(&ed), None)
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call("GET", &format!("{gated_segments}/beta"), Some(&ed), None)
        .await;
    assert_eq!(
        reply.body["segment"]["included"],
        json!(["user-1", "user-2", "user-3"])
    );
    let reply = app
        .call("DELETE", &format!("{gated_segments}/beta"), Some(&ed), None)
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let deletion = reply
        .headers
        .get(header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    app.call("POST", &format!("{deletion}/approve"), Some(&ann), None)
        .await;
    assert_eq!(
        app.call("POST", &format!("{deletion}/apply"), Some(&ed), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.call("GET", &format!("{gated_segments}/beta"), Some(&ed), None)
            .await
            .status,
        StatusCode::NOT_FOUND,
        "deleted once approved"
    );

    // The kill switch never waits.
    let off = json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}});
    let reply = app.call("PUT", GATED, Some(&ed), Some(off)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["enabled"], false);

    // A request made against version 3 cannot apply after the flag moved on.
    let reply = app.call("PUT", GATED, Some(&ed), Some(on.clone())).await;
    let stale = reply
        .headers
        .get(header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    app.call("POST", &format!("{stale}/approve"), Some(&ann), None)
        .await;
    let mut glass = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"}, "breakGlass": true});
    assert_eq!(
        app.call("PUT", GATED, Some(&ed), Some(glass.clone()))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "editors can't break the glass"
    );
    assert_eq!(
        app.call("PUT", GATED, Some(&app.admin), Some(glass.clone()))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "break-glass needs a reason"
    );
    glass["comment"] = json!("incident 42");
    assert_eq!(
        app.call("PUT", GATED, Some(&app.admin), Some(glass))
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call("POST", &format!("{stale}/apply"), Some(&ed), None)
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("edit the request"),
        "{}",
        reply.body
    );

    let reply = app
        .call(
            "GET",
            "/api/v1/projects/default/change-requests?status=applied",
            Some(&vera),
            None,
        )
        .await;
    assert_eq!(
        reply.body.as_array().unwrap().len(),
        4,
        "the flag's request and the segment's creation, edit and deletion"
    );
    let actions: Vec<String> = app
        .call(
            "GET",
            "/api/v1/projects/default/audit?environment=gated&flag=new-checkout",
            Some(&vera),
            None,
        )
        .await
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_string())
        .collect();
    for action in [
        "change_request.applied",
        "flag.killed",
        "flag.config.break_glass",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} missing from {actions:?}"
        );
    }
}

async fn scheduled_changes_apply_once_at_their_time(app: App) {
    app.create_checkout_flag().await;
    let staging = "/api/v1/projects/default/environments/staging/flags/new-checkout";
    let now = app.state.now_ms();
    let due = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}, "applyAt": now - 1_000});
    let reply = app.call("PUT", staging, Some(&app.admin), Some(due)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(
        reply.body["status"], "approved",
        "no approval needed in staging: only the time"
    );
    let later = json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}, "applyAt": now + 3_600_000});
    let reply = app
        .call("PUT", staging, Some(&app.admin), Some(later))
        .await;
    let later_location = reply
        .headers
        .get(header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    assert_eq!(anchor_server::change_requests::run_due(&app.state).await, 1);
    assert_eq!(
        anchor_server::change_requests::run_due(&app.state).await,
        0,
        "once only"
    );
    let config = app.call("GET", staging, Some(&app.admin), None).await.body;
    assert_eq!(config["enabled"], true);
    let reply = app
        .call("GET", &later_location, Some(&app.admin), None)
        .await;
    assert_eq!(reply.body["status"], "approved", "not due yet");

    // A due change whose flag moved on fails, and says why.
    let stale = json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "off"}, "applyAt": now - 1});
    let reply = app
        .call("PUT", staging, Some(&app.admin), Some(stale))
        .await;
    let stale_location = reply
        .headers
        .get(header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let direct = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"}});
    assert_eq!(
        app.call("PUT", staging, Some(&app.admin), Some(direct))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(anchor_server::change_requests::run_due(&app.state).await, 0);
    let reply = app
        .call("GET", &stale_location, Some(&app.admin), None)
        .await;
    assert_eq!(reply.body["status"], "failed", "{}", reply.body);
    assert!(reply.body["failure"].is_string());
}

/// The documented operations with their path parameters filled in.
fn operations() -> Vec<(String, String)> {
    let doc = serde_json::to_value(anchor_server::openapi()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .split('/')
            .map(|segment| match segment {
                "{project}" => "default",
                "{environment}" => "production",
                "{flag}" => "new-checkout",
                "{segment}" => "beta",
                "{username}" => "admin",
                "{version}" | "{from}" | "{to}" => "1",
                s if s.starts_with('{') => "x",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            ops.push((method.to_uppercase(), uri.clone()));
        }
    }
    ops
}

async fn every_documented_operation_refuses_sdk_keys_expired_tokens_and_viewers_writes(app: App) {
    app.create_checkout_flag().await;
    let keys = "/api/v1/projects/default/environments/production/keys";
    let server = app
        .call(
            "POST",
            keys,
            Some(&app.admin),
            Some(json!({"kind": "server"})),
        )
        .await;
    let client = app
        .call(
            "POST",
            keys,
            Some(&app.admin),
            Some(json!({"kind": "client"})),
        )
        .await;
    let expired = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&app.admin),
            Some(json!({"name": "old", "expiresInDays": 0})),
        )
        .await;
    let viewer = app.member("vera", Role::Viewer).await;
    let refused = [
        format!("Bearer {}", server.body["key"].as_str().unwrap()),
        format!("Bearer {}", client.body["key"].as_str().unwrap()),
        format!("Bearer {}", expired.body["token"].as_str().unwrap()),
    ];
    let ops = operations();
    assert!(ops.len() >= 40);
    for (method, uri) in &ops {
        if uri == "/api/v1/session" && method == "POST" {
            continue; // signing in takes a password in its body, not credentials
        }
        for credential in &refused {
            let reply = app
                .call(method, uri, Some(credential), Some(json!({})))
                .await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {}",
                &credential[..15]
            );
        }
        // A viewer reads (evaluating is a read, with a POST body), and changes nothing but
        // their own tokens and session.
        let reply = app
            .call(method, uri, Some(&viewer), Some(json!({"name": "v"})))
            .await;
        if method == "GET" {
            assert!(
                [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::FORBIDDEN]
                    .contains(&reply.status),
                "GET {uri}: {}",
                reply.status
            );
        } else if !uri.starts_with("/api/v1/tokens")
            && uri != "/api/v1/session"
            && !uri.ends_with("/evaluate")
        {
            assert!(
                !reply.status.is_success(),
                "a viewer changed something: {method} {uri} gave {}",
                reply.status
            );
        }
    }
}

async fn dashboard_sessions_use_httponly_cookies_and_csrf_tokens_for_writes(app: App) {
    let reply = app
        .call(
            "POST",
            "/api/v1/session",
            None,
            Some(json!({"username": "admin", "password": "wrong"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = app
        .call(
            "POST",
            "/api/v1/session",
            None,
            Some(json!({"username": "admin", "password": PASSWORD})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let set_cookie = reply
        .headers
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = reply.body["csrfToken"].as_str().unwrap().to_string();
    assert!(
        !reply
            .body
            .to_string()
            .contains(cookie.split('=').nth(1).unwrap()),
        "the session id stays in the cookie"
    );

    let reply = app
        .call_with(
            "GET",
            "/api/v1/projects",
            None,
            None,
            &[("cookie", &cookie)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "reads need only the cookie");
    let flag = json!({"key": "from-dashboard", "kind": "boolean", "variants": [{"name": "on", "value": true}]}).to_string();
    let flags = "/api/v1/projects/default/flags";
    let reply = app
        .call_with(
            "POST",
            flags,
            None,
            Some(flag.clone()),
            &[("cookie", &cookie)],
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "a write without the CSRF token"
    );
    let reply = app
        .call_with(
            "POST",
            flags,
            None,
            Some(flag.clone()),
            &[("cookie", &cookie), ("x-csrf-token", "guess")],
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "a write with a wrong CSRF token"
    );
    let reply = app
        .call_with(
            "POST",
            flags,
            None,
            Some(flag),
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);

    let reply = app
        .call_with(
            "DELETE",
            "/api/v1/session",
            None,
            None,
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(
        reply
            .headers
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let reply = app
        .call_with(
            "GET",
            "/api/v1/projects",
            None,
            None,
            &[("cookie", &cookie)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "signed out");
}

async fn evaluations_follow_every_committed_change_and_explain_themselves(app: App) {
    app.create_checkout_flag().await;
    let evaluate = format!("{CONFIG}/evaluate");
    let german = json!({"targetingKey": "user-42", "country": "DE"});
    let reply = app
        .call("POST", &evaluate, Some(&app.admin), Some(german.clone()))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.body["explanation"]["evaluation"]["reason"],
        "DISABLED"
    );
    let first_revision = reply.body["revision"].as_u64().unwrap();

    let on = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
        "rules": [{"id": "germany", "conditions": [{"attribute": "country", "operator": "in", "values": ["DE"]}],
                   "serve": {"variant": "on"}}]});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&app.admin), Some(on))
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call("POST", &evaluate, Some(&app.admin), Some(german.clone()))
        .await;
    assert_eq!(
        reply.body["explanation"]["evaluation"]["value"], true,
        "{}",
        reply.body
    );
    assert_eq!(
        reply.body["explanation"]["evaluation"]["reason"],
        "TARGETING_MATCH"
    );
    assert!(
        reply.body["text"]
            .as_str()
            .unwrap()
            .contains("rule 0 `germany` matched"),
        "{}",
        reply.body["text"]
    );
    assert!(reply.body["revision"].as_u64().unwrap() > first_revision);
    let french = json!({"targetingKey": "user-43", "country": "FR"});
    let reply = app
        .call("POST", &evaluate, Some(&app.admin), Some(french))
        .await;
    assert_eq!(reply.body["explanation"]["evaluation"]["reason"], "DEFAULT");

    let reply = app
        .call(
            "POST",
            &format!("{CONFIG}/revert"),
            Some(&app.admin),
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = app
        .call("POST", &evaluate, Some(&app.admin), Some(german.clone()))
        .await;
    assert_eq!(
        reply.body["explanation"]["evaluation"]["reason"], "DISABLED",
        "the revert is live"
    );

    // A scheduled change is live once the scheduler applied it.
    let scheduled = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"},
                           "applyAt": app.state.now_ms() - 1});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&app.admin), Some(scheduled))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(anchor_server::change_requests::run_due(&app.state).await, 1);
    let reply = app
        .call("POST", &evaluate, Some(&app.admin), Some(german))
        .await;
    assert_eq!(reply.body["explanation"]["evaluation"]["reason"], "STATIC");

    let missing = "/api/v1/projects/default/environments/production/flags/missing/evaluate";
    assert_eq!(
        app.call("POST", missing, Some(&app.admin), Some(json!({})))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call("POST", &evaluate, Some(&app.admin), Some(json!([1, 2])))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

/// The least a caller needs for each documented operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Needs {
    /// Any signed-in user (their own tokens, their own session, their project list).
    SignedIn,
    Viewer,
    Editor,
    Admin,
    InstanceAdmin,
}

fn needs(method: &str, template: &str) -> Needs {
    use Needs::*;
    let read = method == "GET" || template.ends_with("/evaluate");
    match template {
        "/api/v1/tokens" | "/api/v1/tokens/{id}" | "/api/v1/session" => SignedIn,
        "/api/v1/projects" if method == "GET" => SignedIn,
        "/api/v1/projects" | "/api/v1/users" | "/api/v1/audit" => InstanceAdmin,
        t if t.contains("/members/") => Admin,
        t if t.ends_with("/environments") && !read => Admin,
        t if t.ends_with("/environments/{environment}") && !read => Admin,
        t if t.contains("/keys") && !read => Admin,
        t if t.contains("/webhooks") && !read => Admin,
        t if t.contains("/release-templates") && !read => Admin,
        _ if read => Viewer,
        _ => Editor,
    }
}

async fn every_operation_allows_exactly_the_roles_it_is_designed_for(app: App) {
    app.create_checkout_flag().await;
    let callers = [
        (Needs::Viewer, app.member("vera", Role::Viewer).await),
        (Needs::Editor, app.member("ed", Role::Editor).await),
        (Needs::Admin, app.member("adam", Role::Admin).await),
        (Needs::InstanceAdmin, app.admin.clone()),
    ];
    let doc = serde_json::to_value(anchor_server::openapi()).unwrap();
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            if template == "/api/v1/session" && method == "POST" {
                continue; // signing in takes a password, not a credential
            }
            let mut uri = operations_uri(template);
            if method == "DELETE" && template.ends_with("/environments/{environment}") {
                // Deleting production would leave the operations after it nothing to act on.
                uri = uri.replace("production", "staging");
            }
            let required = needs(&method, template);
            for (level, credential) in &callers {
                let reply = app
                    .call(&method, &uri, Some(credential), Some(json!({})))
                    .await;
                if *level < required {
                    assert_eq!(
                        reply.status,
                        StatusCode::FORBIDDEN,
                        "{method} {template} must be refused to {level:?}: {}",
                        reply.body
                    );
                } else {
                    assert!(
                        reply.status != StatusCode::FORBIDDEN
                            && reply.status != StatusCode::UNAUTHORIZED,
                        "{method} {template} must be allowed to {level:?}, got {}: {}",
                        reply.status,
                        reply.body
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 4 * 43, "{checked} checks");
}

fn operations_uri(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{project}" => "default",
            "{environment}" => "production",
            "{flag}" => "new-checkout",
            "{segment}" => "beta",
            "{username}" => "vera",
            "{version}" | "{from}" | "{to}" => "1",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn ofrep_answers_sdk_keys_from_the_live_snapshot_in_the_protocol_shapes(app: App) {
    app.create_checkout_flag().await;
    let config = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
        "rules": [{"id": "germany", "conditions": [{"attribute": "country", "operator": "in", "values": ["DE"]}],
                   "serve": {"variant": "on"}}]});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&app.admin), Some(config))
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call("POST", "/api/v1/projects/default/flags", Some(&app.admin),
              Some(json!({"key": "split", "kind": "string", "variants": [{"name": "a", "value": "A"}, {"name": "b", "value": "B"}]})))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let split = json!({"enabled": true, "offVariant": "a", "defaultServe": {"rollout": {"variants": [
        {"variant": "a", "weight": 50000}, {"variant": "b", "weight": 50000}]}}});
    let split_uri = "/api/v1/projects/default/environments/production/flags/split";
    assert_eq!(
        app.call("PUT", split_uri, Some(&app.admin), Some(split))
            .await
            .status,
        StatusCode::OK
    );
    let keys = "/api/v1/projects/default/environments/production/keys";
    let reply = app
        .call(
            "POST",
            keys,
            Some(&app.admin),
            Some(json!({"kind": "client"})),
        )
        .await;
    let client = reply.body["key"].as_str().unwrap().to_string();
    let client_id = reply.body["id"].as_str().unwrap().to_string();

    let one = "/ofrep/v1/evaluate/flags/new-checkout";
    let german = json!({"context": {"targetingKey": "user-1", "country": "DE"}}).to_string();
    let reply = app
        .call_with(
            "POST",
            one,
            None,
            Some(german.clone()),
            &[("x-api-key", &client)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["key"], "new-checkout");
    assert_eq!(reply.body["value"], true);
    assert_eq!(reply.body["variant"], "on");
    assert_eq!(reply.body["reason"], "TARGETING_MATCH");
    assert_eq!(reply.body["metadata"]["ruleId"], "germany");
    assert_eq!(reply.body["metadata"]["flagVersion"], 2);
    let bearer = format!("Bearer {client}");
    let reply = app
        .call_with("POST", one, Some(&bearer), Some(german.clone()), &[])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "Authorization: Bearer works too"
    );

    // Errors in the protocol's shapes.
    assert_eq!(
        app.call_with("POST", one, None, Some(german.clone()), &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.call_with("POST", one, Some(&app.admin), Some(german.clone()), &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "a personal token is not an SDK key"
    );
    let reply = app
        .call_with(
            "POST",
            "/ofrep/v1/evaluate/flags/missing",
            None,
            Some(german.clone()),
            &[("x-api-key", &client)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.body,
        json!({"key": "missing", "errorCode": "FLAG_NOT_FOUND", "errorDetails": reply.body["errorDetails"]})
    );
    let reply = app
        .call_with(
            "POST",
            "/ofrep/v1/evaluate/flags/split",
            None,
            Some(json!({"context": {}}).to_string()),
            &[("x-api-key", &client)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["errorCode"], "TARGETING_KEY_MISSING");
    let reply = app
        .call_with(
            "POST",
            one,
            None,
            Some(json!({"context": {"targetingKey": 7}}).to_string()),
            &[("x-api-key", &client)],
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["errorCode"].clone()),
        (StatusCode::BAD_REQUEST, json!("INVALID_CONTEXT"))
    );
    let reply = app
        .call_with(
            "POST",
            one,
            None,
            Some("{oops".into()),
            &[("x-api-key", &client)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Bulk, with an ETag over configuration and context.
    let bulk = "/ofrep/v1/evaluate/flags";
    let reply = app
        .call_with(
            "POST",
            bulk,
            None,
            Some(german.clone()),
            &[("x-api-key", &client)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let flags = reply.body["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 2);
    assert!(
        flags
            .iter()
            .any(|f| f["key"] == "split" && (f["value"] == "A" || f["value"] == "B"))
    );
    let etag = reply.etag();
    let reply = app
        .call_with(
            "POST",
            bulk,
            None,
            Some(german.clone()),
            &[("x-api-key", &client), ("if-none-match", &etag)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    let french = json!({"context": {"targetingKey": "user-1", "country": "FR"}}).to_string();
    let reply = app
        .call_with(
            "POST",
            bulk,
            None,
            Some(french),
            &[("x-api-key", &client), ("if-none-match", &etag)],
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "another context, another ETag"
    );
    let off = json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "off"}});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&app.admin), Some(off))
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call_with(
            "POST",
            bulk,
            None,
            Some(german.clone()),
            &[("x-api-key", &client), ("if-none-match", &etag)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "a new revision, a new ETag");
    let reply = app
        .call_with(
            "POST",
            one,
            None,
            Some(german.clone()),
            &[("x-api-key", &client)],
        )
        .await;
    assert_eq!(
        (reply.body["reason"].clone(), reply.body["value"].clone()),
        (json!("DISABLED"), json!(false))
    );

    // A revoked key stops working at once.
    assert_eq!(
        app.call(
            "DELETE",
            &format!("{keys}/{client_id}"),
            Some(&app.admin),
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.call_with("POST", one, None, Some(german), &[("x-api-key", &client)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

async fn server_sdks_download_the_configuration_and_keys_are_rate_limited(app: App) {
    app.create_checkout_flag().await;
    let keys = "/api/v1/projects/default/environments/production/keys";
    let server = app
        .call(
            "POST",
            keys,
            Some(&app.admin),
            Some(json!({"kind": "server"})),
        )
        .await
        .body["key"]
        .as_str()
        .unwrap()
        .to_string();
    let client = app
        .call(
            "POST",
            keys,
            Some(&app.admin),
            Some(json!({"kind": "client"})),
        )
        .await
        .body["key"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = app
        .call_with(
            "GET",
            "/sdk/v1/config",
            None,
            None,
            &[("x-api-key", &server)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["flags"][0]["flag"]["key"], "new-checkout");
    assert!(reply.body["revision"].as_u64().is_some());
    let etag = reply.etag();
    let reply = app
        .call_with(
            "GET",
            "/sdk/v1/config",
            None,
            None,
            &[("x-api-key", &server), ("if-none-match", &etag)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        app.call_with(
            "GET",
            "/sdk/v1/config",
            None,
            None,
            &[("x-api-key", &client)]
        )
        .await
        .status,
        StatusCode::FORBIDDEN,
        "a client key never sees rules or segments"
    );
    assert_eq!(
        app.call_with("GET", "/sdk/v1/config", Some(&app.admin), None, &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // A key over its rate limit is told when to come back.
    let limited = router(app.state.clone().with_rate_limit(1.0, 2.0));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let request = Request::builder()
            .method("POST")
            .uri("/ofrep/v1/evaluate/flags/new-checkout")
            .header("x-api-key", &client)
            .body(Body::from(r#"{"context": {"targetingKey": "u"}}"#))
            .unwrap();
        let response = limited.clone().oneshot(request).await.unwrap();
        statuses.push((
            response.status(),
            response.headers().get(header::RETRY_AFTER).cloned(),
        ));
    }
    assert_eq!(statuses[0].0, StatusCode::OK);
    assert_eq!(statuses[1].0, StatusCode::OK);
    assert_eq!(statuses[2].0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses[2].1.as_ref().unwrap(), "1");
}

async fn browsers_of_allowed_origins_may_call_ofrep_and_nothing_else(app: App) {
    let with_cors = router(
        app.state
            .clone()
            .with_cors_origins(vec!["https://app.example.com".into()]),
    );
    let preflight = |uri: &'static str, origin: &'static str| {
        Request::builder()
            .method("OPTIONS")
            .uri(uri)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-api-key,content-type")
            .body(Body::empty())
            .unwrap()
    };
    let allowed = |response: &axum::response::Response| {
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let response = with_cors
        .clone()
        .oneshot(preflight(
            "/ofrep/v1/evaluate/flags",
            "https://app.example.com",
        ))
        .await
        .unwrap();
    assert_eq!(
        allowed(&response).as_deref(),
        Some("https://app.example.com")
    );
    let headers = response
        .headers()
        .get("access-control-allow-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("x-api-key"), "{headers}");
    let response = with_cors
        .clone()
        .oneshot(preflight(
            "/ofrep/v1/evaluate/flags/x",
            "https://evil.example.com",
        ))
        .await
        .unwrap();
    assert_eq!(allowed(&response), None, "other origins get no CORS grant");
    for uri in ["/api/v1/projects", "/sdk/v1/config"] {
        let response = with_cors
            .clone()
            .oneshot(preflight(uri, "https://app.example.com"))
            .await
            .unwrap();
        assert_eq!(allowed(&response), None, "{uri} is not for browsers");
    }
    // Without configured origins, nobody gets a grant.
    let response = app
        .router
        .clone()
        .oneshot(preflight(
            "/ofrep/v1/evaluate/flags",
            "https://app.example.com",
        ))
        .await
        .unwrap();
    assert_eq!(allowed(&response), None);
}

/// The next SSE event (skipping heartbeats), or `None` when the stream ends or nothing comes
/// within `wait`.
async fn next_event(
    body: &mut (impl futures_util::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    wait: std::time::Duration,
) -> Option<String> {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(wait, body.next()).await {
            Ok(Some(Ok(chunk))) => {
                let text = String::from_utf8_lossy(&chunk).into_owned();
                if text.contains("event: config") || text.contains("event: patch") {
                    return Some(text);
                }
            }
            _ => return None,
        }
    }
}

fn event_id(event: &str) -> u64 {
    event
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .and_then(|id| id.trim().parse().ok())
        .expect("an id line")
}

async fn server_sdks_stream_every_change_and_resume_from_the_last_revision(app: App) {
    app.create_checkout_flag().await;
    let keys = "/api/v1/projects/default/environments/production/keys";
    let server = app
        .call(
            "POST",
            keys,
            Some(&app.admin),
            Some(json!({"kind": "server"})),
        )
        .await
        .body["key"]
        .as_str()
        .unwrap()
        .to_string();
    let client = app
        .call(
            "POST",
            keys,
            Some(&app.admin),
            Some(json!({"kind": "client"})),
        )
        .await
        .body["key"]
        .as_str()
        .unwrap()
        .to_string();
    let open = |key: &str, last: Option<u64>| {
        let mut request = Request::builder()
            .uri("/sdk/v1/stream")
            .header("x-api-key", key);
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        app.router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
    };
    assert_eq!(
        open(&client, None).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let response = open(&server, None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    let wait = std::time::Duration::from_secs(5);
    let first = next_event(&mut body, wait)
        .await
        .expect("the configuration on connect");
    assert!(first.contains("new-checkout"), "{first}");
    let connected_at = event_id(&first);

    let on = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&app.admin), Some(on))
            .await
            .status,
        StatusCode::OK
    );
    let change = next_event(&mut body, wait)
        .await
        .expect("the change, pushed");
    let changed_at = event_id(&change);
    assert!(changed_at > connected_at);
    assert!(change.contains("\"enabled\":true"), "{change}");

    // Resuming at the current revision sends nothing until the next change.
    let resumed = open(&server, Some(changed_at)).await.unwrap();
    let mut resumed = resumed.into_body().into_data_stream();
    assert_eq!(
        next_event(&mut resumed, std::time::Duration::from_millis(300)).await,
        None
    );
    let off = json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}});
    assert_eq!(
        app.call("PUT", CONFIG, Some(&app.admin), Some(off))
            .await
            .status,
        StatusCode::OK
    );
    let next = next_event(&mut resumed, wait)
        .await
        .expect("the next change");
    assert!(event_id(&next) > changed_at);

    // Shutting down ends every stream (a change already waiting may or may not go out first).
    app.state.shutdown.send_replace(true);
    use futures_util::StreamExt;
    let mut after = 0;
    loop {
        match tokio::time::timeout(wait, body.next()).await {
            Ok(None) => break,
            Ok(Some(_)) => after += 1,
            Err(_) => panic!("the stream did not end at shutdown"),
        }
    }
    assert!(after <= 1, "{after} chunks after shutdown");
}
