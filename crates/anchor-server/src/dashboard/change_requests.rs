//! Change requests: the list of a project's requests by state, one request's page (who asked,
//! when, where, the diff, its reviews) and the approve, reject, apply and cancel
//! confirmations.
//!
//! The buttons a page shows follow the API's rules (reviewers are editors other than the
//! author; the author or an approver applies an approved request; the author or an admin
//! cancels), but only as a courtesy: every action calls the API's own handler in
//! `crate::change_requests`, which decides, so a refusal (one's own request, a flag that moved
//! on since) comes back as the API's words and is shown on the page.

use anchor_store::{ChangeRequest, ChangeRequestStatus, Environment, ReviewDecision, Role};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::flags::diff_lines;
use super::{
    Confirmation, Signed, confirmation, encode, error_page, field_problems, form_caller,
    html_response, project_page, refresh, time,
};
use crate::AppState;
use crate::auth::Caller;
use crate::change_requests::{self as api, ChangeRequestView, same_person};
use crate::error::ApiError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{project}/change-requests", get(list))
        .route(
            "/projects/{project}/change-requests/{id}",
            get(request_page),
        )
        .route(
            "/projects/{project}/change-requests/{id}/{action}",
            get(confirm).post(act),
        )
}

/// The states a person can filter by, in the order a request moves through them.
const STATUSES: [ChangeRequestStatus; 6] = [
    ChangeRequestStatus::Open,
    ChangeRequestStatus::Approved,
    ChangeRequestStatus::Applied,
    ChangeRequestStatus::Rejected,
    ChangeRequestStatus::Cancelled,
    ChangeRequestStatus::Failed,
];

fn status_badge(status: ChangeRequestStatus) -> Markup {
    html! { span class={ "b cr " (status.as_str()) } { (status.as_str()) } }
}

/// What a request changes, in words: a flag's configuration, a segment, or its deletion.
fn what(request: &ChangeRequest) -> &'static str {
    match request.resource_kind.as_str() {
        "segment" => "segment",
        "segment_deletion" => "deletion of segment",
        _ => "flag",
    }
}

fn request_href(project: &str, id: &str) -> String {
    format!(
        "/projects/{}/change-requests/{}",
        encode(project),
        encode(id)
    )
}

// ---- the list ----

#[derive(Deserialize, Default)]
struct ListQuery {
    status: Option<String>,
    environment: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    match render_list(&state, &signed, &project, &query).await {
        Ok((status, markup)) => html_response(status, markup),
        Err(e) => error_page(e),
    }
}

async fn render_list(
    state: &AppState,
    signed: &Signed,
    project: &str,
    query: &ListQuery,
) -> Result<(StatusCode, Markup), ApiError> {
    signed.caller.require(state, project, Role::Viewer).await?;
    let environments = state.store.environments(project).await?;
    let wanted = query
        .status
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let status = wanted.map(ChangeRequestStatus::parse);
    let mut problems = Vec::new();
    if status == Some(None) {
        problems.push(format!(
            "“{}” is no state: choose one of the list.",
            wanted.unwrap_or_default()
        ));
    }
    let status = status.flatten();
    let environment = query
        .environment
        .as_deref()
        .filter(|e| environments.iter().any(|env| env.key == *e));
    let requests = if problems.is_empty() {
        state
            .store
            .change_requests(project, status, environment)
            .await?
    } else {
        Vec::new()
    };
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let markup = project_page(
        signed,
        project,
        "Change requests",
        html! {
            h1 { "Change requests" }
            form.filters method="get" role="search" data-autosubmit {
                label for="status" { "State" }
                select #status name="status" aria-invalid=[(!problems.is_empty()).then_some("true")] {
                    option value="" { "any" }
                    @for s in STATUSES {
                        option value=(s.as_str()) selected[status == Some(s)] { (s.as_str()) }
                    }
                }
                label for="environment" { "Environment" }
                select #environment name="environment" {
                    option value="" { "any environment" }
                    @for env in &environments {
                        option value=(env.key) selected[environment == Some(env.key.as_str())] { (env.name) }
                    }
                }
                button type="submit" { "Filter" }
            }
            (field_problems(&problems))
            p.count { (requests.len()) " change requests" }
            @if !requests.is_empty() {
                table.requests {
                    thead {
                        tr {
                            th scope="col" { "Asked" }
                            th scope="col" { "Change" }
                            th scope="col" { "Environment" }
                            th scope="col" { "By" }
                            th scope="col" { "State" }
                            th scope="col" { "Comment" }
                        }
                    }
                    tbody {
                        @for r in &requests {
                            tr {
                                td { a href=(request_href(project, &r.id)) { (time(r.created_at)) } }
                                td { (what(r)) " " code { (r.flag) } }
                                td { (r.environment) }
                                td { (r.author.id) }
                                td { (status_badge(r.status)) }
                                td.d { (r.comment.as_deref().unwrap_or("").chars().take(120).collect::<String>()) }
                            }
                        }
                    }
                }
            }
        },
    );
    Ok((code, markup))
}

// ---- one request ----

/// A request as the page shows it, with what the caller may do with it.
struct Shown {
    role: Role,
    view: ChangeRequestView,
    environment: Environment,
    /// The proposal's changes as RFC 6902 operations, one a line.
    diff: Vec<String>,
    /// Against what the diff is taken, in words.
    diff_base: String,
}

impl Shown {
    fn request(&self) -> &ChangeRequest {
        &self.view.request
    }

    fn is_author(&self, caller: &Caller) -> bool {
        same_person(&self.request().author, caller)
    }

    fn has_approved(&self, caller: &Caller) -> bool {
        self.request()
            .reviews
            .iter()
            .any(|r| r.decision == ReviewDecision::Approve && same_person(&r.reviewer, caller))
    }

    /// The actions the API would accept from `caller` now.
    fn actions(&self, caller: &Caller) -> Vec<Action> {
        let request = self.request();
        let pending = request.status.is_pending();
        let mut actions = Vec::new();
        if self.role < Role::Editor {
            return actions;
        }
        let author = self.is_author(caller);
        if pending && !author && !self.has_approved(caller) {
            actions.push(Action::Approve);
        }
        if pending && !author {
            actions.push(Action::Reject);
        }
        if request.status == ChangeRequestStatus::Approved && (author || self.has_approved(caller))
        {
            actions.push(Action::Apply);
        }
        if pending && (author || self.role >= Role::Admin) {
            actions.push(Action::Cancel);
        }
        actions
    }
}

/// Reads the request through the API's handler (its role check and its diff from the current
/// configuration), and for a flag the diff from the revision it was made against, which stays
/// meaningful once the request is closed.
async fn load(
    state: &AppState,
    caller: &Caller,
    project: &str,
    id: &str,
) -> Result<Shown, ApiError> {
    let axum::Json(view) = api::get_change_request(
        State(state.clone()),
        caller.clone(),
        Path((project.to_string(), id.to_string())),
    )
    .await?;
    let role = caller.require(state, project, Role::Viewer).await?;
    let request = &view.request;
    let environment = state
        .store
        .environment(project, &request.environment)
        .await?;
    let base = if request.resource_kind == "flag" {
        state
            .store
            .flag_revision(
                project,
                &request.environment,
                &request.flag,
                request.base_version,
            )
            .await
            .ok()
    } else {
        None
    };
    let (diff, diff_base) = match (base, serde_json::to_value(&request.proposed)) {
        (Some(base), Ok(proposed)) => (
            diff_lines(&base.body, &proposed),
            format!("against version {}", request.base_version),
        ),
        _ => (
            view.diff
                .as_array()
                .map(|ops| ops.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            format!("against the current version ({})", view.current_version),
        ),
    };
    Ok(Shown {
        role,
        view,
        environment,
        diff,
        diff_base,
    })
}

#[derive(Deserialize, Default)]
struct PageQuery {
    done: Option<String>,
}

async fn request_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, id)): Path<(String, String)>,
    Query(query): Query<PageQuery>,
) -> Response {
    let shown = match load(&state, &signed.caller, &project, &id).await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    let notice = query
        .done
        .as_deref()
        .and_then(Action::parse)
        .map(Action::done);
    let request = shown.request();
    let title = format!("Change request for {}", request.flag);
    let actions = shown.actions(&signed.caller);
    let stale = request.status.is_pending()
        && request.resource_kind == "flag"
        && shown.view.current_version != request.base_version;
    html_response(
        StatusCode::OK,
        project_page(
            &signed,
            &project,
            &title,
            html! {
                p.crumbs { a href={ "/projects/" (project) "/change-requests" } { "Change requests" } " / " }
                h1 { "Change to " (what(request)) " " code { (request.flag) } " in " (shown.environment.name) }
                @if let Some(notice) = notice {
                    p.notice role="status" { (notice) }
                }
                p.meta {
                    (status_badge(request.status))
                    span { "asked by " strong.author { (request.author.id) } " on " (time(request.created_at)) }
                }
                @if let Some(comment) = &request.comment {
                    p.description.request-comment { (comment) }
                }
                (facts(&project, &shown))
                @if stale {
                    p.problem role="alert" {
                        "The flag changed since this request was made (now version " (shown.view.current_version)
                        "): applying it will fail until its author edits it against the current configuration."
                    }
                }
                h2 { "What changes " span.small { "(" (shown.diff_base) ")" } }
                (diff_markup(&shown.diff))
                h2 { "Reviews" }
                @if request.reviews.is_empty() {
                    p.small { "No reviews yet." }
                } @else {
                    ol.log.reviews {
                        @for review in &request.reviews {
                            li {
                                strong { (review.reviewer.id) } " "
                                @match review.decision {
                                    ReviewDecision::Approve => { span.b.on { "approved" } }
                                    ReviewDecision::Reject => { span.b.off { "rejected" } }
                                }
                                span.small { " · " (time(review.created_at)) }
                                @if let Some(comment) = &review.comment { br; span.review-comment { "“" (comment) "”" } }
                            }
                        }
                    }
                }
                @if shown.role >= Role::Editor && request.status == ChangeRequestStatus::Open && shown.is_author(&signed.caller) {
                    p.small { "You asked for this change: another editor reviews it." }
                }
                @if !actions.is_empty() {
                    div.actions {
                        @for action in &actions {
                            a.button.primary[*action == Action::Apply || *action == Action::Approve].danger[*action == Action::Reject]
                                href={ (request_href(&project, &request.id)) "/" (action.as_str()) } {
                                (action.verb())
                            }
                        }
                    }
                }
            },
        ),
    )
}

/// Where, when and against what version: the request's facts in a definition list.
fn facts(project: &str, shown: &Shown) -> Markup {
    let request = shown.request();
    html! {
        dl.facts {
            dt { "Environment" }
            dd {
                (shown.environment.name)
                @if shown.environment.requires_approval { " " span.small { "(requires approval)" } }
            }
            dt { "Resource" }
            dd {
                @if request.resource_kind == "flag" {
                    a href={ "/projects/" (project) "/flags/" (request.flag) } { (request.flag) }
                } @else {
                    (what(request)) " " code { (request.flag) }
                }
            }
            dt { "Made against version" }
            dd { (request.base_version) " (now " (shown.view.current_version) ")" }
            @if let Some(at) = request.apply_at {
                dt { "Scheduled for" }
                dd { (time(at)) }
            }
            @if let Some(version) = request.applied_version {
                dt { "Applied as version" }
                dd {
                    (version)
                    @if request.resource_kind == "flag" {
                        " · " a href={ "/projects/" (project) "/flags/" (request.flag) "/environments/" (request.environment) "/history" } { "history" }
                    }
                }
            }
            @if let Some(failure) = &request.failure {
                dt { "Why it failed" }
                dd { (failure) }
            }
            dt { "Last change" }
            dd { (time(request.updated_at)) }
        }
    }
}

fn diff_markup(lines: &[String]) -> Markup {
    html! {
        @if lines.is_empty() {
            p.small { "Nothing: the proposal is the same configuration." }
        } @else {
            ul.diff {
                @for line in lines { li { code { (line) } } }
            }
        }
    }
}

// ---- the actions ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Approve,
    Reject,
    Apply,
    Cancel,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "approve" => Some(Action::Approve),
            "reject" => Some(Action::Reject),
            "apply" => Some(Action::Apply),
            "cancel" => Some(Action::Cancel),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Reject => "reject",
            Action::Apply => "apply",
            Action::Cancel => "cancel",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Approve => "Approve",
            Action::Reject => "Reject",
            Action::Apply => "Apply",
            Action::Cancel => "Cancel the request",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Action::Approve => "Approved: its author or you can now apply it.",
            Action::Reject => "Rejected: nothing changes.",
            Action::Apply => "Applied: the configuration changed.",
            Action::Cancel => "Cancelled: nothing changes.",
        }
    }

    /// Reviews carry a comment; applying and cancelling do not.
    fn takes_comment(self) -> bool {
        matches!(self, Action::Approve | Action::Reject)
    }
}

/// The confirmation: says what will happen, shows the diff, and posts with the CSRF token.
fn confirm_page(
    signed: &Signed,
    project: &str,
    shown: &Shown,
    action: Action,
    comment: &str,
    problems: &[String],
) -> Markup {
    let request = shown.request();
    let env = &shown.environment.name;
    let title = format!("{} the change request?", action.verb());
    let consequence = match action {
        Action::Approve => {
            format!("The request becomes approved: its author or you can then apply it to {env}.")
        }
        Action::Reject => "The request is closed as rejected; nothing changes.".to_string(),
        Action::Apply => format!(
            "The proposal becomes the {} of {} in {env} at once; SDKs following the stream receive it within seconds.",
            if request.resource_kind == "flag" {
                "configuration"
            } else {
                "state"
            },
            request.flag
        ),
        Action::Cancel => "The request is withdrawn; nothing changes.".to_string(),
    };
    confirmation(
        signed,
        project,
        Confirmation {
            title: &title,
            crumbs: None,
            question: html! { (action.verb()) " the change to " code { (request.flag) } " in " (env) "?" },
            consequence: html! {
                p { (consequence) }
                p.small { "Asked by " (request.author.id) " on " (time(request.created_at)) "." }
                (diff_markup(&shown.diff))
            },
            problems,
            action: Some(format!(
                "{}/{}",
                request_href(project, &request.id),
                action.as_str()
            )),
            fields: html! {
                @if action.takes_comment() {
                    label for="comment" { "Comment (optional)" }
                    input #comment name="comment" value=(comment);
                }
            },
            button: html! { (action.verb()) " in " (env) },
            primary: true,
            danger: matches!(action, Action::Reject | Action::Cancel),
            back: request_href(project, &request.id),
            back_words: "Back",
        },
    )
}

async fn confirm(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, id, action)): Path<(String, String, String)>,
) -> Response {
    let Some(action) = Action::parse(&action) else {
        return error_page(ApiError::NotFound(format!("no such action `{action}`")));
    };
    let shown = async {
        signed
            .caller
            .require(&state, &project, Role::Editor)
            .await?;
        load(&state, &signed.caller, &project, &id).await
    };
    match shown.await {
        Ok(shown) => html_response(
            StatusCode::OK,
            confirm_page(&signed, &project, &shown, action, "", &[]),
        ),
        Err(e) => error_page(e),
    }
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
    #[serde(default)]
    comment: String,
}

/// Does the action through the API's own handler; a refusal shows the confirmation again with
/// the API's reason, under the API's status.
async fn act(
    State(state): State<AppState>,
    Path((project, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<ActionForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let Some(action) = Action::parse(&action) else {
        return error_page(ApiError::NotFound(format!("no such action `{action}`")));
    };
    let comment = form.comment.trim();
    // The API's review body: `{"comment": …}`, or nothing.
    let review_body = || {
        if comment.is_empty() {
            axum::body::Bytes::new()
        } else {
            axum::body::Bytes::from(serde_json::json!({ "comment": comment }).to_string())
        }
    };
    let path = || Path((project.clone(), id.clone()));
    let caller = signed.caller.clone();
    let done: Result<String, ApiError> = match action {
        Action::Approve => {
            api::approve_change_request(State(state.clone()), caller, path(), review_body())
                .await
                .map(|v| v.0.request.environment)
        }
        Action::Reject => {
            api::reject_change_request(State(state.clone()), caller, path(), review_body())
                .await
                .map(|v| v.0.request.environment)
        }
        Action::Apply => api::apply_change_request(State(state.clone()), caller, path())
            .await
            .map(|r| r.0.environment),
        Action::Cancel => api::cancel_change_request(State(state.clone()), caller, path())
            .await
            .map(|r| r.0.environment),
    };
    let error = match done {
        Ok(environment) => {
            // The snapshot-refreshing middleware watches API paths only: an applied request
            // must reach the SDKs from here.
            if action == Action::Apply {
                refresh(&state, &project, &environment).await;
            }
            return Redirect::to(&format!(
                "{}?done={}",
                request_href(&project, &id),
                action.as_str()
            ))
            .into_response();
        }
        Err(ApiError::Unauthenticated) => return error_page(ApiError::Unauthenticated),
        Err(e @ ApiError::NotFound(_)) => return error_page(e),
        Err(e) => e,
    };
    let (status, detail) = error.for_page();
    let problem = format!("Not done: {detail}.");
    match load(&state, &signed.caller, &project, &id).await {
        // Someone who may not act at all gets no form to try again with.
        Ok(shown) if shown.role < Role::Editor => error_page(error),
        Ok(shown) => html_response(
            status,
            confirm_page(&signed, &project, &shown, action, comment, &[problem]),
        ),
        Err(e) => error_page(e),
    }
}
