//! The one error type of the management commands, and its exit code.

use serde_json::Value;

/// What can go wrong in a management command. Every variant prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments that clap could not catch (JSON in an option, a missing URL).
    #[error("{0}")]
    Usage(String),
    /// No token, or the server refused it (401), or the caller lacks the role (403).
    #[error("{0}")]
    Auth(String),
    /// The server answered 404 or 410.
    #[error("{0}")]
    NotFound(String),
    /// The server answered with another error: validation, conflict, stale version, failure.
    #[error("{0}")]
    Server(String),
    /// The request never got an answer.
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// Reading or writing a local file.
    #[error("{0}")]
    Local(String),
    /// `anchor scan --fail-on-stale` found stale flags (the report is printed already).
    #[error("{0}")]
    Stale(String),
}

impl CliError {
    /// The documented exit codes (see `args::EXIT_CODES`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Server(_) | Self::Local(_) => 1,
            Self::Usage(_) => 2,
            Self::Auth(_) => 3,
            Self::NotFound(_) => 4,
            Self::Unreachable { .. } => 5,
            Self::Stale(_) => 6,
        }
    }

    /// The error a server's answer stands for: an RFC 9457 problem, read into one line
    /// (`422 Unprocessable Entity: … (/variants/0/name: must not be empty; …)`), or the start of
    /// whatever else the body was.
    pub fn from_response(status: u16, body: &str) -> Self {
        let line = match serde_json::from_str::<Value>(body) {
            Ok(problem) if problem.get("title").is_some() || problem.get("detail").is_some() => {
                problem_line(status, &problem)
            }
            _ => {
                let text: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
                let text: String = text.chars().take(200).collect();
                if text.is_empty() {
                    format!("the server answered {status}")
                } else {
                    format!("the server answered {status}: {text}")
                }
            }
        };
        match status {
            401 | 403 => Self::Auth(line),
            404 | 410 => Self::NotFound(line),
            _ => Self::Server(line),
        }
    }
}

fn problem_line(status: u16, problem: &Value) -> String {
    let title = problem["title"].as_str().unwrap_or("error");
    let errors: Vec<String> = problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let path = e["path"].as_str().unwrap_or("");
            let message = e["message"].as_str().unwrap_or("");
            if path.is_empty() {
                message.to_string()
            } else {
                format!("{path}: {message}")
            }
        })
        .collect();
    // With field errors the server's detail only repeats them, so each field is named once.
    let detail = if errors.is_empty() {
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches([':', ' '])
            .to_string()
    } else {
        errors.join("; ")
    };
    let line = if detail.is_empty() {
        format!("{status} {title}")
    } else {
        format!("{status} {title}: {detail}")
    };
    // One line, whatever the server put in its strings.
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_with_errors_reads_as_one_line_naming_each_field() {
        let body = r#"{"type": "x", "title": "Unprocessable Entity", "status": 422,
            "detail": "/variants/0/name: must not be empty; in environment",
            "errors": [{"path": "/variants/0/name", "message": "must not be empty"},
                       {"path": "", "message": "in environment `production`:\nbad"}]}"#;
        let error = CliError::from_response(422, body);
        assert_eq!(
            error.to_string(),
            "422 Unprocessable Entity: /variants/0/name: must not be empty; \
             in environment `production`: bad"
        );
        let conflict = r#"{"title": "Conflict", "status": 409, "detail": "the key exists"}"#;
        assert_eq!(
            CliError::from_response(409, conflict).to_string(),
            "409 Conflict: the key exists"
        );
        assert_eq!(error.exit_code(), 1);
    }

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        for (status, code) in [(400, 1), (401, 3), (403, 3), (404, 4), (409, 1), (500, 1)] {
            assert_eq!(
                CliError::from_response(status, "").exit_code(),
                code,
                "{status}"
            );
        }
    }

    #[test]
    fn a_body_that_is_no_problem_is_shortened_to_one_line() {
        let body = format!("<html>\n{}</html>", "x".repeat(500));
        let line = CliError::from_response(502, &body).to_string();
        assert!(
            line.starts_with("the server answered 502: <html> xxx"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert!(line.len() < 250);
    }
}
