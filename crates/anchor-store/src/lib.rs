//! # anchor-store: where Release Anchor keeps its state
//!
//! One async [`Store`] trait, implemented by [`SqlStore`] over an embedded SQLite database (the
//! default) or a PostgreSQL server (when several replicas share one store). Each backend has
//! its own migrations, applied when the store opens. The server holds the store as
//! `Arc<dyn Store>`.
//!
//! Every mutation runs in one transaction together with its audit entry and, for flag
//! configurations and segments, its immutable revision and the environment's revision counter:
//! either all of it is durable or none of it is. A segment's key lists live apart from its
//! rules, so that a list of 100,000 keys is neither read with every listing nor rewritten whole
//! by a change. SDK keys, like personal access tokens, are stored only as hashes of their
//! secrets.
//!
//! SDK telemetry is kept as per-minute sums (per environment, flag and variant), added to by
//! upserts; each batch's id is recorded with its counts, so a retried batch counts once.
//! Per-variant outcomes (exposures, requests, errors, latency sketches, custom metric sums)
//! are kept per minute beside them, recorded in the same transaction under the same batch id,
//! and read back merged as the rollout guardrails' [`anchor_rollout::ArmObservations`]. Old
//! minutes are compacted into hours, and older ones deleted ([`Store::compact_telemetry`]). On
//! PostgreSQL, every commit that moves an environment's revision counter or changes SDK keys
//! also notifies the other processes sharing the database ([`Store::changes`]).
//!
//! Project webhooks keep their signing secret as given, since the server needs it back to sign
//! deliveries; no read but the dispatcher's claim returns it. Their deliveries are an outbox:
//! pending rows that a dispatcher claims with a lease (a compare-and-set on the due time), so
//! servers sharing one database never send the same delivery at the same time. A write that
//! announces an event (a flag configuration changed, a release moved) records its deliveries
//! in its own transaction ([`OutboxEvent`]): a change is never committed without them.
//!
//! ## Example
//! ```
//! use anchor_store::{Actor, NewEnvironment, SqlStore, Store};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = std::env::temp_dir().join(format!("anchor-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let store = SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap();
//! let admin = Actor::user("admin");
//! store.create_project(&admin, "shop", "Shop").await.unwrap();
//! let production = NewEnvironment {
//!     key: "production".into(),
//!     name: "Production".into(),
//!     requires_approval: true,
//!     requires_comment: false,
//! };
//! store.create_environment(&admin, "shop", &production).await.unwrap();
//! let (config, revision) = store.environment_config("shop", "production").await.unwrap();
//! assert!(config.flags.is_empty());
//! assert_eq!(revision, 0);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # });
//! ```
//!
//! ## What this crate must never do
//! It holds all SQL and nothing else does; it knows nothing of HTTP. It stores what it is given:
//! validation of flag configurations belongs to the engine's compiler, called by the server
//! before writing. It never logs secrets.

mod environments;
mod sql;
mod types;

pub use environments::EnvironmentUpdate;
pub use sql::{Clock, SqlStore};
pub use types::*;

use anchor_engine::{EnvironmentConfig, Flag, FlagConfig};
use async_trait::async_trait;

/// The state of a Release Anchor installation.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_project(
        &self,
        actor: &Actor,
        key: &str,
        name: &str,
    ) -> Result<Project, StoreError>;
    async fn projects(&self) -> Result<Vec<Project>, StoreError>;
    async fn project(&self, key: &str) -> Result<Project, StoreError>;

    /// Adds an environment; every existing flag gets `initial` (with its off variant) there.
    /// It has no segments and no SDK keys: the server makes the keys, since only it generates
    /// secrets.
    async fn create_environment(
        &self,
        actor: &Actor,
        project: &str,
        environment: &NewEnvironment,
    ) -> Result<Environment, StoreError>;
    /// The project's environments in their display order.
    async fn environments(&self, project: &str) -> Result<Vec<Environment>, StoreError>;
    async fn environment(&self, project: &str, key: &str) -> Result<Environment, StoreError>;

    /// Creates a flag with `initial` as its configuration in every environment (version 1).
    async fn create_flag(
        &self,
        actor: &Actor,
        project: &str,
        flag: &Flag,
        initial: &FlagConfig,
    ) -> Result<FlagRecord, StoreError>;
    async fn flag(&self, project: &str, key: &str) -> Result<FlagRecord, StoreError>;
    /// Flags in key order, filtered, one page at a time.
    async fn flags(
        &self,
        project: &str,
        filter: &FlagFilter,
    ) -> Result<Page<FlagRecord>, StoreError>;
    /// Replaces a flag's definition (description, tags, variants, lifecycle).
    async fn update_flag(
        &self,
        actor: &Actor,
        project: &str,
        flag: &Flag,
        comment: Option<&str>,
    ) -> Result<FlagRecord, StoreError>;
    async fn set_flag_archived(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        archived: bool,
    ) -> Result<FlagRecord, StoreError>;

    /// Replaces a flag's configuration in one environment, if its version is still
    /// `expected_version` (when given): a new revision, an audit entry with the JSON diff, the
    /// environment's revision counter and the deliveries of the change's webhook event (see
    /// [`OutboxEvent`]), in one transaction. Returns the stored configuration with its new
    /// version.
    async fn update_flag_config(&self, change: &ConfigChange<'_>)
    -> Result<FlagConfig, StoreError>;
    /// The revisions of a flag's configuration in one environment, newest first.
    async fn flag_revisions(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
    ) -> Result<Vec<Revision>, StoreError>;
    async fn flag_revision(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        version: u64,
    ) -> Result<Revision, StoreError>;
    /// The earlier revisions of every flag configuration of a project: those older than the
    /// configuration's current version, newest first per flag and environment. One query
    /// for the lifecycle of a whole flag list, which needs to look back only while the
    /// configurations served what they serve now.
    async fn earlier_flag_revisions(&self, project: &str)
    -> Result<Vec<EarlierConfig>, StoreError>;

    /// Audit entries, newest first.
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;

    /// Creates a user; `password_hash` is an Argon2 PHC string made by the caller. Usernames
    /// are 1 to 64 characters of `[a-zA-Z0-9._@-]` (`Invalid` otherwise) and unique
    /// (`AlreadyExists { what: "user" }`). Audited in the instance audit log (`user.created`).
    async fn create_user(
        &self,
        actor: &Actor,
        username: &str,
        password_hash: &str,
        instance_admin: bool,
    ) -> Result<User, StoreError>;
    /// The user and their password hash, for login. `NotFound { what: "user" }` when unknown.
    async fn user_credentials(&self, username: &str) -> Result<(User, String), StoreError>;
    /// The user with this id. `NotFound { what: "user" }` when unknown.
    async fn user(&self, id: &str) -> Result<User, StoreError>;
    /// Every user, in username order.
    async fn users(&self) -> Result<Vec<User>, StoreError>;
    async fn count_users(&self) -> Result<u64, StoreError>;
    /// Grants (or changes) a user's role in a project. Audited in that project
    /// (`member.role_set`, resource kind `member`, keyed by username); setting the role the user
    /// already has changes nothing and writes no entry.
    async fn set_project_role(
        &self,
        actor: &Actor,
        project: &str,
        user_id: &str,
        role: Role,
    ) -> Result<(), StoreError>;
    /// The user's role in the project, if any.
    async fn project_role(&self, project: &str, user_id: &str) -> Result<Option<Role>, StoreError>;
    /// Stores a new personal access token (its hash only) and returns the record. Hashes are
    /// unique (`AlreadyExists { what: "token" }`). Audited in the instance audit log
    /// (`token.created`, keyed by the token's id; never the hash).
    async fn create_token(
        &self,
        actor: &Actor,
        token: &NewToken,
    ) -> Result<TokenRecord, StoreError>;
    /// Looks a token up by the hash of its secret. Revoked and expired tokens are returned as
    /// they are (the caller decides); an unknown hash gives `Ok(None)`.
    async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// The user's tokens, revoked ones included, newest first.
    async fn tokens(&self, user_id: &str) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes one of the user's tokens (`NotFound { what: "token" }` if the user has no such
    /// token). Audited (`token.revoked`); revoking a revoked token changes nothing.
    async fn revoke_token(
        &self,
        actor: &Actor,
        user_id: &str,
        token_id: &str,
    ) -> Result<(), StoreError>;
    /// Entries of the instance audit log (users and tokens), newest first, at most `limit`
    /// (1 to 1,000; 100 when 0). Their `project` is empty and their `environment` `None`.
    async fn instance_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;

    /// Stores a dashboard session: the hashes of its id and of its CSRF token. Sessions past
    /// their expiry are deleted on the way.
    async fn create_session(&self, session: &NewSession) -> Result<(), StoreError>;
    /// The session with this id hash, if it exists and has not expired at `now`.
    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<SessionRecord>, StoreError>;
    /// Ends a session (signing out); unknown sessions are ignored.
    async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError>;

    /// Creates a segment in one environment (version 1, or one past the last revision of a
    /// deleted segment of the same key, so a stale `If-Match` cannot match the new one). Its key
    /// must satisfy [`anchor_engine::model::is_valid_key`] (`Invalid` otherwise) and be new in
    /// the environment (`AlreadyExists { what: "segment" }`). Key lists are stored deduplicated.
    /// A revision (the whole segment) and an audit entry (`segment.created`; key lists only
    /// counted), and the environment's revision counter, in one transaction.
    async fn create_segment(&self, change: &SegmentChange<'_>)
    -> Result<SegmentRecord, StoreError>;
    /// Replaces a segment's rules, description and key lists if its version is still
    /// `expected_version` (when given; `VersionMismatch { what: "segment", .. }` otherwise, and
    /// nothing changes). Only the difference of the key lists is written. Audited
    /// (`segment.updated`) with the key lists only counted (`keyChanges`).
    async fn update_segment(&self, change: &SegmentChange<'_>)
    -> Result<SegmentRecord, StoreError>;
    /// One segment with its key lists. `NotFound { what: "segment" }` when unknown.
    async fn segment(
        &self,
        project: &str,
        environment: &str,
        key: &str,
    ) -> Result<SegmentRecord, StoreError>;
    /// The environment's segments without their key lists (only counted), in key order.
    async fn segments(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<Vec<SegmentSummary>, StoreError>;
    /// Deletes a segment and its key lists (audited `segment.deleted`, the environment's
    /// revision counter bumped); its revisions stay. Does not check whether flags use it: the
    /// server does that with the compiler.
    async fn delete_segment(
        &self,
        actor: &Actor,
        project: &str,
        environment: &str,
        key: &str,
    ) -> Result<(), StoreError>;
    /// The revisions of a segment, newest first (also of a deleted one; `NotFound { what:
    /// "segment" }` when there is neither the segment nor a revision).
    async fn segment_revisions(
        &self,
        project: &str,
        environment: &str,
        key: &str,
    ) -> Result<Vec<Revision>, StoreError>;

    /// Stores a new SDK key of an environment (its hash and prefix only). Hashes are unique
    /// (`AlreadyExists { what: "sdk key" }`). Audited (`sdk_key.created`, keyed by the key's
    /// id; the diff holds the kind and prefix, never the hash).
    async fn create_sdk_key(
        &self,
        actor: &Actor,
        key: &NewSdkKey,
    ) -> Result<SdkKeyRecord, StoreError>;
    /// Creates the new key and, in the same transaction, sets `expires_at` to `now +
    /// overlap_ms` on every other unrevoked, unexpired key of that kind in that environment (a
    /// key that already expires sooner keeps its expiry). `overlap_ms` must not be negative.
    /// Audited (`sdk_key.rotated`, keyed by the new key's id, listing the keys set to expire).
    async fn rotate_sdk_key(
        &self,
        actor: &Actor,
        key: &NewSdkKey,
        overlap_ms: i64,
    ) -> Result<SdkKeyRecord, StoreError>;
    /// Revokes an SDK key of the environment (`NotFound { what: "sdk key" }` when the
    /// environment has no such key). Audited (`sdk_key.revoked`); revoking a revoked key
    /// changes nothing.
    async fn revoke_sdk_key(
        &self,
        actor: &Actor,
        project: &str,
        environment: &str,
        id: &str,
    ) -> Result<(), StoreError>;
    /// The environment's SDK keys, newest first, revoked and expired ones included.
    async fn sdk_keys(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<Vec<SdkKeyRecord>, StoreError>;
    /// The SDK key with this hash, whatever its state (the caller checks `revoked` and
    /// `expires_at`), or `None`.
    async fn sdk_key_by_hash(&self, key_hash: &str) -> Result<Option<SdkKeyRecord>, StoreError>;

    /// Creates a change request for one flag in one environment: open, or approved when
    /// `pre_approved`. `NotFound` for an unknown project, environment or flag;
    /// `VersionMismatch { what: "flag configuration", .. }` when `base_version` is no longer the
    /// configuration's version (the proposal could never apply). Audited
    /// (`change_request.created`, resource kind `change_request`, keyed by the request's id).
    /// Changes no configuration and not the environment's revision counter.
    async fn create_change_request(
        &self,
        new: &NewChangeRequest<'_>,
    ) -> Result<ChangeRequest, StoreError>;
    /// A change request proposing a segment (create or replace) in one environment, made
    /// against the segment's current version (0 when it does not exist yet), always open.
    /// `Invalid` for a segment key that fails [`anchor_engine::model::is_valid_key`];
    /// `NotFound` for an unknown project or environment; `VersionMismatch { what: "segment",
    /// .. }` when `base_version` is not the segment's current version (the proposal could never
    /// apply). The proposal keeps the key lists deduplicated and in byte order. Audited
    /// (`change_request.created`, resource kind `change_request`, keyed by the request's id;
    /// key lists only counted). Changes no segment and not the environment's revision counter.
    async fn create_segment_change_request(
        &self,
        actor: &Actor,
        project: &str,
        environment: &str,
        segment: &anchor_engine::Segment,
        base_version: u64,
        comment: Option<&str>,
    ) -> Result<ChangeRequest, StoreError>;
    /// One change request of the project, with the reviews of its current proposal.
    /// `NotFound { what: "change request" }` when the project has no such request.
    async fn change_request(&self, project: &str, id: &str) -> Result<ChangeRequest, StoreError>;
    /// The project's change requests, newest first; only those of one status and/or one
    /// environment when given (`NotFound { what: "environment" }` for an unknown one).
    async fn change_requests(
        &self,
        project: &str,
        status: Option<ChangeRequestStatus>,
        environment: Option<&str>,
    ) -> Result<Vec<ChangeRequest>, StoreError>;
    /// Replaces the proposal, base version, comment and `apply_at` of an open or approved
    /// request (`Invalid` in any other state): the earlier reviews no longer count (they stay
    /// stored, but are not returned) and the status goes back to `Open`. `VersionMismatch` as
    /// in [`Store::create_change_request`] when `base_version` is not the configuration's
    /// current version. Audited (`change_request.updated`). The caller checks that the actor
    /// is the author. Flag requests only: `Invalid` for a segment request.
    #[allow(clippy::too_many_arguments)]
    async fn update_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        proposed: &FlagConfig,
        base_version: u64,
        comment: Option<&str>,
        apply_at: Option<i64>,
    ) -> Result<ChangeRequest, StoreError>;
    /// Replaces the proposed segment (and comment) of an open or approved segment change
    /// request, made against `base_version` (the segment's current version, 0 when it does not
    /// exist): the earlier reviews no longer count and the status goes back to `Open`, as
    /// [`Store::update_change_request`] does for flag requests (audited
    /// `change_request.updated`). `Invalid` for a flag request, a deletion request, a segment
    /// of another key or a request in another state; `VersionMismatch { what: "segment" }`
    /// when `base_version` is not current. The caller checks that the actor is the author.
    async fn update_segment_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        segment: &anchor_engine::Segment,
        base_version: u64,
        comment: Option<&str>,
    ) -> Result<ChangeRequest, StoreError>;
    /// A change request proposing to delete a segment, which must exist (`NotFound { what:
    /// "segment" }` otherwise), made against its current version (`VersionMismatch { what:
    /// "segment" }` otherwise). Read back with `resource_kind` `segment_deletion`, `flag` the
    /// segment's key and no `segment`; applying it deletes the segment as
    /// [`Store::delete_segment`] does. Not editable. Audited (`change_request.created`).
    async fn create_segment_deletion_request(
        &self,
        actor: &Actor,
        project: &str,
        environment: &str,
        key: &str,
        base_version: u64,
        comment: Option<&str>,
    ) -> Result<ChangeRequest, StoreError>;
    /// Records a review of an open or approved request: `Approve` makes it (or keeps it)
    /// `Approved`, `Reject` makes it `Rejected`. `Invalid` for a request in another state.
    /// Audited (`change_request.approved` or `change_request.rejected`, with the review's
    /// comment). The caller enforces roles and that the reviewer is not the author.
    async fn review_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        decision: ReviewDecision,
        comment: Option<&str>,
    ) -> Result<ChangeRequest, StoreError>;
    /// Withdraws an open or approved request (`Cancelled`; `Invalid` in any other state).
    /// Audited (`change_request.cancelled`).
    async fn cancel_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
    ) -> Result<ChangeRequest, StoreError>;
    /// Applies an approved request, in one transaction: bumps the environment's revision
    /// counter (which serialises writers), checks that the request is still `Approved`
    /// (`Invalid` "not approved" otherwise) and that the configuration's version is still its
    /// `base_version` (`VersionMismatch { what: "flag configuration", expected: base_version,
    /// actual }` otherwise), and writes the proposal exactly as
    /// [`Store::update_flag_config`] does: a new version, a revision (with the request's
    /// comment) and an audit entry (`change_request.applied`, resource kind `flag`, the diff of
    /// the configuration, the request's id in the comment). The request becomes `Applied` with
    /// `applied_version`, guarded by its status, so it is applied at most once whoever tries.
    /// The deliveries of `event` (the webhook event announcing the change, its `version` set to
    /// `applied_version` as [`OutboxEvent`] says) are recorded in the same transaction. On any
    /// error nothing is written. `actor` is who applies: a user, or
    /// `Actor::system("scheduler")`.
    ///
    /// A segment request applies the same way: the segment's version must still be its
    /// `base_version` (0: it must not exist; `VersionMismatch { what: "segment", .. }`
    /// otherwise), then the segment is created or replaced exactly as
    /// [`Store::create_segment`] / [`Store::update_segment`] do (revision with the request's
    /// comment; audit entry `change_request.applied`, resource kind `segment`), and
    /// `applied_version` is the segment's new version.
    async fn apply_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        event: Option<OutboxEvent<'_>>,
    ) -> Result<ChangeRequest, StoreError>;
    /// Approved requests with an `apply_at` at or before `now`, across all projects, oldest
    /// `apply_at` first, at most `limit` (1 to 1,000; 100 when 0): (project key, request id).
    async fn due_change_requests(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Marks an approved request `Failed` with `reason` (a scheduled apply that could not
    /// apply it; `Invalid` in any other state). Audited (`change_request.failed`, the reason as
    /// its comment).
    async fn fail_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        reason: &str,
    ) -> Result<ChangeRequest, StoreError>;

    /// Everything the engine needs to evaluate one environment (archived flags left out; its
    /// segments with their key lists, both in key order), and the environment's revision
    /// counter, read from one consistent snapshot.
    async fn environment_config(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<(EnvironmentConfig, u64), StoreError>;

    /// Adds a telemetry batch's evaluation counts to the environment's per-minute totals (per
    /// flag and variant), if the environment has not seen `batch_id` yet: the id is recorded in
    /// the same transaction as the counts, so a retried batch counts once, even when the retry
    /// races the original. Returns whether the batch was new. Batch ids are remembered for
    /// [`TELEMETRY_BATCH_MEMORY_MS`] at most ([`Store::compact_telemetry`] forgets them sooner,
    /// once ingestion would refuse a retry anyway). The caller validates the rows (minutes multiples of 60,
    /// counts at least 1, variants never empty); rows with the same key are summed.
    async fn record_evaluations(
        &self,
        project: &str,
        environment: &str,
        batch_id: &str,
        rows: &[EvaluationCount],
    ) -> Result<bool, StoreError> {
        self.record_telemetry(project, environment, batch_id, rows, &[])
            .await
    }
    /// [`Store::record_evaluations`] with the batch's per-variant outcomes too, all in one
    /// transaction under the one batch id (a retried batch adds neither twice). Outcomes are
    /// merged into the per-minute aggregate of their (flag, variant): exposures, requests and
    /// errors added, latency sketches merged (counts added per bucket), metric sums added per
    /// name (at most [`MAX_METRICS_PER_AGGREGATE`] names per aggregate), coverage counts added
    /// per (flag, minute, variant, attribute, value). Concurrent batches
    /// touching the same aggregate take turns on its row, so none is lost. `Invalid` (and
    /// nothing written) for a minute not a multiple of 60, an empty variant, more errors than
    /// requests or an empty coverage attribute or value; rows with the same key are merged.
    async fn record_telemetry(
        &self,
        project: &str,
        environment: &str,
        batch_id: &str,
        evaluations: &[EvaluationCount],
        outcomes: &[OutcomeAggregate],
    ) -> Result<bool, StoreError>;
    /// The evaluation counts of one flag in one environment for the minutes in
    /// `[from_minute, to_minute)` (unix seconds), by minute then variant (`None`, the default,
    /// first). `NotFound` for an unknown project or environment; a flag never reported has no
    /// rows.
    async fn evaluation_counts(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<Vec<EvaluationCount>, StoreError>;

    /// Compacts old telemetry (evaluation counts, outcome aggregates and coverage counts of
    /// every environment): rows older than `retention.keep_secs` are deleted; minutes of whole
    /// hours older than `retention.minute_secs` are merged into one row per (flag, hour,
    /// variant), and for coverage per attribute and value too, at the hour's start (counts
    /// added, sketches and metric sums merged), which reads over a range then count when the
    /// hour's start lies in it; batch ids older than `retention.batch_ids_ms` are forgotten.
    /// It works in transactions of at most `retention.rows_per_transaction` rows, each
    /// deleting exactly the minute rows it merges (`DELETE … RETURNING`), so ingestion waits
    /// at most one short transaction and compactions running at once on one database never
    /// merge a minute twice.
    async fn compact_telemetry(
        &self,
        retention: &TelemetryRetention,
    ) -> Result<CompactionReport, StoreError>;
    /// The latest minute each flag was reported evaluated in each environment of a project
    /// (every key an SDK reported, defined or not), by flag then environment. `NotFound` for an
    /// unknown project.
    async fn last_evaluations(&self, project: &str) -> Result<Vec<LastEvaluation>, StoreError>;

    /// Creates or replaces a release template (`If-Match`: `expected_version`, when given;
    /// `VersionMismatch { what: "release template" }` otherwise). Audited
    /// (`release_template.created` / `release_template.updated`).
    async fn put_release_template(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        name: &str,
        template: &serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<ReleaseTemplateRecord, StoreError>;
    /// The project's templates by key.
    async fn release_templates(
        &self,
        project: &str,
    ) -> Result<Vec<ReleaseTemplateRecord>, StoreError>;
    /// `NotFound { what: "release template" }` when unknown.
    async fn release_template(
        &self,
        project: &str,
        key: &str,
    ) -> Result<ReleaseTemplateRecord, StoreError>;
    /// Deletes a template (releases started from it keep their copy). Audited.
    async fn delete_release_template(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
    ) -> Result<(), StoreError>;

    /// Creates an active release with its first decision and an audit entry
    /// (`release.created`). `AlreadyExists { what: "active release" }` when the flag already
    /// has an active release in that environment; `NotFound` for an unknown project,
    /// environment or flag.
    async fn create_release(&self, new: &NewRelease<'_>) -> Result<ReleaseRecord, StoreError>;
    /// One release; `NotFound { what: "release" }` when unknown in the project.
    async fn release(&self, project: &str, id: &str) -> Result<ReleaseRecord, StoreError>;
    /// The project's releases, newest first, optionally of one environment and one flag.
    async fn releases(
        &self,
        project: &str,
        environment: Option<&str>,
        flag: Option<&str>,
    ) -> Result<Vec<ReleaseRecord>, StoreError>;
    /// Every active release of every project, for the controller.
    async fn active_releases(&self) -> Result<Vec<ReleaseRecord>, StoreError>;
    /// Writes one transition in one transaction: the flag's new configuration when given
    /// (bumping the environment's revision, with its revision and audit entry), the release's
    /// state (only if its version is still `expected_version`), its decision, its audit entry,
    /// and the deliveries of its webhook events. A transition that makes the release active or
    /// inactive without a new configuration bumps the environment's revision too, since the
    /// flags under an active release are part of what SDKs download.
    async fn update_release(&self, update: &ReleaseUpdate<'_>)
    -> Result<ReleaseRecord, StoreError>;
    /// The decision log, oldest first.
    async fn release_decisions(
        &self,
        project: &str,
        id: &str,
    ) -> Result<Vec<ReleaseDecision>, StoreError>;
    /// Keeps the guardrails' latest report of an active release (no audit entry: a report is
    /// evidence, not a change). Only while the state is still `expected_version`, so a report
    /// never lands on a state it was not made for; `false` otherwise.
    async fn record_release_report(
        &self,
        id: &str,
        expected_version: u64,
        report: &serde_json::Value,
    ) -> Result<bool, StoreError>;
    /// Takes (or renews) the right to drive a release until `now + ttl_ms`: `true` when
    /// `owner` holds it now, `false` when another owner's lease has not expired. Several
    /// servers sharing the database use it so that only one acts on a release at a time.
    async fn claim_release(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Creates a webhook of the project (`NotFound` for an unknown project). The secret is kept
    /// as given and never returned by the webhook reads. Audited (`webhook.created`, resource
    /// kind `webhook`, keyed by its id; never the secret).
    async fn create_webhook(
        &self,
        actor: &Actor,
        project: &str,
        webhook: &NewWebhook,
    ) -> Result<Webhook, StoreError>;
    /// The project's webhooks, oldest first.
    async fn webhooks(&self, project: &str) -> Result<Vec<Webhook>, StoreError>;
    /// One webhook of the project (`NotFound { what: "webhook" }` when it has no such one).
    async fn webhook(&self, project: &str, id: &str) -> Result<Webhook, StoreError>;
    /// Changes the fields given. Audited (`webhook.updated`, the diff of the record) when
    /// something changed; an update that changes nothing writes nothing.
    async fn update_webhook(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        update: &WebhookUpdate,
    ) -> Result<Webhook, StoreError>;
    /// Replaces the signing secret; deliveries from now on are signed with the new one.
    /// Audited (`webhook.secret_rotated`, without either secret).
    async fn rotate_webhook_secret(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        secret: &str,
    ) -> Result<Webhook, StoreError>;
    /// Deletes a webhook and its delivery log. Audited (`webhook.deleted`).
    async fn delete_webhook(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
    ) -> Result<(), StoreError>;
    /// Records one pending delivery of an event, due now: to every enabled webhook of the
    /// project subscribed to `event_type`, or, with `only`, to that webhook whatever its
    /// subscriptions and state (a test delivery; `NotFound { what: "webhook" }` when the project
    /// has no such webhook). Returns the deliveries made, none when nobody listens. In a
    /// transaction of its own: an event announcing a write is recorded by that write instead
    /// ([`OutboxEvent`]), so that it cannot be lost between the two.
    async fn enqueue_webhook_deliveries(
        &self,
        project: &str,
        event_type: &str,
        data: &serde_json::Value,
        only: Option<&str>,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// Claims up to `limit` (1 to 1,000; 100 when 0) pending deliveries due at `now`, oldest due
    /// first, across all projects: each claim moves the delivery's `next_attempt_at` to `now +
    /// lease_ms` and counts an attempt, guarded by its previous `next_attempt_at`, so that
    /// concurrent claimers (other servers on the same database) get disjoint deliveries. A
    /// delivery whose claimer died before recording an outcome is due again when its lease ends.
    async fn claim_webhook_deliveries(
        &self,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;
    /// Records an attempt's outcome, if the claim still holds (the delivery is pending with
    /// `next_attempt_at` still the claim's `lease_until`). Returns whether it was recorded.
    /// `Invalid` for `Pending` without `next_attempt_at`.
    async fn finish_webhook_delivery(
        &self,
        outcome: &DeliveryOutcome<'_>,
    ) -> Result<bool, StoreError>;
    /// A webhook's deliveries, newest first, at most `limit` (1 to 1,000; 100 when 0).
    /// `NotFound { what: "webhook" }` when the project has no such webhook.
    async fn webhook_deliveries(
        &self,
        project: &str,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// Keeps the delivery log bounded: deletes deliveries created before `older_than` (unix
    /// milliseconds) and all but the newest `keep_per_webhook` of each webhook, whatever their
    /// status. Returns how many were deleted.
    async fn prune_webhook_deliveries(
        &self,
        older_than: i64,
        keep_per_webhook: u32,
    ) -> Result<u64, StoreError>;
    /// The outcome aggregates of one flag in one environment for the minutes in
    /// `[from_minute, to_minute)` (unix seconds), by minute then variant (byte order).
    /// `NotFound` for an unknown project or environment; a flag never reported has no rows.
    async fn outcome_minutes(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<Vec<OutcomeAggregate>, StoreError>;
    /// What the rollout controller judges: the outcomes of one flag in one environment over
    /// the minutes in `[from_minute, to_minute)`, merged per variant (exposures, requests and
    /// errors summed, sketches and metric sums merged). Reads each minute's row once and
    /// merges as it goes, so a few hours of minutes cost a few hundred rows. A variant with no
    /// row in the range is absent. `NotFound` for an unknown project or environment.
    async fn outcome_observations(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<std::collections::BTreeMap<String, anchor_rollout::ArmObservations>, StoreError>;

    /// Canary coverage: the exposures of one flag in one environment over the minutes in
    /// `[from_minute, to_minute)`, summed per variant, coverage attribute and value (as the
    /// outcome rows' `coverage` carried them). A variant without counts in the range is
    /// absent. `NotFound` for an unknown project or environment.
    async fn coverage_counts(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<std::collections::BTreeMap<String, anchor_rollout::coverage::ValueCounts>, StoreError>;

    /// The configuration changes committed through every process sharing this store, as they
    /// commit: on PostgreSQL, every write that bumps an environment's revision counter and
    /// every change of SDK keys sends a notification (`pg_notify`) inside its transaction, so
    /// it is heard exactly when, and only if, it commits. `None` on SQLite, which one process
    /// alone writes. Each call makes an independent feed, connected on its first `next`.
    fn changes(&self) -> Option<Box<dyn ChangeFeed>> {
        None
    }

    /// Changes the fields of an environment that `update` gives (`NotFound { what:
    /// "environment" }` when unknown). A new position (0 to the number of the project's
    /// environments less one; `Invalid` otherwise, as is an empty name) moves the environment
    /// there and shifts those in between by one, so that positions stay 0, 1, 2… in a stable
    /// order. Audited (`environment.updated`, the environment before and after, with
    /// `comment`) when something changed; an update that changes nothing writes nothing. The
    /// revision counter does not move: nothing evaluated changes.
    async fn update_environment(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        update: &EnvironmentUpdate,
        comment: Option<&str>,
    ) -> Result<Environment, StoreError>;
    /// Deletes an environment and everything that lives in it, in one transaction: its flag
    /// configurations, revisions, segments with their key lists, SDK keys, change requests with
    /// their reviews, finished releases with their decisions, and its telemetry (evaluation
    /// counts, outcome aggregates, coverage counts, last evaluations, batch ids). The project's
    /// audit log keeps its entries, no longer tied to the environment (their `environment` reads
    /// as none). The environments after it move up one position. Audited
    /// (`environment.deleted`, the environment and the count of what went with it). On
    /// PostgreSQL, the commit announces the environment's last revision and a change of SDK
    /// keys ([`Store::changes`]), so other servers drop the snapshot and forget the keys.
    /// `Invalid` (and nothing deleted) while a release is active there or when it is the
    /// project's only environment.
    async fn delete_environment(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
    ) -> Result<(), StoreError>;
    /// Records that SDK keys and tokens were used: each one's `last_used_at` becomes the latest
    /// of its recorded time and the use's `at`, so it only moves forward, whichever of several
    /// servers sharing the store writes last, and in whatever order. Unknown ids (a key deleted
    /// meanwhile) are skipped. Each credential is written by a statement of its own, outside
    /// any longer transaction, so a flush never waits for one lock while holding another and
    /// cannot deadlock; after an error, the uses before it are recorded. No audit entry, since
    /// a use changes nothing anyone configured, and no change notification.
    async fn record_credential_uses(&self, uses: &[CredentialUse]) -> Result<(), StoreError>;
}

/// Committed changes, as they are committed by any process sharing the database.
#[async_trait]
pub trait ChangeFeed: Send + std::fmt::Debug {
    /// Waits for the next change. After an error (the database is unreachable) the caller
    /// waits a moment and calls again: the feed reconnects and reports [`Change::Resync`].
    async fn next(&mut self) -> Result<Change, StoreError>;
}
