//! The management API under `/api/v1`: JSON in and out, errors as problem details.
//!
//! Every handler takes a [`Caller`] (so nothing is reachable without credentials) and checks
//! the caller's role in the project before it reads or writes. Writes of flag configurations are
//! validated by the engine's compiler first, carry optimistic concurrency (`ETag` /
//! `If-Match`), and are stored with their revision and audit entry in one transaction.

use anchor_engine::{
    ConfiguredFlag, Diagnostic, EnvironmentConfig, Flag, FlagConfig, FlagKind, Lifecycle, Segment,
    Serve, compile,
};
use anchor_store::{
    AuditEntry, AuditFilter, ConfigChange, Environment, EnvironmentUpdate, FlagFilter, FlagRecord,
    NewEnvironment, NewSdkKey, NewToken, Page, Project, Revision, Role, SdkKeyKind, SdkKeyRecord,
    SegmentChange, SegmentRecord, SegmentSummary,
};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult, Problem};
use crate::{AppState, lifecycle};

/// The API's routes, each registered from its `#[utoipa::path]` annotation, so the OpenAPI
/// document and the router cannot disagree.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_users, create_user))
        .routes(routes!(instance_audit))
        .routes(routes!(set_member_role))
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project))
        .routes(routes!(list_environments, create_environment))
        .routes(routes!(update_environment, delete_environment))
        .routes(routes!(list_flags, create_flag))
        .routes(routes!(get_flag, update_flag))
        .routes(routes!(archive_flag))
        .routes(routes!(restore_flag))
        .routes(routes!(get_flag_config, put_flag_config))
        .routes(routes!(list_revisions))
        .routes(routes!(get_revision))
        .routes(routes!(diff_revisions))
        .routes(routes!(revert_flag_config))
        .routes(routes!(audit))
        .routes(routes!(list_segments, create_segment))
        .routes(routes!(get_segment, update_segment, delete_segment))
        .routes(routes!(list_segment_revisions))
        .routes(routes!(list_sdk_keys, create_sdk_key))
        .routes(routes!(rotate_sdk_key))
        .routes(routes!(revoke_sdk_key))
        .merge(crate::change_requests::routes())
        .merge(crate::telemetry::api_routes())
        .merge(crate::webhooks::routes())
        .merge(crate::releases::routes())
        .routes(routes!(sign_in, sign_out))
        .routes(routes!(explain_flag))
}

/// A JSON body whose problems are reported only when the handler asks for it
/// ([`Body::into_inner`]), after it has checked the caller's rights: someone who may not do a
/// thing learns that (403), not what is wrong with their request (422).
pub(crate) struct Body<T>(Result<T, ApiError>);

impl<T> Body<T> {
    /// A body already parsed, as the dashboard's forms hand one to the same handlers.
    pub(crate) fn new(value: T) -> Self {
        Body(Ok(value))
    }

    pub(crate) fn into_inner(self) -> ApiResult<T> {
        self.0
    }
}

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    Json<T>: axum::extract::FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request(
        req: axum::extract::Request,
        state: &S,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(Body(
            Json::<T>::from_request(req, state)
                .await
                .map(|Json(value)| value)
                .map_err(ApiError::from),
        ))
    }
}

// ---- tokens ----

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TokenRequest {
    pub(crate) name: String,
    /// The most the token may do: at most the owner's highest role (and the creating
    /// credential's); that highest role when absent.
    pub(crate) role: Option<Role>,
    pub(crate) expires_in_days: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenCreated {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) expires_at: Option<i64>,
    /// Shown this once; only its hash is stored.
    pub(crate) token: String,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "identity", summary = "Create a personal access token (the secret is shown once)", request_body = TokenRequest, responses((status = 201, body = TokenCreated), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    request: Body<TokenRequest>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let request = request.into_inner()?;
    if request.name.trim().is_empty() || request.name.len() > 100 {
        return Err(invalid(
            "/name",
            "give the token a name of 1 to 100 characters",
        ));
    }
    // A token's role is capped by its owner's highest role anywhere and by the credential
    // that creates it.
    let owner_highest = if caller.user.instance_admin {
        Role::Admin
    } else {
        let mut highest = Role::Viewer;
        for project in state.store.projects().await? {
            if let Some(role) = state
                .store
                .project_role(&project.key, &caller.user.id)
                .await?
            {
                highest = highest.max(role);
            }
        }
        highest
    };
    let limit = owner_highest.min(caller.cap);
    let role = request.role.unwrap_or(limit);
    if role > limit {
        return Err(ApiError::Forbidden(format!(
            "a token cannot have more rights ({}) than its owner and the credential creating it ({})",
            role.as_str(),
            limit.as_str()
        )));
    }
    let expires_at = request
        .expires_in_days
        .map(|d| state.now_ms() + i64::from(d) * 86_400_000);
    let (secret, hash) = auth::new_token()?;
    let record = state
        .store
        .create_token(
            &caller.actor(),
            &NewToken {
                user_id: caller.user.id.clone(),
                name: request.name,
                token_hash: hash,
                role,
                expires_at,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: record.id,
            name: record.name,
            role: record.role,
            expires_at: record.expires_at,
            token: secret,
        }),
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenInfo {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) expires_at: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) revoked: bool,
    /// Unix milliseconds of the token's latest use, precise to within a minute (uses are
    /// written in bulk once a minute); `null` when it was never used.
    pub(crate) last_used_at: Option<i64>,
}

/// The caller's own tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "identity", summary = "List the caller's tokens (never their secrets)", responses((status = 200, body = Vec<TokenInfo>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    let tokens = state.store.tokens(&caller.user.id).await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                name: t.name,
                role: t.role,
                expires_at: t.expires_at,
                created_at: t.created_at,
                revoked: t.revoked,
                last_used_at: t.last_used_at,
            })
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "identity", summary = "Revoke one of the caller's tokens", params(("id" = String, Path, description = "Token id")), responses((status = 204), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .store
        .revoke_token(&caller.actor(), &caller.user.id, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- users and members ----

#[utoipa::path(get, path = "/api/v1/users", tag = "identity", summary = "List users (instance admins)", responses((status = 200, body = Vec<anchor_store::User>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json")))]
async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<anchor_store::User>>> {
    caller.require_instance_admin()?;
    Ok(Json(state.store.users().await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    #[serde(default)]
    instance_admin: bool,
}

#[utoipa::path(post, path = "/api/v1/users", tag = "identity", summary = "Create a user (instance admins)", request_body = NewUser, responses((status = 201, body = anchor_store::User), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    body: Body<NewUser>,
) -> ApiResult<(StatusCode, Json<anchor_store::User>)> {
    caller.require_instance_admin()?;
    let body = body.into_inner()?;
    if body.password.chars().count() < 12 {
        return Err(invalid(
            "/password",
            "passwords need at least 12 characters",
        ));
    }
    let hash = auth::hash_password(&body.password)?;
    let user = state
        .store
        .create_user(&caller.actor(), &body.username, &hash, body.instance_admin)
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Membership {
    role: Role,
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/members/{username}", tag = "identity", summary = "Grant or change a user's role in a project (project admins)", params(("project" = String, Path, description = "Project key"), ("username" = String, Path, description = "User name")), request_body = Membership, responses((status = 204), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn set_member_role(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, username)): Path<(String, String)>,
    body: Body<Membership>,
) -> ApiResult<StatusCode> {
    caller.require(&state, &project, Role::Admin).await?;
    let body = body.into_inner()?;
    let user = state
        .store
        .users()
        .await?
        .into_iter()
        .find(|u| u.username == username)
        .ok_or_else(|| ApiError::NotFound(format!("user `{username}` does not exist")))?;
    state
        .store
        .set_project_role(&caller.actor(), &project, &user.id, body.role)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Events that belong to no project: users and tokens.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", summary = "Events that belong to no project: users and tokens (instance admins)", responses((status = 200, body = Vec<AuditEntry>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json")))]
async fn instance_audit(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    caller.require_instance_admin()?;
    Ok(Json(state.store.instance_audit(100).await?))
}

// ---- projects and environments ----

#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", summary = "Projects the caller belongs to", responses((status = 200, body = Vec<Project>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json")))]
async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Project>>> {
    let mut visible = Vec::new();
    for project in state.store.projects().await? {
        if caller.role_in(&state, &project.key).await?.is_some() {
            visible.push(project);
        }
    }
    Ok(Json(visible))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewProject {
    key: String,
    name: String,
}

#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", summary = "Create a project (instance admins)", request_body = NewProject, responses((status = 201, body = Project), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    body: Body<NewProject>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    caller.require_instance_admin()?;
    let body = body.into_inner()?;
    if !anchor_engine::model::is_valid_key(&body.key) {
        return Err(invalid(
            "/key",
            "use 1 to 128 characters from a-z, A-Z, 0-9, `.`, `_` and `-`",
        ));
    }
    let project = state
        .store
        .create_project(&caller.actor(), &body.key, &body.name)
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}", tag = "projects", summary = "One project", params(("project" = String, Path, description = "Project key")), responses((status = 200, body = Project), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Project>> {
    caller.require(&state, &project, Role::Viewer).await?;
    Ok(Json(state.store.project(&project).await?))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments", tag = "projects", summary = "A project's environments in display order", params(("project" = String, Path, description = "Project key")), responses((status = 200, body = Vec<Environment>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_environments(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<Environment>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    Ok(Json(state.store.environments(&project).await?))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments", tag = "projects", summary = "Add an environment (project admins); existing flags start disabled there", params(("project" = String, Path, description = "Project key")), request_body = NewEnvironment, responses((status = 201, body = Environment), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    body: Body<NewEnvironment>,
) -> ApiResult<(StatusCode, Json<Environment>)> {
    caller.require(&state, &project, Role::Admin).await?;
    let body = body.into_inner()?;
    if !anchor_engine::model::is_valid_key(&body.key) {
        return Err(invalid(
            "/key",
            "use 1 to 128 characters from a-z, A-Z, 0-9, `.`, `_` and `-`",
        ));
    }
    let environment = state
        .store
        .create_environment(&caller.actor(), &project, &body)
        .await?;
    Ok((StatusCode::CREATED, Json(environment)))
}

/// A change to an environment: the fields given change, the others stay.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EnvironmentPatch {
    /// Only the environment's own key is accepted: a key never changes, since SDK keys' scope,
    /// URLs and telemetry name the environment by it.
    pub(crate) key: Option<String>,
    /// 1 to 100 characters.
    pub(crate) name: Option<String>,
    /// Editors' flag and segment changes become change requests.
    pub(crate) requires_approval: Option<bool>,
    /// Every change needs a comment.
    pub(crate) requires_comment: Option<bool>,
    /// The display position, from 0 to the number of environments less one; the environments
    /// in between shift by one, keeping their order.
    pub(crate) position: Option<i64>,
    /// Why, kept with the audit entry; required to turn `requiresApproval` or
    /// `requiresComment` off.
    pub(crate) comment: Option<String>,
}

#[utoipa::path(patch, path = "/api/v1/projects/{project}/environments/{environment}", tag = "projects", summary = "Change an environment's name, approval and comment requirements or position (project admins); turning approval or required comments off needs a `comment`, kept in the audit entry", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key (it never changes)")), request_body = EnvironmentPatch, responses((status = 200, body = Environment), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn update_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment)): Path<(String, String)>,
    body: Body<EnvironmentPatch>,
) -> ApiResult<Json<Environment>> {
    caller.require(&state, &project, Role::Admin).await?;
    let body = body.into_inner()?;
    let environments = state.store.environments(&project).await?;
    let current = environments
        .iter()
        .find(|e| e.key == environment)
        .ok_or_else(|| ApiError::NotFound(format!("environment `{environment}` does not exist")))?;
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: String| {
        problems.push(Diagnostic {
            path: path.to_string(),
            message,
        });
    };
    if body.key.as_ref().is_some_and(|key| *key != environment) {
        problem(
            "/key",
            "an environment's key cannot change: SDK keys, URLs and telemetry name it".into(),
        );
    }
    let name = body.name.as_deref().map(str::trim);
    if name.is_some_and(|n| n.is_empty() || n.chars().count() > 100) {
        problem(
            "/name",
            "give the environment a name of 1 to 100 characters".into(),
        );
    }
    let last = environments.len() as i64 - 1;
    if body.position.is_some_and(|p| !(0..=last).contains(&p)) {
        problem("/position", format!("use a position from 0 to {last}"));
    }
    // Lifting a safeguard is a governance decision: like LaunchDarkly, ask for the reason,
    // which the audit entry keeps.
    let comment = body
        .comment
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let lifts_approval = current.requires_approval && body.requires_approval == Some(false);
    let lifts_comment = current.requires_comment && body.requires_comment == Some(false);
    if (lifts_approval || lifts_comment) && comment.is_none() {
        let lifted = if lifts_approval {
            "approval"
        } else {
            "required comments"
        };
        problem(
            "/comment",
            format!("turning {lifted} off in `{environment}` needs a comment saying why"),
        );
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let update = EnvironmentUpdate {
        name: name.map(str::to_string),
        requires_approval: body.requires_approval,
        requires_comment: body.requires_comment,
        position: body.position,
    };
    let updated = state
        .store
        .update_environment(&caller.actor(), &project, &environment, &update, comment)
        .await?;
    Ok(Json(updated))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/environments/{environment}", tag = "projects", summary = "Delete an environment with its flag configurations, segments, SDK keys (they stop working at once), change requests, releases, telemetry and revisions (project admins); refused while a release is under way there or for the project's only environment", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key")), responses((status = 204, description = "Deleted; its streams end"), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 409, description = "A release is under way there, or it is the project's only environment", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require(&state, &project, Role::Admin).await?;
    match state
        .store
        .delete_environment(&caller.actor(), &project, &environment)
        .await
    {
        Ok(()) => {}
        // The store refuses what the environment's state forbids now (a release under way, the
        // last environment): a conflict with that state, not a malformed request.
        Err(anchor_store::StoreError::Invalid(why)) => return Err(ApiError::Conflict(why)),
        Err(e) => return Err(e.into()),
    }
    // Its SDK keys stop authenticating at once, and its streams end with its channel.
    state.sdk_keys.clear();
    state.snapshots.remove(&project, &environment);
    Ok(StatusCode::NO_CONTENT)
}

// ---- flags ----

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FlagQuery {
    tag: Option<String>,
    lifecycle: Option<Lifecycle>,
    enabled_in: Option<String>,
    q: Option<String>,
    #[serde(default)]
    archived: bool,
    after: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/flags", tag = "flags", summary = "List flags with filters, one page at a time", params(("project" = String, Path, description = "Project key"), FlagQuery), responses((status = 200, body = Page<FlagRecord>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn list_flags(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    query: Result<Query<FlagQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<FlagRecord>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if query.limit.is_some_and(|l| l == 0 || l > 1_000) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let filter = FlagFilter {
        tag: query.tag,
        lifecycle: query.lifecycle,
        enabled_in: query.enabled_in,
        text: query.q,
        include_archived: query.archived,
        after: query.after,
        limit: query.limit.unwrap_or(100),
    };
    let mut page = state.store.flags(&project, &filter).await?;
    lifecycle::fill(&*state.store, &project, &mut page.items, state.now_ms()).await?;
    Ok(Json(page))
}

/// The configuration a new flag gets everywhere: disabled, serving its "off" variant (a
/// boolean flag's `false`, otherwise its last variant).
fn initial_config(flag: &Flag) -> FlagConfig {
    let off = flag
        .variants
        .iter()
        .find(|v| flag.kind == FlagKind::Boolean && v.value == serde_json::json!(false))
        .or(flag.variants.last())
        .map(|v| v.name.clone())
        .unwrap_or_default();
    FlagConfig {
        enabled: false,
        off_variant: off.clone(),
        targets: Default::default(),
        rules: Vec::new(),
        default_serve: Serve::Variant(off),
        prerequisites: Vec::new(),
        version: 0,
    }
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/flags", tag = "flags", summary = "Create a flag; it starts disabled in every environment", params(("project" = String, Path, description = "Project key")), request_body = Flag, responses((status = 201, body = FlagRecord), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 409, description = "The key exists", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_flag(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    flag: Body<Flag>,
) -> ApiResult<(StatusCode, HeaderMap, Json<FlagRecord>)> {
    caller.require(&state, &project, Role::Editor).await?;
    let flag = flag.into_inner()?;
    let config = initial_config(&flag);
    let env = EnvironmentConfig {
        flags: vec![ConfiguredFlag {
            flag: flag.clone(),
            config: config.clone(),
        }],
        segments: Vec::new(),
    };
    let problems = relative(compile(&env).1, "/flags/0/flag");
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let record = state
        .store
        .create_flag(&caller.actor(), &project, &flag, &config)
        .await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/api/v1/projects/{project}/flags/{}", flag.key))
    {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(record)))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/flags/{flag}", tag = "flags", summary = "A flag with its configuration in every environment", params(("project" = String, Path, description = "Project key"), ("flag" = String, Path, description = "Flag key")), responses((status = 200, body = FlagRecord), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn get_flag(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, flag)): Path<(String, String)>,
) -> ApiResult<Json<FlagRecord>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let mut record = state.store.flag(&project, &flag).await?;
    lifecycle::fill(
        &*state.store,
        &project,
        std::slice::from_mut(&mut record),
        state.now_ms(),
    )
    .await?;
    Ok(Json(record))
}

#[derive(Deserialize)]
struct FlagUpdate {
    #[serde(flatten)]
    flag: Flag,
    comment: Option<String>,
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/flags/{flag}", tag = "flags", summary = "Replace a flag's definition (description, tags, variants, lifecycle)", params(("project" = String, Path, description = "Project key"), ("flag" = String, Path, description = "Flag key")), request_body = Flag, responses((status = 200, body = FlagRecord), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
async fn update_flag(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
    update: Body<FlagUpdate>,
) -> ApiResult<Json<FlagRecord>> {
    caller.require(&state, &project, Role::Editor).await?;
    let update = update.into_inner()?;
    let flag = update.flag;
    if flag.key != key {
        return Err(invalid("/key", "a flag's key cannot change"));
    }
    // The new definition must still fit the configuration of every environment.
    let mut problems = Vec::new();
    for environment in state.store.environments(&project).await? {
        let (mut env, _) = state
            .store
            .environment_config(&project, &environment.key)
            .await?;
        let Some(i) = env.flags.iter().position(|f| f.flag.key == key) else {
            continue;
        };
        env.flags[i].flag = flag.clone();
        for d in compile(&env).1 {
            if let Some(rest) = d.path.strip_prefix(&format!("/flags/{i}/flag")) {
                push_unique(&mut problems, rest.to_string(), d.message);
            } else {
                push_unique(
                    &mut problems,
                    String::new(),
                    format!("in environment `{}`: {}", environment.key, d.message),
                );
            }
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let record = state
        .store
        .update_flag(&caller.actor(), &project, &flag, update.comment.as_deref())
        .await?;
    Ok(Json(record))
}

fn push_unique(problems: &mut Vec<Diagnostic>, path: String, message: String) {
    if !problems
        .iter()
        .any(|p| p.path == path && p.message == message)
    {
        problems.push(Diagnostic { path, message });
    }
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/flags/{flag}/archive", tag = "flags", summary = "Archive a flag: it leaves every environment's configuration", params(("project" = String, Path, description = "Project key"), ("flag" = String, Path, description = "Flag key")), responses((status = 200, body = FlagRecord), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn archive_flag(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, flag)): Path<(String, String)>,
) -> ApiResult<Json<FlagRecord>> {
    caller.require(&state, &project, Role::Editor).await?;
    Ok(Json(
        state
            .store
            .set_flag_archived(&caller.actor(), &project, &flag, true)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/flags/{flag}/restore", tag = "flags", summary = "Restore an archived flag", params(("project" = String, Path, description = "Project key"), ("flag" = String, Path, description = "Flag key")), responses((status = 200, body = FlagRecord), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn restore_flag(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, flag)): Path<(String, String)>,
) -> ApiResult<Json<FlagRecord>> {
    caller.require(&state, &project, Role::Editor).await?;
    Ok(Json(
        state
            .store
            .set_flag_archived(&caller.actor(), &project, &flag, false)
            .await?,
    ))
}

// ---- per-environment configuration ----

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The version an `If-Match` header names: `None` when absent or `*`.
pub(crate) fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("If-Match is not text".into()))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("If-Match `{text}` is not an ETag of this API")))
}

pub(crate) async fn current_config(
    state: &AppState,
    project: &str,
    environment: &str,
    flag: &str,
) -> ApiResult<FlagConfig> {
    state.store.environment(project, environment).await?;
    let record = state.store.flag(project, flag).await?;
    record
        .environments
        .into_iter()
        .find(|e| e.environment == environment)
        .map(|e| e.config)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "flag `{flag}` has no configuration in `{environment}`"
            ))
        })
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}", tag = "configuration", summary = "A flag's configuration in one environment; the ETag is its version", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key")), responses((status = 200, body = FlagConfig, headers(("ETag" = String, description = "The configuration's version"))), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn get_flag_config(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    caller.require(&state, &project, Role::Viewer).await?;
    let config = current_config(&state, &project, &environment, &flag).await?;
    let mut response = Json(&config).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(config.version));
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigUpdate {
    #[serde(flatten)]
    pub(crate) config: FlagConfig,
    pub(crate) comment: Option<String>,
    /// An admin applying directly in an environment that requires approval (audited).
    #[serde(default)]
    pub(crate) break_glass: bool,
    /// Apply at this time (unix milliseconds) instead of now: the change waits as a change
    /// request.
    pub(crate) apply_at: Option<i64>,
}

/// Checks a configuration against the rest of the environment with the engine's compiler;
/// problems come back with paths relative to the request body.
pub(crate) async fn validate_config(
    state: &AppState,
    project: &str,
    environment: &str,
    flag: &str,
    config: &FlagConfig,
) -> ApiResult<()> {
    let (mut env, _) = state.store.environment_config(project, environment).await?;
    let i = env
        .flags
        .iter()
        .position(|f| f.flag.key == flag)
        .ok_or_else(|| ApiError::Conflict(format!("flag `{flag}` is archived")))?;
    env.flags[i].config = config.clone();
    let problems = relative(compile(&env).1, &format!("/flags/{i}/config"));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(problems))
    }
}

async fn write_config(
    state: &AppState,
    caller: &Caller,
    path: (&str, &str, &str),
    config: &FlagConfig,
    expected_version: Option<u64>,
    comment: Option<&str>,
    action: &str,
) -> ApiResult<Response> {
    let (project, environment, flag) = path;
    let env = state.store.environment(project, environment).await?;
    if env.requires_comment && comment.is_none_or(|c| c.trim().is_empty()) {
        return Err(invalid(
            "/comment",
            &format!("changes in `{environment}` need a comment"),
        ));
    }
    validate_config(state, project, environment, flag, config).await?;
    let actor = caller.actor();
    let data = crate::webhooks::flag_changed(flag, environment, &actor, action, comment);
    let stored = state
        .store
        .update_flag_config(&ConfigChange {
            actor: &actor,
            project,
            environment,
            flag,
            config,
            expected_version,
            comment,
            action,
            event: Some(anchor_store::OutboxEvent {
                event_type: crate::webhooks::events::FLAG_CHANGED,
                data: &data,
            }),
        })
        .await?;
    crate::webhooks::wake(state);
    let mut response = Json(&stored).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(stored.version));
    Ok(response)
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}", tag = "configuration", summary = "Replace a flag's configuration in one environment (a new revision); send If-Match with the ETag you read", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key"), ("If-Match" = Option<String>, Header, description = "The ETag read; a stale one gives 412")), request_body(content = FlagConfig, description = "The configuration, optionally with a `comment`"), responses((status = 200, body = FlagConfig, headers(("ETag" = String, description = "The new version"))), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 412, description = "If-Match names an outdated version; nothing was written", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_flag_config(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag)): Path<(String, String, String)>,
    headers: HeaderMap,
    update: Body<ConfigUpdate>,
) -> ApiResult<Response> {
    let role = caller.require(&state, &project, Role::Editor).await?;
    let update = update.into_inner()?;
    let expected = if_match(&headers)?;
    let env = state.store.environment(&project, &environment).await?;
    let current = current_config(&state, &project, &environment, &flag).await?;
    if let Some(expected) = expected
        && expected != current.version
    {
        return Err(ApiError::PreconditionFailed(format!(
            "the flag configuration changed: version {}, not {expected}",
            current.version
        )));
    }
    let kill_switch = is_kill_switch(&current, &update.config);
    let action = if kill_switch {
        "flag.killed"
    } else if update.break_glass {
        "flag.config.break_glass"
    } else if update.config.enabled {
        "flag.config.updated"
    } else {
        "flag.config.disabled"
    };
    if update.break_glass && (role < Role::Admin || !env.requires_approval) {
        return Err(invalid(
            "/breakGlass",
            "break-glass is for admins, in environments that require approval",
        ));
    }
    if update.break_glass
        && update
            .comment
            .as_deref()
            .is_none_or(|c| c.trim().is_empty())
    {
        return Err(invalid(
            "/comment",
            "a break-glass change needs a comment saying why",
        ));
    }
    // The kill switch never waits for approval; anything else in an approval environment
    // (unless an admin breaks the glass), and anything scheduled, becomes a change request.
    let needs_request =
        (env.requires_approval && !kill_switch && !update.break_glass) || update.apply_at.is_some();
    if needs_request {
        validate_config(&state, &project, &environment, &flag, &update.config).await?;
        return crate::change_requests::propose(
            &state,
            &caller,
            crate::change_requests::Proposal {
                project: &project,
                environment: &environment,
                flag: &flag,
                base_version: current.version,
                config: &update.config,
                comment: update.comment.as_deref(),
                apply_at: update.apply_at,
                pre_approved: !env.requires_approval,
            },
        )
        .await;
    }
    write_config(
        &state,
        &caller,
        (&project, &environment, &flag),
        &update.config,
        Some(current.version),
        update.comment.as_deref(),
        action,
    )
    .await
}

/// Turning a flag off and changing nothing else: the kill switch, allowed everywhere.
fn is_kill_switch(current: &FlagConfig, proposed: &FlagConfig) -> bool {
    let mut off = current.clone();
    off.enabled = false;
    off.version = proposed.version;
    current.enabled && *proposed == off
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}/revisions", tag = "configuration", summary = "The history of a flag's configuration in one environment, newest first", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key")), responses((status = 200, body = Vec<Revision>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn list_revisions(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag)): Path<(String, String, String)>,
) -> ApiResult<Json<Vec<Revision>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    Ok(Json(
        state
            .store
            .flag_revisions(&project, &environment, &flag)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}/revisions/{version}", tag = "configuration", summary = "One revision", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key"), ("version" = u64, Path, description = "Revision number")), responses((status = 200, body = Revision), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn get_revision(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag, version)): Path<(String, String, String, u64)>,
) -> ApiResult<Json<Revision>> {
    caller.require(&state, &project, Role::Viewer).await?;
    Ok(Json(
        state
            .store
            .flag_revision(&project, &environment, &flag, version)
            .await?,
    ))
}

/// An RFC 6902 JSON Patch from one revision to another.
#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}/revisions/{from}/diff/{to}", tag = "configuration", summary = "An RFC 6902 JSON Patch from one revision to another", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key"), ("from" = u64, Path, description = "Older revision"), ("to" = u64, Path, description = "Newer revision")), responses((status = 200, description = "A JSON Patch", body = Vec<Object>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn diff_revisions(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag, from, to)): Path<(String, String, String, u64, u64)>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let a = state
        .store
        .flag_revision(&project, &environment, &flag, from)
        .await?;
    let b = state
        .store
        .flag_revision(&project, &environment, &flag, to)
        .await?;
    let patch = json_patch::diff(&a.body, &b.body);
    serde_json::to_value(patch)
        .map(Json)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevertRequest {
    pub(crate) version: u64,
    pub(crate) comment: Option<String>,
}

/// Reverting writes an old revision's configuration as a new revision.
#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}/revert", tag = "configuration", summary = "Write an old revision's configuration as a new revision", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key")), request_body = RevertRequest, responses((status = 200, body = FlagConfig), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 412, description = "If-Match names an outdated version; nothing was written", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revert_flag_config(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag)): Path<(String, String, String)>,
    headers: HeaderMap,
    request: Body<RevertRequest>,
) -> ApiResult<Response> {
    caller.require(&state, &project, Role::Editor).await?;
    let request = request.into_inner()?;
    let revision = state
        .store
        .flag_revision(&project, &environment, &flag, request.version)
        .await?;
    let config: FlagConfig = serde_json::from_value(revision.body)
        .map_err(|e| ApiError::Internal(format!("revision body: {e}")))?;
    // A revert is a change like any other: in an environment that requires approval it waits
    // as a change request.
    if state
        .store
        .environment(&project, &environment)
        .await?
        .requires_approval
    {
        let current = current_config(&state, &project, &environment, &flag).await?;
        validate_config(&state, &project, &environment, &flag, &config).await?;
        return crate::change_requests::propose(
            &state,
            &caller,
            crate::change_requests::Proposal {
                project: &project,
                environment: &environment,
                flag: &flag,
                base_version: current.version,
                config: &config,
                comment: request.comment.as_deref(),
                apply_at: None,
                pre_approved: false,
            },
        )
        .await;
    }
    write_config(
        &state,
        &caller,
        (&project, &environment, &flag),
        &config,
        if_match(&headers)?,
        request.comment.as_deref(),
        "flag.reverted",
    )
    .await
}

// ---- audit ----

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    actor: Option<String>,
    environment: Option<String>,
    flag: Option<String>,
    /// Only entries with this action (`flag.config.updated`); a value ending with `.` or `*`
    /// matches every action starting with what comes before the `*` (`release.*`).
    action: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/audit", tag = "audit", summary = "A project's audit log, newest first, with filters", params(("project" = String, Path, description = "Project key"), AuditQuery), responses((status = 200, body = Vec<AuditEntry>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(
        state
            .store
            .audit(&AuditFilter {
                project,
                actor: query.actor,
                environment: query.environment,
                resource_key: query.flag,
                action: query.action,
                since: query.since,
                until: query.until,
                limit: query.limit.unwrap_or(100),
            })
            .await?,
    ))
}

// ---- helpers ----

pub(crate) fn invalid(path: &str, message: &str) -> ApiError {
    ApiError::Invalid(vec![Diagnostic {
        path: path.to_string(),
        message: message.to_string(),
    }])
}

/// Keeps the diagnostics under `prefix`, with paths made relative to it (the request body).
fn relative(diagnostics: Vec<Diagnostic>, prefix: &str) -> Vec<Diagnostic> {
    diagnostics
        .into_iter()
        .filter_map(|d| {
            let rest = d.path.strip_prefix(prefix)?;
            (rest.is_empty() || rest.starts_with('/')).then(|| Diagnostic {
                path: rest.to_string(),
                message: d.message,
            })
        })
        .collect()
}

// ---- segments ----

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/segments", tag = "segments", summary = "An environment's segments (without their key lists)", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key")), responses((status = 200, body = Vec<SegmentSummary>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_segments(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment)): Path<(String, String)>,
) -> ApiResult<Json<Vec<SegmentSummary>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    Ok(Json(state.store.segments(&project, &environment).await?))
}

/// Whether an editor's segment write must wait as a change request: in an environment that
/// requires approval, unless the caller is an admin.
async fn segment_write_needs_approval(
    state: &AppState,
    caller: &Caller,
    project: &str,
    environment: &str,
) -> ApiResult<bool> {
    let role = caller.require(state, project, Role::Editor).await?;
    let env = state.store.environment(project, environment).await?;
    Ok(env.requires_approval && role < Role::Admin)
}

/// Stores a validated segment proposal as a change request: 202 Accepted.
async fn propose_segment(
    state: &AppState,
    caller: &Caller,
    project: &str,
    environment: &str,
    segment: &Segment,
    comment: Option<&str>,
) -> ApiResult<Response> {
    let base_version = match state
        .store
        .segment(project, environment, &segment.key)
        .await
    {
        Ok(current) => current.segment.version,
        Err(anchor_store::StoreError::NotFound { .. }) => 0,
        Err(e) => return Err(e.into()),
    };
    let request = state
        .store
        .create_segment_change_request(
            &caller.actor(),
            project,
            environment,
            segment,
            base_version,
            comment,
        )
        .await?;
    let location = format!("/api/v1/projects/{project}/change-requests/{}", request.id);
    let mut response = (StatusCode::ACCEPTED, Json(request)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Compiles the environment with `segment` in place of (or added as) the segment of its key;
/// problems with the segment come back relative to the body, problems it causes elsewhere
/// name where.
pub(crate) async fn validate_segment(
    state: &AppState,
    project: &str,
    environment: &str,
    segment: Option<&Segment>,
    key: &str,
) -> ApiResult<()> {
    let (mut env, _) = state.store.environment_config(project, environment).await?;
    let position = env.segments.iter().position(|s| s.key == key);
    let index = match (segment, position) {
        (Some(segment), Some(i)) => {
            env.segments[i] = segment.clone();
            Some(i)
        }
        (Some(segment), None) => {
            env.segments.push(segment.clone());
            Some(env.segments.len() - 1)
        }
        (None, Some(i)) => {
            env.segments.remove(i);
            None
        }
        (None, None) => None,
    };
    let (_, diagnostics) = compile(&env);
    let mut problems = Vec::new();
    for d in diagnostics {
        let own = index.map(|i| format!("/segments/{i}"));
        match own
            .as_deref()
            .and_then(|prefix| d.path.strip_prefix(prefix))
        {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                push_unique(&mut problems, rest.to_string(), d.message)
            }
            _ => {
                let place = describe_path(&env, &d.path);
                push_unique(
                    &mut problems,
                    String::new(),
                    format!("{place}: {}", d.message),
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else if segment.is_none() {
        Err(ApiError::Conflict(format!(
            "segment `{key}` is still used: {}",
            problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        )))
    } else {
        Err(ApiError::Invalid(problems))
    }
}

/// "flag `x`" or "segment `y`" for a diagnostic's JSON pointer into an environment.
fn describe_path(env: &EnvironmentConfig, path: &str) -> String {
    let mut parts = path.split('/').skip(1);
    match (
        parts.next(),
        parts.next().and_then(|i| i.parse::<usize>().ok()),
    ) {
        (Some("flags"), Some(i)) => env
            .flags
            .get(i)
            .map_or_else(|| path.to_string(), |f| format!("flag `{}`", f.flag.key)),
        (Some("segments"), Some(i)) => env
            .segments
            .get(i)
            .map_or_else(|| path.to_string(), |s| format!("segment `{}`", s.key)),
        _ => path.to_string(),
    }
}

#[derive(Deserialize)]
pub(crate) struct SegmentWrite {
    #[serde(flatten)]
    pub(crate) segment: Segment,
    pub(crate) comment: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/segments", tag = "segments", summary = "Create a segment (version 1); in an environment that requires approval, an editor's segment waits as a change request (202)", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key")), request_body = Segment, responses((status = 201, body = SegmentRecord), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 409, description = "In conflict with the current state", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment)): Path<(String, String)>,
    write: Body<SegmentWrite>,
) -> ApiResult<Response> {
    let needs_approval =
        segment_write_needs_approval(&state, &caller, &project, &environment).await?;
    let write = write.into_inner()?;
    let key = write.segment.key.clone();
    if state
        .store
        .segment(&project, &environment, &key)
        .await
        .is_ok()
    {
        return Err(ApiError::Conflict(format!(
            "segment `{key}` already exists"
        )));
    }
    validate_segment(&state, &project, &environment, Some(&write.segment), &key).await?;
    if needs_approval {
        return propose_segment(
            &state,
            &caller,
            &project,
            &environment,
            &write.segment,
            write.comment.as_deref(),
        )
        .await;
    }
    let actor = caller.actor();
    let record = state
        .store
        .create_segment(&SegmentChange {
            actor: &actor,
            project: &project,
            environment: &environment,
            segment: &write.segment,
            expected_version: None,
            comment: write.comment.as_deref(),
        })
        .await?;
    let version = record.segment.version;
    let mut response = (StatusCode::CREATED, Json(record)).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/segments/{segment}", tag = "segments", summary = "A segment with its key lists; the ETag is its version", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("segment" = String, Path, description = "Segment key")), responses((status = 200, body = SegmentRecord), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, key)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    caller.require(&state, &project, Role::Viewer).await?;
    let record = state.store.segment(&project, &environment, &key).await?;
    let version = record.segment.version;
    let mut response = Json(record).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    Ok(response)
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/environments/{environment}/segments/{segment}", tag = "segments", summary = "Replace a segment's rules and key lists; send If-Match with the ETag you read. In an environment that requires approval, an editor's change waits as a change request (202)", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("segment" = String, Path, description = "Segment key"), ("If-Match" = Option<String>, Header, description = "The ETag read; a stale one gives 412")), request_body = Segment, responses((status = 200, body = SegmentRecord), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 412, description = "If-Match names an outdated version; nothing was written", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn update_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    write: Body<SegmentWrite>,
) -> ApiResult<Response> {
    let needs_approval =
        segment_write_needs_approval(&state, &caller, &project, &environment).await?;
    let write = write.into_inner()?;
    if write.segment.key != key {
        return Err(invalid("/key", "a segment's key cannot change"));
    }
    let current = state.store.segment(&project, &environment, &key).await?;
    validate_segment(&state, &project, &environment, Some(&write.segment), &key).await?;
    if needs_approval {
        if let Some(expected) = if_match(&headers)?
            && expected != current.segment.version
        {
            return Err(ApiError::PreconditionFailed(format!(
                "the segment changed: version {}, not {expected}",
                current.segment.version
            )));
        }
        return propose_segment(
            &state,
            &caller,
            &project,
            &environment,
            &write.segment,
            write.comment.as_deref(),
        )
        .await;
    }
    let actor = caller.actor();
    let record = state
        .store
        .update_segment(&SegmentChange {
            actor: &actor,
            project: &project,
            environment: &environment,
            segment: &write.segment,
            expected_version: if_match(&headers)?,
            comment: write.comment.as_deref(),
        })
        .await?;
    let version = record.segment.version;
    let mut response = Json(record).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    Ok(response)
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/environments/{environment}/segments/{segment}", tag = "segments", summary = "Delete a segment that no flag or segment uses; in an environment that requires approval, an editor's deletion waits as a change request (202)", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("segment" = String, Path, description = "Segment key")), responses((status = 204), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 409, description = "In conflict with the current state", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, key)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let needs_approval =
        segment_write_needs_approval(&state, &caller, &project, &environment).await?;
    let current = state.store.segment(&project, &environment, &key).await?;
    validate_segment(&state, &project, &environment, None, &key).await?;
    if needs_approval {
        let request = state
            .store
            .create_segment_deletion_request(
                &caller.actor(),
                &project,
                &environment,
                &key,
                current.segment.version,
                None,
            )
            .await?;
        let location = format!("/api/v1/projects/{project}/change-requests/{}", request.id);
        let mut response = (StatusCode::ACCEPTED, Json(request)).into_response();
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return Ok(response);
    }
    state
        .store
        .delete_segment(&caller.actor(), &project, &environment, &key)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/segments/{segment}/revisions", tag = "segments", summary = "A segment's history, newest first", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("segment" = String, Path, description = "Segment key")), responses((status = 200, body = Vec<Revision>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn list_segment_revisions(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, key)): Path<(String, String, String)>,
) -> ApiResult<Json<Vec<Revision>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    Ok(Json(
        state
            .store
            .segment_revisions(&project, &environment, &key)
            .await?,
    ))
}

// ---- SDK keys ----

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SdkKeyRequest {
    pub(crate) kind: SdkKeyKind,
    /// With rotation: how long the keys being replaced keep working (default one day).
    pub(crate) overlap_seconds: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SdkKeyCreated {
    #[serde(flatten)]
    pub(crate) record: SdkKeyRecord,
    /// Shown this once; only its hash is stored.
    pub(crate) key: String,
}

fn new_sdk_key(
    project: &str,
    environment: &str,
    kind: SdkKeyKind,
) -> ApiResult<(String, NewSdkKey)> {
    let prefix = match kind {
        SdkKeyKind::Server => "anc_srv_",
        SdkKeyKind::Client => "anc_cli_",
    };
    let secret = format!("{prefix}{}", auth::random_token_body()?);
    let record = NewSdkKey {
        project: project.to_string(),
        environment: environment.to_string(),
        kind,
        key_hash: auth::token_hash(&secret),
        prefix: secret.chars().take(12).collect(),
    };
    Ok((secret, record))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/environments/{environment}/keys", tag = "sdk keys", summary = "An environment's SDK keys (prefixes only), newest first", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key")), responses((status = 200, body = Vec<SdkKeyRecord>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_sdk_keys(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment)): Path<(String, String)>,
) -> ApiResult<Json<Vec<SdkKeyRecord>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    state.store.environment(&project, &environment).await?;
    Ok(Json(state.store.sdk_keys(&project, &environment).await?))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/keys", tag = "sdk keys", summary = "Create an SDK key (server: full configuration and telemetry; client: evaluations and their telemetry, never rules or segments); the secret is shown once", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key")), request_body = SdkKeyRequest, responses((status = 201, body = SdkKeyCreated), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_sdk_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment)): Path<(String, String)>,
    request: Body<SdkKeyRequest>,
) -> ApiResult<(StatusCode, Json<SdkKeyCreated>)> {
    caller.require(&state, &project, Role::Admin).await?;
    let request = request.into_inner()?;
    state.store.environment(&project, &environment).await?;
    let (key, new) = new_sdk_key(&project, &environment, request.kind)?;
    let record = state.store.create_sdk_key(&caller.actor(), &new).await?;
    Ok((StatusCode::CREATED, Json(SdkKeyCreated { record, key })))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/keys/rotate", tag = "sdk keys", summary = "Replace the keys of a kind: a new key now, the old ones expire after the overlap", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key")), request_body = SdkKeyRequest, responses((status = 201, body = SdkKeyCreated), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn rotate_sdk_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment)): Path<(String, String)>,
    request: Body<SdkKeyRequest>,
) -> ApiResult<(StatusCode, Json<SdkKeyCreated>)> {
    caller.require(&state, &project, Role::Admin).await?;
    let request = request.into_inner()?;
    state.store.environment(&project, &environment).await?;
    let (key, new) = new_sdk_key(&project, &environment, request.kind)?;
    let overlap_ms = i64::from(request.overlap_seconds.unwrap_or(86_400)) * 1_000;
    let record = state
        .store
        .rotate_sdk_key(&caller.actor(), &new, overlap_ms)
        .await?;
    Ok((StatusCode::CREATED, Json(SdkKeyCreated { record, key })))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/environments/{environment}/keys/{id}", tag = "sdk keys", summary = "Revoke an SDK key at once", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("id" = String, Path, description = "Key id")), responses((status = 204), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke_sdk_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, id)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    caller.require(&state, &project, Role::Admin).await?;
    state
        .store
        .revoke_sdk_key(&caller.actor(), &project, &environment, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- dashboard sessions ----

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SignIn {
    username: String,
    password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionStarted {
    username: String,
    /// Repeat it in `X-CSRF-Token` on every write made with the session cookie.
    csrf_token: String,
    expires_at: i64,
}

#[utoipa::path(post, path = "/api/v1/session", tag = "identity", summary = "Sign in to the dashboard: sets an HttpOnly, SameSite=Strict session cookie and returns the CSRF token for writes", request_body = SignIn, responses((status = 201, body = SessionStarted, headers(("Set-Cookie" = String, description = "The session cookie"))), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 429, description = "Too many failed attempts", body = Problem, content_type = "application/problem+json")), security(()))]
async fn sign_in(State(state): State<AppState>, body: Body<SignIn>) -> ApiResult<Response> {
    let body = body.into_inner()?;
    let caller = auth::sign_in(&state, &body.username, &body.password).await?;
    let session = auth::start_session(&state, &caller).await?;
    let mut response = (
        StatusCode::CREATED,
        Json(SessionStarted {
            username: caller.user.username,
            csrf_token: session.csrf_token,
            expires_at: session.expires_at,
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&session.cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[utoipa::path(delete, path = "/api/v1/session", tag = "identity", summary = "Sign out: ends the session and clears its cookie", responses((status = 204), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json")))]
/// Signing out needs the session itself (and, being a write, its CSRF token).
async fn sign_out(
    State(state): State<AppState>,
    _caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(id) = auth::session_cookie_in(&headers) {
        state.store.delete_session(&auth::token_hash(&id)).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(auth::CLEAR_SESSION_COOKIE),
    );
    Ok(response)
}

// ---- evaluation with explanation ----

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExplainedEvaluation {
    /// The environment revision the answer was computed from.
    pub(crate) revision: u64,
    /// The evaluation and every step taken, as the engine records them.
    #[schema(value_type = Object)]
    pub(crate) explanation: serde_json::Value,
    /// The same steps as sentences.
    pub(crate) text: String,
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/environments/{environment}/flags/{flag}/evaluate", tag = "configuration", summary = "Evaluate a flag for an evaluation context and explain why it gets that value", params(("project" = String, Path, description = "Project key"), ("environment" = String, Path, description = "Environment key"), ("flag" = String, Path, description = "Flag key")), request_body(content = Object, description = "The evaluation context, e.g. {\"targetingKey\": \"user-42\", \"country\": \"DE\"}"), responses((status = 200, body = ExplainedEvaluation), (status = 400, description = "Not an evaluation context", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn explain_flag(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, environment, flag)): Path<(String, String, String)>,
    context: Body<serde_json::Value>,
) -> ApiResult<Json<ExplainedEvaluation>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let context = context.into_inner()?;
    state.store.environment(&project, &environment).await?;
    let context = anchor_engine::EvaluationContext::from_value(context)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let held = match state.snapshots.get(&project, &environment) {
        Some(held) => held,
        None => {
            state
                .snapshots
                .refresh(state.store.as_ref(), &project, &environment)
                .await?;
            state
                .snapshots
                .get(&project, &environment)
                .ok_or_else(|| ApiError::Internal("no snapshot after building it".into()))?
        }
    };
    if held.snapshot.flag_kind(&flag).is_none() {
        return Err(ApiError::NotFound(format!(
            "flag `{flag}` is not evaluated in `{environment}` (unknown or archived)"
        )));
    }
    let explanation = anchor_engine::explain(&held.snapshot, &flag, &context);
    Ok(Json(ExplainedEvaluation {
        revision: held.revision,
        text: explanation.to_string(),
        explanation: serde_json::to_value(&explanation)
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    }))
}
