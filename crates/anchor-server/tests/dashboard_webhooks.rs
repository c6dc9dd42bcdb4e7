//! Editing a webhook from the dashboard, through its real HTTP surface (forms posted as a
//! browser posts them): the edit form changes what the API's `PATCH` changes and is audited
//! as it is; its problems show next to their fields and change nothing; one button turns a
//! webhook off and on; viewers and forms without the session's CSRF token change nothing.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{PASSWORD, Reply, Server, csrf_of, on_every_backend};

on_every_backend!(
    the_edit_form_changes_name_url_events_format_and_state_through_the_api,
    edit_problems_show_next_to_their_fields_and_change_nothing,
    one_button_disables_a_webhook_and_another_enables_it,
    viewers_and_forms_without_the_csrf_token_edit_nothing,
);

const WEBHOOKS_API: &str = "/api/v1/projects/default/webhooks";

/// A webhook made through the API: every event, JSON, enabled. Its id.
async fn webhook(server: &Server) -> String {
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            WEBHOOKS_API,
            json!({"name": "ops", "url": "https://hooks.example/secret-path"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The webhook as the API shows it to the admin.
async fn read(server: &Server, id: &str) -> Value {
    let (status, body) = server
        .api(
            reqwest::Method::GET,
            &format!("{WEBHOOKS_API}/{id}"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn page_path(id: &str) -> String {
    format!("/projects/default/settings/webhooks/{id}")
}

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

/// The opening tag of the input with this id.
fn input<'a>(body: &'a str, id: &str) -> &'a str {
    between(body, &format!("id=\"{id}\""), ">")
}

async fn the_edit_form_changes_name_url_events_format_and_state_through_the_api(server: Server) {
    let id = webhook(&server).await;
    let session = server.sign_in("admin", PASSWORD).await;
    let (page, _) = form_page(&server, &session, &page_path(&id)).await;
    assert!(
        page.body
            .contains(&format!("href=\"{}/edit\"", page_path(&id))),
        "the webhook's page leads to its edit form"
    );
    let edit = format!("{}/edit", page_path(&id));
    let (form, csrf) = form_page(&server, &session, &edit).await;
    // The form holds the webhook as it is, and every control has its label.
    assert!(input(&form.body, "name").contains("value=\"ops\""));
    assert!(input(&form.body, "url").contains("value=\"https://hooks.example/secret-path\""));
    assert!(input(&form.body, "event-all").contains("checked"));
    assert!(input(&form.body, "enabled").contains("checked"));
    for control in form.body.split("<input").skip(1) {
        let tag = &control[..control.find('>').unwrap()];
        if tag.contains("type=\"hidden\"") {
            continue;
        }
        let at = tag.find(" id=\"").expect("every visible input has an id") + 5;
        let control_id = &tag[at..at + tag[at..].find('"').unwrap()];
        assert!(
            form.body.contains(&format!("for=\"{control_id}\"")),
            "no label for <input{tag}>"
        );
    }

    // The box left unticked disables it.
    let reply = server
        .post_form(
            &edit,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("name", "  ops channel "),
                ("url", "https://hooks.slack.example/services/T/B/X"),
                ("events", "flag.changed"),
                ("events", "release.completed"),
                ("format", "slack"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let to = reply.header("location");
    assert_eq!(to, format!("{}?notice=webhook-saved", page_path(&id)));
    let saved = read(&server, &id).await;
    assert_eq!(saved["name"], "ops channel");
    assert_eq!(saved["url"], "https://hooks.slack.example/services/T/B/X");
    assert_eq!(
        saved["events"],
        json!(["flag.changed", "release.completed"])
    );
    assert_eq!(saved["format"], "slack");
    assert_eq!(saved["enabled"], false);
    let page = server.get(&to, Some(&session)).await;
    assert!(
        page.body.contains("The webhook was saved."),
        "{}",
        page.body
    );
    assert!(page.body.contains("disabled"));

    // Ticking "every event" with single ones means every event; the box enables it again.
    let reply = server
        .post_form(
            &edit,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("name", "ops channel"),
                ("url", "https://hooks.slack.example/services/T/B/X"),
                ("events", "*"),
                ("events", "ping"),
                ("format", "slack"),
                ("enabled", "true"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let saved = read(&server, &id).await;
    assert_eq!(saved["events"], json!(["*"]));
    assert_eq!(saved["enabled"], true);
    let (form, _) = form_page(&server, &session, &edit).await;
    assert!(input(&form.body, "event-all").contains("checked"));
    assert!(!input(&form.body, "event-0").contains("checked"));
    assert!(between(&form.body, "id=\"format\"", "</select>").contains("value=\"slack\" selected"));

    // Audited as the API's edits are, by the person who signed in.
    let (status, audit) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/audit",
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{audit}");
    let updates: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "webhook.updated")
        .collect();
    assert_eq!(updates.len(), 2, "{audit}");
    assert_eq!(updates[0]["actor"]["id"], "admin");
}

async fn edit_problems_show_next_to_their_fields_and_change_nothing(server: Server) {
    let id = webhook(&server).await;
    let before = read(&server, &id).await;
    let session = server.sign_in("admin", PASSWORD).await;
    let edit = format!("{}/edit", page_path(&id));
    let (_, csrf) = form_page(&server, &session, &edit).await;
    let reply = server
        .post_form(
            &edit,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("name", "   "),
                ("url", "ftp://files.example/drop"),
                ("format", "xml"),
                ("enabled", "true"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = &reply.body;
    assert!(
        between(body, "id=\"name\"", "id=\"url\"").contains("use 1 to 100 characters"),
        "{body}"
    );
    assert!(
        between(body, "id=\"url\"", "<fieldset>").contains("use an `http` or `https` URL"),
        "{body}"
    );
    assert!(
        between(body, "</fieldset>", "id=\"format\"").contains("name at least one event type"),
        "{body}"
    );
    assert!(
        between(body, "id=\"format\"", "id=\"enabled\"").contains("use `json` or `slack`"),
        "{body}"
    );
    // What was typed stays in the form, and no event is shown ticked that was not.
    assert!(input(body, "url").contains("value=\"ftp://files.example/drop\""));
    assert!(!input(body, "event-all").contains("checked"));
    assert!(body.contains("Edit webhook ops"));
    assert_eq!(read(&server, &id).await, before, "nothing changed");

    // An unknown webhook is a 404, not a form.
    let reply = server
        .get(
            "/projects/default/settings/webhooks/no-such-webhook/edit",
            Some(&session),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

async fn one_button_disables_a_webhook_and_another_enables_it(server: Server) {
    let id = webhook(&server).await;
    let session = server.sign_in("admin", PASSWORD).await;
    let toggle = format!("{}/enabled", page_path(&id));
    let (page, csrf) = form_page(&server, &session, &page_path(&id)).await;
    let form = between(&page.body, &format!("action=\"{toggle}\""), "</form>");
    assert!(form.contains("name=\"enabled\" value=\"false\""), "{form}");
    assert!(form.contains(">Disable<"), "{form}");

    let reply = server
        .post_form(
            &toggle,
            Some(&session),
            &[("csrf", &csrf), ("enabled", "false")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let page = server.get(&reply.header("location"), Some(&session)).await;
    assert!(
        page.body.contains("The webhook is disabled"),
        "{}",
        page.body
    );
    let form = between(&page.body, &format!("action=\"{toggle}\""), "</form>");
    assert!(form.contains("name=\"enabled\" value=\"true\"") && form.contains(">Enable<"));
    let off = read(&server, &id).await;
    assert_eq!(off["enabled"], false);
    assert_eq!(
        (&off["name"], &off["events"]),
        (&json!("ops"), &json!(["*"])),
        "only the state changed"
    );

    let reply = server
        .post_form(
            &toggle,
            Some(&session),
            &[("csrf", &csrf), ("enabled", "true")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(read(&server, &id).await["enabled"], true);

    let reply = server
        .post_form(
            &toggle,
            Some(&session),
            &[("csrf", &csrf), ("enabled", "maybe")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(read(&server, &id).await["enabled"], true);
}

async fn viewers_and_forms_without_the_csrf_token_edit_nothing(server: Server) {
    let id = webhook(&server).await;
    let before = read(&server, &id).await;
    let edit = format!("{}/edit", page_path(&id));
    let toggle = format!("{}/enabled", page_path(&id));
    let post = async |path: &str, session: &str, csrf: &str| {
        server
            .post_form(
                path,
                Some(session),
                &[
                    ("csrf", csrf),
                    ("name", "taken over"),
                    ("url", "https://attacker.example/"),
                    ("events", "*"),
                    ("format", "json"),
                    ("enabled", "false"),
                ],
            )
            .await
    };

    server.add_user("vic", "viewer").await;
    let viewer = server.sign_in("vic", "a long enough password").await;
    let (page, csrf) = form_page(&server, &viewer, &page_path(&id)).await;
    for button in [">Edit<", ">Disable<", ">Enable<", "/enabled\""] {
        assert!(!page.body.contains(button), "a viewer sees {button}");
    }
    assert_eq!(
        server.get(&edit, Some(&viewer)).await.status,
        StatusCode::FORBIDDEN
    );
    for path in [&edit, &toggle] {
        let reply = post(path, &viewer, &csrf).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.body
        );
    }

    let admin = server.sign_in("admin", PASSWORD).await;
    let other = server.sign_in("admin", PASSWORD).await;
    let (_, other_csrf) = form_page(&server, &other, &page_path(&id)).await;
    for csrf in ["", "forged", other_csrf.as_str()] {
        for path in [&edit, &toggle] {
            let reply = post(path, &admin, csrf).await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path} {csrf:?}");
        }
    }
    assert_eq!(read(&server, &id).await, before, "nothing changed");
}
