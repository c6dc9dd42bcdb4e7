//! Who is calling `anchor mcp --http`. Every request to `/mcp` must carry
//! `Authorization: Bearer <personal access token>`; the tools then act with that token, so
//! people sharing one MCP server each do exactly what their own token may do and the Anchor
//! server enforces the roles. This layer only refuses requests without a well-formed bearer
//! (401, `application/problem+json`); whether the token is valid, and what it may do, only
//! the Anchor server knows, and it answers each tool call accordingly.
//!
//! The token is never logged or echoed: problems name the header, not its value.

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request has no usable bearer token; its `Display` is the problem's detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error(
        "the Authorization header is missing: send `Authorization: Bearer <personal access \
         token>` (the dashboard's Settings, or POST /api/v1/tokens, make one)"
    )]
    Header,
    #[error(
        "the Authorization header is malformed: it must be `Bearer <personal access token>`, \
         one token of visible ASCII characters"
    )]
    Malformed,
}

/// The bearer token of a request's headers.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Missing> {
    let value = headers.get(AUTHORIZATION).ok_or(Missing::Header)?;
    let value = value.to_str().map_err(|_| Missing::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Missing::Malformed)?;
    let token = token.trim();
    // RFC 6750's b64token: one run of visible characters, so a pasted line with spaces or a
    // second credential is refused here rather than sent on.
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Missing::Malformed);
    }
    Ok(token)
}

/// Equality of two secrets that takes as long whatever they share, so a caller cannot learn a
/// token byte by byte from how fast it is compared.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lets a request through only when it carries a well-formed bearer token.
pub async fn require_bearer(request: Request<Body>, next: Next) -> Response {
    match bearer(request.headers()) {
        Ok(_) => next.run(request).await,
        Err(missing) => unauthorized(missing),
    }
}

/// 401 with RFC 6750's challenge and an RFC 9457 problem saying what is missing.
fn unauthorized(missing: Missing) -> Response {
    let challenge = match missing {
        Missing::Header => "Bearer realm=\"anchor mcp\"",
        Missing::Malformed => "Bearer realm=\"anchor mcp\", error=\"invalid_request\"",
    };
    let problem = json!({
        "type": "https://release-anchor.dev/problems/unauthenticated",
        "title": "Unauthorized",
        "status": 401,
        "detail": missing.to_string(),
    });
    let mut response = (StatusCode::UNAUTHORIZED, problem.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(authorization: Option<&str>, expected: Result<&str, Missing>) {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        assert_eq!(bearer(&headers), expected, "{authorization:?}");
    }

    #[test]
    fn only_one_bearer_token_of_visible_characters_is_a_caller() {
        check(Some("Bearer anc_pat_abc"), Ok("anc_pat_abc"));
        check(Some("bearer  anc_pat_abc "), Ok("anc_pat_abc"));
        check(None, Err(Missing::Header));
        check(Some("Bearer"), Err(Missing::Malformed));
        check(Some("Bearer "), Err(Missing::Malformed));
        check(Some("Basic YWRtaW46eA=="), Err(Missing::Malformed));
        check(Some("Bearer one two"), Err(Missing::Malformed));
        check(Some("anc_pat_abc"), Err(Missing::Malformed));
    }

    #[test]
    fn secrets_are_the_same_only_when_every_byte_is() {
        assert!(same_secret("anc_pat_abc", "anc_pat_abc"));
        assert!(!same_secret("anc_pat_abc", "anc_pat_abd"));
        assert!(!same_secret("anc_pat_abc", "anc_pat_ab"));
        assert!(!same_secret("", "x"));
    }
}
