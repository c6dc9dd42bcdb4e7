//! The tools `anchor mcp` offers, each one or a few calls of the management API. Results are
//! JSON text; failures are error results (`isError`) carrying the CLI's one-line message, so
//! the assistant reads what went wrong and the server keeps running.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::request::Parts;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth;
use super::code::{self, Kind, Language};
use crate::commands::targeting::{TOTAL_WEIGHT, default_rest};
use crate::config::Token;
use crate::error::CliError;
use crate::http::{Answer, Api, query, seg};

/// Whose token the tools act with.
#[derive(Debug, Clone)]
pub enum Access {
    /// One client for every call (stdio: the local user's token), or why there is none.
    Fixed(Result<Api, String>),
    /// Each call's own caller (HTTP): the bearer token of the request that carried the call,
    /// sent to this server URL (or why there is none).
    PerCaller {
        url: Result<String, String>,
        /// The client of the session's latest caller, reused while the token is the same so
        /// calls share its connections (and TLS sessions) instead of opening new ones.
        last: Arc<Mutex<Option<(Token, Api)>>>,
    },
}

impl Access {
    pub fn per_caller(url: Result<String, String>) -> Self {
        Self::PerCaller {
            url,
            last: Arc::default(),
        }
    }
}

#[derive(Clone)]
pub struct Anchor {
    access: Access,
    project: String,
    environment: String,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor")
            .field("access", &self.access)
            .field("project", &self.project)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

// Parameters: each field's doc comment is its description in the tool's JSON schema.

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListFlagsParams {
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
    /// Only flags whose key or description contains this text
    pub search: Option<String>,
    /// Only flags with this tag
    pub tag: Option<String>,
    /// Include archived flags
    #[serde(default)]
    pub archived: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ProjectParams {
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FlagParams {
    /// The flag key
    pub flag: String,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateFlagParams {
    /// The new flag's key (letters, digits, `-`, `_`, `.`)
    pub key: String,
    /// boolean (default), string, number or json
    pub kind: Option<String>,
    /// The variants, e.g. [{"name": "blue", "value": "#00f"}]; a boolean flag gets `on` (true)
    /// and `off` (false) when none are given
    pub variants: Option<Vec<Value>>,
    /// What the flag is for
    pub description: Option<String>,
    /// Tags
    pub tags: Option<Vec<String>>,
    /// temporary (a release or experiment, to be removed) or permanent
    pub lifecycle: Option<String>,
    /// For a temporary flag, the day it should be gone from the code (YYYY-MM-DD)
    pub cleanup_date: Option<String>,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateTargetingParams {
    /// The flag key
    pub flag: String,
    /// The environment key, e.g. production [default: the one `anchor mcp` was started with]
    pub environment: Option<String>,
    /// Replaces the rules: each {"id"?, "conditions": [{"attribute", "operator", "values"}],
    /// "serve": {"variant": …} or {"rollout": {"variants": [{"variant", "weight"}]}}};
    /// weights are out of 100000
    pub rules: Option<Vec<Value>>,
    /// Replaces the default serve (the fallthrough): {"variant": "on"} or {"rollout": …}
    pub default_serve: Option<Value>,
    /// Replaces the individual targets: variant name to the targeting keys that always get it
    pub targets: Option<Map<String, Value>>,
    /// Why: recorded in the audit log
    pub comment: Option<String>,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ToggleParams {
    /// The flag key
    pub flag: String,
    /// The environment key, e.g. production [default: the one `anchor mcp` was started with]
    pub environment: Option<String>,
    /// true: the flag serves its rules and default serve; false: everyone gets its off variant
    pub on: bool,
    /// Why: recorded in the audit log
    pub comment: Option<String>,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RolloutParams {
    /// The flag key
    pub flag: String,
    /// The environment key [default: the one `anchor mcp` was started with]
    pub environment: Option<String>,
    /// The variant rolled out, e.g. on
    pub variant: String,
    /// The share of contexts that get it, 0 to 100 (three decimals)
    pub percent: f64,
    /// The variant everyone else gets [default: the other of two variants, else the off variant]
    pub rest: Option<String>,
    /// Why: recorded in the audit log
    pub comment: Option<String>,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StartReleaseParams {
    /// The flag key
    pub flag: String,
    /// The environment key, e.g. production [default: the one `anchor mcp` was started with]
    pub environment: Option<String>,
    /// The variant served today (e.g. off)
    pub control: String,
    /// The variant being released (e.g. on)
    pub treatment: String,
    /// A release template name (stages and guardrails) [default: the server's]
    pub template: Option<String>,
    /// Release through this rule's serve instead of the default serve
    pub rule: Option<String>,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReleaseParams {
    /// A release id, or a flag key: then that flag's release in the environment (its active one
    /// if any, else its latest)
    pub release: String,
    /// The environment of the flag's release [default: the one `anchor mcp` was started with]
    pub environment: Option<String>,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExplainParams {
    /// The flag key
    pub flag: String,
    /// The environment key [default: the one `anchor mcp` was started with]
    pub environment: Option<String>,
    /// The evaluation context, e.g. {"targetingKey": "user-42", "country": "DE"}
    pub context: Map<String, Value>,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AuditParams {
    /// Only entries about this flag
    pub flag: Option<String>,
    /// Only entries by this actor (a username or token name)
    pub actor: Option<String>,
    /// Only entries in this environment
    pub environment: Option<String>,
    /// At most this many entries, newest first [default: 50]
    pub limit: Option<u32>,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StaleParams {
    /// Directories or files of the codebase to search for flag references (relative paths are
    /// from the directory `anchor mcp` runs in)
    pub paths: Vec<String>,
    /// How many days a flag must have served one variant to everyone, unchanged, to be stale
    /// [default: 30]
    pub days: Option<u32>,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CodeParams {
    /// The flag key (its kind is read from the server)
    pub flag: String,
    /// rust (the Release Anchor SDK) or an OpenFeature SDK with the OFREP provider:
    /// javascript, typescript, python, go, java, csharp
    pub language: Language,
    /// The project key [default: the one `anchor mcp` was started with]
    pub project: Option<String>,
}

/// A tool's outcome before it becomes a result: JSON for the assistant, or the error line.
type Outcome = Result<Value, CliError>;

fn result(outcome: Outcome) -> CallToolResult {
    match outcome {
        Ok(Value::String(text)) => CallToolResult::success(vec![ContentBlock::text(text)]),
        Ok(value) => CallToolResult::success(vec![ContentBlock::text(
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string()),
        )]),
        Err(error) => CallToolResult::error(vec![ContentBlock::text(error.to_string())]),
    }
}

/// A write's answer; a 202 means the environment requires approval and nothing changed yet.
fn written(answer: Answer, environment: &str, done: &str) -> Value {
    if answer.status.as_u16() == 202 {
        let id = answer.body["id"].as_str().unwrap_or("?");
        json!({
            "applied": false,
            "message": format!(
                "NOT applied yet: {environment} requires approval, so change request {id} was \
                 created; it takes effect once another member approves it"
            ),
            "changeRequest": answer.body,
        })
    } else {
        json!({"applied": true, "message": done, "result": answer.body})
    }
}

#[tool_router]
impl Anchor {
    pub fn new(access: Access, project: String, environment: String) -> Self {
        Self {
            access,
            project,
            environment,
            tool_router: Self::tool_router(),
        }
    }

    fn api(&self) -> Result<&Api, CliError> {
        match &self.access {
            Access::Fixed(Ok(api)) => Ok(api),
            Access::Fixed(Err(problem)) => Err(CliError::Usage(format!(
                "anchor mcp is not connected: {problem}"
            ))),
            // `call_tool` gives each call a `Fixed` copy; reaching this is a bug, refused
            // rather than served with some other token.
            Access::PerCaller { .. } => Err(CliError::Auth(
                "anchor mcp has no caller token for this call".into(),
            )),
        }
    }

    /// A copy for one MCP session: over HTTP it keeps its own latest caller's client, so no
    /// client (nor token) is kept across sessions.
    pub fn for_session(&self) -> Self {
        let mut session = self.clone();
        if let Access::PerCaller { url, .. } = &self.access {
            session.access = Access::per_caller(url.clone());
        }
        session
    }

    /// For an HTTP call, this server acting with the token of the request that carried it;
    /// `None` when the token is fixed (stdio).
    fn for_caller(&self, context: &RequestContext<RoleServer>) -> Option<Self> {
        let Access::PerCaller { url, last } = &self.access else {
            return None;
        };
        let api = url.as_ref().map_err(Clone::clone).and_then(|url| {
            let parts = context
                .extensions
                .get::<Parts>()
                .ok_or_else(|| "the call came without its HTTP request".to_string())?;
            let token = auth::bearer(&parts.headers).map_err(|missing| missing.to_string())?;
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((known, api)) = last.as_ref()
                && auth::same_secret(known.expose(), token)
            {
                return Ok(api.clone());
            }
            let api = Api::new(url, Token::new(token)).map_err(|e| e.to_string())?;
            *last = Some((Token::new(token), api.clone()));
            Ok(api)
        });
        Some(Self {
            access: Access::Fixed(api),
            project: self.project.clone(),
            environment: self.environment.clone(),
            tool_router: self.tool_router.clone(),
        })
    }

    fn project_path(&self, project: Option<&String>, rest: &str) -> String {
        format!(
            "/api/v1/projects/{}{rest}",
            seg(project.unwrap_or(&self.project))
        )
    }

    fn env<'a>(&'a self, environment: Option<&'a String>) -> &'a str {
        environment.map_or(&self.environment, |e| e.as_str())
    }

    fn config_path(&self, project: Option<&String>, env: &str, flag: &str) -> String {
        self.project_path(
            project,
            &format!("/environments/{}/flags/{}", seg(env), seg(flag)),
        )
    }

    /// Reads the flag's configuration, lets `edit` change it, and writes it back with
    /// If-Match, so a change made meanwhile is refused (412) rather than overwritten.
    async fn edit_config(
        &self,
        project: Option<&String>,
        env: &str,
        flag: &str,
        comment: Option<String>,
        done: &str,
        edit: impl FnOnce(&mut Value) -> Result<(), CliError>,
    ) -> Outcome {
        let api = self.api()?;
        let path = self.config_path(project, env, flag);
        let mut config = api.get(&path).await?;
        let version = config["version"].as_u64();
        edit(&mut config)?;
        if let Some(comment) = comment {
            config["comment"] = json!(comment);
        }
        let answer = api.put(&path, &config, version).await?;
        Ok(written(answer, env, done))
    }

    async fn all_flags(
        &self,
        project: Option<&String>,
        filters: &[(&str, Option<String>)],
    ) -> Result<Vec<Value>, CliError> {
        let api = self.api()?;
        let mut flags = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut pairs = filters.to_vec();
            pairs.push(("limit", Some("1000".into())));
            pairs.push(("after", after.clone()));
            let page = api
                .get(&self.project_path(project, &format!("/flags{}", query(&pairs))))
                .await?;
            flags.extend(page["items"].as_array().into_iter().flatten().cloned());
            match page["next"].as_str() {
                Some(next) if !next.is_empty() => after = Some(next.to_string()),
                _ => return Ok(flags),
            }
        }
    }

    /// A release id as given, or the release of the flag of that key in the environment.
    async fn resolve_release(
        &self,
        p: &ReleaseParams,
        active_only: bool,
    ) -> Result<String, CliError> {
        let api = self.api()?;
        let env = self.env(p.environment.as_ref());
        let releases = api
            .get(&self.project_path(p.project.as_ref(), "/releases"))
            .await?;
        let releases = releases.as_array().cloned().unwrap_or_default();
        if releases.iter().any(|r| r["id"] == p.release.as_str()) {
            return Ok(p.release.clone());
        }
        let mut of_flag: Vec<&Value> = releases
            .iter()
            .filter(|r| r["flag"] == p.release.as_str() && r["environment"] == env)
            .filter(|r| !active_only || r["active"] == true)
            .collect();
        of_flag.sort_by_key(|r| r["createdAt"].as_i64().unwrap_or(0));
        of_flag
            .last()
            .and_then(|r| r["id"].as_str())
            .map(String::from)
            .ok_or_else(|| {
                CliError::NotFound(format!(
                    "no {}release with id `{}`, nor of a flag `{}` in {env}",
                    if active_only { "active " } else { "" },
                    p.release,
                    p.release
                ))
            })
    }

    async fn release_command(&self, p: &ReleaseParams, command: &str) -> Outcome {
        let id = self.resolve_release(p, true).await?;
        let answer = self
            .api()?
            .post(
                &self.project_path(
                    p.project.as_ref(),
                    &format!("/releases/{}/commands", seg(&id)),
                ),
                &json!({ "command": command }),
            )
            .await?;
        Ok(answer.body)
    }

    #[tool(
        description = "List the project's flags: key, kind, variants, and each environment's \
                       configuration (enabled, default serve, rules).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_flags(&self, Parameters(p): Parameters<ListFlagsParams>) -> CallToolResult {
        result(
            self.all_flags(
                p.project.as_ref(),
                &[
                    ("q", p.search),
                    ("tag", p.tag),
                    ("archived", p.archived.then(|| "true".to_string())),
                ],
            )
            .await
            .map(Value::from),
        )
    }

    #[tool(
        description = "List the project's environments in display order: key, name, position, \
                       and whether changes there need approval or a comment.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_environments(&self, Parameters(p): Parameters<ProjectParams>) -> CallToolResult {
        let outcome = async {
            self.api()?
                .get(&self.project_path(p.project.as_ref(), "/environments"))
                .await
        };
        result(outcome.await)
    }

    #[tool(
        description = "Get one flag: its definition (kind, variants, lifecycle) and its \
                       configuration in every environment.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_flag(&self, Parameters(p): Parameters<FlagParams>) -> CallToolResult {
        result(self.get_flag_record(p.project.as_ref(), &p.flag).await)
    }

    #[tool(
        description = "Create a flag. It starts disabled in every environment (serving its off \
                       variant). A boolean flag gets variants on/off unless given.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_flag(&self, Parameters(p): Parameters<CreateFlagParams>) -> CallToolResult {
        let outcome = async {
            let kind = p.kind.unwrap_or_else(|| "boolean".into());
            let variants = match p.variants {
                Some(variants) => Value::from(variants),
                None if kind == "boolean" => {
                    json!([{"name": "on", "value": true}, {"name": "off", "value": false}])
                }
                None => {
                    return Err(CliError::Usage(format!(
                        "a {kind} flag needs its variants, e.g. [{{\"name\": \"a\", \"value\": …}}]"
                    )));
                }
            };
            let mut flag = json!({"key": p.key, "kind": kind, "variants": variants});
            for (field, value) in [
                ("description", p.description.map(Value::from)),
                ("tags", p.tags.map(Value::from)),
                ("lifecycle", p.lifecycle.map(Value::from)),
                ("cleanupDate", p.cleanup_date.map(Value::from)),
            ] {
                if let Some(value) = value {
                    flag[field] = value;
                }
            }
            let answer = self
                .api()?
                .post(&self.project_path(p.project.as_ref(), "/flags"), &flag)
                .await?;
            Ok(answer.body)
        };
        result(outcome.await)
    }

    #[tool(
        description = "Change a flag's targeting in one environment: replace its rules, its \
                       default serve and/or its individual targets (fields not given are kept). \
                       In an environment that requires approval this creates a change request \
                       instead of applying.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn update_targeting(
        &self,
        Parameters(p): Parameters<UpdateTargetingParams>,
    ) -> CallToolResult {
        let env = self.env(p.environment.as_ref()).to_string();
        if p.rules.is_none() && p.default_serve.is_none() && p.targets.is_none() {
            return result(Err(CliError::Usage(
                "give at least one of rules, defaultServe, targets".into(),
            )));
        }
        let done = format!("{}'s targeting in {env} was updated", p.flag);
        result(
            self.edit_config(
                p.project.as_ref(),
                &env,
                &p.flag,
                p.comment,
                &done,
                |config| {
                    if let Some(rules) = p.rules {
                        config["rules"] = Value::from(rules);
                    }
                    if let Some(serve) = p.default_serve {
                        config["defaultServe"] = serve;
                    }
                    if let Some(targets) = p.targets {
                        config["targets"] = Value::Object(targets);
                    }
                    Ok(())
                },
            )
            .await,
        )
    }

    #[tool(
        description = "Turn a flag on or off in an environment. Off is the kill switch: \
                       everyone gets the off variant. In an environment that requires approval \
                       turning on creates a change request instead of applying.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn toggle_flag(&self, Parameters(p): Parameters<ToggleParams>) -> CallToolResult {
        let env = self.env(p.environment.as_ref()).to_string();
        let done = format!("{} is {} in {env}", p.flag, if p.on { "on" } else { "off" });
        result(
            self.edit_config(
                p.project.as_ref(),
                &env,
                &p.flag,
                p.comment,
                &done,
                |config| {
                    config["enabled"] = json!(p.on);
                    Ok(())
                },
            )
            .await,
        )
    }

    #[tool(
        description = "Serve a variant to a percentage of contexts by default in an environment \
                       (a sticky rollout; everyone else gets the rest variant). Rules and \
                       targets still apply first.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn set_rollout(&self, Parameters(p): Parameters<RolloutParams>) -> CallToolResult {
        let outcome = async {
            if !(0.0..=100.0).contains(&p.percent) {
                return Err(CliError::Usage(format!(
                    "percent must be between 0 and 100, not {}",
                    p.percent
                )));
            }
            let env = self.env(p.environment.as_ref()).to_string();
            let record = self.get_flag_record(p.project.as_ref(), &p.flag).await?;
            let names: Vec<String> = record["flag"]["variants"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["name"].as_str().map(String::from))
                .collect();
            let weight = (p.percent / 100.0 * TOTAL_WEIGHT).round() as u32;
            let done = format!(
                "{} serves {} to {}% in {env} by default",
                p.flag, p.variant, p.percent
            );
            self.edit_config(
                p.project.as_ref(),
                &env,
                &p.flag,
                p.comment,
                &done,
                |config| {
                    let rest = match p.rest {
                        Some(rest) => rest,
                        None => default_rest(&names, &p.variant, &config["offVariant"]).map_err(
                            |_| {
                                CliError::Usage(
                                    "name the variant everyone else gets in rest".into(),
                                )
                            },
                        )?,
                    };
                    if rest == p.variant {
                        return Err(CliError::Usage(
                            "rest must name another variant than the one rolled out".into(),
                        ));
                    }
                    let mut rollout = json!({"variants": [
                        {"variant": p.variant, "weight": weight},
                        {"variant": rest, "weight": TOTAL_WEIGHT as u32 - weight}
                    ]});
                    // Keep the existing bucketing so contexts already in keep their variant.
                    let old = &config["defaultServe"]["rollout"];
                    for key in ["bucketBy", "salt"] {
                        if !old[key].is_null() {
                            rollout[key] = old[key].clone();
                        }
                    }
                    config["defaultServe"] = json!({ "rollout": rollout });
                    Ok(())
                },
            )
            .await
        };
        result(outcome.await)
    }

    #[tool(
        description = "Start a progressive release of a flag in an environment: traffic moves \
                       from the control variant to the treatment in stages, guarded by \
                       sequential tests of error rate and latency that roll back on regression.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn start_release(&self, Parameters(p): Parameters<StartReleaseParams>) -> CallToolResult {
        let outcome = async {
            let env = self.env(p.environment.as_ref());
            let answer = self
                .api()?
                .post(
                    &format!(
                        "{}/releases",
                        self.config_path(p.project.as_ref(), env, &p.flag)
                    ),
                    &json!({"control": p.control, "treatment": p.treatment,
                            "template": p.template, "rule": p.rule}),
                )
                .await?;
            Ok(written(answer, env, "the release started"))
        };
        result(outcome.await)
    }

    #[tool(
        description = "Inspect a release: its state, stage, share of traffic on the treatment, \
                       and the guardrails' latest verdicts.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_release(&self, Parameters(p): Parameters<ReleaseParams>) -> CallToolResult {
        let outcome = async {
            let id = self.resolve_release(&p, false).await?;
            self.api()?
                .get(&self.project_path(p.project.as_ref(), &format!("/releases/{}", seg(&id))))
                .await
        };
        result(outcome.await)
    }

    #[tool(
        description = "Pause a running release: it holds its current share of traffic until \
                       resumed.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn pause_release(&self, Parameters(p): Parameters<ReleaseParams>) -> CallToolResult {
        result(self.release_command(&p, "pause").await)
    }

    #[tool(
        description = "Roll a release back: everyone gets the control variant again and the \
                       release ends.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn rollback_release(&self, Parameters(p): Parameters<ReleaseParams>) -> CallToolResult {
        result(self.release_command(&p, "rollBack").await)
    }

    #[tool(
        description = "Explain an evaluation: which variant and value a context gets from a flag \
                       in an environment, and why, step by step (targets, rules, rollout \
                       bucket, prerequisites).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn explain_evaluation(&self, Parameters(p): Parameters<ExplainParams>) -> CallToolResult {
        let outcome = async {
            let env = self.env(p.environment.as_ref());
            let answer = self
                .api()?
                .post(
                    &format!(
                        "{}/evaluate",
                        self.config_path(p.project.as_ref(), env, &p.flag)
                    ),
                    &Value::Object(p.context),
                )
                .await?;
            Ok(answer.body)
        };
        result(outcome.await)
    }

    #[tool(
        description = "Read the project's audit log, newest first: who changed what, where, \
                       when, and why.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn read_audit_log(&self, Parameters(p): Parameters<AuditParams>) -> CallToolResult {
        let outcome = async {
            let path = self.project_path(
                p.project.as_ref(),
                &format!(
                    "/audit{}",
                    query(&[
                        ("flag", p.flag),
                        ("actor", p.actor),
                        ("environment", p.environment),
                        ("limit", Some(p.limit.unwrap_or(50).to_string())),
                    ])
                ),
            );
            self.api()?.get(&path).await
        };
        result(outcome.await)
    }

    #[tool(
        description = "Find stale flags: searches the given code paths for each flag key and \
                       reports flags referenced nowhere, archived but still referenced, past \
                       their cleanup date, or serving one variant to everyone for N days, with \
                       their references (file:line) so they can be removed.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn find_stale_flags(&self, Parameters(p): Parameters<StaleParams>) -> CallToolResult {
        let outcome = async {
            if p.paths.is_empty() {
                return Err(CliError::Usage("give at least one path to search".into()));
            }
            let records = self
                .all_flags(p.project.as_ref(), &[("archived", Some("true".into()))])
                .await?;
            // The same scanner as `anchor scan` (SDK call patterns, .gitignore), so the
            // assistant and the CLI give one verdict.
            let paths: Vec<PathBuf> = p.paths.iter().map(PathBuf::from).collect();
            let scan = tokio::task::spawn_blocking(move || {
                crate::scan::find_references(&paths, &crate::scan::ScanOptions::default())
            })
            .await
            .map_err(|e| CliError::Local(format!("searching the code: {e}")))?;
            let server: Vec<crate::scan::ServerFlag> = records
                .iter()
                .filter_map(crate::scan::ServerFlag::from_json)
                .collect();
            let (now_ms, _) = now();
            let stale: Vec<Value> = crate::scan::classify(
                &scan.references,
                Some(&server),
                now_ms,
                p.days.unwrap_or(30),
            )
            .into_iter()
            .filter(|report| !report.stale.is_empty())
            .map(|report| {
                json!({
                    "flag": report.key,
                    "onServer": report.on_server,
                    "stale": report.stale,
                    "reasons": report.reasons,
                    "references": report.references,
                })
            })
            .collect();
            Ok(json!({"flagsOnServer": records.len(), "filesScanned": scan.files, "stale": stale}))
        };
        result(outcome.await)
    }

    #[tool(
        description = "Generate the code that evaluates a flag in an application: the Release \
                       Anchor Rust SDK, or an OpenFeature SDK with the OFREP provider \
                       (javascript, typescript, python, go, java, csharp), with the flag's real \
                       key, its kind's typed getter, and this server's URL.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn generate_flag_code(&self, Parameters(p): Parameters<CodeParams>) -> CallToolResult {
        let outcome = async {
            let record = self.get_flag_record(p.project.as_ref(), &p.flag).await?;
            let kind = record["flag"]["kind"].as_str().unwrap_or("");
            let kind = Kind::parse(kind).ok_or_else(|| {
                CliError::Server(format!("the server names an unknown flag kind `{kind}`"))
            })?;
            let server = self.api()?.base().to_string();
            Ok(Value::String(code::snippet(
                p.language, &p.flag, kind, &server,
            )))
        };
        result(outcome.await)
    }
}

impl Anchor {
    async fn get_flag_record(&self, project: Option<&String>, flag: &str) -> Outcome {
        self.api()?
            .get(&self.project_path(project, &format!("/flags/{}", seg(flag))))
            .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Anchor {
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = self.for_caller(&context);
        let server = caller.as_ref().unwrap_or(self);
        self.tool_router
            .call(ToolCallContext::new(server, request, context))
            .await
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("anchor", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Release Anchor feature flags. Tools act with the caller's personal access token \
                 and its roles. Unless a tool is given `project`/`environment`, it acts in \
                 project `{}` and environment `{}`. Writes in environments that require \
                 approval create change requests (the result says `applied: false`).",
                self.project, self.environment
            ))
    }
}

/// Now in milliseconds since the epoch, and today's UTC date as `YYYY-MM-DD`.
fn now() -> (i64, String) {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    (ms, civil_date(ms.div_euclid(86_400_000)))
}

/// The proleptic Gregorian date of a day number since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), to compare with cleanup dates without a date library.
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_become_calendar_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_414), "2025-11-22");
    }

    #[test]
    fn every_tool_has_a_description_and_a_schema_and_writes_say_whether_they_destroy() {
        let tools = Anchor::tool_router().list_all();
        assert_eq!(tools.len(), 15);
        for tool in &tools {
            assert!(
                tool.description.as_ref().is_some_and(|d| d.len() > 40),
                "{}",
                tool.name
            );
            let annotations = tool.annotations.as_ref().expect("annotations");
            if annotations.read_only_hint != Some(true) {
                assert!(annotations.destructive_hint.is_some(), "{}", tool.name);
                assert!(annotations.idempotent_hint.is_some(), "{}", tool.name);
            }
        }
    }
}
