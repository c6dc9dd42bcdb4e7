//! The project's environments: the list, the form that adds one, the form that changes one
//! (its name, whether changes need approval or a comment, its place in the order) and the
//! confirmation that deletes one.

use anchor_store::{Environment, NewEnvironment, Role};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::{NoticeQuery, Problems, notice_text, problems_from, settings_page};
use crate::AppState;
use crate::api::{self, Body, EnvironmentPatch};
use crate::dashboard::{
    Confirmation, CsrfForm, Signed, confirmation, encode, error_page, field_problems, form_caller,
    html_response, refresh_project, time,
};
use crate::error::ApiError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/projects/{project}/settings/environments",
            get(environments_page).post(create_environment),
        )
        .route(
            "/projects/{project}/settings/environments/{environment}",
            get(edit_page).post(update_environment),
        )
        .route(
            "/projects/{project}/settings/environments/{environment}/delete",
            get(confirm_delete).post(delete_environment),
        )
}

/// The notices of this page: those of every settings page, and the answers to edits and
/// deletions.
fn environment_notice(notice: &str) -> Option<&'static str> {
    match notice {
        "environment-updated" => Some("The environment was saved."),
        "environment-deleted" => Some(
            "The environment was deleted, with its flag configurations, segments, SDK keys and \
             change requests.",
        ),
        other => notice_text(other),
    }
}

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
            @if let Some(notice) = notice.and_then(environment_notice) {
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
                        @if role >= Role::Admin { th scope="col" { span.sr { "Actions" } } }
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
                            @if role >= Role::Admin {
                                td { a href={ "/projects/" (project) "/settings/environments/" (e.key) } aria-label={ "Edit " (e.name) } { "Edit" } }
                            }
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
                refresh_project(&state, &project).await;
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

fn environments_path(project: &str) -> String {
    format!("/projects/{}/settings/environments", encode(project))
}

fn environment_path(project: &str, environment: &str) -> String {
    format!(
        "/projects/{}/settings/environments/{}",
        encode(project),
        encode(environment)
    )
}

/// The edit form as sent; a checkbox left unticked is absent.
#[derive(Deserialize, Default)]
struct EditForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    requires_approval: Option<String>,
    requires_comment: Option<String>,
    #[serde(default)]
    position: String,
    #[serde(default)]
    comment: String,
}

impl EditForm {
    fn of(environment: &Environment) -> Self {
        let ticked = |on: bool| on.then(|| "1".to_string());
        EditForm {
            csrf: String::new(),
            name: environment.name.clone(),
            requires_approval: ticked(environment.requires_approval),
            requires_comment: ticked(environment.requires_comment),
            position: environment.position.to_string(),
            comment: String::new(),
        }
    }
}

fn edit_markup(
    signed: &Signed,
    project: &str,
    environment: &Environment,
    count: usize,
    form: &EditForm,
    problems: &Problems,
) -> Markup {
    let none = Vec::new();
    let problems_of = |field: &str| problems.get(field).unwrap_or(&none);
    let invalid = |field: &str| problems.contains_key(field).then_some("true");
    settings_page(
        signed,
        project,
        &format!("Environment {}", environment.name),
        "environments",
        html! {
            h2 { "Environment " code { (environment.key) } }
            p.small { "The key stays: SDK keys, URLs and telemetry name the environment by it." }
            (field_problems(problems_of("form")))
            form.stack method="post" action=(environment_path(project, &environment.key)) novalidate {
                input type="hidden" name="csrf" value=(signed.csrf);
                label for="name" { "Name" }
                input #name name="name" value=(form.name) required aria-invalid=[invalid("name")];
                (field_problems(problems_of("name")))
                label for="position" { "Place in the order" }
                select #position name="position" aria-invalid=[invalid("position")] {
                    @for i in 0..count {
                        option value=(i) selected[form.position == i.to_string()] { (i + 1) }
                    }
                }
                (field_problems(problems_of("position")))
                label.check for="requires_approval" {
                    input #requires_approval type="checkbox" name="requires_approval" value="1" checked[form.requires_approval.is_some()];
                    " Editors' changes wait for approval (change requests)"
                }
                label.check for="requires_comment" {
                    input #requires_comment type="checkbox" name="requires_comment" value="1" checked[form.requires_comment.is_some()];
                    " Every change needs a comment"
                }
                label for="comment" { "Comment" }
                textarea #comment name="comment" aria-describedby="comment-help" aria-invalid=[invalid("comment")] { (form.comment) }
                small #comment-help { "Kept in the audit log. Required to turn approval or required comments off." }
                (field_problems(problems_of("comment")))
                div.actions {
                    button.primary type="submit" { "Save" }
                    a href=(environments_path(project)) { "Cancel" }
                }
            }
            h2 { "Delete" }
            p { "Deleting " (environment.name) " deletes its flag configurations, segments, SDK keys, change requests, telemetry and history with it." }
            p { a.button.danger href={ (environment_path(project, &environment.key)) "/delete" } { "Delete " (environment.name) "…" } }
        },
    )
}

/// The environment, and how many the project has, for an admin.
async fn load(
    state: &AppState,
    signed: &Signed,
    project: &str,
    environment: &str,
) -> Result<(Environment, usize), ApiError> {
    signed.caller.require(state, project, Role::Admin).await?;
    let environments = state.store.environments(project).await?;
    let count = environments.len();
    let found = environments
        .into_iter()
        .find(|e| e.key == environment)
        .ok_or_else(|| ApiError::NotFound(format!("environment `{environment}` does not exist")))?;
    Ok((found, count))
}

async fn edit_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, environment)): Path<(String, String)>,
) -> Response {
    match load(&state, &signed, &project, &environment).await {
        Ok((environment, count)) => html_response(
            StatusCode::OK,
            edit_markup(
                &signed,
                &project,
                &environment,
                count,
                &EditForm::of(&environment),
                &Problems::new(),
            ),
        ),
        Err(e) => error_page(e),
    }
}

fn edit_field(path: &str) -> &'static str {
    match path {
        "/name" => "name",
        "/position" => "position",
        "/comment" => "comment",
        _ => "form",
    }
}

async fn update_environment(
    State(state): State<AppState>,
    Path((project, environment)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<EditForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let (current, count) = match load(&state, &signed, &project, &environment).await {
        Ok(found) => found,
        Err(e) => return error_page(e),
    };
    // The form always sends every field: only what differs is changed, so that an unchanged
    // form writes nothing.
    let name = form.name.trim();
    let requires_approval = form.requires_approval.is_some();
    let requires_comment = form.requires_comment.is_some();
    let mut problems = Problems::new();
    let position = match form.position.trim().parse::<i64>() {
        Ok(p) => Some(p),
        Err(_) => {
            problems
                .entry("position")
                .or_default()
                .push("choose a place in the order".into());
            None
        }
    };
    if problems.is_empty() {
        let patch = EnvironmentPatch {
            name: (name != current.name).then(|| name.to_string()),
            requires_approval: (requires_approval != current.requires_approval)
                .then_some(requires_approval),
            requires_comment: (requires_comment != current.requires_comment)
                .then_some(requires_comment),
            position: position.filter(|p| *p != current.position),
            comment: Some(form.comment.clone()).filter(|c| !c.trim().is_empty()),
            key: None,
        };
        let updated = api::update_environment(
            State(state.clone()),
            signed.caller.clone(),
            Path((project.clone(), environment.clone())),
            Body::new(patch),
        )
        .await;
        match updated {
            Ok(_) => {
                return Redirect::to(&format!(
                    "{}?notice=environment-updated",
                    environments_path(&project)
                ))
                .into_response();
            }
            Err(e) => match problems_from(e, edit_field) {
                Ok(found) => problems = found,
                Err(e) => return error_page(e),
            },
        }
    }
    html_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        edit_markup(&signed, &project, &current, count, &form, &problems),
    )
}

fn delete_confirmation(
    signed: &Signed,
    project: &str,
    environment: &Environment,
    problems: &[String],
) -> Markup {
    confirmation(
        signed,
        project,
        Confirmation {
            title: &format!("Delete environment {}", environment.name),
            crumbs: None,
            question: html! { "Delete the environment " strong { (environment.name) } "?" },
            consequence: html! {
                p { "Its flag configurations, segments, change requests, finished releases, telemetry and revisions are deleted with it. Its SDK keys stop working at once, and the SDKs streaming from it are disconnected." }
                p { "The audit log keeps its history. This cannot be undone." }
            },
            problems,
            action: None,
            fields: html! {},
            button: html! { "Delete " (environment.name) },
            primary: false,
            danger: true,
            back: environment_path(project, &environment.key),
            back_words: "Cancel",
        },
    )
}

async fn confirm_delete(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, environment)): Path<(String, String)>,
) -> Response {
    match load(&state, &signed, &project, &environment).await {
        Ok((environment, _)) => html_response(
            StatusCode::OK,
            delete_confirmation(&signed, &project, &environment, &[]),
        ),
        Err(e) => error_page(e),
    }
}

async fn delete_environment(
    State(state): State<AppState>,
    Path((project, environment)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let current = match load(&state, &signed, &project, &environment).await {
        Ok((current, _)) => current,
        Err(e) => return error_page(e),
    };
    let deleted = api::delete_environment(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), environment)),
    )
    .await;
    match deleted {
        Ok(_) => Redirect::to(&format!(
            "{}?notice=environment-deleted",
            environments_path(&project)
        ))
        .into_response(),
        // Refused for now (a release under way, the last environment): the same question
        // again, with the reason.
        Err(ApiError::Conflict(why)) => html_response(
            StatusCode::CONFLICT,
            delete_confirmation(&signed, &project, &current, &[why]),
        ),
        Err(e) => error_page(e),
    }
}
