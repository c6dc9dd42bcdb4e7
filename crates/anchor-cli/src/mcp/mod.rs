//! `anchor mcp`: a Model Context Protocol server for AI assistants, over stdio or streamable
//! HTTP. Every tool is a call of the management API with a personal access token, so an
//! assistant can do exactly what that token may do and the server enforces the roles. Over
//! stdio that is the local user's token; over HTTP it is each caller's own, sent as
//! `Authorization: Bearer` with every request (`auth.rs`), so the port grants nothing by
//! itself and several people can share one server.
//!
//! It starts without a server or a token: listing tools works, and each tool call answers
//! with an error result saying what is missing, so an assistant can tell its user.

mod auth;
mod code;
mod tools;

use std::io::Write;

use crate::args::{Global, McpArgs};
use crate::config::{self, Token};
use crate::error::CliError;
use crate::http::Api;
use tools::Access;

/// Serves until stdin closes (stdio) or until interrupted (HTTP).
pub async fn run(global: Global, args: McpArgs) -> Result<(), CliError> {
    let access = match &args.http {
        None => Access::Fixed(connect(&global)),
        Some(_) => {
            if global.token.is_some() {
                let _ = writeln!(
                    std::io::stderr(),
                    "anchor mcp: over HTTP the token given is not used: each caller sends \
                     their own as `Authorization: Bearer`"
                );
            }
            Access::per_caller(server_url(&global))
        }
    };
    if let Access::Fixed(Err(problem))
    | Access::PerCaller {
        url: Err(problem), ..
    } = &access
    {
        // stderr is the MCP client's log; stdout belongs to the protocol.
        let _ = writeln!(
            std::io::stderr(),
            "anchor mcp: tool calls will fail until this is fixed: {problem}"
        );
    }
    let server = tools::Anchor::new(access, global.project, global.env);
    match args.http {
        None => serve_stdio(server).await,
        Some(listen) => serve_http(server, &listen).await,
    }
}

/// The client, or why there is none (no URL, no token, a malformed URL).
fn connect(global: &Global) -> Result<Api, String> {
    let stored = config::load().map_err(|e| e.to_string())?;
    let url = url(global, stored.url)?;
    let token = global
        .token
        .clone()
        .map(Token::new)
        .or(stored.token)
        .ok_or_else(|| {
            "no token: run `anchor login <url>`, or give --token or ANCHOR_TOKEN to `anchor mcp`"
                .to_string()
        })?;
    Api::new(&url, token).map_err(|e| e.to_string())
}

/// The server URL the HTTP callers' tokens are sent to, checked now so a malformed one is
/// reported at start rather than at each call.
fn server_url(global: &Global) -> Result<String, String> {
    let stored = config::load().map_err(|e| e.to_string())?;
    let url = url(global, stored.url)?;
    // Api::new is the one place a URL is judged; the throwaway token is never sent.
    Api::new(&url, Token::new(String::new())).map_err(|e| e.to_string())?;
    Ok(url)
}

fn url(global: &Global, stored: Option<String>) -> Result<String, String> {
    global.url.clone().or(stored).ok_or_else(|| {
        "no server: run `anchor login <url>`, or give --url or ANCHOR_URL to `anchor mcp`"
            .to_string()
    })
}

async fn serve_stdio(server: tools::Anchor) -> Result<(), CliError> {
    use rmcp::ServiceExt;
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| CliError::Local(format!("starting MCP over stdio: {e}")))?;
    running
        .waiting()
        .await
        .map_err(|e| CliError::Local(format!("MCP over stdio: {e}")))?;
    Ok(())
}

async fn serve_http(server: tools::Anchor, listen: &str) -> Result<(), CliError> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Local(format!("listening on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::Local(format!("listening on {listen}: {e}")))?;
    // The default host allow-list (loopback names) guards against DNS rebinding; the address
    // actually bound is added so a client may use it verbatim.
    let mut config = StreamableHttpServerConfig::default();
    config.allowed_hosts.push(local.to_string());
    config.allowed_hosts.push(local.ip().to_string());
    let service: StreamableHttpService<tools::Anchor, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(server.for_session()), Default::default(), config);
    // Every request, whatever its method (POST calls, GET streams, DELETE ends a session),
    // must say who is calling; the tools then act with that caller's token.
    let router = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(auth::require_bearer));
    let _ = writeln!(
        std::io::stderr(),
        "anchor mcp: streamable HTTP on http://{local}/mcp"
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| CliError::Local(format!("serving MCP over HTTP: {e}")))
}
