//! A rule's page (its conditions as rows, one more row on request, and its serve), and
//! deleting (after a confirmation) and moving rules.

use anchor_engine::{Condition, Diagnostic, FlagConfig, Operator, Rule, Serve, Variant};
use anchor_store::Environment;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::serve::{ServeForm, percent_text, serve_field, serve_fields};
use super::settings::{SettingsForm, other_flags, targeting_markup};
use super::*;
use crate::AppState;
use crate::api;
use crate::dashboard::{
    Confirmation, OPERATORS, Signed, condition_words, confirmation, error_page, field_problems,
    form_caller, html_response,
};
use crate::error::ApiError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            &format!("{BASE}/new-rule"),
            get(new_rule).post(save_new_rule),
        )
        .route(
            &format!("{BASE}/rules/{{rule}}"),
            get(edit_rule).post(save_rule),
        )
        .route(
            &format!("{BASE}/rules/{{rule}}/delete"),
            get(confirm_delete).post(delete_rule),
        )
        .route(&format!("{BASE}/rules/{{rule}}/move"), post(move_rule))
}

/// The words a select shows for an operator. The match is exhaustive so that a new operator
/// cannot be forgotten here (and then in `dashboard::OPERATORS`, which a unit test checks
/// against it).
fn operator_label(operator: Operator) -> &'static str {
    match operator {
        Operator::In => "is one of",
        Operator::NotIn => "is not one of",
        Operator::StartsWith => "starts with",
        Operator::EndsWith => "ends with",
        Operator::Contains => "contains",
        Operator::Matches => "matches the regular expression",
        Operator::Lt => "<",
        Operator::Lte => "≤",
        Operator::Gt => ">",
        Operator::Gte => "≥",
        Operator::SemverEq => "is version",
        Operator::SemverLt => "is a version before",
        Operator::SemverLte => "is a version up to",
        Operator::SemverGt => "is a version after",
        Operator::SemverGte => "is a version from",
        Operator::Before => "is a time before",
        Operator::After => "is a time after",
        Operator::Exists => "exists",
        Operator::SegmentMatch => "is in segment",
    }
}

fn operator_named(name: &str) -> Option<Operator> {
    OPERATORS.into_iter().find(|o| o.as_str() == name)
}

/// Operators whose values are always strings: a version `1.2` or a regex `1` stays text.
fn takes_strings(operator: Operator) -> bool {
    use Operator::*;
    matches!(
        operator,
        StartsWith
            | EndsWith
            | Contains
            | Matches
            | SemverEq
            | SemverLt
            | SemverLte
            | SemverGt
            | SemverGte
            | SegmentMatch
    )
}

/// A condition's values as lines. Where values may be numbers or booleans, a string that would
/// read as one is shown quoted, so that it stays a string when saved again.
fn values_text(operator: Operator, values: &[serde_json::Value]) -> String {
    let lines: Vec<String> = values
        .iter()
        .map(|v| match v {
            serde_json::Value::String(s) if takes_strings(operator) => s.clone(),
            serde_json::Value::String(s) => match serde_json::from_str::<serde_json::Value>(s) {
                Ok(_) => serde_json::Value::String(s.clone()).to_string(),
                Err(_) => s.clone(),
            },
            other => other.to_string(),
        })
        .collect();
    lines.join("\n")
}

/// The lines of a values box as the condition's values: the inverse of `values_text`.
fn values_of(operator: Operator, text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            if takes_strings(operator) {
                return serde_json::Value::String(line.to_string());
            }
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v,
                Ok(v @ serde_json::Value::String(_)) => v,
                _ => serde_json::Value::String(line.to_string()),
            }
        })
        .collect()
}

/// A rule in words, for the list.
pub(super) fn rule_words(rule: &Rule) -> String {
    let conditions: Vec<String> = rule
        .conditions
        .iter()
        .map(|c| condition_words(c, operator_label(c.operator)))
        .collect();
    let when = if conditions.is_empty() {
        "always".to_string()
    } else {
        format!("if {}", conditions.join(" and "))
    };
    format!("{when} → {}", serve_words(&rule.serve))
}

fn serve_words(serve: &Serve) -> String {
    match serve {
        Serve::Variant(v) => format!("serve {v}"),
        Serve::Rollout(r) => {
            let parts: Vec<String> = r
                .variants
                .iter()
                .map(|w| format!("{} {}%", w.variant, percent_text(w.weight)))
                .collect();
            format!("split {}", parts.join(" · "))
        }
    }
}

// ---- a rule ----

/// A condition row as typed.
#[derive(Default)]
struct ConditionRow {
    attribute: String,
    operator: String,
    values: String,
    negate: bool,
    case_insensitive: bool,
}

struct RuleForm {
    /// The id a new rule asks for; empty for `rule-N` (an existing rule keeps its id).
    id: String,
    description: String,
    rows: Vec<ConditionRow>,
    serve: ServeForm,
    comment: String,
}

impl RuleForm {
    fn of(rule: Option<&Rule>, variants: &[Variant]) -> RuleForm {
        let mut rows: Vec<ConditionRow> = rule
            .map(|r| {
                r.conditions
                    .iter()
                    .map(|c| ConditionRow {
                        attribute: c.attribute.clone(),
                        operator: c.operator.as_str().to_string(),
                        values: values_text(c.operator, &c.values),
                        negate: c.negate,
                        case_insensitive: c.case_insensitive,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if rows.is_empty() {
            rows.push(ConditionRow::default());
        }
        let serve = match rule {
            Some(rule) => ServeForm::of(&rule.serve, variants),
            None => ServeForm::of(
                &Serve::Variant(variants.first().map(|v| v.name.clone()).unwrap_or_default()),
                variants,
            ),
        };
        RuleForm {
            id: String::new(),
            description: rule.map(|r| r.description.clone()).unwrap_or_default(),
            rows,
            serve,
            comment: String::new(),
        }
    }

    /// The form as posted; rows whose "remove" box is ticked are gone.
    fn read(fields: &Fields, variants: &[Variant]) -> RuleForm {
        let mut rows: Vec<ConditionRow> = (0..fields.count("conditions"))
            .filter(|k| !fields.checked(&format!("c.{k}.remove")))
            .map(|k| ConditionRow {
                attribute: fields.get(&format!("c.{k}.attribute")).to_string(),
                operator: fields.get(&format!("c.{k}.operator")).to_string(),
                values: fields.get(&format!("c.{k}.values")).to_string(),
                negate: fields.checked(&format!("c.{k}.negate")),
                case_insensitive: fields.checked(&format!("c.{k}.ci")),
            })
            .collect();
        // A segment picked from the list becomes a condition of its own, whichever button
        // was pressed: what was typed is never dropped.
        let segment = fields.get("add_segment").trim();
        if !segment.is_empty() {
            rows.push(ConditionRow {
                operator: Operator::SegmentMatch.as_str().to_string(),
                values: segment.to_string(),
                ..ConditionRow::default()
            });
        }
        RuleForm {
            id: fields.get("rule_id").to_string(),
            description: fields.get("description").to_string(),
            rows,
            serve: ServeForm::read(fields, "serve", variants),
            comment: fields.get("comment").to_string(),
        }
    }

    /// The rule this form describes, its own problems, and the row of each condition written
    /// (empty rows are left out).
    fn rule(&self, id: &str, variants: &[Variant]) -> (Rule, Problems, Vec<usize>) {
        let mut problems = Problems::new();
        let mut conditions = Vec::new();
        let mut rows = Vec::new();
        for (k, row) in self.rows.iter().enumerate() {
            if row.attribute.trim().is_empty() && row.values.trim().is_empty() {
                continue;
            }
            let Some(operator) = operator_named(&row.operator) else {
                add(
                    &mut problems,
                    format!("c.{k}.operator"),
                    format!("`{}` is not an operator", row.operator),
                );
                continue;
            };
            rows.push(k);
            conditions.push(Condition {
                attribute: row.attribute.trim().to_string(),
                operator,
                values: values_of(operator, &row.values),
                negate: row.negate,
                case_insensitive: row.case_insensitive,
            });
        }
        let serve = self.serve.serve("serve", variants, &mut problems);
        (
            Rule {
                id: id.to_string(),
                description: self.description.trim().to_string(),
                conditions,
                serve,
            },
            problems,
            rows,
        )
    }
}

/// The rule form's field of an API problem about rule number `index` of the configuration.
fn rule_field(
    path: &str,
    index: usize,
    rule: &Rule,
    variants: &[Variant],
    rows: &[usize],
) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let own = index.to_string();
    match parts.as_slice() {
        ["rules", j, rest @ ..] if *j == own => match rest {
            ["conditions", k, what, ..] => {
                match k.parse::<usize>().ok().and_then(|k| rows.get(k)) {
                    Some(row) => match *what {
                        "attribute" => format!("c.{row}.attribute"),
                        "operator" => format!("c.{row}.operator"),
                        "caseInsensitive" => format!("c.{row}.ci"),
                        _ => format!("c.{row}.values"),
                    },
                    None => "conditions".into(),
                }
            }
            ["conditions", ..] => "conditions".into(),
            ["serve", rest @ ..] => serve_field("serve", rest, variants, &rule.serve),
            ["description", ..] => "description".into(),
            ["id", ..] => "rule_id".into(),
            _ => "form".into(),
        },
        ["comment", ..] => "comment".into(),
        _ => "form".into(),
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "a page of many parts; a struct would only rename them"
)]
fn rule_markup(
    signed: &Signed,
    (project, flag, environment): (&str, &str, &str),
    loaded: &Loaded,
    rule_id: Option<&str>,
    version: u64,
    form: &RuleForm,
    segments: &[String],
    problems: &Problems,
) -> Markup {
    let env = &loaded.env;
    let here = targeting_path(project, flag, environment);
    let action = match rule_id {
        Some(id) => format!("{here}/rules/{}", segment(id)),
        None => format!("{here}/new-rule"),
    };
    let title = match rule_id {
        Some(_) => format!("Edit a rule of {flag} in {}", env.name),
        None => format!("New rule for {flag} in {}", env.name),
    };
    project_page(
        signed,
        project,
        &title,
        html! {
            (crumbs(project, flag, env, false))
            h1 {
                @if rule_id.is_some() { "Edit a rule of " } @else { "New rule for " }
                code { (flag) } " in " (env.name)
            }
            (field_problems(problems_at(problems, "form")))
            form.stack.wide method="post" action=(action) novalidate data-keep-submitter {
                (default_save())
                input type="hidden" name="csrf" value=(signed.csrf);
                input type="hidden" name="version" value=(version);
                input type="hidden" name="conditions" value=(form.rows.len());
                @if rule_id.is_none() {
                    label for="rule-id" { "Id (optional)" }
                    p.small #rule-id-help { "How the API, the JSON view and evaluation reasons name this rule: 1 to 128 characters, unique in this environment. Left empty, it becomes rule-1, rule-2 and so on." }
                    input #rule-id name="rule_id" value=(form.id) aria-describedby="rule-id-help"
                        aria-invalid=[invalid(problems, "rule_id")];
                    (field_problems(problems_at(problems, "rule_id")))
                }
                label for="description" { "Description" }
                input #description name="description" value=(form.description)
                    aria-invalid=[invalid(problems, "description")];
                (field_problems(problems_at(problems, "description")))
                fieldset {
                    legend { "Conditions (all must hold; none: the rule applies to everyone)" }
                    (field_problems(problems_at(problems, "conditions")))
                    @if !segments.is_empty() {
                        p.small #segments-help {
                            "Segments in " (env.name) " (operator “is in segment”, one key per line): "
                            @for (i, key) in segments.iter().enumerate() {
                                @if i > 0 { ", " }
                                code { (key) }
                            }
                        }
                    }
                    @for (k, row) in form.rows.iter().enumerate() {
                        (condition_row(k, row, problems, !segments.is_empty()))
                    }
                    button type="submit" name="action" value="add_condition" { "Add a condition" }
                    @if !segments.is_empty() {
                        div.row.segment-pick {
                            div {
                                label for="add-segment" { "Add a segment condition" }
                                input #add-segment name="add_segment" list="segment-keys" aria-describedby="segments-help";
                                datalist #segment-keys {
                                    @for key in segments { option value=(key) {} }
                                }
                            }
                            button type="submit" name="action" value="add_segment" { "Add the segment" }
                        }
                    }
                }
                (serve_fields("serve", "Serve", &loaded.variants, &form.serve, problems))
                (comment_field(env, &form.comment, problems))
                div.actions {
                    button.primary type="submit" name="action" value="save" { "Save rule" }
                    a href=(here) { "Cancel" }
                }
            }
        },
    )
}

fn condition_row(k: usize, row: &ConditionRow, problems: &Problems, segments: bool) -> Markup {
    let id = |what: &str| format!("c-{k}-{what}");
    let name = |what: &str| format!("c.{k}.{what}");
    let number = k + 1;
    html! {
        fieldset.condition {
            legend { "Condition " (number) }
            div.row {
                div {
                    label for=(id("attribute")) { "Attribute" }
                    input id=(id("attribute")) name=(name("attribute")) value=(row.attribute)
                        placeholder="country" aria-invalid=[invalid(problems, &name("attribute"))];
                    (field_problems(problems_at(problems, &name("attribute"))))
                }
                div {
                    label for=(id("operator")) { "Operator" }
                    select id=(id("operator")) name=(name("operator")) aria-invalid=[invalid(problems, &name("operator"))] {
                        @for op in OPERATORS {
                            option value=(op.as_str()) selected[op.as_str() == row.operator] { (operator_label(op)) }
                        }
                    }
                    (field_problems(problems_at(problems, &name("operator"))))
                }
                div {
                    label for=(id("values")) { "Values, one per line" }
                    textarea id=(id("values")) name=(name("values")) rows="3"
                        aria-describedby=[segments.then_some("segments-help")]
                        aria-invalid=[invalid(problems, &name("values"))] { (row.values) }
                    (field_problems(problems_at(problems, &name("values"))))
                }
            }
            div.row {
                label.check {
                    input type="checkbox" name=(name("negate")) value="on" checked[row.negate];
                    " Negate (not)"
                }
                label.check {
                    input type="checkbox" name=(name("ci")) value="on" checked[row.case_insensitive];
                    " Ignore case"
                }
                label.check {
                    input type="checkbox" name=(name("remove")) value="on";
                    " Remove this condition"
                }
            }
            (field_problems(problems_at(problems, &name("ci"))))
        }
    }
}

async fn segment_keys(
    state: &AppState,
    project: &str,
    environment: &str,
) -> Result<Vec<String>, ApiError> {
    Ok(state
        .store
        .segments(project, environment)
        .await?
        .into_iter()
        .map(|s| s.key)
        .collect())
}

async fn new_rule(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment)): Path<(String, String, String)>,
) -> Response {
    show_rule(&state, &signed, (&project, &flag, &environment), None).await
}

async fn edit_rule(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment, rule)): Path<(String, String, String, String)>,
) -> Response {
    show_rule(
        &state,
        &signed,
        (&project, &flag, &environment),
        Some(&rule),
    )
    .await
}

async fn show_rule(
    state: &AppState,
    signed: &Signed,
    path: (&str, &str, &str),
    rule_id: Option<&str>,
) -> Response {
    let shown = async {
        let loaded = load(state, &signed.caller, path).await?;
        let segments = segment_keys(state, path.0, path.2).await?;
        Ok::<_, ApiError>((loaded, segments))
    };
    let (loaded, segments) = match shown.await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    let rule = match rule_id {
        Some(id) => match loaded.config.rules.iter().find(|r| r.id == id) {
            Some(rule) => Some(rule),
            None => return error_page(ApiError::NotFound(format!("no rule `{id}`"))),
        },
        None => None,
    };
    let form = RuleForm::of(rule, &loaded.variants);
    html_response(
        StatusCode::OK,
        rule_markup(
            signed,
            path,
            &loaded,
            rule_id,
            loaded.config.version,
            &form,
            &segments,
            &Problems::new(),
        ),
    )
}

async fn save_new_rule(
    State(state): State<AppState>,
    Path((project, flag, environment)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    let path = (project.as_str(), flag.as_str(), environment.as_str());
    save_rule_form(&state, path, None, &headers, Fields(pairs)).await
}

async fn save_rule(
    State(state): State<AppState>,
    Path((project, flag, environment, rule)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    let path = (project.as_str(), flag.as_str(), environment.as_str());
    save_rule_form(&state, path, Some(&rule), &headers, Fields(pairs)).await
}

/// A new rule's id: `rule-N`, the first N no rule has.
fn new_rule_id(config: &FlagConfig) -> String {
    (1..)
        .map(|n| format!("rule-{n}"))
        .find(|id| config.rules.iter().all(|r| &r.id != id))
        .unwrap_or_default()
}

async fn save_rule_form(
    state: &AppState,
    path: (&str, &str, &str),
    rule_id: Option<&str>,
    headers: &HeaderMap,
    fields: Fields,
) -> Response {
    let signed = match form_caller(state, headers, fields.get("csrf")).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let shown = async {
        let loaded = load(state, &signed.caller, path).await?;
        let segments = segment_keys(state, path.0, path.2).await?;
        Ok::<_, ApiError>((loaded, segments))
    };
    let (loaded, segments) = match shown.await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    let version: u64 = fields.get("version").parse().unwrap_or(0);
    let mut form = RuleForm::read(&fields, &loaded.variants);
    let render = |form: &RuleForm, problems: &Problems, status: StatusCode| {
        html_response(
            status,
            rule_markup(
                &signed, path, &loaded, rule_id, version, form, &segments, problems,
            ),
        )
    };
    if fields.get("action") == "add_segment" {
        return render(&form, &Problems::new(), StatusCode::OK);
    }
    if fields.get("action") == "add_condition" {
        form.rows.push(ConditionRow::default());
        return render(&form, &Problems::new(), StatusCode::OK);
    }
    let mut config = loaded.config.clone();
    let (index, id) = match rule_id {
        Some(id) => match config.rules.iter().position(|r| r.id == id) {
            Some(index) => (index, id.to_string()),
            // Deleted meanwhile: the version check would refuse it too.
            None => {
                let mut problems = Problems::new();
                add(&mut problems, "form", STALE);
                return render(&form, &problems, StatusCode::CONFLICT);
            }
        },
        // An id of the person's choosing is checked by the API like any other (length,
        // uniqueness), its problems shown next to the field.
        None => match form.id.trim() {
            "" => (config.rules.len(), new_rule_id(&config)),
            chosen => (config.rules.len(), chosen.to_string()),
        },
    };
    let (rule, mut problems, rows) = form.rule(&id, &loaded.variants);
    if index == config.rules.len() {
        config.rules.push(rule.clone());
    } else {
        config.rules[index] = rule.clone();
    }
    let field = |d: &Diagnostic| rule_field(&d.path, index, &rule, &loaded.variants, &rows);
    let status = if problems.is_empty() {
        match write(state, &signed.caller, path, version, config, &form.comment).await {
            Ok(written) => return saved_redirect(path, written, "rule-saved"),
            Err(refused) => match refusal(&mut problems, refused, |problems, d| {
                add(problems, field(&d), d.message)
            }) {
                Ok(status) => status,
                Err(e) => return error_page(e),
            },
        }
    } else {
        if let Err(ApiError::Invalid(diagnostics)) =
            api::validate_config(state, path.0, path.2, path.1, &config).await
        {
            for d in &diagnostics {
                add(&mut problems, field(d), d.message.clone());
            }
        }
        StatusCode::UNPROCESSABLE_ENTITY
    };
    render(&form, &problems, status)
}

// ---- deleting and moving a rule ----

#[derive(Deserialize)]
struct RuleChangeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    comment: String,
}

fn delete_markup(
    signed: &Signed,
    (project, flag, environment): (&str, &str, &str),
    env: &Environment,
    rule: &Rule,
    index: usize,
    version: u64,
    problems: &Problems,
) -> Markup {
    confirmation(
        signed,
        project,
        Confirmation {
            title: &format!("Delete a rule of {flag} in {}", env.name),
            crumbs: Some(crumbs(project, flag, env, false)),
            question: html! { "Delete rule " (index + 1) " of " code { (flag) } " in " (env.name) "?" },
            consequence: html! {
                p {
                    @if !rule.description.is_empty() { strong { (rule.description) } ": " }
                    (rule_words(rule))
                }
                p { "Contexts it matches go on to the rules below it and then the default serve. The history keeps the rule; a revert brings it back." }
            },
            problems: problems_at(problems, "form"),
            action: None,
            fields: html! {
                input type="hidden" name="version" value=(version);
                (comment_field(env, "", problems))
            },
            button: html! { "Delete the rule in " (env.name) },
            primary: true,
            danger: true,
            back: targeting_path(project, flag, environment),
            back_words: "Cancel",
        },
    )
}

async fn confirm_delete(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment, rule)): Path<(String, String, String, String)>,
) -> Response {
    let path = (project.as_str(), flag.as_str(), environment.as_str());
    let loaded = match load(&state, &signed.caller, path).await {
        Ok(loaded) => loaded,
        Err(e) => return error_page(e),
    };
    match loaded.config.rules.iter().position(|r| r.id == rule) {
        Some(index) => html_response(
            StatusCode::OK,
            delete_markup(
                &signed,
                path,
                &loaded.env,
                &loaded.config.rules[index],
                index,
                loaded.config.version,
                &Problems::new(),
            ),
        ),
        None => error_page(ApiError::NotFound(format!("no rule `{rule}`"))),
    }
}

async fn delete_rule(
    State(state): State<AppState>,
    Path((project, flag, environment, rule)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<RuleChangeForm>,
) -> Response {
    change_rule(
        &state,
        (&project, &flag, &environment),
        &rule,
        &headers,
        form,
        None,
    )
    .await
}

async fn move_rule(
    State(state): State<AppState>,
    Path((project, flag, environment, rule)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<RuleChangeForm>,
) -> Response {
    let up = form.direction == "up";
    change_rule(
        &state,
        (&project, &flag, &environment),
        &rule,
        &headers,
        form,
        Some(up),
    )
    .await
}

/// Deletes a rule (`moving` is `None`) or moves it one place up or down.
async fn change_rule(
    state: &AppState,
    path: (&str, &str, &str),
    rule_id: &str,
    headers: &HeaderMap,
    form: RuleChangeForm,
    moving: Option<bool>,
) -> Response {
    let signed = match form_caller(state, headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let loaded = match load(state, &signed.caller, path).await {
        Ok(loaded) => loaded,
        Err(e) => return error_page(e),
    };
    let mut config = loaded.config.clone();
    let mut problems = Problems::new();
    let status = match config.rules.iter().position(|r| r.id == rule_id) {
        None => {
            add(&mut problems, "form", STALE);
            StatusCode::CONFLICT
        }
        Some(index) => {
            match moving {
                None => {
                    config.rules.remove(index);
                }
                Some(true) if index > 0 => config.rules.swap(index, index - 1),
                Some(false) if index + 1 < config.rules.len() => {
                    config.rules.swap(index, index + 1)
                }
                // Already at the top or the bottom: nothing to write.
                Some(_) => return saved_redirect(path, Written::Saved, "rule-moved"),
            }
            let what = if moving.is_some() {
                "rule-moved"
            } else {
                "rule-deleted"
            };
            match write(
                state,
                &signed.caller,
                path,
                form.version,
                config,
                &form.comment,
            )
            .await
            {
                Ok(written) => return saved_redirect(path, written, what),
                Err(refused) => match refusal(&mut problems, refused, |problems, d| {
                    // A deletion is shown again with its comment field; a move on the
                    // environment's page, whose comment field belongs to another form.
                    let field = if d.path == "/comment" && moving.is_none() {
                        "comment"
                    } else {
                        "form"
                    };
                    add(problems, field, d.message);
                }) {
                    Ok(status) => status,
                    Err(e) => return error_page(e),
                },
            }
        }
    };
    // Shown again: a deletion on its confirmation, a move on the environment's page.
    match (
        moving,
        loaded.config.rules.iter().position(|r| r.id == rule_id),
    ) {
        (None, Some(index)) => html_response(
            status,
            delete_markup(
                &signed,
                path,
                &loaded.env,
                &loaded.config.rules[index],
                index,
                loaded.config.version,
                &problems,
            ),
        ),
        _ => {
            let others = match other_flags(state, path.0, path.1).await {
                Ok(others) => others,
                Err(e) => return error_page(e),
            };
            let settings = SettingsForm::of(&loaded.config, &loaded.variants);
            html_response(
                status,
                targeting_markup(
                    &signed,
                    path,
                    &loaded,
                    loaded.config.version,
                    &settings,
                    &others,
                    &problems,
                    None,
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_is_offered_once() {
        // `operator_label` matches exhaustively; each operator it knows must be in the select.
        let names: std::collections::HashSet<&str> = OPERATORS.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), OPERATORS.len());
        for op in OPERATORS {
            let parsed: Operator = serde_json::from_value(serde_json::json!(op.as_str())).unwrap();
            assert_eq!(parsed, op);
            assert!(!operator_label(op).is_empty());
        }
    }

    #[test]
    fn values_keep_their_types_through_the_text_box() {
        let values = vec![
            serde_json::json!("DE"),
            serde_json::json!("42"),
            serde_json::json!(42),
            serde_json::json!(true),
        ];
        let text = values_text(Operator::In, &values);
        assert_eq!(text, "DE\n\"42\"\n42\ntrue");
        assert_eq!(values_of(Operator::In, &text), values);
        // A version stays text even where it reads as a number.
        assert_eq!(
            values_of(Operator::SemverGte, "1.2\n"),
            vec![serde_json::json!("1.2")]
        );
    }
}
