//! The project's webhooks: the list, the form that adds one, and one webhook's page with its
//! delivery log, a test ping and deleting it.

use anchor_store::{ALL_EVENTS, DeliveryStatus, Role};
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

#[derive(Deserialize, Default)]
struct WebhookForm {
    csrf: String,
    name: String,
    url: String,
    format: String,
    /// The events ticked: `*` or event types.
    events: Vec<String>,
}

impl WebhookForm {
    /// Checkbox groups repeat one name, which `serde_urlencoded` cannot gather: the pairs are
    /// read one by one.
    fn from_pairs(pairs: Vec<(String, String)>) -> WebhookForm {
        let mut form = WebhookForm::default();
        for (name, value) in pairs {
            match name.as_str() {
                "csrf" => form.csrf = value,
                "name" => form.name = value,
                "url" => form.url = value,
                "format" => form.format = value,
                "events" => form.events.push(value),
                _ => {}
            }
        }
        form
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

fn new_webhook_page(
    signed: &Signed,
    project: &str,
    form: &WebhookForm,
    problems: &Problems,
) -> Markup {
    let none = Vec::new();
    let problems_of = |field: &str| problems.get(field).unwrap_or(&none);
    let invalid = |field: &str| problems.contains_key(field).then_some("true");
    let all = form.events.is_empty() || form.events.iter().any(|e| e == ALL_EVENTS);
    settings_page(
        signed,
        project,
        "New webhook",
        "webhooks",
        html! {
            h2 { "New webhook" }
            (field_problems(problems_of("form")))
            form.stack method="post" action={ "/projects/" (project) "/settings/webhooks" } novalidate {
                input type="hidden" name="csrf" value=(signed.csrf);
                label for="name" { "Name" }
                input #name name="name" value=(form.name) required aria-invalid=[invalid("name")];
                (field_problems(problems_of("name")))
                label for="url" { "URL" }
                input #url name="url" type="url" value=(form.url) required aria-describedby="url-help"
                    aria-invalid=[invalid("url")];
                small #url-help { "Events are POSTed here, signed with the secret shown once after creating." }
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
                div.actions {
                    button.primary type="submit" { "Create webhook" }
                    a href={ "/projects/" (project) "/settings/webhooks" } { "Cancel" }
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
        new_webhook_page(&signed, &project, &WebhookForm::default(), &Problems::new()),
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
    // Everything, when "every event" is ticked along with single ones.
    let events = if form.events.iter().any(|e| e == ALL_EVENTS) {
        vec![ALL_EVENTS.to_string()]
    } else {
        form.events.clone()
    };
    let created = webhook_api::create_webhook(
        State(state.clone()),
        signed.caller.clone(),
        Path(project.clone()),
        Body::new(WebhookRequest {
            name: Some(form.name.trim().to_string()),
            url: Some(form.url.trim().to_string()),
            events: Some(events),
            format: Some(form.format.clone()).filter(|f| !f.is_empty()),
            enabled: Some(true),
        }),
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
        new_webhook_page(&signed, &project, &form, &problems),
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
                @if let Some(notice) = query.notice.as_deref().and_then(notice_text) {
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
