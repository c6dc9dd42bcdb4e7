//! The project's environments: the list, and the form that adds one.

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
use crate::api::{self, Body};
use crate::dashboard::{
    Signed, encode, error_page, field_problems, form_caller, html_response, refresh_project, time,
};
use crate::error::ApiError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route(
        "/projects/{project}/settings/environments",
        get(environments_page).post(create_environment),
    )
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
