//! The management commands: each resolves its arguments, calls the REST API through
//! `http::Api` and prints through `output::Out`. Nothing here knows about the server's
//! internals; the wire shapes are those of `docs/openapi.json`.

mod envs;
mod flags;
mod history;
mod login;
mod misc;
mod release;
mod scan;
mod segments;
pub(crate) mod targeting;
mod transfer;

use serde_json::Value;

use crate::args::{Command, Global, Output};
use crate::config::{self, Token};
use crate::error::CliError;
use crate::http::{Api, seg};
use crate::output::Out;

/// Everything a command needs: the client, where it acts, and how it prints.
#[derive(Debug)]
pub struct Ctx {
    pub api: Api,
    pub project: String,
    pub env: String,
    pub out: Out,
}

impl Ctx {
    /// `/api/v1/projects/<project><rest>`
    pub fn project_path(&self, rest: &str) -> String {
        format!("/api/v1/projects/{}{rest}", seg(&self.project))
    }

    /// `/api/v1/projects/<project>/environments/<env><rest>`
    pub fn env_path(&self, rest: &str) -> String {
        self.env_path_of(&self.env, rest)
    }

    pub fn env_path_of(&self, env: &str, rest: &str) -> String {
        format!(
            "/api/v1/projects/{}/environments/{}{rest}",
            seg(&self.project),
            seg(env)
        )
    }

    /// `…/environments/<env>/flags/<flag><rest>`
    pub fn config_path(&self, flag: &str, rest: &str) -> String {
        self.env_path(&format!("/flags/{}{rest}", seg(flag)))
    }
}

/// Runs a management command (everything but `serve`).
pub async fn run(global: Global, command: Command) -> Result<(), CliError> {
    let out = Out::new(global.output, global.quiet);
    if global.output == Output::Sarif && !matches!(command, Command::Scan(_)) {
        return Err(CliError::Usage(
            "--output sarif is only for `anchor scan`".to_string(),
        ));
    }
    if let Command::Login(args) = command {
        return login::login(&args.server, global.token, out).await;
    }
    if let Command::Scan(args) = &command
        && args.offline
    {
        return scan::offline(args, global.output, out);
    }
    let stored = config::load()?;
    let url = global.url.or(stored.url).ok_or_else(|| {
        CliError::Usage(
            "no server: run `anchor login <url>`, or give --url or ANCHOR_URL".to_string(),
        )
    })?;
    let token = global
        .token
        .map(Token::new)
        .or(stored.token)
        .ok_or_else(|| {
            CliError::Auth(
                "no token: run `anchor login <url>`, or give --token or ANCHOR_TOKEN".to_string(),
            )
        })?;
    let ctx = Ctx {
        api: Api::new(&url, token)?,
        project: global.project,
        env: global.env,
        out,
    };
    match command {
        // Handled before: they need no client (serve) or make their own (login, mcp).
        Command::Serve(_) | Command::Login(_) | Command::Mcp(_) => Ok(()),
        Command::Envs(c) => envs::run(&ctx, c).await,
        Command::Flags(c) => flags::run(&ctx, c).await,
        Command::Targeting(c) => targeting::run(&ctx, c).await,
        Command::Segments(c) => segments::run(&ctx, c).await,
        Command::Release(c) => release::run(&ctx, c).await,
        Command::History(a) => history::history(&ctx, &a.flag).await,
        Command::Diff(a) => history::diff(&ctx, &a).await,
        Command::Revert(a) => history::revert(&ctx, &a).await,
        Command::Audit(a) => history::audit(&ctx, &a).await,
        Command::ChangeRequests(c) => misc::change_requests(&ctx, c).await,
        Command::Keys(c) => misc::keys(&ctx, c).await,
        Command::Evaluate(a) => misc::evaluate(&ctx, &a).await,
        Command::Export(a) => transfer::export(&ctx, &a).await,
        Command::Import(a) => transfer::import(&ctx, &a).await,
        Command::Scan(a) => scan::online(&ctx, &a, global.output).await,
    }
}

/// Reads a JSON or YAML file (`-` is stdin) into JSON. YAML is a superset of JSON, but JSON is
/// tried first so its error messages stay JSON's.
pub fn read_document(path: &std::path::Path) -> Result<Value, CliError> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::Local(format!("reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Local(format!("reading {}: {e}", path.display())))?
    };
    parse_document(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

pub fn parse_document(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        Err(json) if text.trim_start().starts_with(['{', '[']) => Err(format!("not JSON: {json}")),
        Err(_) => serde_norway::from_str(text).map_err(|e| format!("neither JSON nor YAML: {e}")),
    }
}

/// A configuration write that the server held as a change request (202) says so instead of
/// pretending it happened.
pub fn report_write(ctx: &Ctx, answer: &crate::http::Answer, done: &str) {
    if answer.status.as_u16() == 202 {
        let id = answer.body["id"].as_str().unwrap_or("?");
        ctx.out.show(&answer.body, |out| {
            out.say(&format!(
                "{} requires approval: change request {id} created (anchor change-requests get {id})",
                ctx.env
            ));
        });
    } else {
        ctx.out.show(&answer.body, |out| out.say(done));
    }
}

/// A serve (`{"variant": …}` or `{"rollout": …}`) in words: `on`, `on 25% / off 75%`.
pub fn serve_text(serve: &Value) -> String {
    if let Some(variant) = serve["variant"].as_str() {
        return variant.to_string();
    }
    if let Some(variants) = serve["rollout"]["variants"].as_array() {
        let parts: Vec<String> = variants
            .iter()
            .map(|v| {
                let weight = v["weight"].as_f64().unwrap_or(0.0);
                format!(
                    "{} {}%",
                    v["variant"].as_str().unwrap_or("?"),
                    format_percent(weight / 1000.0)
                )
            })
            .collect();
        return parts.join(" / ");
    }
    String::new()
}

pub fn format_percent(p: f64) -> String {
    let text = format!("{p:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
