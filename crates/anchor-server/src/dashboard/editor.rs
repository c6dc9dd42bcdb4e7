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

use anchor_engine::{
    Condition, Diagnostic, FlagConfig, Operator, Prerequisite, Rollout, Rule, Serve, Variant,
    WeightedVariant,
};
use anchor_store::{Environment, Role};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Frame, Signed, encode, error_page, field_problems, form_caller, html_response, page};
use crate::AppState;
use crate::api::{self, Body, ConfigUpdate};
use crate::auth::Caller;
use crate::error::ApiError;

const BASE: &str = "/projects/{project}/flags/{flag}/environments/{environment}/targeting";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(BASE, get(targeting_page).post(save_targeting))
        .route(&format!("{BASE}/json"), get(json_page).post(save_json))
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

/// A form never grows beyond this many condition or prerequisite rows, whatever it claims.
const MAX_ROWS: usize = 200;

/// Every operator the engine knows, in the order the select offers them.
const OPERATORS: [Operator; 19] = [
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

/// The words a select shows for an operator. The match is exhaustive so that a new operator
/// cannot be forgotten here (and then in `OPERATORS`, which a unit test checks against it).
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

/// A path segment: rule ids may hold any character, `/` included.
fn segment(value: &str) -> String {
    encode(value).replace('/', "%2F")
}

/// A weight out of 100,000 as the percentage a form field shows (`12.5`, `0.001`).
fn percent_text(weight: u32) -> String {
    let whole = weight / 1000;
    let thousandths = weight % 1000;
    if thousandths == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{thousandths:03}")
            .trim_end_matches('0')
            .to_string()
    }
}

/// A percentage typed into a form as a weight out of 100,000: `None` for an empty field.
fn weight_of(text: &str) -> Result<Option<u32>, String> {
    let text = text.trim().trim_end_matches('%').trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || format!("`{text}` is not a percentage between 0 and 100 (to 0.001 at most)");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    if fraction.len() > 3 {
        return Err(format!(
            "`{text}`: percentages go to 0.001 at most (weights are out of 100,000)"
        ));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let fraction: u64 = format!("{fraction:0<3}").parse().map_err(|_| bad())?;
    let weight = whole.saturating_mul(1000).saturating_add(fraction);
    if weight > 100_000 {
        return Err(bad());
    }
    Ok(Some(weight as u32))
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

// ---- the serve: one variant or a split ----

/// The serve as its form fields, kept as typed.
struct ServeForm {
    rollout: bool,
    variant: String,
    /// A percentage per variant of the flag, in the flag's order.
    percents: Vec<String>,
    bucket_by: String,
    salt: String,
}

impl ServeForm {
    fn of(serve: &Serve, variants: &[Variant]) -> ServeForm {
        match serve {
            Serve::Variant(v) => ServeForm {
                rollout: false,
                variant: v.clone(),
                percents: vec![String::new(); variants.len()],
                bucket_by: String::new(),
                salt: String::new(),
            },
            Serve::Rollout(rollout) => ServeForm {
                rollout: true,
                variant: String::new(),
                percents: variants
                    .iter()
                    .map(|v| {
                        rollout
                            .variants
                            .iter()
                            .find(|w| w.variant == v.name)
                            .map(|w| percent_text(w.weight))
                            .unwrap_or_default()
                    })
                    .collect(),
                bucket_by: rollout.bucket_by.clone().unwrap_or_default(),
                salt: rollout.salt.clone().unwrap_or_default(),
            },
        }
    }

    fn read(fields: &Fields, prefix: &str, variants: &[Variant]) -> ServeForm {
        ServeForm {
            rollout: fields.get(&format!("{prefix}.mode")) == "rollout",
            variant: fields.get(&format!("{prefix}.variant")).to_string(),
            percents: (0..variants.len())
                .map(|i| fields.get(&format!("{prefix}.pct.{i}")).to_string())
                .collect(),
            bucket_by: fields.get(&format!("{prefix}.bucket_by")).to_string(),
            salt: fields.get(&format!("{prefix}.salt")).to_string(),
        }
    }

    /// The serve, and the problems of the percentages (which the engine cannot see: it takes
    /// weights with any total).
    fn serve(&self, prefix: &str, variants: &[Variant], problems: &mut Problems) -> Serve {
        if !self.rollout {
            return Serve::Variant(self.variant.trim().to_string());
        }
        let mut weighted = Vec::new();
        let mut total: u64 = 0;
        for (i, text) in self.percents.iter().enumerate() {
            match weight_of(text) {
                Ok(Some(weight)) => {
                    total += u64::from(weight);
                    weighted.push(WeightedVariant {
                        variant: variants[i].name.clone(),
                        weight,
                    });
                }
                Ok(None) => {}
                Err(problem) => add(problems, format!("{prefix}.pct.{i}"), problem),
            }
        }
        if !problems
            .keys()
            .any(|k| k.starts_with(&format!("{prefix}.pct.")))
            && total != 100_000
        {
            add(
                problems,
                format!("{prefix}.weights"),
                format!(
                    "the percentages add up to {}%, not 100%",
                    percent_text(total.min(u64::from(u32::MAX)) as u32)
                ),
            );
        }
        let optional = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Serve::Rollout(Rollout {
            variants: weighted,
            bucket_by: optional(&self.bucket_by),
            salt: optional(&self.salt),
        })
    }
}

/// The form field of a problem inside a serve (`rest` follows the serve's pointer).
fn serve_field(prefix: &str, rest: &[&str], variants: &[Variant], serve: &Serve) -> String {
    match rest {
        ["variant", ..] => format!("{prefix}.variant"),
        ["rollout", "bucketBy", ..] => format!("{prefix}.bucket_by"),
        ["rollout", "salt", ..] => format!("{prefix}.salt"),
        ["rollout", "variants", j, ..] => {
            // The j-th weighted variant is one of the flag's, whose field is by its index.
            let name = match serve {
                Serve::Rollout(r) => j.parse::<usize>().ok().and_then(|j| r.variants.get(j)),
                Serve::Variant(_) => None,
            };
            match name.and_then(|w| variants.iter().position(|v| v.name == w.variant)) {
                Some(i) => format!("{prefix}.pct.{i}"),
                None => format!("{prefix}.weights"),
            }
        }
        _ => format!("{prefix}.weights"),
    }
}

fn serve_fields(
    prefix: &str,
    legend: &str,
    variants: &[Variant],
    form: &ServeForm,
    problems: &Problems,
) -> Markup {
    let id = |what: &str| format!("{prefix}-{what}");
    let name = |what: &str| format!("{prefix}.{what}");
    html! {
        fieldset.serve {
            legend { (legend) }
            div.choice {
                input type="radio" id=(id("mode-variant")) name=(name("mode")) value="variant" checked[!form.rollout];
                label.check for=(id("mode-variant")) { "One variant for everyone" }
            }
            div.indent {
                label for=(id("variant")) { "Variant" }
                select id=(id("variant")) name=(name("variant"))
                    aria-invalid=[invalid(problems, &name("variant"))] {
                    @for v in variants {
                        option value=(v.name) selected[v.name == form.variant] { (v.name) }
                    }
                }
                (field_problems(problems_at(problems, &name("variant"))))
            }
            div.choice {
                input type="radio" id=(id("mode-rollout")) name=(name("mode")) value="rollout" checked[form.rollout];
                label.check for=(id("mode-rollout")) { "A percentage rollout" }
            }
            div.indent {
                p.small id=(id("weights-help")) { "Percentages of contexts per variant, adding up to 100 (to 0.001). An empty field leaves the variant out." }
                div.weights {
                    @for (i, v) in variants.iter().enumerate() {
                        @let field = format!("{prefix}.pct.{i}");
                        div {
                            label for=(format!("{prefix}-pct-{i}")) { (v.name) " %" }
                            input id=(format!("{prefix}-pct-{i}")) name=(field) inputmode="decimal" size="8"
                                value=(form.percents.get(i).map(String::as_str).unwrap_or(""))
                                aria-describedby=(id("weights-help"))
                                aria-invalid=[invalid(problems, &field)];
                            (field_problems(problems_at(problems, &field)))
                        }
                    }
                }
                div id=(id("weights")) { (field_problems(problems_at(problems, &name("weights")))) }
                label for=(id("bucket-by")) { "Bucket by attribute" }
                input id=(id("bucket-by")) name=(name("bucket_by")) value=(form.bucket_by)
                    placeholder="targetingKey" aria-invalid=[invalid(problems, &name("bucket_by"))];
                (field_problems(problems_at(problems, &name("bucket_by"))))
                label for=(id("salt")) { "Salt" }
                input id=(id("salt")) name=(name("salt")) value=(form.salt) placeholder="the flag key";
                (field_problems(problems_at(problems, &name("salt"))))
            }
        }
    }
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
            if let Err(e) = state
                .snapshots
                .refresh(state.store.as_ref(), project, environment)
                .await
            {
                tracing::warn!(error = %e, %project, "cannot rebuild snapshots after a write");
            }
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

fn notice_text(notice: &str) -> Option<String> {
    if let Some(id) = notice.strip_prefix("requested:") {
        return Some(format!(
            "This environment requires approval: change request #{id} was created and awaits \
             approval. Nothing changes until it is applied."
        ));
    }
    match notice {
        "saved" => Some("Saved.".into()),
        "rule-saved" => Some("The rule was saved.".into()),
        "rule-deleted" => Some("The rule was deleted.".into()),
        "rule-moved" => Some("The rule was moved.".into()),
        _ => None,
    }
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

// ---- the environment's page ----

/// The environment-wide settings as typed.
struct SettingsForm {
    /// Keys per variant, in the flag's variant order.
    targets: Vec<String>,
    off_variant: String,
    default_serve: ServeForm,
    prerequisites: Vec<(String, String)>,
    comment: String,
}

impl SettingsForm {
    fn of(config: &FlagConfig, variants: &[Variant]) -> SettingsForm {
        let mut prerequisites: Vec<(String, String)> = config
            .prerequisites
            .iter()
            .map(|p| (p.flag.clone(), p.variant.clone()))
            .collect();
        // One empty row to add a prerequisite without asking for it first.
        prerequisites.push(Default::default());
        SettingsForm {
            targets: variants
                .iter()
                .map(|v| {
                    config
                        .targets
                        .get(&v.name)
                        .map(|keys| keys.join("\n"))
                        .unwrap_or_default()
                })
                .collect(),
            off_variant: config.off_variant.clone(),
            default_serve: ServeForm::of(&config.default_serve, variants),
            prerequisites,
            comment: String::new(),
        }
    }

    fn read(fields: &Fields, variants: &[Variant]) -> SettingsForm {
        SettingsForm {
            targets: (0..variants.len())
                .map(|i| fields.get(&format!("targets.{i}")).to_string())
                .collect(),
            off_variant: fields.get("off_variant").to_string(),
            default_serve: ServeForm::read(fields, "default", variants),
            prerequisites: (0..fields.count("prereqs"))
                .map(|k| {
                    (
                        fields.get(&format!("prereq.{k}.flag")).to_string(),
                        fields.get(&format!("prereq.{k}.variant")).to_string(),
                    )
                })
                .collect(),
            comment: fields.get("comment").to_string(),
        }
    }

    /// The configuration with these settings, its rules and switch unchanged; the form's own
    /// problems; and the form row of each prerequisite written (empty rows are left out).
    fn apply(
        &self,
        mut config: FlagConfig,
        variants: &[Variant],
    ) -> (FlagConfig, Problems, Vec<usize>) {
        let mut problems = Problems::new();
        config.targets.clear();
        for (i, text) in self.targets.iter().enumerate() {
            let keys: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
            if !keys.is_empty() {
                config.targets.insert(variants[i].name.clone(), keys);
            }
        }
        config.off_variant = self.off_variant.trim().to_string();
        config.default_serve = self.default_serve.serve("default", variants, &mut problems);
        let mut rows = Vec::new();
        config.prerequisites.clear();
        for (k, (flag, variant)) in self.prerequisites.iter().enumerate() {
            if flag.trim().is_empty() && variant.trim().is_empty() {
                continue;
            }
            rows.push(k);
            config.prerequisites.push(Prerequisite {
                flag: flag.trim().to_string(),
                variant: variant.trim().to_string(),
            });
        }
        (config, problems, rows)
    }
}

/// The settings form's field of an API problem.
fn settings_field(path: &str, config: &FlagConfig, variants: &[Variant], rows: &[usize]) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["targets", variant, ..] => {
            let name = unescape_pointer(variant);
            match variants.iter().position(|v| v.name == name) {
                Some(i) => format!("targets.{i}"),
                None => "targets".into(),
            }
        }
        ["offVariant", ..] => "off_variant".into(),
        ["defaultServe", rest @ ..] => {
            serve_field("default", rest, variants, &config.default_serve)
        }
        ["prerequisites", j, what, ..] => match j.parse::<usize>().ok().and_then(|j| rows.get(j)) {
            Some(row) if *what == "variant" => format!("prereq.{row}.variant"),
            Some(row) => format!("prereq.{row}.flag"),
            None => "prerequisites".into(),
        },
        ["prerequisites", ..] => "prerequisites".into(),
        ["comment", ..] => "comment".into(),
        _ => "form".into(),
    }
}

#[derive(Deserialize, Default)]
struct NoticeQuery {
    notice: Option<String>,
}

async fn targeting_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment)): Path<(String, String, String)>,
    Query(query): Query<NoticeQuery>,
) -> Response {
    let path = (project.as_str(), flag.as_str(), environment.as_str());
    let loaded = match load(&state, &signed.caller, path).await {
        Ok(loaded) => loaded,
        Err(e) => return error_page(e),
    };
    let others = match other_flags(&state, &project, &flag).await {
        Ok(others) => others,
        Err(e) => return error_page(e),
    };
    let form = SettingsForm::of(&loaded.config, &loaded.variants);
    let notice = query.notice.as_deref().and_then(notice_text);
    html_response(
        StatusCode::OK,
        targeting_markup(
            &signed,
            path,
            &loaded,
            loaded.config.version,
            &form,
            &others,
            &Problems::new(),
            notice.as_deref(),
        ),
    )
}

/// The project's other flags, offered as prerequisites.
async fn other_flags(state: &AppState, project: &str, flag: &str) -> Result<Vec<String>, ApiError> {
    let filter = anchor_store::FlagFilter {
        tag: None,
        lifecycle: None,
        enabled_in: None,
        text: None,
        include_archived: false,
        after: None,
        limit: 1000,
    };
    Ok(state
        .store
        .flags(project, &filter)
        .await?
        .items
        .into_iter()
        .map(|r| r.flag.key)
        .filter(|k| k != flag)
        .collect())
}

#[allow(
    clippy::too_many_arguments,
    reason = "a page of many parts; a struct would only rename them"
)]
fn targeting_markup(
    signed: &Signed,
    (project, flag, environment): (&str, &str, &str),
    loaded: &Loaded,
    version: u64,
    form: &SettingsForm,
    other_flags: &[String],
    problems: &Problems,
    notice: Option<&str>,
) -> Markup {
    let env = &loaded.env;
    let variants = &loaded.variants;
    let config = &loaded.config;
    let title = format!("Targeting of {flag} in {}", env.name);
    let here = targeting_path(project, flag, environment);
    html_page(
        signed,
        project,
        &title,
        html! {
            (crumbs(project, flag, env, true))
            h1 { "Targeting of " code { (flag) } " in " (env.name) }
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            p {
                "The flag is " @if config.enabled { strong { "on" } } @else { strong { "off" } }
                " in " (env.name) " (version " (config.version) "). "
                "Contexts meet, in this order: the prerequisites, the individual targets, the rules from the top, and then the default serve. "
                a href={ (here) "/json" } { "Edit as JSON" }
            }
            @if env.requires_approval {
                p.small { (env.name) " requires approval: saving creates a change request." }
            }
            (field_problems(problems_at(problems, "form")))
            h2 #rules-heading { "Rules" }
            @if config.rules.is_empty() {
                p { "No rules: every context that is not an individual target gets the default serve." }
            }
            ol.rule-list aria-labelledby="rules-heading" {
                @for (j, rule) in config.rules.iter().enumerate() {
                    @let rule_path = format!("{here}/rules/{}", segment(&rule.id));
                    li {
                        div.rule-text {
                            @if !rule.description.is_empty() { strong { (rule.description) } br; }
                            (rule_words(rule))
                        }
                        div.rule-actions {
                            a.button href=(rule_path) aria-label={ "Edit rule " (j + 1) } { "Edit" }
                            @for (direction, word, possible) in [("up", "Move up", j > 0), ("down", "Move down", j + 1 < config.rules.len())] {
                                @if possible {
                                    form method="post" action={ (rule_path) "/move" } {
                                        input type="hidden" name="csrf" value=(signed.csrf);
                                        input type="hidden" name="version" value=(version);
                                        input type="hidden" name="direction" value=(direction);
                                        @if env.requires_comment {
                                            label.sr for={ "comment-" (direction) "-" (j) } { "Comment" }
                                            input id={ "comment-" (direction) "-" (j) } name="comment" required placeholder="comment";
                                        }
                                        button type="submit" aria-label={ (word) ": rule " (j + 1) } { (word) }
                                    }
                                }
                            }
                            a.button.danger href={ (rule_path) "/delete" } aria-label={ "Delete rule " (j + 1) } { "Delete" }
                        }
                    }
                }
            }
            p { a.button.primary href={ (here) "/new-rule" } { "Add rule" } }
            h2 { "Prerequisites, individual targets and the default" }
            form.stack.wide method="post" action=(here) novalidate data-keep-submitter {
                (default_save())
                input type="hidden" name="csrf" value=(signed.csrf);
                input type="hidden" name="version" value=(version);
                input type="hidden" name="prereqs" value=(form.prerequisites.len());
                fieldset {
                    legend { "Prerequisites" }
                    p.small #prereq-help { "This flag applies only while each of these flags serves the named variant to the same context; otherwise it serves the off variant." }
                    datalist #flag-keys {
                        @for key in other_flags { option value=(key) {} }
                    }
                    (field_problems(problems_at(problems, "prerequisites")))
                    @for (k, (pflag, pvariant)) in form.prerequisites.iter().enumerate() {
                        @let flag_field = format!("prereq.{k}.flag");
                        @let variant_field = format!("prereq.{k}.variant");
                        div.row {
                            div {
                                label for={ "prereq-" (k) "-flag" } { "Flag" }
                                input id={ "prereq-" (k) "-flag" } name=(flag_field) value=(pflag) list="flag-keys"
                                    aria-describedby="prereq-help" aria-invalid=[invalid(problems, &flag_field)];
                                (field_problems(problems_at(problems, &flag_field)))
                            }
                            div {
                                label for={ "prereq-" (k) "-variant" } { "serves variant" }
                                input id={ "prereq-" (k) "-variant" } name=(variant_field) value=(pvariant)
                                    aria-invalid=[invalid(problems, &variant_field)];
                                (field_problems(problems_at(problems, &variant_field)))
                            }
                        }
                    }
                    p.small { "Leave a row empty to remove it." }
                    button type="submit" name="action" value="add_prerequisite" { "Add another prerequisite" }
                }
                fieldset {
                    legend { "Individual targets" }
                    p.small { "Targeting keys, one per line, that always get a variant (after the prerequisites)." }
                    (field_problems(problems_at(problems, "targets")))
                    @for (i, v) in variants.iter().enumerate() {
                        @let field = format!("targets.{i}");
                        label for={ "targets-" (i) } { "Keys that get " (v.name) }
                        textarea id={ "targets-" (i) } name=(field) rows="3"
                            aria-invalid=[invalid(problems, &field)] { (form.targets.get(i).map(String::as_str).unwrap_or("")) }
                        (field_problems(problems_at(problems, &field)))
                    }
                }
                (serve_fields("default", "Default serve (when no target or rule applies)", variants, &form.default_serve, problems))
                label for="off_variant" { "Off variant (served while the flag is off or a prerequisite fails)" }
                select #off_variant name="off_variant" aria-invalid=[invalid(problems, "off_variant")] {
                    @for v in variants {
                        option value=(v.name) selected[v.name == form.off_variant] { (v.name) }
                    }
                }
                (field_problems(problems_at(problems, "off_variant")))
                (comment_field(env, &form.comment, problems))
                div.actions {
                    button.primary type="submit" name="action" value="save" { "Save" }
                    a href={ "/projects/" (segment(project)) "/flags/" (segment(flag)) } { "Cancel" }
                }
            }
        },
    )
}

/// Enter in a text field presses a form's first submit button: this one saves, so that Enter
/// never just adds an empty row. Out of sight and out of the tab order; the visible "Save"
/// button does the same for mouse, keyboard and screen reader.
fn default_save() -> Markup {
    html! {
        button.sr type="submit" name="action" value="save" tabindex="-1" aria-hidden="true" { "Save" }
    }
}

fn html_page(signed: &Signed, project: &str, title: &str, body: Markup) -> Markup {
    page(
        &Frame {
            title,
            signed: Some(signed),
            project: Some(project),
        },
        body,
    )
}

/// A rule in words, for the list.
fn rule_words(rule: &Rule) -> String {
    let conditions: Vec<String> = rule.conditions.iter().map(condition_words).collect();
    let when = if conditions.is_empty() {
        "always".to_string()
    } else {
        format!("if {}", conditions.join(" and "))
    };
    format!("{when} → {}", serve_words(&rule.serve))
}

fn condition_words(c: &Condition) -> String {
    let values: Vec<String> = c
        .values
        .iter()
        .map(|v| match v {
            serde_json::Value::String(s) => format!("“{s}”"),
            other => other.to_string(),
        })
        .collect();
    let not = if c.negate { "not " } else { "" };
    let case = if c.case_insensitive {
        " (ignoring case)"
    } else {
        ""
    };
    match c.operator {
        Operator::SegmentMatch => format!("{not}in segment {}", values.join(" or ")),
        Operator::Exists => format!("{} {not}exists", c.attribute),
        op => format!(
            "{} {not}{} {}{case}",
            c.attribute,
            operator_label(op),
            values.join(", ")
        ),
    }
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

async fn save_targeting(
    State(state): State<AppState>,
    Path((project, flag, environment)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    let fields = Fields(pairs);
    let signed = match form_caller(&state, &headers, fields.get("csrf")).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let path = (project.as_str(), flag.as_str(), environment.as_str());
    let loaded = match load(&state, &signed.caller, path).await {
        Ok(loaded) => loaded,
        Err(e) => return error_page(e),
    };
    let others = match other_flags(&state, &project, &flag).await {
        Ok(others) => others,
        Err(e) => return error_page(e),
    };
    let version: u64 = fields.get("version").parse().unwrap_or(0);
    let mut form = SettingsForm::read(&fields, &loaded.variants);
    if fields.get("action") == "add_prerequisite" {
        form.prerequisites.push(Default::default());
        return html_response(
            StatusCode::OK,
            targeting_markup(
                &signed,
                path,
                &loaded,
                version,
                &form,
                &others,
                &Problems::new(),
                None,
            ),
        );
    }
    let (config, mut problems, rows) = form.apply(loaded.config.clone(), &loaded.variants);
    let field = |d: &Diagnostic| settings_field(&d.path, &config, &loaded.variants, &rows);
    let status = if problems.is_empty() {
        match write(
            &state,
            &signed.caller,
            path,
            version,
            config.clone(),
            &form.comment,
        )
        .await
        {
            Ok(written) => return saved_redirect(path, written, "saved"),
            Err(Refused::Invalid(diagnostics)) => {
                for d in &diagnostics {
                    add(&mut problems, field(d), d.message.clone());
                }
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Err(Refused::Stale) => {
                add(&mut problems, "form", STALE);
                StatusCode::CONFLICT
            }
            Err(Refused::Other(e)) => return error_page(e),
        }
    } else {
        // Every problem at once: the engine's too, though the form's own stop the write.
        if let Err(ApiError::Invalid(diagnostics)) =
            api::validate_config(&state, &project, &environment, &flag, &config).await
        {
            for d in &diagnostics {
                add(&mut problems, field(d), d.message.clone());
            }
        }
        StatusCode::UNPROCESSABLE_ENTITY
    };
    html_response(
        status,
        targeting_markup(
            &signed, path, &loaded, version, &form, &others, &problems, None,
        ),
    )
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
            description: rule.map(|r| r.description.clone()).unwrap_or_default(),
            rows,
            serve,
            comment: String::new(),
        }
    }

    /// The form as posted; rows whose "remove" box is ticked are gone.
    fn read(fields: &Fields, variants: &[Variant]) -> RuleForm {
        let rows = (0..fields.count("conditions"))
            .filter(|k| !fields.checked(&format!("c.{k}.remove")))
            .map(|k| ConditionRow {
                attribute: fields.get(&format!("c.{k}.attribute")).to_string(),
                operator: fields.get(&format!("c.{k}.operator")).to_string(),
                values: fields.get(&format!("c.{k}.values")).to_string(),
                negate: fields.checked(&format!("c.{k}.negate")),
                case_insensitive: fields.checked(&format!("c.{k}.ci")),
            })
            .collect();
        RuleForm {
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
    html_page(
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
        None => (config.rules.len(), new_rule_id(&config)),
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
            Err(Refused::Invalid(diagnostics)) => {
                for d in &diagnostics {
                    add(&mut problems, field(d), d.message.clone());
                }
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Err(Refused::Stale) => {
                add(&mut problems, "form", STALE);
                StatusCode::CONFLICT
            }
            Err(Refused::Other(e)) => return error_page(e),
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
    let here = targeting_path(project, flag, environment);
    let title = format!("Delete a rule of {flag} in {}", env.name);
    html_page(
        signed,
        project,
        &title,
        html! {
            section.narrow {
                (crumbs(project, flag, env, false))
                h1 { "Delete rule " (index + 1) " of " code { (flag) } " in " (env.name) "?" }
                p {
                    @if !rule.description.is_empty() { strong { (rule.description) } ": " }
                    (rule_words(rule))
                }
                p { "Contexts it matches go on to the rules below it and then the default serve. The history keeps the rule; a revert brings it back." }
                (field_problems(problems_at(problems, "form")))
                form.stack method="post" {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    input type="hidden" name="version" value=(version);
                    (comment_field(env, "", problems))
                    div.actions {
                        button.primary.danger type="submit" { "Delete the rule in " (env.name) }
                        a href=(here) { "Cancel" }
                    }
                }
            }
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
                Err(Refused::Invalid(diagnostics)) => {
                    for d in diagnostics {
                        let field = if d.path == "/comment" {
                            "comment"
                        } else {
                            "form"
                        };
                        add(&mut problems, field, d.message);
                    }
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                Err(Refused::Stale) => {
                    add(&mut problems, "form", STALE);
                    StatusCode::CONFLICT
                }
                Err(Refused::Other(e)) => return error_page(e),
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

// ---- the JSON view ----

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
    html_page(
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
                Err(Refused::Invalid(diagnostics)) => {
                    for d in diagnostics {
                        if d.path == "/comment" {
                            add(&mut problems, "comment", d.message);
                        } else {
                            add(&mut problems, "json", format!("{}: {}", d.path, d.message));
                        }
                    }
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                Err(Refused::Stale) => {
                    add(&mut problems, "form", STALE);
                    StatusCode::CONFLICT
                }
                Err(Refused::Other(e)) => return error_page(e),
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
    fn percentages_become_weights_out_of_100000() {
        assert_eq!(weight_of("10"), Ok(Some(10_000)));
        assert_eq!(weight_of("12.5%"), Ok(Some(12_500)));
        assert_eq!(weight_of("0.001"), Ok(Some(1)));
        assert_eq!(weight_of(".5"), Ok(Some(500)));
        assert_eq!(weight_of(" "), Ok(None));
        assert!(weight_of("0.0001").is_err());
        assert!(weight_of("100.001").is_err());
        assert!(weight_of("-5").is_err());
        assert!(weight_of("ten").is_err());
        assert!(weight_of(".").is_err());
        for weight in [0, 1, 10, 12_500, 33_333, 100_000] {
            assert_eq!(weight_of(&percent_text(weight)), Ok(Some(weight)));
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
