//! `anchor login`: check a token against the server, then store both.

use std::io::IsTerminal;

use crate::config::{self, Stored, Token};
use crate::error::CliError;
use crate::http::Api;
use crate::output::Out;

pub async fn login(server: &str, token: Option<String>, out: Out) -> Result<(), CliError> {
    let token = match token {
        Some(token) => token,
        None => prompt()?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(CliError::Usage("the token is empty".into()));
    }
    let api = Api::new(server, Token::new(token.clone()))?;
    // Listing one's own tokens needs nothing but a valid credential, so it tells a wrong URL
    // (unreachable, 404) and a wrong token (401) apart before anything is stored.
    let tokens = api.get("/api/v1/tokens").await.map_err(|e| match e {
        CliError::NotFound(line) => CliError::NotFound(format!(
            "{server} does not look like a Release Anchor server: {line}"
        )),
        other => other,
    })?;
    let path = config::save(&Stored {
        url: Some(api.base().to_string()),
        token: Some(Token::new(token)),
    })?;
    out.show(
        &serde_json::json!({"url": api.base(), "config": path.display().to_string(),
                            "tokens": tokens.as_array().map_or(0, Vec::len)}),
        |out| {
            out.say(&format!(
                "Logged in to {}; the token is stored in {}",
                api.base(),
                path.display()
            ))
        },
    );
    Ok(())
}

/// Asks for the token without echoing it on a terminal; reads one line from a pipe otherwise.
fn prompt() -> Result<String, CliError> {
    if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Personal access token (POST /api/v1/tokens creates one): ")
            .map_err(|e| CliError::Local(format!("reading the token: {e}")))
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| CliError::Local(format!("reading the token from stdin: {e}")))?;
        Ok(line)
    }
}
