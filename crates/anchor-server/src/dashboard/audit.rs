//! The audit log: a project's entries newest first, filtered by what the store's audit filter
//! knows (actor, environment, target, action, a range of days) and paged by time, and, for instance
//! administrators, the instance's own log (users and tokens).
//!
//! Pages go back in time with a `before` cursor (unix milliseconds, exclusive). Entries made in
//! the same millisecond would be split by such a cursor, so a full page leaves out its oldest
//! millisecond and the next page starts with it whole.

use anchor_store::{AuditEntry, AuditFilter, Environment, Role};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    Frame, Signed, encode, error_page, field_problems, html_response, nonempty, page, project_page,
    time,
};
use crate::AppState;
use crate::error::ApiError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{project}/audit", get(project_audit))
        .route("/audit", get(instance_audit))
}

/// Entries on one page.
const PAGE: usize = 50;

/// The actions a project's audit log holds, by kind, for the action filter. Written by the store
/// and the API in many places; one the list misses can still be filtered on by URL
/// (`?action=...`), and is then offered in the select as well.
const ACTIONS: &[(&str, &[&str])] = &[
    (
        "flag",
        &[
            "flag.created",
            "flag.updated",
            "flag.archived",
            "flag.restored",
            "flag.config.updated",
            "flag.config.disabled",
            "flag.config.break_glass",
            "flag.killed",
            "flag.reverted",
        ],
    ),
    (
        "release",
        &[
            "release.created",
            "release.started",
            "release.paused",
            "release.resumed",
            "release.stage_advanced",
            "release.stage_skipped",
            "release.waiting_for_approval",
            "release.approved",
            "release.holding",
            "release.guardrail_dismissed",
            "release.rolled_back",
            "release.aborted",
            "release.completed",
            "release.updated",
        ],
    ),
    (
        "release_template",
        &[
            "release_template.created",
            "release_template.updated",
            "release_template.deleted",
        ],
    ),
    (
        "change_request",
        &[
            "change_request.created",
            "change_request.updated",
            "change_request.approved",
            "change_request.rejected",
            "change_request.cancelled",
            "change_request.applied",
            "change_request.failed",
        ],
    ),
    (
        "segment",
        &["segment.created", "segment.updated", "segment.deleted"],
    ),
    ("project", &["project.created"]),
    (
        "environment",
        &[
            "environment.created",
            "environment.updated",
            "environment.deleted",
        ],
    ),
    ("member", &["member.role_set"]),
    (
        "sdk_key",
        &["sdk_key.created", "sdk_key.rotated", "sdk_key.revoked"],
    ),
    (
        "webhook",
        &[
            "webhook.created",
            "webhook.updated",
            "webhook.secret_rotated",
            "webhook.deleted",
        ],
    ),
];

/// The action filter's select: any action, every action of a kind, or one action.
fn action_select(chosen: Option<&str>) -> Markup {
    let known = ACTIONS.iter().any(|(kind, actions)| {
        chosen == Some(&format!("{kind}.*")) || actions.iter().any(|a| chosen == Some(*a))
    });
    html! {
        select #action name="action" {
            option value="" { "any action" }
            @if let (Some(chosen), false) = (chosen, known) {
                option value=(chosen) selected { (chosen) }
            }
            @for (kind, actions) in ACTIONS {
                @let every = format!("{kind}.*");
                optgroup label=(kind.replace('_', " ")) {
                    option value=(every) selected[chosen == Some(every.as_str())] { "every " (kind.replace('_', " ")) " action" }
                    @for action in *actions {
                        option value=(action) selected[chosen == Some(*action)] { (action) }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    actor: Option<String>,
    environment: Option<String>,
    target: Option<String>,
    /// An action, or every action of a kind (`release.*`): see [`AuditFilter::action`].
    action: Option<String>,
    /// The first day shown, `YYYY-MM-DD` (UTC).
    from: Option<String>,
    /// The last day shown, `YYYY-MM-DD` (UTC), inclusive.
    to: Option<String>,
    /// Only entries older than this instant (unix milliseconds): the "older" link's cursor.
    before: Option<i64>,
}

/// The unix milliseconds at which day `YYYY-MM-DD` (UTC) starts, if it is a date.
fn day_start(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days = days_from_civil(y, m, d)?;
    Some(days * 86_400_000)
}

/// Howard Hinnant's `days_from_civil`, refusing dates that do not exist (February 30th).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// A page of entries from the newest `fetched` (at most `PAGE + 1`, newest first): the entries
/// to show and the cursor of the next page, if there are older ones.
fn paginate(mut fetched: Vec<AuditEntry>) -> (Vec<AuditEntry>, Option<i64>) {
    if fetched.len() <= PAGE {
        return (fetched, None);
    }
    let boundary = fetched[PAGE].created_at;
    fetched.truncate(PAGE);
    let whole = fetched
        .iter()
        .position(|e| e.created_at == boundary)
        .unwrap_or(PAGE);
    if whole == 0 {
        // A whole page within one millisecond: show it, and go on from the one before.
        return (fetched, Some(boundary));
    }
    // The boundary's millisecond goes whole to the next page, which ends just after it.
    fetched.truncate(whole);
    (fetched, Some(boundary + 1))
}

/// An RFC 6902 operation in a few words: `replace /enabled: true`.
fn operation_text(op: &serde_json::Value) -> String {
    let name = op.get("op").and_then(|o| o.as_str()).unwrap_or("?");
    // The empty pointer is the whole document: no path to print.
    let path = match op.get("path").and_then(|p| p.as_str()).unwrap_or("") {
        "" => String::new(),
        path => format!(" {path}"),
    };
    match op.get("value") {
        Some(value) if name != "remove" => {
            let mut value = value.to_string();
            if value.chars().count() > 40 {
                value = value.chars().take(39).collect::<String>() + "…";
            }
            format!("{name}{path}: {value}")
        }
        _ => format!("{name}{path}"),
    }
}

/// The diff of an entry as at most a few operations, and how many more there are.
fn summary(entry: &AuditEntry) -> Markup {
    let ops: Vec<&serde_json::Value> = entry
        .diff
        .as_array()
        .map(|ops| {
            ops.iter()
                .filter(|op| {
                    !op.get("path")
                        .and_then(|p| p.as_str())
                        .is_some_and(|p| p.starts_with("/version"))
                })
                .collect()
        })
        .unwrap_or_default();
    html! {
        @if let Some(comment) = &entry.comment {
            span.audit-comment { "“" (comment) "”" }
        }
        @if !ops.is_empty() {
            ul.diff {
                @for op in ops.iter().take(3) { li { code { (operation_text(op)) } } }
                @if ops.len() > 3 { li.small { "and " (ops.len() - 3) " more" } }
            }
        }
    }
}

/// The target of an entry, linked to its page where the dashboard has one.
fn target(project: &str, entry: &AuditEntry) -> Markup {
    let key = &entry.resource_key;
    html! {
        span.small { (entry.resource_kind.replace('_', " ")) } " "
        @match entry.resource_kind.as_str() {
            "flag" => { a href={ "/projects/" (project) "/flags/" (key) } { (key) } }
            "change_request" => { a href={ "/projects/" (project) "/change-requests/" (key) } { "view" } }
            "release" => { a href={ "/projects/" (project) "/releases/" (key) } { "view" } }
            _ => { code { (key) } }
        }
    }
}

fn entries_table(project: Option<&str>, entries: &[AuditEntry]) -> Markup {
    html! {
        table.audit {
            thead {
                tr {
                    th scope="col" { "Time" }
                    th scope="col" { "Actor" }
                    th scope="col" { "Action" }
                    th scope="col" { "Target" }
                    @if project.is_some() { th scope="col" { "Environment" } }
                    th scope="col" { "Summary" }
                }
            }
            tbody {
                @for entry in entries {
                    tr {
                        td.t { (time(entry.created_at)) }
                        td { (entry.actor.id) @if entry.actor.kind != anchor_store::ActorKind::User { " " span.small { "(" (entry.actor.kind.as_str()) ")" } } }
                        td { code { (entry.action) } }
                        td {
                            @match project {
                                Some(project) => { (target(project, entry)) }
                                None => { span.small { (entry.resource_kind) } " " code { (entry.resource_key) } }
                            }
                        }
                        @if project.is_some() { td { (entry.environment.as_deref().unwrap_or("—")) } }
                        td.summary { (summary(entry)) }
                    }
                }
            }
        }
    }
}

async fn project_audit(
    State(state): State<AppState>,
    signed: Signed,
    Path(project): Path<String>,
    Query(query): Query<AuditQuery>,
) -> Response {
    match render(&state, &signed, &project, &query).await {
        Ok((status, markup)) => html_response(status, markup),
        Err(e) => error_page(e),
    }
}

async fn render(
    state: &AppState,
    signed: &Signed,
    project: &str,
    query: &AuditQuery,
) -> Result<(StatusCode, Markup), ApiError> {
    signed.caller.require(state, project, Role::Viewer).await?;
    let environments: Vec<Environment> = state.store.environments(project).await?;
    let actor = nonempty(&query.actor);
    let environment =
        nonempty(&query.environment).filter(|e| environments.iter().any(|env| &env.key == e));
    let target_key = nonempty(&query.target);
    let action = nonempty(&query.action);
    let from = nonempty(&query.from);
    let to = nonempty(&query.to);
    let mut from_problems = Vec::new();
    let mut to_problems = Vec::new();
    // The first instant of a day typed in a date field; what is no date is a problem of it.
    let day = |text: &Option<String>, problems: &mut Vec<String>| {
        let text = text.as_deref()?;
        let start = day_start(text);
        if start.is_none() {
            problems.push(format!("“{text}” is not a date (YYYY-MM-DD)."));
        }
        start
    };
    let since = day(&from, &mut from_problems);
    let to_end = day(&to, &mut to_problems).map(|ms| ms + 86_400_000);
    if let (Some(since), Some(end)) = (since, to_end)
        && end <= since
    {
        to_problems.push("The last day comes before the first.".to_string());
    }
    let valid = from_problems.is_empty() && to_problems.is_empty();
    let until = match (to_end, query.before) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let (entries, older) = if valid {
        let fetched = state
            .store
            .audit(&AuditFilter {
                project: project.to_string(),
                actor: actor.clone(),
                environment: environment.clone(),
                resource_key: target_key.clone(),
                action: action.clone(),
                since,
                until,
                limit: (PAGE + 1) as u32,
            })
            .await?;
        paginate(fetched)
    } else {
        (Vec::new(), None)
    };
    // The filters as `&name=value` parameters: the links to other pages keep them.
    let filters: String = [
        ("actor", &actor),
        ("environment", &environment),
        ("target", &target_key),
        ("action", &action),
        ("from", &from),
        ("to", &to),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some(format!("&{name}={}", encode(value.as_deref()?))))
    .collect();
    let older = older.map(|before| {
        format!(
            "/projects/{}/audit?before={before}{filters}",
            encode(project)
        )
    });
    let newest = query.before.is_some().then(|| {
        let link = format!(
            "/projects/{}/audit?{}",
            encode(project),
            filters.trim_start_matches('&')
        );
        link.trim_end_matches('?').to_string()
    });
    let status = if valid {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let markup = project_page(
        signed,
        project,
        "Audit log",
        html! {
            div.heading {
                h1 { "Audit log" }
                @if signed.caller.user.instance_admin {
                    a href="/audit" { "Instance audit log" }
                }
            }
            form.filters method="get" role="search" data-autosubmit {
                label for="actor" { "Actor" }
                input #actor name="actor" value=(actor.as_deref().unwrap_or("")) placeholder="user name";
                label for="environment" { "Environment" }
                select #environment name="environment" {
                    option value="" { "any environment" }
                    @for env in &environments {
                        option value=(env.key) selected[environment.as_deref() == Some(env.key.as_str())] { (env.name) }
                    }
                }
                label for="target" { "Flag or target" }
                input #target name="target" value=(target_key.as_deref().unwrap_or("")) placeholder="flag key";
                label for="action" { "Action" }
                (action_select(action.as_deref()))
                label for="from" { "From" }
                input #from name="from" type="date" value=(from.as_deref().unwrap_or(""))
                    aria-invalid=[(!from_problems.is_empty()).then_some("true")];
                label for="to" { "To" }
                input #to name="to" type="date" value=(to.as_deref().unwrap_or(""))
                    aria-invalid=[(!to_problems.is_empty()).then_some("true")];
                button type="submit" { "Filter" }
            }
            (field_problems(&from_problems))
            (field_problems(&to_problems))
            @if valid {
                p.count {
                    (entries.len()) " entries"
                    @if older.is_some() || query.before.is_some() { " on this page" }
                }
                @if !entries.is_empty() { (entries_table(Some(project), &entries)) }
            }
            p.pages {
                @if let Some(newest) = &newest { a href=(newest) { "Newest entries" } " " }
                @if let Some(older) = &older { a href=(older) rel="next" { "Older entries" } }
            }
        },
    );
    Ok((status, markup))
}

/// Events that belong to no project (users, tokens): instance administrators only, as the API's
/// `GET /api/v1/audit`.
async fn instance_audit(State(state): State<AppState>, signed: Signed) -> Response {
    if let Err(e) = signed.caller.require_instance_admin() {
        return error_page(e);
    }
    let entries = match state.store.instance_audit(PAGE as u32).await {
        Ok(entries) => entries,
        Err(e) => return error_page(e.into()),
    };
    html_response(
        StatusCode::OK,
        page(
            &Frame {
                title: "Instance audit log",
                signed: Some(&signed),
                project: None,
            },
            html! {
                h1 { "Instance audit log" }
                p.small { "Users and tokens: the " (PAGE) " latest events that belong to no project." }
                (entries_table(None, &entries))
            },
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_read_in_utc_and_impossible_ones_refused() {
        assert_eq!(day_start("1970-01-01"), Some(0));
        assert_eq!(day_start("2000-02-29"), Some(951_782_400_000));
        assert_eq!(
            crate::lifecycle::utc_date(day_start("2026-11-18").unwrap()),
            "2026-11-18"
        );
        assert_eq!(day_start("2001-02-29"), None);
        assert_eq!(day_start("2026-13-01"), None);
        assert_eq!(day_start("yesterday"), None);
        assert_eq!(day_start("2026-1-01"), None);
    }

    fn entry(at: i64) -> AuditEntry {
        AuditEntry {
            id: at.to_string(),
            project: "p".into(),
            environment: None,
            actor: anchor_store::Actor::user("a".to_string()),
            action: "flag.created".into(),
            resource_kind: "flag".into(),
            resource_key: "f".into(),
            diff: serde_json::json!([]),
            comment: None,
            created_at: at,
        }
    }

    #[test]
    fn a_page_never_splits_a_millisecond() {
        // 60 entries, newest first; the 45th to the 55th share one millisecond.
        let times: Vec<i64> = (0..60)
            .map(|i| {
                if (45..56).contains(&i) {
                    1000
                } else {
                    2000 - i
                }
            })
            .collect();
        let (shown, next) = paginate(times.iter().copied().map(entry).take(PAGE + 1).collect());
        assert_eq!(shown.len(), 45);
        assert!(shown.iter().all(|e| e.created_at != 1000));
        // The next page asks for everything up to and including that millisecond.
        assert_eq!(next, Some(1001));
        let (shown, next) = paginate((0..10).map(|i| entry(100 - i)).collect());
        assert_eq!((shown.len(), next), (10, None));
    }
}
