//! Releases: the project's list, and one release with its stage timeline, the guardrails'
//! latest numbers, the decision log and the commands that steer it.

use anchor_rollout::{GuardrailReport, ReleaseTemplate, Verdict};
use anchor_store::Role;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use super::flags::release_state_name;
use super::{Frame, Signed, encode, error_page, form_caller, html_response, page, percent, time};
use crate::AppState;
use crate::api::Body;
use crate::error::ApiError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{project}/releases", get(list))
        .route("/projects/{project}/releases/{id}", get(release_page))
        .route(
            "/projects/{project}/releases/{id}/commands",
            get(confirm_command).post(command),
        )
}

async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
) -> Response {
    let shown = async {
        signed
            .caller
            .require(&state, &project, Role::Viewer)
            .await?;
        Ok::<_, ApiError>(state.store.releases(&project, None, None).await?)
    };
    let releases = match shown.await {
        Ok(releases) => releases,
        Err(e) => return error_page(e),
    };
    html_response(
        StatusCode::OK,
        page(
            &Frame {
                title: "Releases",
                signed: Some(&signed),
                project: Some(&project),
            },
            html! {
                h1 { "Releases" }
                @if releases.is_empty() {
                    p { "No releases yet: start one from the API (" code { "POST …/flags/<flag>/releases" } ")." }
                }
                table {
                    thead { tr { th scope="col" { "Flag" } th scope="col" { "Environment" } th scope="col" { "State" } th scope="col" { "Started" } } }
                    tbody {
                        @for r in &releases {
                            tr {
                                td { a href={ "/projects/" (project) "/releases/" (r.id) } { (r.flag) ": " (r.treatment) } }
                                td { (r.environment) }
                                td { (release_state_name(r)) }
                                td { (time(r.created_at)) }
                            }
                        }
                    }
                }
            },
        ),
    )
}

/// The commands a person may give, with the words of their buttons; `dismiss` is per
/// guardrail and shown beside it.
const COMMANDS: [(&str, &str); 6] = [
    ("approve", "Approve the next stage"),
    ("pause", "Pause"),
    ("resume", "Resume"),
    ("skip", "Skip to the next stage"),
    ("rollBack", "Roll back"),
    ("abort", "Abort"),
];

/// Which commands make sense in a state (the state machine has the last word).
fn commands_for(state: &str) -> &'static [&'static str] {
    match state {
        "pending" => &["abort"],
        "running" | "holding" => &["pause", "skip", "rollBack", "abort"],
        "waitingForApproval" => &["approve", "rollBack", "abort"],
        "paused" => &["resume", "rollBack", "abort"],
        _ => &[],
    }
}

fn command_words(command: &str) -> &'static str {
    COMMANDS
        .iter()
        .find(|(c, _)| *c == command)
        .map(|(_, words)| *words)
        .unwrap_or("Dismiss the guardrail")
}

fn verdict_words(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Regressed { .. } => "regressed".into(),
        Verdict::Safe { .. } => "safe".into(),
        Verdict::Inconclusive {
            needed: Some(n), ..
        } => format!(
            "inconclusive: about {} more treatment and {} more control samples needed",
            n.treatment, n.control
        ),
        Verdict::Inconclusive { needed: None, .. } => "inconclusive".into(),
        Verdict::InsufficientData {
            minimum_per_arm, ..
        } => format!("too little data: {minimum_per_arm} per arm needed"),
    }
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.4}")
    }
}

/// A stage's dwell in words.
fn duration(ms: u64) -> String {
    if ms < 60_000 {
        format!("{} s", ms.div_ceil(1000))
    } else {
        format!("{} min", ms / 60_000)
    }
}

/// One guardrail's evidence as a small server-side SVG: the confidence interval of the
/// treatment's regression (a bar with the estimate as a dot) against zero (grey) and the
/// tolerance (red, dashed). Right of the red line is a regression; an interval wholly left of
/// it is safe. Only numbers go into it, every one finite (the rollout crate guarantees it).
fn interval_chart(e: &anchor_rollout::Evidence) -> Markup {
    const W: f64 = 180.0;
    const H: f64 = 26.0;
    const PAD: f64 = 8.0;
    let values = [e.lower, e.upper, e.estimate, e.tolerance, 0.0];
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if high - low > 0.0 { high - low } else { 1.0 };
    let x = |v: f64| format!("{:.1}", PAD + (v - low) / span * (W - 2.0 * PAD));
    let mid = format!("{:.1}", H / 2.0);
    html! {
        svg.interval width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-label={ "difference " (number(e.estimate)) ", bounds " (number(e.lower)) " to " (number(e.upper)) ", tolerance " (number(e.tolerance)) } {
            line x1=(x(0.0)) x2=(x(0.0)) y1="2" y2=(H - 2.0) stroke="#9aa3b2" stroke-width="1" {}
            line x1=(x(e.tolerance)) x2=(x(e.tolerance)) y1="2" y2=(H - 2.0) stroke="#b42318" stroke-width="1.5" stroke-dasharray="3 2" {}
            line x1=(x(e.lower)) x2=(x(e.upper)) y1=(mid) y2=(mid) stroke="#1f5fbf" stroke-width="4" stroke-linecap="round" {}
            circle cx=(x(e.estimate)) cy=(mid) r="4" fill="#14213d" {}
        }
    }
}

fn report_markup(report: &GuardrailReport, project: &str, id: &str, may_steer: bool) -> Markup {
    html! {
        table.report {
            thead {
                tr {
                    th scope="col" { "Guardrail" }
                    th scope="col" { "Verdict" }
                    th scope="col" { "Treatment" }
                    th scope="col" { "Control" }
                    th scope="col" { "Difference (bounds)" }
                    th scope="col" { "Against the tolerance" }
                    th scope="col" { "Tolerance" }
                    th scope="col" { "n (treatment / control)" }
                    @if may_steer { th scope="col" { span.sr { "Actions" } } }
                }
            }
            tbody {
                @for check in &report.checks {
                    @let e = check.verdict.evidence();
                    tr {
                        th scope="row" { (check.name) }
                        td { (verdict_words(&check.verdict)) }
                        td { (number(e.treatment)) }
                        td { (number(e.control)) }
                        td { (number(e.estimate)) " [" (number(e.lower)) ", " (number(e.upper)) "]" }
                        td { (interval_chart(e)) }
                        td { (number(e.tolerance)) }
                        td { (e.n_treatment) " / " (e.n_control) }
                        @if may_steer {
                            td {
                                a href={ "/projects/" (project) "/releases/" (id) "/commands?command=dismiss&guardrail=" (encode(&check.name)) } { "Dismiss" }
                            }
                        }
                    }
                }
            }
        }
        p.small {
            "Sample ratio: "
            @if report.srm.mismatch { strong { "mismatch" } } @else { "as configured" }
            "; α per guardrail " (report.alpha_per_guardrail) "."
        }
    }
}

async fn release_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, id)): Path<(String, String)>,
) -> Response {
    let shown = crate::releases::get_release(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), id.clone())),
    )
    .await;
    let view = match shown {
        Ok(axum::Json(view)) => view,
        Err(e) => return error_page(e),
    };
    let role = match signed.caller.require(&state, &project, Role::Viewer).await {
        Ok(role) => role,
        Err(e) => return error_page(e),
    };
    let record = &view.record;
    let template: Option<ReleaseTemplate> = serde_json::from_value(record.template.clone()).ok();
    let state_name = record
        .state
        .get("state")
        .and_then(|s| s.as_str())
        .unwrap_or("");
    let current_stage = record
        .state
        .get("stage")
        .and_then(serde_json::Value::as_u64)
        .map(|s| s as usize);
    let finished = matches!(state_name, "completed" | "rolledBack" | "aborted");
    let decisions = view.decisions.clone().unwrap_or_default();
    // The latest report kept on the release, else the one behind the latest decision (a
    // finished release keeps the evidence of its last step there).
    let report: Option<GuardrailReport> = record
        .report
        .clone()
        .or_else(|| decisions.iter().rev().find_map(|d| d.report.clone()))
        .and_then(|r| serde_json::from_value(r).ok());
    let may_steer = role >= Role::Editor && record.active;
    let title = format!("Release of {}", record.flag);
    html_response(
        StatusCode::OK,
        page(
            &Frame {
                title: &title,
                signed: Some(&signed),
                project: Some(&project),
            },
            html! {
                p.crumbs { a href={ "/projects/" (project) "/releases" } { "Releases" } " / " }
                h1 { "Release of " a href={ "/projects/" (project) "/flags/" (record.flag) } { (record.flag) } " in " (record.environment) }
                p.meta {
                    span.b.rel { (release_state_name(record)) } " "
                    strong { (record.treatment) } " over " strong { (record.control) }
                    " · now " strong { (percent(view.percentage)) }
                    " · template " code { (record.template_key) }
                    @if let Some(rule) = &record.rule { " · rule " code { (rule) } }
                }
                @if let Some(template) = &template {
                    h2 { "Stages" }
                    ol.timeline {
                        @for (i, stage) in template.stages.iter().enumerate() {
                            @let class = match current_stage {
                                _ if state_name == "completed" => "done",
                                Some(c) if i < c => "done",
                                Some(c) if i == c && !finished => "now",
                                Some(c) if i == c => "stopped",
                                _ => "next",
                            };
                            li class=(class) {
                                strong { (percent(stage.percentage)) }
                                span.small { (duration(stage.dwell_ms)) @if stage.approval { ", approval" } }
                            }
                        }
                    }
                }
                @if may_steer {
                    h2 { "Steer" }
                    div.actions {
                        @for command in commands_for(state_name) {
                            a.button.danger[*command == "rollBack" || *command == "abort"] href={ "/projects/" (project) "/releases/" (record.id) "/commands?command=" (command) } { (command_words(command)) }
                        }
                    }
                }
                h2 { "Guardrails" }
                @match &report {
                    Some(report) => {
                        @if let Some(at) = record.reported_at { p.small { "Latest report " (time(at)) } }
                        (report_markup(report, &project, &record.id, may_steer))
                    }
                    None => { p { "No report yet: the first comes after the stage's warm-up." } }
                }
                h2 { "Decisions" }
                ol.log {
                    @for d in &decisions {
                        li { span.small { (time(d.at)) " · " (d.actor.id) } br; (d.message) }
                    }
                }
            },
        ),
    )
}

#[derive(Deserialize)]
struct CommandQuery {
    command: String,
    guardrail: Option<String>,
}

#[derive(Deserialize)]
struct CommandForm {
    csrf: String,
    command: String,
    #[serde(default)]
    guardrail: String,
}

async fn confirm_command(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, id)): Path<(String, String)>,
    Query(query): Query<CommandQuery>,
) -> Response {
    let shown = async {
        signed
            .caller
            .require(&state, &project, Role::Editor)
            .await?;
        Ok::<_, ApiError>(state.store.release(&project, &id).await?)
    };
    let record = match shown.await {
        Ok(record) => record,
        Err(e) => return error_page(e),
    };
    let words = command_words(&query.command);
    let guardrail = query.guardrail.unwrap_or_default();
    let title = format!("{words}?");
    html_response(
        StatusCode::OK,
        page(
            &Frame {
                title: &title,
                signed: Some(&signed),
                project: Some(&project),
            },
            html! {
                section.narrow {
                    h1 { (words) @if !guardrail.is_empty() { " “" (guardrail) "”" } "?" }
                    p { "Release of " code { (record.flag) } " in " strong { (record.environment) } " (" (release_state_name(&record)) ")." }
                    form.stack method="post" {
                        input type="hidden" name="csrf" value=(signed.csrf);
                        input type="hidden" name="command" value=(query.command);
                        input type="hidden" name="guardrail" value=(guardrail);
                        div.actions {
                            button.primary type="submit" { (words) " in " (record.environment) }
                            a href={ "/projects/" (project) "/releases/" (id) } { "Cancel" }
                        }
                    }
                }
            },
        ),
    )
}

/// Gives the command through the API's own handler: the same state machine, audit entry,
/// decision and webhooks.
async fn command(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CommandForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let body = if form.command == "dismiss" {
        json!({"command": form.command, "guardrail": form.guardrail})
    } else {
        json!({"command": form.command})
    };
    let done = crate::releases::release_command(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), id.clone())),
        Body::new(body),
    )
    .await;
    match done {
        Ok(_) => Redirect::to(&format!(
            "/projects/{}/releases/{}",
            encode(&project),
            encode(&id)
        ))
        .into_response(),
        Err(e) => error_page(e),
    }
}
