//! Every error the API returns, mapped to HTTP in this one place as RFC 9457
//! `application/problem+json`.

use anchor_engine::Diagnostic;
use anchor_store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A write whose `If-Match` named a version that is no longer current.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    BadRequest(String),
    /// A request that is not what the route accepts, field by field: every problem with its
    /// JSON pointer, answered 400 (for bodies whose shape is the protocol, such as SDK
    /// telemetry, where 422's "valid JSON, invalid meaning" does not fit).
    #[error("the request is malformed")]
    Malformed(Vec<Diagnostic>),
    /// The request is well-formed JSON but invalid: every problem, each with its JSON pointer.
    #[error("the request is invalid")]
    Invalid(Vec<Diagnostic>),
    #[error("too many attempts; try again later")]
    TooManyRequests,
    #[error("the request body is larger than the limit of 1 MiB")]
    PayloadTooLarge,
    #[error("internal error")]
    Internal(String),
}

/// An RFC 9457 problem: what every error of the API looks like.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// With 422 (and with 400 for SDK telemetry): every problem, each with the JSON pointer of
    /// the offending value.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<Diagnostic>>,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::BadRequest(_) | ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PreconditionFailed(_) => "precondition-failed",
            ApiError::BadRequest(_) | ApiError::Malformed(_) => "bad-request",
            ApiError::Invalid(_) => "validation-failed",
            ApiError::TooManyRequests => "too-many-requests",
            ApiError::PayloadTooLarge => "payload-too-large",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ApiError {
    /// The status and the text a person may read, for the dashboard's HTML error pages: the
    /// same mapping as the problem details (an internal cause stays in the log).
    pub(crate) fn for_page(&self) -> (StatusCode, String) {
        if let ApiError::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
            return (
                self.status(),
                "the server failed; the error has been logged".into(),
            );
        }
        let detail = match self {
            ApiError::Invalid(d) | ApiError::Malformed(d) => d
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        (self.status(), detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            // The cause goes to the log, not to the caller.
            tracing::error!(%detail, "internal error");
        }
        let kind = format!("https://release-anchor.dev/problems/{}", self.kind());
        let detail = match &self {
            ApiError::Invalid(d) | ApiError::Malformed(d) => d
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            ApiError::Internal(_) => "the server failed; the error has been logged".into(),
            other => other.to_string(),
        };
        let body = Problem {
            kind,
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            errors: match &self {
                ApiError::Invalid(d) | ApiError::Malformed(d) => Some(d.clone()),
                _ => None,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, ApiError::Unauthenticated) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"release-anchor\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::AlreadyExists { .. } => ApiError::Conflict(e.to_string()),
            StoreError::VersionMismatch { .. } => ApiError::PreconditionFailed(e.to_string()),
            StoreError::Invalid(msg) => ApiError::BadRequest(msg),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Turns axum's JSON rejections into problems: 400 for malformed JSON, 422 for JSON of the
/// wrong shape (naming the field serde names), 413 for bodies over the limit.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection::*;
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge;
        }
        match r {
            JsonDataError(e) => ApiError::Invalid(vec![Diagnostic {
                path: String::new(),
                message: e.body_text(),
            }]),
            JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
            MissingJsonContentType(e) => ApiError::BadRequest(e.body_text()),
            BytesRejection(e) => ApiError::BadRequest(e.body_text()),
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
