//! A project's settings: its environments, its SDK keys and the signed-in person's access
//! tokens, and its webhooks with their delivery log.
//!
//! As elsewhere in the dashboard, every write calls the management API's own handler, so the
//! roles (environments, keys and webhooks are for project admins), the validation and the
//! audit entries are the API's. A secret (an SDK key, an access token, a webhook's signing
//! secret) is shown once, in the answer to the form that made it, never in a URL and never
//! again; that answer, like every dashboard page, is `no-store`.

use std::collections::HashMap;

use anchor_store::{
    ALL_EVENTS, DeliveryStatus, Environment, NewEnvironment, Role, SdkKeyKind, SdkKeyRecord,
};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    CsrfForm, Frame, Signed, encode, error_page, field_problems, form_caller, html_response, page,
    time,
};
use crate::AppState;
use crate::api::{self, Body, SdkKeyRequest, TokenRequest};
use crate::error::ApiError;
use crate::webhooks::events;
use crate::webhooks::routes::{self as webhook_api, DeliveryQuery, WebhookRequest};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{project}/settings", get(settings_home))
        .route(
            "/projects/{project}/settings/environments",
            get(environments_page).post(create_environment),
        )
        .route(
            "/projects/{project}/settings/keys",
            get(keys_page).post(create_key),
        )
        .route(
            "/projects/{project}/settings/keys/{environment}/rotate",
            get(confirm_rotate).post(rotate_key),
        )
        .route(
            "/projects/{project}/settings/keys/{environment}/{id}/revoke",
            get(confirm_revoke_key).post(revoke_key),
        )
        .route("/projects/{project}/settings/tokens", post(create_token))
        .route(
            "/projects/{project}/settings/tokens/{id}/revoke",
            get(confirm_revoke_token).post(revoke_token),
        )
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

/// Form problems by field name; `form` for those that belong to no field.
type Problems = HashMap<&'static str, Vec<String>>;

#[derive(Deserialize, Default)]
struct NoticeQuery {
    notice: Option<String>,
}

fn notice_text(notice: &str) -> Option<&'static str> {
    match notice {
        "environment" => Some("The environment was added; every flag starts turned off there."),
        "revoked" => Some("The key was revoked: it stops working at once."),
        "token-revoked" => Some("The token was revoked."),
        "webhook-deleted" => Some("The webhook and its delivery log were deleted."),
        "ping" => Some("A ping is on its way: it appears in the delivery log."),
        _ => None,
    }
}

/// The settings' own navigation, on each of their pages.
fn tabs(project: &str, current: &str) -> Markup {
    let tab = |path: &str, label: &str| {
        let href = format!("/projects/{project}/settings/{path}");
        html! {
            @if path == current {
                a aria-current="page" href=(href) { (label) }
            } @else {
                a href=(href) { (label) }
            }
        }
    };
    html! {
        nav.tabs aria-label="Settings" {
            (tab("environments", "Environments"))
            (tab("keys", "API keys"))
            (tab("webhooks", "Webhooks"))
        }
    }
}

fn settings_page(signed: &Signed, project: &str, title: &str, tab: &str, body: Markup) -> Markup {
    page(
        &Frame {
            title,
            signed: Some(signed),
            project: Some(project),
        },
        html! {
            h1 { "Settings" }
            (tabs(project, tab))
            (body)
        },
    )
}

/// The problems of an API answer by field, through `field_of`; other errors are the
/// caller's to show.
fn problems_from(
    error: ApiError,
    field_of: impl Fn(&str) -> &'static str,
) -> Result<Problems, ApiError> {
    let mut problems = Problems::new();
    match error {
        ApiError::Invalid(diagnostics) => {
            for d in diagnostics {
                problems
                    .entry(field_of(&d.path))
                    .or_default()
                    .push(d.message);
            }
        }
        ApiError::Conflict(message) => problems.entry(field_of("/key")).or_default().push(message),
        other => return Err(other),
    }
    Ok(problems)
}

/// The page that shows a new secret, once.
fn secret_page(
    signed: &Signed,
    project: &str,
    title: &str,
    what: Markup,
    secret: &str,
    back: &str,
) -> Response {
    let mut response = html_response(
        StatusCode::OK,
        page(
            &Frame {
                title,
                signed: Some(signed),
                project: Some(project),
            },
            html! {
                section.narrow {
                    h1 { (title) }
                    p { (what) }
                    p.warning role="alert" {
                        strong { "Copy it now: it is shown only this once." }
                        " Only its hash is kept, so nobody can show it again; if it is lost, make a new one."
                    }
                    label for="secret" { "Secret" }
                    input.secret #secret readonly value=(secret) autocomplete="off" spellcheck="false";
                    div.actions { a.button href=(back) { "Done" } }
                }
            },
        ),
    );
    // No cache, however it is configured, may keep this answer.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, private"),
    );
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

async fn settings_home(Path(project): Path<String>) -> Redirect {
    Redirect::to(&format!(
        "/projects/{}/settings/environments",
        encode(&project)
    ))
}

// ---- environments ----

#[derive(Deserialize, Default)]
struct EnvironmentForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    name: String,
    requires_approval: Option<String>,
    requires_comment: Option<String>,
}

fn environments_markup(
    signed: &Signed,
    project: &str,
    role: Role,
    environments: &[Environment],
    form: &EnvironmentForm,
    problems: &Problems,
    notice: Option<&str>,
) -> Markup {
    let none = Vec::new();
    let problems_of = |field: &str| problems.get(field).unwrap_or(&none);
    let invalid = |field: &str| problems.contains_key(field).then_some("true");
    settings_page(
        signed,
        project,
        "Environments",
        "environments",
        html! {
            @if let Some(notice) = notice.and_then(notice_text) {
                p.notice role="status" { (notice) }
            }
            h2 { "Environments" }
            table {
                thead {
                    tr {
                        th scope="col" { "Order" }
                        th scope="col" { "Key" }
                        th scope="col" { "Name" }
                        th scope="col" { "Changes" }
                        th scope="col" { "Created" }
                    }
                }
                tbody {
                    @for e in environments {
                        tr {
                            td { (e.position + 1) }
                            td { code { (e.key) } }
                            td { (e.name) }
                            td {
                                @if e.requires_approval { span.b.stale { "need approval" } " " }
                                @if e.requires_comment { span.b { "need a comment" } }
                                @if !e.requires_approval && !e.requires_comment { span.small { "direct" } }
                            }
                            td.small { (time(e.created_at)) }
                        }
                    }
                }
            }
            @if role >= Role::Admin {
                h2 { "New environment" }
                (field_problems(problems_of("form")))
                form.stack method="post" action={ "/projects/" (project) "/settings/environments" } novalidate {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    label for="key" { "Key" }
                    input #key name="key" value=(form.key) required aria-describedby="key-help"
                        aria-invalid=[invalid("key")];
                    small #key-help { "Letters, digits, '-', '_' and '.'; how SDK keys and the API name it." }
                    (field_problems(problems_of("key")))
                    label for="name" { "Name" }
                    input #name name="name" value=(form.name) required aria-invalid=[invalid("name")];
                    (field_problems(problems_of("name")))
                    label.check for="requires_approval" {
                        input #requires_approval type="checkbox" name="requires_approval" value="1" checked[form.requires_approval.is_some()];
                        " Editors' changes wait for approval (change requests)"
                    }
                    label.check for="requires_comment" {
                        input #requires_comment type="checkbox" name="requires_comment" value="1" checked[form.requires_comment.is_some()];
                        " Every change needs a comment"
                    }
                    div.actions { button.primary type="submit" { "Add environment" } }
                }
            }
        },
    )
}

async fn environments_page(
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
        let axum::Json(environments) = api::list_environments(
            State(state.clone()),
            signed.caller.clone(),
            Path(project.clone()),
        )
        .await?;
        Ok::<_, ApiError>((role, environments))
    };
    match shown.await {
        Ok((role, environments)) => html_response(
            StatusCode::OK,
            environments_markup(
                &signed,
                &project,
                role,
                &environments,
                &EnvironmentForm::default(),
                &Problems::new(),
                query.notice.as_deref(),
            ),
        ),
        Err(e) => error_page(e),
    }
}

fn environment_field(path: &str) -> &'static str {
    match path {
        "/key" => "key",
        "/name" => "name",
        _ => "form",
    }
}

async fn create_environment(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<EnvironmentForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let role = match signed.caller.require(&state, &project, Role::Admin).await {
        Ok(role) => role,
        Err(e) => return error_page(e),
    };
    let mut problems = Problems::new();
    if form.name.trim().is_empty() {
        problems
            .entry("name")
            .or_default()
            .push("give the environment a name".into());
    } else {
        let created = api::create_environment(
            State(state.clone()),
            signed.caller.clone(),
            Path(project.clone()),
            Body::new(NewEnvironment {
                key: form.key.trim().to_string(),
                name: form.name.trim().to_string(),
                requires_approval: form.requires_approval.is_some(),
                requires_comment: form.requires_comment.is_some(),
            }),
        )
        .await;
        match created {
            Ok(_) => {
                if let Err(e) = state
                    .snapshots
                    .refresh_project(state.store.as_ref(), &project)
                    .await
                {
                    tracing::warn!(error = %e, %project, "cannot rebuild snapshots after a write");
                }
                return Redirect::to(&format!(
                    "/projects/{}/settings/environments?notice=environment",
                    encode(&project)
                ))
                .into_response();
            }
            Err(e) => match problems_from(e, environment_field) {
                Ok(found) => problems = found,
                Err(e) => return error_page(e),
            },
        }
    }
    match state.store.environments(&project).await {
        Ok(environments) => html_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            environments_markup(
                &signed,
                &project,
                role,
                &environments,
                &form,
                &problems,
                None,
            ),
        ),
        Err(e) => error_page(e.into()),
    }
}

// ---- SDK keys and access tokens ----

fn key_state(key: &SdkKeyRecord, now: i64) -> &'static str {
    if key.revoked {
        "revoked"
    } else if key.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else if key.expires_at.is_some() {
        "rotating out"
    } else {
        "active"
    }
}

#[derive(Deserialize, Default)]
struct KeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize, Default)]
struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    expires_in_days: String,
}

async fn keys_markup(
    state: &AppState,
    signed: &Signed,
    project: &str,
    token_form: &TokenForm,
    problems: &Problems,
    notice: Option<&str>,
) -> Result<Markup, ApiError> {
    let role = signed.caller.require(state, project, Role::Viewer).await?;
    let environments = state.store.environments(project).await?;
    let mut keys = Vec::new();
    for env in &environments {
        let axum::Json(of_env) = api::list_sdk_keys(
            State(state.clone()),
            signed.caller.clone(),
            Path((project.to_string(), env.key.clone())),
        )
        .await?;
        keys.extend(of_env.into_iter().map(|k| (env, k)));
    }
    let axum::Json(tokens) = api::list_tokens(State(state.clone()), signed.caller.clone()).await?;
    let now = state.now_ms();
    let none = Vec::new();
    let problems_of = |field: &str| problems.get(field).unwrap_or(&none);
    let invalid = |field: &str| problems.contains_key(field).then_some("true");
    Ok(settings_page(
        signed,
        project,
        "API keys",
        "keys",
        html! {
            @if let Some(notice) = notice.and_then(notice_text) {
                p.notice role="status" { (notice) }
            }
            h2 { "SDK keys" }
            p.small { "Server keys read the whole configuration; client keys only evaluations, never rules or segments. Only the first characters of each key are kept in clear." }
            table.keys {
                thead {
                    tr {
                        th scope="col" { "Environment" }
                        th scope="col" { "Kind" }
                        th scope="col" { "Key" }
                        th scope="col" { "Created" }
                        th scope="col" { "State" }
                        @if role >= Role::Admin { th scope="col" { span.sr { "Actions" } } }
                    }
                }
                tbody {
                    @for (env, key) in &keys {
                        @let key_state = key_state(key, now);
                        tr {
                            td { (env.name) }
                            td { (key.kind.as_str()) }
                            td { code { (key.prefix) "…" } }
                            td.small { (time(key.created_at)) }
                            td {
                                (key_state)
                                @if let (Some(at), "rotating out") = (key.expires_at, key_state) {
                                    span.small { " until " (time(at)) }
                                }
                            }
                            @if role >= Role::Admin {
                                td {
                                    @if key_state == "active" || key_state == "rotating out" {
                                        a href={ "/projects/" (project) "/settings/keys/" (env.key) "/" (key.id) "/revoke" } { "Revoke" }
                                    }
                                    @if key_state == "active" {
                                        " · "
                                        a href={ "/projects/" (project) "/settings/keys/" (env.key) "/rotate?kind=" (key.kind.as_str()) } { "Rotate" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if keys.is_empty() { p.small { "No SDK keys yet." } }
            @if role >= Role::Admin {
                h3.gap { "New SDK key" }
                form.filters method="post" action={ "/projects/" (project) "/settings/keys" } {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    label for="key-environment" { "Environment" }
                    select #key-environment name="environment" {
                        @for env in &environments { option value=(env.key) { (env.name) } }
                    }
                    label for="key-kind" { "Kind" }
                    select #key-kind name="kind" {
                        option value="server" { "server" }
                        option value="client" { "client" }
                    }
                    button.primary type="submit" { "Create SDK key" }
                }
            }
            h2 { "Your access tokens" }
            p.small { "Personal tokens for the API, the CLI and the MCP server; they act as you, with at most the role they were given." }
            table.tokens {
                thead {
                    tr {
                        th scope="col" { "Name" }
                        th scope="col" { "Role" }
                        th scope="col" { "Created" }
                        th scope="col" { "Expires" }
                        th scope="col" { "State" }
                        th scope="col" { span.sr { "Actions" } }
                    }
                }
                tbody {
                    @for token in &tokens {
                        @let expired = token.expires_at.is_some_and(|at| at <= now);
                        tr {
                            td { (token.name) }
                            td { (token.role.as_str()) }
                            td.small { (time(token.created_at)) }
                            td.small { @match token.expires_at { Some(at) => (time(at)), None => "never" } }
                            td { @if token.revoked { "revoked" } @else if expired { "expired" } @else { "active" } }
                            td {
                                @if !token.revoked && !expired {
                                    a href={ "/projects/" (project) "/settings/tokens/" (token.id) "/revoke" } { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
            @if tokens.is_empty() { p.small { "You have no access tokens yet." } }
            h3.gap { "New access token" }
            (field_problems(problems_of("form")))
            form.stack method="post" action={ "/projects/" (project) "/settings/tokens" } novalidate {
                input type="hidden" name="csrf" value=(signed.csrf);
                label for="token-name" { "Name" }
                input #token-name name="name" value=(token_form.name) required aria-invalid=[invalid("name")];
                (field_problems(problems_of("name")))
                label for="token-role" { "Role" }
                select #token-role name="role" aria-invalid=[invalid("role")] {
                    @for r in ["viewer", "editor", "admin"] {
                        option value=(r) selected[r == token_form.role] { (r) }
                    }
                }
                (field_problems(problems_of("role")))
                label for="token-expiry" { "Expires after (days)" }
                input #token-expiry name="expires_in_days" value=(token_form.expires_in_days) inputmode="numeric"
                    aria-describedby="token-expiry-help" aria-invalid=[invalid("expires_in_days")];
                small #token-expiry-help { "Leave empty for a token that does not expire." }
                (field_problems(problems_of("expires_in_days")))
                div.actions { button.primary type="submit" { "Create access token" } }
            }
        },
    ))
}

async fn keys_page(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> Response {
    match keys_markup(
        &state,
        &signed,
        &project,
        &TokenForm::default(),
        &Problems::new(),
        query.notice.as_deref(),
    )
    .await
    {
        Ok(markup) => html_response(StatusCode::OK, markup),
        Err(e) => error_page(e),
    }
}

fn kind_of(kind: &str) -> Result<SdkKeyKind, ApiError> {
    SdkKeyKind::parse(kind)
        .ok_or_else(|| ApiError::BadRequest(format!("`{kind}` is not a kind of SDK key")))
}

fn key_created_page(
    signed: &Signed,
    project: &str,
    environment: &str,
    kind: SdkKeyKind,
    key: &str,
    rotated: bool,
) -> Response {
    let what = html! {
        "A " strong { (kind.as_str()) } " key for " strong { (environment) } "."
        @if rotated { " The keys it replaces keep working until the overlap ends." }
        " SDKs send it as " code { "Authorization: Bearer …" } "."
    };
    secret_page(
        signed,
        project,
        if rotated {
            "SDK key rotated"
        } else {
            "SDK key created"
        },
        what,
        key,
        &format!("/projects/{}/settings/keys", encode(project)),
    )
}

/// Creates an SDK key through the API's handler and shows its secret, once.
async fn create_key(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<KeyForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let created = async {
        signed.caller.require(&state, &project, Role::Admin).await?;
        let kind = kind_of(&form.kind)?;
        let (_, axum::Json(created)) = api::create_sdk_key(
            State(state.clone()),
            signed.caller.clone(),
            Path((project.clone(), form.environment.clone())),
            Body::new(SdkKeyRequest {
                kind,
                overlap_seconds: None,
            }),
        )
        .await?;
        state.sdk_keys.clear();
        Ok::<_, ApiError>(created)
    };
    match created.await {
        Ok(created) => key_created_page(
            &signed,
            &project,
            &created.record.environment,
            created.record.kind,
            &created.key,
            false,
        ),
        Err(e) => error_page(e),
    }
}

#[derive(Deserialize)]
struct KindQuery {
    kind: String,
}

/// How long the replaced keys keep working, as offered on the rotation form.
const OVERLAPS: [(u32, &str); 4] = [
    (0, "no overlap: they stop at once"),
    (3_600, "one hour"),
    (86_400, "one day"),
    (7 * 86_400, "one week"),
];

async fn confirm_rotate(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, environment)): Path<(String, String)>,
    Query(query): Query<KindQuery>,
) -> Response {
    let shown = async {
        signed.caller.require(&state, &project, Role::Admin).await?;
        let kind = kind_of(&query.kind)?;
        let env = state.store.environment(&project, &environment).await?;
        Ok::<_, ApiError>((kind, env))
    };
    let (kind, env) = match shown.await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    let title = format!("Rotate the {} keys of {}", kind.as_str(), env.name);
    html_response(
        StatusCode::OK,
        page(
            &Frame {
                title: &title,
                signed: Some(&signed),
                project: Some(&project),
            },
            html! {
                section.narrow {
                    h1 { "Rotate the " (kind.as_str()) " keys of " (env.name) "?" }
                    p { "A new " (kind.as_str()) " key for " strong { (env.name) } " is made and shown once; every current " (kind.as_str()) " key of " (env.name) " stops working when the overlap ends." }
                    form.stack method="post" {
                        input type="hidden" name="csrf" value=(signed.csrf);
                        input type="hidden" name="kind" value=(kind.as_str());
                        label for="overlap" { "The old keys keep working for" }
                        select #overlap name="overlap_seconds" {
                            @for (seconds, label) in OVERLAPS {
                                option value=(seconds) selected[seconds == 86_400] { (label) }
                            }
                        }
                        div.actions {
                            button.primary.danger type="submit" { "Rotate " (kind.as_str()) " keys of " (env.name) }
                            a href={ "/projects/" (project) "/settings/keys" } { "Cancel" }
                        }
                    }
                }
            },
        ),
    )
}

#[derive(Deserialize)]
struct RotateForm {
    csrf: String,
    kind: String,
    overlap_seconds: u32,
}

async fn rotate_key(
    State(state): State<AppState>,
    Path((project, environment)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<RotateForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let rotated = async {
        signed.caller.require(&state, &project, Role::Admin).await?;
        let kind = kind_of(&form.kind)?;
        let (_, axum::Json(created)) = api::rotate_sdk_key(
            State(state.clone()),
            signed.caller.clone(),
            Path((project.clone(), environment.clone())),
            Body::new(SdkKeyRequest {
                kind,
                overlap_seconds: Some(form.overlap_seconds),
            }),
        )
        .await?;
        // The old keys' expiry changed: cached look-ups must not outlive it.
        state.sdk_keys.clear();
        Ok::<_, ApiError>(created)
    };
    match rotated.await {
        Ok(created) => key_created_page(
            &signed,
            &project,
            &created.record.environment,
            created.record.kind,
            &created.key,
            true,
        ),
        Err(e) => error_page(e),
    }
}

/// A key of the project's environment, for its confirmation page.
async fn find_key(
    state: &AppState,
    signed: &Signed,
    project: &str,
    environment: &str,
    id: &str,
) -> Result<SdkKeyRecord, ApiError> {
    let axum::Json(keys) = api::list_sdk_keys(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.to_string(), environment.to_string())),
    )
    .await?;
    keys.into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no SDK key `{id}` in `{environment}`")))
}

async fn confirm_revoke_key(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, environment, id)): Path<(String, String, String)>,
) -> Response {
    let shown = async {
        signed.caller.require(&state, &project, Role::Admin).await?;
        let env = state.store.environment(&project, &environment).await?;
        let key = find_key(&state, &signed, &project, &environment, &id).await?;
        Ok::<_, ApiError>((env, key))
    };
    let (env, key) = match shown.await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    let title = format!("Revoke key {}", key.prefix);
    html_response(
        StatusCode::OK,
        page(
            &Frame {
                title: &title,
                signed: Some(&signed),
                project: Some(&project),
            },
            html! {
                section.narrow {
                    h1 { "Revoke the " (key.kind.as_str()) " key " code { (key.prefix) "…" } " of " (env.name) "?" }
                    p { "Every SDK using it in " strong { (env.name) } " is refused at once. This cannot be undone." }
                    form.stack method="post" {
                        input type="hidden" name="csrf" value=(signed.csrf);
                        div.actions {
                            button.danger type="submit" { "Revoke " (key.prefix) "…" }
                            a href={ "/projects/" (project) "/settings/keys" } { "Cancel" }
                        }
                    }
                }
            },
        ),
    )
}

async fn revoke_key(
    State(state): State<AppState>,
    Path((project, environment, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match api::revoke_sdk_key(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), environment, id)),
    )
    .await
    {
        Ok(_) => {
            // A revoked key must stop working now, not when the cache forgets it.
            state.sdk_keys.clear();
            Redirect::to(&format!(
                "/projects/{}/settings/keys?notice=revoked",
                encode(&project)
            ))
            .into_response()
        }
        Err(e) => error_page(e),
    }
}

fn token_field(path: &str) -> &'static str {
    match path {
        "/name" => "name",
        "/role" => "role",
        "/expiresInDays" => "expires_in_days",
        _ => "form",
    }
}

/// Creates a personal access token through the API's handler and shows it, once.
async fn create_token(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<TokenForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let mut problems = Problems::new();
    let role = match Role::parse(&form.role) {
        Some(role) => Some(role),
        None => {
            problems
                .entry("role")
                .or_default()
                .push("choose viewer, editor or admin".into());
            None
        }
    };
    let expires_in_days = match form.expires_in_days.trim() {
        "" => None,
        days => match days.parse::<u32>() {
            Ok(days) if (1..=3650).contains(&days) => Some(days),
            _ => {
                problems
                    .entry("expires_in_days")
                    .or_default()
                    .push("give a whole number of days from 1 to 3650, or nothing".into());
                None
            }
        },
    };
    if problems.is_empty() {
        let created = api::create_token(
            State(state.clone()),
            signed.caller.clone(),
            Body::new(TokenRequest {
                name: form.name.trim().to_string(),
                role,
                expires_in_days,
            }),
        )
        .await;
        match created {
            Ok((_, axum::Json(created))) => {
                let what = html! {
                    "The token " strong { (created.name) } " acts as you with at most the "
                    strong { (created.role.as_str()) } " role. Send it as "
                    code { "Authorization: Bearer …" } "."
                };
                return secret_page(
                    &signed,
                    &project,
                    "Access token created",
                    what,
                    &created.token,
                    &format!("/projects/{}/settings/keys", encode(&project)),
                );
            }
            Err(ApiError::Forbidden(message)) => {
                problems.entry("role").or_default().push(message);
            }
            Err(e) => match problems_from(e, token_field) {
                Ok(found) => problems = found,
                Err(e) => return error_page(e),
            },
        }
    }
    match keys_markup(&state, &signed, &project, &form, &problems, None).await {
        Ok(markup) => html_response(StatusCode::UNPROCESSABLE_ENTITY, markup),
        Err(e) => error_page(e),
    }
}

async fn confirm_revoke_token(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, id)): Path<(String, String)>,
) -> Response {
    let token = match api::list_tokens(State(state.clone()), signed.caller.clone()).await {
        Ok(axum::Json(tokens)) => tokens.into_iter().find(|t| t.id == id),
        Err(e) => return error_page(e),
    };
    let Some(token) = token else {
        return error_page(ApiError::NotFound(format!("you have no token `{id}`")));
    };
    let title = format!("Revoke token {}", token.name);
    html_response(
        StatusCode::OK,
        page(
            &Frame {
                title: &title,
                signed: Some(&signed),
                project: Some(&project),
            },
            html! {
                section.narrow {
                    h1 { "Revoke your token " strong { (token.name) } "?" }
                    p { "Everything using it is refused at once. This cannot be undone." }
                    form.stack method="post" {
                        input type="hidden" name="csrf" value=(signed.csrf);
                        div.actions {
                            button.danger type="submit" { "Revoke " (token.name) }
                            a href={ "/projects/" (project) "/settings/keys" } { "Cancel" }
                        }
                    }
                }
            },
        ),
    )
}

async fn revoke_token(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match api::revoke_token(State(state.clone()), signed.caller.clone(), Path(id)).await {
        Ok(_) => Redirect::to(&format!(
            "/projects/{}/settings/keys?notice=token-revoked",
            encode(&project)
        ))
        .into_response(),
        Err(e) => error_page(e),
    }
}

// ---- webhooks ----

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
    let title = format!("Delete webhook {}", webhook.name);
    html_response(
        StatusCode::OK,
        page(
            &Frame {
                title: &title,
                signed: Some(&signed),
                project: Some(&project),
            },
            html! {
                section.narrow {
                    h1 { "Delete the webhook " strong { (webhook.name) } "?" }
                    p { "Nothing more is sent to " code { (webhook.url) } ", and its delivery log is deleted with it." }
                    form.stack method="post" {
                        input type="hidden" name="csrf" value=(signed.csrf);
                        div.actions {
                            button.danger type="submit" { "Delete " (webhook.name) }
                            a href={ "/projects/" (project) "/settings/webhooks/" (webhook.id) } { "Cancel" }
                        }
                    }
                }
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
