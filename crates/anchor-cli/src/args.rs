//! The command line: every subcommand and option, as clap derives them. Parsing only; the
//! commands live in `commands`, the server in `serve`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const EXIT_CODES: &str = "Exit codes:
  0  success
  1  the server refused the request (validation, conflict, stale version) or failed
  2  usage error (bad arguments, bad --context JSON, no server URL configured)
  3  authentication or permission: no token, an invalid token, or a missing role
  4  not found (flag, segment, release, change request, project, environment)
  5  the server could not be reached
  6  `anchor scan --fail-on-stale` found stale flags";

#[derive(Parser, Debug)]
#[command(
    name = "anchor",
    version,
    about = "Release Anchor: feature flags and progressive delivery",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every management command takes. Flags override the environment variables, which
/// override the file `anchor login` writes.
#[derive(Args, Debug)]
pub struct Global {
    /// The server's URL [default: the one `anchor login` stored]
    #[arg(long, global = true, env = "ANCHOR_URL")]
    pub url: Option<String>,
    /// A personal access token [default: the one `anchor login` stored]
    #[arg(long, global = true, env = "ANCHOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The project
    #[arg(
        long,
        short = 'p',
        global = true,
        env = "ANCHOR_PROJECT",
        default_value = "default"
    )]
    pub project: String,
    /// The environment; development unless chosen, so production is only ever changed on purpose
    #[arg(
        long,
        short = 'e',
        global = true,
        env = "ANCHOR_ENV",
        default_value = "development"
    )]
    pub env: String,
    /// Tables for people, JSON for scripts, or SARIF 2.1.0 for code scanning (`anchor scan` only)
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Print nothing on success (errors still go to stderr; secrets and JSON still print)
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Sarif,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (management API; embedded SQLite store by default).
    Serve(ServeArgs),
    /// Verify a personal access token against a server and store both in the user's config
    /// directory ($XDG_CONFIG_HOME/anchor/config.toml, mode 0600).
    Login(LoginArgs),
    /// The project's environments: list, add, rename, reorder, set their safeguards, delete.
    #[command(subcommand)]
    Envs(EnvsCommand),
    /// Flags: list, inspect, create, change, archive, and turn on or off in an environment.
    #[command(subcommand)]
    Flags(FlagsCommand),
    /// Edit a flag's targeting in an environment: default serve, rollouts, individual targets.
    #[command(subcommand)]
    Targeting(TargetingCommand),
    /// Segments of an environment.
    #[command(subcommand)]
    Segments(SegmentsCommand),
    /// Progressive releases: start one, watch it, steer it.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// The revisions of a flag's configuration in an environment.
    History(FlagArg),
    /// What changed in a flag's configuration between two revisions.
    Diff(DiffArgs),
    /// Restore a flag's configuration in an environment to an earlier revision.
    Revert(RevertArgs),
    /// The project's audit log, newest first.
    Audit(AuditArgs),
    /// Change requests for environments that require approval.
    #[command(subcommand, name = "change-requests")]
    ChangeRequests(ChangeRequestsCommand),
    /// SDK keys of an environment (a new key's secret is printed once).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Which value a context gets from a flag in an environment, and (--explain) why.
    Evaluate(EvaluateArgs),
    /// Write the project's flags (with each environment's configuration) and segments as JSON
    /// or YAML.
    Export(ExportArgs),
    /// Make a project match an export: creates and updates only what differs, so running it
    /// twice changes nothing.
    Import(ImportArgs),
    /// Serve the Model Context Protocol for AI assistants (stdio unless --http), acting with
    /// the personal access token of --token/ANCHOR_TOKEN/`anchor login`; over HTTP, with each
    /// caller's own.
    Mcp(McpArgs),
    /// Find the flag keys the code refers to (SDK calls in Rust, JavaScript/TypeScript, Python,
    /// Go, Java/Kotlin, C#, Ruby, PHP) and, with the server's data, which flags are stale.
    Scan(ScanArgs),
}

#[derive(Args, Debug)]
pub struct McpArgs {
    /// Serve streamable HTTP at http://ADDRESS/mcp (e.g. 127.0.0.1:8765) instead of stdio;
    /// every request must carry `Authorization: Bearer <personal access token>`, and the tools
    /// act with that token
    #[arg(long, value_name = "ADDRESS")]
    pub http: Option<String>,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Files or directories to scan (.gitignore rules apply) [default: .]
    pub paths: Vec<PathBuf>,
    /// Only report references; ask no server (needs no URL or token)
    #[arg(long)]
    pub offline: bool,
    /// Days of serving one variant to everyone, or of no evaluation, after which a flag is stale
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// A regex whose first capture group (or group named `key`) is a flag key, for calls the
    /// built-in patterns do not know (repeatable; added to .anchor-scan.toml's `patterns`)
    #[arg(long = "pattern", value_name = "REGEX")]
    pub patterns: Vec<String>,
    /// An identifier that stands for a flag key, e.g. a constant holding it (repeatable; added
    /// to .anchor-scan.toml's `[aliases]`)
    #[arg(long = "alias", value_name = "NAME=KEY")]
    pub aliases: Vec<String>,
    /// The scan configuration [default: .anchor-scan.toml in the current directory, if any]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Exit with code 6 when a flag is stale (for CI gates)
    #[arg(long)]
    pub fail_on_stale: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:4242]
    #[arg(long, env = "ANCHOR_LISTEN")]
    pub listen: Option<String>,
    /// Directory of the embedded SQLite store [default: ./anchor-data]
    #[arg(long, env = "ANCHOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A postgres:// URL, to use PostgreSQL instead of the embedded store
    #[arg(long, env = "ANCHOR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Origins whose pages may call OFREP from a browser (comma-separated)
    #[arg(long, env = "ANCHOR_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Days after which SDK telemetry for a minute is refused, 1 to 30 [default: 7]
    #[arg(long, env = "ANCHOR_TELEMETRY_MAX_AGE_DAYS")]
    pub telemetry_max_age_days: Option<u32>,
    /// Days after which telemetry minutes are merged into hours, at least the telemetry max
    /// age [default: 2, or the telemetry max age if longer]
    #[arg(long, env = "ANCHOR_TELEMETRY_MINUTE_RETENTION_DAYS")]
    pub telemetry_minute_retention_days: Option<u32>,
    /// Days after which telemetry is deleted [default: 90]
    #[arg(long, env = "ANCHOR_TELEMETRY_RETENTION_DAYS")]
    pub telemetry_retention_days: Option<u32>,
    /// A TOML file with any of: listen, data_dir, database_url, admin_password, cors_origins,
    /// telemetry_max_age_days, telemetry_minute_retention_days, telemetry_retention_days
    #[arg(long, env = "ANCHOR_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The server, e.g. http://127.0.0.1:4242
    pub server: String,
}

#[derive(Args, Debug)]
pub struct FlagArg {
    /// The flag's key
    pub flag: String,
}

#[derive(Args, Debug)]
pub struct CommentArg {
    /// Why: recorded in the audit log
    #[arg(long, short = 'm')]
    pub comment: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum EnvsCommand {
    /// The project's environments in display order, with their safeguards.
    List,
    /// Add an environment (project admins); existing flags start disabled there.
    Create(EnvCreateArgs),
    /// Change an environment (project admins); options not given keep their value. Turning
    /// approval or required comments off needs --comment.
    Update(EnvUpdateArgs),
    /// Delete an environment with its flag configurations, segments, SDK keys (they stop
    /// working at once), releases and history (project admins). Asks first on a terminal;
    /// elsewhere needs --yes.
    Delete(EnvDeleteArgs),
}

#[derive(Args, Debug)]
pub struct EnvCreateArgs {
    /// The environment's key; it never changes, since SDK keys, URLs and telemetry name it
    pub environment: String,
    /// Its display name (1 to 100 characters)
    #[arg(long)]
    pub name: String,
    /// Editors' flag and segment changes become change requests someone else approves
    #[arg(long)]
    pub requires_approval: bool,
    /// Every change needs a comment
    #[arg(long)]
    pub requires_comment: bool,
}

#[derive(Args, Debug)]
pub struct EnvUpdateArgs {
    /// The environment's key
    pub environment: String,
    /// A new display name (1 to 100 characters)
    #[arg(long)]
    pub name: Option<String>,
    /// Whether editors' flag and segment changes become change requests
    #[arg(long, value_name = "true|false")]
    pub requires_approval: Option<bool>,
    /// Whether every change needs a comment
    #[arg(long, value_name = "true|false")]
    pub requires_comment: Option<bool>,
    /// The display position, from 0 (first); the environments in between shift by one
    #[arg(long, value_name = "N")]
    pub position: Option<u32>,
    #[command(flatten)]
    pub comment: CommentArg,
}

#[derive(Args, Debug)]
pub struct EnvDeleteArgs {
    /// The environment's key
    pub environment: String,
    /// Delete without asking (required when stdin is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Subcommand, Debug)]
pub enum FlagsCommand {
    /// The project's flags, with whether each is on in every environment.
    List(FlagsListArgs),
    /// One flag: its definition and its state in every environment.
    Get(FlagArg),
    /// Create a flag (disabled everywhere). A boolean flag gets variants `on` and `off` unless
    /// given.
    Create(FlagDefinitionArgs),
    /// Change a flag's definition; options not given keep their value.
    Update(FlagDefinitionArgs),
    /// Archive a flag (it keeps its history and can be restored).
    Archive(FlagArg),
    /// Bring an archived flag back.
    Restore(FlagArg),
    /// Enable a flag in --env (it serves its default serve and rules again).
    On(FlagSwitchArgs),
    /// Disable a flag in --env: everyone gets its off variant (the kill switch; never waits for
    /// approval).
    Off(FlagSwitchArgs),
}

#[derive(Args, Debug)]
pub struct FlagsListArgs {
    /// Only flags with this tag
    #[arg(long)]
    pub tag: Option<String>,
    /// Only flags whose key or description contains this text
    #[arg(long)]
    pub search: Option<String>,
    /// Only flags enabled in this environment
    #[arg(long)]
    pub enabled_in: Option<String>,
    /// Include archived flags
    #[arg(long)]
    pub archived: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagKind {
    Boolean,
    String,
    Number,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Temporary,
    Permanent,
}

#[derive(Args, Debug)]
pub struct FlagDefinitionArgs {
    /// The flag's key
    pub flag: String,
    /// The type of its variants' values [create: default boolean]
    #[arg(long, value_enum)]
    pub kind: Option<FlagKind>,
    /// A variant as NAME=VALUE, VALUE in JSON (`on=true`, `blue="#00f"`); repeat for each; replaces
    /// all variants
    #[arg(long = "variant", value_name = "NAME=VALUE")]
    pub variants: Vec<String>,
    /// What the flag is for
    #[arg(long)]
    pub description: Option<String>,
    /// A tag; repeat for several; replaces all tags
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Whether the flag is to be removed after its release
    #[arg(long, value_enum)]
    pub lifecycle: Option<Lifecycle>,
    /// When a temporary flag should be gone (YYYY-MM-DD)
    #[arg(long)]
    pub cleanup_date: Option<String>,
    /// The whole definition as a JSON or YAML file (options given as well override it)
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FlagSwitchArgs {
    /// The flag's key
    pub flag: String,
    #[command(flatten)]
    pub comment: CommentArg,
}

#[derive(Subcommand, Debug)]
pub enum TargetingCommand {
    /// The flag's configuration in --env: switch, default serve, rules and targets.
    Show(FlagArg),
    /// Serve one variant to everyone no target or rule catches (the default serve).
    Serve(ServeVariantArgs),
    /// Serve a variant to a percentage of the contexts no target or rule catches (sticky), the
    /// rest another variant.
    Rollout(RolloutArgs),
    /// Always serve a variant to these targeting keys.
    AddTarget(AddTargetArgs),
    /// Take these targeting keys out of the individual targets.
    RemoveTarget(RemoveTargetArgs),
}

#[derive(Args, Debug)]
pub struct ServeVariantArgs {
    /// The flag's key
    pub flag: String,
    /// The variant's name
    pub variant: String,
    #[command(flatten)]
    pub comment: CommentArg,
}

#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// The flag's key
    pub flag: String,
    /// The variant rolled out
    pub variant: String,
    /// Its share in percent, 0 to 100 (three decimals at most)
    pub percent: f64,
    /// The variant everyone else gets [default: the flag's other variant, if it has two; else
    /// the off variant]
    #[arg(long)]
    pub rest: Option<String>,
    /// The context attribute to bucket by [default: targetingKey]
    #[arg(long)]
    pub bucket_by: Option<String>,
    #[command(flatten)]
    pub comment: CommentArg,
}

#[derive(Args, Debug)]
pub struct AddTargetArgs {
    /// The flag's key
    pub flag: String,
    /// The variant they get
    pub variant: String,
    /// Targeting keys
    #[arg(required = true)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub comment: CommentArg,
}

#[derive(Args, Debug)]
pub struct RemoveTargetArgs {
    /// The flag's key
    pub flag: String,
    /// Targeting keys
    #[arg(required = true)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub comment: CommentArg,
}

#[derive(Subcommand, Debug)]
pub enum SegmentsCommand {
    /// The segments of --env.
    List,
    /// One segment with its rules and key lists.
    Get(SegmentArg),
    /// Create a segment in --env.
    Create(SegmentDefinitionArgs),
    /// Change a segment; options not given keep their value.
    Update(SegmentDefinitionArgs),
    /// Delete a segment (refused while a flag uses it).
    Delete(SegmentArg),
}

#[derive(Args, Debug)]
pub struct SegmentArg {
    /// The segment's key
    pub segment: String,
}

#[derive(Args, Debug)]
pub struct SegmentDefinitionArgs {
    /// The segment's key
    pub segment: String,
    /// What the segment is
    #[arg(long)]
    pub description: Option<String>,
    /// Add targeting keys that are always in the segment
    #[arg(long = "include", value_name = "KEY")]
    pub include: Vec<String>,
    /// Add targeting keys that are never in the segment
    #[arg(long = "exclude", value_name = "KEY")]
    pub exclude: Vec<String>,
    /// Take targeting keys out of both lists
    #[arg(long = "remove", value_name = "KEY")]
    pub remove: Vec<String>,
    /// The whole segment as a JSON or YAML file (options given as well apply on top)
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Start a progressive release of a flag in --env: the default serve (or --rule's) moves
    /// from the control variant to the treatment stage by stage.
    Start(ReleaseStartArgs),
    /// A release's stage, share and latest guardrail report; without RELEASE, the project's
    /// releases.
    Status(ReleaseStatusArgs),
    /// Stop advancing (regressions are no longer judged either) until resumed.
    Pause(ReleaseArg),
    /// Continue a paused release.
    Resume(ReleaseArg),
    /// Let a release waiting for approval enter its next stage.
    Approve(ReleaseArg),
    /// Take the treatment away now.
    Rollback(ReleaseArg),
    /// Stop the release and leave the flag as it is.
    Abort(ReleaseArg),
}

#[derive(Args, Debug)]
pub struct ReleaseStartArgs {
    /// The flag's key
    pub flag: String,
    /// The variant served now
    #[arg(long)]
    pub control: String,
    /// The variant being released
    #[arg(long)]
    pub treatment: String,
    /// A release template [default: the server's `default`]
    #[arg(long)]
    pub template: Option<String>,
    /// Release through this rule's serve instead of the default serve
    #[arg(long)]
    pub rule: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReleaseArg {
    /// The release's id, or a flag key: that flag's active release in --env
    pub release: String,
}

#[derive(Args, Debug)]
pub struct ReleaseStatusArgs {
    /// The release's id, or a flag key: that flag's latest release in --env
    pub release: Option<String>,
    /// Poll and redraw until the release finishes (Ctrl-C to stop watching)
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// Seconds between polls with --watch
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The flag's key
    pub flag: String,
    /// The older revision
    pub from: u64,
    /// The newer revision [default: the latest]
    pub to: Option<u64>,
}

#[derive(Args, Debug)]
pub struct RevertArgs {
    /// The flag's key
    pub flag: String,
    /// The revision whose configuration to restore (as a new revision)
    pub version: u64,
    #[command(flatten)]
    pub comment: CommentArg,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries about this flag
    #[arg(long)]
    pub flag: Option<String>,
    /// Only entries by this actor (a user name, or e.g. `system:rollout-controller`)
    #[arg(long)]
    pub actor: Option<String>,
    /// Only entries with this action (e.g. `flag.config.updated`); ending with `.` or `*`, every
    /// action starting with it (e.g. `release.*`)
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries of --env
    #[arg(long)]
    pub only_env: bool,
    /// At most this many entries
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Subcommand, Debug)]
pub enum ChangeRequestsCommand {
    /// The project's change requests.
    List(ChangeRequestsListArgs),
    /// One change request with its diff from the current configuration.
    Get(ChangeRequestArg),
    /// Approve someone else's change request.
    Approve(ChangeRequestReviewArgs),
    /// Reject a change request.
    Reject(ChangeRequestReviewArgs),
    /// Apply an approved change request.
    Apply(ChangeRequestArg),
}

#[derive(Args, Debug)]
pub struct ChangeRequestsListArgs {
    /// Only requests with this status (open, approved, rejected, applied, cancelled, failed)
    #[arg(long)]
    pub status: Option<String>,
    /// Only requests of --env
    #[arg(long)]
    pub only_env: bool,
}

#[derive(Args, Debug)]
pub struct ChangeRequestArg {
    /// The change request's id
    pub id: String,
}

#[derive(Args, Debug)]
pub struct ChangeRequestReviewArgs {
    /// The change request's id
    pub id: String,
    #[command(flatten)]
    pub comment: CommentArg,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Downloads the whole configuration and sends telemetry (server-side SDKs)
    Server,
    /// Asks for evaluations only (browsers, mobile)
    Client,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// The SDK keys of --env (their prefixes; secrets are never shown again).
    List,
    /// A new SDK key for --env; its secret is printed once.
    Create(KeyKindArg),
    /// A new key replacing the environment's keys of that kind, which keep working for the
    /// overlap.
    Rotate(KeyRotateArgs),
    /// Revoke a key at once.
    Revoke(KeyIdArg),
}

#[derive(Args, Debug)]
pub struct KeyKindArg {
    #[arg(long, value_enum)]
    pub kind: KeyKind,
}

#[derive(Args, Debug)]
pub struct KeyRotateArgs {
    #[arg(long, value_enum)]
    pub kind: KeyKind,
    /// Seconds the replaced keys keep working [default: the server's]
    #[arg(long)]
    pub overlap_seconds: Option<u64>,
}

#[derive(Args, Debug)]
pub struct KeyIdArg {
    /// The key's id
    pub id: String,
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// The flag's key
    pub flag: String,
    /// The evaluation context as a JSON object, e.g. '{"targetingKey": "user-42", "country":
    /// "DE"}'
    #[arg(long, short = 'c', default_value = "{}")]
    pub context: String,
    /// Show every step of the evaluation
    #[arg(long)]
    pub explain: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The file's format
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Write to this file instead of stdout
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An export (JSON or YAML; `-` reads stdin)
    pub file: PathBuf,
    /// Print what would change, as a diff, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Comment recorded with every change
    #[arg(long, short = 'm')]
    pub comment: Option<String>,
}
