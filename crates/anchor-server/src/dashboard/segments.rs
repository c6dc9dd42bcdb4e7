//! The segments of a project, one environment at a time (a segment lives in one environment,
//! as in the API): the list with the flags that use each, creating a segment, a segment's page
//! with its edit form, and deleting one after a confirmation.
//!
//! Every write goes through the API's own segment handlers, so the engine's compiler judges the
//! segment, environments that require approval turn an editor's write into a change request,
//! and a segment that a flag still uses cannot be deleted; the dashboard only shows their
//! answers, each problem next to the field its JSON pointer names.

use std::collections::{BTreeMap, HashMap};

use anchor_engine::{Condition, Operator, Segment, SegmentRule};
use anchor_store::{Environment, Role};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    Confirmation, OPERATORS, Signed, confirmation, encode, error_page, field_problems, form_caller,
    html_response, project_page, refresh,
};
use crate::AppState;
use crate::api::{self, Body, SegmentWrite};
use crate::error::ApiError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{project}/segments", get(list).post(create))
        .route("/projects/{project}/new-segment", get(new_segment))
        .route(
            "/projects/{project}/environments/{environment}/segments/{segment}",
            get(segment_page).post(update),
        )
        .route(
            "/projects/{project}/environments/{environment}/segments/{segment}/delete",
            get(confirm_delete).post(delete),
        )
}

/// Empty condition rows the form offers beyond the segment's own, for adding conditions
/// without a script.
const SPARE_ROWS: usize = 2;

/// Form problems by field name; `form` for those that belong to no field.
type Problems = HashMap<&'static str, Vec<String>>;

#[derive(Deserialize, Default)]
struct EnvQuery {
    env: Option<String>,
    notice: Option<String>,
}

/// The environment a page is about: the one asked for if it exists, else the first.
fn chosen<'a>(environments: &'a [Environment], asked: Option<&str>) -> Option<&'a Environment> {
    asked
        .and_then(|key| environments.iter().find(|e| e.key == key))
        .or_else(|| environments.first())
}

fn notice_text(notice: &str) -> Option<&'static str> {
    match notice {
        "deleted" => Some("The segment was deleted."),
        "requested" => {
            Some("This environment requires approval: the change waits as a change request.")
        }
        "saved" => Some("Saved."),
        _ => None,
    }
}

// ---- the list ----

async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
    Query(query): Query<EnvQuery>,
) -> Response {
    match render_list(&state, &signed, &project, &query).await {
        Ok(markup) => html_response(StatusCode::OK, markup),
        Err(e) => error_page(e),
    }
}

/// The flags of an environment that name each segment in a `segment_match` condition.
fn users_of_segments(config: &anchor_engine::EnvironmentConfig) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for configured in &config.flags {
        for rule in &configured.config.rules {
            for condition in &rule.conditions {
                if condition.operator != Operator::SegmentMatch {
                    continue;
                }
                for value in &condition.values {
                    if let Some(segment) = value.as_str() {
                        let flags = users.entry(segment.to_string()).or_default();
                        if !flags.contains(&configured.flag.key) {
                            flags.push(configured.flag.key.clone());
                        }
                    }
                }
            }
        }
    }
    users
}

async fn render_list(
    state: &AppState,
    signed: &Signed,
    project: &str,
    query: &EnvQuery,
) -> Result<Markup, ApiError> {
    let role = signed.caller.require(state, project, Role::Viewer).await?;
    let environments = state.store.environments(project).await?;
    let Some(env) = chosen(&environments, query.env.as_deref()) else {
        return Err(ApiError::NotFound(format!(
            "project `{project}` has no environments"
        )));
    };
    let axum::Json(segments) = api::list_segments(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.to_string(), env.key.clone())),
    )
    .await?;
    let (config, _) = state.store.environment_config(project, &env.key).await?;
    let users = users_of_segments(&config);
    Ok(project_page(
        signed,
        project,
        "Segments",
        html! {
            div.heading {
                h1 { "Segments in " (env.name) }
                @if role >= Role::Editor {
                    a.button.primary href={ "/projects/" (project) "/new-segment?env=" (encode(&env.key)) } { "New segment" }
                }
            }
            @if let Some(notice) = query.notice.as_deref().and_then(notice_text) {
                p.notice role="status" { (notice) }
            }
            nav.tabs aria-label="Environments" {
                @for e in &environments {
                    @if e.key == env.key {
                        a aria-current="page" href={ "?env=" (encode(&e.key)) } { (e.name) }
                    } @else {
                        a href={ "?env=" (encode(&e.key)) } { (e.name) }
                    }
                }
            }
            p.count {
                (segments.len())
                @if segments.len() == 1 { " segment" } @else { " segments" }
            }
            table.segments {
                thead {
                    tr {
                        th scope="col" { "Segment" }
                        th scope="col" { "Included" }
                        th scope="col" { "Excluded" }
                        th scope="col" { "Rules" }
                        th scope="col" { "Used by" }
                    }
                }
                tbody {
                    @for s in &segments {
                        tr {
                            td {
                                a href={ "/projects/" (project) "/environments/" (env.key) "/segments/" (s.key) } { (s.key) }
                                @if !s.description.is_empty() { br; small { (s.description) } }
                            }
                            td { (s.included_count) }
                            td { (s.excluded_count) }
                            td { (s.rules) }
                            td {
                                @match users.get(&s.key) {
                                    Some(flags) => {
                                        @for (i, flag) in flags.iter().enumerate() {
                                            @if i > 0 { ", " }
                                            a href={ "/projects/" (project) "/flags/" (flag) } { (flag) }
                                        }
                                    }
                                    None => { span.small { "no flag" } }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

// ---- the form ----

/// The segment form as a browser sends it: fixed fields and numbered condition rows
/// (`rule_0`, `attribute_0`, `operator_0`, `values_0`, `negate_0`, `case_0`, `id_0`, …).
#[derive(Default)]
struct SegmentForm {
    csrf: String,
    environment: String,
    key: String,
    description: String,
    included: String,
    excluded: String,
    /// The version the person edited, for `If-Match`.
    version: Option<u64>,
    rows: Vec<ConditionRow>,
}

#[derive(Default, Clone)]
struct ConditionRow {
    /// The rule the condition belongs to, counted from 1; conditions of one rule must all
    /// match, and a context matching any rule is a member.
    rule: String,
    attribute: String,
    operator: String,
    values: String,
    negate: bool,
    case_insensitive: bool,
    /// The id of the rule the condition came from, kept so that saving the form does not
    /// rename rules.
    rule_id: String,
}

impl SegmentForm {
    fn from_pairs(pairs: Vec<(String, String)>) -> SegmentForm {
        let mut form = SegmentForm::default();
        let mut rows: BTreeMap<usize, ConditionRow> = BTreeMap::new();
        for (name, value) in pairs {
            match name.as_str() {
                "csrf" => form.csrf = value,
                "environment" => form.environment = value,
                "key" => form.key = value,
                "description" => form.description = value,
                "included" => form.included = value,
                "excluded" => form.excluded = value,
                "version" => form.version = value.trim().parse().ok(),
                _ => {
                    let Some((field, index)) = name.rsplit_once('_') else {
                        continue;
                    };
                    // A bounded number of rows: a forged form cannot make the server build
                    // a huge table.
                    let Some(index) = index.parse::<usize>().ok().filter(|i| *i < 200) else {
                        continue;
                    };
                    let row = rows.entry(index).or_default();
                    match field {
                        "rule" => row.rule = value,
                        "attribute" => row.attribute = value,
                        "operator" => row.operator = value,
                        "values" => row.values = value,
                        "negate" => row.negate = true,
                        "case" => row.case_insensitive = true,
                        "id" => row.rule_id = value,
                        _ => {}
                    }
                }
            }
        }
        form.rows = rows.into_values().collect();
        form
    }

    fn from_segment(environment: &str, segment: &Segment) -> SegmentForm {
        let mut rows = Vec::new();
        for (i, rule) in segment.rules.iter().enumerate() {
            for condition in &rule.conditions {
                rows.push(ConditionRow {
                    rule: (i + 1).to_string(),
                    attribute: condition.attribute.clone(),
                    operator: condition.operator.as_str().to_string(),
                    values: condition
                        .values
                        .iter()
                        .map(value_line)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    negate: condition.negate,
                    case_insensitive: condition.case_insensitive,
                    rule_id: rule.id.clone(),
                });
            }
        }
        SegmentForm {
            csrf: String::new(),
            environment: environment.to_string(),
            key: segment.key.clone(),
            description: segment.description.clone(),
            included: segment.included.join("\n"),
            excluded: segment.excluded.join("\n"),
            version: Some(segment.version),
            rows,
        }
    }
}

/// A condition value as one line of the form: strings as they are, unless they would read
/// back as another JSON value (then quoted); other values as JSON.
fn value_line(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) if serde_json::from_str::<serde_json::Value>(s).is_err() => {
            s.clone()
        }
        other => other.to_string(),
    }
}

/// A line of the form as a condition value: JSON numbers, booleans and quoted strings as
/// such, anything else as the text itself.
fn line_value(line: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(
            value @ (serde_json::Value::Number(_)
            | serde_json::Value::Bool(_)
            | serde_json::Value::String(_)),
        ) => value,
        _ => serde_json::Value::String(line.to_string()),
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The segment the form describes, or the problems the API cannot see (a condition row
/// naming no rule or an unknown operator), each with its field.
fn segment_from_form(form: &SegmentForm) -> Result<Segment, Problems> {
    let mut problems = Problems::new();
    let mut rules: BTreeMap<u32, (String, Vec<Condition>)> = BTreeMap::new();
    for (i, row) in form.rows.iter().enumerate() {
        let values = lines(&row.values);
        // A row left empty is a spare row nobody used.
        if row.attribute.trim().is_empty() && values.is_empty() {
            continue;
        }
        let operator = OPERATORS.iter().find(|o| o.as_str() == row.operator);
        let rule = row.rule.trim().parse::<u32>().ok().filter(|r| *r >= 1);
        match (operator, rule) {
            (Some(operator), Some(rule)) => {
                let (id, conditions) = rules.entry(rule).or_default();
                if id.is_empty() {
                    id.clone_from(&row.rule_id);
                }
                conditions.push(Condition {
                    attribute: row.attribute.trim().to_string(),
                    operator: *operator,
                    values: values.iter().map(|l| line_value(l)).collect(),
                    negate: row.negate,
                    case_insensitive: row.case_insensitive,
                });
            }
            (None, _) => problems
                .entry("rules")
                .or_default()
                .push(format!("condition {}: choose an operator", i + 1)),
            (_, None) => problems.entry("rules").or_default().push(format!(
                "condition {}: give the number of its rule (1, 2, …)",
                i + 1
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Segment {
        key: form.key.trim().to_string(),
        description: form.description.trim().to_string(),
        included: lines(&form.included),
        excluded: lines(&form.excluded),
        rules: rules
            .into_values()
            .map(|(id, conditions)| SegmentRule { id, conditions })
            .collect(),
        version: 0,
    })
}

/// The form field a JSON pointer of the segment's body belongs to, and the words that say
/// where in it.
fn field_of(path: &str, message: String) -> (&'static str, String) {
    let mut parts = path.trim_start_matches('/').split('/');
    match parts.next().unwrap_or("") {
        "key" => ("key", message),
        "description" => ("description", message),
        "included" => ("included", message),
        "excluded" => ("excluded", message),
        "rules" => {
            let rule = parts.next().and_then(|r| r.parse::<usize>().ok());
            let condition = match (parts.next(), parts.next()) {
                (Some("conditions"), Some(c)) => c.parse::<usize>().ok(),
                _ => None,
            };
            let place = match (rule, condition) {
                (Some(r), Some(c)) => format!("rule {}, condition {}: ", r + 1, c + 1),
                (Some(r), None) => format!("rule {}: ", r + 1),
                _ => String::new(),
            };
            ("rules", format!("{place}{message}"))
        }
        _ => ("form", message),
    }
}

/// Where a form goes and what it may change.
enum Editing<'a> {
    New { environments: &'a [Environment] },
    Existing { environment: &'a Environment },
}

fn segment_form(
    signed: &Signed,
    project: &str,
    form: &SegmentForm,
    problems: &Problems,
    editing: &Editing<'_>,
) -> Markup {
    let none = Vec::new();
    let problems_of = |field: &str| problems.get(field).unwrap_or(&none);
    let invalid = |field: &str| problems.contains_key(field).then_some("true");
    let action = match editing {
        Editing::New { .. } => format!("/projects/{project}/segments"),
        Editing::Existing { environment } => format!(
            "/projects/{project}/environments/{}/segments/{}",
            environment.key, form.key
        ),
    };
    let mut rows = form.rows.clone();
    let next_rule = rows
        .iter()
        .filter_map(|r| r.rule.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    for _ in 0..SPARE_ROWS {
        rows.push(ConditionRow {
            rule: next_rule.to_string(),
            operator: "in".into(),
            ..ConditionRow::default()
        });
    }
    html! {
        (field_problems(problems_of("form")))
        form.stack.wide method="post" action=(action) novalidate {
            input type="hidden" name="csrf" value=(signed.csrf);
            @match editing {
                Editing::New { environments } => {
                    label for="environment" { "Environment" }
                    select #environment name="environment" {
                        @for e in *environments {
                            option value=(e.key) selected[e.key == form.environment] { (e.name) }
                        }
                    }
                    label for="key" { "Key" }
                    input #key name="key" value=(form.key) required aria-describedby="key-help"
                        aria-invalid=[invalid("key")];
                    small #key-help { "Letters, digits, '-', '_' and '.'; how flag rules name the segment." }
                    (field_problems(problems_of("key")))
                }
                Editing::Existing { .. } => {
                    input type="hidden" name="key" value=(form.key);
                    (field_problems(problems_of("key")))
                    @if let Some(version) = form.version {
                        input type="hidden" name="version" value=(version);
                    }
                }
            }
            label for="description" { "Description" }
            textarea #description name="description" rows="2" aria-invalid=[invalid("description")] { (form.description) }
            (field_problems(problems_of("description")))
            label for="included" { "Included keys" }
            textarea #included name="included" rows="4" aria-describedby="included-help"
                aria-invalid=[invalid("included")] { (form.included) }
            small #included-help { "Targeting keys that are always members, one per line." }
            (field_problems(problems_of("included")))
            label for="excluded" { "Excluded keys" }
            textarea #excluded name="excluded" rows="3" aria-describedby="excluded-help"
                aria-invalid=[invalid("excluded")] { (form.excluded) }
            small #excluded-help { "Targeting keys that are never members, one per line." }
            (field_problems(problems_of("excluded")))
            fieldset.conditions aria-describedby="rules-help" {
                legend { "Rules" }
                small #rules-help {
                    "A context is a member when it matches every condition of any one rule. "
                    "Conditions with the same rule number form one rule; values one per line "
                    "(numbers and true/false as JSON, other text as it is)."
                }
                table {
                    thead {
                        tr {
                            th scope="col" { "Rule" }
                            th scope="col" { "Attribute" }
                            th scope="col" { "Operator" }
                            th scope="col" { "Values" }
                            th scope="col" { "Options" }
                        }
                    }
                    tbody {
                        @for (i, row) in rows.iter().enumerate() {
                            tr {
                                td {
                                    label.sr for={ "rule_" (i) } { "Rule of condition " (i + 1) }
                                    input.num id={ "rule_" (i) } name={ "rule_" (i) } value=(row.rule) inputmode="numeric";
                                }
                                td {
                                    label.sr for={ "attribute_" (i) } { "Attribute of condition " (i + 1) }
                                    input id={ "attribute_" (i) } name={ "attribute_" (i) } value=(row.attribute);
                                }
                                td {
                                    label.sr for={ "operator_" (i) } { "Operator of condition " (i + 1) }
                                    select id={ "operator_" (i) } name={ "operator_" (i) } {
                                        @for op in OPERATORS {
                                            option value=(op.as_str()) selected[op.as_str() == row.operator] { (op.as_str().replace('_', " ")) }
                                        }
                                    }
                                }
                                td {
                                    label.sr for={ "values_" (i) } { "Values of condition " (i + 1) }
                                    textarea id={ "values_" (i) } name={ "values_" (i) } rows="2" { (row.values) }
                                }
                                td {
                                    label.check for={ "negate_" (i) } {
                                        input type="checkbox" id={ "negate_" (i) } name={ "negate_" (i) } value="1" checked[row.negate];
                                        " not"
                                    }
                                    label.check for={ "case_" (i) } {
                                        input type="checkbox" id={ "case_" (i) } name={ "case_" (i) } value="1" checked[row.case_insensitive];
                                        " ignore case"
                                    }
                                    @if !row.rule_id.is_empty() {
                                        input type="hidden" name={ "id_" (i) } value=(row.rule_id);
                                    }
                                }
                            }
                        }
                    }
                }
                (field_problems(problems_of("rules")))
            }
            div.actions {
                @match editing {
                    Editing::New { .. } => {
                        button.primary type="submit" { "Create segment" }
                        a href={ "/projects/" (project) "/segments" } { "Cancel" }
                    }
                    Editing::Existing { environment } => {
                        button.primary type="submit" { "Save segment" }
                        a href={ "/projects/" (project) "/segments?env=" (encode(&environment.key)) } { "Back to the segments" }
                    }
                }
            }
        }
    }
}

fn new_segment_page(
    signed: &Signed,
    project: &str,
    environments: &[Environment],
    form: &SegmentForm,
    problems: &Problems,
) -> Markup {
    project_page(
        signed,
        project,
        "New segment",
        html! {
            h1 { "New segment" }
            (segment_form(signed, project, form, problems, &Editing::New { environments }))
        },
    )
}

async fn new_segment(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
    Query(query): Query<EnvQuery>,
) -> Response {
    let shown = async {
        signed
            .caller
            .require(&state, &project, Role::Editor)
            .await?;
        state
            .store
            .environments(&project)
            .await
            .map_err(ApiError::from)
    };
    let environments = match shown.await {
        Ok(environments) => environments,
        Err(e) => return error_page(e),
    };
    let form = SegmentForm {
        environment: chosen(&environments, query.env.as_deref())
            .map(|e| e.key.clone())
            .unwrap_or_default(),
        ..SegmentForm::default()
    };
    html_response(
        StatusCode::OK,
        new_segment_page(&signed, &project, &environments, &form, &Problems::new()),
    )
}

/// The problems of an answer of the API, by field; other errors are the caller's to show.
fn problems_of(error: ApiError) -> Result<Problems, ApiError> {
    let mut problems = Problems::new();
    match error {
        ApiError::Invalid(diagnostics) => {
            for d in diagnostics {
                let (field, message) = field_of(&d.path, d.message);
                problems.entry(field).or_default().push(message);
            }
        }
        ApiError::Conflict(message) => problems.entry("key").or_default().push(message),
        ApiError::PreconditionFailed(_) => problems.entry("form").or_default().push(
            "Someone changed this segment in the meantime: look at it again before you save."
                .to_string(),
        ),
        other => return Err(other),
    }
    Ok(problems)
}

/// Creates the segment through the API's own handler.
async fn create(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    let form = SegmentForm::from_pairs(pairs);
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    // The rights come first: someone who may not create segments learns only that.
    if let Err(e) = signed.caller.require(&state, &project, Role::Editor).await {
        return error_page(e);
    }
    let environments = match state.store.environments(&project).await {
        Ok(environments) => environments,
        Err(e) => return error_page(e.into()),
    };
    let problems = match segment_from_form(&form) {
        Err(problems) => problems,
        Ok(segment) => {
            let created = api::create_segment(
                State(state.clone()),
                signed.caller.clone(),
                Path((project.clone(), form.environment.clone())),
                Body::new(SegmentWrite {
                    segment,
                    comment: None,
                }),
            )
            .await;
            match created {
                Ok(response) => {
                    refresh(&state, &project, &form.environment).await;
                    let to = if response.status() == StatusCode::ACCEPTED {
                        format!(
                            "/projects/{}/segments?env={}&notice=requested",
                            encode(&project),
                            encode(&form.environment)
                        )
                    } else {
                        format!(
                            "/projects/{}/environments/{}/segments/{}",
                            encode(&project),
                            encode(&form.environment),
                            encode(form.key.trim())
                        )
                    };
                    return Redirect::to(&to).into_response();
                }
                Err(e) => match problems_of(e) {
                    Ok(problems) => problems,
                    Err(e) => return error_page(e),
                },
            }
        }
    };
    html_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        new_segment_page(&signed, &project, &environments, &form, &problems),
    )
}

// ---- one segment ----

fn segment_view(
    signed: &Signed,
    project: &str,
    environment: &Environment,
    role: Role,
    form: &SegmentForm,
    problems: &Problems,
    notice: Option<&str>,
) -> Markup {
    let title = format!("Segment {} in {}", form.key, environment.name);
    project_page(
        signed,
        project,
        &title,
        html! {
            p.crumbs { a href={ "/projects/" (project) "/segments?env=" (encode(&environment.key)) } { "Segments" } " / " }
            div.heading {
                h1 { "Segment " code { (form.key) } " in " (environment.name) }
                @if role >= Role::Editor {
                    a.button.danger href={ "/projects/" (project) "/environments/" (environment.key) "/segments/" (form.key) "/delete" } { "Delete" }
                }
            }
            @if let Some(notice) = notice.and_then(notice_text) {
                p.notice role="status" { (notice) }
            }
            @if let Some(version) = form.version { p.small { "version " (version) } }
            @if role >= Role::Editor {
                (segment_form(signed, project, form, problems, &Editing::Existing { environment }))
            } @else {
                @if !form.description.is_empty() { p.description { (form.description) } }
                h2 { "Included keys" }
                @if form.included.is_empty() { p.small { "none" } } @else { pre { (form.included) } }
                h2 { "Excluded keys" }
                @if form.excluded.is_empty() { p.small { "none" } } @else { pre { (form.excluded) } }
                h2 { "Rules" }
                @if form.rows.is_empty() { p.small { "none" } }
                ul {
                    @for row in &form.rows {
                        li {
                            "rule " (row.rule) ": " code { (row.attribute) }
                            @if row.negate { " not" }
                            @if row.case_insensitive { " (ignoring case)" }
                            " " (row.operator.replace('_', " ")) " "
                            (row.values.replace('\n', ", "))
                        }
                    }
                }
            }
        },
    )
}

async fn segment_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, environment, key)): Path<(String, String, String)>,
    Query(query): Query<EnvQuery>,
) -> Response {
    let shown = async {
        let role = signed
            .caller
            .require(&state, &project, Role::Viewer)
            .await?;
        let env = state.store.environment(&project, &environment).await?;
        let record = state.store.segment(&project, &environment, &key).await?;
        Ok::<_, ApiError>((role, env, record))
    };
    match shown.await {
        Ok((role, env, record)) => html_response(
            StatusCode::OK,
            segment_view(
                &signed,
                &project,
                &env,
                role,
                &SegmentForm::from_segment(&environment, &record.segment),
                &Problems::new(),
                query.notice.as_deref(),
            ),
        ),
        Err(e) => error_page(e),
    }
}

/// Replaces the segment through the API's own `PUT` handler, with `If-Match` the version the
/// person edited: a change made meanwhile is not overwritten.
async fn update(
    State(state): State<AppState>,
    Path((project, environment, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    let mut form = SegmentForm::from_pairs(pairs);
    form.key = key.clone();
    form.environment = environment.clone();
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let shown = async {
        let role = signed
            .caller
            .require(&state, &project, Role::Editor)
            .await?;
        let env = state.store.environment(&project, &environment).await?;
        Ok::<_, ApiError>((role, env))
    };
    let (role, env) = match shown.await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    let problems = match segment_from_form(&form) {
        Err(problems) => problems,
        Ok(segment) => {
            let mut if_match = HeaderMap::new();
            if let Some(version) = form.version
                && let Ok(value) = HeaderValue::from_str(&format!("\"{version}\""))
            {
                if_match.insert(header::IF_MATCH, value);
            }
            let written = api::update_segment(
                State(state.clone()),
                signed.caller.clone(),
                Path((project.clone(), environment.clone(), key.clone())),
                if_match,
                Body::new(SegmentWrite {
                    segment,
                    comment: None,
                }),
            )
            .await;
            match written {
                Ok(response) => {
                    refresh(&state, &project, &environment).await;
                    let notice = if response.status() == StatusCode::ACCEPTED {
                        "requested"
                    } else {
                        "saved"
                    };
                    return Redirect::to(&format!(
                        "/projects/{}/environments/{}/segments/{}?notice={notice}",
                        encode(&project),
                        encode(&environment),
                        encode(&key)
                    ))
                    .into_response();
                }
                Err(e) => match problems_of(e) {
                    Ok(problems) => problems,
                    Err(e) => return error_page(e),
                },
            }
        }
    };
    html_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        segment_view(&signed, &project, &env, role, &form, &problems, None),
    )
}

// ---- deleting ----

fn delete_page(
    signed: &Signed,
    project: &str,
    environment: &Environment,
    key: &str,
    problems: &[String],
) -> Markup {
    confirmation(
        signed,
        project,
        Confirmation {
            title: &format!("Delete segment {key}"),
            crumbs: None,
            question: html! { "Delete segment " code { (key) } " in " (environment.name) "?" },
            consequence: html! {
                p { "The segment and its key lists leave " strong { (environment.name) } ". A segment that a flag or another segment still uses cannot be deleted." }
            },
            problems,
            action: None,
            fields: html! {},
            button: html! { "Delete " (key) " in " (environment.name) },
            primary: false,
            danger: true,
            back: format!(
                "/projects/{project}/environments/{}/segments/{key}",
                environment.key
            ),
            back_words: "Cancel",
        },
    )
}

async fn confirm_delete(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, environment, key)): Path<(String, String, String)>,
) -> Response {
    let shown = async {
        signed
            .caller
            .require(&state, &project, Role::Editor)
            .await?;
        let env = state.store.environment(&project, &environment).await?;
        state.store.segment(&project, &environment, &key).await?;
        Ok::<_, ApiError>(env)
    };
    match shown.await {
        Ok(env) => html_response(
            StatusCode::OK,
            delete_page(&signed, &project, &env, &key, &[]),
        ),
        Err(e) => error_page(e),
    }
}

/// Deletes through the API's own handler; a segment still in use is refused there, and its
/// message is shown on the confirmation.
async fn delete(
    State(state): State<AppState>,
    Path((project, environment, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<super::CsrfForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let deleted = api::delete_segment(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), environment.clone(), key.clone())),
    )
    .await;
    let problem = match deleted {
        Ok(response) => {
            refresh(&state, &project, &environment).await;
            let notice = if response.status() == StatusCode::ACCEPTED {
                "requested"
            } else {
                "deleted"
            };
            return Redirect::to(&format!(
                "/projects/{}/segments?env={}&notice={notice}",
                encode(&project),
                encode(&environment)
            ))
            .into_response();
        }
        Err(ApiError::Conflict(message)) => message,
        Err(e) => return error_page(e),
    };
    match state.store.environment(&project, &environment).await {
        Ok(env) => html_response(
            StatusCode::CONFLICT,
            delete_page(&signed, &project, &env, &key, &[problem]),
        ),
        Err(e) => error_page(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_values_read_back_as_they_were_written() {
        for value in [
            serde_json::json!("DE"),
            serde_json::json!("42"),
            serde_json::json!(42),
            serde_json::json!(true),
            serde_json::json!("true"),
        ] {
            assert_eq!(line_value(&value_line(&value)), value);
        }
    }

    #[test]
    fn problems_name_the_rule_and_condition_people_see() {
        assert_eq!(
            field_of("/rules/0/conditions/1/values/0", "bad".into()),
            ("rules", "rule 1, condition 2: bad".to_string())
        );
        assert_eq!(field_of("/key", "bad".into()), ("key", "bad".to_string()));
    }
}
