//! The project's webhooks: the list, the form that adds one, and one webhook's page with its
//! delivery log, a test ping, turning it off and on, the form that edits it and deleting it.
//! Edits go through the API's `PATCH` handler, so its validation and audit entries are the
//! API's, and its problems are shown next to the fields they concern.

use anchor_store::{ALL_EVENTS, DeliveryStatus, Role, Webhook};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::{NoticeQuery, Problems, notice_text, problems_from, secret_page, settings_page};
use crate::AppState;
use crate::api::Body;
use crate::dashboard::{
    Confirmation, CsrfForm, Signed, confirmation, encode, error_page, field_problems, form_caller,
    html_response, time,
};
use crate::error::ApiError;
use crate::webhooks::events;
use crate::webhooks::routes::{self as webhook_api, DeliveryQuery, WebhookRequest};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/projects/{project}/settings/webhooks",
            get(webhooks_page).post(create_webhook),
        )
        .route("/projects/{project}/settings/new-webhook", get(new_webhook))
        .route(
            "/projects/{project}/settings/webhooks/{id}",
            get(webhook_page),
        )
        .route(
            "/projects/{project}/settings/webhooks/{id}/test",
            post(test_webhook),
        )
        .route(
            "/projects/{project}/settings/webhooks/{id}/edit",
            get(edit_webhook).post(save_webhook),
        )
        .route(
            "/projects/{project}/settings/webhooks/{id}/enabled",
            post(set_enabled),
        )
        .route(
            "/projects/{project}/settings/webhooks/{id}/delete",
            get(confirm_delete_webhook).post(delete_webhook),
        )
}

async fn webhooks_page(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> Response {
    let shown = async {
        let role = signed
            .caller
            .require(&state, &project, Role::Viewer)
            .await?;
        let axum::Json(webhooks) = webhook_api::list_webhooks(
            State(state.clone()),
            signed.caller.clone(),
            Path(project.clone()),
        )
        .await?;
        Ok::<_, ApiError>((role, webhooks))
    };
    let (role, webhooks) = match shown.await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    html_response(
        StatusCode::OK,
        settings_page(
            &signed,
            &project,
            "Webhooks",
            "webhooks",
            html! {
                @if let Some(notice) = query.notice.as_deref().and_then(notice_text) {
                    p.notice role="status" { (notice) }
                }
                div.heading {
                    h2 { "Webhooks" }
                    @if role >= Role::Admin {
                        a.button.primary href={ "/projects/" (project) "/settings/new-webhook" } { "New webhook" }
                    }
                }
                table.webhooks {
                    thead {
                        tr {
                            th scope="col" { "Name" }
                            th scope="col" { "URL" }
                            th scope="col" { "Events" }
                            th scope="col" { "Format" }
                            th scope="col" { "State" }
                        }
                    }
                    tbody {
                        @for w in &webhooks {
                            tr {
                                td { a href={ "/projects/" (project) "/settings/webhooks/" (w.id) } { (w.name) } }
                                td { code { (w.url) } }
                                td { (events_text(&w.events)) }
                                td { (w.format.as_str()) }
                                td { @if w.enabled { span.b.on { "enabled" } } @else { span.b.off { "disabled" } } }
                            }
                        }
                    }
                }
                @if webhooks.is_empty() { p.small { "No webhooks yet." } }
            },
        ),
    )
}

#[derive(Default)]
struct WebhookForm {
    csrf: String,
    name: String,
    url: String,
    format: String,
    /// The events ticked: `*` or event types.
    events: Vec<String>,
    /// Ticked (only the edit form has the box).
    enabled: bool,
}

impl WebhookForm {
    /// A new webhook's form: every event, enabled.
    fn blank() -> WebhookForm {
        WebhookForm {
            events: vec![ALL_EVENTS.to_string()],
            enabled: true,
            ..WebhookForm::default()
        }
    }

    /// The edit form of `webhook`, as it is.
    fn of(webhook: &Webhook) -> WebhookForm {
        WebhookForm {
            csrf: String::new(),
            name: webhook.name.clone(),
            url: webhook.url.clone(),
            format: webhook.format.as_str().to_string(),
            events: webhook.events.clone(),
            enabled: webhook.enabled,
        }
    }

    /// Checkbox groups repeat one name, which `serde_urlencoded` cannot gather: the pairs are
    /// read one by one. An unticked box sends nothing, so `enabled` is false unless sent.
    fn from_pairs(pairs: Vec<(String, String)>) -> WebhookForm {
        let mut form = WebhookForm::default();
        for (name, value) in pairs {
            match name.as_str() {
                "csrf" => form.csrf = value,
                "name" => form.name = value,
                "url" => form.url = value,
                "format" => form.format = value,
                "events" => form.events.push(value),
                "enabled" => form.enabled = value == "true",
                _ => {}
            }
        }
        form
    }

    /// The API's request for every field the form holds.
    fn request(&self, enabled: bool) -> WebhookRequest {
        // Everything, when "every event" is ticked along with single ones.
        let events = if self.events.iter().any(|e| e == ALL_EVENTS) {
            vec![ALL_EVENTS.to_string()]
        } else {
            self.events.clone()
        };
        WebhookRequest {
            name: Some(self.name.trim().to_string()),
            url: Some(self.url.trim().to_string()),
            events: Some(events),
            format: Some(self.format.clone()).filter(|f| !f.is_empty()),
            enabled: Some(enabled),
        }
    }
}

fn webhook_field(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "name" => "name",
        "url" => "url",
        "events" => "events",
        "format" => "format",
        _ => "form",
    }
}

/// What the webhook form is for: adding one, or editing the one with this id.
enum FormFor<'a> {
    New,
    Edit(&'a Webhook),
}

/// The page with the form that adds a webhook or edits one, with `problems` next to their
/// fields.
fn webhook_form_page(
    signed: &Signed,
    project: &str,
    purpose: FormFor<'_>,
    form: &WebhookForm,
    problems: &Problems,
) -> Markup {
    let none = Vec::new();
    let problems_of = |field: &str| problems.get(field).unwrap_or(&none);
    let invalid = |field: &str| problems.contains_key(field).then_some("true");
    let all = form.events.iter().any(|e| e == ALL_EVENTS);
    let list = format!("/projects/{}/settings/webhooks", encode(project));
    let (title, action, back, url_help, button) = match purpose {
        FormFor::New => (
            "New webhook".to_string(),
            list.clone(),
            list.clone(),
            "Events are POSTed here, signed with the secret shown once after creating.",
            "Create webhook",
        ),
        FormFor::Edit(webhook) => {
            let page = format!("{list}/{}", encode(&webhook.id));
            (
                format!("Edit webhook {}", webhook.name),
                format!("{page}/edit"),
                page,
                "Events are POSTed here, signed with the webhook's secret, which stays as it is.",
                "Save webhook",
            )
        }
    };
    settings_page(
        signed,
        project,
        &title,
        "webhooks",
        html! {
            @if let FormFor::Edit(webhook) = purpose {
                p.crumbs {
                    a href=(list) { "Webhooks" } " / "
                    a href=(back) { (webhook.name) } " / "
                }
            }
            h2 { (title) }
            (field_problems(problems_of("form")))
            form.stack method="post" action=(action) novalidate {
                input type="hidden" name="csrf" value=(signed.csrf);
                label for="name" { "Name" }
                input #name name="name" value=(form.name) required aria-invalid=[invalid("name")];
                (field_problems(problems_of("name")))
                label for="url" { "URL" }
                input #url name="url" type="url" value=(form.url) required aria-describedby="url-help"
                    aria-invalid=[invalid("url")];
                small #url-help { (url_help) }
                (field_problems(problems_of("url")))
                fieldset {
                    legend { "Events" }
                    label.check for="event-all" {
                        input #event-all type="checkbox" name="events" value=(ALL_EVENTS) checked[all];
                        " every event, including those added later"
                    }
                    @for (i, event) in events::ALL.iter().enumerate() {
                        label.check for={ "event-" (i) } {
                            input id={ "event-" (i) } type="checkbox" name="events" value=(event)
                                checked[!all && form.events.iter().any(|e| e == event)];
                            " " code { (event) }
                        }
                    }
                }
                (field_problems(problems_of("events")))
                label for="format" { "Format" }
                select #format name="format" {
                    option value="json" selected[form.format != "slack"] { "JSON (signed)" }
                    option value="slack" selected[form.format == "slack"] { "Slack incoming webhook" }
                }
                (field_problems(problems_of("format")))
                @if let FormFor::Edit(_) = purpose {
                    label.check for="enabled" {
                        input #enabled type="checkbox" name="enabled" value="true" checked[form.enabled];
                        " enabled: a disabled webhook receives no events, only test pings"
                    }
                }
                div.actions {
                    button.primary type="submit" { (button) }
                    a href=(back) { "Cancel" }
                }
            }
        },
    )
}

async fn new_webhook(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
) -> Response {
    if let Err(e) = signed.caller.require(&state, &project, Role::Admin).await {
        return error_page(e);
    }
    html_response(
        StatusCode::OK,
        webhook_form_page(
            &signed,
            &project,
            FormFor::New,
            &WebhookForm::blank(),
            &Problems::new(),
        ),
    )
}

/// Creates the webhook through the API's handler and shows its signing secret, once.
async fn create_webhook(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    let form = WebhookForm::from_pairs(pairs);
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let created = webhook_api::create_webhook(
        State(state.clone()),
        signed.caller.clone(),
        Path(project.clone()),
        Body::new(form.request(true)),
    )
    .await;
    let problems = match created {
        Ok(response) => {
            let (_, body) = response.into_parts();
            let bytes = match axum::body::to_bytes(body, 1 << 20).await {
                Ok(bytes) => bytes,
                Err(e) => return error_page(ApiError::Internal(e.to_string())),
            };
            let created: serde_json::Value = match serde_json::from_slice(&bytes) {
                Ok(value) => value,
                Err(e) => return error_page(ApiError::Internal(e.to_string())),
            };
            let id = created["id"].as_str().unwrap_or_default();
            let secret = created["secret"].as_str().unwrap_or_default();
            let what = html! {
                "Deliveries to " code { (form.url.trim()) } " carry "
                code { "X-Anchor-Signature" } ", an HMAC-SHA256 of " code { "<timestamp>.<body>" }
                " with this secret. "
                a href={ "/projects/" (project) "/settings/webhooks/" (id) } { "See its delivery log" } "."
            };
            return secret_page(
                &signed,
                &project,
                "Webhook created",
                what,
                secret,
                &format!("/projects/{}/settings/webhooks", encode(&project)),
            );
        }
        Err(e) => match problems_from(e, webhook_field) {
            Ok(problems) => problems,
            Err(e) => return error_page(e),
        },
    };
    html_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        webhook_form_page(&signed, &project, FormFor::New, &form, &problems),
    )
}

/// The events a webhook receives, in words.
fn events_text(events: &[String]) -> String {
    if events.iter().any(|e| e == ALL_EVENTS) {
        "every event".to_string()
    } else {
        events.join(", ")
    }
}

fn status_class(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Succeeded => "b on",
        DeliveryStatus::Failed => "b off",
        DeliveryStatus::Pending => "b stale",
    }
}

async fn webhook_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, id)): Path<(String, String)>,
    Query(query): Query<NoticeQuery>,
) -> Response {
    let shown = async {
        let role = signed
            .caller
            .require(&state, &project, Role::Viewer)
            .await?;
        let axum::Json(webhook) = webhook_api::get_webhook(
            State(state.clone()),
            signed.caller.clone(),
            Path((project.clone(), id.clone())),
        )
        .await?;
        let axum::Json(deliveries) = webhook_api::list_deliveries(
            State(state.clone()),
            signed.caller.clone(),
            Path((project.clone(), id.clone())),
            Ok(Query(DeliveryQuery { limit: Some(100) })),
        )
        .await?;
        Ok::<_, ApiError>((role, webhook, deliveries))
    };
    let (role, webhook, deliveries) = match shown.await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    let title = format!("Webhook {}", webhook.name);
    html_response(
        StatusCode::OK,
        settings_page(
            &signed,
            &project,
            &title,
            "webhooks",
            html! {
                @if let Some(notice) = query.notice.as_deref().and_then(webhook_notice) {
                    p.notice role="status" { (notice) }
                }
                p.crumbs { a href={ "/projects/" (project) "/settings/webhooks" } { "Webhooks" } " / " }
                div.heading {
                    h2 { "Webhook " (webhook.name) }
                    @if role >= Role::Admin {
                        div.actions {
                            form method="post" action={ "/projects/" (project) "/settings/webhooks/" (webhook.id) "/test" } {
                                input type="hidden" name="csrf" value=(signed.csrf);
                                button type="submit" { "Send a test ping" }
                            }
                            form method="post" action={ "/projects/" (project) "/settings/webhooks/" (webhook.id) "/enabled" } {
                                input type="hidden" name="csrf" value=(signed.csrf);
                                input type="hidden" name="enabled" value=(!webhook.enabled);
                                button type="submit" { @if webhook.enabled { "Disable" } @else { "Enable" } }
                            }
                            a.button href={ "/projects/" (project) "/settings/webhooks/" (webhook.id) "/edit" } { "Edit" }
                            a.button.danger href={ "/projects/" (project) "/settings/webhooks/" (webhook.id) "/delete" } { "Delete" }
                        }
                    }
                }
                p {
                    code { (webhook.url) } " · " (webhook.format.as_str()) " · "
                    (events_text(&webhook.events)) " · "
                    @if webhook.enabled { "enabled" } @else { "disabled" }
                }
                h3.gap { "Delivery log" }
                p.small { "Newest first; kept for 30 days, at most 1,000 per webhook." }
                table.deliveries {
                    thead {
                        tr {
                            th scope="col" { "Time" }
                            th scope="col" { "Event" }
                            th scope="col" { "Status" }
                            th scope="col" { "HTTP" }
                            th scope="col" { "Attempts" }
                            th scope="col" { "Error" }
                            th scope="col" { "Next attempt" }
                        }
                    }
                    tbody {
                        @for d in &deliveries {
                            tr {
                                td.small { (time(d.created_at)) }
                                td { code { (d.event_type) } }
                                td { span class=(status_class(d.status)) { (d.status.as_str()) } }
                                td { @if let Some(code) = d.last_http_status { (code) } @else { "—" } }
                                td { (d.attempts) }
                                td.d { @if let Some(error) = &d.last_error { (error) } }
                                td.small { @if let Some(at) = d.next_attempt_at { (time(at)) } }
                            }
                        }
                    }
                }
                @if deliveries.is_empty() { p.small { "Nothing sent yet." } }
            },
        ),
    )
}

async fn test_webhook(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match webhook_api::test_webhook(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), id.clone())),
    )
    .await
    {
        Ok(_) => Redirect::to(&format!(
            "/projects/{}/settings/webhooks/{}?notice=ping",
            encode(&project),
            encode(&id)
        ))
        .into_response(),
        Err(e) => error_page(e),
    }
}

/// The webhook page's notices, and the settings' own.
fn webhook_notice(notice: &str) -> Option<&'static str> {
    match notice {
        "webhook-saved" => Some("The webhook was saved."),
        "webhook-enabled" => Some("The webhook is enabled: it receives its events again."),
        "webhook-disabled" => Some("The webhook is disabled: it receives no events until enabled."),
        other => notice_text(other),
    }
}

fn webhook_path(project: &str, id: &str) -> String {
    format!(
        "/projects/{}/settings/webhooks/{}",
        encode(project),
        encode(id)
    )
}

/// The webhook of the project, as an admin sees it (the whole URL).
async fn admins_webhook(
    state: &AppState,
    signed: &Signed,
    project: &str,
    id: &str,
) -> Result<Webhook, ApiError> {
    signed.caller.require(state, project, Role::Admin).await?;
    let axum::Json(webhook) = webhook_api::get_webhook(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.to_string(), id.to_string())),
    )
    .await?;
    Ok(webhook)
}

async fn edit_webhook(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, id)): Path<(String, String)>,
) -> Response {
    match admins_webhook(&state, &signed, &project, &id).await {
        Ok(webhook) => html_response(
            StatusCode::OK,
            webhook_form_page(
                &signed,
                &project,
                FormFor::Edit(&webhook),
                &WebhookForm::of(&webhook),
                &Problems::new(),
            ),
        ),
        Err(e) => error_page(e),
    }
}

/// Saves the edit form through the API's `PATCH` handler; its problems go back onto the form.
async fn save_webhook(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    let form = WebhookForm::from_pairs(pairs);
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let webhook = match admins_webhook(&state, &signed, &project, &id).await {
        Ok(webhook) => webhook,
        Err(e) => return error_page(e),
    };
    let saved = webhook_api::update_webhook(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), id.clone())),
        Body::new(form.request(form.enabled)),
    )
    .await;
    let problems = match saved {
        Ok(_) => {
            return Redirect::to(&format!(
                "{}?notice=webhook-saved",
                webhook_path(&project, &id)
            ))
            .into_response();
        }
        Err(e) => match problems_from(e, webhook_field) {
            Ok(problems) => problems,
            Err(e) => return error_page(e),
        },
    };
    html_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        webhook_form_page(&signed, &project, FormFor::Edit(&webhook), &form, &problems),
    )
}

#[derive(Deserialize)]
struct EnabledForm {
    csrf: String,
    enabled: String,
}

/// Turns a webhook off or on, through the API's `PATCH` handler with that field alone.
async fn set_enabled(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<EnabledForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let enabled = match form.enabled.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return error_page(ApiError::BadRequest(format!(
                "`enabled` must be `true` or `false`, not `{other}`"
            )));
        }
    };
    let saved = webhook_api::update_webhook(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), id.clone())),
        Body::new(WebhookRequest {
            name: None,
            url: None,
            events: None,
            format: None,
            enabled: Some(enabled),
        }),
    )
    .await;
    match saved {
        Ok(_) => Redirect::to(&format!(
            "{}?notice={}",
            webhook_path(&project, &id),
            if enabled {
                "webhook-enabled"
            } else {
                "webhook-disabled"
            }
        ))
        .into_response(),
        Err(e) => error_page(e),
    }
}

async fn confirm_delete_webhook(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, id)): Path<(String, String)>,
) -> Response {
    let shown = async {
        signed.caller.require(&state, &project, Role::Admin).await?;
        let axum::Json(webhook) = webhook_api::get_webhook(
            State(state.clone()),
            signed.caller.clone(),
            Path((project.clone(), id.clone())),
        )
        .await?;
        Ok::<_, ApiError>(webhook)
    };
    let webhook = match shown.await {
        Ok(webhook) => webhook,
        Err(e) => return error_page(e),
    };
    html_response(
        StatusCode::OK,
        confirmation(
            &signed,
            &project,
            Confirmation {
                title: &format!("Delete webhook {}", webhook.name),
                crumbs: None,
                question: html! { "Delete the webhook " strong { (webhook.name) } "?" },
                consequence: html! {
                    p { "Nothing more is sent to " code { (webhook.url) } ", and its delivery log is deleted with it." }
                },
                problems: &[],
                action: None,
                fields: html! {},
                button: html! { "Delete " (webhook.name) },
                primary: false,
                danger: true,
                back: format!("/projects/{project}/settings/webhooks/{}", webhook.id),
                back_words: "Cancel",
            },
        ),
    )
}

async fn delete_webhook(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match webhook_api::delete_webhook(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), id)),
    )
    .await
    {
        Ok(_) => Redirect::to(&format!(
            "/projects/{}/settings/webhooks?notice=webhook-deleted",
            encode(&project)
        ))
        .into_response(),
        Err(e) => error_page(e),
    }
}
