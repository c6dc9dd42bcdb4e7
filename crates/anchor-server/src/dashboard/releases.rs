//! Releases: the project's list; one release with its stage timeline, each guardrail's chart
//! over time, the guardrails' latest numbers, the canary coverage, the decision log and the
//! commands that steer it; and the form that starts a release from a flag's environment.

use anchor_rollout::{
    ArmObservations, Command, GuardrailReport, ReleaseState, ReleaseTemplate, Verdict,
};
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
        .route(
            "/projects/{project}/flags/{flag}/environments/{environment}/release",
            get(start_page).post(start),
        )
}

async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
) -> Response {
    let since = super::live::since(&state, &project).await;
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
                (super::live::marker(&project, &since, "flag release", None))
                @if releases.is_empty() {
                    p { "No releases yet: start one from a flag's page, per environment." }
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

/// The command behind a button's name (`dismiss` without its guardrail: the rules on who may
/// dismiss do not depend on which).
fn command_of(name: &str) -> Option<Command> {
    Some(match name {
        "approve" => Command::Approve,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "skip" => Command::Skip,
        "rollBack" => Command::RollBack,
        "abort" => Command::Abort,
        "dismiss" => Command::Dismiss {
            guardrail: String::new(),
        },
        _ => return None,
    })
}

/// Of `names`, the commands the caller may give, and the reasons (once each) why the others
/// are withheld in an environment that requires approval.
async fn steering(
    state: &AppState,
    caller: &crate::auth::Caller,
    role: Role,
    record: &anchor_store::ReleaseRecord,
    names: &[&'static str],
) -> Result<(Vec<&'static str>, Vec<String>), ApiError> {
    let Ok(current) = serde_json::from_value::<ReleaseState>(record.state.clone()) else {
        return Ok((names.to_vec(), Vec::new()));
    };
    let mut offered = Vec::new();
    let mut withheld: Vec<String> = Vec::new();
    for name in names {
        let refused = match command_of(name) {
            Some(command) => {
                crate::releases::refusal(state, caller, role, record, &current, &command).await?
            }
            None => None,
        };
        match refused {
            Some(reason) if !withheld.contains(&reason) => withheld.push(reason),
            Some(_) => {}
            None => offered.push(*name),
        }
    }
    Ok((offered, withheld))
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
    let since = super::live::since(&state, &project).await;
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
    let (offered, withheld, may_dismiss) = if may_steer {
        let names = commands_for(state_name);
        let (offered, withheld) = match steering(&state, &signed.caller, role, record, names).await
        {
            Ok(steering) => steering,
            Err(e) => return error_page(e),
        };
        let may_dismiss = match steering(&state, &signed.caller, role, record, &["dismiss"]).await {
            Ok((dismiss, _)) => !dismiss.is_empty(),
            Err(e) => return error_page(e),
        };
        (offered, withheld, may_dismiss)
    } else {
        (Vec::new(), Vec::new(), false)
    };
    let now = state.now_ms();
    let series = match chart_points(&state, record, template.as_ref(), &decisions, now).await {
        Ok(series) => series,
        Err(e) => return error_page(e),
    };
    let boundaries = template
        .as_ref()
        .map(|t| stage_boundaries(t, &decisions))
        .unwrap_or_default();
    let charts = by_guardrail(&series);
    let end = if record.active {
        now
    } else {
        record.updated_at
    };
    let span = (record.created_at, end.max(record.created_at + 1));
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
                (super::live::marker(&project, &since, "flag release report", Some(&record.id)))
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
                        @for command in &offered {
                            a.button.danger[*command == "rollBack" || *command == "abort"] href={ "/projects/" (project) "/releases/" (record.id) "/commands?command=" (command) } { (command_words(command)) }
                        }
                    }
                    @for reason in &withheld {
                        p.small { (reason) }
                    }
                }
                h2 { "Guardrails" }
                @for series in &charts {
                    (chart_markup(series, &boundaries, span))
                }
                @match &report {
                    Some(report) => {
                        @if let Some(at) = record.reported_at { p.small { "Latest report " (time(at)) } }
                        (report_markup(report, &project, &record.id, may_dismiss))
                    }
                    None => { p { "No report yet: the first comes after the stage's warm-up." } }
                }
                @if let Some(rows) = &view.coverage {
                    (coverage_markup(rows))
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
    html_response(
        StatusCode::OK,
        super::confirmation(
            &signed,
            &project,
            super::Confirmation {
                title: &format!("{words}?"),
                crumbs: None,
                question: html! { (words) @if !guardrail.is_empty() { " “" (guardrail) "”" } "?" },
                consequence: html! {
                    p { "Release of " code { (record.flag) } " in " strong { (record.environment) } " (" (release_state_name(&record)) ")." }
                },
                problems: &[],
                action: None,
                fields: html! {
                    input type="hidden" name="command" value=(query.command);
                    input type="hidden" name="guardrail" value=(guardrail);
                },
                button: html! { (words) " in " (record.environment) },
                primary: true,
                danger: false,
                back: format!("/projects/{project}/releases/{id}"),
                back_words: "Cancel",
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

// ---- guardrail charts over time ----

/// At most this many recomputed points per chart (give or take one per stage): a release of
/// hours renders about as fast as one of minutes (each point is one read of stored minutes).
const MAX_POINTS: i64 = 120;

/// One guardrail's evidence at one instant.
struct Point {
    at: i64,
    treatment: f64,
    control: f64,
    estimate: f64,
    lower: f64,
    upper: f64,
    tolerance: f64,
    scale: anchor_rollout::Scale,
    verdict: String,
}

/// One guardrail's points, oldest first.
struct Series {
    name: String,
    points: Vec<Point>,
}

/// Every report behind the release, with its instant: the one behind each decision, the
/// stages' recomputed minute by minute from the stored telemetry while the release is active
/// (the controller keeps only its latest report between decisions), and the latest one kept
/// on the release.
async fn chart_points(
    state: &AppState,
    record: &anchor_store::ReleaseRecord,
    template: Option<&ReleaseTemplate>,
    decisions: &[anchor_store::ReleaseDecision],
    now: i64,
) -> Result<Vec<(i64, GuardrailReport)>, ApiError> {
    let mut reports: Vec<(i64, GuardrailReport)> = decisions
        .iter()
        .filter_map(|d| {
            let report = serde_json::from_value(d.report.clone()?).ok()?;
            Some((d.at, report))
        })
        .collect();
    if let (Some(template), Ok(current)) = (
        template,
        serde_json::from_value::<ReleaseState>(record.state.clone()),
    ) {
        reports.extend(stage_reports(state, record, template, &current, decisions, now).await?);
    }
    if let (Some(at), Some(Ok(report))) = (
        record.reported_at,
        record.report.clone().map(serde_json::from_value),
    ) {
        reports.push((at, report));
    }
    reports.sort_by_key(|(at, _)| *at);
    Ok(reports)
}

/// One stage's observation window: the stage, when its observations began and ended, and
/// whether it is the current one (whose minutes reach ahead of the clock).
struct Window {
    stage: usize,
    observe_from_ms: i64,
    end_ms: i64,
    current: bool,
}

/// The stages' reports, as the controller would have judged at the end of each minute since
/// each stage's warm-up: the same test (`evaluate_release`) over the same minutes, with the
/// evidence the earlier stages carried. Only while the release is active: its state holds
/// that evidence (a finished release keeps the reports behind its decisions).
async fn stage_reports(
    state: &AppState,
    record: &anchor_store::ReleaseRecord,
    template: &ReleaseTemplate,
    current: &ReleaseState,
    decisions: &[anchor_store::ReleaseDecision],
    now: i64,
) -> Result<Vec<(i64, GuardrailReport)>, ApiError> {
    use anchor_rollout::ReleaseState;
    let (history, at, running) = match current {
        ReleaseState::Running { clock }
        | ReleaseState::Holding { clock, .. }
        | ReleaseState::Paused { clock, .. } => (&clock.history, clock.stage, Some(clock)),
        ReleaseState::WaitingForApproval { stage, history, .. } => (history, *stage, None),
        _ => return Ok(Vec::new()),
    };
    // The stages done, each from its start (in the decision log) to the next one's, or to
    // the request for approval that ended it.
    let starts = stage_starts(decisions);
    let start_of = |stage: usize| {
        starts
            .iter()
            .rev()
            .find(|(_, s)| *s == stage)
            .map(|(t, _)| *t)
    };
    let mut windows = Vec::new();
    for stage in 0..at.min(history.len()) {
        let (Some(begun), Some(spec)) = (start_of(stage), template.stages.get(stage)) else {
            continue;
        };
        let end = match start_of(stage + 1) {
            Some(next) => next,
            None => match current {
                ReleaseState::WaitingForApproval { since_ms, .. } => *since_ms,
                _ => continue,
            },
        };
        let warmup = i64::try_from(spec.warmup_ms).unwrap_or(i64::MAX);
        windows.push(Window {
            stage,
            observe_from_ms: begun.saturating_add(warmup),
            end_ms: end,
            current: false,
        });
    }
    if let Some(clock) = running
        && now >= clock.observe_from_ms
    {
        windows.push(Window {
            stage: clock.stage,
            observe_from_ms: clock.observe_from_ms,
            end_ms: now,
            current: true,
        });
    }
    let plan = template.stage_guardrails();
    let mut out = Vec::new();
    for (window, (from, ends)) in windows.iter().zip(point_minutes(&windows)) {
        let Some(stage) = template.stages.get(window.stage) else {
            continue;
        };
        let carried: Vec<_> = history
            .iter()
            .take(window.stage)
            .flat_map(|r| r.evidence.iter().cloned())
            .collect();
        let widen_to = template
            .stages
            .get(window.stage + 1)
            .map_or(1.0, |next| next.percentage / 100.0);
        // Each read covers only the minutes since the one before, added to what came
        // before: the rows read grow with the stage, not with its square.
        let (mut treatment, mut control) = (ArmObservations::default(), ArmObservations::default());
        let mut start = from;
        for end in ends {
            let mut observed = state
                .store
                .outcome_observations(
                    &record.project,
                    &record.environment,
                    &record.flag,
                    start,
                    end,
                )
                .await?;
            start = end;
            let added_treatment = observed.remove(&record.treatment);
            let added_control = observed.remove(&record.control);
            // Minutes that added nothing add no point (most of those ahead of the clock).
            if added_treatment.is_none() && added_control.is_none() {
                continue;
            }
            absorb(&mut treatment, added_treatment.as_ref());
            absorb(&mut control, added_control.as_ref());
            let observations = anchor_rollout::Observations {
                control: control.clone(),
                treatment: treatment.clone(),
                expected_treatment_share: stage.percentage / 100.0,
            };
            let report = anchor_rollout::evaluate_release(&plan, &carried, &observations, widen_to);
            out.push(((end * 1000).min(window.end_ms), report));
        }
    }
    Ok(out)
}

/// Adds one arm's later minutes to its earlier ones.
fn absorb(sum: &mut ArmObservations, more: Option<&ArmObservations>) {
    let Some(more) = more else { return };
    sum.exposures = sum.exposures.saturating_add(more.exposures);
    sum.requests = sum.requests.saturating_add(more.requests);
    sum.errors = sum.errors.saturating_add(more.errors);
    sum.latency.merge(&more.latency);
    for (name, sums) in &more.metrics {
        sum.metrics.entry(name.clone()).or_default().merge(sums);
    }
}

/// The minutes each window's points sum, as unix seconds: from the first minute the
/// controller reads (the first that began at or after the warm-up's end) to the end of each
/// point's last minute. A finished stage's window ends with the minute in which it ended; the
/// current one's reaches the minutes SDKs may already report ahead of this server's clock.
/// At most [`MAX_POINTS`] ends in all: over a long release each point adds several minutes.
fn point_minutes(windows: &[Window]) -> Vec<(i64, Vec<i64>)> {
    let ahead = crate::telemetry::MAX_FUTURE_SECS / 60 + 1;
    let spans: Vec<(i64, i64)> = windows
        .iter()
        .map(|w| {
            let from = w
                .observe_from_ms
                .div_euclid(1000)
                .saturating_add(59)
                .div_euclid(60)
                * 60;
            let last = w.end_ms.div_euclid(60_000) + 1 + if w.current { ahead } else { 0 };
            (from, (last * 60).max(from))
        })
        .collect();
    let minutes: i64 = spans.iter().map(|(from, to)| (to - from) / 60).sum();
    let step = ((minutes + MAX_POINTS - 1) / MAX_POINTS).max(1) * 60;
    spans
        .into_iter()
        .map(|(from, to)| {
            let mut ends = Vec::new();
            let mut end = from;
            while end < to {
                end = (end + step).min(to);
                ends.push(end);
            }
            (from, ends)
        })
        .collect()
}

/// Each guardrail's points, in the order the latest report lists them. A verdict without
/// enough data has no interval worth drawing.
fn by_guardrail(reports: &[(i64, GuardrailReport)]) -> Vec<Series> {
    let mut all: Vec<Series> = Vec::new();
    for (at, report) in reports {
        for check in &report.checks {
            if matches!(check.verdict, Verdict::InsufficientData { .. }) {
                continue;
            }
            let e = check.verdict.evidence();
            let point = Point {
                at: *at,
                treatment: e.treatment,
                control: e.control,
                estimate: e.estimate,
                lower: e.lower,
                upper: e.upper,
                tolerance: e.tolerance,
                scale: e.scale,
                verdict: verdict_words(&check.verdict),
            };
            match all.iter_mut().find(|s| s.name == check.name) {
                Some(series) => series.points.push(point),
                None => all.push(Series {
                    name: check.name.clone(),
                    points: vec![point],
                }),
            }
        }
    }
    // A guardrail whose test changed its scale (the error rate's absolute backstop measures
    // the treatment alone) is drawn on the scale it is judged on now.
    for series in &mut all {
        if let Some(scale) = series.points.last().map(|p| p.scale) {
            series.points.retain(|p| p.scale == scale);
        }
    }
    all
}

/// What the lower panel shows on a scale: its words and its line of no change.
fn scale_words(scale: anchor_rollout::Scale) -> (&'static str, &'static str, Option<f64>) {
    use anchor_rollout::Scale;
    match scale {
        Scale::Difference => (
            "difference",
            "difference (treatment − control), confidence interval and tolerance",
            Some(0.0),
        ),
        Scale::RateRatio => (
            "ratio",
            "ratio of error rates (treatment / control), confidence interval and tolerance",
            Some(1.0),
        ),
        Scale::Rate => (
            "treatment's rate",
            "the treatment's error rate, confidence interval and tolerance",
            None,
        ),
    }
}

/// When each stage began (its index), from the decision log: `enter` writes "…; stage 2 of
/// 5: 5% of traffic to the treatment" for every stage it starts.
fn stage_starts(decisions: &[anchor_store::ReleaseDecision]) -> Vec<(i64, usize)> {
    decisions
        .iter()
        .filter_map(|d| {
            let rest = &d.message[d.message.find("; stage ")? + "; stage ".len()..];
            let number: usize = rest[..rest.find(" of ")?].parse().ok()?;
            Some((d.at, number.checked_sub(1)?))
        })
        .collect()
}

/// The stage starts the charts mark, with the stage's share.
fn stage_boundaries(
    template: &ReleaseTemplate,
    decisions: &[anchor_store::ReleaseDecision],
) -> Vec<(i64, String)> {
    stage_starts(decisions)
        .into_iter()
        .filter_map(|(at, stage)| Some((at, percent(template.stages.get(stage)?.percentage))))
        .collect()
}

/// The lowest and highest of some values, widened a little (and made a range when flat).
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !low.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if high > low {
        (high - low) * 0.08
    } else {
        low.abs().max(1e-6) * 0.1
    };
    (low - pad, high + pad)
}

fn clock_time(ms: i64) -> String {
    time(ms)[11..19].to_string()
}

/// One guardrail over time as a server-side SVG: above, the treatment's and the control's
/// measurement; below, the difference with its confidence interval against zero and the
/// tolerance line (above it is a regression); stage starts as vertical lines. Colours come
/// from classes in the stylesheet (the policy forbids inline styles). The text alternative
/// is the `<title>`, the `<desc>` and the sentence under the chart.
fn chart_markup(series: &Series, boundaries: &[(i64, String)], span: (i64, i64)) -> Markup {
    const W: f64 = 680.0;
    const LEFT: f64 = 78.0;
    const RIGHT: f64 = 16.0;
    const TOP: (f64, f64) = (22.0, 112.0);
    const BOTTOM: (f64, f64) = (150.0, 240.0);
    const H: f64 = 282.0;
    let Some(latest) = series.points.last() else {
        return html! {};
    };
    let (t0, t1) = (
        span.0.min(series.points[0].at),
        span.1.max(latest.at).max(span.0 + 1),
    );
    let x = |t: i64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - RIGHT);
    let (a_low, a_high) = range(series.points.iter().flat_map(|p| [p.treatment, p.control]));
    let ya = |v: f64| TOP.1 - (v - a_low) / (a_high - a_low) * (TOP.1 - TOP.0);
    // Bounds far outside the estimates and the tolerance would flatten everything else: they
    // are cut at three times the largest of those, and drawn to the panel's edge.
    let scale = series
        .points
        .iter()
        .flat_map(|p| [p.estimate.abs(), p.tolerance.abs()])
        .fold(1e-9, f64::max)
        * 3.0;
    let clip = |v: f64| v.clamp(-scale, scale);
    let (measure, panel, neutral) = scale_words(latest.scale);
    let (b_low, b_high) = range(
        series
            .points
            .iter()
            .flat_map(|p| [clip(p.lower), clip(p.upper), p.estimate, p.tolerance])
            .chain(neutral),
    );
    let yb = |v: f64| BOTTOM.1 - (clip(v) - b_low) / (b_high - b_low) * (BOTTOM.1 - BOTTOM.0);
    let line = |f: &dyn Fn(&Point) -> f64| {
        series
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.at), ya(f(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let f = |v: f64| format!("{v:.1}");
    let summary = format!(
        "Latest, {}: treatment {}, control {}; {measure} {} (bounds {} to {}) against a tolerance of {}: {}.",
        time(latest.at),
        number(latest.treatment),
        number(latest.control),
        number(latest.estimate),
        number(latest.lower),
        number(latest.upper),
        number(latest.tolerance),
        latest.verdict
    );
    let id = format!("chart-{}", encode(&series.name).replace('%', "-"));
    html! {
        figure.chart {
            figcaption { h3 { (series.name) } }
            svg.guardrail-chart viewBox={ "0 0 " (W) " " (H) } role="img" aria-labelledby={ (id) "-title " (id) "-desc" } {
                title id={ (id) "-title" } { (series.name) " over time" }
                desc id={ (id) "-desc" } {
                    (series.points.len()) " measurements from " (time(t0)) " to " (time(t1)) ". " (summary)
                }
                // Panel frames, with the value axes' ends labelled.
                rect.chart-frame x=(LEFT) y=(TOP.0) width=(W - LEFT - RIGHT) height=(TOP.1 - TOP.0) {}
                rect.chart-frame x=(LEFT) y=(BOTTOM.0) width=(W - LEFT - RIGHT) height=(BOTTOM.1 - BOTTOM.0) {}
                text.chart-label x="4" y="14" { "treatment and control" }
                text.chart-label x=(LEFT - 4.0) y=(f(TOP.0 + 4.0)) text-anchor="end" { (number(a_high)) }
                text.chart-label x=(LEFT - 4.0) y=(f(TOP.1)) text-anchor="end" { (number(a_low)) }
                text.chart-label x="4" y=(f(BOTTOM.0 - 8.0)) { (panel) }
                text.chart-label x=(LEFT - 4.0) y=(f(BOTTOM.0 + 4.0)) text-anchor="end" { (number(b_high)) }
                text.chart-label x=(LEFT - 4.0) y=(f(BOTTOM.1)) text-anchor="end" { (number(b_low)) }
                // Time axis.
                text.chart-label x=(LEFT) y=(f(BOTTOM.1 + 16.0)) { (clock_time(t0)) }
                text.chart-label x=(W - RIGHT) y=(f(BOTTOM.1 + 16.0)) text-anchor="end" { (clock_time(t1)) }
                text.chart-label x=(f((LEFT + W - RIGHT) / 2.0)) y=(f(BOTTOM.1 + 34.0)) text-anchor="middle" { "time (UTC)" }
                // Stage starts.
                @for (at, share) in boundaries.iter().filter(|(at, _)| (t0..=t1).contains(at)) {
                    line.chart-stage x1=(f(x(*at))) x2=(f(x(*at))) y1=(TOP.0) y2=(BOTTOM.1) {}
                    text.chart-label.chart-stage-label x=(f(x(*at) + 3.0)) y=(f(TOP.0 + 12.0)) { (share) }
                }
                // Treatment and control; the control dashed on top, so that equal lines both show.
                polyline.chart-treatment points=(line(&|p| p.treatment)) {}
                polyline.chart-control points=(line(&|p| p.control)) {}
                @for p in &series.points {
                    circle.chart-point.chart-control-point cx=(f(x(p.at))) cy=(f(ya(p.control))) r="2.5" {}
                    circle.chart-point.chart-treatment-point cx=(f(x(p.at))) cy=(f(ya(p.treatment))) r="2.5" {}
                }
                text.chart-label.chart-treatment-label x=(W - RIGHT - 150.0) y="14" { "— treatment" }
                text.chart-label.chart-control-label x=(W - RIGHT - 70.0) y="14" { "— control" }
                // The measure: no change, the tolerance, and each instant's interval.
                @if let Some(neutral) = neutral {
                    line.chart-zero x1=(LEFT) x2=(W - RIGHT) y1=(f(yb(neutral))) y2=(f(yb(neutral))) {}
                }
                line.chart-tolerance x1=(LEFT) x2=(W - RIGHT) y1=(f(yb(latest.tolerance))) y2=(f(yb(latest.tolerance))) {}
                text.chart-label.chart-tolerance-label x=(W - RIGHT - 4.0) y=(f(yb(latest.tolerance) - 4.0)) text-anchor="end" { "tolerance " (number(latest.tolerance)) }
                @for p in &series.points {
                    line.chart-ci x1=(f(x(p.at))) x2=(f(x(p.at))) y1=(f(yb(p.lower))) y2=(f(yb(p.upper))) {}
                    circle.chart-point.chart-estimate cx=(f(x(p.at))) cy=(f(yb(p.estimate))) r="3" {}
                }
            }
            p.small { (summary) }
        }
    }
}

// ---- canary coverage ----

fn coverage_markup(rows: &[anchor_rollout::CoverageRow]) -> Markup {
    html! {
        h2 { "Canary coverage" }
        @if rows.is_empty() {
            p { "No exposures broken down by the coverage attributes yet in this stage." }
        } @else {
            table.coverage {
                caption.small { "Per attribute value: its share of the users this stage and how many of them the treatment served. A marked row is a real share of users too thinly treated to judge." }
                thead {
                    tr {
                        th scope="col" { "Attribute" }
                        th scope="col" { "Value" }
                        th scope="col" { "Share of users" }
                        th scope="col" { "Users" }
                        th scope="col" { "Treated users" }
                        th scope="col" { "Coverage" }
                    }
                }
                tbody {
                    @for row in rows {
                        tr.warn[row.warning] {
                            td { code { (row.attribute) } }
                            th scope="row" { (row.value) }
                            td { (percent(row.share * 100.0)) }
                            td { (row.users) }
                            td { (row.treated_users) }
                            td {
                                @if row.warning { span.b.stale { "too thinly treated" } } @else { "enough" }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---- starting a release ----

#[derive(Deserialize, Default)]
struct StartForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    template: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    control: String,
    #[serde(default)]
    treatment: String,
}

/// What the start form offers: the templates, the flag's variants and the environment's rules.
struct StartChoices {
    templates: Vec<(String, String)>,
    variants: Vec<String>,
    rules: Vec<String>,
    environment_name: String,
}

async fn start_choices(
    state: &AppState,
    project: &str,
    flag: &str,
    environment: &str,
) -> Result<(StartChoices, Option<String>), ApiError> {
    let record = state.store.flag(project, flag).await?;
    let env = state.store.environment(project, environment).await?;
    let config = record
        .environments
        .iter()
        .find(|e| e.environment == environment)
        .map(|e| &e.config)
        .ok_or_else(|| ApiError::NotFound(format!("environment `{environment}`")))?;
    let mut templates = vec![(
        crate::releases::BUILTIN_TEMPLATE.to_string(),
        "Built-in: 1% → 5% → 25% → 50% → 100%, 15 minutes each".to_string(),
    )];
    for t in state.store.release_templates(project).await? {
        templates.push((t.key, t.name));
    }
    // The control offered first is what the default serve serves now.
    let serving = match &config.default_serve {
        anchor_engine::Serve::Variant(v) => Some(v.clone()),
        anchor_engine::Serve::Rollout(_) => None,
    };
    Ok((
        StartChoices {
            templates,
            variants: record
                .flag
                .variants
                .iter()
                .map(|v| v.name.clone())
                .collect(),
            rules: config.rules.iter().map(|r| r.id.clone()).collect(),
            environment_name: env.name,
        },
        serving,
    ))
}

type Problems = std::collections::BTreeMap<&'static str, Vec<String>>;

fn start_form_page(
    signed: &Signed,
    project: &str,
    flag: &str,
    environment: &str,
    choices: &StartChoices,
    form: &StartForm,
    problems: &Problems,
) -> Markup {
    let of = |field: &str| problems.get(field).map(Vec::as_slice).unwrap_or_default();
    let title = format!("Start a release of {flag}");
    page(
        &Frame {
            title: &title,
            signed: Some(signed),
            project: Some(project),
        },
        html! {
            p.crumbs { a href={ "/projects/" (project) "/flags/" (flag) } { (flag) } " / " }
            section.narrow {
                h1 { "Start a release of " (flag) " in " (choices.environment_name) }
                p { "The treatment's share grows stage by stage while the guardrails judge it; a regression rolls it back." }
                (super::field_problems(of("form")))
                form.stack method="post" action={ "/projects/" (project) "/flags/" (flag) "/environments/" (environment) "/release" } {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    label for="template" { "Template" }
                    select #template name="template" aria-invalid=[(!of("template").is_empty()).then_some("true")] {
                        @for (key, name) in &choices.templates {
                            option value=(key) selected[form.template == *key] { (name) " (" (key) ")" }
                        }
                    }
                    (super::field_problems(of("template")))
                    label for="rule" { "What it takes over" }
                    select #rule name="rule" aria-invalid=[(!of("rule").is_empty()).then_some("true")] {
                        option value="" selected[form.rule.is_empty()] { "The default serve" }
                        @for rule in &choices.rules {
                            option value=(rule) selected[form.rule == *rule] { "Rule " (rule) }
                        }
                    }
                    (super::field_problems(of("rule")))
                    label for="control" { "Control (served now)" }
                    select #control name="control" aria-invalid=[(!of("control").is_empty()).then_some("true")] {
                        @for v in &choices.variants {
                            option value=(v) selected[form.control == *v] { (v) }
                        }
                    }
                    (super::field_problems(of("control")))
                    label for="treatment" { "Treatment (to release)" }
                    select #treatment name="treatment" aria-invalid=[(!of("treatment").is_empty()).then_some("true")] {
                        @for v in &choices.variants {
                            option value=(v) selected[form.treatment == *v] { (v) }
                        }
                    }
                    (super::field_problems(of("treatment")))
                    div.actions {
                        button.primary type="submit" { "Start the release in " (choices.environment_name) }
                        a href={ "/projects/" (project) "/flags/" (flag) } { "Cancel" }
                    }
                }
            }
        },
    )
}

async fn start_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment)): Path<(String, String, String)>,
) -> Response {
    let shown = async {
        signed
            .caller
            .require(&state, &project, Role::Editor)
            .await?;
        start_choices(&state, &project, &flag, &environment).await
    };
    let (choices, serving) = match shown.await {
        Ok(shown) => shown,
        Err(e) => return error_page(e),
    };
    let control = serving
        .filter(|v| choices.variants.contains(v))
        .or_else(|| choices.variants.last().cloned())
        .unwrap_or_default();
    let treatment = choices
        .variants
        .iter()
        .find(|v| **v != control)
        .cloned()
        .unwrap_or_default();
    let form = StartForm {
        template: crate::releases::BUILTIN_TEMPLATE.into(),
        control,
        treatment,
        ..StartForm::default()
    };
    html_response(
        StatusCode::OK,
        start_form_page(
            &signed,
            &project,
            &flag,
            &environment,
            &choices,
            &form,
            &Problems::new(),
        ),
    )
}

/// Starts the release through the API's own handler: its checks, role, audit entry,
/// decision and webhooks; problems come back next to their fields.
async fn start(
    State(state): State<AppState>,
    Path((project, flag, environment)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<StartForm>,
) -> Response {
    let signed = match form_caller(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let request = crate::releases::ReleaseRequest {
        template: Some(form.template.clone()).filter(|t| !t.is_empty()),
        rule: Some(form.rule.clone()).filter(|r| !r.is_empty()),
        control: form.control.clone(),
        treatment: form.treatment.clone(),
        start: Some(true),
    };
    let created = crate::releases::create_release(
        State(state.clone()),
        signed.caller.clone(),
        Path((project.clone(), environment.clone(), flag.clone())),
        Body::new(request),
    )
    .await;
    let mut problems = Problems::new();
    let status = match created {
        Ok((_, axum::Json(view))) => {
            return Redirect::to(&format!(
                "/projects/{}/releases/{}",
                encode(&project),
                encode(&view.record.id)
            ))
            .into_response();
        }
        Err(ApiError::Invalid(diagnostics)) => {
            for d in diagnostics {
                let field = match d.path.split('/').nth(1).unwrap_or("") {
                    "template" => "template",
                    "rule" => "rule",
                    "control" => "control",
                    "treatment" => "treatment",
                    _ => "form",
                };
                problems.entry(field).or_default().push(d.message);
            }
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Err(ApiError::Conflict(message)) => {
            problems.entry("form").or_default().push(message);
            StatusCode::CONFLICT
        }
        Err(e) => return error_page(e),
    };
    match start_choices(&state, &project, &flag, &environment).await {
        Ok((choices, _)) => html_response(
            status,
            start_form_page(
                &signed,
                &project,
                &flag,
                &environment,
                &choices,
                &form,
                &problems,
            ),
        ),
        Err(e) => error_page(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(at: i64, message: &str) -> anchor_store::ReleaseDecision {
        anchor_store::ReleaseDecision {
            at,
            actor: crate::releases::controller(),
            message: message.into(),
            report: None,
        }
    }

    #[test]
    fn stage_starts_are_read_from_the_decisions_that_entered_a_stage() {
        let template = ReleaseTemplate::builtin();
        let decisions = [
            decision(1, "created from template `default`: off → on"),
            decision(2, "started; stage 1 of 5: 1% of traffic to the treatment"),
            decision(
                3,
                "held at 1%: the metric source failed (timeout); never rolling back on missing data",
            ),
            decision(
                4,
                "every guardrail safe after 15 min; stage 2 of 5: 5% of traffic to the treatment",
            ),
            decision(5, "stage 9 of 5: a stage the template does not have"),
        ];
        assert_eq!(
            stage_boundaries(&template, &decisions),
            vec![(2, "1%".to_string()), (4, "5%".to_string())]
        );
    }

    fn window(observe_from_ms: i64, end_ms: i64, current: bool) -> Window {
        Window {
            stage: 0,
            observe_from_ms,
            end_ms,
            current,
        }
    }

    #[test]
    fn a_release_of_hours_is_drawn_with_at_most_max_points_reads() {
        let start = 1_800_000_000_000 + 30_000;
        // The warm-up ended in the middle of a minute: the next whole minute is the first.
        let short = point_minutes(&[window(start, start + 10 * 60_000, true)]);
        let (from, ends) = &short[0];
        assert_eq!(*from, (start / 1000 + 59) / 60 * 60);
        assert_eq!(ends[0], from + 60, "a minute per point while there are few");
        // The current stage reaches the minutes SDKs may report ahead of the clock; a
        // finished one stops with the minute it ended in.
        let ahead = crate::telemetry::MAX_FUTURE_SECS;
        assert!(*ends.last().unwrap() >= (start + 10 * 60_000) / 1000 + ahead);
        let done = point_minutes(&[window(start, start + 10 * 60_000, false)]);
        assert_eq!(
            *done[0].1.last().unwrap(),
            ((start + 10 * 60_000) / 60_000 + 1) * 60
        );
        // Three stages of eight hours: 120 reads in all, each of several minutes.
        let hours = |h: i64| h * 3_600_000;
        let long = point_minutes(&[
            window(start, start + hours(8), false),
            window(start + hours(8), start + hours(16), false),
            window(start + hours(16), start + hours(24), true),
        ]);
        let reads: usize = long.iter().map(|(_, ends)| ends.len()).sum();
        assert!(reads as i64 <= MAX_POINTS + 3, "{reads}");
        for (from, ends) in &long {
            assert!(ends.first().unwrap() > from);
            assert!(ends.windows(2).all(|w| w[0] < w[1]));
        }
        // Before the warm-up's first whole minute there is nothing to read but what lies
        // ahead.
        let early = point_minutes(&[window(start, start, true)]);
        assert!(early[0].1.iter().all(|end| *end > early[0].0));
    }
}
