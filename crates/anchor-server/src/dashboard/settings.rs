//! A project's settings: its environments, its SDK keys and the signed-in person's access
//! tokens, and its webhooks with their delivery log.
//!
//! As elsewhere in the dashboard, every write calls the management API's own handler, so the
//! roles (environments, keys and webhooks are for project admins), the validation and the
//! audit entries are the API's. A secret (an SDK key, an access token, a webhook's signing
//! secret) is shown once, in the answer to the form that made it, never in a URL and never
//! again; that answer, like every dashboard page, is `no-store`.

mod environments;
mod keys;
mod webhooks;

use std::collections::HashMap;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Redirect, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::{Signed, encode, html_response, project_page};
use crate::AppState;
use crate::error::ApiError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{project}/settings", get(settings_home))
        .merge(environments::routes())
        .merge(keys::routes())
        .merge(webhooks::routes())
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
    project_page(
        signed,
        project,
        title,
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
        project_page(
            signed,
            project,
            title,
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
