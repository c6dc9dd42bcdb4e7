//! The configuration as JSON for power users: edited whole, checked by the API.

use anchor_engine::FlagConfig;
use anchor_store::Environment;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::*;
use crate::AppState;
use crate::dashboard::{Signed, error_page, field_problems, form_caller, html_response};

// ---- the JSON view ----

pub(super) fn routes() -> Router<AppState> {
    Router::new().route(&format!("{BASE}/json"), get(json_page).post(save_json))
}

/// The configuration as JSON, without its version (the store's to set; the form carries the
/// version it was read at).
fn config_json(config: &FlagConfig) -> String {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("version");
    }
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

#[allow(
    clippy::too_many_arguments,
    reason = "a page of many parts; a struct would only rename them"
)]
fn json_markup(
    signed: &Signed,
    (project, flag, environment): (&str, &str, &str),
    env: &Environment,
    version: u64,
    json: &str,
    comment: &str,
    problems: &Problems,
) -> Markup {
    let here = targeting_path(project, flag, environment);
    let title = format!("JSON of {flag} in {}", env.name);
    project_page(
        signed,
        project,
        &title,
        html! {
            (crumbs(project, flag, env, false))
            h1 { "Configuration of " code { (flag) } " in " (env.name) " as JSON" }
            (field_problems(problems_at(problems, "form")))
            form.stack.wide method="post" action={ (here) "/json" } novalidate {
                input type="hidden" name="csrf" value=(signed.csrf);
                input type="hidden" name="version" value=(version);
                label for="json" { "Configuration (the management API's body)" }
                textarea #json name="json" rows="24" spellcheck="false" aria-describedby="json-help"
                    aria-invalid=[invalid(problems, "json")] { (json) }
                small #json-help { "The same JSON as " code { "PUT /api/v1/projects/…/flags/…" } "; the version is the server's to set." }
                (field_problems(problems_at(problems, "json")))
                (comment_field(env, comment, problems))
                div.actions {
                    button.primary type="submit" { "Save JSON" }
                    a href=(here) { "Cancel" }
                }
            }
        },
    )
}

async fn json_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment)): Path<(String, String, String)>,
) -> Response {
    let path = (project.as_str(), flag.as_str(), environment.as_str());
    match load(&state, &signed.caller, path).await {
        Ok(loaded) => html_response(
            StatusCode::OK,
            json_markup(
                &signed,
                path,
                &loaded.env,
                loaded.config.version,
                &config_json(&loaded.config),
                "",
                &Problems::new(),
            ),
        ),
        Err(e) => error_page(e),
    }
}

#[derive(Deserialize)]
struct JsonForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    json: String,
    #[serde(default)]
    comment: String,
}

async fn save_json(
    State(state): State<AppState>,
    Path((project, flag, environment)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<JsonForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let path = (project.as_str(), flag.as_str(), environment.as_str());
    let loaded = match load(&state, &signed.caller, path).await {
        Ok(loaded) => loaded,
        Err(e) => return error_page(e),
    };
    let mut problems = Problems::new();
    let status = match serde_json::from_str::<FlagConfig>(&form.json) {
        Err(e) => {
            add(
                &mut problems,
                "json",
                format!("This is not a flag configuration: {e}"),
            );
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Ok(config) => {
            match write(
                &state,
                &signed.caller,
                path,
                form.version,
                config,
                &form.comment,
            )
            .await
            {
                Ok(written) => return saved_redirect(path, written, "saved"),
                Err(refused) => match refusal(&mut problems, refused, |problems, d| {
                    if d.path == "/comment" {
                        add(problems, "comment", d.message);
                    } else {
                        add(problems, "json", format!("{}: {}", d.path, d.message));
                    }
                }) {
                    Ok(status) => status,
                    Err(e) => return error_page(e),
                },
            }
        }
    };
    html_response(
        status,
        json_markup(
            &signed,
            path,
            &loaded.env,
            form.version,
            &form.json,
            &form.comment,
            &problems,
        ),
    )
}
