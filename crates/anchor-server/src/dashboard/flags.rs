//! The flags of a project: the list with filters, creating a flag, one flag's page with its
//! configuration per environment, the kill switch, and evaluation with the engine's
//! explanation.

use std::collections::HashMap;

use anchor_engine::{Flag, FlagConfig, FlagKind, Lifecycle, Serve, Variant};
use anchor_store::{Environment, FlagFilter, FlagRecord, LifecycleStatus, ReleaseRecord, Role};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    Confirmation, Signed, condition_words, confirmation, encode, error_page, field_problems,
    form_caller, html_response, nonempty, percent, project_page, refresh, refresh_project, time,
};
use crate::AppState;
use crate::api::{self, Body, ConfigUpdate, RevertRequest};
use crate::error::ApiError;
use crate::lifecycle;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{project}", get(project_home))
        .route("/projects/{project}/flags", get(list).post(create))
        .route("/projects/{project}/new-flag", get(new_flag))
        .route("/projects/{project}/flags/{flag}", get(flag_page))
        .route(
            "/projects/{project}/flags/{flag}/environments/{environment}/switch",
            get(confirm_switch).post(switch),
        )
        .route(
            "/projects/{project}/flags/{flag}/environments/{environment}/history",
            get(history),
        )
        .route(
            "/projects/{project}/flags/{flag}/environments/{environment}/revert",
            get(confirm_revert).post(revert),
        )
}

async fn project_home(Path(project): Path<String>) -> Redirect {
    Redirect::to(&format!("/projects/{}/flags", encode(&project)))
}

/// Whether the flag API calls the flag stale: the status `lifecycle::fill` gave it, so the
/// dashboard, the API, `anchor scan` and the MCP server give one verdict.
pub(crate) fn is_stale(record: &FlagRecord) -> bool {
    record.status == Some(LifecycleStatus::Stale)
}

/// The flag's status in words, when it says more than its lifecycle.
fn status_word(record: &FlagRecord) -> Option<&'static str> {
    match record.status? {
        LifecycleStatus::New => Some("new"),
        LifecycleStatus::RolledOut => Some("rolled out"),
        LifecycleStatus::Active | LifecycleStatus::Stale | LifecycleStatus::Archived => None,
    }
}

/// A weight out of 100,000 as a percentage.
fn weight_percent(weight: u32) -> String {
    percent(f64::from(weight) / 1000.0)
}

/// What a serve hands out, in a few words.
fn serve_text(serve: &Serve) -> String {
    match serve {
        Serve::Variant(v) => v.clone(),
        Serve::Rollout(rollout) => {
            let parts: Vec<String> = rollout
                .variants
                .iter()
                .map(|w| format!("{} {}", w.variant, weight_percent(w.weight)))
                .collect();
            parts.join(" · ")
        }
    }
}

/// The state of a release as a word or two.
pub(crate) fn release_state_name(record: &ReleaseRecord) -> String {
    match record.state.get("state").and_then(|s| s.as_str()) {
        Some("waitingForApproval") => "waiting for approval".into(),
        Some("rolledBack") => "rolled back".into(),
        Some(other) => other.to_string(),
        None => "unknown".into(),
    }
}

/// The treatment's share in the serve a release moves, in percent.
pub(crate) fn release_share(config: &FlagConfig, record: &ReleaseRecord) -> f64 {
    let serve = match &record.rule {
        Some(id) => config.rules.iter().find(|r| &r.id == id).map(|r| &r.serve),
        None => Some(&config.default_serve),
    };
    match serve {
        Some(Serve::Rollout(rollout)) => {
            let total: u64 = rollout.variants.iter().map(|w| u64::from(w.weight)).sum();
            let treatment: u64 = rollout
                .variants
                .iter()
                .filter(|w| w.variant == record.treatment)
                .map(|w| u64::from(w.weight))
                .sum();
            if total == 0 {
                0.0
            } else {
                treatment as f64 * 100.0 / total as f64
            }
        }
        Some(Serve::Variant(v)) if *v == record.treatment => 100.0,
        _ => 0.0,
    }
}

// ---- the list ----

#[derive(Deserialize, Default)]
struct ListQuery {
    q: Option<String>,
    lifecycle: Option<String>,
    on: Option<String>,
    stale: Option<String>,
    after: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    match render_list(&state, &signed, &project, &query).await {
        Ok(markup) => html_response(StatusCode::OK, markup),
        Err(e) => error_page(e),
    }
}

async fn render_list(
    state: &AppState,
    signed: &Signed,
    project: &str,
    query: &ListQuery,
) -> Result<Markup, ApiError> {
    let since = super::live::since(state, project).await;
    let role = signed.caller.require(state, project, Role::Viewer).await?;
    let lifecycle = match nonempty(&query.lifecycle).as_deref() {
        Some("temporary") => Some(Lifecycle::Temporary),
        Some("permanent") => Some(Lifecycle::Permanent),
        _ => None,
    };
    // The environments first: their revision counters say whether the kept list is current.
    let environments = state.store.environments(project).await?;
    let enabled_in = nonempty(&query.on).filter(|on| environments.iter().any(|e| &e.key == on));
    let filter = FlagFilter {
        tag: None,
        lifecycle,
        enabled_in: enabled_in.clone(),
        text: nonempty(&query.q),
        include_archived: false,
        after: nonempty(&query.after),
        limit: 1000,
    };
    // Three reads at once: the (usually kept) list, the telemetry and the releases.
    let (listed, last, releases) = tokio::try_join!(
        state
            .flag_lists
            .flags(&*state.store, &state.snapshots, project, &environments),
        lifecycle::last_evaluated(&*state.store, project),
        state.store.releases(project, None, None),
    )?;
    let now = state.now_ms();
    let after = filter.after.as_deref().unwrap_or("");
    let mut items: Vec<FlagRecord> = listed
        .records
        .iter()
        .filter(|r| r.flag.key.as_str() > after && filter.matches(r))
        .take(filter.limit as usize + 1)
        .cloned()
        .collect();
    let more = items.len() > filter.limit as usize;
    items.truncate(filter.limit as usize);
    let next_after = more
        .then(|| items.last().map(|r| r.flag.key.clone()))
        .flatten();
    lifecycle::apply(&mut items, &listed.serving_since, &last, now);
    let releases: HashMap<(String, String), ReleaseRecord> = releases
        .into_iter()
        .filter(|r| r.active)
        .map(|r| ((r.flag.clone(), r.environment.clone()), r))
        .collect();
    let stale_only = query.stale.is_some();
    let rows: Vec<&FlagRecord> = items
        .iter()
        .filter(|f| !stale_only || is_stale(f))
        .collect();
    let q = nonempty(&query.q).unwrap_or_default();
    let next = next_after.as_ref().map(|after| {
        let mut link = format!(
            "/projects/{}/flags?after={}",
            encode(project),
            encode(after)
        );
        for (name, value) in [
            ("q", &query.q),
            ("lifecycle", &query.lifecycle),
            ("on", &query.on),
        ] {
            if let Some(value) = nonempty(value) {
                link.push_str(&format!("&{name}={}", encode(&value)));
            }
        }
        if stale_only {
            link.push_str("&stale=1");
        }
        link
    });
    Ok(project_page(
        signed,
        project,
        "Flags",
        html! {
            (super::live::marker(project, &since, "flag release", None))
            div.heading {
                h1 { "Flags" }
                @if role >= Role::Editor {
                    a.button.primary href={ "/projects/" (project) "/new-flag" } { "New flag" }
                }
            }
            form.filters method="get" role="search" data-autosubmit {
                label for="q" { "Search" }
                input #q type="search" name="q" value=(q) placeholder="key, description or tag";
                label for="lifecycle" { "Lifecycle" }
                select #lifecycle name="lifecycle" {
                    option value="" { "any" }
                    option value="temporary" selected[lifecycle == Some(Lifecycle::Temporary)] { "temporary" }
                    option value="permanent" selected[lifecycle == Some(Lifecycle::Permanent)] { "permanent" }
                }
                label for="on" { "On in" }
                select #on name="on" {
                    option value="" { "any environment" }
                    @for env in &environments {
                        option value=(env.key) selected[enabled_in.as_deref() == Some(env.key.as_str())] { (env.name) }
                    }
                }
                label.check { input type="checkbox" name="stale" value="1" checked[stale_only]; "stale only" }
                button type="submit" { "Filter" }
            }
            p.count { (rows.len()) " flags" @if next.is_some() { " on this page" } }
            table.flags {
                thead {
                    tr {
                        th scope="col" { "Flag" }
                        th scope="col" { "Lifecycle" }
                        @for env in &environments { th scope="col" { (env.name) } }
                    }
                }
                tbody {
                    @for record in &rows {
                        (flag_row(project, record, &environments, &releases))
                    }
                }
            }
            @if let Some(next) = next {
                p { a href=(next) { "Next page" } }
            }
        },
    ))
}

/// One row of the list. Kept terse (relative links, one-letter classes, a bold word as the
/// badge): a thousand rows must stay well under 300 KB.
fn flag_row(
    project: &str,
    record: &FlagRecord,
    environments: &[Environment],
    releases: &HashMap<(String, String), ReleaseRecord>,
) -> Markup {
    let flag = &record.flag;
    let description: String = flag.description.chars().take(90).collect();
    html! {
        tr {
            td {
                // Relative to `/projects/{project}/flags`.
                a href={ "flags/" (flag.key) } { (flag.key) }
                @if !description.is_empty() { small { (description) } }
            }
            td {
                (lifecycle_name(flag.lifecycle))
                // "new" would badge every young flag: the list names only what asks for work.
                @if record.status == Some(LifecycleStatus::RolledOut) { " " span.b { "rolled out" } }
                @if is_stale(record) { " " span.b.stale { "stale" } }
            }
            @for env in environments {
                @let config = record.environments.iter().find(|c| c.environment == env.key);
                @match config {
                    Some(c) if c.config.enabled => {
                        td.n {
                            b { "on" } " " (serve_text(&c.config.default_serve))
                            @match c.config.rules.len() {
                                0 => {}
                                1 => { " +1 rule" }
                                n => { " +" (n) " rules" }
                            }
                            @if let Some(r) = releases.get(&(flag.key.clone(), env.key.clone())) {
                                br;
                                a.b.rel href={ "/projects/" (project) "/releases/" (r.id) } {
                                    (release_state_name(r)) " " (percent(release_share(&c.config, r)))
                                }
                            }
                        }
                    }
                    Some(_) => { td.f { b { "off" } } }
                    None => { td { "—" } }
                }
            }
        }
    }
}

fn lifecycle_name(lifecycle: Lifecycle) -> &'static str {
    match lifecycle {
        Lifecycle::Temporary => "temporary",
        Lifecycle::Permanent => "permanent",
    }
}

// ---- creating a flag ----

#[derive(Deserialize, Default)]
struct NewFlagForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    lifecycle: String,
    #[serde(default)]
    cleanup_date: String,
    #[serde(default)]
    variants: String,
}

/// Form problems by field name; `form` for those that belong to no field.
type Problems = HashMap<&'static str, Vec<String>>;

/// The form field a JSON pointer of the flag's body belongs to.
fn field_of(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "key" => "key",
        "kind" => "kind",
        "variants" => "variants",
        "description" => "description",
        "tags" => "tags",
        "lifecycle" => "lifecycle",
        "cleanupDate" => "cleanup_date",
        _ => "form",
    }
}

fn new_flag_page(
    signed: &Signed,
    project: &str,
    form: &NewFlagForm,
    problems: &Problems,
) -> Markup {
    let none = Vec::new();
    let problems_of = |field: &str| problems.get(field).unwrap_or(&none);
    let kind = if form.kind.is_empty() {
        "boolean"
    } else {
        form.kind.as_str()
    };
    let variants = if form.variants.is_empty() && kind == "boolean" {
        "on = true\noff = false"
    } else {
        form.variants.as_str()
    };
    project_page(
        signed,
        project,
        "New flag",
        html! {
            h1 { "New flag" }
            p { "It starts turned off in every environment." }
            (field_problems(problems_of("form")))
            form.stack method="post" action={ "/projects/" (project) "/flags" } novalidate {
                input type="hidden" name="csrf" value=(signed.csrf);
                label for="key" { "Key" }
                input #key name="key" value=(form.key) required aria-describedby="key-help"
                    aria-invalid=[problems.contains_key("key").then_some("true")];
                small #key-help { "Letters, digits, '-', '_' and '.'; how code names the flag." }
                (field_problems(problems_of("key")))
                label for="kind" { "Kind" }
                select #kind name="kind" {
                    @for k in ["boolean", "string", "number", "json"] {
                        option value=(k) selected[k == kind] { (k) }
                    }
                }
                (field_problems(problems_of("kind")))
                label for="variants" { "Variants" }
                textarea #variants name="variants" rows="4" aria-describedby="variants-help"
                    aria-invalid=[problems.contains_key("variants").then_some("true")] { (variants) }
                small #variants-help { "One per line: name = value (JSON for numbers, booleans and JSON flags)." }
                (field_problems(problems_of("variants")))
                label for="description" { "Description" }
                textarea #description name="description" rows="2" { (form.description) }
                (field_problems(problems_of("description")))
                label for="tags" { "Tags" }
                input #tags name="tags" value=(form.tags) aria-describedby="tags-help";
                small #tags-help { "Separated by commas." }
                (field_problems(problems_of("tags")))
                label for="lifecycle" { "Lifecycle" }
                select #lifecycle name="lifecycle" {
                    option value="temporary" selected[form.lifecycle != "permanent"] { "temporary (a release or an experiment)" }
                    option value="permanent" selected[form.lifecycle == "permanent"] { "permanent (operational, entitlement)" }
                }
                (field_problems(problems_of("lifecycle")))
                label for="cleanup_date" { "Cleanup date" }
                input #cleanup_date name="cleanup_date" type="date" value=(form.cleanup_date);
                (field_problems(problems_of("cleanup_date")))
                div.actions {
                    button.primary type="submit" { "Create flag" }
                    a href={ "/projects/" (project) "/flags" } { "Cancel" }
                }
            }
        },
    )
}

async fn new_flag(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
) -> Response {
    if let Err(e) = signed.caller.require(&state, &project, Role::Editor).await {
        return error_page(e);
    }
    html_response(
        StatusCode::OK,
        new_flag_page(&signed, &project, &NewFlagForm::default(), &Problems::new()),
    )
}

/// The flag the form describes, or the problems of the fields the API cannot see (variant
/// values that are not JSON), each with its field.
fn flag_from_form(form: &NewFlagForm) -> Result<Flag, Problems> {
    let mut problems = Problems::new();
    let kind = match form.kind.as_str() {
        "string" => FlagKind::String,
        "number" => FlagKind::Number,
        "json" => FlagKind::Json,
        _ => FlagKind::Boolean,
    };
    let mut variants = Vec::new();
    for (i, line) in form
        .variants
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
    {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        let value = value.trim();
        let parsed = match serde_json::from_str::<serde_json::Value>(value) {
            Ok(v) => Ok(v),
            // A string flag's values need no quotes.
            Err(_) if kind == FlagKind::String => Ok(serde_json::Value::String(value.to_string())),
            Err(e) => Err(format!(
                "line {}: `{value}` is not a JSON value ({e})",
                i + 1
            )),
        };
        match parsed {
            Ok(value) => variants.push(Variant {
                name: name.trim().to_string(),
                value,
                description: String::new(),
            }),
            Err(problem) => problems.entry("variants").or_default().push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Flag {
        key: form.key.trim().to_string(),
        kind,
        variants,
        description: form.description.trim().to_string(),
        tags: form
            .tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        lifecycle: if form.lifecycle == "permanent" {
            Lifecycle::Permanent
        } else {
            Lifecycle::Temporary
        },
        cleanup_date: Some(form.cleanup_date.trim().to_string()).filter(|d| !d.is_empty()),
    })
}

/// Creates the flag through the API's own handler: the same validation, revision and audit
/// entry; its problems come back by JSON pointer and are shown next to their fields.
async fn create(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<NewFlagForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let flag = match flag_from_form(&form) {
        Ok(flag) => flag,
        Err(problems) => {
            // The rights come first: someone who may not create flags learns only that.
            if let Err(e) = signed.caller.require(&state, &project, Role::Editor).await {
                return error_page(e);
            }
            return html_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                new_flag_page(&signed, &project, &form, &problems),
            );
        }
    };
    let key = flag.key.clone();
    let created = api::create_flag(
        State(state.clone()),
        signed.caller.clone(),
        Path(project.clone()),
        Body::new(flag),
    )
    .await;
    let mut problems = Problems::new();
    match created {
        Ok(_) => {
            refresh_project(&state, &project).await;
            return Redirect::to(&format!(
                "/projects/{}/flags/{}",
                encode(&project),
                encode(&key)
            ))
            .into_response();
        }
        Err(ApiError::Invalid(diagnostics)) => {
            for d in diagnostics {
                problems
                    .entry(field_of(&d.path))
                    .or_default()
                    .push(d.message);
            }
        }
        Err(ApiError::Conflict(message)) => problems.entry("key").or_default().push(message),
        Err(e) => return error_page(e),
    }
    html_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        new_flag_page(&signed, &project, &form, &problems),
    )
}

// ---- one flag ----

#[derive(Deserialize, Default)]
struct FlagQuery {
    /// The environment to evaluate in, and the context as JSON.
    env: Option<String>,
    context: Option<String>,
    notice: Option<String>,
}

async fn flag_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag)): Path<(String, String)>,
    Query(query): Query<FlagQuery>,
) -> Response {
    match render_flag(&state, &signed, &project, &flag, &query).await {
        Ok(markup) => html_response(StatusCode::OK, markup),
        Err(e) => error_page(e),
    }
}

/// The evaluation the page shows: the engine's explanation, or why there is none.
enum Evaluated {
    Explained {
        environment: String,
        text: String,
    },
    Refused {
        environment: String,
        problem: String,
    },
}

async fn evaluate(
    state: &AppState,
    signed: &Signed,
    project: &str,
    flag: &str,
    environment: &str,
    context: &str,
) -> Evaluated {
    let refused = |problem: String| Evaluated::Refused {
        environment: environment.to_string(),
        problem,
    };
    let context: serde_json::Value = match serde_json::from_str(context) {
        Ok(value) => value,
        Err(e) => return refused(format!("the context is not JSON: {e}")),
    };
    match api::explain_flag(
        State(state.clone()),
        signed.caller.clone(),
        Path((
            project.to_string(),
            environment.to_string(),
            flag.to_string(),
        )),
        Body::new(context),
    )
    .await
    {
        Ok(axum::Json(explained)) => Evaluated::Explained {
            environment: environment.to_string(),
            text: explained.text,
        },
        Err(e) => refused(e.for_page().1),
    }
}

fn serve_markup(serve: &Serve) -> Markup {
    match serve {
        Serve::Variant(v) => html! { "serve " strong { (v) } },
        Serve::Rollout(rollout) => html! {
            "split "
            @for (i, w) in rollout.variants.iter().enumerate() {
                @if i > 0 { " · " }
                strong { (w.variant) } " " (weight_percent(w.weight))
            }
            @if let Some(by) = &rollout.bucket_by { " by " code { (by) } }
        },
    }
}

fn config_markup(config: &FlagConfig) -> Markup {
    html! {
        @if !config.prerequisites.is_empty() {
            h4 { "Prerequisites" }
            ul {
                @for p in &config.prerequisites {
                    li { code { (p.flag) } " serves " strong { (p.variant) } }
                }
            }
        }
        @if !config.targets.is_empty() {
            h4 { "Individual targets" }
            ul {
                @for (variant, keys) in &config.targets {
                    li { strong { (variant) } ": " (keys.join(", ")) }
                }
            }
        }
        @if !config.rules.is_empty() {
            h4 { "Rules" }
            ol.rules {
                @for rule in &config.rules {
                    li {
                        @if !rule.description.is_empty() { span.d { (rule.description) } br; }
                        @if rule.conditions.is_empty() { "always" } @else { "if " }
                        @for (i, c) in rule.conditions.iter().enumerate() {
                            @if i > 0 { " and " }
                            code { (condition_words(c, &c.operator.as_str().replace('_', " "))) }
                        }
                        " → " (serve_markup(&rule.serve))
                    }
                }
            }
        }
        p { "Otherwise " (serve_markup(&config.default_serve)) "; when off, serve " strong { (config.off_variant) } "." }
    }
}

fn notice_text(notice: &str) -> Option<String> {
    let (what, env) = notice.split_once(':')?;
    match what {
        "on" => Some(format!("Turned on in {env}.")),
        "off" => Some(format!("Turned off in {env}.")),
        "requested" => Some(format!(
            "{env} requires approval: the change waits as a change request."
        )),
        _ => None,
    }
}

async fn render_flag(
    state: &AppState,
    signed: &Signed,
    project: &str,
    flag: &str,
    query: &FlagQuery,
) -> Result<Markup, ApiError> {
    let since = super::live::since(state, project).await;
    let role = signed.caller.require(state, project, Role::Viewer).await?;
    let mut record = state.store.flag(project, flag).await?;
    lifecycle::fill(
        &*state.store,
        project,
        std::slice::from_mut(&mut record),
        state.now_ms(),
    )
    .await?;
    let environments = state.store.environments(project).await?;
    let releases = state.store.releases(project, None, Some(flag)).await?;
    // Requests still waiting on this flag, so the page can point to them.
    let pending: Vec<anchor_store::ChangeRequest> = state
        .store
        .change_requests(project, None, None)
        .await?
        .into_iter()
        .filter(|r| r.flag == flag && r.resource_kind == "flag" && r.status.is_pending())
        .collect();
    let evaluated = match (nonempty(&query.env), query.context.as_deref()) {
        (Some(env), Some(context)) => {
            Some(evaluate(state, signed, project, flag, &env, context).await)
        }
        _ => None,
    };
    let context_text = query
        .context
        .clone()
        .unwrap_or_else(|| "{\"targetingKey\": \"user-42\"}".into());
    let json = serde_json::to_string_pretty(&record).unwrap_or_default();
    let f = &record.flag;
    let title = format!("Flag {}", f.key);
    Ok(project_page(
        signed,
        project,
        &title,
        html! {
            (super::live::marker(project, &since, "flag release", None))
            p.crumbs { a href={ "/projects/" (project) "/flags" } { "Flags" } " / " }
            h1 { (f.key) }
            @if let Some(notice) = query.notice.as_deref().and_then(notice_text) {
                p.notice role="status" { (notice) }
            }
            @if !f.description.is_empty() { p.description { (f.description) } }
            p.meta {
                span.b { (f.kind.as_str()) }
                " " span.b { (lifecycle_name(f.lifecycle)) }
                @if let Some(word) = status_word(&record) { " " span.b { (word) } }
                @if is_stale(&record) { " " span.b.stale { "stale" } }
                @if let Some(date) = &f.cleanup_date { " cleanup by " (date) }
                @for tag in &f.tags { " " span.b.tag { (tag) } }
                @if record.archived { " " span.b.off { "archived" } }
            }
            h2 { "Variants" }
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } } }
                tbody {
                    @for v in &f.variants {
                        tr { td { (v.name) } td { code { (v.value.to_string()) } } }
                    }
                }
            }
            h2 { "Environments" }
            div.envs {
                @for env in &environments {
                    @let config = record.environments.iter().find(|c| c.environment == env.key);
                    @if let Some(c) = config {
                        section.env aria-label=(env.name) {
                            h3 {
                                (env.name) " "
                                @if c.config.enabled { span.b.on { "on" } } @else { span.b.off { "off" } }
                            }
                            p.small { "version " (c.config.version) ", changed " (time(c.updated_at)) }
                            @if role >= Role::Editor && !record.archived {
                                @let to = if c.config.enabled { "off" } else { "on" };
                                a.button.danger[c.config.enabled] href={ "/projects/" (project) "/flags/" (f.key) "/environments/" (env.key) "/switch?to=" (to) } {
                                    "Turn " (to) " in " (env.name)
                                }
                            }
                            @if role >= Role::Editor && !record.archived {
                                " "
                                a.button href={ "/projects/" (project) "/flags/" (f.key) "/environments/" (env.key) "/targeting" } {
                                    "Edit targeting in " (env.name)
                                }
                            }
                            (config_markup(&c.config))
                            p.small { a href={ "/projects/" (project) "/flags/" (f.key) "/environments/" (env.key) "/history" } { "History of " (env.name) } }
                            @for r in pending.iter().filter(|r| r.environment == env.key) {
                                p.pending { a href={ "/projects/" (project) "/change-requests/" (r.id) } { "Change request " (r.status.as_str()) " (by " (r.author.id) ")" } }
                            }
                            @for r in releases.iter().filter(|r| r.environment == env.key && r.active) {
                                p { "Release: " a href={ "/projects/" (project) "/releases/" (r.id) } {
                                    (release_state_name(r)) ", " (r.treatment) " at " (percent(release_share(&c.config, r)))
                                } }
                            }
                            @if role >= Role::Editor && !record.archived && !releases.iter().any(|r| r.environment == env.key && r.active) {
                                p { a href={ "/projects/" (project) "/flags/" (f.key) "/environments/" (env.key) "/release" } { "Start a release in " (env.name) } }
                            }
                        }
                    }
                }
            }
            h2 { "Evaluate for a context" }
            form.stack method="get" action={ "/projects/" (project) "/flags/" (f.key) } {
                label for="eval-env" { "Environment" }
                select #eval-env name="env" {
                    @for env in &environments {
                        option value=(env.key) selected[query.env.as_deref() == Some(env.key.as_str())] { (env.name) }
                    }
                }
                label for="context" { "Evaluation context (JSON)" }
                textarea #context name="context" rows="3" { (context_text) }
                button type="submit" { "Evaluate" }
            }
            @match &evaluated {
                Some(Evaluated::Explained { environment, text }) => {
                    h3 { "Why, in " (environment) }
                    pre.explain { (text) }
                }
                Some(Evaluated::Refused { environment, problem }) => {
                    p.problem role="alert" { "Cannot evaluate in " (environment) ": " (problem) }
                }
                None => {}
            }
            details.json {
                summary { "JSON" }
                pre { (json) }
            }
            @if !releases.is_empty() {
                h2 { "Releases" }
                ul {
                    @for r in &releases {
                        li { a href={ "/projects/" (project) "/releases/" (r.id) } { (r.environment) ": " (r.treatment) " over " (r.control) ", " (release_state_name(r)) } " (" (time(r.created_at)) ")" }
                    }
                }
            }
        },
    ))
}

// ---- the kill switch ----

#[derive(Deserialize)]
struct SwitchQuery {
    to: String,
}

#[derive(Deserialize)]
struct SwitchForm {
    csrf: String,
    to: String,
    version: u64,
    #[serde(default)]
    comment: String,
}

fn switch_page(
    signed: &Signed,
    project: &str,
    flag: &str,
    env: &Environment,
    to: &str,
    version: u64,
    problems: &[String],
) -> Markup {
    confirmation(
        signed,
        project,
        Confirmation {
            title: &format!("Turn {to} {flag} in {}", env.name),
            crumbs: None,
            question: html! { "Turn " (to) " " code { (flag) } " in " (env.name) "?" },
            consequence: html! {
                @if to == "off" {
                    p { "Every context in " strong { (env.name) } " gets the off variant at once, whatever the rules say. SDKs following the stream receive the change within seconds." }
                } @else {
                    p { "The rules and the default serve of " strong { (env.name) } " apply again." }
                }
            },
            problems,
            action: None,
            fields: html! {
                input type="hidden" name="to" value=(to);
                input type="hidden" name="version" value=(version);
                (comment_field(env))
            },
            button: html! { "Turn " (to) " in " (env.name) },
            primary: true,
            danger: to == "off",
            back: format!("/projects/{project}/flags/{flag}"),
            back_words: "Cancel",
        },
    )
}

/// The comment a kill switch or a revert carries into the revision, required where the
/// environment says so.
fn comment_field(env: &Environment) -> Markup {
    html! {
        label for="comment" { "Comment" @if env.requires_comment { " (required in " (env.name) ")" } }
        input #comment name="comment" required[env.requires_comment];
    }
}

/// The environment and the flag's current configuration there, as a confirmation shows them.
async fn environment_and_config(
    state: &AppState,
    project: &str,
    environment: &str,
    flag: &str,
) -> Result<(Environment, FlagConfig), ApiError> {
    let env = state.store.environment(project, environment).await?;
    let config = api::current_config(state, project, environment, flag).await?;
    Ok((env, config))
}

/// The problems of a refused configuration write, shown on its confirmation again; other
/// errors are the caller's to show.
fn write_problems(error: ApiError) -> Result<Vec<String>, ApiError> {
    match error {
        ApiError::Invalid(diagnostics) => Ok(diagnostics.into_iter().map(|d| d.message).collect()),
        ApiError::PreconditionFailed(_) => Ok(vec![
            "Someone changed this flag in the meantime: look at it again before you confirm."
                .to_string(),
        ]),
        e => Err(e),
    }
}

async fn confirm_switch(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment)): Path<(String, String, String)>,
    Query(query): Query<SwitchQuery>,
) -> Response {
    let shown = async {
        signed
            .caller
            .require(&state, &project, Role::Editor)
            .await?;
        environment_and_config(&state, &project, &environment, &flag).await
    };
    match shown.await {
        Ok((env, config)) => {
            let to = if query.to == "on" { "on" } else { "off" };
            html_response(
                StatusCode::OK,
                switch_page(&signed, &project, &flag, &env, to, config.version, &[]),
            )
        }
        Err(e) => error_page(e),
    }
}

/// Turns the flag on or off through the API's own `PUT` handler, with `If-Match` the version
/// the person confirmed: if someone changed the flag meanwhile, nothing is written and the
/// confirmation is shown again.
async fn switch(
    State(state): State<AppState>,
    Path((project, flag, environment)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SwitchForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let to = if form.to == "on" { "on" } else { "off" };
    let mut config = match api::current_config(&state, &project, &environment, &flag).await {
        Ok(config) => config,
        Err(e) => return error_page(e),
    };
    config.enabled = to == "on";
    let mut if_match = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{}\"", form.version)) {
        if_match.insert(header::IF_MATCH, value);
    }
    let comment = Some(form.comment.trim().to_string()).filter(|c| !c.is_empty());
    let written = api::put_flag_config(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), environment.clone(), flag.clone())),
        if_match,
        Body::new(ConfigUpdate {
            config,
            comment,
            break_glass: false,
            apply_at: None,
        }),
    )
    .await;
    let problems = match written {
        Ok(response) => {
            refresh(&state, &project, &environment).await;
            let notice = if response.status() == StatusCode::ACCEPTED {
                "requested"
            } else {
                to
            };
            return Redirect::to(&format!(
                "/projects/{}/flags/{}?notice={notice}:{}",
                encode(&project),
                encode(&flag),
                encode(&environment)
            ))
            .into_response();
        }
        Err(e) => match write_problems(e) {
            Ok(problems) => problems,
            Err(e) => return error_page(e),
        },
    };
    match environment_and_config(&state, &project, &environment, &flag).await {
        Ok((env, config)) => html_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            switch_page(
                &signed,
                &project,
                &flag,
                &env,
                to,
                config.version,
                &problems,
            ),
        ),
        Err(e) => error_page(e),
    }
}

// ---- history and revert ----

/// What changed from one revision to the next, as RFC 6902 operations.
pub(crate) fn diff_lines(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    json_patch::diff(old, new)
        .0
        .iter()
        .filter(|op| !op.path().to_string().starts_with("/version"))
        .map(|op| serde_json::to_string(op).unwrap_or_default())
        .collect()
}

async fn history(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment)): Path<(String, String, String)>,
) -> Response {
    let shown = async {
        let role = signed
            .caller
            .require(&state, &project, Role::Viewer)
            .await?;
        let env = state.store.environment(&project, &environment).await?;
        let revisions = state
            .store
            .flag_revisions(&project, &environment, &flag)
            .await?;
        Ok::<_, ApiError>((role, env, revisions))
    };
    let (role, env, revisions) = match shown.await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    let title = format!("History of {flag} in {}", env.name);
    let current = revisions.first().map(|r| r.version);
    html_response(
        StatusCode::OK,
        project_page(
            &signed,
            &project,
            &title,
            html! {
                p.crumbs { a href={ "/projects/" (project) "/flags/" (flag) } { (flag) } " / " }
                h1 { "History of " code { (flag) } " in " (env.name) }
                ol.log.history {
                    @for (i, revision) in revisions.iter().enumerate() {
                        li {
                            strong { "Version " (revision.version) }
                            span.small { " · " (time(revision.created_at)) " · " (revision.actor.id) }
                            @if let Some(comment) = &revision.comment { br; "“" (comment) "”" }
                            @if let Some(older) = revisions.get(i + 1) {
                                ul.diff {
                                    @for line in diff_lines(&older.body, &revision.body) {
                                        li { code { (line) } }
                                    }
                                }
                            } @else {
                                p.small { "The first configuration." }
                            }
                            @if role >= Role::Editor && Some(revision.version) != current {
                                a.button href={ "/projects/" (project) "/flags/" (flag) "/environments/" (environment) "/revert?version=" (revision.version) } {
                                    "Revert to version " (revision.version)
                                }
                            }
                        }
                    }
                }
            },
        ),
    )
}

#[derive(Deserialize)]
struct RevertQuery {
    version: u64,
}

#[derive(Deserialize)]
struct RevertForm {
    csrf: String,
    version: u64,
    /// The version the person saw as current: a revert on top of a newer one is refused.
    current: u64,
    #[serde(default)]
    comment: String,
}

fn revert_page(
    signed: &Signed,
    project: &str,
    flag: &str,
    env: &Environment,
    version: u64,
    current: &FlagConfig,
    problems: &[String],
) -> Markup {
    confirmation(
        signed,
        project,
        Confirmation {
            title: &format!("Revert {flag} in {}", env.name),
            crumbs: None,
            question: html! { "Revert " code { (flag) } " in " (env.name) " to version " (version) "?" },
            consequence: html! {
                p { "Version " (version) "'s configuration becomes a new revision of " strong { (env.name) } " (now version " (current.version) ")." }
            },
            problems,
            action: None,
            fields: html! {
                input type="hidden" name="version" value=(version);
                input type="hidden" name="current" value=(current.version);
                (comment_field(env))
            },
            button: html! { "Revert " (env.name) " to version " (version) },
            primary: true,
            danger: false,
            back: format!(
                "/projects/{project}/flags/{flag}/environments/{}/history",
                env.key
            ),
            back_words: "Cancel",
        },
    )
}

async fn confirm_revert(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment)): Path<(String, String, String)>,
    Query(query): Query<RevertQuery>,
) -> Response {
    let shown = async {
        signed
            .caller
            .require(&state, &project, Role::Editor)
            .await?;
        let env = state.store.environment(&project, &environment).await?;
        state
            .store
            .flag_revision(&project, &environment, &flag, query.version)
            .await?;
        let config = api::current_config(&state, &project, &environment, &flag).await?;
        Ok::<_, ApiError>((env, config))
    };
    match shown.await {
        Ok((env, config)) => html_response(
            StatusCode::OK,
            revert_page(&signed, &project, &flag, &env, query.version, &config, &[]),
        ),
        Err(e) => error_page(e),
    }
}

/// Reverts through the API's own handler, with `If-Match` the version the person saw.
async fn revert(
    State(state): State<AppState>,
    Path((project, flag, environment)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<RevertForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let mut if_match = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{}\"", form.current)) {
        if_match.insert(header::IF_MATCH, value);
    }
    let reverted = api::revert_flag_config(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), environment.clone(), flag.clone())),
        if_match,
        Body::new(RevertRequest {
            version: form.version,
            comment: Some(form.comment.trim().to_string()).filter(|c| !c.is_empty()),
        }),
    )
    .await;
    let problems = match reverted {
        Ok(_) => {
            refresh(&state, &project, &environment).await;
            return Redirect::to(&format!(
                "/projects/{}/flags/{}/environments/{}/history",
                encode(&project),
                encode(&flag),
                encode(&environment)
            ))
            .into_response();
        }
        Err(e) => match write_problems(e) {
            Ok(problems) => problems,
            Err(e) => return error_page(e),
        },
    };
    match environment_and_config(&state, &project, &environment, &flag).await {
        Ok((env, config)) => html_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            revert_page(
                &signed,
                &project,
                &flag,
                &env,
                form.version,
                &config,
                &problems,
            ),
        ),
        Err(e) => error_page(e),
    }
}
