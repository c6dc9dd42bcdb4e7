//! The dashboard's segments and settings pages through their real HTTP surface (a server on a
//! real port, forms posted as a browser posts them): a segment made on the form decides
//! evaluations, its problems show next to their fields and deleting it asks first; SDK keys
//! are shown once and work, stop working when revoked and are replaced when rotated;
//! environments and access tokens; webhooks and their delivery log filled by a real receiver;
//! viewers see no write buttons and are refused; forms without the session's CSRF token write
//! nothing.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{PASSWORD, Reply, Server, csrf_of, on_every_backend};

on_every_backend!(
    a_segment_made_on_the_form_makes_its_included_keys_members,
    segment_problems_show_next_to_their_fields,
    deleting_a_segment_asks_first_and_is_refused_while_a_flag_uses_it,
    an_sdk_key_is_shown_once_works_and_stops_working_when_revoked,
    rotating_sdk_keys_shows_a_new_working_secret_once,
    environments_and_access_tokens_are_made_on_their_forms,
    a_webhook_made_on_the_form_logs_its_delivery_of_a_flag_change,
    viewers_see_no_write_buttons_and_their_posts_are_refused,
    forms_without_the_sessions_csrf_token_write_nothing,
    admin_pages_show_user_text_as_text_and_no_inline_code,
    saving_a_segment_keeps_its_rule_ids_and_case_folding,
);

const SEGMENTS_API: &str = "/api/v1/projects/default/environments/development/segments";

/// The page at `path` (asserting it answered 200) and the CSRF token of its forms.
async fn form_page(server: &Server, session: &str, path: &str) -> (Reply, String) {
    let page = server.get(path, Some(session)).await;
    assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
    let csrf = csrf_of(&page.body);
    (page, csrf)
}

/// The text of a page between two markers, for "this problem is next to that field".
fn between<'a>(body: &'a str, from: &str, to: &str) -> &'a str {
    let start = body
        .find(from)
        .unwrap_or_else(|| panic!("no {from} in the page"));
    let end = start
        + body[start..]
            .find(to)
            .unwrap_or_else(|| panic!("no {to} after {from}"));
    &body[start..end]
}

/// The secret the read-only field of a "shown once" page holds.
fn secret_of(body: &str) -> String {
    let field = between(body, "id=\"secret\"", ">");
    let at = field
        .find("value=\"")
        .expect("the secret field has a value")
        + 7;
    field[at..at + field[at..].find('"').unwrap()].to_string()
}

/// The path of the first link in `body` that starts with `prefix` and ends with `suffix`.
fn link(body: &str, prefix: &str, suffix: &str) -> String {
    for piece in body.split("href=\"").skip(1) {
        let href = &piece[..piece.find('"').unwrap()];
        if href.starts_with(prefix) && href.ends_with(suffix) {
            return href.replace("&amp;", "&");
        }
    }
    panic!("no link {prefix}…{suffix} in the page");
}

/// A boolean flag serving `on` to the members of `segment` in development, `off` otherwise.
async fn flag_for_segment(server: &Server, flag: &str, segment: &str) {
    server.api_create_flag(flag, "Beta feature").await;
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/default/environments/development/flags/{flag}"),
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
                   "rules": [{"id": "members", "conditions": [{"attribute": "targetingKey",
                       "operator": "segment_match", "values": [segment]}],
                       "serve": {"variant": "on"}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// OFREP's single evaluation with an SDK key: the status and the answer.
async fn ofrep(server: &Server, key: &str, flag: &str, context: Value) -> (StatusCode, Value) {
    let response = server
        .http
        .post(format!("{}/ofrep/v1/evaluate/flags/{flag}", server.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(json!({ "context": context }).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

/// The status `/sdk/v1/config` answers a key.
async fn config_status(server: &Server, key: &str) -> StatusCode {
    server
        .http
        .get(format!("{}/sdk/v1/config", server.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
}

/// Creates an SDK key on the keys page; the "shown once" page.
async fn create_key(server: &Server, session: &str, environment: &str, kind: &str) -> Reply {
    let (_, csrf) = form_page(server, session, "/projects/default/settings/keys").await;
    server
        .post_form(
            "/projects/default/settings/keys",
            Some(session),
            &[
                ("csrf", &csrf),
                ("environment", environment),
                ("kind", kind),
            ],
        )
        .await
}

async fn a_segment_made_on_the_form_makes_its_included_keys_members(server: Server) {
    let session = server.sign_in("admin", PASSWORD).await;
    let (page, csrf) = form_page(
        &server,
        &session,
        "/projects/default/new-segment?env=development",
    )
    .await;
    assert!(page.body.contains("<label for=\"included\">"));
    let reply = server
        .post_form(
            "/projects/default/segments",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("environment", "development"),
                ("key", "beta-testers"),
                ("description", "People who try things first"),
                ("included", "alice\n\nbob\n"),
                ("excluded", "mallory"),
                ("rule_0", "1"),
                ("attribute_0", "country"),
                ("operator_0", "in"),
                ("values_0", "DE\nAT"),
                ("rule_1", "2"),
                ("attribute_1", ""),
                ("operator_1", "in"),
                ("values_1", ""),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(
        reply.header("location"),
        "/projects/default/environments/development/segments/beta-testers"
    );
    // The API holds what the form said: blank lines and the unused row left out.
    let (status, segment) = server
        .api(
            reqwest::Method::GET,
            &format!("{SEGMENTS_API}/beta-testers"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{segment}");
    assert_eq!(segment["segment"]["included"], json!(["alice", "bob"]));
    assert_eq!(segment["segment"]["excluded"], json!(["mallory"]));
    assert_eq!(
        segment["segment"]["rules"][0]["conditions"],
        json!([{"attribute": "country", "operator": "in", "values": ["DE", "AT"]}])
    );

    // A flag serving members: alice is one, carol is not, unless she is in Germany.
    flag_for_segment(&server, "beta-feature", "beta-testers").await;
    let key = secret_of(
        &create_key(&server, &session, "development", "server")
            .await
            .body,
    );
    let (status, answer) = ofrep(
        &server,
        &key,
        "beta-feature",
        json!({"targetingKey": "alice"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["value"], true, "{answer}");
    let (_, answer) = ofrep(
        &server,
        &key,
        "beta-feature",
        json!({"targetingKey": "carol"}),
    )
    .await;
    assert_eq!(answer["value"], false, "{answer}");
    let (_, answer) = ofrep(
        &server,
        &key,
        "beta-feature",
        json!({"targetingKey": "carol", "country": "DE"}),
    )
    .await;
    assert_eq!(answer["value"], true, "{answer}");

    // The list counts the keys and rules and names the flag that uses the segment.
    let list = server
        .get("/projects/default/segments?env=development", Some(&session))
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let row = between(&list.body, ">beta-testers<", "</tr>");
    assert!(row.contains("<td>2</td><td>1</td><td>1</td>"), "{row}");
    assert!(
        row.contains("/projects/default/flags/beta-feature"),
        "{row}"
    );
    // Another environment has no such segment.
    let other = server
        .get("/projects/default/segments?env=production", Some(&session))
        .await;
    assert!(!other.body.contains("beta-testers"));

    // Editing: moving alice to the excluded keys takes her out at once.
    let (page, csrf) = form_page(
        &server,
        &session,
        "/projects/default/environments/development/segments/beta-testers",
    )
    .await;
    assert!(page.body.contains("alice\nbob"), "{}", page.body);
    let version = support::hidden_value(&page.body, "version");
    let reply = server
        .post_form(
            "/projects/default/environments/development/segments/beta-testers",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("key", "beta-testers"),
                ("version", &version),
                ("included", "bob"),
                ("excluded", "mallory\nalice"),
                ("rule_0", "1"),
                ("attribute_0", "country"),
                ("operator_0", "in"),
                ("values_0", "DE\nAT"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let (_, answer) = ofrep(
        &server,
        &key,
        "beta-feature",
        json!({"targetingKey": "alice"}),
    )
    .await;
    assert_eq!(answer["value"], false, "{answer}");
    // A second save of the version already replaced is refused, not written over.
    let reply = server
        .post_form(
            "/projects/default/environments/development/segments/beta-testers",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("key", "beta-testers"),
                ("version", &version),
                ("included", "alice"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body.contains("Someone changed this segment"));
    let (_, answer) = ofrep(
        &server,
        &key,
        "beta-feature",
        json!({"targetingKey": "alice"}),
    )
    .await;
    assert_eq!(answer["value"], false, "{answer}");
}

async fn segment_problems_show_next_to_their_fields(server: Server) {
    let session = server.sign_in("admin", PASSWORD).await;
    let (_, csrf) = form_page(&server, &session, "/projects/default/new-segment").await;
    let reply = server
        .post_form(
            "/projects/default/segments",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("environment", "development"),
                ("key", "bad key!"),
                ("included", "alice"),
                ("rule_0", "1"),
                ("attribute_0", "email"),
                ("operator_0", "matches"),
                ("values_0", "("),
            ],
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    // The key's problem sits between the key field and the next one, the regex's under the
    // rules, and what was typed is kept.
    let key_field = between(&reply.body, "id=\"key\"", "id=\"description\"");
    assert!(key_field.contains("class=\"field-problem\""), "{key_field}");
    assert!(key_field.contains("aria-invalid=\"true\""), "{key_field}");
    assert!(key_field.contains("value=\"bad key!\""), "{key_field}");
    let rules = between(&reply.body, "<legend>Rules</legend>", "</fieldset>");
    assert!(
        rules.contains("class=\"field-problem\" role=\"alert\">rule 1, condition 1:"),
        "{rules}"
    );
    let (_, segments) = server
        .api(reqwest::Method::GET, SEGMENTS_API, Value::Null)
        .await;
    assert_eq!(segments, json!([]));
    // A condition row without an operator the engine knows is the form's own problem.
    let reply = server
        .post_form(
            "/projects/default/segments",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("environment", "development"),
                ("key", "fine"),
                ("rule_0", "1"),
                ("attribute_0", "plan"),
                ("operator_0", "resembles"),
                ("values_0", "pro"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body.contains("condition 1: choose an operator"));
    // A key already taken is said next to the key.
    for expected in [StatusCode::SEE_OTHER, StatusCode::UNPROCESSABLE_ENTITY] {
        let reply = server
            .post_form(
                "/projects/default/segments",
                Some(&session),
                &[
                    ("csrf", &csrf),
                    ("environment", "development"),
                    ("key", "twice"),
                ],
            )
            .await;
        assert_eq!(reply.status, expected, "{}", reply.body);
        if expected == StatusCode::UNPROCESSABLE_ENTITY {
            let key_field = between(&reply.body, "id=\"key\"", "id=\"description\"");
            assert!(key_field.contains("already exists"), "{key_field}");
        }
    }
}

async fn deleting_a_segment_asks_first_and_is_refused_while_a_flag_uses_it(server: Server) {
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            SEGMENTS_API,
            json!({"key": "staff", "included": ["ann"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    flag_for_segment(&server, "internal-tools", "staff").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let page = server
        .get(
            "/projects/default/environments/development/segments/staff",
            Some(&session),
        )
        .await;
    let delete = link(&page.body, "/projects/default/", "/delete");
    // The confirmation names the segment and the environment; asking deletes nothing.
    let (confirm, csrf) = form_page(&server, &session, &delete).await;
    assert!(
        confirm
            .body
            .contains("Delete segment <code>staff</code> in Development?"),
        "{}",
        confirm.body
    );
    let (status, _) = server
        .api(
            reqwest::Method::GET,
            &format!("{SEGMENTS_API}/staff"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    // Used by a flag: the API's refusal is shown on the confirmation.
    let reply = server
        .post_form(&delete, Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.body.contains("internal-tools"), "{}", reply.body);
    assert!(reply.body.contains("still used"), "{}", reply.body);
    // Once no flag uses it, the same confirmation deletes it.
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/development/flags/internal-tools",
            json!({"enabled": false, "offVariant": "off", "defaultServe": {"variant": "off"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reply = server
        .post_form(&delete, Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let list = server.get(&reply.header("location"), Some(&session)).await;
    assert!(list.body.contains("The segment was deleted."));
    assert!(!list.body.contains(">staff<"));
    let (status, _) = server
        .api(
            reqwest::Method::GET,
            &format!("{SEGMENTS_API}/staff"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 404);
}

async fn an_sdk_key_is_shown_once_works_and_stops_working_when_revoked(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let shown = create_key(&server, &session, "staging", "server").await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert!(shown.header("cache-control").contains("no-store"));
    assert!(shown.body.contains("shown only this once"));
    assert!(shown.body.contains("<label for=\"secret\">"));
    let secret = secret_of(&shown.body);
    assert!(secret.starts_with("anc_srv_"), "{secret}");
    assert_eq!(shown.body.matches(secret.as_str()).count(), 1);
    // It works for the environment it was made for.
    assert_eq!(config_status(&server, &secret).await, StatusCode::OK);
    let (status, answer) = ofrep(&server, &secret, "checkout", json!({"targetingKey": "u"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["value"], false);
    // Never shown again: the list has its prefix only.
    let keys = server
        .get("/projects/default/settings/keys", Some(&session))
        .await;
    assert!(!keys.body.contains(secret.as_str()));
    let prefix: String = secret.chars().take(12).collect();
    let row = between(&keys.body, &prefix, "</tr>");
    assert!(row.contains("active"), "{row}");
    // Revoking asks first, then the key is refused at once.
    let revoke = link(
        &keys.body,
        "/projects/default/settings/keys/staging/",
        "/revoke",
    );
    let (confirm, csrf) = form_page(&server, &session, &revoke).await;
    assert!(confirm.body.contains(&prefix), "{}", confirm.body);
    assert!(confirm.body.contains("of Staging?"), "{}", confirm.body);
    assert_eq!(config_status(&server, &secret).await, StatusCode::OK);
    let reply = server
        .post_form(&revoke, Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(
        config_status(&server, &secret).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = ofrep(&server, &secret, "checkout", json!({"targetingKey": "u"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let keys = server.get(&reply.header("location"), Some(&session)).await;
    assert!(keys.body.contains("The key was revoked"));
    assert!(between(&keys.body, &prefix, "</tr>").contains("revoked"));
}

async fn rotating_sdk_keys_shows_a_new_working_secret_once(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let old = secret_of(
        &create_key(&server, &session, "production", "client")
            .await
            .body,
    );
    assert!(old.starts_with("anc_cli_"));
    let keys = server
        .get("/projects/default/settings/keys", Some(&session))
        .await;
    let rotate = link(
        &keys.body,
        "/projects/default/settings/keys/production/",
        "kind=client",
    );
    let (confirm, csrf) = form_page(&server, &session, &rotate).await;
    assert!(
        confirm
            .body
            .contains("Rotate the client keys of Production?"),
        "{}",
        confirm.body
    );
    assert!(confirm.body.contains("<label for=\"overlap\">"));
    // No overlap: the old key stops at once and the new one works.
    let reply = server
        .post_form(
            &rotate,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("kind", "client"),
                ("overlap_seconds", "0"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.header("cache-control").contains("no-store"));
    let new = secret_of(&reply.body);
    assert!(new.starts_with("anc_cli_") && new != old, "{new}");
    assert_eq!(reply.body.matches(new.as_str()).count(), 1);
    // A client key evaluates (it may not download the rules).
    let (status, answer) = ofrep(&server, &new, "checkout", json!({"targetingKey": "u"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(config_status(&server, &new).await, StatusCode::FORBIDDEN);
    let (status, _) = ofrep(&server, &old, "checkout", json!({"targetingKey": "u"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let keys = server
        .get("/projects/default/settings/keys", Some(&session))
        .await;
    assert!(!keys.body.contains(new.as_str()));
}

async fn environments_and_access_tokens_are_made_on_their_forms(server: Server) {
    let session = server.sign_in("admin", PASSWORD).await;
    assert_eq!(
        server
            .get("/projects/default/settings", Some(&session))
            .await
            .header("location"),
        "/projects/default/settings/environments"
    );
    let (page, csrf) =
        form_page(&server, &session, "/projects/default/settings/environments").await;
    assert!(page.body.contains("<code>production</code>"));
    // A bad key is shown next to its field and nothing is added.
    let reply = server
        .post_form(
            "/projects/default/settings/environments",
            Some(&session),
            &[("csrf", &csrf), ("key", "q a"), ("name", "QA")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let key_field = between(&reply.body, "id=\"key\"", "id=\"name\"");
    assert!(key_field.contains("class=\"field-problem\""), "{key_field}");
    let reply = server
        .post_form(
            "/projects/default/settings/environments",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("key", "qa"),
                ("name", "QA"),
                ("requires_approval", "1"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let (_, environments) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/environments",
            Value::Null,
        )
        .await;
    let qa = environments
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "qa")
        .expect("qa was added");
    assert_eq!(qa["requiresApproval"], true);
    let page = server.get(&reply.header("location"), Some(&session)).await;
    assert!(between(&page.body, "<code>qa</code>", "</tr>").contains("need approval"));

    // A personal access token: shown once, it works on the API; revoked, it does not.
    let (_, csrf) = form_page(&server, &session, "/projects/default/settings/keys").await;
    let reply = server
        .post_form(
            "/projects/default/settings/tokens",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("name", "ci"),
                ("role", "viewer"),
                ("expires_in_days", "soon"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        between(&reply.body, "id=\"token-expiry\"", "</form>").contains("whole number of days")
    );
    let reply = server
        .post_form(
            "/projects/default/settings/tokens",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("name", "ci"),
                ("role", "viewer"),
                ("expires_in_days", "30"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let token = secret_of(&reply.body);
    let with_token = |path: &str| {
        server
            .http
            .get(format!("{}{path}", server.url))
            .bearer_auth(&token)
            .send()
    };
    let answer = with_token("/api/v1/projects/default/flags").await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let keys = server
        .get("/projects/default/settings/keys", Some(&session))
        .await;
    assert!(!keys.body.contains(token.as_str()));
    let revoke = link(&keys.body, "/projects/default/settings/tokens/", "/revoke");
    let (_, csrf) = form_page(&server, &session, &revoke).await;
    let reply = server
        .post_form(&revoke, Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let answer = with_token("/api/v1/projects/default/flags").await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
}

/// A webhook receiver on 127.0.0.1 answering 204 and counting what it received.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(body);
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn a_webhook_made_on_the_form_logs_its_delivery_of_a_flag_change(server: Server) {
    let (url, received) = receiver().await;
    server.api_create_flag("checkout", "Checkout").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let (page, csrf) = form_page(&server, &session, "/projects/default/settings/new-webhook").await;
    assert!(page.body.contains("flag.changed"));
    // A URL that is not one is shown next to its field.
    let reply = server
        .post_form(
            "/projects/default/settings/webhooks",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("name", "ops"),
                ("url", "not a url"),
                ("events", "flag.changed"),
                ("format", "json"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let url_field = between(&reply.body, "id=\"url\"", "<fieldset>");
    assert!(url_field.contains("not an absolute URL"), "{url_field}");
    let reply = server
        .post_form(
            "/projects/default/settings/webhooks",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("name", "ops"),
                ("url", &url),
                ("events", "flag.changed"),
                ("events", "release.rolled_back"),
                ("format", "json"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let secret = secret_of(&reply.body);
    assert!(secret.starts_with("whsec_"), "{secret}");
    let log = link(&reply.body, "/projects/default/settings/webhooks/", "");
    let (_, hooks) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/webhooks",
            Value::Null,
        )
        .await;
    assert_eq!(
        hooks[0]["events"],
        json!(["flag.changed", "release.rolled_back"])
    );
    let list = server
        .get("/projects/default/settings/webhooks", Some(&session))
        .await;
    assert!(list.body.contains(&url) && !list.body.contains(&secret));

    // A flag change is delivered to the receiver and logged with its answer.
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/production/flags/checkout",
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = server.get(&log, Some(&session)).await;
        assert_eq!(page.status, StatusCode::OK);
        if page.body.contains("succeeded") {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery logged: {}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = between(&page.body, "<code>flag.changed</code>", "</tr>");
    assert!(
        row.contains("succeeded") && row.contains("<td>204</td>"),
        "{row}"
    );
    assert!(row.contains("<td>1</td>"), "one attempt: {row}");
    assert_eq!(received.lock().unwrap().len(), 1);
    assert!(received.lock().unwrap()[0].contains("checkout"));

    // Deleting asks first, then the webhook and its log are gone.
    let delete = link(
        &page.body,
        "/projects/default/settings/webhooks/",
        "/delete",
    );
    let (confirm, csrf) = form_page(&server, &session, &delete).await;
    assert!(
        confirm
            .body
            .contains("Delete the webhook <strong>ops</strong>?")
    );
    let reply = server
        .post_form(&delete, Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let (_, hooks) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/webhooks",
            Value::Null,
        )
        .await;
    assert_eq!(hooks, json!([]));
}

async fn viewers_see_no_write_buttons_and_their_posts_are_refused(server: Server) {
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            SEGMENTS_API,
            json!({"key": "staff", "included": ["ann"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments/development/keys",
            json!({"kind": "server"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/webhooks",
            json!({"name": "ops", "url": "https://hooks.example/secret-path"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let hook = body["id"].as_str().unwrap().to_string();
    server.add_user("vic", "viewer").await;
    let session = server.sign_in("vic", "a long enough password").await;
    let pages = [
        "/projects/default/segments",
        "/projects/default/environments/development/segments/staff",
        "/projects/default/settings/environments",
        "/projects/default/settings/keys",
        "/projects/default/settings/webhooks",
        &format!("/projects/default/settings/webhooks/{hook}"),
    ];
    for path in pages {
        let page = server.get(path, Some(&session)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        for button in [
            "New segment",
            "Save segment",
            "/delete",
            "Add environment",
            "Create SDK key",
            "/revoke\"",
            "Rotate",
            "New webhook",
            "Send a test ping",
        ] {
            // The viewer's own access tokens are theirs to revoke; none exist here.
            assert!(!page.body.contains(button), "{path} shows {button}");
        }
    }
    // Below admin, a webhook's URL is shown without the path that may be its credential.
    let hooks = server
        .get("/projects/default/settings/webhooks", Some(&session))
        .await;
    assert!(hooks.body.contains("https://hooks.example"));
    assert!(!hooks.body.contains("secret-path"));
    // The pages that write are refused, and so are the forms' posts.
    let csrf = csrf_of(
        &server
            .get("/projects/default/segments", Some(&session))
            .await
            .body,
    );
    for path in [
        "/projects/default/new-segment",
        "/projects/default/environments/development/segments/staff/delete",
        "/projects/default/settings/new-webhook",
    ] {
        assert_eq!(
            server.get(path, Some(&session)).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let posts: [(&str, Vec<(&str, &str)>); 6] = [
        (
            "/projects/default/segments",
            vec![("environment", "development"), ("key", "mine")],
        ),
        (
            "/projects/default/environments/development/segments/staff",
            vec![("key", "staff"), ("included", "vic")],
        ),
        (
            "/projects/default/environments/development/segments/staff/delete",
            vec![],
        ),
        (
            "/projects/default/settings/keys",
            vec![("environment", "development"), ("kind", "server")],
        ),
        (
            "/projects/default/settings/environments",
            vec![("key", "mine"), ("name", "Mine")],
        ),
        (
            "/projects/default/settings/webhooks",
            vec![("name", "mine"), ("url", "https://example.com/")],
        ),
    ];
    for (path, fields) in posts {
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend(fields);
        let reply = server.post_form(path, Some(&session), &all).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.body
        );
    }
    let (_, segment) = server
        .api(
            reqwest::Method::GET,
            &format!("{SEGMENTS_API}/staff"),
            Value::Null,
        )
        .await;
    assert_eq!(segment["segment"]["included"], json!(["ann"]));
    let (_, keys) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/environments/development/keys",
            Value::Null,
        )
        .await;
    assert_eq!(keys.as_array().unwrap().len(), 1);
    let (_, hooks) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/webhooks",
            Value::Null,
        )
        .await;
    assert_eq!(hooks.as_array().unwrap().len(), 1);
}

async fn forms_without_the_sessions_csrf_token_write_nothing(server: Server) {
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            SEGMENTS_API,
            json!({"key": "staff", "included": ["ann"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = server.sign_in("admin", PASSWORD).await;
    let other = server.sign_in("admin", PASSWORD).await;
    let other_csrf = csrf_of(
        &server
            .get("/projects/default/segments", Some(&other))
            .await
            .body,
    );
    for csrf in ["", "forged", other_csrf.as_str()] {
        for (path, fields) in [
            (
                "/projects/default/segments",
                vec![("environment", "development"), ("key", "forged")],
            ),
            (
                "/projects/default/environments/development/segments/staff/delete",
                vec![],
            ),
            (
                "/projects/default/settings/keys",
                vec![("environment", "development"), ("kind", "server")],
            ),
            (
                "/projects/default/settings/environments",
                vec![("key", "forged"), ("name", "Forged")],
            ),
            (
                "/projects/default/settings/webhooks",
                vec![("name", "forged"), ("url", "https://example.com/")],
            ),
            (
                "/projects/default/settings/tokens",
                vec![("name", "forged")],
            ),
        ] {
            let mut all = vec![("csrf", csrf)];
            all.extend(fields);
            let reply = server.post_form(path, Some(&session), &all).await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path} csrf {csrf:?}");
        }
    }
    let (_, segments) = server
        .api(reqwest::Method::GET, SEGMENTS_API, Value::Null)
        .await;
    assert_eq!(segments.as_array().unwrap().len(), 1, "{segments}");
    let (_, keys) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/environments/development/keys",
            Value::Null,
        )
        .await;
    assert_eq!(keys, json!([]));
    let (_, environments) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/environments",
            Value::Null,
        )
        .await;
    assert_eq!(environments.as_array().unwrap().len(), 3);
    let (_, hooks) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/webhooks",
            Value::Null,
        )
        .await;
    assert_eq!(hooks, json!([]));
}

async fn admin_pages_show_user_text_as_text_and_no_inline_code(server: Server) {
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            SEGMENTS_API,
            json!({"key": "xss", "description": "<script>alert(1)</script>",
                   "included": ["<img src=x onerror=alert(1)>"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/webhooks",
            json!({"name": "<b>hook</b>", "url": "https://example.com/"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let hook = body["id"].as_str().unwrap().to_string();
    let session = server.sign_in("admin", PASSWORD).await;
    for path in [
        "/projects/default/segments",
        "/projects/default/new-segment",
        "/projects/default/environments/development/segments/xss",
        "/projects/default/environments/development/segments/xss/delete",
        "/projects/default/settings/environments",
        "/projects/default/settings/keys",
        "/projects/default/settings/webhooks",
        "/projects/default/settings/new-webhook",
        &format!("/projects/default/settings/webhooks/{hook}"),
        &format!("/projects/default/settings/webhooks/{hook}/delete"),
    ] {
        let page = server.get(path, Some(&session)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert_eq!(page.header("cache-control"), "no-store", "{path}");
        assert!(!page.body.contains("<script>alert"), "{path}");
        assert!(!page.body.contains("<img"), "{path}");
        assert!(!page.body.contains("<b>hook"), "{path}");
        for script in page.body.split("<script").skip(1) {
            let tag = &script[..script.find('>').unwrap()];
            assert!(tag.contains(" src="), "{path}: <script{tag}>");
        }
        let lower = page.body.to_ascii_lowercase();
        for inline in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " onchange=",
            " style=",
        ] {
            assert!(!lower.contains(inline), "{path} has{inline}");
        }
        // Every form control has a label naming it.
        for control in page.body.split("<input").skip(1) {
            let tag = &control[..control.find('>').unwrap()];
            if tag.contains("type=\"hidden\"") {
                continue;
            }
            let at = tag.find(" id=\"").expect("every visible input has an id") + 5;
            let id = &tag[at..at + tag[at..].find('"').unwrap()];
            assert!(
                page.body.contains(&format!("for=\"{id}\"")),
                "{path}: no label for <input{tag}>"
            );
        }
        // And the project's navigation leads to these pages.
        assert!(
            page.body.contains("href=\"/projects/default/segments\""),
            "{path}"
        );
        assert!(
            page.body.contains("href=\"/projects/default/settings\""),
            "{path}"
        );
    }
    let segment = server
        .get(
            "/projects/default/environments/development/segments/xss",
            Some(&session),
        )
        .await;
    assert!(segment.body.contains("&lt;script&gt;"));
}

async fn saving_a_segment_keeps_its_rule_ids_and_case_folding(server: Server) {
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            SEGMENTS_API,
            json!({"key": "staff", "rules": [{"id": "mail", "conditions": [
                {"attribute": "email", "operator": "ends_with", "values": ["@Example.com"],
                 "caseInsensitive": true}]}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = server.sign_in("admin", PASSWORD).await;
    let path = "/projects/default/environments/development/segments/staff";
    let (page, csrf) = form_page(&server, &session, path).await;
    // The page carries what the form would otherwise lose: the rule's id and the case option.
    assert_eq!(support::hidden_value(&page.body, "id_0"), "mail");
    let case = between(&page.body, "id=\"case_0\"", ">");
    assert!(case.contains("checked"), "{case}");
    let version = support::hidden_value(&page.body, "version");
    let reply = server
        .post_form(
            path,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("key", "staff"),
                ("version", &version),
                ("included", "ann"),
                ("rule_0", "1"),
                ("id_0", "mail"),
                ("attribute_0", "email"),
                ("operator_0", "ends_with"),
                ("values_0", "@Example.com"),
                ("case_0", "1"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let (_, segment) = server
        .api(
            reqwest::Method::GET,
            &format!("{SEGMENTS_API}/staff"),
            Value::Null,
        )
        .await;
    assert_eq!(
        segment["segment"]["rules"],
        json!([{"id": "mail", "conditions": [{"attribute": "email", "operator": "ends_with",
            "values": ["@Example.com"], "caseInsensitive": true}]}]),
        "{segment}"
    );
    assert_eq!(segment["segment"]["included"], json!(["ann"]));
    let saved = server.get(&reply.header("location"), Some(&session)).await;
    assert!(saved.body.contains("Saved."));
}
