//! The HTTP client of the management API: bearer-token requests, JSON in and out, and every
//! failure turned into a `CliError` that reads as one line.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::config::Token;
use crate::error::CliError;

#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Token,
}

/// A successful answer: its status (202 when the server held a write as a change request) and
/// its JSON body (`Null` when there was none).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Api {
    pub fn new(base: &str, token: Token) -> Result<Self, CliError> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "the server URL must start with http:// or https://, not `{base}`"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("anchor-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Local(format!("setting up HTTP: {e}")))?;
        Ok(Self { http, base, token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; `if_match` carries a version read before, so a concurrent change
    /// gives 412 instead of being overwritten.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> Result<Answer, CliError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(version) = if_match {
            request = request.header("if-match", format!("\"{version}\""));
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(CliError::from_response(status.as_u16(), &text));
        }
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                CliError::Server(format!("the server's answer is not JSON ({status}): {e}"))
            })?
        };
        Ok(Answer { status, body })
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        Ok(self.send(Method::GET, path, None, None).await?.body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Answer, CliError> {
        self.send(Method::POST, path, Some(body), None).await
    }

    pub async fn put(
        &self,
        path: &str,
        body: &Value,
        if_match: Option<u64>,
    ) -> Result<Answer, CliError> {
        self.send(Method::PUT, path, Some(body), if_match).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Answer, CliError> {
        self.send(Method::PATCH, path, Some(body), None).await
    }

    pub async fn delete(&self, path: &str) -> Result<Answer, CliError> {
        self.send(Method::DELETE, path, None, None).await
    }

    fn unreachable(&self, error: &reqwest::Error) -> CliError {
        // reqwest's Display stops at the outermost layer ("error sending request"); the
        // sources say what actually happened (connection refused, DNS, TLS).
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            let text = inner.to_string();
            if !reason.contains(&text) {
                reason = format!("{reason}: {text}");
            }
            source = inner.source();
        }
        CliError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }
}

/// One path segment, percent-encoded: keys are restricted by the server, but anything a person
/// types must stay inside its segment.
pub fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A query string from the pairs whose value is set.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", seg(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_keep_keys_and_escape_everything_else() {
        assert_eq!(seg("new-checkout_v2.1"), "new-checkout_v2.1");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(
            query(&[("flag", Some("x y".into())), ("limit", None)]),
            "?flag=x%20y"
        );
    }
}
