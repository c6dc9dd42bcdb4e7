//! The webhook routes of the management API: admins manage a project's webhooks, viewers read
//! them and their delivery log. A webhook's secret is in the answer that makes it (or rotates
//! it) and in no other.

use anchor_engine::Diagnostic;
use anchor_store::{
    ALL_EVENTS, NewWebhook, Role, Webhook, WebhookDelivery, WebhookFormat, WebhookUpdate,
};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::events;
use crate::AppState;
use crate::api::Body;
use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(rotate_webhook_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(test_webhook))
}

const MAX_NAME: usize = 100;
const MAX_URL: usize = 2_048;

/// A webhook to create (`name` and `url` required) or the fields to change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WebhookRequest {
    /// 1 to 100 characters. Required when creating.
    pub(crate) name: Option<String>,
    /// An absolute `http` or `https` URL. Required when creating.
    pub(crate) url: Option<String>,
    /// Event types to receive (`ping`, `flag.changed`, `release.stage_advanced`,
    /// `release.waiting_for_approval`, `release.holding`, `release.rolled_back`,
    /// `release.completed`, `release.guardrail_breached`), or `["*"]` for all (the default).
    pub(crate) events: Option<Vec<String>>,
    /// `json` (the default) or `slack`.
    #[schema(value_type = Option<WebhookFormat>)]
    pub(crate) format: Option<String>,
    /// Disabled webhooks receive no events (but test deliveries). Enabled by default.
    pub(crate) enabled: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookCreated {
    #[serde(flatten)]
    pub(crate) webhook: Webhook,
    /// The signing secret, shown this once (and again only by rotating it).
    pub(crate) secret: String,
}

/// Judges every field at once: the update, or every problem with its JSON pointer.
fn judge(request: WebhookRequest, creating: bool) -> ApiResult<WebhookUpdate> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: &str| {
        problems.push(Diagnostic {
            path: path.to_string(),
            message: message.to_string(),
        })
    };
    match &request.name {
        None if creating => problem("/name", "give the webhook a name"),
        Some(name) if name.trim().is_empty() || name.chars().count() > MAX_NAME => {
            problem("/name", "use 1 to 100 characters")
        }
        _ => {}
    }
    match &request.url {
        None if creating => problem("/url", "give the URL to send events to"),
        Some(url) => {
            if let Err(message) = check_url(url) {
                problem("/url", &message);
            }
        }
        None => {}
    }
    if let Some(events) = &request.events {
        if events.is_empty() {
            problem("/events", "name at least one event type, or `*` for all");
        }
        for (i, event) in events.iter().enumerate() {
            if event != ALL_EVENTS && !events::ALL.contains(&event.as_str()) {
                problem(
                    &format!("/events/{i}"),
                    &format!(
                        "unknown event type `{event}`; use `*` or one of {}",
                        events::ALL.join(", ")
                    ),
                );
            }
        }
    }
    let format = match request.format.as_deref() {
        None => None,
        Some(f) => match WebhookFormat::parse(f) {
            Some(format) => Some(format),
            None => {
                problem("/format", "use `json` or `slack`");
                None
            }
        },
    };
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    Ok(WebhookUpdate {
        name: request.name.map(|n| n.trim().to_string()),
        url: request.url,
        events: request.events,
        format,
        enabled: request.enabled,
    })
}

fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("use at most {MAX_URL} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not an absolute URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("use an `http` or `https` URL".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL needs a host".into());
    }
    Ok(())
}

/// A new signing secret: `whsec_` and 256 random bits.
fn new_secret() -> ApiResult<String> {
    Ok(format!("whsec_{}", auth::random_token_body()?))
}

/// What a caller below admin sees of a webhook: its URL without path or query, since some
/// receivers (Slack's among them) take the path itself as the credential.
fn as_seen_by(role: Role, mut webhook: Webhook) -> Webhook {
    if role < Role::Admin {
        webhook.url = webhook.redacted_url();
    }
    webhook
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/webhooks", tag = "webhooks", summary = "A project's webhooks, oldest first (never their secrets; URLs without their path below admin)", params(("project" = String, Path, description = "Project key")), responses((status = 200, body = Vec<Webhook>), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<Webhook>>> {
    let role = caller.require(&state, &project, Role::Viewer).await?;
    let webhooks = state.store.webhooks(&project).await?;
    Ok(Json(
        webhooks.into_iter().map(|w| as_seen_by(role, w)).collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/webhooks", tag = "webhooks", summary = "Create a webhook (project admins); its signing secret is shown once", params(("project" = String, Path, description = "Project key")), request_body = WebhookRequest, responses((status = 201, body = WebhookCreated), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    request: Body<WebhookRequest>,
) -> ApiResult<Response> {
    caller.require(&state, &project, Role::Admin).await?;
    let update = judge(request.into_inner()?, true)?;
    let secret = new_secret()?;
    let new = NewWebhook {
        name: update.name.unwrap_or_default(),
        url: update.url.unwrap_or_default(),
        secret: secret.clone(),
        events: update
            .events
            .unwrap_or_else(|| vec![ALL_EVENTS.to_string()]),
        format: update.format.unwrap_or(WebhookFormat::Json),
        enabled: update.enabled.unwrap_or(true),
    };
    let webhook = state
        .store
        .create_webhook(&caller.actor(), &project, &new)
        .await?;
    let location = format!("/api/v1/projects/{project}/webhooks/{}", webhook.id);
    let mut response = (
        StatusCode::CREATED,
        Json(WebhookCreated { webhook, secret }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/webhooks/{id}", tag = "webhooks", summary = "One webhook (never its secret; its URL without the path below admin)", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Webhook id")), responses((status = 200, body = Webhook), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Webhook>> {
    let role = caller.require(&state, &project, Role::Viewer).await?;
    Ok(Json(as_seen_by(
        role,
        state.store.webhook(&project, &id).await?,
    )))
}

#[utoipa::path(patch, path = "/api/v1/projects/{project}/webhooks/{id}", tag = "webhooks", summary = "Change a webhook's name, URL, events, format or state (project admins)", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Webhook id")), request_body = WebhookRequest, responses((status = 200, body = Webhook), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid: every problem with its JSON pointer", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn update_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    request: Body<WebhookRequest>,
) -> ApiResult<Json<Webhook>> {
    caller.require(&state, &project, Role::Admin).await?;
    let update = judge(request.into_inner()?, false)?;
    Ok(Json(
        state
            .store
            .update_webhook(&caller.actor(), &project, &id, &update)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/webhooks/{id}", tag = "webhooks", summary = "Delete a webhook and its delivery log (project admins)", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Webhook id")), responses((status = 204), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require(&state, &project, Role::Admin).await?;
    state
        .store
        .delete_webhook(&caller.actor(), &project, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/webhooks/{id}/rotate-secret", tag = "webhooks", summary = "Replace a webhook's signing secret at once (project admins); the new one is shown once", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Webhook id")), responses((status = 200, body = WebhookCreated), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
async fn rotate_webhook_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<WebhookCreated>> {
    caller.require(&state, &project, Role::Admin).await?;
    let secret = new_secret()?;
    let webhook = state
        .store
        .rotate_webhook_secret(&caller.actor(), &project, &id, &secret)
        .await?;
    Ok(Json(WebhookCreated { webhook, secret }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveryQuery {
    /// At most this many (1 to 1,000; 100 by default).
    pub(crate) limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/webhooks/{id}/deliveries", tag = "webhooks", summary = "A webhook's delivery log, newest first: attempts, status, last answer or error", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Webhook id"), DeliveryQuery), responses((status = 200, body = Vec<WebhookDelivery>), (status = 400, description = "A bad limit", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    query: Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<WebhookDelivery>>> {
    caller.require(&state, &project, Role::Viewer).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if query.limit.is_some_and(|l| l == 0 || l > 1_000) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    Ok(Json(
        state
            .store
            .webhook_deliveries(&project, &id, query.limit.unwrap_or(100))
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/webhooks/{id}/test", tag = "webhooks", summary = "Send a `ping` event to this webhook now, even a disabled one (project admins); watch its delivery log", params(("project" = String, Path, description = "Project key"), ("id" = String, Path, description = "Webhook id")), responses((status = 202, body = WebhookDelivery), (status = 401, description = "No valid credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller lacks the role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn test_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<WebhookDelivery>)> {
    caller.require(&state, &project, Role::Admin).await?;
    let data = serde_json::json!({ "actor": caller.actor() });
    let delivery = super::queue(&state, &project, events::PING, &data, Some(&id))
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal("no test delivery was queued".into()))?;
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}
