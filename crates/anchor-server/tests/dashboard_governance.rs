//! The dashboard's audit log and change requests through the real HTTP surface (a server on a
//! real port, cookie sessions, both backends): entries with their actor, narrowed by filters
//! and paged without loss; change requests shown with their diff and reviewed, applied,
//! rejected and refused by the API's own rules, with the refusals on the page.
//! `dashboard_e2e.rs` approves and applies one in Chromium.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{PASSWORD, Reply, Server, csrf_of, on_every_backend};

on_every_backend!(
    the_audit_log_lists_changes_with_their_actor_and_filters_narrow_it,
    the_audit_log_pages_back_in_time_without_losing_or_repeating_entries,
    the_audit_log_narrows_to_one_action_or_every_action_of_a_kind,
    a_viewer_sees_no_review_buttons_and_the_server_refuses_their_approval,
    the_author_cannot_approve_their_own_request_and_is_told_why,
    a_second_editor_approves_then_applies_and_the_flag_changes,
    a_rejected_request_changes_nothing,
    applying_a_request_the_flag_moved_past_is_refused_with_the_reason,
    review_forms_without_the_sessions_csrf_token_write_nothing,
    text_in_requests_and_reviews_shows_as_text,
    the_list_of_requests_filters_by_state,
    governance_pages_carry_no_inline_script_or_style,
);

const USER_PASSWORD: &str = "a long enough password";

/// The management API as `user` (HTTP Basic).
async fn api_as(
    server: &Server,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let password = if user == "admin" {
        PASSWORD
    } else {
        USER_PASSWORD
    };
    let mut request = server
        .http
        .request(method, format!("{}{path}", server.url))
        .basic_auth(user, Some(password));
    if !body.is_null() {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `checkout`, an environment `gated` that requires approval, editors `ed` and `ann` and the
/// viewer `vera`; `ed` asks for `checkout` to be turned on in `gated`. The request's id.
async fn gated_request(server: &Server, comment: &str) -> String {
    server.api_create_flag("checkout", "Checkout").await;
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments",
            json!({"key": "gated", "name": "Gated", "requiresApproval": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    server.add_user("ed", "editor").await;
    server.add_user("ann", "editor").await;
    server.add_user("vera", "viewer").await;
    let (status, body) = api_as(
        server,
        "ed",
        reqwest::Method::PUT,
        "/api/v1/projects/default/environments/gated/flags/checkout",
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"},
               "comment": comment}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn request_path(id: &str) -> String {
    format!("/projects/default/change-requests/{id}")
}

async fn status_of(server: &Server, id: &str) -> String {
    let (status, body) = server
        .api(
            reqwest::Method::GET,
            &format!("/api/v1/projects/default/change-requests/{id}"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["status"].as_str().unwrap().to_string()
}

/// Opens the confirmation of `action` as `session` and confirms it with `comment`.
async fn confirm(server: &Server, session: &str, id: &str, action: &str, comment: &str) -> Reply {
    let path = format!("{}/{action}", request_path(id));
    let confirmation = server.get(&path, Some(session)).await;
    assert_eq!(confirmation.status, StatusCode::OK, "{}", confirmation.body);
    let csrf = csrf_of(&confirmation.body);
    server
        .post_form(
            &path,
            Some(session),
            &[("csrf", &csrf), ("comment", comment)],
        )
        .await
}

/// The rows of the first table body of a page.
fn rows(body: &str) -> usize {
    body.split("<tbody>")
        .nth(1)
        .map_or(0, |tbody| tbody.matches("<tr>").count())
}

async fn the_audit_log_lists_changes_with_their_actor_and_filters_narrow_it(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    server.api_create_flag("search", "Search").await;
    server.add_user("ed", "editor").await;
    server.add_user("vera", "viewer").await;
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/staging/flags/checkout",
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"},
                   "comment": "staging first"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api_as(
        &server,
        "ed",
        reqwest::Method::PUT,
        "/api/v1/projects/default/environments/development/flags/search",
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A viewer reads the whole log, newest first: ed's change above the admin's.
    let vera = server.sign_in("vera", USER_PASSWORD).await;
    let all = server.get("/projects/default/audit", Some(&vera)).await;
    assert_eq!(all.status, StatusCode::OK);
    let body = &all.body;
    assert!(
        body.contains("<label for=\"actor\">"),
        "every filter has a label"
    );
    assert!(body.contains("data-autosubmit"));
    let ed_row = body.find(">ed<").expect("ed's change is listed");
    let admin_row = body.find("“staging first”").expect("the admin's comment");
    assert!(ed_row < admin_row, "newest first");
    assert!(body.contains("flag.config.updated"));
    assert!(body.contains("replace /enabled: true"), "the change itself");
    assert!(body.contains("href=\"/projects/default/flags/checkout\""));
    let everything = rows(body);

    // Each filter narrows the table to what it names.
    let by_ed = server
        .get("/projects/default/audit?actor=ed", Some(&vera))
        .await;
    assert_eq!(rows(&by_ed.body), 1, "{}", by_ed.body);
    assert!(by_ed.body.contains("/flags/search\""));
    assert!(!by_ed.body.contains("/flags/checkout\""));
    let in_staging = server
        .get("/projects/default/audit?environment=staging", Some(&vera))
        .await;
    // The change made there, and the environment's own creation.
    assert_eq!(rows(&in_staging.body), 2, "{}", in_staging.body);
    assert!(in_staging.body.contains("environment.created"));
    assert!(!in_staging.body.contains("/flags/search\""));
    assert!(in_staging.body.contains("“staging first”"));
    let of_checkout = server
        .get("/projects/default/audit?target=checkout", Some(&vera))
        .await;
    assert!(rows(&of_checkout.body) >= 2, "created, then turned on");
    assert!(rows(&of_checkout.body) < everything);
    assert!(!of_checkout.body.contains("/flags/search\""));
    // A range of days in the future holds nothing; a bad date is named next to its field.
    let later = server
        .get(
            "/projects/default/audit?from=2999-01-01&to=2999-01-31",
            Some(&vera),
        )
        .await;
    assert_eq!(later.status, StatusCode::OK);
    assert!(later.body.contains("0 entries"));
    let bad = server
        .get("/projects/default/audit?from=2026-02-30", Some(&vera))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("“2026-02-30” is not a date"));
    assert!(bad.body.contains("id=\"from\""));
    // Outsiders see nothing: the instance log is for instance administrators.
    assert_eq!(
        server.get("/audit", Some(&vera)).await.status,
        StatusCode::FORBIDDEN
    );
    let admin = server.sign_in("admin", PASSWORD).await;
    let instance = server.get("/audit", Some(&admin)).await;
    assert_eq!(instance.status, StatusCode::OK);
    assert!(instance.body.contains("vera"), "the user's creation");
}

async fn the_audit_log_narrows_to_one_action_or_every_action_of_a_kind(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/staging/flags/checkout",
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.add_user("vera", "viewer").await;
    let vera = server.sign_in("vera", USER_PASSWORD).await;

    let all = server.get("/projects/default/audit", Some(&vera)).await;
    assert!(all.body.contains("<label for=\"action\">Action</label>"));
    assert!(all.body.contains("<option value=\"release.rolled_back\">"));
    assert!(all.body.contains("environment.created"));
    let everything = rows(&all.body);

    let updated = server
        .get(
            "/projects/default/audit?action=flag.config.updated",
            Some(&vera),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(rows(&updated.body), 1, "{}", updated.body);
    assert!(updated.body.contains("replace /enabled: true"));
    assert!(!updated.body.contains("<code>flag.created</code>"));
    assert!(
        updated
            .body
            .contains("<option value=\"flag.config.updated\" selected>"),
        "the select keeps the choice"
    );

    // `flag.*` is every flag action: the creation and the change, no environment's creation.
    let flags = server
        .get("/projects/default/audit?action=flag.*", Some(&vera))
        .await;
    assert_eq!(rows(&flags.body), 2, "{}", flags.body);
    assert!(flags.body.contains("<code>flag.created</code>"));
    assert!(!flags.body.contains("<code>environment.created</code>"));
    assert!(rows(&flags.body) < everything);
    // `flag.` means the same; not in the select's list, it is offered there as chosen.
    let typed = server
        .get("/projects/default/audit?action=flag.", Some(&vera))
        .await;
    assert_eq!(rows(&typed.body), 2, "{}", typed.body);
    assert!(
        typed
            .body
            .contains("<option value=\"flag.\" selected>flag.</option>")
    );
    let none = server
        .get(
            "/projects/default/audit?action=release.rolled_back",
            Some(&vera),
        )
        .await;
    assert!(none.body.contains("0 entries"));

    // The API's endpoint takes the same parameter.
    let (status, body) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/audit?action=flag.*",
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let actions: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["flag.config.updated", "flag.created"]);
}

async fn the_audit_log_pages_back_in_time_without_losing_or_repeating_entries(server: Server) {
    for i in 0..60 {
        server
            .api_create_flag(&format!("flag-{i:02}"), "paged")
            .await;
    }
    let (status, all) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/audit?limit=1000",
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    let total = all.as_array().unwrap().len();
    assert!(total > 50, "{total} entries: more than a page");
    let session = server.sign_in("admin", PASSWORD).await;
    let pages = walk_pages(&server, &session, "/projects/default/audit").await;
    assert!(pages.len() >= 2);
    let seen: usize = pages.iter().map(|p| rows(p)).sum();
    assert_eq!(seen, total, "every entry once, over {} pages", pages.len());
    // The older link keeps the filters: every page of one action holds only that action.
    let created = walk_pages(
        &server,
        &session,
        "/projects/default/audit?action=flag.created",
    )
    .await;
    assert!(created.len() >= 2);
    assert_eq!(created.iter().map(|p| rows(p)).sum::<usize>(), 60);
    for page in &created {
        assert_eq!(
            page.matches("<code>flag.created</code>").count(),
            rows(page),
            "{page}"
        );
    }
}

/// The bodies of the pages from `first` on, following each page's "older" link.
async fn walk_pages(server: &Server, session: &str, first: &str) -> Vec<String> {
    let mut path = first.to_string();
    let mut pages = Vec::new();
    loop {
        let page = server.get(&path, Some(session)).await;
        assert_eq!(page.status, StatusCode::OK);
        let next = page.body.find("rel=\"next\"").map(|at| {
            // The href before `rel="next"`.
            let start = page.body[..at].rfind("href=\"").unwrap() + 6;
            let end = start + page.body[start..].find('"').unwrap();
            page.body[start..end].replace("&amp;", "&")
        });
        pages.push(page.body);
        match next {
            Some(next) => path = next,
            None => return pages,
        }
        assert!(pages.len() < 10, "the pages never end");
    }
}

async fn a_viewer_sees_no_review_buttons_and_the_server_refuses_their_approval(server: Server) {
    let id = gated_request(&server, "launch").await;
    let vera = server.sign_in("vera", USER_PASSWORD).await;
    let page = server.get(&request_path(&id), Some(&vera)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("/enabled"), "the diff is shown");
    assert!(page.body.contains("ed"));
    for action in ["approve", "reject", "apply", "cancel"] {
        assert!(
            !page.body.contains(&format!("/{id}/{action}\"")),
            "a viewer has no {action} button"
        );
    }
    assert_eq!(
        server
            .get(&format!("{}/approve", request_path(&id)), Some(&vera))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let csrf = csrf_of(&page.body);
    let reply = server
        .post_form(
            &format!("{}/approve", request_path(&id)),
            Some(&vera),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(status_of(&server, &id).await, "open");
}

async fn the_author_cannot_approve_their_own_request_and_is_told_why(server: Server) {
    let id = gated_request(&server, "launch").await;
    let ed = server.sign_in("ed", USER_PASSWORD).await;
    let page = server.get(&request_path(&id), Some(&ed)).await;
    assert!(!page.body.contains(&format!("/{id}/approve\"")));
    assert!(page.body.contains("another editor reviews it"));
    // The author may withdraw it, though.
    assert!(page.body.contains(&format!("/{id}/cancel\"")));
    // Forcing the approval anyway: the API refuses and the page says why.
    let reply = confirm(&server, &ed, &id, "approve", "looks fine to me").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply
            .body
            .contains("reviewed by someone other than its author"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("role=\"alert\""));
    assert_eq!(status_of(&server, &id).await, "open");
}

async fn a_second_editor_approves_then_applies_and_the_flag_changes(server: Server) {
    let id = gated_request(&server, "launch").await;
    assert!(!server.enabled_in("checkout", "gated").await);
    let admin = server.sign_in("admin", PASSWORD).await;
    // The flag's page points to the waiting request.
    let flag = server
        .get("/projects/default/flags/checkout", Some(&admin))
        .await;
    assert!(flag.body.contains(&format!("/change-requests/{id}\"")));

    let ann = server.sign_in("ann", USER_PASSWORD).await;
    let page = server.get(&request_path(&id), Some(&ann)).await;
    assert!(page.body.contains(&format!("/{id}/approve\"")));
    assert!(!page.body.contains(&format!("/{id}/apply\"")), "not yet");
    let confirmation = server
        .get(&format!("{}/approve", request_path(&id)), Some(&ann))
        .await;
    assert!(confirmation.body.contains("Approve the change to"));
    assert!(confirmation.body.contains("Gated"));
    assert!(confirmation.body.contains("/enabled"));
    let reply = confirm(&server, &ann, &id, "approve", "lgtm").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(status_of(&server, &id).await, "approved");
    assert!(
        !server.enabled_in("checkout", "gated").await,
        "not applied yet"
    );
    let page = server.get(&reply.header("location"), Some(&ann)).await;
    assert!(
        page.body
            .contains("Approved: its author or you can now apply it.")
    );
    assert!(page.body.contains("“lgtm”"));
    assert!(page.body.contains(&format!("/{id}/apply\"")));

    let reply = confirm(&server, &ann, &id, "apply", "").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert!(server.enabled_in("checkout", "gated").await);
    assert_eq!(status_of(&server, &id).await, "applied");
    let page = server.get(&request_path(&id), Some(&ann)).await;
    assert!(page.body.contains("Applied as version"));
    assert!(!page.body.contains(&format!("/{id}/apply\"")), "once");
    // The audit log has the approval and the change, linked to the request.
    let audit = server
        .get("/projects/default/audit?actor=ann", Some(&ann))
        .await;
    assert!(audit.body.contains("change_request.approved"));
    assert!(audit.body.contains(&format!("/change-requests/{id}\"")));
}

async fn a_rejected_request_changes_nothing(server: Server) {
    let id = gated_request(&server, "launch").await;
    let ann = server.sign_in("ann", USER_PASSWORD).await;
    let reply = confirm(&server, &ann, &id, "reject", "not before the freeze").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(status_of(&server, &id).await, "rejected");
    let page = server.get(&request_path(&id), Some(&ann)).await;
    assert!(page.body.contains("“not before the freeze”"));
    for action in ["approve", "reject", "apply", "cancel"] {
        assert!(
            !page.body.contains(&format!("/{id}/{action}\"")),
            "{action}"
        );
    }
    // Its author cannot apply it either: the API says it is not approved.
    let ed = server.sign_in("ed", USER_PASSWORD).await;
    let confirmation = server
        .get(&format!("{}/apply", request_path(&id)), Some(&ed))
        .await;
    let reply = server
        .post_form(
            &format!("{}/apply", request_path(&id)),
            Some(&ed),
            &[("csrf", &csrf_of(&confirmation.body))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(reply.body.contains("Not done:"));
    assert!(!server.enabled_in("checkout", "gated").await);
}

async fn applying_a_request_the_flag_moved_past_is_refused_with_the_reason(server: Server) {
    let id = gated_request(&server, "launch").await;
    let ann = server.sign_in("ann", USER_PASSWORD).await;
    let reply = confirm(&server, &ann, &id, "approve", "").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    // Meanwhile an admin changes the flag directly, breaking the glass.
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/gated/flags/checkout",
            json!({"enabled": false, "offVariant": "on", "defaultServe": {"variant": "off"},
                   "breakGlass": true, "comment": "incident"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let page = server.get(&request_path(&id), Some(&ann)).await;
    assert!(
        page.body
            .contains("The flag changed since this request was made")
    );
    let reply = confirm(&server, &ann, &id, "apply", "").await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("edit the request against the current configuration"),
        "{}",
        reply.body
    );
    assert_eq!(status_of(&server, &id).await, "approved");
    assert!(!server.enabled_in("checkout", "gated").await);
}

async fn review_forms_without_the_sessions_csrf_token_write_nothing(server: Server) {
    let id = gated_request(&server, "launch").await;
    let ann = server.sign_in("ann", USER_PASSWORD).await;
    let path = format!("{}/approve", request_path(&id));
    let missing = server
        .post_form(&path, Some(&ann), &[("comment", "lgtm")])
        .await;
    assert!(missing.status.is_client_error(), "{}", missing.status);
    let forged = server
        .post_form(
            &path,
            Some(&ann),
            &[("csrf", "forged"), ("comment", "lgtm")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // Another person's token is no better.
    let ed = server.sign_in("ed", USER_PASSWORD).await;
    let eds = csrf_of(&server.get(&request_path(&id), Some(&ed)).await.body);
    let borrowed = server.post_form(&path, Some(&ann), &[("csrf", &eds)]).await;
    assert_eq!(borrowed.status, StatusCode::FORBIDDEN);
    assert_eq!(status_of(&server, &id).await, "open");
}

async fn text_in_requests_and_reviews_shows_as_text(server: Server) {
    let id = gated_request(&server, "<script>alert('cr')</script> & more").await;
    let ann = server.sign_in("ann", USER_PASSWORD).await;
    let reply = confirm(&server, &ann, &id, "reject", "<img src=x onerror=alert(1)>").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    for path in [
        request_path(&id),
        "/projects/default/change-requests".into(),
    ] {
        let page = server.get(&path, Some(&ann)).await;
        assert!(
            page.body
                .contains("&lt;script&gt;alert('cr')&lt;/script&gt; &amp; more"),
            "{path}"
        );
        assert!(!page.body.contains("<script>alert"), "{path}");
    }
    let page = server.get(&request_path(&id), Some(&ann)).await;
    assert!(page.body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!page.body.contains("<img"));
    let audit = server.get("/projects/default/audit", Some(&ann)).await;
    assert!(!audit.body.contains("<img"));
    assert!(!audit.body.contains("<script>alert"));
}

async fn the_list_of_requests_filters_by_state(server: Server) {
    let id = gated_request(&server, "launch").await;
    let vera = server.sign_in("vera", USER_PASSWORD).await;
    let all = server
        .get("/projects/default/change-requests", Some(&vera))
        .await;
    assert_eq!(all.status, StatusCode::OK);
    assert!(all.body.contains(&format!("/change-requests/{id}\"")));
    assert!(all.body.contains("<label for=\"status\">"));
    let open = server
        .get("/projects/default/change-requests?status=open", Some(&vera))
        .await;
    assert!(open.body.contains(&format!("/change-requests/{id}\"")));
    let applied = server
        .get(
            "/projects/default/change-requests?status=applied",
            Some(&vera),
        )
        .await;
    assert!(!applied.body.contains(&format!("/change-requests/{id}\"")));
    assert!(applied.body.contains("0 change requests"));
    let elsewhere = server
        .get(
            "/projects/default/change-requests?environment=staging",
            Some(&vera),
        )
        .await;
    assert!(!elsewhere.body.contains(&format!("/change-requests/{id}\"")));
    let bad = server
        .get(
            "/projects/default/change-requests?status=merged",
            Some(&vera),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("“merged” is no state"));
}

async fn governance_pages_carry_no_inline_script_or_style(server: Server) {
    let id = gated_request(&server, "launch").await;
    let admin = server.sign_in("admin", PASSWORD).await;
    let request = request_path(&id);
    for path in [
        "/projects/default/audit".to_string(),
        "/audit".to_string(),
        "/projects/default/change-requests".to_string(),
        request.clone(),
        format!("{request}/reject"),
        format!("{request}/cancel"),
    ] {
        let page = server.get(&path, Some(&admin)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        for script in page.body.split("<script").skip(1) {
            let tag = &script[..script.find('>').unwrap()];
            assert!(tag.contains(" src="), "{path}: an inline script");
        }
        let lower = page.body.to_ascii_lowercase();
        for inline in [" onclick=", " onload=", " onchange=", " style="] {
            assert!(!lower.contains(inline), "{path} has{inline}");
        }
        // The project's pages link each other from the frame.
        if path.starts_with("/projects/") {
            assert!(
                page.body
                    .contains("href=\"/projects/default/audit\">Audit</a>")
            );
            assert!(
                page.body
                    .contains("href=\"/projects/default/change-requests\">Change requests</a>")
            );
        }
    }
}
