//! The web dashboard: server-rendered HTML at `/`.
//!
//! Pages are `maud` templates, checked by the compiler and escaping every interpolated value,
//! so a flag description holding `<script>` shows as text. The stylesheet and the one small
//! script are compiled into the binary and served under names carrying a hash of their
//! content, cached for a year; pages are never cached. Every response carries a
//! Content-Security-Policy that allows scripts and styles from this server only (no inline
//! script, style or event handler), and refuses framing.
//!
//! People sign in with the same users and the same sessions as `POST /api/v1/session`
//! (`auth::start_session`): the HttpOnly, SameSite=Strict `anchor_session` cookie. Every form
//! that writes carries the session's CSRF token in a hidden field, compared in constant time
//! (`auth::session_caller`). Writes call the very handlers of the management API (`api`,
//! `releases`), so validation, roles, revisions, audit entries, change requests and webhooks
//! are the API's own; the dashboard only renders their answers. Roles decide which buttons a
//! page shows, and the handlers, not the pages, enforce them.

mod audit;
mod change_requests;
mod editor;
mod flags;
mod live;
mod releases;
mod segments;
mod settings;

use std::sync::LazyLock;

use anchor_engine::{Condition, Operator};
use anchor_store::Role;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::{self, Caller};
use crate::error::ApiError;

/// What pages may load and where forms may go: this server only, no inline code, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes; `lib::router` merges them beside the API.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/projects", get(projects))
        .route("/assets/{name}", get(asset))
        .merge(flags::routes())
        .merge(releases::routes())
        .merge(audit::routes())
        .merge(change_requests::routes())
        .merge(segments::routes())
        .merge(settings::routes())
        .merge(editor::routes())
        .merge(live::routes())
        .layer(axum::middleware::from_fn(security_headers))
        // Pages and assets are text and shrink about tenfold: a list of a thousand flags is a
        // few dozen kilobytes on the wire. Event streams are left as they are (the default
        // predicate skips them), so live updates are not held back in a compressor's buffer.
        .layer(tower_http::compression::CompressionLayer::new())
}

/// The security headers of every dashboard response; pages are never stored by caches (they
/// hold a CSRF token and the caller's data), assets say so themselves.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

// ---- assets ----

/// An asset compiled into the binary, served under a name that carries its content's hash.
struct Asset {
    name: String,
    content_type: &'static str,
    body: &'static [u8],
}

impl Asset {
    fn new(stem: &str, extension: &str, content_type: &'static str, body: &'static [u8]) -> Self {
        let digest = Sha256::digest(body);
        let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            name: format!("{stem}.{hash}.{extension}"),
            content_type,
            body,
        }
    }

    fn href(&self) -> String {
        format!("/assets/{}", self.name)
    }
}

static ASSETS: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    [
        Asset::new(
            "dashboard",
            "css",
            "text/css; charset=utf-8",
            include_bytes!("../../assets/dashboard.css"),
        ),
        Asset::new(
            "dashboard",
            "js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/dashboard.js"),
        ),
    ]
});

/// The hashed names of the stylesheet and the script, as pages link them.
pub fn asset_paths() -> Vec<String> {
    ASSETS.iter().map(Asset::href).collect()
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        // The name changes with the content, so a copy may be kept for good.
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            asset.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

// ---- who is asking ----

/// A signed-in person and their session's CSRF token, for the forms of the page.
#[derive(Debug)]
pub(crate) struct Signed {
    pub caller: Caller,
    pub csrf: String,
}

/// Pages need a session: without one the browser is sent to sign in, and back afterwards.
impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match auth::session_caller(state, &parts.headers, None).await {
            Ok(Some((caller, csrf))) => Ok(Signed { caller, csrf }),
            Ok(None) => Err(to_sign_in(parts.uri.path_and_query().map(|p| p.as_str()))),
            Err(e) => Err(error_page(e)),
        }
    }
}

fn to_sign_in(next: Option<&str>) -> Response {
    match next.filter(|n| safe_next(n) && *n != "/") {
        Some(next) => Redirect::to(&format!("/sign-in?next={}", encode(next))).into_response(),
        None => Redirect::to("/sign-in").into_response(),
    }
}

/// The caller of a form that writes: the session, and the form's CSRF token must be its own.
pub(crate) async fn form_caller(
    state: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Signed, Response> {
    match auth::session_caller(state, headers, Some(Some(csrf))).await {
        Ok(Some((caller, csrf))) => Ok(Signed { caller, csrf }),
        Ok(None) => Err(to_sign_in(None)),
        Err(e) => Err(error_page(e)),
    }
}

/// Only a path of this server: never `//host` or an absolute URL (no open redirect).
fn safe_next(next: &str) -> bool {
    next.starts_with('/') && !next.starts_with("//") && !next.contains('\\')
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- the frame ----

/// What the frame shows around a page.
pub(crate) struct Frame<'a> {
    pub title: &'a str,
    pub signed: Option<&'a Signed>,
    pub project: Option<&'a str>,
}

pub(crate) fn page(frame: &Frame<'_>, body: Markup) -> Markup {
    let [css, js] = &*ASSETS;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · Release Anchor" }
                link rel="stylesheet" href=(css.href());
                script src=(js.href()) defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "⚓ Release Anchor" }
                    @if let Some(project) = frame.project {
                        nav aria-label="Project" {
                            a href={ "/projects/" (project) "/flags" } { "Flags" }
                            a href={ "/projects/" (project) "/releases" } { "Releases" }
                            a href={ "/projects/" (project) "/segments" } { "Segments" }
                            a href={ "/projects/" (project) "/change-requests" } { "Change requests" }
                            a href={ "/projects/" (project) "/audit" } { "Audit" }
                            a href={ "/projects/" (project) "/settings" } { "Settings" }
                        }
                    }
                    @if let Some(signed) = frame.signed {
                        div.who {
                            span { (signed.caller.user.username) }
                            form method="post" action="/sign-out" {
                                input type="hidden" name="csrf" value=(signed.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page of a project, for a signed-in person: the frame with the project's navigation.
pub(crate) fn project_page(signed: &Signed, project: &str, title: &str, body: Markup) -> Markup {
    page(
        &Frame {
            title,
            signed: Some(signed),
            project: Some(project),
        },
        body,
    )
}

/// A page that asks before a write: see [`confirmation`].
pub(crate) struct Confirmation<'a> {
    /// The page's title.
    pub title: &'a str,
    /// Where the page stands, shown above the question.
    pub crumbs: Option<Markup>,
    /// The heading: what is about to happen, as a question.
    pub question: Markup,
    /// The paragraphs under the question: what confirming does, and to whom.
    pub consequence: Markup,
    /// The problems of the last attempt, above the form.
    pub problems: &'a [String],
    /// Where the form posts; the page's own address when `None`.
    pub action: Option<String>,
    /// The fields the form sends beside the CSRF token: hidden values, a comment.
    pub fields: Markup,
    /// The words of the button that confirms.
    pub button: Markup,
    /// Whether the button is the page's main one, and whether it takes something away.
    pub primary: bool,
    pub danger: bool,
    /// The page that not confirming goes back to, and the link's words.
    pub back: String,
    pub back_words: &'a str,
}

/// Every confirmation in the dashboard has one shape, so that a person learns it once: the
/// question, its consequence, the problems of the last attempt, and a form that posts with the
/// session's CSRF token, with its button beside the way back.
pub(crate) fn confirmation(signed: &Signed, project: &str, asked: Confirmation<'_>) -> Markup {
    let button_class = match (asked.primary, asked.danger) {
        (true, true) => Some("primary danger"),
        (true, false) => Some("primary"),
        (false, true) => Some("danger"),
        (false, false) => None,
    };
    project_page(
        signed,
        project,
        asked.title,
        html! {
            section.narrow {
                @if let Some(crumbs) = asked.crumbs { (crumbs) }
                h1 { (asked.question) }
                (asked.consequence)
                (field_problems(asked.problems))
                form.stack method="post" action=[asked.action] {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    (asked.fields)
                    div.actions {
                        button class=[button_class] type="submit" { (asked.button) }
                        a href=(asked.back) { (asked.back_words) }
                    }
                }
            }
        },
    )
}

pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// An error as a page: the status and text `error::ApiError::for_page` gives.
pub(crate) fn error_page(error: ApiError) -> Response {
    if matches!(error, ApiError::Unauthenticated) {
        return to_sign_in(None);
    }
    let (status, detail) = error.for_page();
    let title = status.canonical_reason().unwrap_or("Error");
    html_response(
        status,
        page(
            &Frame {
                title,
                signed: None,
                project: None,
            },
            html! {
                h1 { (title) }
                p.problem role="alert" { (detail) }
                p { a href="/" { "Back to the dashboard" } }
            },
        ),
    )
}

/// A problem next to a form field.
pub(crate) fn field_problems(problems: &[String]) -> Markup {
    html! {
        @for problem in problems {
            p.field-problem role="alert" { (problem) }
        }
    }
}

/// Rebuilds the SDKs' snapshots of one environment after a write the dashboard made; the
/// snapshot-refreshing middleware watches the API's paths only. A failure is logged, not
/// shown: the write itself has been made.
pub(crate) async fn refresh(state: &AppState, project: &str, environment: &str) {
    if let Err(e) = state
        .snapshots
        .refresh(state.store.as_ref(), project, environment)
        .await
    {
        tracing::warn!(error = %e, %project, "cannot rebuild snapshots after a write");
    }
}

/// As [`refresh`], for every environment of the project.
pub(crate) async fn refresh_project(state: &AppState, project: &str) {
    if let Err(e) = state
        .snapshots
        .refresh_project(state.store.as_ref(), project)
        .await
    {
        tracing::warn!(error = %e, %project, "cannot rebuild snapshots after a write");
    }
}

/// The time of a unix millisecond instant, in UTC, to the second.
pub(crate) fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day count since
/// 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A share in percent, as short as it can be said exactly enough.
pub(crate) fn percent(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}%")
    } else {
        let text = format!("{value:.3}");
        format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// A query value with its spaces trimmed, `None` when nothing is left.
pub(crate) fn nonempty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// Every operator the engine knows, in the order the forms offer them.
pub(crate) const OPERATORS: [Operator; 19] = [
    Operator::In,
    Operator::NotIn,
    Operator::StartsWith,
    Operator::EndsWith,
    Operator::Contains,
    Operator::Matches,
    Operator::Lt,
    Operator::Lte,
    Operator::Gt,
    Operator::Gte,
    Operator::SemverEq,
    Operator::SemverLt,
    Operator::SemverLte,
    Operator::SemverGt,
    Operator::SemverGte,
    Operator::Before,
    Operator::After,
    Operator::Exists,
    Operator::SegmentMatch,
];

/// A targeting condition in words; `operator` is how the page says the operator.
pub(crate) fn condition_words(condition: &Condition, operator: &str) -> String {
    let values: Vec<String> = condition
        .values
        .iter()
        .map(|v| match v {
            serde_json::Value::String(s) => format!("“{s}”"),
            other => other.to_string(),
        })
        .collect();
    let not = if condition.negate { "not " } else { "" };
    let case = if condition.case_insensitive {
        " (ignoring case)"
    } else {
        ""
    };
    match condition.operator {
        Operator::SegmentMatch => format!("{not}in segment {}", values.join(" or ")),
        Operator::Exists => format!("{} {not}exists", condition.attribute),
        _ => format!(
            "{} {not}{operator} {}{case}",
            condition.attribute,
            values.join(", ")
        ),
    }
}

// ---- pages of the frame ----

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match auth::session_caller(&state, &headers, None).await {
        Ok(Some(_)) => Redirect::to("/projects").into_response(),
        Ok(None) => to_sign_in(None),
        Err(e) => error_page(e),
    }
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn sign_in_form(next: Option<&str>, username: &str, problem: Option<&str>) -> Markup {
    page(
        &Frame {
            title: "Sign in",
            signed: None,
            project: None,
        },
        html! {
            section.narrow {
                h1 { "Sign in" }
                @if let Some(problem) = problem {
                    p.problem role="alert" { (problem) }
                }
                form.stack method="post" action="/sign-in" {
                    @if let Some(next) = next {
                        input type="hidden" name="next" value=(next);
                    }
                    label for="username" { "User name" }
                    input #username name="username" autocomplete="username" required value=(username);
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" required;
                    button.primary type="submit" { "Sign in" }
                }
            }
        },
    )
}

async fn sign_in_page(Query(query): Query<NextQuery>) -> Response {
    let next = query.next.as_deref().filter(|n| safe_next(n));
    html_response(StatusCode::OK, sign_in_form(next, "", None))
}

#[derive(Deserialize)]
struct SignInForm {
    username: String,
    password: String,
    next: Option<String>,
}

/// Signs in with the API's password check (throttled per user name) and starts the same
/// session `POST /api/v1/session` starts. A form from another site cannot sign a victim in
/// to the attacker's account usefully: the cookie is SameSite=Strict and set only here.
async fn sign_in(
    State(state): State<AppState>,
    axum::Form(form): axum::Form<SignInForm>,
) -> Response {
    let next = form.next.as_deref().filter(|n| safe_next(n));
    let caller = match auth::sign_in(&state, &form.username, &form.password).await {
        Ok(caller) => caller,
        Err(ApiError::Unauthenticated) => {
            return html_response(
                StatusCode::UNAUTHORIZED,
                sign_in_form(next, &form.username, Some("Wrong user name or password.")),
            );
        }
        Err(ApiError::TooManyRequests) => {
            return html_response(
                StatusCode::TOO_MANY_REQUESTS,
                sign_in_form(
                    next,
                    &form.username,
                    Some("Too many failed attempts for this user: wait five minutes."),
                ),
            );
        }
        Err(e) => return error_page(e),
    };
    match auth::start_session(&state, &caller).await {
        Ok(session) => {
            let mut response = Redirect::to(next.unwrap_or("/projects")).into_response();
            if let Ok(cookie) = HeaderValue::from_str(&session.cookie) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(e) => error_page(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    pub csrf: String,
}

async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Err(response) = form_caller(&state, &headers, &form.csrf).await {
        return response;
    }
    if let Some(id) = auth::session_cookie_in(&headers)
        && let Err(e) = state.store.delete_session(&auth::token_hash(&id)).await
    {
        return error_page(e.into());
    }
    let mut response = Redirect::to("/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(auth::CLEAR_SESSION_COOKIE),
    );
    response
}

async fn projects(State(state): State<AppState>, signed: Signed) -> Response {
    let all = match state.store.projects().await {
        Ok(all) => all,
        Err(e) => return error_page(e.into()),
    };
    let mut visible = Vec::new();
    for project in all {
        match signed.caller.role_in(&state, &project.key).await {
            Ok(Some(role)) => visible.push((project, role)),
            Ok(None) => {}
            Err(e) => return error_page(e),
        }
    }
    // One project: nothing to choose.
    if let [(only, _)] = visible.as_slice() {
        return Redirect::to(&format!("/projects/{}/flags", only.key)).into_response();
    }
    html_response(
        StatusCode::OK,
        page(
            &Frame {
                title: "Projects",
                signed: Some(&signed),
                project: None,
            },
            html! {
                h1 { "Projects" }
                @if visible.is_empty() {
                    p { "You are not a member of any project yet: ask an administrator." }
                }
                ul.cards {
                    @for (project, role) in &visible {
                        li {
                            a href={ "/projects/" (project.key) "/flags" } { strong { (project.name) } }
                            " "
                            span.badge { (role_name(*role)) }
                        }
                    }
                }
            },
        ),
    )
}

pub(crate) fn role_name(role: Role) -> &'static str {
    role.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_gregorian_in_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(time(1_795_000_000_123), "2026-11-18 11:06:40 UTC");
    }

    #[test]
    fn only_paths_of_this_server_are_followed_after_signing_in() {
        assert!(safe_next("/projects/default/flags?q=a"));
        assert!(!safe_next("//evil.example/"));
        assert!(!safe_next("https://evil.example/"));
        assert!(!safe_next("/\\evil.example"));
    }

    #[test]
    fn shares_print_without_needless_digits() {
        assert_eq!(percent(25.0), "25%");
        assert_eq!(percent(2.5), "2.5%");
        assert_eq!(percent(0.125), "0.125%");
    }
}
