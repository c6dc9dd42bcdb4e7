//! Change requests: approvals for environments that require them, and scheduled changes.
//!
//! A change that must wait is stored as a change request with the configuration version it was
//! made against. Someone other than its author approves or rejects it; its author or an approver
//! applies it (or the scheduler does, at its `applyAt`); if the flag changed in the meantime,
//! applying fails and asks for the request to be edited against the current configuration.
//! Editing a request voids its approvals.

use anchor_engine::FlagConfig;
use anchor_store::{
    Actor, ChangeRequest, ChangeRequestStatus, NewChangeRequest, ReviewDecision, Role, StoreError,
};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::{Body, current_config, invalid, validate_config};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_change_requests))
        .routes(routes!(get_change_request, edit_change_request))
        .routes(routes!(approve_change_request))
        .routes(routes!(reject_change_request))
        .routes(routes!(apply_change_request))
        .routes(routes!(cancel_change_request))
}

pub(crate) struct Proposal<'a> {
    pub project: &'a str,
    pub environment: &'a str,
    pub flag: &'a str,
    pub base_version: u64,
    pub config: &'a FlagConfig,
    pub comment: Option<&'a str>,
    pub apply_at: Option<i64>,
    /// A scheduled change where no approval is needed.
    pub pre_approved: bool,
}

/// Stores a validated proposal as a change request: 202 Accepted with its location.
pub(crate) async fn propose(
    state: &AppState,
    caller: &Caller,
    p: Proposal<'_>,
) -> ApiResult<Response> {
    let actor = caller.actor();
    let request = state
        .store
        .create_change_request(&NewChangeRequest {
            actor: &actor,
            project: p.project,
            environment: p.environment,
            flag: p.flag,
            base_version: p.base_version,
            proposed: p.config,
            comment: p.comment,
            apply_at: p.apply_at,
            pre_approved: p.pre_approved,
        })
        .await?;
    let location = format!(
        "/api/v1/projects/{}/change-requests/{}",
        p.project, request.id
    );
    let mut response = (StatusCode::ACCEPTED, Json(view(state, request).await?)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A change request as the API shows it: with the diff from the current configuration.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChangeRequestView {
    #[serde(flatten)]
    pub(crate) request: ChangeRequest,
    /// The flag configuration's version now; applying fails when it differs from `baseVersion`.
    pub(crate) current_version: u64,
    /// An RFC 6902 JSON Patch from the current configuration to the proposed one.
    #[schema(value_type = Vec<Object>)]
    pub(crate) diff: serde_json::Value,
}

async fn view(state: &AppState, request: ChangeRequest) -> ApiResult<ChangeRequestView> {
    let (current_version, mut before, mut after) = match &request.segment {
        None if request.resource_kind == "segment_deletion" => {
            let current = state
                .store
                .segment(&request.project, &request.environment, &request.flag)
                .await?;
            (
                current.segment.version,
                to_json(&current.segment)?,
                serde_json::Value::Null,
            )
        }
        Some(proposed) => {
            let current = state
                .store
                .segment(&request.project, &request.environment, &request.flag)
                .await
                .ok();
            (
                current.as_ref().map_or(0, |c| c.segment.version),
                current.map_or(Ok(serde_json::Value::Null), |c| to_json(&c.segment))?,
                to_json(proposed)?,
            )
        }
        None => {
            let current =
                current_config(state, &request.project, &request.environment, &request.flag)
                    .await?;
            (
                current.version,
                to_json(&current)?,
                to_json(&request.proposed)?,
            )
        }
    };
    // Versions are bookkeeping, not part of the change.
    for v in [&mut before, &mut after] {
        if let Some(o) = v.as_object_mut() {
            o.remove("version");
        }
    }
    let diff = serde_json::to_value(json_patch::diff(&before, &after))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ChangeRequestView {
        current_version,
        request,
        diff,
    })
}

fn to_json<T: Serialize>(value: &T) -> ApiResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Checks a change request's proposal against the environment as it is now.
async fn validate_proposal(
    state: &AppState,
    project: &str,
    request: &ChangeRequest,
) -> ApiResult<()> {
    match &request.segment {
        None if request.resource_kind == "segment_deletion" => {
            crate::api::validate_segment(state, project, &request.environment, None, &request.flag)
                .await
        }
        Some(segment) => {
            crate::api::validate_segment(
                state,
                project,
                &request.environment,
                Some(segment),
                &request.flag,
            )
            .await
        }
        None => {
            validate_config(
                state,
                project,
                &request.environment,
                &request.flag,
                &request.proposed,
            )
            .await
        }
    }
}

pub(crate) fn same_person(actor: &Actor, caller: &Caller) -> bool {
    let name = &caller.user.username;
    actor.id == *name || actor.id.starts_with(&format!("{name}/"))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<ChangeRequestStatus>,
    environment: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/change-requests", tag = "change requests", summary = "Change requests, newest first", params(("project" = String, Path, description = "Project key"), ListQuery), responses((status = 200, body = Vec<ChangeRequest>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json")))]
async fn list_change_requests(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<ChangeRequest>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(
        state
            .store
            .change_requests(&project, query.status, query.environment.as_deref())
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/change-requests/{id}", tag = "change requests", summary = "A change request with the diff from the current configuration", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Change request id")), responses((status = 200, body = ChangeRequestView), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_change_request(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<ChangeRequestView>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let request = state.store.change_request(&project, &id).await?;
    Ok(Json(view(&state, request).await?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Edit {
    #[serde(flatten)]
    config: FlagConfig,
    comment: Option<String>,
    apply_at: Option<i64>,
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/change-requests/{id}", tag = "change requests", summary = "Edit a change request (its author): a flag configuration or a segment, against the current state, voiding its approvals", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Change request id")), request_body = FlagConfig, responses((status = 200, body = ChangeRequestView), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Not the author", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
async fn edit_change_request(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    edit: Body<serde_json::Value>,
) -> ApiResult<Json<ChangeRequestView>> {
    caller.require(&state, &project, Role::Editor).await?;
    let request = state.store.change_request(&project, &id).await?;
    if !same_person(&request.author, &caller) {
        return Err(ApiError::Forbidden(
            "only the author edits a change request".into(),
        ));
    }
    let edit = edit.into_inner()?;
    let parse = |what: &str| {
        let what = what.to_string();
        move |e: serde_json::Error| invalid("", &format!("not {what}: {e}"))
    };
    // An edit is a rebase: it is made against the resource as it is now.
    let updated = match request.resource_kind.as_str() {
        "segment" => {
            let edit: SegmentEdit = serde_json::from_value(edit).map_err(parse("a segment"))?;
            if edit.segment.key != request.flag {
                return Err(invalid("/key", "a segment request's key cannot change"));
            }
            crate::api::validate_segment(
                &state,
                &project,
                &request.environment,
                Some(&edit.segment),
                &request.flag,
            )
            .await?;
            let base = match state
                .store
                .segment(&project, &request.environment, &request.flag)
                .await
            {
                Ok(current) => current.segment.version,
                Err(StoreError::NotFound { .. }) => 0,
                Err(e) => return Err(e.into()),
            };
            state
                .store
                .update_segment_change_request(
                    &caller.actor(),
                    &project,
                    &id,
                    &edit.segment,
                    base,
                    edit.comment.as_deref(),
                )
                .await
        }
        "flag" => {
            let edit: Edit = serde_json::from_value(edit).map_err(parse("a flag configuration"))?;
            validate_config(
                &state,
                &project,
                &request.environment,
                &request.flag,
                &edit.config,
            )
            .await?;
            let current =
                current_config(&state, &project, &request.environment, &request.flag).await?;
            state
                .store
                .update_change_request(
                    &caller.actor(),
                    &project,
                    &id,
                    &edit.config,
                    current.version,
                    edit.comment.as_deref(),
                    edit.apply_at,
                )
                .await
        }
        _ => {
            return Err(ApiError::Conflict(
                "a deletion request cannot be edited; cancel it instead".into(),
            ));
        }
    }
    .map_err(state_error)?;
    Ok(Json(view(&state, updated).await?))
}

#[derive(Deserialize)]
struct SegmentEdit {
    #[serde(flatten)]
    segment: anchor_engine::Segment,
    comment: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    comment: Option<String>,
}

/// The optional `{"comment": …}` body of a review; an empty body is no comment.
fn review_comment(body: &[u8]) -> ApiResult<Option<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<ReviewBody>(body)
        .map(|b| b.comment)
        .map_err(|e| invalid("", &e.to_string()))
}

async fn review(
    state: &AppState,
    caller: &Caller,
    project: &str,
    id: &str,
    decision: ReviewDecision,
    comment: Option<&str>,
) -> ApiResult<Json<ChangeRequestView>> {
    caller.require(state, project, Role::Editor).await?;
    let request = state.store.change_request(project, id).await?;
    if same_person(&request.author, caller) {
        return Err(ApiError::Forbidden(
            "a change request is reviewed by someone other than its author".into(),
        ));
    }
    let reviewed = state
        .store
        .review_change_request(&caller.actor(), project, id, decision, comment)
        .await
        .map_err(state_error)?;
    Ok(Json(view(state, reviewed).await?))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/change-requests/{id}/approve", tag = "change requests", summary = "Approve (an editor or admin other than the author)", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Change request id")), request_body = ReviewBody, responses((status = 200, body = ChangeRequestView), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The author, or not an editor", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Not open for review", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn approve_change_request(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<ChangeRequestView>> {
    let comment = review_comment(&body)?;
    review(
        &state,
        &caller,
        &project,
        &id,
        ReviewDecision::Approve,
        comment.as_deref(),
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/change-requests/{id}/reject", tag = "change requests", summary = "Reject (an editor or admin other than the author)", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Change request id")), request_body = ReviewBody, responses((status = 200, body = ChangeRequestView), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The author, or not an editor", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Not open for review", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn reject_change_request(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<ChangeRequestView>> {
    let comment = review_comment(&body)?;
    review(
        &state,
        &caller,
        &project,
        &id,
        ReviewDecision::Reject,
        comment.as_deref(),
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/change-requests/{id}/apply", tag = "change requests", summary = "Apply an approved change request (its author or an approver)", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Change request id")), responses((status = 200, body = ChangeRequest), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Neither author nor approver", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Not approved, or the flag changed since: edit the request against the current configuration", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn apply_change_request(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<ChangeRequest>> {
    caller.require(&state, &project, Role::Editor).await?;
    let request = state.store.change_request(&project, &id).await?;
    let approver = request
        .reviews
        .iter()
        .any(|r| r.decision == ReviewDecision::Approve && same_person(&r.reviewer, &caller));
    if !same_person(&request.author, &caller) && !approver {
        return Err(ApiError::Forbidden(
            "a change request is applied by its author or one of its approvers".into(),
        ));
    }
    validate_proposal(&state, &project, &request).await?;
    let actor = caller.actor();
    let data = applied_data(&actor, &request);
    let applied = state
        .store
        .apply_change_request(&actor, &project, &id, outbox_event(data.as_ref()))
        .await
        .map_err(state_error)?;
    crate::webhooks::wake(&state);
    Ok(Json(applied))
}

/// The data of the `flag.changed` event announcing that a flag request was applied (the store
/// adds the new `version` as it applies), recorded with the write. Segment requests change no
/// flag configuration and announce nothing.
fn applied_data(actor: &Actor, request: &ChangeRequest) -> Option<serde_json::Value> {
    if request.resource_kind != "flag" {
        return None;
    }
    let mut data = crate::webhooks::flag_changed(
        &request.flag,
        &request.environment,
        actor,
        "change_request.applied",
        request.comment.as_deref(),
    );
    data["changeRequest"] = serde_json::Value::String(request.id.clone());
    Some(data)
}

/// The event handed to the store's apply, which records it only if the apply commits.
fn outbox_event(data: Option<&serde_json::Value>) -> Option<anchor_store::OutboxEvent<'_>> {
    data.map(|data| anchor_store::OutboxEvent {
        event_type: crate::webhooks::events::FLAG_CHANGED,
        data,
    })
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/change-requests/{id}/cancel", tag = "change requests", summary = "Cancel a change request (its author or an admin)", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Change request id")), responses((status = 200, body = ChangeRequest), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Neither author nor admin", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Already closed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn cancel_change_request(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<ChangeRequest>> {
    let role = caller.require(&state, &project, Role::Editor).await?;
    let request = state.store.change_request(&project, &id).await?;
    if !same_person(&request.author, &caller) && role < Role::Admin {
        return Err(ApiError::Forbidden(
            "a change request is cancelled by its author or an admin".into(),
        ));
    }
    let cancelled = state
        .store
        .cancel_change_request(&caller.actor(), &project, &id)
        .await
        .map_err(state_error)?;
    Ok(Json(cancelled))
}

/// A request in the wrong state, or a flag that moved on, is a conflict for the caller.
fn state_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(message) => ApiError::Conflict(message),
        StoreError::VersionMismatch {
            expected, actual, ..
        } => ApiError::Conflict(format!(
            "the flag changed since this change request was made (version {actual}, not {expected}): \
             edit the request against the current configuration"
        )),
        other => other.into(),
    }
}

/// Applies every approved change request that is due. Each applies at most once: the store
/// moves it from approved to applied in the same transaction as the configuration write.
/// Returns how many were applied.
pub async fn run_due(state: &AppState) -> usize {
    let scheduler = Actor::system("scheduler");
    let due = match state.store.due_change_requests(state.now_ms(), 50).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read due change requests");
            return 0;
        }
    };
    let mut applied = 0;
    for (project, id) in due {
        let outcome = match state.store.change_request(&project, &id).await {
            Ok(request) => match validate_proposal(state, &project, &request).await {
                Ok(()) => {
                    let data = applied_data(&scheduler, &request);
                    state
                        .store
                        .apply_change_request(
                            &scheduler,
                            &project,
                            &id,
                            outbox_event(data.as_ref()),
                        )
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("the configuration is no longer valid: {e:?}")),
            },
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(request) => {
                applied += 1;
                crate::webhooks::wake(state);
                if let Err(e) = state
                    .snapshots
                    .refresh(state.store.as_ref(), &project, &request.environment)
                    .await
                {
                    tracing::warn!(error = %e, %project, "cannot rebuild a snapshot after a scheduled change");
                }
            }
            Err(reason) => {
                tracing::warn!(%project, %id, %reason, "a scheduled change could not be applied");
                let _ = state
                    .store
                    .fail_change_request(&scheduler, &project, &id, &reason)
                    .await;
            }
        }
    }
    applied
}
