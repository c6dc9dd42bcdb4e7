//! Progressive releases: the API that starts and steers them, and the controller that drives
//! them.
//!
//! A release moves one rule's serve (or the default serve) of one flag in one environment from
//! the `control` variant to the `treatment` variant, stage by stage, as a sticky rollout with the
//! treatment listed first: raising its weight only ever adds users to the treatment. The stage
//! logic and the statistics are `anchor-rollout`'s (pure); this module reads the observations,
//! calls `step` or `command`, and carries out the `Transition`: the flag's new share as a normal
//! configuration revision by the controller (or the person), the new state, the decision in
//! words and the audit entry, all in one store transaction (`Store::update_release`); then it
//! rebuilds the environment's snapshot (so SDK streams get the change at once) and queues the
//! webhook events.
//!
//! In an environment that requires approval, four eyes see every widening a person makes, as
//! with flag changes: a release started by someone who is not an admin waits for another
//! person's approval before its first stage, its approval gates and dismissed guardrails need
//! someone other than the person who started it, and only admins skip stages or complete it
//! by hand. The controller's own steps follow the approved plan and are never held, and
//! nothing that reduces exposure (pause, roll back, abort) is ever refused.
//!
//! The controller ticks every few seconds; for each active release it first takes the
//! release's lease in the store, so that of several servers sharing one PostgreSQL only one
//! acts on a release at a time, and a transition written from a stale state is refused by the
//! state's version check.

use std::sync::Arc;
use std::time::Duration;

use anchor_engine::{FlagConfig, Rollout, Serve, WeightedVariant};
use anchor_rollout::{
    Action, Command, CoverageObservations, CoverageRow, HoldReason, Observations, ReleaseState,
    ReleaseTemplate, Transition,
};
use anchor_store::{Actor, AuditFilter, ReleaseRecord, ReleaseUpdate, Role, StoreError};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::Body;
use crate::auth::Caller;
use crate::change_requests::same_person;
use crate::error::{ApiError, ApiResult, Problem};

/// The key of the built-in template, which every project has and no one can change.
pub const BUILTIN_TEMPLATE: &str = "default";

/// The weight of 100% in the rollouts a release writes (the bucketing works in thousandths of
/// a percent).
const FULL: u32 = 100_000;

/// Where the controller's observations come from.
#[async_trait::async_trait]
pub trait MetricSource: Send + Sync + 'static {
    /// Both arms' cumulative observations of `release` from `from_ms` to `to_ms` (unix
    /// milliseconds), with `expected_treatment_share` the stage's share (0 to 1). `Err` with
    /// the reason when the source cannot answer: the release then holds, never rolls back.
    async fn observe(
        &self,
        release: &ReleaseRecord,
        from_ms: i64,
        to_ms: i64,
        expected_treatment_share: f64,
    ) -> Result<Observations, String>;

    /// Both arms' exposures of `release` by coverage attribute and value over the same
    /// minutes as [`MetricSource::observe`]; `Ok(None)` from a source that has none (a stage
    /// that requires coverage then waits, never advancing on missing counts).
    async fn coverage(
        &self,
        _release: &ReleaseRecord,
        _from_ms: i64,
        _to_ms: i64,
    ) -> Result<Option<CoverageObservations>, String> {
        Ok(None)
    }
}

/// The controller's settings.
#[derive(Clone)]
pub struct ReleaseSettings {
    pub metrics: Arc<dyn MetricSource>,
    /// How often active releases are judged.
    pub tick: Duration,
    /// Who holds leases: this server.
    pub instance: String,
}

impl std::fmt::Debug for ReleaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseSettings")
            .field("tick", &self.tick)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates))
        .routes(routes!(put_template, delete_template))
        .routes(routes!(create_release))
        .routes(routes!(list_releases))
        .routes(routes!(get_release))
        .routes(routes!(release_command))
}

/// The controller's identity in revisions, decisions and audit entries.
pub fn controller() -> Actor {
    Actor::system("rollout-controller")
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct TemplateView {
    key: String,
    name: String,
    /// `anchor_rollout::ReleaseTemplate`: stages, guardrails, policies.
    #[schema(value_type = Object)]
    template: Value,
    /// 0 for the built-in template.
    version: u64,
    builtin: bool,
}

fn builtin_view() -> ApiResult<TemplateView> {
    Ok(TemplateView {
        key: BUILTIN_TEMPLATE.into(),
        name: "1% → 5% → 25% → 50% → 100%, 15 minutes each".into(),
        template: serde_json::to_value(ReleaseTemplate::builtin())
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        version: 0,
        builtin: true,
    })
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/release-templates", tag = "releases", summary = "The project's release templates, the built-in `default` first", params(("project" = String, Path, description = "Project key")), responses((status = 200, body = Vec<TemplateView>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn list_templates(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<TemplateView>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let mut views = vec![builtin_view()?];
    for t in state.store.release_templates(&project).await? {
        views.push(TemplateView {
            key: t.key,
            name: t.name,
            template: t.template,
            version: t.version,
            builtin: false,
        });
    }
    Ok(Json(views))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TemplateRequest {
    name: String,
    /// Stages, guardrails and policies (see `GET …/release-templates` for the built-in one).
    #[schema(value_type = Object)]
    template: Value,
}

/// Reads a template, reporting every problem with its JSON pointer under `prefix`.
fn judge_template(value: &Value, prefix: &str) -> ApiResult<ReleaseTemplate> {
    let template: ReleaseTemplate = serde_json::from_value(value.clone()).map_err(|e| {
        ApiError::Invalid(vec![anchor_engine::Diagnostic {
            path: prefix.to_string(),
            message: format!("not a release template: {e}"),
        }])
    })?;
    let problems = template.problems();
    if !problems.is_empty() {
        return Err(ApiError::Invalid(
            problems
                .into_iter()
                .map(|p| anchor_engine::Diagnostic {
                    path: format!("{prefix}{}", p.path),
                    message: p.message,
                })
                .collect(),
        ));
    }
    Ok(template)
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/release-templates/{key}", tag = "releases", summary = "Create or replace a release template (project admins); send If-Match with its version to replace", params(("project" = String, Path, description = "Project key"), ("key" = String, Path, description = "Template key"), ("If-Match" = Option<String>, Header, description = "The version read; a stale one gives 412")), request_body = TemplateRequest, responses((status = 200, body = TemplateView), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 412, description = "If-Match names an outdated version", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
async fn put_template(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    request: Body<TemplateRequest>,
) -> ApiResult<Json<TemplateView>> {
    caller.require(&state, &project, Role::Admin).await?;
    let request = request.into_inner()?;
    if key == BUILTIN_TEMPLATE {
        return Err(ApiError::Conflict(
            "`default` is the built-in template; give yours another key".into(),
        ));
    }
    let mut problems = Vec::new();
    if request.name.trim().is_empty() || request.name.chars().count() > 100 {
        problems.push(anchor_engine::Diagnostic {
            path: "/name".into(),
            message: "use 1 to 100 characters".into(),
        });
    }
    if let Err(ApiError::Invalid(more)) = judge_template(&request.template, "/template") {
        problems.extend(more);
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let expected = crate::api::if_match(&headers)?;
    let record = state
        .store
        .put_release_template(
            &caller.actor(),
            &project,
            &key,
            request.name.trim(),
            &request.template,
            expected,
        )
        .await?;
    Ok(Json(TemplateView {
        key: record.key,
        name: record.name,
        template: record.template,
        version: record.version,
        builtin: false,
    }))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/release-templates/{key}", tag = "releases", summary = "Delete a release template (project admins); releases started from it keep their copy", params(("project" = String, Path, description = "Project key"), ("key" = String, Path, description = "Template key")), responses((status = 204), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn delete_template(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require(&state, &project, Role::Admin).await?;
    state
        .store
        .delete_release_template(&caller.actor(), &project, &key)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A release as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReleaseView {
    #[serde(flatten)]
    pub(crate) record: ReleaseRecord,
    /// The treatment's share now, in percent.
    pub(crate) percentage: f64,
    /// The decision log, oldest first (in one release's view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) decisions: Option<Vec<anchor_store::ReleaseDecision>>,
    /// Canary coverage of the current stage (in one release's view only, when the template
    /// names coverage attributes): per attribute and value, its share of the users, its
    /// treated users and whether that share is too thinly treated to judge.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub(crate) coverage: Option<Vec<CoverageRow>>,
}

/// The treatment's current share in the flag's configuration.
fn share_in(config: &FlagConfig, record: &ReleaseRecord) -> f64 {
    let serve = match &record.rule {
        Some(rule) => config
            .rules
            .iter()
            .find(|r| &r.id == rule)
            .map(|r| &r.serve),
        None => Some(&config.default_serve),
    };
    match serve {
        Some(Serve::Variant(v)) if *v == record.treatment => 100.0,
        Some(Serve::Rollout(rollout)) => {
            let total: u64 = rollout.variants.iter().map(|v| u64::from(v.weight)).sum();
            let treated: u64 = rollout
                .variants
                .iter()
                .filter(|v| v.variant == record.treatment)
                .map(|v| u64::from(v.weight))
                .sum();
            if total == 0 {
                0.0
            } else {
                treated as f64 * 100.0 / total as f64
            }
        }
        _ => 0.0,
    }
}

async fn current_config(state: &AppState, record: &ReleaseRecord) -> Result<FlagConfig, ApiError> {
    state
        .store
        .flag(&record.project, &record.flag)
        .await?
        .environments
        .into_iter()
        .find(|e| e.environment == record.environment)
        .map(|e| e.config)
        .ok_or_else(|| ApiError::NotFound(format!("environment `{}`", record.environment)))
}

async fn view(
    state: &AppState,
    record: ReleaseRecord,
    with_decisions: bool,
) -> ApiResult<ReleaseView> {
    let percentage = current_config(state, &record)
        .await
        .map(|c| share_in(&c, &record))
        .unwrap_or(0.0);
    let decisions = if with_decisions {
        Some(
            state
                .store
                .release_decisions(&record.project, &record.id)
                .await?,
        )
    } else {
        None
    };
    let coverage = if with_decisions {
        stage_coverage(state, &record).await?
    } else {
        None
    };
    Ok(ReleaseView {
        record,
        percentage,
        decisions,
        coverage,
    })
}

/// The coverage table of the release's current stage (its minutes since the warm-up), when
/// its template names coverage attributes and it is at a stage.
async fn stage_coverage(
    state: &AppState,
    record: &ReleaseRecord,
) -> ApiResult<Option<Vec<CoverageRow>>> {
    let (template, current) = parse(record)?;
    if template.coverage.coverage_attributes.is_empty() {
        return Ok(None);
    }
    let clock = match &current {
        ReleaseState::Running { clock }
        | ReleaseState::Holding { clock, .. }
        | ReleaseState::Paused { clock, .. } => clock,
        _ => return Ok(None),
    };
    let observed = StoreMetrics(Arc::clone(&state.store))
        .coverage(record, clock.observe_from_ms, state.now_ms())
        .await
        .map_err(ApiError::Internal)?
        .unwrap_or_default();
    Ok(Some(anchor_rollout::coverage_table(
        &template.coverage,
        &observed,
    )))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReleaseRequest {
    /// The template's key (default: the built-in `default`).
    pub(crate) template: Option<String>,
    /// The rule whose serve the release takes over; the default serve when absent.
    pub(crate) rule: Option<String>,
    /// The variant served now (the control).
    pub(crate) control: String,
    /// The variant to release (the treatment).
    pub(crate) treatment: String,
    /// Start at once (the default) or leave it pending.
    pub(crate) start: Option<bool>,
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}/releases", tag = "releases", summary = "Start a progressive release of a flag's treatment variant (editors); in an environment that requires approval, a non-admin's release waits for another person's approval before its first stage", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key")), request_body = ReleaseRequest, responses((status = 201, description = "Created: running, or (a non-admin in an environment that requires approval) waiting for approval", body = ReleaseView), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 409, description = "The flag already has an active release in that environment", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_release(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag)): Path<(String, String, String)>,
    request: Body<ReleaseRequest>,
) -> ApiResult<(StatusCode, Json<ReleaseView>)> {
    let role = caller.require(&state, &project, Role::Editor).await?;
    let request = request.into_inner()?;
    let record = state.store.flag(&project, &flag).await?;
    let config = record
        .environments
        .iter()
        .find(|e| e.environment == environment)
        .map(|e| &e.config)
        .ok_or_else(|| ApiError::NotFound(format!("environment `{environment}`")))?;
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: String| {
        problems.push(anchor_engine::Diagnostic {
            path: path.into(),
            message,
        })
    };
    let has = |v: &str| record.flag.variants.iter().any(|x| x.name == v);
    if !has(&request.control) {
        problem(
            "/control",
            format!("the flag has no variant `{}`", request.control),
        );
    }
    if !has(&request.treatment) {
        problem(
            "/treatment",
            format!("the flag has no variant `{}`", request.treatment),
        );
    } else if request.treatment == request.control {
        problem("/treatment", "must differ from the control".into());
    }
    if let Some(rule) = &request.rule
        && !config.rules.iter().any(|r| &r.id == rule)
    {
        problem(
            "/rule",
            format!("the flag has no rule `{rule}` in {environment}"),
        );
    }
    let template_key = request
        .template
        .clone()
        .unwrap_or_else(|| BUILTIN_TEMPLATE.into());
    let template = if template_key == BUILTIN_TEMPLATE {
        Some(ReleaseTemplate::builtin())
    } else {
        match state.store.release_template(&project, &template_key).await {
            Ok(t) => judge_template(&t.template, "/template").ok(),
            Err(StoreError::NotFound { .. }) => {
                problem(
                    "/template",
                    format!("the project has no release template `{template_key}`"),
                );
                None
            }
            Err(e) => return Err(e.into()),
        }
    };
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let template = template.ok_or_else(|| {
        ApiError::Invalid(vec![anchor_engine::Diagnostic {
            path: "/template".into(),
            message: format!("the template `{template_key}` is not valid any more"),
        }])
    })?;
    let template_json =
        serde_json::to_value(&template).map_err(|e| ApiError::Internal(e.to_string()))?;
    let pending = to_value(&ReleaseState::Pending)?;
    let actor = caller.actor();
    let created = state
        .store
        .create_release(&anchor_store::NewRelease {
            actor: &actor,
            project: &project,
            environment: &environment,
            flag: &flag,
            rule: request.rule.as_deref(),
            control: &request.control,
            treatment: &request.treatment,
            template_key: &template_key,
            template: &template_json,
            state: &pending,
            message: &format!(
                "created from template `{template_key}`: {} → {}",
                request.control, request.treatment
            ),
        })
        .await?;
    let created = if request.start.unwrap_or(true) {
        let transition = start(
            &state,
            &caller,
            role,
            &created,
            &template,
            &ReleaseState::Pending,
        )
        .await?;
        carry_out(&state, &created, transition, &actor, "release.started").await?
    } else {
        created
    };
    Ok((
        StatusCode::CREATED,
        Json(view(&state, created, true).await?),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReleaseFilter {
    /// Only releases in this environment.
    environment: Option<String>,
    /// Only releases of this flag.
    flag: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/releases", tag = "releases", summary = "The project's releases, newest first", params(("project" = String, Path, description = "Project key"), ReleaseFilter), responses((status = 200, body = Vec<ReleaseView>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn list_releases(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Query(filter): Query<ReleaseFilter>,
) -> ApiResult<Json<Vec<ReleaseView>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let records = state
        .store
        .releases(
            &project,
            filter.environment.as_deref(),
            filter.flag.as_deref(),
        )
        .await?;
    let mut views = Vec::with_capacity(records.len());
    for record in records {
        views.push(view(&state, record, false).await?);
    }
    Ok(Json(views))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/releases/{id}", tag = "releases", summary = "One release: its state, the treatment's share, the latest guardrail report and the decision log", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Release id")), responses((status = 200, body = ReleaseView), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_release(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseView>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let record = state.store.release(&project, &id).await?;
    Ok(Json(view(&state, record, true).await?))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/releases/{id}/commands", tag = "releases", summary = "Steer a release (editors): start, pause, resume, skip, approve, dismiss a guardrail, roll back, abort, complete; in an environment that requires approval only admins skip or complete, and someone other than the person who started the release approves or dismisses", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Release id")), request_body(content = Object, description = "`{\"command\": \"pause\"}`; `{\"command\": \"dismiss\", \"guardrail\": \"p99 latency\"}`"), responses((status = 200, body = ReleaseView), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role, or, in an environment that requires approval, may not give the command alone: a non-admin skipping or completing, or the person who started the release approving it, dismissing a guardrail or accepting its split; the problem's detail says which", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 409, description = "The command does not apply in the release's state", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Not a command", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn release_command(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    request: Body<Value>,
) -> ApiResult<Json<ReleaseView>> {
    let role = caller.require(&state, &project, Role::Editor).await?;
    let command: Command = serde_json::from_value(request.into_inner()?).map_err(|e| {
        ApiError::Invalid(vec![anchor_engine::Diagnostic {
            path: "/command".into(),
            message: format!(
                "use one of start, pause, resume, skip, approve, dismiss (with `guardrail`), rollBack, abort, complete: {e}"
            ),
        }])
    })?;
    let record = state.store.release(&project, &id).await?;
    let (template, current) = parse(&record)?;
    let transition = match command {
        Command::Start => start(&state, &caller, role, &record, &template, &current).await?,
        _ => anchor_rollout::command(&template, &current, &command, state.now_ms())
            .map_err(|e| ApiError::Conflict(e.message))?,
    };
    // After the state machine: a command that does not apply says so (409) whoever gives it.
    if let Some(reason) = refusal(&state, &caller, role, &record, &current, &command).await? {
        return Err(ApiError::Forbidden(reason));
    }
    let action = match command {
        Command::Start => "release.started",
        Command::Pause => "release.paused",
        Command::Resume => "release.resumed",
        Command::Skip => "release.stage_skipped",
        Command::Approve => "release.approved",
        Command::Dismiss { .. } => "release.guardrail_dismissed",
        Command::RollBack => "release.rolled_back",
        Command::Abort => "release.aborted",
        Command::Complete => "release.completed",
    };
    let updated = carry_out(&state, &record, transition, &caller.actor(), action).await?;
    Ok(Json(view(&state, updated, true).await?))
}

/// Whether an environment keeps a person with `role` from widening exposure alone: it requires
/// approval and they are not an admin (admins may break the glass, as with flag changes).
fn four_eyes(environment: &anchor_store::Environment, role: Role) -> bool {
    environment.requires_approval && role < Role::Admin
}

/// Starts a pending release: at once, or, where four eyes are needed, waiting for another
/// person's approval before its first stage (nothing of the treatment is served until then).
async fn start(
    state: &AppState,
    caller: &Caller,
    role: Role,
    record: &ReleaseRecord,
    template: &ReleaseTemplate,
    current: &ReleaseState,
) -> ApiResult<Transition> {
    let environment = state
        .store
        .environment(&record.project, &record.environment)
        .await?;
    let now = state.now_ms();
    let started = if four_eyes(&environment, role) {
        let why = format!(
            "started by {} in {}, which requires approval: an editor other than them, or an \
             admin, approves it before it serves the treatment",
            caller.actor().id,
            record.environment
        );
        anchor_rollout::release::start_awaiting_approval(template, current, now, &why)
    } else {
        anchor_rollout::command(template, current, &Command::Start, now)
    };
    started.map_err(|e| ApiError::Conflict(e.message))
}

/// Who started the release: the actor of its `release.started` audit entry (a release starts
/// once), or its creator while it has none.
async fn started_by(state: &AppState, record: &ReleaseRecord) -> ApiResult<Actor> {
    let entries = state
        .store
        .audit(&AuditFilter {
            project: record.project.clone(),
            resource_key: Some(record.id.clone()),
            action: Some("release.started".into()),
            limit: 1,
            ..AuditFilter::default()
        })
        .await?;
    Ok(entries
        .into_iter()
        .next()
        .map_or_else(|| record.created_by.clone(), |e| e.actor))
}

/// Why the caller (with `role`) may not give `command` to a release in `current`: in an
/// environment that requires approval, a non-admin may not widen exposure by hand (skip,
/// complete), nor be the second pair of eyes on a release they started (approve, dismiss,
/// accept a mismatched split). `None` when they may; the dashboard asks before showing a button.
///
/// Dismissing is treated as approving, not as skipping: the approved plan covered the
/// guardrails as written, so silencing one is a new judgment that lets the release widen past
/// evidence against it, and it needs someone other than the person who wants the release to
/// go on. It is not kept for admins, because it widens nothing itself (the dwell and the other
/// guardrails still decide) and whoever is on call must be able to clear a known false alarm.
/// Resuming a release held for a sample ratio mismatch accepts the split (it dismisses the
/// test), so it follows the same rule; any other resume carries on the approved plan.
pub(crate) async fn refusal(
    state: &AppState,
    caller: &Caller,
    role: Role,
    record: &ReleaseRecord,
    current: &ReleaseState,
    command: &Command,
) -> ApiResult<Option<String>> {
    let second_look = match command {
        Command::Skip | Command::Complete => None,
        Command::Approve => Some("approve it"),
        Command::Dismiss { .. } => Some("dismiss its guardrails"),
        Command::Resume
            if matches!(
                current,
                ReleaseState::Holding {
                    reason: HoldReason::SampleRatioMismatch { .. },
                    ..
                }
            ) =>
        {
            Some("accept its traffic split")
        }
        _ => return Ok(None),
    };
    if role >= Role::Admin {
        return Ok(None);
    }
    let environment = state
        .store
        .environment(&record.project, &record.environment)
        .await?;
    if !four_eyes(&environment, role) {
        return Ok(None);
    }
    let Some(what) = second_look else {
        return Ok(Some(format!(
            "{} widens the treatment's exposure by hand: in {}, which requires approval, only \
             an admin may skip a stage or complete a release; the controller still advances it \
             when its guardrails are safe",
            if matches!(command, Command::Skip) {
                "skipping a stage"
            } else {
                "completing a release"
            },
            record.environment
        )));
    };
    let starter = started_by(state, record).await?;
    if !same_person(&starter, caller) {
        return Ok(None);
    }
    Ok(Some(format!(
        "in {}, which requires approval, a different person must {what}: an editor other than \
         {}, who started the release, or an admin",
        record.environment, starter.id
    )))
}

fn to_value<T: Serialize>(value: &T) -> ApiResult<Value> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(e.to_string()))
}

/// The release's template and state as `anchor-rollout` reads them.
fn parse(record: &ReleaseRecord) -> ApiResult<(ReleaseTemplate, ReleaseState)> {
    let template = serde_json::from_value(record.template.clone())
        .map_err(|e| ApiError::Internal(format!("release {}: template: {e}", record.id)))?;
    let state = serde_json::from_value(record.state.clone())
        .map_err(|e| ApiError::Internal(format!("release {}: state: {e}", record.id)))?;
    Ok((template, state))
}

/// The flag's configuration with the release's serve at `percentage` (and turned off when
/// `disable`).
fn with_share(
    mut config: FlagConfig,
    record: &ReleaseRecord,
    percentage: f64,
    disable: bool,
) -> FlagConfig {
    let treated = ((percentage.clamp(0.0, 100.0) / 100.0) * f64::from(FULL)).round() as u32;
    let serve = match &record.rule {
        Some(rule) => config
            .rules
            .iter_mut()
            .find(|r| &r.id == rule)
            .map(|r| &mut r.serve),
        None => Some(&mut config.default_serve),
    };
    if let Some(serve) = serve {
        // Keep the unit and salt of a rollout already there, so nobody is re-bucketed.
        let (bucket_by, salt) = match serve {
            Serve::Rollout(r) => (r.bucket_by.clone(), r.salt.clone()),
            Serve::Variant(_) => (None, None),
        };
        *serve = Serve::Rollout(Rollout {
            variants: vec![
                WeightedVariant {
                    variant: record.treatment.clone(),
                    weight: treated,
                },
                WeightedVariant {
                    variant: record.control.clone(),
                    weight: FULL - treated,
                },
            ],
            bucket_by,
            salt,
        });
    }
    if disable {
        config.enabled = false;
    }
    config
}

/// Writes a transition: the flag's new share (if it changes), the state, the decision and the
/// audit entry and the webhook events' deliveries in one transaction; then rebuilds the
/// snapshot (when the share changed or the release ended, so that SDKs stop gathering the
/// outcomes of a flag no longer watched) and wakes the webhook dispatcher.
pub(crate) async fn carry_out(
    state: &AppState,
    record: &ReleaseRecord,
    transition: Transition,
    actor: &Actor,
    action: &str,
) -> ApiResult<ReleaseRecord> {
    let mut share = None;
    let mut disable = false;
    let mut events = Vec::new();
    for a in &transition.actions {
        match a {
            Action::SetShare { percentage } => share = Some(*percentage),
            Action::RollBack { disable_flag } => {
                share = Some(0.0);
                disable = *disable_flag;
            }
            Action::Notify { event } => events.push(*event),
        }
    }
    let flag_config = match share {
        Some(percentage) => {
            let current = current_config(state, record).await?;
            let version = current.version;
            Some((with_share(current, record, percentage, disable), version))
        }
        None => None,
    };
    let new_state = to_value(&transition.state)?;
    let report = match transition.decision.as_ref().and_then(|d| d.report.as_ref()) {
        Some(report) => Some(to_value(report)?),
        None => None,
    };
    let message = transition.decision.as_ref().map(|d| d.message.clone());
    let data = json!({
        "release": record.id,
        "flag": record.flag,
        "environment": record.environment,
        "state": transition.state,
        "message": message,
        "actor": actor,
    });
    let events: Vec<_> = events
        .iter()
        .map(|event| anchor_store::OutboxEvent {
            event_type: event.event_type(),
            data: &data,
        })
        .collect();
    let updated = state
        .store
        .update_release(&ReleaseUpdate {
            actor,
            project: &record.project,
            id: &record.id,
            expected_version: record.version,
            state: &new_state,
            active: transition.state.is_active(),
            flag_config: flag_config.as_ref().map(|(c, v)| (c, *v)),
            action,
            message: message.as_deref(),
            report: report.as_ref(),
            events: &events,
        })
        .await?;
    // A new share changes the flag; a release that ends (or starts) changes `watchedFlags`:
    // either way the store moved the environment's revision, and SDKs hear of it now.
    let watched_changed = record.active != updated.active;
    if (flag_config.is_some() || watched_changed)
        && let Err(e) = state
            .snapshots
            .refresh(state.store.as_ref(), &record.project, &record.environment)
            .await
    {
        tracing::warn!(error = %e, release = %record.id, "cannot rebuild the snapshot after a release step");
    }
    if !events.is_empty() {
        crate::webhooks::wake(state);
    }
    Ok(updated)
}

/// The audit action of a controller step, from the state it led to.
fn step_action(state: &ReleaseState) -> &'static str {
    match state {
        ReleaseState::Running { .. } => "release.stage_advanced",
        ReleaseState::WaitingForApproval { .. } => "release.waiting_for_approval",
        ReleaseState::Holding { .. } => "release.holding",
        ReleaseState::RolledBack { .. } => "release.rolled_back",
        ReleaseState::Completed { .. } => "release.completed",
        _ => "release.updated",
    }
}

/// Judges one active release once, if this server holds its lease.
async fn drive(
    state: &AppState,
    settings: &ReleaseSettings,
    record: ReleaseRecord,
) -> ApiResult<()> {
    let now = state.now_ms();
    let lease = i64::try_from(settings.tick.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
    if !state
        .store
        .claim_release(&record.id, &settings.instance, now, lease.max(5_000))
        .await?
    {
        return Ok(());
    }
    let (template, current) = parse(&record)?;
    let (clock, share) = match &current {
        ReleaseState::Running { clock } | ReleaseState::Holding { clock, .. } => {
            let share = template
                .stages
                .get(clock.stage)
                .map_or(0.0, |s| s.percentage / 100.0);
            (clock.clone(), share)
        }
        _ => return Ok(()),
    };
    let observed = if now < clock.observe_from_ms {
        Ok(Observations::default())
    } else {
        settings
            .metrics
            .observe(&record, clock.observe_from_ms, now, share)
            .await
    };
    let requires_coverage = template
        .stages
        .get(clock.stage)
        .is_some_and(|s| s.require_coverage);
    let coverage = if requires_coverage && now >= clock.observe_from_ms {
        settings
            .metrics
            .coverage(&record, clock.observe_from_ms, now)
            .await
            .unwrap_or_else(|e| {
                // Without counts the stage waits; it never advances on missing coverage.
                tracing::warn!(error = %e, release = %record.id, "cannot read the coverage");
                None
            })
    } else {
        None
    };
    let transition = anchor_rollout::step_with_coverage(
        &template,
        &current,
        observed.as_ref().map_err(String::as_str),
        coverage.as_ref(),
        now,
    );
    if transition.state == current && transition.actions.is_empty() {
        // Nothing to decide: keep the evidence for the people watching.
        if let Some(report) = &transition.report {
            state
                .store
                .record_release_report(&record.id, record.version, &to_value(report)?)
                .await?;
        }
        return Ok(());
    }
    let action = step_action(&transition.state);
    carry_out(state, &record, transition, &controller(), action).await?;
    Ok(())
}

/// One pass over every active release.
pub(crate) async fn tick(state: &AppState, settings: &ReleaseSettings) {
    let releases = match state.store.active_releases().await {
        Ok(releases) => releases,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list active releases");
            return;
        }
    };
    for record in releases {
        let id = record.id.clone();
        if let Err(e) = drive(state, settings, record).await {
            // A version mismatch means a person (or another server) moved it first: the next
            // tick reads the new state.
            tracing::warn!(error = %e, release = %id, "release step not applied");
        }
    }
}

/// The controller: judges active releases every `tick` until the server stops.
pub(crate) async fn run(state: AppState, settings: ReleaseSettings) {
    let mut interval = tokio::time::interval(settings.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        tick(&state, &settings).await;
    }
}

/// The SDKs' outcome telemetry in the store (`POST /sdk/v1/telemetry`, `outcomes`): the
/// minutes that began at or after `from_ms` (so the warm-up's, and the previous stage's, are
/// never counted), merged per variant.
pub struct StoreMetrics(pub Arc<dyn anchor_store::Store>);

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreMetrics")
    }
}

#[async_trait::async_trait]
impl MetricSource for StoreMetrics {
    async fn observe(
        &self,
        release: &ReleaseRecord,
        from_ms: i64,
        to_ms: i64,
        expected_treatment_share: f64,
    ) -> Result<Observations, String> {
        let (from_minute, to_minute) = stage_minutes(from_ms, to_ms);
        let mut by_variant = self
            .0
            .outcome_observations(
                &release.project,
                &release.environment,
                &release.flag,
                from_minute,
                to_minute,
            )
            .await
            .map_err(|e| format!("reading the outcome telemetry: {e}"))?;
        Ok(Observations {
            control: by_variant.remove(&release.control).unwrap_or_default(),
            treatment: by_variant.remove(&release.treatment).unwrap_or_default(),
            expected_treatment_share,
        })
    }

    async fn coverage(
        &self,
        release: &ReleaseRecord,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<CoverageObservations>, String> {
        let (from_minute, to_minute) = stage_minutes(from_ms, to_ms);
        let mut by_variant = self
            .0
            .coverage_counts(
                &release.project,
                &release.environment,
                &release.flag,
                from_minute,
                to_minute,
            )
            .await
            .map_err(|e| format!("reading the coverage counts: {e}"))?;
        Ok(Some(CoverageObservations {
            control: by_variant.remove(&release.control).unwrap_or_default(),
            treatment: by_variant.remove(&release.treatment).unwrap_or_default(),
        }))
    }
}

/// The minutes `[from, to)` (unix seconds) a stage's observations from `from_ms` to `to_ms`
/// cover: those that began at or after `from_ms`, up to the minutes the ingestion accepts
/// ahead of this server's clock (SDK clocks differ), so whatever was accepted is judged.
fn stage_minutes(from_ms: i64, to_ms: i64) -> (i64, i64) {
    let from_minute = from_ms.div_euclid(1_000).saturating_add(59).div_euclid(60) * 60;
    let ahead = crate::telemetry::MAX_FUTURE_SECS.div_euclid(60) + 1;
    let to_minute = (to_ms.div_euclid(1_000).div_euclid(60) + 1 + ahead) * 60;
    (from_minute, to_minute)
}
