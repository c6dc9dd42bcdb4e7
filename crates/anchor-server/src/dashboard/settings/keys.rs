//! The project's SDK keys (created, rotated with an overlap, revoked) and the signed-in
//! person's own access tokens, on one page.

use anchor_store::{Role, SdkKeyKind, SdkKeyRecord};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::{NoticeQuery, Problems, notice_text, problems_from, secret_page, settings_page};
use crate::AppState;
use crate::api::{self, Body, SdkKeyRequest, TokenRequest};
use crate::dashboard::{
    Confirmation, CsrfForm, Signed, confirmation, encode, error_page, field_problems, form_caller,
    html_response, time,
};
use crate::error::ApiError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
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
}

/// The keys page, where the key and token forms lead back to.
fn keys_path(project: &str) -> String {
    format!("/projects/{}/settings/keys", encode(project))
}

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

/// When a key or token was last used, in words: "never", how long ago within the last day
/// (the exact time on hover), else the time itself. Uses are written once a minute, so "within
/// the last minute" is as close as it knows.
fn last_used(at: Option<i64>, now: i64) -> Markup {
    let Some(at) = at else {
        return html! { "never" };
    };
    let ago = (now - at).max(0) / 1_000;
    let words = match ago {
        0..60 => "within the last minute".to_string(),
        60..120 => "1 minute ago".to_string(),
        120..3_600 => format!("{} minutes ago", ago / 60),
        3_600..7_200 => "1 hour ago".to_string(),
        7_200..86_400 => format!("{} hours ago", ago / 3_600),
        _ => return html! { (time(at)) },
    };
    html! { span title=(time(at)) { (words) } }
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
            p.small { "Server keys read the whole configuration; client keys only evaluations, never rules or segments. Only the first characters of each key are kept in clear. \"Last used\" is precise to within a minute." }
            table.keys {
                thead {
                    tr {
                        th scope="col" { "Environment" }
                        th scope="col" { "Kind" }
                        th scope="col" { "Key" }
                        th scope="col" { "Created" }
                        th scope="col" { "Last used" }
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
                            td.small { (last_used(key.last_used_at, now)) }
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
                        th scope="col" { "Last used" }
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
                            td.small { (last_used(token.last_used_at, now)) }
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
    html_response(
        StatusCode::OK,
        confirmation(
            &signed,
            &project,
            Confirmation {
                title: &format!("Rotate the {} keys of {}", kind.as_str(), env.name),
                crumbs: None,
                question: html! { "Rotate the " (kind.as_str()) " keys of " (env.name) "?" },
                consequence: html! {
                    p { "A new " (kind.as_str()) " key for " strong { (env.name) } " is made and shown once; every current " (kind.as_str()) " key of " (env.name) " stops working when the overlap ends." }
                },
                problems: &[],
                action: None,
                fields: html! {
                    input type="hidden" name="kind" value=(kind.as_str());
                    label for="overlap" { "The old keys keep working for" }
                    select #overlap name="overlap_seconds" {
                        @for (seconds, label) in OVERLAPS {
                            option value=(seconds) selected[seconds == 86_400] { (label) }
                        }
                    }
                },
                button: html! { "Rotate " (kind.as_str()) " keys of " (env.name) },
                primary: true,
                danger: true,
                back: keys_path(&project),
                back_words: "Cancel",
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
    html_response(
        StatusCode::OK,
        confirmation(
            &signed,
            &project,
            Confirmation {
                title: &format!("Revoke key {}", key.prefix),
                crumbs: None,
                question: html! { "Revoke the " (key.kind.as_str()) " key " code { (key.prefix) "…" } " of " (env.name) "?" },
                consequence: html! {
                    p { "Every SDK using it in " strong { (env.name) } " is refused at once. This cannot be undone." }
                },
                problems: &[],
                action: None,
                fields: html! {},
                button: html! { "Revoke " (key.prefix) "…" },
                primary: false,
                danger: true,
                back: keys_path(&project),
                back_words: "Cancel",
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
    html_response(
        StatusCode::OK,
        confirmation(
            &signed,
            &project,
            Confirmation {
                title: &format!("Revoke token {}", token.name),
                crumbs: None,
                question: html! { "Revoke your token " strong { (token.name) } "?" },
                consequence: html! {
                    p { "Everything using it is refused at once. This cannot be undone." }
                },
                problems: &[],
                action: None,
                fields: html! {},
                button: html! { "Revoke " (token.name) },
                primary: false,
                danger: true,
                back: keys_path(&project),
                back_words: "Cancel",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_used_says_never_how_long_ago_within_a_day_and_the_time_after() {
        let now = 1_800_000_000_000;
        let words = |at: Option<i64>| last_used(at, now).into_string();
        assert_eq!(words(None), "never");
        assert!(words(Some(now - 59_000)).contains(">within the last minute<"));
        assert!(words(Some(now - 60_000)).contains(">1 minute ago<"));
        assert!(words(Some(now - 59 * 60_000)).contains(">59 minutes ago<"));
        assert!(words(Some(now - 3_600_000)).contains(">1 hour ago<"));
        assert!(words(Some(now - 23 * 3_600_000)).contains(">23 hours ago<"));
        assert!(
            words(Some(now - 3_600_000)).contains(&format!("title=\"{}\"", time(now - 3_600_000)))
        );
        assert_eq!(words(Some(now - 86_400_000)), time(now - 86_400_000));
        // A use noted by a server whose clock runs ahead is not in the future.
        assert!(words(Some(now + 5_000)).contains(">within the last minute<"));
    }
}
