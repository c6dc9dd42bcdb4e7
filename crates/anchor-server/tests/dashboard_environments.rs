//! The dashboard's environment settings through their real HTTP surface (a server on a real
//! port, forms posted as a browser posts them): an environment is renamed, moved and has its
//! approval turned on and, with a reason, off on its form; deleting one asks first, is refused
//! with the reason while a release runs there, and takes its SDK keys with it; viewers get
//! neither the form nor the deletion.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{PASSWORD, Reply, Server, csrf_of, on_every_backend};

on_every_backend!(
    an_environment_is_renamed_moved_and_its_approval_lifted_with_a_reason_on_its_form,
    deleting_an_environment_asks_first_and_is_refused_with_the_reason_while_a_release_runs,
    viewers_can_neither_edit_nor_delete_an_environment,
);

const LIST: &str = "/projects/default/settings/environments";

fn edit_path(key: &str) -> String {
    format!("{LIST}/{key}")
}

/// The page at `path` (asserting it answered 200) and the CSRF token of its forms.
async fn form_page(server: &Server, session: &str, path: &str) -> (Reply, String) {
    let page = server.get(path, Some(session)).await;
    assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
    let csrf = csrf_of(&page.body);
    (page, csrf)
}

/// The environment `key` as the API shows it.
async fn environment(server: &Server, key: &str) -> Option<Value> {
    let (status, list) = server
        .api(
            Method::GET,
            "/api/v1/projects/default/environments",
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .cloned()
}

/// The text of a page from `from` up to `to`, for "this problem is next to that field".
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

/// No inline script or style, and a label for every visible control.
fn assert_plain_and_labelled(path: &str, body: &str) {
    let lower = body.to_ascii_lowercase();
    for inline in [" onclick=", " onsubmit=", " style=", "<script>"] {
        assert!(!lower.contains(inline), "{path} has {inline}");
    }
    for tag in ["<input", "<select", "<textarea"] {
        for control in body.split(tag).skip(1) {
            let control = &control[..control.find('>').unwrap()];
            if control.contains("type=\"hidden\"") {
                continue;
            }
            let at = control.find(" id=\"").expect("every control has an id") + 5;
            let id = &control[at..at + control[at..].find('"').unwrap()];
            assert!(
                body.contains(&format!("for=\"{id}\"")),
                "{path}: no label for {id}"
            );
        }
    }
}

async fn an_environment_is_renamed_moved_and_its_approval_lifted_with_a_reason_on_its_form(
    server: Server,
) {
    let session = server.sign_in("admin", PASSWORD).await;
    let (list, _) = form_page(&server, &session, LIST).await;
    assert!(
        list.body
            .contains(&format!("href=\"{}\"", edit_path("staging"))),
        "each environment links to its form"
    );
    let (page, csrf) = form_page(&server, &session, &edit_path("staging")).await;
    assert_plain_and_labelled("edit", &page.body);
    assert!(page.body.contains("<code>staging</code>"));

    let reply = server
        .post_form(
            &edit_path("staging"),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("name", "<b>QA</b>"),
                ("position", "0"),
                ("requires_approval", "1"),
                ("comment", ""),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let list = server.get(&reply.header("location"), Some(&session)).await;
    assert!(list.body.contains("The environment was saved."));
    assert!(
        list.body.contains("&lt;b&gt;QA&lt;/b&gt;"),
        "names are text"
    );
    let staging = environment(&server, "staging").await.unwrap();
    assert_eq!(staging["name"], "<b>QA</b>");
    assert_eq!(staging["position"], 0);
    assert_eq!(staging["requiresApproval"], true);
    assert_eq!(
        environment(&server, "development").await.unwrap()["position"],
        1
    );

    // Lifting approval without a reason: the problem is shown beside the comment field and
    // nothing changes.
    let (_, csrf) = form_page(&server, &session, &edit_path("staging")).await;
    let lifted = [
        ("csrf", csrf.as_str()),
        ("name", "QA"),
        ("position", "0"),
        ("comment", " "),
    ];
    let reply = server
        .post_form(&edit_path("staging"), Some(&session), &lifted)
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let comment_field = between(&reply.body, "id=\"comment\"", "type=\"submit\"");
    assert!(
        comment_field.contains("class=\"field-problem\""),
        "{comment_field}"
    );
    let staging = environment(&server, "staging").await.unwrap();
    assert_eq!(staging["requiresApproval"], true);
    assert_eq!(staging["name"], "<b>QA</b>");

    let mut with_reason = lifted;
    with_reason[3] = ("comment", "QA is for experiments");
    let reply = server
        .post_form(&edit_path("staging"), Some(&session), &with_reason)
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let staging = environment(&server, "staging").await.unwrap();
    assert_eq!(staging["requiresApproval"], false);
    assert_eq!(staging["name"], "QA");
    let (_, entries) = server
        .api(
            Method::GET,
            "/api/v1/projects/default/audit?action=environment.updated",
            Value::Null,
        )
        .await;
    assert_eq!(entries[0]["comment"], "QA is for experiments", "{entries}");

    // An unchanged form writes nothing.
    let (_, csrf) = form_page(&server, &session, &edit_path("staging")).await;
    let reply = server
        .post_form(
            &edit_path("staging"),
            Some(&session),
            &[("csrf", &csrf), ("name", "QA"), ("position", "0")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let (_, entries) = server
        .api(
            Method::GET,
            "/api/v1/projects/default/audit?action=environment.updated",
            Value::Null,
        )
        .await;
    assert_eq!(entries.as_array().unwrap().len(), 2, "{entries}");
}

async fn deleting_an_environment_asks_first_and_is_refused_with_the_reason_while_a_release_runs(
    server: Server,
) {
    server.api_create_flag("checkout", "Checkout").await;
    let (status, body) = server
        .api(
            Method::POST,
            "/api/v1/projects/default/environments/staging/keys",
            json!({"kind": "server"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let staging_key = body["key"].as_str().unwrap().to_string();
    let session = server.sign_in("admin", PASSWORD).await;
    let (page, _) = form_page(&server, &session, &edit_path("staging")).await;
    let delete = format!("{}/delete", edit_path("staging"));
    assert!(page.body.contains(&format!("href=\"{delete}\"")));
    let (confirm, csrf) = form_page(&server, &session, &delete).await;
    assert!(confirm.body.contains("Delete the environment"));
    assert!(confirm.body.contains("SDK keys stop working"));
    let reply = server
        .post_form(&delete, Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let list = server.get(&reply.header("location"), Some(&session)).await;
    assert!(list.body.contains("The environment was deleted"));
    assert!(!list.body.contains("<code>staging</code>"));
    assert!(environment(&server, "staging").await.is_none());
    let evaluated = server
        .http
        .post(format!("{}/ofrep/v1/evaluate/flags/checkout", server.url))
        .header("x-api-key", &staging_key)
        .json(&json!({"context": {"targetingKey": "u"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(evaluated.status(), StatusCode::UNAUTHORIZED);

    // A release under way in production: the confirmation comes back with the reason.
    let (status, body) = server
        .api(
            Method::PUT,
            "/api/v1/projects/default/environments/production/flags/checkout",
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .api(
            Method::PUT,
            "/api/v1/projects/default/release-templates/slow",
            json!({"name": "Slow", "template": {
                "stages": [{"percentage": 1.0, "dwellMs": 3_600_000},
                           {"percentage": 100.0, "dwellMs": 3_600_000}],
                "guardrails": {"guardrails": []}
            }}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .api(
            Method::POST,
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"template": "slow", "control": "off", "treatment": "on"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let delete = format!("{}/delete", edit_path("production"));
    let (_, csrf) = form_page(&server, &session, &delete).await;
    let reply = server
        .post_form(&delete, Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.body.contains("Delete the environment"));
    let problem = between(&reply.body, "class=\"field-problem\"", "</p>");
    assert!(problem.contains("checkout"), "{problem}");
    assert!(environment(&server, "production").await.is_some());
}

async fn viewers_can_neither_edit_nor_delete_an_environment(server: Server) {
    server.add_user("vic", "viewer").await;
    let session = server.sign_in("vic", "a long enough password").await;
    let (list, csrf) = form_page(&server, &session, "/projects/default/settings/keys").await;
    assert!(!list.body.contains(&edit_path("staging")));
    let list = server.get(LIST, Some(&session)).await;
    assert!(
        !list
            .body
            .contains(&format!("href=\"{}\"", edit_path("staging")))
    );
    let delete = format!("{}/delete", edit_path("staging"));
    for path in [edit_path("staging"), delete.clone()] {
        assert_eq!(
            server.get(&path, Some(&session)).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let reply = server
        .post_form(
            &edit_path("staging"),
            Some(&session),
            &[("csrf", &csrf), ("name", "Mine"), ("position", "0")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = server
        .post_form(&delete, Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let staging = environment(&server, "staging").await.unwrap();
    assert_eq!(staging["name"], "Staging");
}
