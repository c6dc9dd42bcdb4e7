//! The targeting editor: a flag's configuration in one environment as plain HTML forms.
//!
//! One page per environment holds the individual targets (a list of keys per variant), the
//! default serve, the off variant and the prerequisites, and lists the rules in their order with
//! buttons to edit, move and delete each (deleting asks first). A rule has its own page: a
//! description, its conditions as rows (one more empty row on request: the server renders the
//! form again, no script needed) and its serve, one variant or percentages per variant. Power
//! users get the configuration as JSON to edit instead.
//!
//! Every save builds the whole configuration from the current one and hands it to the API's own
//! `PUT` handler with `If-Match` the version the form was rendered from. So validation, roles,
//! change requests in environments that need approval, revisions, audit entries and webhooks
//! are the API's; a change made meanwhile by someone else is refused and said so, and the
//! engine's problems come back by JSON pointer and are shown next to the form field they name,
//! with what the person typed kept. The form's own checks are only what the API cannot see:
//! percentages (entered to 0.001%, weights out of 100,000) must be numbers adding up to 100%.

use std::collections::HashMap;

use anchor_engine::{Diagnostic, FlagConfig, Variant};
use anchor_store::{Environment, Role};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::{encode, field_problems, project_page};
use crate::AppState;
use crate::api::{self, Body, ConfigUpdate};
use crate::auth::Caller;
use crate::error::ApiError;

mod json;
mod rules;
mod serve;
mod settings;

const BASE: &str = "/projects/{project}/flags/{flag}/environments/{environment}/targeting";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .merge(settings::routes())
        .merge(rules::routes())
        .merge(json::routes())
}

/// A form never grows beyond this many condition or prerequisite rows, whatever it claims.
const MAX_ROWS: usize = 200;

/// A path segment: rule ids may hold any character, `/` included.
fn segment(value: &str) -> String {
    encode(value).replace('/', "%2F")
}

/// Undoes RFC 6901's escaping of one pointer segment.
fn unescape_pointer(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

// ---- form fields ----

/// A posted form as its pairs: rows come and go, so names are built, not declared.
struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value of `name`: a script may repeat the pressed button as a hidden field.
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn checked(&self, name: &str) -> bool {
        !self.get(name).is_empty()
    }

    fn count(&self, name: &str) -> usize {
        self.get(name).trim().parse().unwrap_or(0).min(MAX_ROWS)
    }
}

/// Problems by form field name; `form` for those of no field.
type Problems = HashMap<String, Vec<String>>;

fn add(problems: &mut Problems, field: impl Into<String>, problem: impl Into<String>) {
    problems
        .entry(field.into())
        .or_default()
        .push(problem.into());
}

fn problems_at<'a>(problems: &'a Problems, field: &str) -> &'a [String] {
    problems.get(field).map_or(&[], Vec::as_slice)
}

fn invalid(problems: &Problems, field: &str) -> Option<&'static str> {
    problems.contains_key(field).then_some("true")
}

// ---- loading and writing ----

/// What every page of the editor starts from.
struct Loaded {
    env: Environment,
    variants: Vec<Variant>,
    config: FlagConfig,
}

async fn load(
    state: &AppState,
    caller: &Caller,
    (project, flag, environment): (&str, &str, &str),
) -> Result<Loaded, ApiError> {
    caller.require(state, project, Role::Editor).await?;
    let env = state.store.environment(project, environment).await?;
    let record = state.store.flag(project, flag).await?;
    if record.archived {
        return Err(ApiError::Conflict(format!("flag `{flag}` is archived")));
    }
    let config = record
        .environments
        .into_iter()
        .find(|e| e.environment == environment)
        .map(|e| e.config)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "flag `{flag}` has no configuration in `{environment}`"
            ))
        })?;
    Ok(Loaded {
        env,
        variants: record.flag.variants,
        config,
    })
}

/// How a write ended when it did not fail outright.
enum Written {
    Saved,
    /// The environment needs approval: the API made a change request with this id.
    Requested(String),
}

enum Refused {
    /// The engine's problems, by JSON pointer relative to the configuration.
    Invalid(Vec<Diagnostic>),
    /// The configuration changed since the form was rendered.
    Stale,
    Other(ApiError),
}

/// Writes through the API's own handler with `If-Match` the version the form was rendered
/// from, then rebuilds the environment's snapshot (the refreshing middleware watches only
/// `/api/v1` paths).
async fn write(
    state: &AppState,
    caller: &Caller,
    (project, flag, environment): (&str, &str, &str),
    version: u64,
    config: FlagConfig,
    comment: &str,
) -> Result<Written, Refused> {
    let mut if_match = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        if_match.insert(header::IF_MATCH, value);
    }
    let written = api::put_flag_config(
        State(state.clone()),
        caller.clone(),
        Path((
            project.to_string(),
            environment.to_string(),
            flag.to_string(),
        )),
        if_match,
        Body::new(ConfigUpdate {
            config,
            comment: Some(comment.trim().to_string()).filter(|c| !c.is_empty()),
            break_glass: false,
            apply_at: None,
        }),
    )
    .await;
    match written {
        Ok(response) => {
            super::refresh(state, project, environment).await;
            if response.status() != StatusCode::ACCEPTED {
                return Ok(Written::Saved);
            }
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
                .unwrap_or_default();
            Ok(Written::Requested(id))
        }
        Err(ApiError::Invalid(diagnostics)) => Err(Refused::Invalid(diagnostics)),
        Err(ApiError::PreconditionFailed(_)) => Err(Refused::Stale),
        Err(e) => Err(Refused::Other(e)),
    }
}

const STALE: &str = "Someone else changed this configuration since you opened the form: reload it to see their \
     change, then make yours again. Nothing was saved.";

/// The status a form is shown again with after its write was refused, the refusal's problems
/// added: each of the engine's where `place` puts it, a stale version on the form. Any other
/// error is the caller's to show.
fn refusal(
    problems: &mut Problems,
    refused: Refused,
    mut place: impl FnMut(&mut Problems, Diagnostic),
) -> Result<StatusCode, ApiError> {
    match refused {
        Refused::Invalid(diagnostics) => {
            for d in diagnostics {
                place(problems, d);
            }
            Ok(StatusCode::UNPROCESSABLE_ENTITY)
        }
        Refused::Stale => {
            add(problems, "form", STALE);
            Ok(StatusCode::CONFLICT)
        }
        Refused::Other(e) => Err(e),
    }
}

/// Where a saved change leads: the environment's editor, saying what happened.
fn saved_redirect(path: (&str, &str, &str), written: Written, what: &str) -> Response {
    let (project, flag, environment) = path;
    let notice = match written {
        Written::Saved => what.to_string(),
        Written::Requested(id) => format!("requested:{id}"),
    };
    Redirect::to(&format!(
        "{}?notice={}",
        targeting_path(project, flag, environment),
        encode(&notice)
    ))
    .into_response()
}

fn targeting_path(project: &str, flag: &str, environment: &str) -> String {
    format!(
        "/projects/{}/flags/{}/environments/{}/targeting",
        segment(project),
        segment(flag),
        segment(environment)
    )
}

/// What a `notice` query parameter says on the environment's page; a change request is linked
/// to its page, where it can be reviewed.
fn notice_markup(project: &str, notice: &str) -> Option<Markup> {
    if let Some(id) = notice.strip_prefix("requested:") {
        return Some(html! {
            "This environment requires approval: "
            @if id.is_empty() {
                "a change request"
            } @else {
                a href={ "/projects/" (segment(project)) "/change-requests/" (segment(id)) } {
                    "change request #" (id)
                }
            }
            " was created and awaits approval. Nothing changes until it is applied."
        });
    }
    let text = match notice {
        "saved" => "Saved.",
        "rule-saved" => "The rule was saved.",
        "rule-deleted" => "The rule was deleted.",
        "rule-moved" => "The rule was moved.",
        _ => return None,
    };
    Some(html! { (text) })
}

fn comment_field(env: &Environment, value: &str, problems: &Problems) -> Markup {
    html! {
        label for="comment" { "Comment" @if env.requires_comment { " (required in " (env.name) ")" } }
        input #comment name="comment" value=(value) required[env.requires_comment]
            aria-invalid=[invalid(problems, "comment")];
        (field_problems(problems_at(problems, "comment")))
    }
}

fn crumbs(project: &str, flag: &str, env: &Environment, here: bool) -> Markup {
    html! {
        p.crumbs {
            a href={ "/projects/" (segment(project)) "/flags/" (segment(flag)) } { (flag) }
            " / "
            @if !here {
                a href=(targeting_path(project, flag, &env.key)) { "Targeting in " (env.name) }
                " / "
            }
        }
    }
}

/// Enter in a text field presses a form's first submit button: this one saves, so that Enter
/// never just adds an empty row. Out of sight and out of the tab order; the visible "Save"
/// button does the same for mouse, keyboard and screen reader.
fn default_save() -> Markup {
    html! {
        button.sr type="submit" name="action" value="save" tabindex="-1" aria-hidden="true" { "Save" }
    }
}
