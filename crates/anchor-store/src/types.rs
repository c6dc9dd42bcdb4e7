//! The records the store reads and writes, and its one error type.

use anchor_engine::{Flag, FlagConfig, Lifecycle, Segment};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who made a change: a person, a token acting for one, or the system itself (the rollout
/// controller, the scheduler, the first-start bootstrap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    User,
    Token,
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Token => "token",
            ActorKind::System => "system",
        }
    }

    pub(crate) fn parse(s: &str) -> ActorKind {
        match s {
            "user" => ActorKind::User,
            "token" => ActorKind::Token,
            _ => ActorKind::System,
        }
    }
}

impl Actor {
    pub fn user(id: impl Into<String>) -> Self {
        Actor {
            kind: ActorKind::User,
            id: id.into(),
        }
    }

    pub fn system(id: impl Into<String>) -> Self {
        Actor {
            kind: ActorKind::System,
            id: id.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub key: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NewEnvironment {
    pub key: String,
    pub name: String,
    /// Writes by editors become change requests.
    #[serde(default)]
    pub requires_approval: bool,
    /// Every change must carry a comment.
    #[serde(default)]
    pub requires_comment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    pub project: String,
    pub key: String,
    pub name: String,
    pub position: i64,
    pub requires_approval: bool,
    pub requires_comment: bool,
    /// Incremented by every change to anything evaluated in this environment.
    pub revision: u64,
    pub created_at: i64,
}

/// A flag's definition and its configuration in every environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FlagRecord {
    pub flag: Flag,
    pub archived: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// In the environments' display order.
    pub environments: Vec<EnvironmentFlagConfig>,
    /// Where the flag stands over all its environments (in the flag list and a flag's GET;
    /// the server fills it in, like each environment's `lifecycle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<LifecycleStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentFlagConfig {
    pub environment: String,
    /// Its `version` is the stored one.
    pub config: FlagConfig,
    pub updated_at: i64,
    /// Where the flag stands in this environment, in the flag list and a flag's GET (other
    /// answers leave it out; the server fills it in from telemetry and revisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<FlagLifecycle>,
}

/// A flag's lifecycle in one environment: the verdict, and the two facts it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FlagLifecycle {
    pub status: LifecycleStatus,
    /// Unix milliseconds: the start of the last minute an SDK reported evaluating the flag
    /// here (telemetry); absent when none ever did.
    pub last_evaluated_at: Option<i64>,
    /// Unix milliseconds: since when the flag has served one variant to everyone here
    /// (disabled, or one variant whatever the context); absent when it serves more than one.
    pub serving_one_variant_since: Option<i64>,
}

/// `new`: created less than 7 days ago and not evaluated yet. `rolledOut`: serving one
/// variant to everyone. `stale`: a temporary flag past its cleanup date or rolled out for 30
/// days, or any flag not evaluated for 30 days. `archived`. Otherwise `active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum LifecycleStatus {
    New,
    Active,
    RolledOut,
    Stale,
    Archived,
}

/// A flag's configuration in one environment as an earlier revision stored it. The JSON is
/// left unread: a flag list needs only the few that served what their flag serves now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierConfig {
    pub flag: String,
    pub environment: String,
    pub version: u64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The configuration's JSON.
    pub config: String,
}

/// Which flags a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FlagFilter {
    pub tag: Option<String>,
    pub lifecycle: Option<Lifecycle>,
    /// Only flags enabled in this environment.
    pub enabled_in: Option<String>,
    /// A case-insensitive substring of the key, description or a tag.
    pub text: Option<String>,
    pub include_archived: bool,
    /// Keys after this one (the cursor of the previous page).
    pub after: Option<String>,
    /// At most this many (1 to 1,000; 100 when 0).
    pub limit: u32,
}

impl FlagFilter {
    /// Whether `record` is one this filter lists (`after` and `limit` aside: they page).
    pub fn matches(&self, record: &FlagRecord) -> bool {
        let filter = self;
        let flag = &record.flag;
        if !filter.include_archived && record.archived {
            return false;
        }
        if let Some(tag) = &filter.tag
            && !flag.tags.iter().any(|t| t == tag)
        {
            return false;
        }
        if let Some(lifecycle) = filter.lifecycle
            && flag.lifecycle != lifecycle
        {
            return false;
        }
        if let Some(env) = &filter.enabled_in
            && !record
                .environments
                .iter()
                .any(|e| &e.environment == env && e.config.enabled)
        {
            return false;
        }
        if let Some(text) = &filter.text {
            let needle = text.to_lowercase();
            let found = flag.key.to_lowercase().contains(&needle)
                || flag.description.to_lowercase().contains(&needle)
                || flag.tags.iter().any(|t| t.to_lowercase().contains(&needle));
            if !found {
                return false;
            }
        }
        true
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last one.
    pub next: Option<String>,
}

/// A change to one flag's configuration in one environment.
#[derive(Debug, Clone)]
pub struct ConfigChange<'a> {
    pub actor: &'a Actor,
    pub project: &'a str,
    pub environment: &'a str,
    pub flag: &'a str,
    pub config: &'a FlagConfig,
    /// The version the writer read (`If-Match`); `None` to write unconditionally.
    pub expected_version: Option<u64>,
    pub comment: Option<&'a str>,
    /// The audit action, e.g. `flag.config.updated`, `flag.reverted`, `flag.killed`.
    pub action: &'a str,
    /// The webhook event announcing the change, recorded in the same transaction with its
    /// `version` set to the configuration's new version.
    pub event: Option<OutboxEvent<'a>>,
}

/// A webhook event recorded by the write that causes it, in the write's transaction (the
/// transactional outbox): one pending delivery per enabled webhook of the project subscribed to
/// `event_type`, exactly as [`crate::Store::enqueue_webhook_deliveries`] makes them, so that
/// the change and its announcement are durable together or not at all.
#[derive(Debug, Clone, Copy)]
pub struct OutboxEvent<'a> {
    /// The event type, such as `flag.changed`; never empty nor `*` (`Invalid` otherwise, and
    /// the write fails).
    pub event_type: &'a str,
    /// The event's data. A write of a flag configuration sets its `version` member (when it
    /// is an object) to the configuration's new version, which only the write knows.
    pub data: &'a Value,
}

/// An immutable snapshot of a configuration as it was after one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub environment: String,
    pub resource_kind: String,
    pub resource_key: String,
    pub version: u64,
    pub body: Value,
    pub actor: Actor,
    pub comment: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: String,
    pub project: String,
    pub environment: Option<String>,
    pub actor: Actor,
    pub action: String,
    pub resource_kind: String,
    pub resource_key: String,
    /// An RFC 6902 JSON Patch from the old state to the new one.
    pub diff: Value,
    pub comment: Option<String>,
    pub created_at: i64,
}

/// Which audit entries to return.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuditFilter {
    pub project: String,
    pub actor: Option<String>,
    pub environment: Option<String>,
    pub resource_key: Option<String>,
    /// The entries' action: exactly this one (`flag.config.updated`), or, when the value ends
    /// with `.` or `*`, every action that starts with what comes before the `*` (`release.` and
    /// `release.*` both match `release.rolled_back`; `flag.config*` matches `flag.config.updated`).
    pub action: Option<String>,
    /// Inclusive, unix milliseconds.
    pub since: Option<i64>,
    /// Exclusive, unix milliseconds.
    pub until: Option<i64>,
    /// At most this many (1 to 1,000; 100 when 0).
    pub limit: u32,
}

impl AuditFilter {
    /// The action filter as `(exact, prefix)`, at most one of them non-empty (see
    /// [`AuditFilter::action`]); empty strings mean "any action".
    pub fn action_match(&self) -> (&str, &str) {
        match self.action.as_deref().map(str::trim).unwrap_or("") {
            "" => ("", ""),
            value => match value.strip_suffix('*') {
                Some(prefix) => ("", prefix),
                None if value.ends_with('.') => ("", value),
                None => (value, ""),
            },
        }
    }
}

/// A user's role in a project; ordered: Viewer < Editor < Admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    /// The role named `s` (`viewer`, `editor` or `admin`), if any.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub username: String,
    /// May manage users and every project.
    pub instance_admin: bool,
    pub created_at: i64,
}

/// A personal access token as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    /// The user the token acts for.
    pub user: User,
    pub name: String,
    /// The most the token may do (the user's role in a project still bounds it).
    pub role: Role,
    /// Unix milliseconds; `None` for a token that does not expire.
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked: bool,
    /// Unix milliseconds of the token's latest use, precise to within a minute (servers write
    /// uses in bulk once a minute); `None` for a token never used.
    pub last_used_at: Option<i64>,
}

/// A personal access token to store: the caller makes the secret and passes only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NewToken {
    pub user_id: String,
    pub name: String,
    pub token_hash: String,
    pub role: Role,
    pub expires_at: Option<i64>,
}

/// A segment of one environment as stored: the engine's [`Segment`] with its key lists (each
/// deduplicated and in byte order) and its stored `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SegmentRecord {
    pub environment: String,
    pub segment: Segment,
    pub updated_at: i64,
}

/// A segment in a listing: everything but its key lists, which are only counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SegmentSummary {
    pub key: String,
    pub description: String,
    pub included_count: u64,
    pub excluded_count: u64,
    /// How many rules the segment has.
    pub rules: usize,
    pub version: u64,
    pub updated_at: i64,
}

/// A segment to create or replace in one environment.
#[derive(Debug, Clone)]
pub struct SegmentChange<'a> {
    pub actor: &'a Actor,
    pub project: &'a str,
    pub environment: &'a str,
    /// Its `version` is ignored: the store sets it.
    pub segment: &'a Segment,
    /// The version the writer read (`If-Match`); `None` to write unconditionally. Ignored when
    /// creating.
    pub expected_version: Option<u64>,
    pub comment: Option<&'a str>,
}

/// What an SDK key may do: a `server` key may download an environment's whole configuration
/// and send telemetry, a `client` key may only ask for evaluations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SdkKeyKind {
    Server,
    Client,
}

impl SdkKeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SdkKeyKind::Server => "server",
            SdkKeyKind::Client => "client",
        }
    }

    /// The kind named `s` (`server` or `client`), if any.
    pub fn parse(s: &str) -> Option<SdkKeyKind> {
        match s {
            "server" => Some(SdkKeyKind::Server),
            "client" => Some(SdkKeyKind::Client),
            _ => None,
        }
    }
}

/// An SDK key as stored: never the secret, only its hash (not even that is returned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SdkKeyRecord {
    pub id: String,
    pub project: String,
    pub environment: String,
    pub kind: SdkKeyKind,
    /// The first characters of the secret, for people to tell keys apart.
    pub prefix: String,
    pub created_at: i64,
    /// Unix milliseconds; a key being rotated out stays valid until then. `None` for a key
    /// that does not expire.
    pub expires_at: Option<i64>,
    pub revoked: bool,
    /// Unix milliseconds of the key's latest use, precise to within a minute (servers write
    /// uses in bulk once a minute); `None` for a key never used.
    pub last_used_at: Option<i64>,
}

/// An SDK key to store: the server makes the secret and passes only its hash and prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NewSdkKey {
    pub project: String,
    pub environment: String,
    pub kind: SdkKeyKind,
    /// The SHA-256 hex hash of the secret.
    pub key_hash: String,
    /// A short, non-secret beginning of the secret (at most 32 characters).
    pub prefix: String,
}

/// Where a change request stands. `Open` and `Approved` requests can still be edited, reviewed
/// and cancelled; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChangeRequestStatus {
    /// Waiting for an approval.
    Open,
    /// May be applied (by a person, or by the scheduler at `applyAt`).
    Approved,
    Rejected,
    /// Its proposal became the flag's configuration.
    Applied,
    /// Withdrawn before it was applied.
    Cancelled,
    /// A scheduled apply could not apply it (see `failure`).
    Failed,
}

impl ChangeRequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeRequestStatus::Open => "open",
            ChangeRequestStatus::Approved => "approved",
            ChangeRequestStatus::Rejected => "rejected",
            ChangeRequestStatus::Applied => "applied",
            ChangeRequestStatus::Cancelled => "cancelled",
            ChangeRequestStatus::Failed => "failed",
        }
    }

    /// The status named `s` (`open`, `approved`, `rejected`, `applied`, `cancelled` or
    /// `failed`), if any.
    pub fn parse(s: &str) -> Option<ChangeRequestStatus> {
        match s {
            "open" => Some(ChangeRequestStatus::Open),
            "approved" => Some(ChangeRequestStatus::Approved),
            "rejected" => Some(ChangeRequestStatus::Rejected),
            "applied" => Some(ChangeRequestStatus::Applied),
            "cancelled" => Some(ChangeRequestStatus::Cancelled),
            "failed" => Some(ChangeRequestStatus::Failed),
            _ => None,
        }
    }

    /// `Open` or `Approved`: the request can still be edited, reviewed or cancelled.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            ChangeRequestStatus::Open | ChangeRequestStatus::Approved
        )
    }
}

impl std::fmt::Display for ChangeRequestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reviewer's verdict on a change request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    Approve,
    Reject,
}

impl ReviewDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewDecision::Approve => "approve",
            ReviewDecision::Reject => "reject",
        }
    }

    /// The decision named `s` (`approve` or `reject`), if any.
    pub fn parse(s: &str) -> Option<ReviewDecision> {
        match s {
            "approve" => Some(ReviewDecision::Approve),
            "reject" => Some(ReviewDecision::Reject),
            _ => None,
        }
    }
}

/// One review of a change request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub reviewer: Actor,
    pub decision: ReviewDecision,
    pub comment: Option<String>,
    pub created_at: i64,
}

/// A proposed change of one resource in one environment, to be approved and applied: a flag's
/// configuration (`resourceKind` `flag`) or a segment, created or replaced (`resourceKind`
/// `segment`).
///
/// For a flag request, `flag` is the flag's key, `proposed` the proposed configuration and
/// `segment` is `None`. For a segment request, `flag` is the segment's key, `segment` carries
/// the proposed segment (its `version` is `baseVersion`, its key lists deduplicated and in byte
/// order) and `proposed` means nothing: it is an empty, disabled configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ChangeRequest {
    pub id: String,
    pub project: String,
    pub environment: String,
    /// The key of the resource the request changes: the flag's, or the segment's.
    pub flag: String,
    /// What the request changes: `flag`, `segment`, or `segment_deletion` (a proposal to
    /// delete the segment: `segment` is then `None`).
    #[serde(default = "flag_resource_kind")]
    pub resource_kind: String,
    /// The version the proposal was made against: applying fails once the flag's
    /// configuration (the segment) has another version. For a segment, 0: it must not exist.
    pub base_version: u64,
    /// The proposed configuration; its `version` is `baseVersion`. Only meaningful for a flag
    /// request.
    pub proposed: FlagConfig,
    /// The proposed segment of a segment request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Segment>,
    pub comment: Option<String>,
    pub author: Actor,
    pub status: ChangeRequestStatus,
    /// The reviews of the current proposal, oldest first: an edit voids the earlier ones.
    pub reviews: Vec<Review>,
    /// Unix milliseconds: when the scheduler applies it, once approved. `None`: applied by hand.
    pub apply_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The configuration version applying it produced.
    pub applied_version: Option<u64>,
    /// Why a scheduled apply failed.
    pub failure: Option<String>,
}

fn flag_resource_kind() -> String {
    "flag".to_string()
}

/// A change request to create.
#[derive(Debug, Clone)]
pub struct NewChangeRequest<'a> {
    pub actor: &'a Actor,
    pub project: &'a str,
    pub environment: &'a str,
    pub flag: &'a str,
    /// The version of the flag's configuration the proposal was made against; it must still be
    /// the current one.
    pub base_version: u64,
    /// Its `version` is ignored: the store keeps `base_version` there.
    pub proposed: &'a FlagConfig,
    pub comment: Option<&'a str>,
    /// Unix milliseconds: when the scheduler should apply it, once approved.
    pub apply_at: Option<i64>,
    /// Created already approved (a scheduled change where no approval is needed).
    pub pre_approved: bool,
}

/// What can go wrong, in terms the server maps to HTTP once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} `{key}` does not exist")]
    NotFound { what: &'static str, key: String },
    #[error("{what} `{key}` already exists")]
    AlreadyExists { what: &'static str, key: String },
    #[error("the {what} changed: version {actual}, not {expected}")]
    VersionMismatch {
        what: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    pub(crate) fn not_found(what: &'static str, key: &str) -> Self {
        StoreError::NotFound {
            what,
            key: key.to_string(),
        }
    }
}

/// A dashboard session to store: hashes only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub id_hash: String,
    pub user_id: String,
    pub csrf_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A live dashboard session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub user: User,
    pub csrf_hash: String,
    pub expires_at: i64,
}

/// When a flag was last reported evaluated in an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastEvaluation {
    pub environment: String,
    pub flag: String,
    /// Unix seconds at the start of the minute.
    pub minute: i64,
}

/// How many evaluations of one flag an SDK served in one minute with one variant: a row of a
/// telemetry batch, and of what the store reads back (summed over every batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationCount {
    /// Unix seconds at the start of the minute (a multiple of 60).
    pub minute: i64,
    pub flag: String,
    /// `None`: the caller's default was served (an error, or a flag the SDK did not know).
    pub variant: Option<String>,
    pub count: u64,
}

/// One (flag, variant)'s outcomes in one minute as an SDK reported them: a row of a telemetry
/// batch, and of what the store reads back per minute (merged over every batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeAggregate {
    /// Unix seconds at the start of the minute (a multiple of 60).
    pub minute: i64,
    pub flag: String,
    /// The variant served; never empty (outcomes of the caller's default are not kept).
    pub variant: String,
    /// Exposures, requests, errors, the latency sketch and the custom metrics' sums.
    pub observations: anchor_rollout::ArmObservations,
    /// The exposures by coverage attribute, then value (canary coverage). Written with the
    /// row; [`crate::Store::outcome_minutes`] leaves it empty, and
    /// [`crate::Store::coverage_counts`] reads it back summed over a range.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub coverage: anchor_rollout::coverage::ValueCounts,
}

/// The most custom metrics one stored (flag, variant, minute) row keeps. Batches are limited
/// to fewer per row by the server; this bounds what many SDKs with different names add up to.
/// Names beyond it are dropped when merging (the ones already kept go on adding up).
pub const MAX_METRICS_PER_AGGREGATE: usize = 128;

/// How long the store remembers a telemetry batch's id, so that a retry within that time is
/// counted once. The server refuses minutes older than its (shorter) lag, so a batch retried
/// later than this would be refused anyway.
pub const TELEMETRY_BATCH_MEMORY_MS: i64 = 35 * 24 * 60 * 60 * 1000;

/// How long telemetry is kept, and at which resolution: what [`crate::Store::compact_telemetry`]
/// does with the rows older than these ages (all measured back from the store's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryRetention {
    /// Minutes older than this (seconds) are merged into one row per hour. Never shorter than
    /// the lag after which the server refuses late minutes, so a merged hour never receives a
    /// minute again.
    pub minute_secs: i64,
    /// Rows (minutes or hours) older than this (seconds) are deleted.
    pub keep_secs: i64,
    /// Telemetry batch ids received longer ago than this (milliseconds) are forgotten: a retry
    /// that late carries only minutes the server refuses anyway.
    pub batch_ids_ms: i64,
    /// How many rows one transaction merges or deletes at most, so that compaction never holds
    /// ingestion up for long.
    pub rows_per_transaction: u32,
}

/// What one [`crate::Store::compact_telemetry`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Minute rows (evaluation counts, outcome aggregates and coverage counts) merged into hour
    /// rows.
    pub minutes_merged: u64,
    /// Rows deleted for being older than the retention.
    pub rows_expired: u64,
    /// Telemetry batch ids forgotten.
    pub batch_ids_forgotten: u64,
}

/// How many seconds a stored telemetry row covers: a minute as reported, or an hour merged by
/// compaction.
pub const MINUTE_SPAN_SECS: i64 = 60;
pub const HOUR_SPAN_SECS: i64 = 3_600;

/// What the store stands in for a `None` variant in its key column. A variant name is never
/// empty (the engine's model requires 1 to 128 characters), so it cannot be confused.
pub const DEFAULT_VARIANT_SENTINEL: &str = "";

/// A committed change that other replicas sharing the database must catch up with, as
/// [`ChangeFeed::next`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The environment's revision counter moved to `revision`: rebuild its snapshot.
    Environment {
        project: String,
        environment: String,
        revision: u64,
    },
    /// An SDK key was created, rotated or revoked: forget cached keys.
    SdkKeys,
    /// The feed (re)connected and changes may have been missed meanwhile: rebuild everything.
    /// Always the first change a feed reports.
    Resync,
}

/// How a webhook's deliveries are shaped: Release Anchor's own JSON envelope, or a message that
/// Slack's incoming webhooks (and look-alikes) accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    Json,
    Slack,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
        }
    }

    /// The format named `s` (`json` or `slack`), if any.
    pub fn parse(s: &str) -> Option<WebhookFormat> {
        match s {
            "json" => Some(WebhookFormat::Json),
            "slack" => Some(WebhookFormat::Slack),
            _ => None,
        }
    }
}

/// The event type that subscribes a webhook to every event.
pub const ALL_EVENTS: &str = "*";

/// A project's webhook as stored, without its signing secret: that is shown once, when it is
/// made (or rotated), and afterwards read only by the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    pub project: String,
    pub name: String,
    /// An absolute `http` or `https` URL.
    pub url: String,
    /// The event types it receives; `["*"]` for all.
    pub events: Vec<String>,
    pub format: WebhookFormat,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Webhook {
    /// Whether the webhook receives events of `event_type`.
    pub fn subscribes_to(&self, event_type: &str) -> bool {
        self.events
            .iter()
            .any(|e| e == ALL_EVENTS || e == event_type)
    }

    /// `scheme://host[:port]/…`: the URL without credentials, path, query or fragment, for
    /// those who may know where events go but not how to send some there themselves (some
    /// receivers, Slack's among them, take the URL's path as the credential).
    pub fn redacted_url(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return "…".to_string();
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        format!("{scheme}://{host}/…")
    }
}

/// A webhook to create. The caller (the server) makes the secret; the store keeps it as it is,
/// since the server needs it back to sign deliveries.
#[derive(Clone, PartialEq, Eq)]
pub struct NewWebhook {
    pub name: String,
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    pub format: WebhookFormat,
    pub enabled: bool,
}

impl std::fmt::Debug for NewWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewWebhook")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"[redacted]")
            .field("events", &self.events)
            .field("format", &self.format)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// Changes to a webhook: `None` keeps the current value. The secret changes only through
/// [`crate::Store::rotate_webhook_secret`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookUpdate {
    pub name: Option<String>,
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub format: Option<WebhookFormat>,
    pub enabled: Option<bool>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (at `nextAttemptAt`).
    Pending,
    /// A receiver answered 2xx.
    Succeeded,
    /// Every attempt failed; it will not be tried again.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// The status named `s` (`pending`, `succeeded` or `failed`), if any.
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event for one webhook, and how its delivery went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    pub id: String,
    pub webhook_id: String,
    pub event_type: String,
    /// The event's data, as the body's `data` carries it.
    pub payload: Value,
    /// Attempts started so far.
    pub attempts: u32,
    pub status: DeliveryStatus,
    /// The HTTP status of the last answer, if the receiver answered.
    pub last_http_status: Option<u16>,
    /// Why the last attempt failed (a status, a timeout, a refused connection).
    pub last_error: Option<String>,
    /// Unix milliseconds: when a pending delivery is tried (again). `None` once finished.
    pub next_attempt_at: Option<i64>,
    /// When the event happened (the body's `occurredAt`).
    pub created_at: i64,
    pub updated_at: i64,
}

/// A delivery a dispatcher has claimed, with what it needs to send it. Until `lease_until`
/// no other dispatcher claims it; the outcome is recorded with that same `lease_until`.
#[derive(Clone, PartialEq)]
pub struct ClaimedDelivery {
    pub delivery: WebhookDelivery,
    pub project: String,
    pub webhook_name: String,
    pub url: String,
    pub secret: String,
    pub format: WebhookFormat,
    pub enabled: bool,
    pub lease_until: i64,
}

impl std::fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("delivery", &self.delivery)
            .field("project", &self.project)
            .field("url", &self.url)
            .field("secret", &"[redacted]")
            .field("format", &self.format)
            .field("enabled", &self.enabled)
            .field("lease_until", &self.lease_until)
            .finish_non_exhaustive()
    }
}

/// The outcome of one attempt of a claimed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome<'a> {
    pub id: &'a str,
    /// The claim's `lease_until`: the outcome is recorded only while the claim holds.
    pub lease_until: i64,
    /// `Pending` to try again at `next_attempt_at`, or a final status.
    pub status: DeliveryStatus,
    pub http_status: Option<u16>,
    pub error: Option<&'a str>,
    /// Required with `Pending`; ignored otherwise.
    pub next_attempt_at: Option<i64>,
}

/// How long finished and unfinished deliveries are kept at most.
pub const WEBHOOK_DELIVERY_MAX_AGE_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// How many deliveries are kept per webhook at most (the newest).
pub const WEBHOOK_DELIVERIES_KEPT: u32 = 1_000;

/// A project's release template: the recipe of a progressive release (stages, guardrails,
/// policies) as JSON, which the server reads as `anchor_rollout::ReleaseTemplate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReleaseTemplateRecord {
    pub key: String,
    pub name: String,
    pub template: Value,
    /// Counts the template's writes (`If-Match`).
    pub version: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A progressive release of one flag in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRecord {
    pub id: String,
    pub project: String,
    pub environment: String,
    pub flag: String,
    /// The rule whose rollout the release moves; `None` for the default serve.
    pub rule: Option<String>,
    pub control: String,
    pub treatment: String,
    /// The template it was started from, and its content then (later edits of the template do
    /// not change a running release).
    pub template_key: String,
    pub template: Value,
    /// The state machine's state (`anchor_rollout::ReleaseState`).
    pub state: Value,
    /// Counts the state's writes.
    pub version: u64,
    /// Until it is finished (completed, rolled back or aborted).
    pub active: bool,
    /// The guardrails' latest report and when it was made: kept on every controller tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<i64>,
    pub created_by: Actor,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What [`crate::Store::create_release`] writes.
#[derive(Debug, Clone)]
pub struct NewRelease<'a> {
    pub actor: &'a Actor,
    pub project: &'a str,
    pub environment: &'a str,
    pub flag: &'a str,
    pub rule: Option<&'a str>,
    pub control: &'a str,
    pub treatment: &'a str,
    pub template_key: &'a str,
    pub template: &'a Value,
    pub state: &'a Value,
    /// The first line of the decision log.
    pub message: &'a str,
}

/// One transition of a release, written whole or not at all by
/// [`crate::Store::update_release`].
#[derive(Debug, Clone)]
pub struct ReleaseUpdate<'a> {
    pub actor: &'a Actor,
    pub project: &'a str,
    pub id: &'a str,
    /// The state's version the writer read: another writer's transition in between makes
    /// this one fail with `VersionMismatch { what: "release" }` and change nothing.
    pub expected_version: u64,
    pub state: &'a Value,
    pub active: bool,
    /// A new configuration of the release's flag in its environment (a new share), with the
    /// version it was derived from: written as a revision with its audit entry, in the same
    /// transaction.
    pub flag_config: Option<(&'a FlagConfig, u64)>,
    /// The audit action of the release's own entry, such as `release.stage_advanced`.
    pub action: &'a str,
    /// A line for the decision log, with the guardrails' report behind it.
    pub message: Option<&'a str>,
    pub report: Option<&'a Value>,
    /// The webhook events announcing the transition, recorded in the same transaction with
    /// their data as given.
    pub events: &'a [OutboxEvent<'a>],
}

/// One line of a release's decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReleaseDecision {
    pub at: i64,
    pub actor: Actor,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
}

/// What kind of credential a use was made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    SdkKey,
    Token,
}

/// A credential used to authenticate at `at` (unix milliseconds), as
/// [`crate::Store::record_credential_uses`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUse {
    pub kind: CredentialKind,
    /// The SDK key's or the token's id.
    pub id: String,
    pub at: i64,
}
