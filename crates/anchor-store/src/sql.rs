//! The SQL backends. One code path serves SQLite and PostgreSQL through sqlx's `Any` driver:
//! the schemas keep to types both decode alike (TEXT, BIGINT), every statement uses `$n`
//! placeholders, `ON CONFLICT` and `RETURNING`, which both accept, and each backend keeps its
//! own migrations.

mod releases;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anchor_engine::{ConfiguredFlag, EnvironmentConfig, Flag, FlagConfig, Segment, Serve};
use anchor_rollout::ArmObservations;
use anchor_rollout::coverage::ValueCounts;
use async_trait::async_trait;
use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection, Executor, Row};

use crate::types::*;
use crate::{ChangeFeed, EnvironmentUpdate, Store};

mod environments;
mod telemetry;
mod webhooks;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The current time in unix milliseconds; replaceable so tests can control time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

/// A [`Store`] over SQLite or PostgreSQL.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    clock: Clock,
    /// On PostgreSQL: where committed changes are announced to every process sharing the
    /// database (see [`crate::ChangeFeed`]).
    changes: Option<Arc<ChangeChannel>>,
}

/// A PostgreSQL notification channel for committed changes, and how to listen to it.
struct ChangeChannel {
    /// The connection URL (it may hold a password: never printed).
    url: String,
    /// `anchor_changes`, or `anchor_changes_<schema>` for a store in its own schema:
    /// notifications are database-wide, so stores in other schemas of the same database (the
    /// contract suite runs many at once) must not hear each other.
    name: String,
}

/// The longest channel name PostgreSQL keeps (NAMEDATALEN - 1); longer ones are refused.
const MAX_CHANNEL_NAME: usize = 63;

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Opens (creating it if needed) the SQLite database at `path` in WAL mode and applies its
    /// migrations. Committed transactions survive a crash of the process.
    pub async fn open_sqlite(path: &std::path::Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(SqlStore {
            pool,
            backend: Backend::Sqlite,
            clock: system_clock(),
            changes: None,
        })
    }

    /// Connects to PostgreSQL and applies its migrations. With `schema`, every connection works
    /// in that schema (created if missing): the contract suite uses a fresh one per run.
    pub async fn open_postgres(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if let Some(schema) = schema {
            if !schema
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(StoreError::Invalid(format!("bad schema name `{schema}`")));
            }
            if CHANGE_CHANNEL.len() + 1 + schema.len() > MAX_CHANNEL_NAME {
                return Err(StoreError::Invalid(format!(
                    "schema name `{schema}` is longer than {} characters",
                    MAX_CHANNEL_NAME - CHANGE_CHANNEL.len() - 1
                )));
            }
            let mut conn = AnyConnection::connect(url).await?;
            conn.execute(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .await?;
            conn.close().await?;
        }
        let channel = match schema {
            Some(schema) => format!("{CHANGE_CHANNEL}_{schema}"),
            None => CHANGE_CHANNEL.to_string(),
        };
        let schema = schema.map(str::to_string);
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    if let Some(schema) = schema {
                        conn.execute(AssertSqlSafe(format!("SET search_path TO {schema}")))
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(SqlStore {
            pool,
            backend: Backend::Postgres,
            clock: system_clock(),
            changes: Some(Arc::new(ChangeChannel {
                url: url.to_string(),
                name: channel,
            })),
        })
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The channel that committed changes are announced on, on PostgreSQL.
    fn channel(&self) -> Option<&str> {
        self.changes.as_deref().map(|c| c.name.as_str())
    }

    /// Begins a write transaction. SQLite takes the write lock up front (`BEGIN IMMEDIATE`), so
    /// a transaction that reads before it writes cannot fail to upgrade its lock.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Begins a read-only transaction in which every statement sees the same snapshot: on
    /// SQLite (WAL) a deferred transaction keeps the snapshot of its first read, on PostgreSQL
    /// that takes `REPEATABLE READ`.
    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?
            }
        })
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn flag_value(flag: &Flag) -> Result<Value, StoreError> {
    serde_json::to_value(flag).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn limit(requested: u32) -> i64 {
    match requested {
        0 => 100,
        n => i64::from(n.min(1_000)),
    }
}

/// Maps a unique-constraint violation to `AlreadyExists`.
fn unique<'a>(what: &'static str, key: &'a str) -> impl FnOnce(sqlx::Error) -> StoreError + 'a {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists {
            what,
            key: key.to_string(),
        },
        _ => StoreError::Database(e),
    }
}

async fn project_id(conn: &mut AnyConnection, key: &str) -> Result<String, StoreError> {
    sqlx::query("SELECT id FROM projects WHERE key = $1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get::<String, _>("id"))
        .transpose()?
        .ok_or_else(|| StoreError::not_found("project", key))
}

async fn environment_id(
    conn: &mut AnyConnection,
    project_id: &str,
    key: &str,
) -> Result<String, StoreError> {
    sqlx::query("SELECT id FROM environments WHERE project_id = $1 AND key = $2")
        .bind(project_id)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get::<String, _>("id"))
        .transpose()?
        .ok_or_else(|| StoreError::not_found("environment", key))
}

async fn flag_row(
    conn: &mut AnyConnection,
    project_id: &str,
    key: &str,
) -> Result<AnyRow, StoreError> {
    sqlx::query(
        "SELECT id, definition, archived, created_at, updated_at FROM flags \
         WHERE project_id = $1 AND key = $2",
    )
    .bind(project_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found("flag", key))
}

/// The base name of the PostgreSQL channel that announces committed changes.
const CHANGE_CHANNEL: &str = "anchor_changes";

/// Increments the revision counter of the environments given (all of the project's when
/// `environment_id` is `None`) and, on PostgreSQL (`channel`), announces each new revision.
/// A notification is delivered when, and only if, the transaction commits, so listeners never
/// read ahead of the data and never hear of a write that was rolled back.
async fn bump_revision(
    conn: &mut AnyConnection,
    project_id: &str,
    environment_id: Option<&str>,
    channel: Option<&str>,
) -> Result<(), StoreError> {
    let (filter, id) = match environment_id {
        Some(env) => ("id", env),
        None => ("project_id", project_id),
    };
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE environments SET revision = revision + 1 WHERE {filter} = $1"
    )))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if let Some(channel) = channel {
        // `count` only because `pg_notify` returns `void`, which the `Any` driver cannot
        // decode. The payload is `crate::Change::Environment` as JSON.
        sqlx::query(AssertSqlSafe(format!(
            "SELECT count(pg_notify($1, json_build_object('kind', 'environment', \
             'project', p.key, 'environment', e.key, 'revision', e.revision)::text)) AS n \
             FROM environments e JOIN projects p ON p.id = e.project_id WHERE e.{filter} = $2"
        )))
        .bind(channel)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Announces, on PostgreSQL (`channel`), that SDK keys changed, at commit.
async fn notify_sdk_keys(
    conn: &mut AnyConnection,
    channel: Option<&str>,
) -> Result<(), StoreError> {
    if let Some(channel) = channel {
        sqlx::query("SELECT count(pg_notify($1, '{\"kind\":\"sdk_keys\"}')) AS n")
            .bind(channel)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

struct AuditRecord<'a> {
    project_id: &'a str,
    environment_id: Option<&'a str>,
    actor: &'a Actor,
    action: &'a str,
    resource_kind: &'a str,
    resource_key: &'a str,
    before: &'a Value,
    after: &'a Value,
    comment: Option<&'a str>,
    at: i64,
}

async fn audit(conn: &mut AnyConnection, record: AuditRecord<'_>) -> Result<(), StoreError> {
    let diff = json_patch::diff(record.before, record.after);
    sqlx::query(
        "INSERT INTO audit_log (id, project_id, environment_id, actor_kind, actor_id, action, \
         resource_kind, resource_key, diff, comment, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(new_id())
    .bind(record.project_id)
    .bind(record.environment_id)
    .bind(record.actor.kind.as_str())
    .bind(&record.actor.id)
    .bind(record.action)
    .bind(record.resource_kind)
    .bind(record.resource_key)
    .bind(to_json(&diff)?)
    .bind(record.comment)
    .bind(record.at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An entry of the instance audit log: events that belong to no project (users, tokens).
struct InstanceAuditRecord<'a> {
    actor: &'a Actor,
    action: &'a str,
    resource_kind: &'a str,
    resource_key: &'a str,
    before: &'a Value,
    after: &'a Value,
    at: i64,
}

async fn instance_audit(
    conn: &mut AnyConnection,
    record: InstanceAuditRecord<'_>,
) -> Result<(), StoreError> {
    let diff = json_patch::diff(record.before, record.after);
    sqlx::query(
        "INSERT INTO instance_audit_log (id, actor_kind, actor_id, action, resource_kind, \
         resource_key, diff, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new_id())
    .bind(record.actor.kind.as_str())
    .bind(&record.actor.id)
    .bind(record.action)
    .bind(record.resource_kind)
    .bind(record.resource_key)
    .bind(to_json(&diff)?)
    .bind(record.at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// 1 to 64 characters of `[a-zA-Z0-9._@-]`.
fn is_valid_username(username: &str) -> bool {
    (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// At most this many characters in a token's name.
const MAX_TOKEN_NAME: usize = 100;

fn role_from(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown role `{text}`")))
}

fn user_from(row: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        instance_admin: row.try_get::<i64, _>("instance_admin")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

async fn load_user(conn: &mut AnyConnection, id: &str) -> Result<User, StoreError> {
    let row =
        sqlx::query("SELECT id, username, instance_admin, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::not_found("user", id))?;
    user_from(&row)
}

/// The columns [`token_from`] reads, with `FROM`: append a `WHERE` clause.
macro_rules! select_tokens {
    () => {
        "SELECT t.id, t.name, t.role, t.expires_at, t.created_at, t.revoked_at, t.last_used_at, \
         u.id AS user_id, u.username, u.instance_admin, u.created_at AS user_created_at \
         FROM tokens t JOIN users u ON u.id = t.user_id "
    };
}

fn token_from(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: row.try_get("id")?,
        user: User {
            id: row.try_get("user_id")?,
            username: row.try_get("username")?,
            instance_admin: row.try_get::<i64, _>("instance_admin")? != 0,
            created_at: row.try_get("user_created_at")?,
        },
        name: row.try_get("name")?,
        role: role_from(&row.try_get::<String, _>("role")?)?,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
        revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        last_used_at: row.try_get("last_used_at")?,
    })
}

struct RevisionRecord<'a> {
    environment_id: &'a str,
    /// `flag` or `segment`.
    resource_kind: &'a str,
    resource_key: &'a str,
    version: i64,
    body: &'a str,
    actor: &'a Actor,
    comment: Option<&'a str>,
    at: i64,
}

async fn insert_revision(
    conn: &mut AnyConnection,
    r: RevisionRecord<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revisions (id, environment_id, resource_kind, resource_key, version, body, \
         actor_kind, actor_id, comment, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(new_id())
    .bind(r.environment_id)
    .bind(r.resource_kind)
    .bind(r.resource_key)
    .bind(r.version)
    .bind(r.body)
    .bind(r.actor.kind.as_str())
    .bind(&r.actor.id)
    .bind(r.comment)
    .bind(r.at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A write of one flag's configuration in one environment, see [`write_flag_config`].
struct ConfigWrite<'a> {
    project_id: &'a str,
    environment_id: &'a str,
    flag: &'a str,
    /// Its `version` is ignored: the store sets it.
    config: &'a FlagConfig,
    /// The version the writer read; `None` to write unconditionally.
    expected_version: Option<u64>,
    actor: &'a Actor,
    /// Kept with the revision.
    comment: Option<&'a str>,
    /// Kept with the audit entry.
    audit_comment: Option<&'a str>,
    action: &'a str,
    at: i64,
}

/// Replaces a flag's configuration in one environment inside the caller's transaction, which
/// has already bumped the environment's revision counter (taking its lock on PostgreSQL): checks
/// the version, writes the configuration with the next version, its revision and its audit
/// entry (the diff of the configuration). Returns the stored configuration with its new version.
/// The caller rolls back on error.
async fn write_flag_config(
    conn: &mut AnyConnection,
    w: ConfigWrite<'_>,
) -> Result<FlagConfig, StoreError> {
    let flag_id: String = flag_row(conn, w.project_id, w.flag).await?.try_get("id")?;
    let current = sqlx::query(
        "SELECT config, version FROM flag_configs WHERE flag_id = $1 AND environment_id = $2",
    )
    .bind(&flag_id)
    .bind(w.environment_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found("flag configuration", w.flag))?;
    let version = current.try_get::<i64, _>("version")? as u64;
    if let Some(expected) = w.expected_version
        && expected != version
    {
        return Err(StoreError::VersionMismatch {
            what: "flag configuration",
            expected,
            actual: version,
        });
    }
    let before: Value = from_json(&current.try_get::<String, _>("config")?)?;
    let mut config = w.config.clone();
    config.version = version + 1;
    let body = to_json(&config)?;
    // The version in the WHERE clause makes the write conditional even if another writer
    // slipped in (PostgreSQL runs these transactions concurrently).
    let updated = sqlx::query(
        "UPDATE flag_configs SET config = $1, enabled = $2, version = $3, updated_at = $4 \
         WHERE flag_id = $5 AND environment_id = $6 AND version = $7",
    )
    .bind(&body)
    .bind(i64::from(config.enabled))
    .bind(config.version as i64)
    .bind(w.at)
    .bind(&flag_id)
    .bind(w.environment_id)
    .bind(version as i64)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(StoreError::VersionMismatch {
            what: "flag configuration",
            expected: version,
            actual: version + 1,
        });
    }
    insert_revision(
        conn,
        RevisionRecord {
            environment_id: w.environment_id,
            resource_kind: "flag",
            resource_key: w.flag,
            version: config.version as i64,
            body: &body,
            actor: w.actor,
            comment: w.comment,
            at: w.at,
        },
    )
    .await?;
    let after: Value = from_json(&body)?;
    audit(
        conn,
        AuditRecord {
            project_id: w.project_id,
            environment_id: Some(w.environment_id),
            actor: w.actor,
            action: w.action,
            resource_kind: "flag",
            resource_key: w.flag,
            before: &before,
            after: &after,
            comment: w.audit_comment,
            at: w.at,
        },
    )
    .await?;
    Ok(config)
}

fn project_from(row: &AnyRow) -> Result<Project, StoreError> {
    Ok(Project {
        key: row.try_get("key")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn environment_from(row: &AnyRow, project: &str) -> Result<Environment, StoreError> {
    Ok(Environment {
        project: project.to_string(),
        key: row.try_get("key")?,
        name: row.try_get("name")?,
        position: row.try_get("position")?,
        requires_approval: row.try_get::<i64, _>("requires_approval")? != 0,
        requires_comment: row.try_get::<i64, _>("requires_comment")? != 0,
        revision: row.try_get::<i64, _>("revision")? as u64,
        created_at: row.try_get("created_at")?,
    })
}

/// Reads a flag with its configurations, in environment order.
async fn load_flag(
    conn: &mut AnyConnection,
    project_id: &str,
    key: &str,
) -> Result<FlagRecord, StoreError> {
    let row = flag_row(conn, project_id, key).await?;
    let flag_id: String = row.try_get("id")?;
    let configs = sqlx::query(
        "SELECT e.key AS env, c.config, c.version, c.updated_at FROM flag_configs c \
         JOIN environments e ON e.id = c.environment_id \
         WHERE c.flag_id = $1 ORDER BY e.position, e.key",
    )
    .bind(&flag_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut environments = Vec::with_capacity(configs.len());
    for c in &configs {
        let mut config: FlagConfig = from_json(&c.try_get::<String, _>("config")?)?;
        config.version = c.try_get::<i64, _>("version")? as u64;
        environments.push(EnvironmentFlagConfig {
            environment: c.try_get("env")?,
            config,
            updated_at: c.try_get("updated_at")?,
            lifecycle: None,
        });
    }
    Ok(FlagRecord {
        flag: from_json(&row.try_get::<String, _>("definition")?)?,
        archived: row.try_get::<i64, _>("archived")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        environments,
        status: None,
    })
}

fn revision_from(row: &AnyRow, environment: &str) -> Result<Revision, StoreError> {
    Ok(Revision {
        environment: environment.to_string(),
        resource_kind: row.try_get("resource_kind")?,
        resource_key: row.try_get("resource_key")?,
        version: row.try_get::<i64, _>("version")? as u64,
        body: from_json(&row.try_get::<String, _>("body")?)?,
        actor: Actor {
            kind: ActorKind::parse(&row.try_get::<String, _>("actor_kind")?),
            id: row.try_get("actor_id")?,
        },
        comment: row.try_get("comment")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Takes the environment's row lock on PostgreSQL without changing anything, so that writers
/// to one environment take turns (SQLite's `BEGIN IMMEDIATE` already serialises them). For
/// writes that must not bump the revision counter, such as SDK keys.
async fn lock_environment(
    conn: &mut AnyConnection,
    environment_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE environments SET revision = revision WHERE id = $1")
        .bind(environment_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Segment keys per multi-row statement. The segment id and the list's kind are bound once (`$1`
/// and `$2`, repeated in every row), the keys after them: 502 parameters a statement, far below
/// SQLite's 32,766 and PostgreSQL's 65,535.
const KEY_BATCH: usize = 500;

fn insert_keys_sql(n: usize) -> String {
    let mut sql = String::from("INSERT INTO segment_keys (segment_id, kind, key) VALUES ");
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("($1, $2, ${})", i + 3));
    }
    sql
}

fn delete_keys_sql(n: usize) -> String {
    let mut sql =
        String::from("DELETE FROM segment_keys WHERE segment_id = $1 AND kind = $2 AND key IN (");
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}", i + 3));
    }
    sql.push(')');
    sql
}

/// The statements for a full batch, built once (and so prepared once per connection).
static INSERT_KEYS: LazyLock<String> = LazyLock::new(|| insert_keys_sql(KEY_BATCH));
static DELETE_KEYS: LazyLock<String> = LazyLock::new(|| delete_keys_sql(KEY_BATCH));

/// Inserts (`insert`) or deletes keys of one of a segment's lists, a batch per statement.
async fn write_segment_keys(
    conn: &mut AnyConnection,
    segment_id: &str,
    kind: &str,
    keys: &[&str],
    insert: bool,
) -> Result<(), StoreError> {
    for batch in keys.chunks(KEY_BATCH) {
        let sql: Cow<'static, str> = match (insert, batch.len() == KEY_BATCH) {
            (true, true) => Cow::Borrowed(INSERT_KEYS.as_str()),
            (false, true) => Cow::Borrowed(DELETE_KEYS.as_str()),
            (true, false) => Cow::Owned(insert_keys_sql(batch.len())),
            (false, false) => Cow::Owned(delete_keys_sql(batch.len())),
        };
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(segment_id).bind(kind);
        for key in batch {
            query = query.bind(*key);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A key list as stored: deduplicated, in byte order.
fn key_set(keys: &[String]) -> Vec<&str> {
    let mut set: Vec<&str> = keys.iter().map(String::as_str).collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// What is in `new` and not in `old`, and what is in `old` and not in `new`; both sorted.
fn key_difference<'a>(old: &'a [String], new: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.as_str() == *n => {
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.as_str() < *n => {
                removed.push(o.as_str());
                i += 1;
            }
            (Some(o), None) => {
                removed.push(o.as_str());
                i += 1;
            }
            (_, Some(n)) => {
                added.push(*n);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (added, removed)
}

/// The segment as its row keeps it: without key lists, with `version`.
fn segment_body(segment: &Segment, version: u64) -> Segment {
    Segment {
        key: segment.key.clone(),
        description: segment.description.clone(),
        included: Vec::new(),
        excluded: Vec::new(),
        rules: segment.rules.clone(),
        version,
    }
}

/// The audit view of a segment: its row, plus how many keys each list gained and lost, so that
/// a diff never carries 100,000 keys.
fn segment_audit_value(
    body: &Segment,
    included: (usize, usize),
    excluded: (usize, usize),
) -> Result<Value, StoreError> {
    let mut value = serde_json::to_value(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let Value::Object(map) = &mut value {
        map.insert(
            "keyChanges".into(),
            serde_json::json!({
                "included": { "added": included.0, "removed": included.1 },
                "excluded": { "added": excluded.0, "removed": excluded.1 },
            }),
        );
    }
    Ok(value)
}

async fn segment_row(
    conn: &mut AnyConnection,
    environment_id: &str,
    key: &str,
) -> Result<AnyRow, StoreError> {
    sqlx::query(
        "SELECT id, key, body, included_count, excluded_count, version, updated_at FROM segments \
         WHERE environment_id = $1 AND key = $2",
    )
    .bind(environment_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found("segment", key))
}

/// One of a segment's key lists (`included` or `excluded`), in byte order. One list per
/// statement, of one column: with 100,000 keys, decoding rows is what reading costs.
async fn load_key_list(
    conn: &mut AnyConnection,
    segment_id: &str,
    kind: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("SELECT key FROM segment_keys WHERE segment_id = $1 AND kind = $2")
        .bind(segment_id)
        .bind(kind)
        .fetch_all(&mut *conn)
        .await?;
    let mut keys = rows
        .iter()
        .map(|r| r.try_get::<String, _>("key"))
        .collect::<Result<Vec<_>, _>>()?;
    // Byte order on every backend, whatever PostgreSQL's collation (cheap: SQLite's rows come
    // in primary-key order already).
    keys.sort_unstable();
    Ok(keys)
}

/// A segment's included and excluded keys, each in byte order.
async fn load_segment_keys(
    conn: &mut AnyConnection,
    segment_id: &str,
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    Ok((
        load_key_list(conn, segment_id, "included").await?,
        load_key_list(conn, segment_id, "excluded").await?,
    ))
}

/// The segment of a row (its version from the column), with the key lists given.
fn segment_from(
    row: &AnyRow,
    included: Vec<String>,
    excluded: Vec<String>,
) -> Result<Segment, StoreError> {
    let mut segment: Segment = from_json(&row.try_get::<String, _>("body")?)?;
    segment.included = included;
    segment.excluded = excluded;
    segment.version = row.try_get::<i64, _>("version")? as u64;
    Ok(segment)
}

/// A write of one segment in one environment, see [`insert_segment`] and [`replace_segment`].
struct SegmentWrite<'a> {
    project_id: &'a str,
    environment_id: &'a str,
    /// Its `version` is ignored: the store sets it.
    segment: &'a Segment,
    /// The version the writer read; `None` to write unconditionally. Ignored when inserting.
    expected_version: Option<u64>,
    actor: &'a Actor,
    /// Kept with the revision.
    comment: Option<&'a str>,
    /// Kept with the audit entry.
    audit_comment: Option<&'a str>,
    action: &'a str,
    at: i64,
}

/// Creates a segment inside the caller's transaction, which has already bumped the environment's
/// revision counter (taking its lock on PostgreSQL): the row (version 1, or one past the last
/// revision of a deleted segment of the same key), its key lists, its revision and its audit
/// entry. Returns the stored segment. The caller checks the key and rolls back on error.
async fn insert_segment(
    conn: &mut AnyConnection,
    w: SegmentWrite<'_>,
) -> Result<Segment, StoreError> {
    let segment = w.segment;
    let key = segment.key.as_str();
    // Version 1, unless a deleted segment of this key left revisions: then one past them,
    // so revisions stay unique and a stale `If-Match` cannot match the new segment.
    let previous: i64 = sqlx::query(
        "SELECT COALESCE(MAX(version), 0) AS v FROM revisions \
         WHERE environment_id = $1 AND resource_kind = 'segment' AND resource_key = $2",
    )
    .bind(w.environment_id)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?
    .try_get("v")?;
    let version = previous as u64 + 1;
    let included = key_set(&segment.included);
    let excluded = key_set(&segment.excluded);
    let body = segment_body(segment, version);
    let segment_id = new_id();
    sqlx::query(
        "INSERT INTO segments (id, environment_id, key, body, included_count, \
         excluded_count, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(&segment_id)
    .bind(w.environment_id)
    .bind(key)
    .bind(to_json(&body)?)
    .bind(included.len() as i64)
    .bind(excluded.len() as i64)
    .bind(version as i64)
    .bind(w.at)
    .execute(&mut *conn)
    .await
    .map_err(unique("segment", key))?;
    write_segment_keys(conn, &segment_id, "included", &included, true).await?;
    write_segment_keys(conn, &segment_id, "excluded", &excluded, true).await?;
    let after = segment_audit_value(&body, (included.len(), 0), (excluded.len(), 0))?;
    let stored = Segment {
        included: included.iter().map(|k| k.to_string()).collect(),
        excluded: excluded.iter().map(|k| k.to_string()).collect(),
        ..body
    };
    insert_revision(
        conn,
        RevisionRecord {
            environment_id: w.environment_id,
            resource_kind: "segment",
            resource_key: key,
            version: version as i64,
            body: &to_json(&stored)?,
            actor: w.actor,
            comment: w.comment,
            at: w.at,
        },
    )
    .await?;
    audit(
        conn,
        AuditRecord {
            project_id: w.project_id,
            environment_id: Some(w.environment_id),
            actor: w.actor,
            action: w.action,
            resource_kind: "segment",
            resource_key: key,
            before: &Value::Null,
            after: &after,
            comment: w.audit_comment,
            at: w.at,
        },
    )
    .await?;
    Ok(stored)
}

/// Replaces a segment inside the caller's transaction, which has already bumped the
/// environment's revision counter (taking its lock on PostgreSQL): checks the version
/// (`expected_version`, when given), writes the row with the next version and only the
/// difference of the key lists, its revision and its audit entry. Returns the stored segment.
/// The caller rolls back on error.
async fn replace_segment(
    conn: &mut AnyConnection,
    w: SegmentWrite<'_>,
) -> Result<Segment, StoreError> {
    let segment = w.segment;
    let key = segment.key.as_str();
    let row = segment_row(conn, w.environment_id, key).await?;
    let segment_id: String = row.try_get("id")?;
    let version = row.try_get::<i64, _>("version")? as u64;
    if let Some(expected) = w.expected_version
        && expected != version
    {
        return Err(StoreError::VersionMismatch {
            what: "segment",
            expected,
            actual: version,
        });
    }
    let before: Value = from_json(&row.try_get::<String, _>("body")?)?;
    let included = key_set(&segment.included);
    let excluded = key_set(&segment.excluded);
    let body = segment_body(segment, version + 1);
    let updated = sqlx::query(
        "UPDATE segments SET body = $1, included_count = $2, excluded_count = $3, \
         version = $4, updated_at = $5 WHERE id = $6 AND version = $7",
    )
    .bind(to_json(&body)?)
    .bind(included.len() as i64)
    .bind(excluded.len() as i64)
    .bind(body.version as i64)
    .bind(w.at)
    .bind(&segment_id)
    .bind(version as i64)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(StoreError::VersionMismatch {
            what: "segment",
            expected: version,
            actual: version + 1,
        });
    }
    // Only the difference: a list of 100,000 keys with one more writes one row.
    let (old_included, old_excluded) = load_segment_keys(conn, &segment_id).await?;
    let (included_added, included_removed) = key_difference(&old_included, &included);
    let (excluded_added, excluded_removed) = key_difference(&old_excluded, &excluded);
    write_segment_keys(conn, &segment_id, "included", &included_removed, false).await?;
    write_segment_keys(conn, &segment_id, "excluded", &excluded_removed, false).await?;
    write_segment_keys(conn, &segment_id, "included", &included_added, true).await?;
    write_segment_keys(conn, &segment_id, "excluded", &excluded_added, true).await?;
    let after = segment_audit_value(
        &body,
        (included_added.len(), included_removed.len()),
        (excluded_added.len(), excluded_removed.len()),
    )?;
    let stored = Segment {
        included: included.iter().map(|k| k.to_string()).collect(),
        excluded: excluded.iter().map(|k| k.to_string()).collect(),
        ..body
    };
    insert_revision(
        conn,
        RevisionRecord {
            environment_id: w.environment_id,
            resource_kind: "segment",
            resource_key: key,
            version: stored.version as i64,
            body: &to_json(&stored)?,
            actor: w.actor,
            comment: w.comment,
            at: w.at,
        },
    )
    .await?;
    audit(
        conn,
        AuditRecord {
            project_id: w.project_id,
            environment_id: Some(w.environment_id),
            actor: w.actor,
            action: w.action,
            resource_kind: "segment",
            resource_key: key,
            before: &before,
            after: &after,
            comment: w.audit_comment,
            at: w.at,
        },
    )
    .await?;
    Ok(stored)
}

/// A deletion of one segment in one environment, see [`remove_segment`].
struct SegmentDeletion<'a> {
    project_id: &'a str,
    environment_id: &'a str,
    key: &'a str,
    actor: &'a Actor,
    action: &'a str,
    /// Kept with the audit entry.
    audit_comment: Option<&'a str>,
    at: i64,
}

/// Deletes a segment inside the caller's transaction, which has already bumped the
/// environment's revision counter (taking its lock on PostgreSQL): its key lists, its row, and
/// an audit entry; its revisions stay. `NotFound { what: "segment" }` when it does not exist.
/// The caller rolls back on error.
async fn remove_segment(
    conn: &mut AnyConnection,
    d: SegmentDeletion<'_>,
) -> Result<(), StoreError> {
    let row = segment_row(conn, d.environment_id, d.key).await?;
    let segment_id: String = row.try_get("id")?;
    let before: Value = from_json(&row.try_get::<String, _>("body")?)?;
    sqlx::query("DELETE FROM segment_keys WHERE segment_id = $1")
        .bind(&segment_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM segments WHERE id = $1")
        .bind(&segment_id)
        .execute(&mut *conn)
        .await?;
    audit(
        conn,
        AuditRecord {
            project_id: d.project_id,
            environment_id: Some(d.environment_id),
            actor: d.actor,
            action: d.action,
            resource_kind: "segment",
            resource_key: d.key,
            before: &before,
            after: &Value::Null,
            comment: d.audit_comment,
            at: d.at,
        },
    )
    .await
}

/// The current version of a segment, 0 when it does not exist.
async fn segment_version(
    conn: &mut AnyConnection,
    environment_id: &str,
    key: &str,
) -> Result<u64, StoreError> {
    Ok(
        sqlx::query("SELECT version FROM segments WHERE environment_id = $1 AND key = $2")
            .bind(environment_id)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get::<i64, _>("version"))
            .transpose()?
            .map_or(0, |v| v as u64),
    )
}

/// `VersionMismatch { what: "segment", .. }` unless the segment's version is `base_version` (0:
/// it must not exist).
async fn check_segment_base_version(
    conn: &mut AnyConnection,
    environment_id: &str,
    key: &str,
    base_version: u64,
) -> Result<(), StoreError> {
    let version = segment_version(conn, environment_id, key).await?;
    if version != base_version {
        return Err(StoreError::VersionMismatch {
            what: "segment",
            expected: base_version,
            actual: version,
        });
    }
    Ok(())
}

/// At most this many characters in an SDK key's prefix.
const MAX_SDK_KEY_PREFIX: usize = 32;

fn check_new_sdk_key(key: &NewSdkKey) -> Result<(), StoreError> {
    if key.key_hash.is_empty() {
        return Err(StoreError::Invalid("empty SDK key hash".into()));
    }
    if key.prefix.is_empty() || key.prefix.chars().count() > MAX_SDK_KEY_PREFIX {
        return Err(StoreError::Invalid(format!(
            "an SDK key's prefix must have 1 to {MAX_SDK_KEY_PREFIX} characters"
        )));
    }
    Ok(())
}

/// Stores a new SDK key (returned as created) in the environment.
async fn insert_sdk_key(
    conn: &mut AnyConnection,
    environment_id: &str,
    key: &NewSdkKey,
    at: i64,
) -> Result<SdkKeyRecord, StoreError> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO sdk_keys (id, environment_id, kind, key_hash, prefix, created_at, \
         expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)",
    )
    .bind(&id)
    .bind(environment_id)
    .bind(key.kind.as_str())
    .bind(&key.key_hash)
    .bind(&key.prefix)
    .bind(at)
    .execute(&mut *conn)
    .await
    // Keyed by the prefix: the hash stays out of errors and logs.
    .map_err(unique("sdk key", &key.prefix))?;
    Ok(SdkKeyRecord {
        id,
        project: key.project.clone(),
        environment: key.environment.clone(),
        kind: key.kind,
        prefix: key.prefix.clone(),
        created_at: at,
        expires_at: None,
        revoked: false,
        last_used_at: None,
    })
}

/// The columns [`sdk_key_from`] reads, with `FROM`: append a `WHERE` clause.
macro_rules! select_sdk_keys {
    () => {
        "SELECT k.id, k.kind, k.prefix, k.created_at, k.expires_at, k.revoked_at, \
         k.last_used_at, p.key AS project, e.key AS environment FROM sdk_keys k \
         JOIN environments e ON e.id = k.environment_id JOIN projects p ON p.id = e.project_id "
    };
}

fn sdk_key_from(row: &AnyRow) -> Result<SdkKeyRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(SdkKeyRecord {
        id: row.try_get("id")?,
        project: row.try_get("project")?,
        environment: row.try_get("environment")?,
        kind: SdkKeyKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown SDK key kind `{kind}`")))?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        last_used_at: row.try_get("last_used_at")?,
    })
}

/// The columns [`change_request_from`] reads, with `FROM`: append a `WHERE` clause.
macro_rules! select_change_requests {
    () => {
        "SELECT c.id, c.edition, e.key AS environment, COALESCE(f.key, c.segment_key) AS flag, \
         c.resource_kind, c.base_version, c.proposed, c.proposed_segment, c.comment, \
         c.author_kind, c.author_id, c.status, c.apply_at, c.applied_version, c.failure, \
         c.created_at, c.updated_at FROM change_requests c \
         JOIN environments e ON e.id = c.environment_id LEFT JOIN flags f ON f.id = c.flag_id "
    };
}

fn status_from(text: &str) -> Result<ChangeRequestStatus, StoreError> {
    ChangeRequestStatus::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown change request status `{text}`")))
}

fn review_from(row: &AnyRow) -> Result<Review, StoreError> {
    let decision: String = row.try_get("decision")?;
    Ok(Review {
        reviewer: Actor {
            kind: ActorKind::parse(&row.try_get::<String, _>("reviewer_kind")?),
            id: row.try_get("reviewer_id")?,
        },
        decision: ReviewDecision::parse(&decision)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown review decision `{decision}`")))?,
        comment: row.try_get("comment")?,
        created_at: row.try_get("created_at")?,
    })
}

fn change_request_from(
    row: &AnyRow,
    project: &str,
    reviews: Vec<Review>,
) -> Result<ChangeRequest, StoreError> {
    let segment: Option<Segment> = row
        .try_get::<Option<String>, _>("proposed_segment")?
        .as_deref()
        .map(from_json)
        .transpose()?;
    Ok(ChangeRequest {
        id: row.try_get("id")?,
        project: project.to_string(),
        environment: row.try_get("environment")?,
        flag: row.try_get("flag")?,
        resource_kind: reported_resource_kind(row.try_get("resource_kind")?, segment.is_some()),
        base_version: row.try_get::<i64, _>("base_version")? as u64,
        proposed: from_json(&row.try_get::<String, _>("proposed")?)?,
        segment,
        comment: row.try_get("comment")?,
        author: Actor {
            kind: ActorKind::parse(&row.try_get::<String, _>("author_kind")?),
            id: row.try_get("author_id")?,
        },
        status: status_from(&row.try_get::<String, _>("status")?)?,
        reviews,
        apply_at: row.try_get("apply_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        applied_version: row
            .try_get::<Option<i64>, _>("applied_version")?
            .map(|v| v as u64),
        failure: row.try_get("failure")?,
    })
}

/// A request to delete a segment is stored as a segment request without a proposed segment
/// (`resource_kind` `segment`, `proposed_segment` NULL: 0006's CHECK allows no other kind) and
/// reported with this kind.
const SEGMENT_DELETION: &str = "segment_deletion";

/// The `resource_kind` a change request is reported with, from the stored one.
fn reported_resource_kind(stored: String, has_segment: bool) -> String {
    if stored == "segment" && !has_segment {
        SEGMENT_DELETION.to_string()
    } else {
        stored
    }
}

/// A segment as a change request proposes it: key lists deduplicated and in byte order,
/// `base_version` as its version.
fn segment_proposal(segment: &Segment, base_version: u64) -> Segment {
    Segment {
        included: key_set(&segment.included)
            .iter()
            .map(|k| k.to_string())
            .collect(),
        excluded: key_set(&segment.excluded)
            .iter()
            .map(|k| k.to_string())
            .collect(),
        ..segment_body(segment, base_version)
    }
}

/// The audit view of a segment request's proposal (see [`segment_proposal`]): key lists only
/// counted, as in the segments' own audit entries.
fn segment_request_audit_value(
    proposal: &Segment,
    status: ChangeRequestStatus,
    comment: Option<&str>,
    apply_at: Option<i64>,
) -> Value {
    serde_json::json!({
        "segment": proposal.key,
        "status": status,
        "baseVersion": proposal.version,
        "proposed": segment_body(proposal, proposal.version),
        "includedCount": proposal.included.len(),
        "excludedCount": proposal.excluded.len(),
        "comment": comment,
        "applyAt": apply_at,
    })
}

/// The reviews of one edition of a change request, oldest first.
const SELECT_REVIEWS: &str = "SELECT reviewer_kind, reviewer_id, decision, comment, created_at \
     FROM change_request_reviews WHERE change_request_id = $1 AND edition = $2 ORDER BY seq";

/// A change request of the project with the reviews of its current edition.
async fn load_change_request(
    conn: &mut AnyConnection,
    project: &str,
    project_id: &str,
    id: &str,
) -> Result<ChangeRequest, StoreError> {
    let row = sqlx::query(concat!(
        select_change_requests!(),
        "WHERE c.id = $1 AND c.project_id = $2"
    ))
    .bind(id)
    .bind(project_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found("change request", id))?;
    let reviews = sqlx::query(SELECT_REVIEWS)
        .bind(id)
        .bind(row.try_get::<i64, _>("edition")?)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(review_from)
        .collect::<Result<Vec<_>, _>>()?;
    change_request_from(&row, project, reviews)
}

/// A change request as a state change reads it, under its row lock.
struct ChangeRequestState {
    environment_id: String,
    /// `None` for a segment request.
    flag_id: Option<String>,
    /// The key of the flag or segment.
    flag: String,
    /// `flag` or `segment`.
    resource_kind: String,
    /// The proposed segment (JSON) of a segment request.
    proposed_segment: Option<String>,
    status: ChangeRequestStatus,
    edition: i64,
    base_version: u64,
    proposed: FlagConfig,
    comment: Option<String>,
    apply_at: Option<i64>,
}

impl ChangeRequestState {
    /// `Invalid` unless the request is open or approved.
    fn check_pending(&self, id: &str, doing: &str) -> Result<(), StoreError> {
        if self.status.is_pending() {
            Ok(())
        } else {
            Err(StoreError::Invalid(format!(
                "cannot {doing} change request `{id}`: it is {}, not open or approved",
                self.status
            )))
        }
    }
}

/// The audit view of a change request's proposal.
fn change_request_audit_value(
    flag: &str,
    status: ChangeRequestStatus,
    base_version: u64,
    proposed: &FlagConfig,
    comment: Option<&str>,
    apply_at: Option<i64>,
) -> Value {
    serde_json::json!({
        "flag": flag,
        "status": status,
        "baseVersion": base_version,
        "proposed": proposed,
        "comment": comment,
        "applyAt": apply_at,
    })
}

/// Locks a change request of the project and reads its state. A write that changes nothing
/// takes the row's lock on PostgreSQL (SQLite's `BEGIN IMMEDIATE` already serialises writers),
/// so concurrent state changes of one request take turns and each sees the state the previous
/// one committed. `NotFound { what: "change request" }` when the project has no such request.
async fn lock_change_request(
    conn: &mut AnyConnection,
    project_id: &str,
    id: &str,
) -> Result<ChangeRequestState, StoreError> {
    let locked = sqlx::query(
        "UPDATE change_requests SET updated_at = updated_at WHERE id = $1 AND project_id = $2",
    )
    .bind(id)
    .bind(project_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if locked == 0 {
        return Err(StoreError::not_found("change request", id));
    }
    let row = sqlx::query(
        "SELECT c.environment_id, c.flag_id, COALESCE(f.key, c.segment_key) AS flag, \
         c.resource_kind, c.proposed_segment, c.status, c.edition, c.base_version, c.proposed, \
         c.comment, c.apply_at FROM change_requests c \
         LEFT JOIN flags f ON f.id = c.flag_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(ChangeRequestState {
        environment_id: row.try_get("environment_id")?,
        flag_id: row.try_get("flag_id")?,
        flag: row.try_get("flag")?,
        resource_kind: row.try_get("resource_kind")?,
        proposed_segment: row.try_get("proposed_segment")?,
        status: status_from(&row.try_get::<String, _>("status")?)?,
        edition: row.try_get("edition")?,
        base_version: row.try_get::<i64, _>("base_version")? as u64,
        proposed: from_json(&row.try_get::<String, _>("proposed")?)?,
        comment: row.try_get("comment")?,
        apply_at: row.try_get("apply_at")?,
    })
}

/// `VersionMismatch` unless the flag's configuration in the environment has `base_version`: a
/// proposal made against another version could never apply.
async fn check_base_version(
    conn: &mut AnyConnection,
    flag_id: &str,
    flag: &str,
    environment_id: &str,
    base_version: u64,
) -> Result<(), StoreError> {
    let version =
        sqlx::query("SELECT version FROM flag_configs WHERE flag_id = $1 AND environment_id = $2")
            .bind(flag_id)
            .bind(environment_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::not_found("flag configuration", flag))?
            .try_get::<i64, _>("version")? as u64;
    if version != base_version {
        return Err(StoreError::VersionMismatch {
            what: "flag configuration",
            expected: base_version,
            actual: version,
        });
    }
    Ok(())
}

/// A proposal as stored: the configuration with `base_version` as its version.
fn proposal_body(
    proposed: &FlagConfig,
    base_version: u64,
) -> Result<(FlagConfig, String), StoreError> {
    let mut proposed = proposed.clone();
    proposed.version = base_version;
    let body = to_json(&proposed)?;
    Ok((proposed, body))
}

/// The `proposed` configuration of a segment request, which has none: empty and disabled.
fn empty_config() -> FlagConfig {
    FlagConfig {
        enabled: false,
        off_variant: String::new(),
        targets: Default::default(),
        rules: Vec::new(),
        default_serve: Serve::Variant(String::new()),
        prerequisites: Vec::new(),
        version: 0,
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_project(
        &self,
        actor: &Actor,
        key: &str,
        name: &str,
    ) -> Result<Project, StoreError> {
        if !anchor_engine::model::is_valid_key(key) {
            return Err(StoreError::Invalid(format!("invalid project key `{key}`")));
        }
        let at = self.now();
        let id = new_id();
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO projects (id, key, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(key)
            .bind(name)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(unique("project", key))?;
        let after = serde_json::json!({ "key": key, "name": name });
        audit(
            &mut tx,
            AuditRecord {
                project_id: &id,
                environment_id: None,
                actor,
                action: "project.created",
                resource_kind: "project",
                resource_key: key,
                before: &Value::Null,
                after: &after,
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Project {
            key: key.to_string(),
            name: name.to_string(),
            created_at: at,
        })
    }

    async fn projects(&self) -> Result<Vec<Project>, StoreError> {
        let rows = sqlx::query("SELECT key, name, created_at FROM projects ORDER BY key")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(project_from).collect()
    }

    async fn project(&self, key: &str) -> Result<Project, StoreError> {
        let row = sqlx::query("SELECT key, name, created_at FROM projects WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("project", key))?;
        project_from(&row)
    }

    async fn create_environment(
        &self,
        actor: &Actor,
        project: &str,
        environment: &NewEnvironment,
    ) -> Result<Environment, StoreError> {
        let key = environment.key.as_str();
        if !anchor_engine::model::is_valid_key(key) {
            return Err(StoreError::Invalid(format!(
                "invalid environment key `{key}`"
            )));
        }
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let position: i64 = sqlx::query(
            "SELECT COALESCE(MAX(position), -1) + 1 AS next FROM environments WHERE project_id = $1",
        )
        .bind(&project_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("next")?;
        let env_id = new_id();
        sqlx::query(
            "INSERT INTO environments (id, project_id, key, name, position, requires_approval, \
             requires_comment, revision, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)",
        )
        .bind(&env_id)
        .bind(&project_id)
        .bind(key)
        .bind(&environment.name)
        .bind(position)
        .bind(i64::from(environment.requires_approval))
        .bind(i64::from(environment.requires_comment))
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(unique("environment", key))?;
        // Existing flags start disabled in the new environment, serving their off variant.
        let flags = sqlx::query("SELECT id, key, definition FROM flags WHERE project_id = $1")
            .bind(&project_id)
            .fetch_all(&mut *tx)
            .await?;
        for f in &flags {
            let flag: Flag = from_json(&f.try_get::<String, _>("definition")?)?;
            let off = flag
                .variants
                .last()
                .map(|v| v.name.clone())
                .unwrap_or_default();
            let config = FlagConfig {
                enabled: false,
                off_variant: off.clone(),
                targets: Default::default(),
                rules: Vec::new(),
                default_serve: Serve::Variant(off),
                prerequisites: Vec::new(),
                version: 1,
            };
            let body = to_json(&config)?;
            sqlx::query(
                "INSERT INTO flag_configs (flag_id, environment_id, config, enabled, version, \
                 updated_at) VALUES ($1, $2, $3, 0, 1, $4)",
            )
            .bind(f.try_get::<String, _>("id")?)
            .bind(&env_id)
            .bind(&body)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            insert_revision(
                &mut tx,
                RevisionRecord {
                    environment_id: &env_id,
                    resource_kind: "flag",
                    resource_key: &flag.key,
                    version: 1,
                    body: &body,
                    actor,
                    comment: None,
                    at,
                },
            )
            .await?;
        }
        let after = serde_json::to_value(environment).unwrap_or(Value::Null);
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor,
                action: "environment.created",
                resource_kind: "environment",
                resource_key: key,
                before: &Value::Null,
                after: &after,
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Environment {
            project: project.to_string(),
            key: key.to_string(),
            name: environment.name.clone(),
            position,
            requires_approval: environment.requires_approval,
            requires_comment: environment.requires_comment,
            revision: 0,
            created_at: at,
        })
    }

    async fn environments(&self, project: &str) -> Result<Vec<Environment>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let rows = sqlx::query(
            "SELECT key, name, position, requires_approval, requires_comment, revision, \
             created_at FROM environments WHERE project_id = $1 ORDER BY position, key",
        )
        .bind(&project_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(|r| environment_from(r, project)).collect()
    }

    async fn environment(&self, project: &str, key: &str) -> Result<Environment, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let row = sqlx::query(
            "SELECT key, name, position, requires_approval, requires_comment, revision, \
             created_at FROM environments WHERE project_id = $1 AND key = $2",
        )
        .bind(&project_id)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found("environment", key))?;
        environment_from(&row, project)
    }

    async fn create_flag(
        &self,
        actor: &Actor,
        project: &str,
        flag: &Flag,
        initial: &FlagConfig,
    ) -> Result<FlagRecord, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let flag_id = new_id();
        let definition = flag_value(flag)?;
        sqlx::query(
            "INSERT INTO flags (id, project_id, key, definition, archived, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, 0, $5, $5)",
        )
        .bind(&flag_id)
        .bind(&project_id)
        .bind(&flag.key)
        .bind(to_json(&definition)?)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(unique("flag", &flag.key))?;
        let mut config = initial.clone();
        config.version = 1;
        let body = to_json(&config)?;
        let envs = sqlx::query("SELECT id FROM environments WHERE project_id = $1")
            .bind(&project_id)
            .fetch_all(&mut *tx)
            .await?;
        for env in &envs {
            let env_id: String = env.try_get("id")?;
            sqlx::query(
                "INSERT INTO flag_configs (flag_id, environment_id, config, enabled, version, \
                 updated_at) VALUES ($1, $2, $3, $4, 1, $5)",
            )
            .bind(&flag_id)
            .bind(&env_id)
            .bind(&body)
            .bind(i64::from(config.enabled))
            .bind(at)
            .execute(&mut *tx)
            .await?;
            insert_revision(
                &mut tx,
                RevisionRecord {
                    environment_id: &env_id,
                    resource_kind: "flag",
                    resource_key: &flag.key,
                    version: 1,
                    body: &body,
                    actor,
                    comment: None,
                    at,
                },
            )
            .await?;
        }
        bump_revision(&mut tx, &project_id, None, self.channel()).await?;
        let after = serde_json::json!({ "flag": definition, "config": config });
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: "flag.created",
                resource_kind: "flag",
                resource_key: &flag.key,
                before: &Value::Null,
                after: &after,
                comment: None,
                at,
            },
        )
        .await?;
        let record = load_flag(&mut tx, &project_id, &flag.key).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn flag(&self, project: &str, key: &str) -> Result<FlagRecord, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        load_flag(&mut conn, &project_id, key).await
    }

    async fn flags(
        &self,
        project: &str,
        filter: &FlagFilter,
    ) -> Result<Page<FlagRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let limit = limit(filter.limit) as usize;
        // Two queries for the whole page, not one per flag: the flag list of a project with a
        // thousand flags is a page people load all day.
        let rows = sqlx::query(
            "SELECT id, key, definition, archived, created_at, updated_at FROM flags \
             WHERE project_id = $1 AND key > $2 ORDER BY key",
        )
        .bind(&project_id)
        .bind(filter.after.as_deref().unwrap_or(""))
        .fetch_all(&mut *conn)
        .await?;
        let configs = sqlx::query(
            "SELECT c.flag_id, e.key AS env, c.config, c.version, c.updated_at FROM flag_configs c \
             JOIN environments e ON e.id = c.environment_id \
             WHERE e.project_id = $1 ORDER BY e.position, e.key",
        )
        .bind(&project_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut by_flag: HashMap<String, Vec<EnvironmentFlagConfig>> = HashMap::new();
        for c in &configs {
            let mut config: FlagConfig = from_json(&c.try_get::<String, _>("config")?)?;
            config.version = c.try_get::<i64, _>("version")? as u64;
            by_flag
                .entry(c.try_get("flag_id")?)
                .or_default()
                .push(EnvironmentFlagConfig {
                    environment: c.try_get("env")?,
                    config,
                    updated_at: c.try_get("updated_at")?,
                    lifecycle: None,
                });
        }
        let mut items = Vec::new();
        let mut next = None;
        for row in &rows {
            let flag_id: String = row.try_get("id")?;
            let record = FlagRecord {
                flag: from_json(&row.try_get::<String, _>("definition")?)?,
                archived: row.try_get::<i64, _>("archived")? != 0,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                environments: by_flag.remove(&flag_id).unwrap_or_default(),
                status: None,
            };
            if filter.matches(&record) {
                if items.len() == limit {
                    next = items.last().map(|r: &FlagRecord| r.flag.key.clone());
                    break;
                }
                items.push(record);
            }
        }
        Ok(Page { items, next })
    }

    async fn update_flag(
        &self,
        actor: &Actor,
        project: &str,
        flag: &Flag,
        comment: Option<&str>,
    ) -> Result<FlagRecord, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let row = flag_row(&mut tx, &project_id, &flag.key).await?;
        let before: Value = from_json(&row.try_get::<String, _>("definition")?)?;
        let after = flag_value(flag)?;
        sqlx::query("UPDATE flags SET definition = $1, updated_at = $2 WHERE id = $3")
            .bind(to_json(&after)?)
            .bind(at)
            .bind(row.try_get::<String, _>("id")?)
            .execute(&mut *tx)
            .await?;
        bump_revision(&mut tx, &project_id, None, self.channel()).await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: "flag.updated",
                resource_kind: "flag",
                resource_key: &flag.key,
                before: &before,
                after: &after,
                comment,
                at,
            },
        )
        .await?;
        let record = load_flag(&mut tx, &project_id, &flag.key).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn set_flag_archived(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        archived: bool,
    ) -> Result<FlagRecord, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let row = flag_row(&mut tx, &project_id, key).await?;
        let was = row.try_get::<i64, _>("archived")? != 0;
        sqlx::query("UPDATE flags SET archived = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(archived))
            .bind(at)
            .bind(row.try_get::<String, _>("id")?)
            .execute(&mut *tx)
            .await?;
        bump_revision(&mut tx, &project_id, None, self.channel()).await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: if archived {
                    "flag.archived"
                } else {
                    "flag.restored"
                },
                resource_kind: "flag",
                resource_key: key,
                before: &serde_json::json!({ "archived": was }),
                after: &serde_json::json!({ "archived": archived }),
                comment: None,
                at,
            },
        )
        .await?;
        let record = load_flag(&mut tx, &project_id, key).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn update_flag_config(
        &self,
        change: &ConfigChange<'_>,
    ) -> Result<FlagConfig, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, change.project).await?;
        let env_id = environment_id(&mut tx, &project_id, change.environment).await?;
        // Bumping the environment's revision first locks its row (PostgreSQL), so writers to
        // one environment take turns and each reads the version the previous one committed;
        // SQLite's `BEGIN IMMEDIATE` already serialises them.
        bump_revision(&mut tx, &project_id, Some(&env_id), self.channel()).await?;
        let config = write_flag_config(
            &mut tx,
            ConfigWrite {
                project_id: &project_id,
                environment_id: &env_id,
                flag: change.flag,
                config: change.config,
                expected_version: change.expected_version,
                actor: change.actor,
                comment: change.comment,
                audit_comment: change.comment,
                action: change.action,
                at,
            },
        )
        .await?;
        webhooks::record_config_event(&mut tx, &project_id, change.event, config.version, at)
            .await?;
        tx.commit().await?;
        Ok(config)
    }

    async fn flag_revisions(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
    ) -> Result<Vec<Revision>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let env_id = environment_id(&mut conn, &project_id, environment).await?;
        flag_row(&mut conn, &project_id, flag).await?;
        let rows = sqlx::query(
            "SELECT resource_kind, resource_key, version, body, actor_kind, actor_id, comment, \
             created_at FROM revisions WHERE environment_id = $1 AND resource_kind = 'flag' \
             AND resource_key = $2 ORDER BY version DESC",
        )
        .bind(&env_id)
        .bind(flag)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(|r| revision_from(r, environment)).collect()
    }

    async fn earlier_flag_revisions(
        &self,
        project: &str,
    ) -> Result<Vec<EarlierConfig>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let rows = sqlx::query(
            "SELECT e.key AS env, r.resource_key, r.version, r.body, r.created_at \
             FROM revisions r \
             JOIN environments e ON e.id = r.environment_id \
             JOIN flags f ON f.project_id = e.project_id AND f.key = r.resource_key \
             JOIN flag_configs c ON c.flag_id = f.id AND c.environment_id = r.environment_id \
             WHERE e.project_id = $1 AND r.resource_kind = 'flag' AND r.version < c.version \
             ORDER BY r.resource_key, e.key, r.version DESC",
        )
        .bind(&project_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EarlierConfig {
                    flag: r.try_get("resource_key")?,
                    environment: r.try_get("env")?,
                    version: r.try_get::<i64, _>("version")? as u64,
                    created_at: r.try_get("created_at")?,
                    config: r.try_get("body")?,
                })
            })
            .collect()
    }

    async fn flag_revision(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        version: u64,
    ) -> Result<Revision, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let env_id = environment_id(&mut conn, &project_id, environment).await?;
        let row = sqlx::query(
            "SELECT resource_kind, resource_key, version, body, actor_kind, actor_id, comment, \
             created_at FROM revisions WHERE environment_id = $1 AND resource_kind = 'flag' \
             AND resource_key = $2 AND version = $3",
        )
        .bind(&env_id)
        .bind(flag)
        .bind(version as i64)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found("revision", &format!("{flag}@{version}")))?;
        revision_from(&row, environment)
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, &filter.project).await?;
        // Optional filters as "parameter IS NULL OR column = parameter", so one statement
        // serves every combination.
        // A prefix is compared with `substr` rather than `LIKE`, whose `_` and `%` would need
        // escaping (actions are full of `_`) and whose case rules differ between the backends.
        let (exact_action, action_prefix) = filter.action_match();
        let rows = sqlx::query(
            "SELECT a.id, e.key AS env, a.actor_kind, a.actor_id, a.action, a.resource_kind, \
             a.resource_key, a.diff, a.comment, a.created_at FROM audit_log a \
             LEFT JOIN environments e ON e.id = a.environment_id \
             WHERE a.project_id = $1 \
             AND ($2 = '' OR a.actor_id = $2) \
             AND ($3 = '' OR e.key = $3) \
             AND ($4 = '' OR a.resource_key = $4) \
             AND a.created_at >= $5 AND a.created_at < $6 \
             AND ($8 = '' OR a.action = $8) \
             AND ($9 = '' OR substr(a.action, 1, length($9)) = $9) \
             ORDER BY a.seq DESC LIMIT $7",
        )
        .bind(&project_id)
        .bind(filter.actor.as_deref().unwrap_or(""))
        .bind(filter.environment.as_deref().unwrap_or(""))
        .bind(filter.resource_key.as_deref().unwrap_or(""))
        .bind(filter.since.unwrap_or(i64::MIN))
        .bind(filter.until.unwrap_or(i64::MAX))
        .bind(limit(filter.limit))
        .bind(exact_action)
        .bind(action_prefix)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    project: filter.project.clone(),
                    environment: r.try_get("env")?,
                    actor: Actor {
                        kind: ActorKind::parse(&r.try_get::<String, _>("actor_kind")?),
                        id: r.try_get("actor_id")?,
                    },
                    action: r.try_get("action")?,
                    resource_kind: r.try_get("resource_kind")?,
                    resource_key: r.try_get("resource_key")?,
                    diff: from_json(&r.try_get::<String, _>("diff")?)?,
                    comment: r.try_get("comment")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn create_user(
        &self,
        actor: &Actor,
        username: &str,
        password_hash: &str,
        instance_admin: bool,
    ) -> Result<User, StoreError> {
        if !is_valid_username(username) {
            return Err(StoreError::Invalid(format!(
                "invalid username `{username}`: 1 to 64 characters of letters, digits and ._@-"
            )));
        }
        let at = self.now();
        let id = new_id();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, instance_admin, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(username)
        .bind(password_hash)
        .bind(i64::from(instance_admin))
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(unique("user", username))?;
        // Never the password hash.
        let after = serde_json::json!({ "username": username, "instanceAdmin": instance_admin });
        instance_audit(
            &mut tx,
            InstanceAuditRecord {
                actor,
                action: "user.created",
                resource_kind: "user",
                resource_key: username,
                before: &Value::Null,
                after: &after,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(User {
            id,
            username: username.to_string(),
            instance_admin,
            created_at: at,
        })
    }

    async fn user_credentials(&self, username: &str) -> Result<(User, String), StoreError> {
        let row = sqlx::query(
            "SELECT id, username, instance_admin, created_at, password_hash FROM users \
             WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("user", username))?;
        Ok((user_from(&row)?, row.try_get("password_hash")?))
    }

    async fn user(&self, id: &str) -> Result<User, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_user(&mut conn, id).await
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, username, instance_admin, created_at FROM users ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from).collect()
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(n as u64)
    }

    async fn set_project_role(
        &self,
        actor: &Actor,
        project: &str,
        user_id: &str,
        role: Role,
    ) -> Result<(), StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let user = load_user(&mut tx, user_id).await?;
        let old =
            sqlx::query("SELECT role FROM project_members WHERE project_id = $1 AND user_id = $2")
                .bind(&project_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| role_from(&r.try_get::<String, _>("role")?))
                .transpose()?;
        if old == Some(role) {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO project_members (project_id, user_id, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (project_id, user_id) \
             DO UPDATE SET role = excluded.role, updated_at = excluded.updated_at",
        )
        .bind(&project_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let member = |role: Role| serde_json::json!({ "userId": user_id, "username": user.username, "role": role });
        let before = old.map_or(Value::Null, member);
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: "member.role_set",
                resource_kind: "member",
                resource_key: &user.username,
                before: &before,
                after: &member(role),
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn project_role(&self, project: &str, user_id: &str) -> Result<Option<Role>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let row = sqlx::query(
            "SELECT m.role FROM users u LEFT JOIN project_members m \
             ON m.user_id = u.id AND m.project_id = $1 WHERE u.id = $2",
        )
        .bind(&project_id)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found("user", user_id))?;
        row.try_get::<Option<String>, _>("role")?
            .map(|r| role_from(&r))
            .transpose()
    }

    async fn create_token(
        &self,
        actor: &Actor,
        token: &NewToken,
    ) -> Result<TokenRecord, StoreError> {
        let name = token.name.as_str();
        if name.trim().is_empty() || name.chars().count() > MAX_TOKEN_NAME {
            return Err(StoreError::Invalid(format!(
                "a token's name must have 1 to {MAX_TOKEN_NAME} characters"
            )));
        }
        if token.token_hash.is_empty() {
            return Err(StoreError::Invalid("empty token hash".into()));
        }
        let at = self.now();
        let id = new_id();
        let mut tx = self.begin().await?;
        let user = load_user(&mut tx, &token.user_id).await?;
        sqlx::query(
            "INSERT INTO tokens (id, user_id, name, token_hash, role, expires_at, created_at, \
             revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        )
        .bind(&id)
        .bind(&user.id)
        .bind(name)
        .bind(&token.token_hash)
        .bind(token.role.as_str())
        .bind(token.expires_at)
        .bind(at)
        .execute(&mut *tx)
        .await
        // Keyed by the name: the hash stays out of errors and logs.
        .map_err(unique("token", name))?;
        // Never the token hash.
        let after = serde_json::json!({
            "user": user.username,
            "name": name,
            "role": token.role,
            "expiresAt": token.expires_at,
        });
        instance_audit(
            &mut tx,
            InstanceAuditRecord {
                actor,
                action: "token.created",
                resource_kind: "token",
                resource_key: &id,
                before: &Value::Null,
                after: &after,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(TokenRecord {
            id,
            user,
            name: name.to_string(),
            role: token.role,
            expires_at: token.expires_at,
            created_at: at,
            revoked: false,
            last_used_at: None,
        })
    }

    async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query(concat!(select_tokens!(), "WHERE t.token_hash = $1"))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(token_from)
            .transpose()
    }

    async fn tokens(&self, user_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_user(&mut conn, user_id).await?;
        let rows = sqlx::query(concat!(
            select_tokens!(),
            "WHERE t.user_id = $1 ORDER BY t.created_at DESC, t.id DESC"
        ))
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(token_from).collect()
    }

    async fn revoke_token(
        &self,
        actor: &Actor,
        user_id: &str,
        token_id: &str,
    ) -> Result<(), StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        load_user(&mut tx, user_id).await?;
        // Only a live token changes, so concurrent revocations write one audit entry.
        let revoked = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 \
             WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(token_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if revoked == 0 {
            let exists = sqlx::query("SELECT id FROM tokens WHERE id = $1 AND user_id = $2")
                .bind(token_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            return if exists {
                Ok(())
            } else {
                Err(StoreError::not_found("token", token_id))
            };
        }
        instance_audit(
            &mut tx,
            InstanceAuditRecord {
                actor,
                action: "token.revoked",
                resource_kind: "token",
                resource_key: token_id,
                before: &serde_json::json!({ "revoked": false }),
                after: &serde_json::json!({ "revoked": true }),
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_session(&self, session: &NewSession) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(session.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, csrf_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.id_hash)
        .bind(&session.user_id)
        .bind(&session.csrf_hash)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, u.username, u.instance_admin, u.created_at, s.csrf_hash, s.expires_at \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SessionRecord {
                user: user_from(&r)?,
                csrf_hash: r.try_get("csrf_hash")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn instance_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, actor_kind, actor_id, action, resource_kind, resource_key, diff, \
             created_at FROM instance_audit_log ORDER BY seq DESC LIMIT $1",
        )
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    project: String::new(),
                    environment: None,
                    actor: Actor {
                        kind: ActorKind::parse(&r.try_get::<String, _>("actor_kind")?),
                        id: r.try_get("actor_id")?,
                    },
                    action: r.try_get("action")?,
                    resource_kind: r.try_get("resource_kind")?,
                    resource_key: r.try_get("resource_key")?,
                    diff: from_json(&r.try_get::<String, _>("diff")?)?,
                    comment: None,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn create_segment(
        &self,
        change: &SegmentChange<'_>,
    ) -> Result<SegmentRecord, StoreError> {
        let segment = change.segment;
        let key = segment.key.as_str();
        if !anchor_engine::model::is_valid_key(key) {
            return Err(StoreError::Invalid(format!("invalid segment key `{key}`")));
        }
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, change.project).await?;
        let env_id = environment_id(&mut tx, &project_id, change.environment).await?;
        // First, as for flag configurations: it locks the environment's row (PostgreSQL).
        bump_revision(&mut tx, &project_id, Some(&env_id), self.channel()).await?;
        let stored = insert_segment(
            &mut tx,
            SegmentWrite {
                project_id: &project_id,
                environment_id: &env_id,
                segment,
                expected_version: None,
                actor: change.actor,
                comment: change.comment,
                audit_comment: change.comment,
                action: "segment.created",
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(SegmentRecord {
            environment: change.environment.to_string(),
            segment: stored,
            updated_at: at,
        })
    }

    async fn update_segment(
        &self,
        change: &SegmentChange<'_>,
    ) -> Result<SegmentRecord, StoreError> {
        let segment = change.segment;
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, change.project).await?;
        let env_id = environment_id(&mut tx, &project_id, change.environment).await?;
        // First: it locks the environment's row (PostgreSQL), so writers take turns and each
        // reads the version and key lists the previous one committed.
        bump_revision(&mut tx, &project_id, Some(&env_id), self.channel()).await?;
        let stored = replace_segment(
            &mut tx,
            SegmentWrite {
                project_id: &project_id,
                environment_id: &env_id,
                segment,
                expected_version: change.expected_version,
                actor: change.actor,
                comment: change.comment,
                audit_comment: change.comment,
                action: "segment.updated",
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(SegmentRecord {
            environment: change.environment.to_string(),
            segment: stored,
            updated_at: at,
        })
    }

    async fn segment(
        &self,
        project: &str,
        environment: &str,
        key: &str,
    ) -> Result<SegmentRecord, StoreError> {
        let mut tx = self.begin_read().await?;
        let project_id = project_id(&mut tx, project).await?;
        let env_id = environment_id(&mut tx, &project_id, environment).await?;
        let row = segment_row(&mut tx, &env_id, key).await?;
        let (included, excluded) =
            load_segment_keys(&mut tx, &row.try_get::<String, _>("id")?).await?;
        tx.commit().await?;
        Ok(SegmentRecord {
            environment: environment.to_string(),
            segment: segment_from(&row, included, excluded)?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    async fn segments(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<Vec<SegmentSummary>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let env_id = environment_id(&mut conn, &project_id, environment).await?;
        let rows = sqlx::query(
            "SELECT key, body, included_count, excluded_count, version, updated_at \
             FROM segments WHERE environment_id = $1",
        )
        .bind(&env_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut summaries = rows
            .iter()
            .map(|r| {
                let segment = segment_from(r, Vec::new(), Vec::new())?;
                Ok(SegmentSummary {
                    key: r.try_get("key")?,
                    description: segment.description,
                    included_count: r.try_get::<i64, _>("included_count")? as u64,
                    excluded_count: r.try_get::<i64, _>("excluded_count")? as u64,
                    rules: segment.rules.len(),
                    version: segment.version,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Byte order on every backend, whatever PostgreSQL's collation.
        summaries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(summaries)
    }

    async fn delete_segment(
        &self,
        actor: &Actor,
        project: &str,
        environment: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let env_id = environment_id(&mut tx, &project_id, environment).await?;
        bump_revision(&mut tx, &project_id, Some(&env_id), self.channel()).await?;
        remove_segment(
            &mut tx,
            SegmentDeletion {
                project_id: &project_id,
                environment_id: &env_id,
                key,
                actor,
                action: "segment.deleted",
                audit_comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn segment_revisions(
        &self,
        project: &str,
        environment: &str,
        key: &str,
    ) -> Result<Vec<Revision>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let env_id = environment_id(&mut conn, &project_id, environment).await?;
        let rows = sqlx::query(
            "SELECT resource_kind, resource_key, version, body, actor_kind, actor_id, comment, \
             created_at FROM revisions WHERE environment_id = $1 \
             AND resource_kind = 'segment' AND resource_key = $2 ORDER BY version DESC",
        )
        .bind(&env_id)
        .bind(key)
        .fetch_all(&mut *conn)
        .await?;
        // A segment always has its first revision, so none means no such segment, ever.
        if rows.is_empty() {
            return Err(StoreError::not_found("segment", key));
        }
        rows.iter().map(|r| revision_from(r, environment)).collect()
    }

    async fn create_sdk_key(
        &self,
        actor: &Actor,
        key: &NewSdkKey,
    ) -> Result<SdkKeyRecord, StoreError> {
        check_new_sdk_key(key)?;
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, &key.project).await?;
        let env_id = environment_id(&mut tx, &project_id, &key.environment).await?;
        let record = insert_sdk_key(&mut tx, &env_id, key, at).await?;
        // Never the key hash.
        let after = serde_json::json!({ "kind": key.kind, "prefix": key.prefix });
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor,
                action: "sdk_key.created",
                resource_kind: "sdk_key",
                resource_key: &record.id,
                before: &Value::Null,
                after: &after,
                comment: None,
                at,
            },
        )
        .await?;
        notify_sdk_keys(&mut tx, self.channel()).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn rotate_sdk_key(
        &self,
        actor: &Actor,
        key: &NewSdkKey,
        overlap_ms: i64,
    ) -> Result<SdkKeyRecord, StoreError> {
        check_new_sdk_key(key)?;
        if overlap_ms < 0 {
            return Err(StoreError::Invalid(format!(
                "negative overlap for an SDK key rotation: {overlap_ms} ms"
            )));
        }
        let at = self.now();
        let until = at.saturating_add(overlap_ms);
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, &key.project).await?;
        let env_id = environment_id(&mut tx, &project_id, &key.environment).await?;
        // Concurrent rotations take turns, so each sees the key the other made and retires it.
        lock_environment(&mut tx, &env_id).await?;
        let record = insert_sdk_key(&mut tx, &env_id, key, at).await?;
        // Every other live key of the kind expires at `until`; one that expires sooner (or has
        // expired) keeps its expiry, so a rotation never lengthens a key's life.
        let retired = sqlx::query(
            "UPDATE sdk_keys SET expires_at = $1 WHERE environment_id = $2 AND kind = $3 \
             AND id <> $4 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) \
             RETURNING id",
        )
        .bind(until)
        .bind(&env_id)
        .bind(key.kind.as_str())
        .bind(&record.id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<Result<Vec<_>, _>>()?;
        let mut retired = retired;
        retired.sort_unstable();
        // Never the key hash.
        let after = serde_json::json!({
            "kind": key.kind,
            "prefix": key.prefix,
            "expiring": retired,
            "expiringAt": until,
        });
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor,
                action: "sdk_key.rotated",
                resource_kind: "sdk_key",
                resource_key: &record.id,
                before: &Value::Null,
                after: &after,
                comment: None,
                at,
            },
        )
        .await?;
        notify_sdk_keys(&mut tx, self.channel()).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn revoke_sdk_key(
        &self,
        actor: &Actor,
        project: &str,
        environment: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let env_id = environment_id(&mut tx, &project_id, environment).await?;
        // Only a live key changes, so concurrent revocations write one audit entry.
        let revoked = sqlx::query(
            "UPDATE sdk_keys SET revoked_at = $1 \
             WHERE id = $2 AND environment_id = $3 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .bind(&env_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if revoked == 0 {
            let exists =
                sqlx::query("SELECT id FROM sdk_keys WHERE id = $1 AND environment_id = $2")
                    .bind(id)
                    .bind(&env_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
            return if exists {
                Ok(())
            } else {
                Err(StoreError::not_found("sdk key", id))
            };
        }
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor,
                action: "sdk_key.revoked",
                resource_kind: "sdk_key",
                resource_key: id,
                before: &serde_json::json!({ "revoked": false }),
                after: &serde_json::json!({ "revoked": true }),
                comment: None,
                at,
            },
        )
        .await?;
        notify_sdk_keys(&mut tx, self.channel()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn sdk_keys(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<Vec<SdkKeyRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let env_id = environment_id(&mut conn, &project_id, environment).await?;
        let rows = sqlx::query(concat!(
            select_sdk_keys!(),
            "WHERE k.environment_id = $1 ORDER BY k.created_at DESC, k.id DESC"
        ))
        .bind(&env_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(sdk_key_from).collect()
    }

    async fn sdk_key_by_hash(&self, key_hash: &str) -> Result<Option<SdkKeyRecord>, StoreError> {
        sqlx::query(concat!(select_sdk_keys!(), "WHERE k.key_hash = $1"))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(sdk_key_from)
            .transpose()
    }

    async fn create_change_request(
        &self,
        new: &NewChangeRequest<'_>,
    ) -> Result<ChangeRequest, StoreError> {
        let at = self.now();
        let id = new_id();
        let status = if new.pre_approved {
            ChangeRequestStatus::Approved
        } else {
            ChangeRequestStatus::Open
        };
        let (proposed, body) = proposal_body(new.proposed, new.base_version)?;
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, new.project).await?;
        let env_id = environment_id(&mut tx, &project_id, new.environment).await?;
        let flag_id: String = flag_row(&mut tx, &project_id, new.flag)
            .await?
            .try_get("id")?;
        check_base_version(&mut tx, &flag_id, new.flag, &env_id, new.base_version).await?;
        sqlx::query(
            "INSERT INTO change_requests (id, project_id, environment_id, flag_id, base_version, \
             proposed, comment, author_kind, author_id, status, edition, apply_at, \
             applied_version, failure, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, NULL, NULL, $12, $12)",
        )
        .bind(&id)
        .bind(&project_id)
        .bind(&env_id)
        .bind(&flag_id)
        .bind(new.base_version as i64)
        .bind(&body)
        .bind(new.comment)
        .bind(new.actor.kind.as_str())
        .bind(&new.actor.id)
        .bind(status.as_str())
        .bind(new.apply_at)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let after = change_request_audit_value(
            new.flag,
            status,
            new.base_version,
            &proposed,
            new.comment,
            new.apply_at,
        );
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor: new.actor,
                action: "change_request.created",
                resource_kind: "change_request",
                resource_key: &id,
                before: &Value::Null,
                after: &after,
                comment: new.comment,
                at,
            },
        )
        .await?;
        let record = load_change_request(&mut tx, new.project, &project_id, &id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn create_segment_change_request(
        &self,
        actor: &Actor,
        project: &str,
        environment: &str,
        segment: &Segment,
        base_version: u64,
        comment: Option<&str>,
    ) -> Result<ChangeRequest, StoreError> {
        let key = segment.key.as_str();
        if !anchor_engine::model::is_valid_key(key) {
            return Err(StoreError::Invalid(format!("invalid segment key `{key}`")));
        }
        let at = self.now();
        let id = new_id();
        let status = ChangeRequestStatus::Open;
        // The proposal as stored; `proposed` (NOT NULL for flags) an empty, disabled
        // configuration.
        let proposal = segment_proposal(segment, base_version);
        let (_, config_body) = proposal_body(&empty_config(), base_version)?;
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let env_id = environment_id(&mut tx, &project_id, environment).await?;
        check_segment_base_version(&mut tx, &env_id, key, base_version).await?;
        sqlx::query(
            "INSERT INTO change_requests (id, project_id, environment_id, flag_id, base_version, \
             proposed, comment, author_kind, author_id, status, edition, apply_at, \
             applied_version, failure, created_at, updated_at, resource_kind, \
             proposed_segment, segment_key) \
             VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $9, 0, NULL, NULL, NULL, $10, $10, \
             'segment', $11, $12)",
        )
        .bind(&id)
        .bind(&project_id)
        .bind(&env_id)
        .bind(base_version as i64)
        .bind(&config_body)
        .bind(comment)
        .bind(actor.kind.as_str())
        .bind(&actor.id)
        .bind(status.as_str())
        .bind(at)
        .bind(to_json(&proposal)?)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        let after = segment_request_audit_value(&proposal, status, comment, None);
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor,
                action: "change_request.created",
                resource_kind: "change_request",
                resource_key: &id,
                before: &Value::Null,
                after: &after,
                comment,
                at,
            },
        )
        .await?;
        let record = load_change_request(&mut tx, project, &project_id, &id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn create_segment_deletion_request(
        &self,
        actor: &Actor,
        project: &str,
        environment: &str,
        key: &str,
        base_version: u64,
        comment: Option<&str>,
    ) -> Result<ChangeRequest, StoreError> {
        let at = self.now();
        let id = new_id();
        let status = ChangeRequestStatus::Open;
        let (_, config_body) = proposal_body(&empty_config(), base_version)?;
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let env_id = environment_id(&mut tx, &project_id, environment).await?;
        segment_row(&mut tx, &env_id, key).await?;
        check_segment_base_version(&mut tx, &env_id, key, base_version).await?;
        // Stored as a segment request without a proposed segment: see `SEGMENT_DELETION`.
        sqlx::query(
            "INSERT INTO change_requests (id, project_id, environment_id, flag_id, base_version, \
             proposed, comment, author_kind, author_id, status, edition, apply_at, \
             applied_version, failure, created_at, updated_at, resource_kind, \
             proposed_segment, segment_key) \
             VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $9, 0, NULL, NULL, NULL, $10, $10, \
             'segment', NULL, $11)",
        )
        .bind(&id)
        .bind(&project_id)
        .bind(&env_id)
        .bind(base_version as i64)
        .bind(&config_body)
        .bind(comment)
        .bind(actor.kind.as_str())
        .bind(&actor.id)
        .bind(status.as_str())
        .bind(at)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        let after = serde_json::json!({
            "segment": key,
            "status": status,
            "baseVersion": base_version,
            "proposed": Value::Null,
            "deletion": true,
            "comment": comment,
            "applyAt": Value::Null,
        });
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor,
                action: "change_request.created",
                resource_kind: "change_request",
                resource_key: &id,
                before: &Value::Null,
                after: &after,
                comment,
                at,
            },
        )
        .await?;
        let record = load_change_request(&mut tx, project, &project_id, &id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn update_segment_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        segment: &Segment,
        base_version: u64,
        comment: Option<&str>,
    ) -> Result<ChangeRequest, StoreError> {
        let at = self.now();
        let proposal = segment_proposal(segment, base_version);
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let state = lock_change_request(&mut tx, &project_id, id).await?;
        let Some(old) = state.proposed_segment.as_deref() else {
            return Err(StoreError::Invalid(if state.flag_id.is_some() {
                "a flag change request is edited with update_change_request".into()
            } else {
                format!("segment deletion request `{id}` cannot be edited")
            }));
        };
        if segment.key != state.flag {
            return Err(StoreError::Invalid(format!(
                "change request `{id}` proposes segment `{}`, not `{}`",
                state.flag, segment.key
            )));
        }
        state.check_pending(id, "edit")?;
        check_segment_base_version(&mut tx, &state.environment_id, &state.flag, base_version)
            .await?;
        // A new edition: the reviews of the earlier ones no longer count.
        sqlx::query(
            "UPDATE change_requests SET proposed_segment = $1, base_version = $2, comment = $3, \
             status = 'open', edition = edition + 1, updated_at = $4 WHERE id = $5",
        )
        .bind(to_json(&proposal)?)
        .bind(base_version as i64)
        .bind(comment)
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let before = segment_request_audit_value(
            &from_json(old)?,
            state.status,
            state.comment.as_deref(),
            state.apply_at,
        );
        let after = segment_request_audit_value(
            &proposal,
            ChangeRequestStatus::Open,
            comment,
            state.apply_at,
        );
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&state.environment_id),
                actor,
                action: "change_request.updated",
                resource_kind: "change_request",
                resource_key: id,
                before: &before,
                after: &after,
                comment,
                at,
            },
        )
        .await?;
        let record = load_change_request(&mut tx, project, &project_id, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn change_request(&self, project: &str, id: &str) -> Result<ChangeRequest, StoreError> {
        // One snapshot: the request and its reviews agree.
        let mut tx = self.begin_read().await?;
        let project_id = project_id(&mut tx, project).await?;
        let record = load_change_request(&mut tx, project, &project_id, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn change_requests(
        &self,
        project: &str,
        status: Option<ChangeRequestStatus>,
        environment: Option<&str>,
    ) -> Result<Vec<ChangeRequest>, StoreError> {
        let mut tx = self.begin_read().await?;
        let project_id = project_id(&mut tx, project).await?;
        let env_id = match environment {
            Some(key) => environment_id(&mut tx, &project_id, key).await?,
            None => String::new(),
        };
        let status = status.map_or("", ChangeRequestStatus::as_str);
        // Optional filters as "parameter is empty OR column = parameter", so one statement
        // serves every combination.
        let rows = sqlx::query(concat!(
            select_change_requests!(),
            "WHERE c.project_id = $1 AND ($2 = '' OR c.status = $2) \
             AND ($3 = '' OR c.environment_id = $3) ORDER BY c.created_at DESC, c.seq DESC"
        ))
        .bind(&project_id)
        .bind(status)
        .bind(&env_id)
        .fetch_all(&mut *tx)
        .await?;
        // The reviews of every listed request's current edition, in one statement.
        let review_rows = sqlx::query(
            "SELECT r.change_request_id, r.reviewer_kind, r.reviewer_id, r.decision, r.comment, \
             r.created_at FROM change_request_reviews r JOIN change_requests c \
             ON c.id = r.change_request_id AND c.edition = r.edition \
             WHERE c.project_id = $1 AND ($2 = '' OR c.status = $2) \
             AND ($3 = '' OR c.environment_id = $3) ORDER BY r.seq",
        )
        .bind(&project_id)
        .bind(status)
        .bind(&env_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut reviews: HashMap<String, Vec<Review>> = HashMap::new();
        for r in &review_rows {
            reviews
                .entry(r.try_get("change_request_id")?)
                .or_default()
                .push(review_from(r)?);
        }
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                change_request_from(r, project, reviews.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    async fn update_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        proposed: &FlagConfig,
        base_version: u64,
        comment: Option<&str>,
        apply_at: Option<i64>,
    ) -> Result<ChangeRequest, StoreError> {
        let at = self.now();
        let (proposed, body) = proposal_body(proposed, base_version)?;
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let state = lock_change_request(&mut tx, &project_id, id).await?;
        let Some(flag_id) = state.flag_id.as_deref() else {
            return Err(StoreError::Invalid(
                "a segment change request is edited with update_segment_change_request".into(),
            ));
        };
        state.check_pending(id, "edit")?;
        check_base_version(
            &mut tx,
            flag_id,
            &state.flag,
            &state.environment_id,
            base_version,
        )
        .await?;
        // A new edition: the reviews of the earlier ones no longer count.
        sqlx::query(
            "UPDATE change_requests SET proposed = $1, base_version = $2, comment = $3, \
             apply_at = $4, status = 'open', edition = edition + 1, updated_at = $5 \
             WHERE id = $6",
        )
        .bind(&body)
        .bind(base_version as i64)
        .bind(comment)
        .bind(apply_at)
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let before = change_request_audit_value(
            &state.flag,
            state.status,
            state.base_version,
            &state.proposed,
            state.comment.as_deref(),
            state.apply_at,
        );
        let after = change_request_audit_value(
            &state.flag,
            ChangeRequestStatus::Open,
            base_version,
            &proposed,
            comment,
            apply_at,
        );
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&state.environment_id),
                actor,
                action: "change_request.updated",
                resource_kind: "change_request",
                resource_key: id,
                before: &before,
                after: &after,
                comment,
                at,
            },
        )
        .await?;
        let record = load_change_request(&mut tx, project, &project_id, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn review_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        decision: ReviewDecision,
        comment: Option<&str>,
    ) -> Result<ChangeRequest, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let state = lock_change_request(&mut tx, &project_id, id).await?;
        state.check_pending(id, "review")?;
        let (status, action) = match decision {
            ReviewDecision::Approve => (ChangeRequestStatus::Approved, "change_request.approved"),
            ReviewDecision::Reject => (ChangeRequestStatus::Rejected, "change_request.rejected"),
        };
        sqlx::query(
            "INSERT INTO change_request_reviews (change_request_id, edition, reviewer_kind, \
             reviewer_id, decision, comment, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(state.edition)
        .bind(actor.kind.as_str())
        .bind(&actor.id)
        .bind(decision.as_str())
        .bind(comment)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE change_requests SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&state.environment_id),
                actor,
                action,
                resource_kind: "change_request",
                resource_key: id,
                before: &serde_json::json!({ "status": state.status }),
                after: &serde_json::json!({ "status": status, "decision": decision }),
                comment,
                at,
            },
        )
        .await?;
        let record = load_change_request(&mut tx, project, &project_id, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn cancel_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
    ) -> Result<ChangeRequest, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let state = lock_change_request(&mut tx, &project_id, id).await?;
        state.check_pending(id, "cancel")?;
        sqlx::query(
            "UPDATE change_requests SET status = 'cancelled', updated_at = $1 WHERE id = $2",
        )
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&state.environment_id),
                actor,
                action: "change_request.cancelled",
                resource_kind: "change_request",
                resource_key: id,
                before: &serde_json::json!({ "status": state.status }),
                after: &serde_json::json!({ "status": ChangeRequestStatus::Cancelled }),
                comment: None,
                at,
            },
        )
        .await?;
        let record = load_change_request(&mut tx, project, &project_id, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn apply_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        event: Option<OutboxEvent<'_>>,
    ) -> Result<ChangeRequest, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let env_id: String = sqlx::query(
            "SELECT environment_id FROM change_requests WHERE id = $1 AND project_id = $2",
        )
        .bind(id)
        .bind(&project_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::not_found("change request", id))?
        .try_get("environment_id")?;
        // As in `update_flag_config`: bumping the environment's revision first makes writers to
        // the environment take turns, so this one reads what the previous one committed.
        bump_revision(&mut tx, &project_id, Some(&env_id), self.channel()).await?;
        let state = lock_change_request(&mut tx, &project_id, id).await?;
        if state.status != ChangeRequestStatus::Approved {
            return Err(StoreError::Invalid(format!(
                "change request `{id}` is not approved: it is {}",
                state.status
            )));
        }
        let audit_comment = match state.comment.as_deref() {
            Some(comment) => format!("{comment} (change request {id})"),
            None => format!("change request {id}"),
        };
        let applied_version = match (state.resource_kind.as_str(), &state.proposed_segment) {
            ("segment", None) => {
                // A deletion (see `SEGMENT_DELETION`).
                check_segment_base_version(&mut tx, &env_id, &state.flag, state.base_version)
                    .await?;
                remove_segment(
                    &mut tx,
                    SegmentDeletion {
                        project_id: &project_id,
                        environment_id: &env_id,
                        key: &state.flag,
                        actor,
                        action: "change_request.applied",
                        audit_comment: Some(&audit_comment),
                        at,
                    },
                )
                .await?;
                None
            }
            ("segment", Some(proposed)) => {
                let segment: Segment = from_json(proposed)?;
                check_segment_base_version(&mut tx, &env_id, &segment.key, state.base_version)
                    .await?;
                let write = SegmentWrite {
                    project_id: &project_id,
                    environment_id: &env_id,
                    segment: &segment,
                    expected_version: Some(state.base_version),
                    actor,
                    comment: state.comment.as_deref(),
                    audit_comment: Some(&audit_comment),
                    action: "change_request.applied",
                    at,
                };
                let stored = if state.base_version == 0 {
                    insert_segment(&mut tx, write).await?
                } else {
                    replace_segment(&mut tx, write).await?
                };
                Some(stored.version)
            }
            _ => Some(
                write_flag_config(
                    &mut tx,
                    ConfigWrite {
                        project_id: &project_id,
                        environment_id: &env_id,
                        flag: &state.flag,
                        config: &state.proposed,
                        expected_version: Some(state.base_version),
                        actor,
                        comment: state.comment.as_deref(),
                        audit_comment: Some(&audit_comment),
                        action: "change_request.applied",
                        at,
                    },
                )
                .await?
                .version,
            ),
        };
        // Guarded by the status: a request is applied once, whoever tries and however often.
        let applied = sqlx::query(
            "UPDATE change_requests SET status = 'applied', applied_version = $1, \
             updated_at = $2 WHERE id = $3 AND status = 'approved'",
        )
        .bind(applied_version.map(|v| v as i64))
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if applied != 1 {
            return Err(StoreError::Invalid(format!(
                "change request `{id}` is not approved"
            )));
        }
        match applied_version {
            Some(version) => {
                webhooks::record_config_event(&mut tx, &project_id, event, version, at).await?;
            }
            None => webhooks::record_events(&mut tx, &project_id, event.as_slice(), at).await?,
        }
        let record = load_change_request(&mut tx, project, &project_id, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn due_change_requests(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.key AS project, c.id FROM change_requests c \
             JOIN projects p ON p.id = c.project_id \
             WHERE c.status = 'approved' AND c.apply_at IS NOT NULL AND c.apply_at <= $1 \
             ORDER BY c.apply_at, c.seq LIMIT $2",
        )
        .bind(now)
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("project")?, r.try_get("id")?)))
            .collect()
    }

    async fn fail_change_request(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        reason: &str,
    ) -> Result<ChangeRequest, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let state = lock_change_request(&mut tx, &project_id, id).await?;
        if state.status != ChangeRequestStatus::Approved {
            return Err(StoreError::Invalid(format!(
                "cannot mark change request `{id}` failed: it is {}, not approved",
                state.status
            )));
        }
        sqlx::query(
            "UPDATE change_requests SET status = 'failed', failure = $1, updated_at = $2 \
             WHERE id = $3",
        )
        .bind(reason)
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&state.environment_id),
                actor,
                action: "change_request.failed",
                resource_kind: "change_request",
                resource_key: id,
                before: &serde_json::json!({ "status": state.status }),
                after: &serde_json::json!({
                    "status": ChangeRequestStatus::Failed,
                    "failure": reason,
                }),
                comment: Some(reason),
                at,
            },
        )
        .await?;
        let record = load_change_request(&mut tx, project, &project_id, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn environment_config(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<(EnvironmentConfig, u64), StoreError> {
        // One snapshot: the revision counter, flags, segments and their keys agree.
        let mut tx = self.begin_read().await?;
        let project_id = project_id(&mut tx, project).await?;
        let env =
            sqlx::query("SELECT id, revision FROM environments WHERE project_id = $1 AND key = $2")
                .bind(&project_id)
                .bind(environment)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::not_found("environment", environment))?;
        let env_id: String = env.try_get("id")?;
        let revision = env.try_get::<i64, _>("revision")? as u64;
        let rows = sqlx::query(
            "SELECT f.definition, c.config, c.version FROM flags f \
             JOIN flag_configs c ON c.flag_id = f.id \
             WHERE f.project_id = $1 AND c.environment_id = $2 AND f.archived = 0 \
             ORDER BY f.key",
        )
        .bind(&project_id)
        .bind(&env_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut flags = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut config: FlagConfig = from_json(&r.try_get::<String, _>("config")?)?;
            config.version = r.try_get::<i64, _>("version")? as u64;
            flags.push(ConfiguredFlag {
                flag: from_json(&r.try_get::<String, _>("definition")?)?,
                config,
            });
        }
        let rows = sqlx::query("SELECT id, body, version FROM segments WHERE environment_id = $1")
            .bind(&env_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut segments = Vec::with_capacity(rows.len());
        for r in &rows {
            let (included, excluded) =
                load_segment_keys(&mut tx, &r.try_get::<String, _>("id")?).await?;
            segments.push(segment_from(r, included, excluded)?);
        }
        tx.commit().await?;
        // Byte order on every backend, whatever PostgreSQL's collation.
        segments.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok((EnvironmentConfig { flags, segments }, revision))
    }

    async fn record_telemetry(
        &self,
        project: &str,
        environment: &str,
        batch_id: &str,
        rows: &[EvaluationCount],
        outcomes: &[OutcomeAggregate],
    ) -> Result<bool, StoreError> {
        // Summed by key first: one statement may not update a row twice (PostgreSQL), and
        // keys in one order make concurrent batches lock their rows in the same order, so they
        // cannot deadlock.
        let mut sums: BTreeMap<(&str, i64, &str), i64> = BTreeMap::new();
        for row in rows {
            if row.count == 0
                || row.minute % 60 != 0
                || row.variant.as_deref() == Some(DEFAULT_VARIANT_SENTINEL)
            {
                return Err(StoreError::Invalid(format!(
                    "evaluation count of `{}` at {}: a count must be at least 1, a minute a \
                     multiple of 60 and a variant not empty",
                    row.flag, row.minute
                )));
            }
            let variant = row.variant.as_deref().unwrap_or(DEFAULT_VARIANT_SENTINEL);
            let sum = sums.entry((&row.flag, row.minute, variant)).or_insert(0);
            *sum = sum.saturating_add(i64::try_from(row.count).unwrap_or(i64::MAX));
        }
        let coverage = merge_coverage(outcomes)?;
        let outcomes = merge_outcomes(outcomes)?;
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let env_id = environment_id(&mut tx, &project_id, environment).await?;
        sqlx::query("DELETE FROM telemetry_batches WHERE environment_id = $1 AND received_at < $2")
            .bind(&env_id)
            .bind(at.saturating_sub(TELEMETRY_BATCH_MEMORY_MS))
            .execute(&mut *tx)
            .await?;
        // A concurrent transaction recording the same batch makes this one wait for its
        // outcome (the primary key), then insert nothing if it committed.
        let fresh = sqlx::query(
            "INSERT INTO telemetry_batches (environment_id, batch_id, received_at) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&env_id)
        .bind(batch_id)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(false);
        }
        let sums: Vec<_> = sums.into_iter().collect();
        for chunk in sums.chunks(COUNTS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO evaluation_counts (environment_id, flag, minute, variant, count) VALUES ",
            );
            for i in 0..chunk.len() {
                let n = 2 + 4 * i;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("($1, ${}, ${}, ${}, ${})", n, n + 1, n + 2, n + 3));
            }
            sql.push_str(
                " ON CONFLICT (environment_id, flag, minute, variant) \
                 DO UPDATE SET count = evaluation_counts.count + excluded.count",
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(&env_id);
            for ((flag, minute, variant), count) in chunk {
                query = query.bind(*flag).bind(*minute).bind(*variant).bind(*count);
            }
            query.execute(&mut *tx).await?;
        }
        for ((flag, minute, variant), arm) in &outcomes {
            add_outcome(
                &mut tx,
                &env_id,
                (flag, *minute, variant),
                MINUTE_SPAN_SECS,
                arm,
            )
            .await?;
        }
        let coverage: Vec<_> = coverage.into_iter().collect();
        for chunk in coverage.chunks(COUNTS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO coverage_counts \
                 (environment_id, flag, minute, variant, attribute, value, count) VALUES ",
            );
            for i in 0..chunk.len() {
                let n = 2 + 6 * i;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "($1, ${}, ${}, ${}, ${}, ${}, ${})",
                    n,
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5
                ));
            }
            sql.push_str(
                " ON CONFLICT (environment_id, flag, minute, variant, attribute, value) \
                 DO UPDATE SET count = coverage_counts.count + excluded.count",
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(&env_id);
            for ((flag, minute, variant, attribute, value), count) in chunk {
                query = query
                    .bind(*flag)
                    .bind(*minute)
                    .bind(*variant)
                    .bind(*attribute)
                    .bind(*value)
                    .bind(*count);
            }
            query.execute(&mut *tx).await?;
        }
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        for ((flag, minute, _), _) in &sums {
            let entry = latest.entry(flag).or_insert(*minute);
            *entry = (*entry).max(*minute);
        }
        for (flag, minute) in latest {
            // Late batches (an SDK flushing after a network outage) never move it back.
            sqlx::query(
                "INSERT INTO flag_last_evaluated (environment_id, flag, minute) VALUES ($1, $2, $3) \
                 ON CONFLICT (environment_id, flag) DO UPDATE SET minute = excluded.minute \
                 WHERE excluded.minute > flag_last_evaluated.minute",
            )
            .bind(&env_id)
            .bind(flag)
            .bind(minute)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn coverage_counts(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<BTreeMap<String, ValueCounts>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let env_id = environment_id(&mut conn, &project_id, environment).await?;
        // Summed in SQL: a stage's minutes hold at most (variants × attributes × values) keys.
        let rows = sqlx::query(
            "SELECT variant, attribute, value, CAST(SUM(count) AS BIGINT) AS total \
             FROM coverage_counts \
             WHERE environment_id = $1 AND flag = $2 AND minute >= $3 AND minute < $4 \
             GROUP BY variant, attribute, value",
        )
        .bind(&env_id)
        .bind(flag)
        .bind(from_minute)
        .bind(to_minute)
        .fetch_all(&mut *conn)
        .await?;
        let mut by_variant: BTreeMap<String, ValueCounts> = BTreeMap::new();
        for r in &rows {
            let total: i64 = r.try_get("total")?;
            by_variant
                .entry(r.try_get("variant")?)
                .or_default()
                .entry(r.try_get("attribute")?)
                .or_default()
                .insert(r.try_get("value")?, total.max(0) as u64);
        }
        Ok(by_variant)
    }

    async fn outcome_minutes(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<Vec<OutcomeAggregate>, StoreError> {
        let mut rows = Vec::new();
        self.read_outcomes(
            project,
            environment,
            flag,
            from_minute,
            to_minute,
            |minute, variant, arm| {
                rows.push(OutcomeAggregate {
                    minute,
                    flag: flag.to_string(),
                    variant,
                    observations: arm,
                    coverage: ValueCounts::new(),
                });
            },
        )
        .await?;
        // Byte order on every backend, whatever PostgreSQL's collation.
        rows.sort_unstable_by(|a, b| (a.minute, &a.variant).cmp(&(b.minute, &b.variant)));
        Ok(rows)
    }

    async fn outcome_observations(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<BTreeMap<String, ArmObservations>, StoreError> {
        let mut arms: BTreeMap<String, ArmObservations> = BTreeMap::new();
        self.read_outcomes(
            project,
            environment,
            flag,
            from_minute,
            to_minute,
            |_, variant, arm| {
                merge_arm(arms.entry(variant).or_default(), &arm);
            },
        )
        .await?;
        Ok(arms)
    }

    async fn evaluation_counts(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<Vec<EvaluationCount>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let env_id = environment_id(&mut conn, &project_id, environment).await?;
        let rows = sqlx::query(
            "SELECT minute, variant, count FROM evaluation_counts \
             WHERE environment_id = $1 AND flag = $2 AND minute >= $3 AND minute < $4",
        )
        .bind(&env_id)
        .bind(flag)
        .bind(from_minute)
        .bind(to_minute)
        .fetch_all(&mut *conn)
        .await?;
        let mut counts = rows
            .iter()
            .map(|r| {
                let variant: String = r.try_get("variant")?;
                Ok(EvaluationCount {
                    minute: r.try_get("minute")?,
                    flag: flag.to_string(),
                    variant: (variant != DEFAULT_VARIANT_SENTINEL).then_some(variant),
                    count: r.try_get::<i64, _>("count")?.max(0) as u64,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Byte order on every backend, whatever PostgreSQL's collation; `None` sorts first.
        counts.sort_unstable_by(|a, b| (a.minute, &a.variant).cmp(&(b.minute, &b.variant)));
        Ok(counts)
    }

    async fn compact_telemetry(
        &self,
        retention: &TelemetryRetention,
    ) -> Result<CompactionReport, StoreError> {
        self.compact_telemetry_impl(retention).await
    }

    async fn last_evaluations(&self, project: &str) -> Result<Vec<LastEvaluation>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let rows = sqlx::query(
            "SELECT e.key AS environment, l.flag, l.minute FROM flag_last_evaluated l \
             JOIN environments e ON e.id = l.environment_id WHERE e.project_id = $1",
        )
        .bind(&project_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut found = rows
            .iter()
            .map(|r| {
                Ok(LastEvaluation {
                    environment: r.try_get("environment")?,
                    flag: r.try_get("flag")?,
                    minute: r.try_get("minute")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        found.sort_unstable_by(|a, b| (&a.flag, &a.environment).cmp(&(&b.flag, &b.environment)));
        Ok(found)
    }

    async fn put_release_template(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        name: &str,
        template: &Value,
        expected_version: Option<u64>,
    ) -> Result<ReleaseTemplateRecord, StoreError> {
        self.put_release_template_impl(actor, project, key, name, template, expected_version)
            .await
    }

    async fn release_templates(
        &self,
        project: &str,
    ) -> Result<Vec<ReleaseTemplateRecord>, StoreError> {
        self.release_templates_impl(project).await
    }

    async fn release_template(
        &self,
        project: &str,
        key: &str,
    ) -> Result<ReleaseTemplateRecord, StoreError> {
        self.release_template_impl(project, key).await
    }

    async fn delete_release_template(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        self.delete_release_template_impl(actor, project, key).await
    }

    async fn create_release(&self, new: &NewRelease<'_>) -> Result<ReleaseRecord, StoreError> {
        self.create_release_impl(new).await
    }

    async fn release(&self, project: &str, id: &str) -> Result<ReleaseRecord, StoreError> {
        self.release_impl(project, id).await
    }

    async fn releases(
        &self,
        project: &str,
        environment: Option<&str>,
        flag: Option<&str>,
    ) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.releases_impl(project, environment, flag).await
    }

    async fn active_releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.active_releases_impl().await
    }

    async fn update_release(
        &self,
        update: &ReleaseUpdate<'_>,
    ) -> Result<ReleaseRecord, StoreError> {
        self.update_release_impl(update).await
    }

    async fn release_decisions(
        &self,
        project: &str,
        id: &str,
    ) -> Result<Vec<ReleaseDecision>, StoreError> {
        self.release_decisions_impl(project, id).await
    }

    async fn record_release_report(
        &self,
        id: &str,
        expected_version: u64,
        report: &Value,
    ) -> Result<bool, StoreError> {
        self.record_release_report_impl(id, expected_version, report)
            .await
    }

    async fn claim_release(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.claim_release_impl(id, owner, now, ttl_ms).await
    }

    async fn create_webhook(
        &self,
        actor: &Actor,
        project: &str,
        webhook: &NewWebhook,
    ) -> Result<Webhook, StoreError> {
        self.create_webhook_impl(actor, project, webhook).await
    }

    async fn webhooks(&self, project: &str) -> Result<Vec<Webhook>, StoreError> {
        self.webhooks_impl(project).await
    }

    async fn webhook(&self, project: &str, id: &str) -> Result<Webhook, StoreError> {
        self.webhook_impl(project, id).await
    }

    async fn update_webhook(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        update: &WebhookUpdate,
    ) -> Result<Webhook, StoreError> {
        self.update_webhook_impl(actor, project, id, update).await
    }

    async fn rotate_webhook_secret(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        secret: &str,
    ) -> Result<Webhook, StoreError> {
        self.rotate_webhook_secret_impl(actor, project, id, secret)
            .await
    }

    async fn delete_webhook(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        self.delete_webhook_impl(actor, project, id).await
    }

    async fn enqueue_webhook_deliveries(
        &self,
        project: &str,
        event_type: &str,
        data: &Value,
        only: Option<&str>,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.enqueue_webhook_deliveries_impl(project, event_type, data, only)
            .await
    }

    async fn claim_webhook_deliveries(
        &self,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.claim_webhook_deliveries_impl(now, lease_ms, limit)
            .await
    }

    async fn finish_webhook_delivery(
        &self,
        outcome: &DeliveryOutcome<'_>,
    ) -> Result<bool, StoreError> {
        self.finish_webhook_delivery_impl(outcome).await
    }

    async fn webhook_deliveries(
        &self,
        project: &str,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.webhook_deliveries_impl(project, webhook_id, limit)
            .await
    }

    async fn prune_webhook_deliveries(
        &self,
        older_than: i64,
        keep_per_webhook: u32,
    ) -> Result<u64, StoreError> {
        self.prune_webhook_deliveries_impl(older_than, keep_per_webhook)
            .await
    }

    fn changes(&self) -> Option<Box<dyn ChangeFeed>> {
        let channel = Arc::clone(self.changes.as_ref()?);
        Some(Box::new(PgChangeFeed {
            channel,
            listener: None,
        }))
    }

    async fn update_environment(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        update: &EnvironmentUpdate,
        comment: Option<&str>,
    ) -> Result<Environment, StoreError> {
        self.update_environment_impl(actor, project, key, update, comment)
            .await
    }

    async fn delete_environment(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        self.delete_environment_impl(actor, project, key).await
    }

    async fn record_credential_uses(&self, uses: &[CredentialUse]) -> Result<(), StoreError> {
        // One statement per credential, each its own transaction: a flush then never holds
        // one row's or table's lock while waiting for another, so neither another server's
        // flush nor anything else taking the same locks in another order can deadlock with it.
        // Each update is independent and idempotent, so nothing needs them to commit together.
        for used in uses {
            let statement = match used.kind {
                CredentialKind::SdkKey => {
                    "UPDATE sdk_keys SET last_used_at = $1 \
                     WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)"
                }
                CredentialKind::Token => {
                    "UPDATE tokens SET last_used_at = $1 \
                     WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)"
                }
            };
            sqlx::query(statement)
                .bind(used.at)
                .bind(&used.id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

impl SqlStore {
    /// Reads one flag's outcome rows in a range of minutes, handing each to `each` (minute,
    /// variant, observations) as it is decoded, in no particular order.
    async fn read_outcomes(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        from_minute: i64,
        to_minute: i64,
        mut each: impl FnMut(i64, String, ArmObservations),
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let env_id = environment_id(&mut conn, &project_id, environment).await?;
        let rows = sqlx::query(
            "SELECT minute, variant, exposures, requests, errors, latency, metrics \
             FROM outcome_aggregates \
             WHERE environment_id = $1 AND flag = $2 AND minute >= $3 AND minute < $4",
        )
        .bind(&env_id)
        .bind(flag)
        .bind(from_minute)
        .bind(to_minute)
        .fetch_all(&mut *conn)
        .await?;
        let count = |r: &AnyRow, column: &str| -> Result<u64, StoreError> {
            Ok(r.try_get::<i64, _>(column)?.max(0) as u64)
        };
        for r in &rows {
            let arm = ArmObservations {
                exposures: count(r, "exposures")?,
                requests: count(r, "requests")?,
                errors: count(r, "errors")?,
                latency: from_json(&r.try_get::<String, _>("latency")?)?,
                metrics: from_json(&r.try_get::<String, _>("metrics")?)?,
            };
            each(r.try_get("minute")?, r.try_get("variant")?, arm);
        }
        Ok(())
    }
}

/// Adds `other` into `arm`: counts summed (saturating), sketches and metric sums merged; at
/// most [`MAX_METRICS_PER_AGGREGATE`] metric names are kept.
fn merge_arm(arm: &mut ArmObservations, other: &ArmObservations) {
    arm.exposures = arm.exposures.saturating_add(other.exposures);
    arm.requests = arm.requests.saturating_add(other.requests);
    arm.errors = arm.errors.saturating_add(other.errors);
    arm.latency.merge(&other.latency);
    for (name, sums) in &other.metrics {
        if let Some(kept) = arm.metrics.get_mut(name) {
            kept.merge(sums);
        } else if arm.metrics.len() < MAX_METRICS_PER_AGGREGATE {
            arm.metrics.insert(name.clone(), *sums);
        }
    }
}

/// A batch's outcomes checked and merged by key, in key order: one transaction may then touch
/// each row once, and concurrent batches lock their rows in the same order (after the same
/// evaluation counts), so they cannot deadlock.
fn merge_outcomes(
    outcomes: &[OutcomeAggregate],
) -> Result<BTreeMap<(&str, i64, &str), ArmObservations>, StoreError> {
    let mut merged: BTreeMap<(&str, i64, &str), ArmObservations> = BTreeMap::new();
    for row in outcomes {
        let arm = &row.observations;
        if row.minute % 60 != 0 || row.variant.is_empty() || arm.errors > arm.requests {
            return Err(StoreError::Invalid(format!(
                "outcomes of `{}` at {}: a minute must be a multiple of 60, a variant not empty \
                 and errors at most the requests",
                row.flag, row.minute
            )));
        }
        merge_arm(
            merged
                .entry((&row.flag, row.minute, &row.variant))
                .or_default(),
            arm,
        );
    }
    Ok(merged)
}

/// The coverage counts of a batch's outcome rows summed by key, in key order (for the same
/// reasons as [`merge_outcomes`]). `Invalid` for an empty attribute or value.
#[allow(clippy::type_complexity, reason = "the key of one row, used once")]
fn merge_coverage(
    outcomes: &[OutcomeAggregate],
) -> Result<BTreeMap<(&str, i64, &str, &str, &str), i64>, StoreError> {
    let mut sums = BTreeMap::new();
    for row in outcomes {
        for (attribute, values) in &row.coverage {
            for (value, count) in values {
                if attribute.is_empty() || value.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "coverage of `{}` at {}: an attribute and a value are never empty",
                        row.flag, row.minute
                    )));
                }
                let key = (
                    row.flag.as_str(),
                    row.minute,
                    row.variant.as_str(),
                    attribute.as_str(),
                    value.as_str(),
                );
                let sum: &mut i64 = sums.entry(key).or_insert(0);
                *sum = sum.saturating_add(i64::try_from(*count).unwrap_or(i64::MAX));
            }
        }
    }
    Ok(sums)
}

/// Merges one (flag, minute, variant)'s outcomes into its stored aggregate.
///
/// The upsert adds the counts and, inserting or updating, takes the row's lock until the
/// transaction ends (on SQLite, `BEGIN IMMEDIATE` has already serialised every writer); it
/// returns the sketch and metrics as stored, which on PostgreSQL (read committed) are those of
/// the latest committed version, since `ON CONFLICT DO UPDATE` waits for and then updates that
/// version. Merging them in Rust and writing them back under the same lock therefore never
/// loses a concurrent batch's sketch. A new row starts from empty JSON objects, which
/// decode as an empty sketch and no metrics. `span` is the seconds the row covers (a minute,
/// or an hour merged by compaction); a row merged into takes it.
async fn add_outcome(
    conn: &mut AnyConnection,
    env_id: &str,
    (flag, minute, variant): (&str, i64, &str),
    span: i64,
    arm: &ArmObservations,
) -> Result<(), StoreError> {
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let row = sqlx::query(
        "INSERT INTO outcome_aggregates \
         (environment_id, flag, minute, variant, exposures, requests, errors, latency, metrics, \
         span) VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', '{}', $8) \
         ON CONFLICT (environment_id, flag, minute, variant) DO UPDATE SET \
         exposures = outcome_aggregates.exposures + excluded.exposures, \
         requests = outcome_aggregates.requests + excluded.requests, \
         errors = outcome_aggregates.errors + excluded.errors, span = excluded.span \
         RETURNING latency, metrics",
    )
    .bind(env_id)
    .bind(flag)
    .bind(minute)
    .bind(variant)
    .bind(as_i64(arm.exposures))
    .bind(as_i64(arm.requests))
    .bind(as_i64(arm.errors))
    .bind(span)
    .fetch_one(&mut *conn)
    .await?;
    if arm.latency.count() == 0 && arm.metrics.is_empty() {
        return Ok(());
    }
    let mut stored = ArmObservations {
        latency: from_json(&row.try_get::<String, _>("latency")?)?,
        metrics: from_json(&row.try_get::<String, _>("metrics")?)?,
        ..ArmObservations::default()
    };
    merge_arm(&mut stored, arm);
    sqlx::query(
        "UPDATE outcome_aggregates SET latency = $5, metrics = $6 \
         WHERE environment_id = $1 AND flag = $2 AND minute = $3 AND variant = $4",
    )
    .bind(env_id)
    .bind(flag)
    .bind(minute)
    .bind(variant)
    .bind(to_json(&stored.latency)?)
    .bind(to_json(&stored.metrics)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How many evaluation counts one statement upserts: 4 parameters each, well under SQLite's
/// limit of 32,766 parameters and PostgreSQL's of 65,535.
const COUNTS_PER_STATEMENT: usize = 1_000;

/// Committed changes heard on PostgreSQL: `LISTEN` on the store's channel, on a connection of
/// its own (reconnected when lost).
struct PgChangeFeed {
    channel: Arc<ChangeChannel>,
    /// `None` until connected, and again after the connection failed.
    listener: Option<sqlx::postgres::PgListener>,
}

impl std::fmt::Debug for PgChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeFeed")
            .field("channel", &self.channel.name)
            .field("connected", &self.listener.is_some())
            .finish()
    }
}

impl PgChangeFeed {
    async fn connect(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
        // Named, so that operators (and the tests) can find it among the connections.
        let options =
            PgConnectOptions::from_str(&self.channel.url)?.application_name("anchor-change-feed");
        // A pool of one connection that never expires, which the listener uses to reconnect.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.listen(&self.channel.name).await?;
        Ok(listener)
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> Result<Change, StoreError> {
        let Some(listener) = self.listener.as_mut() else {
            self.listener = Some(self.connect().await?);
            return Ok(Change::Resync);
        };
        match listener.try_recv().await {
            // A payload this version does not understand (a newer replica's) still means that
            // something changed.
            Ok(Some(notification)) => {
                Ok(serde_json::from_str(notification.payload()).unwrap_or(Change::Resync))
            }
            // The connection was lost and has been re-established.
            Ok(None) => Ok(Change::Resync),
            Err(e) => {
                self.listener = None;
                Err(e.into())
            }
        }
    }
}
