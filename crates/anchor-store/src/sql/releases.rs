//! Release templates and releases (migration 0010): the statements behind the `Store` methods
//! of the same names.

use anchor_engine::FlagConfig;
use serde_json::{Value, json};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{
    AuditRecord, ConfigWrite, SqlStore, audit, bump_revision, environment_id, flag_row, from_json,
    new_id, project_id, to_json, unique, write_flag_config,
};
use crate::{
    Actor, ActorKind, NewRelease, ReleaseDecision, ReleaseRecord, ReleaseTemplateRecord,
    ReleaseUpdate, StoreError,
};

fn actor_from(kind: &str, id: String) -> Actor {
    Actor {
        kind: ActorKind::parse(kind),
        id,
    }
}

fn template_from(row: &AnyRow) -> Result<ReleaseTemplateRecord, StoreError> {
    Ok(ReleaseTemplateRecord {
        key: row.try_get("key")?,
        name: row.try_get("name")?,
        template: from_json(&row.try_get::<String, _>("template")?)?,
        version: row.try_get::<i64, _>("version")? as u64,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The project's template `key`, if there is one.
async fn find_template(
    conn: &mut AnyConnection,
    project_id: &str,
    key: &str,
) -> Result<Option<ReleaseTemplateRecord>, StoreError> {
    sqlx::query(
        "SELECT key, name, template, version, created_at, updated_at FROM release_templates \
         WHERE project_id = $1 AND key = $2",
    )
    .bind(project_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| template_from(&row))
    .transpose()
}

const RELEASE_COLUMNS: &str = "r.id, p.key AS project_key, e.key AS environment_key, r.flag_key, \
     r.rule_id, r.control_variant, r.treatment_variant, r.template_key, r.template, r.state, \
     r.version, r.active, r.report, r.reported_at, r.created_by_kind, r.created_by_id, r.created_at, r.updated_at \
     FROM releases r JOIN projects p ON p.id = r.project_id \
     JOIN environments e ON e.id = r.environment_id";

fn release_from(row: &AnyRow) -> Result<ReleaseRecord, StoreError> {
    Ok(ReleaseRecord {
        id: row.try_get("id")?,
        project: row.try_get("project_key")?,
        environment: row.try_get("environment_key")?,
        flag: row.try_get("flag_key")?,
        rule: row.try_get("rule_id")?,
        control: row.try_get("control_variant")?,
        treatment: row.try_get("treatment_variant")?,
        template_key: row.try_get("template_key")?,
        template: from_json(&row.try_get::<String, _>("template")?)?,
        state: from_json(&row.try_get::<String, _>("state")?)?,
        version: row.try_get::<i64, _>("version")? as u64,
        active: row.try_get::<i64, _>("active")? != 0,
        report: row
            .try_get::<Option<String>, _>("report")?
            .map(|r| from_json(&r))
            .transpose()?,
        reported_at: row.try_get("reported_at")?,
        created_by: actor_from(
            &row.try_get::<String, _>("created_by_kind")?,
            row.try_get("created_by_id")?,
        ),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn load_release(conn: &mut AnyConnection, id: &str) -> Result<ReleaseRecord, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {RELEASE_COLUMNS} WHERE r.id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found("release", id))?;
    release_from(&row)
}

async fn insert_decision(
    conn: &mut AnyConnection,
    release_id: &str,
    actor: &Actor,
    message: &str,
    report: Option<&Value>,
    at: i64,
) -> Result<(), StoreError> {
    let report = report.map(to_json).transpose()?;
    sqlx::query(
        "INSERT INTO release_decisions (release_id, actor_kind, actor_id, message, report, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(release_id)
    .bind(actor.kind.as_str())
    .bind(&actor.id)
    .bind(message)
    .bind(report)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl SqlStore {
    pub(super) async fn put_release_template_impl(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        name: &str,
        template: &Value,
        expected_version: Option<u64>,
    ) -> Result<ReleaseTemplateRecord, StoreError> {
        if !anchor_engine::model::is_valid_key(key) {
            return Err(StoreError::Invalid(format!(
                "`{key}` is not a valid template key: 1 to 128 of [a-zA-Z0-9._-]"
            )));
        }
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let current = find_template(&mut tx, &project_id, key).await?;
        let actual = current.as_ref().map_or(0, |t| t.version);
        if let Some(expected) = expected_version
            && expected != actual
        {
            return Err(StoreError::VersionMismatch {
                what: "release template",
                expected,
                actual,
            });
        }
        let body = to_json(template)?;
        let (action, before) = match &current {
            Some(t) => {
                sqlx::query(
                    "UPDATE release_templates SET name = $1, template = $2, version = $3, \
                     updated_at = $4 WHERE project_id = $5 AND key = $6 AND version = $7",
                )
                .bind(name)
                .bind(&body)
                .bind((t.version + 1) as i64)
                .bind(at)
                .bind(&project_id)
                .bind(key)
                .bind(t.version as i64)
                .execute(&mut *tx)
                .await?;
                (
                    "release_template.updated",
                    json!({"name": t.name, "template": t.template}),
                )
            }
            None => {
                sqlx::query(
                    "INSERT INTO release_templates (project_id, key, name, template, version, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $5)",
                )
                .bind(&project_id)
                .bind(key)
                .bind(name)
                .bind(&body)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(unique("release template", key))?;
                ("release_template.created", Value::Null)
            }
        };
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action,
                resource_kind: "release_template",
                resource_key: key,
                before: &before,
                after: &json!({"name": name, "template": template}),
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(ReleaseTemplateRecord {
            key: key.to_string(),
            name: name.to_string(),
            template: template.clone(),
            version: actual + 1,
            created_at: current.map_or(at, |t| t.created_at),
            updated_at: at,
        })
    }

    pub(super) async fn release_templates_impl(
        &self,
        project: &str,
    ) -> Result<Vec<ReleaseTemplateRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        sqlx::query(
            "SELECT key, name, template, version, created_at, updated_at FROM release_templates \
             WHERE project_id = $1 ORDER BY key",
        )
        .bind(&project_id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(template_from)
        .collect()
    }

    pub(super) async fn release_template_impl(
        &self,
        project: &str,
        key: &str,
    ) -> Result<ReleaseTemplateRecord, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        find_template(&mut conn, &project_id, key)
            .await?
            .ok_or_else(|| StoreError::not_found("release template", key))
    }

    pub(super) async fn delete_release_template_impl(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let before = find_template(&mut tx, &project_id, key)
            .await?
            .ok_or_else(|| StoreError::not_found("release template", key))?;
        sqlx::query("DELETE FROM release_templates WHERE project_id = $1 AND key = $2")
            .bind(&project_id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: "release_template.deleted",
                resource_kind: "release_template",
                resource_key: key,
                before: &json!({"name": before.name, "template": before.template}),
                after: &Value::Null,
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn create_release_impl(
        &self,
        new: &NewRelease<'_>,
    ) -> Result<ReleaseRecord, StoreError> {
        let at = self.now();
        let id = new_id();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, new.project).await?;
        let env_id = environment_id(&mut tx, &project_id, new.environment).await?;
        flag_row(&mut tx, &project_id, new.flag).await?;
        sqlx::query(
            "INSERT INTO releases (id, project_id, environment_id, flag_key, rule_id, \
             control_variant, treatment_variant, template_key, template, state, version, active, \
             lease_owner, lease_until, created_by_kind, created_by_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, 1, NULL, 0, $11, $12, $13, $13)",
        )
        .bind(&id)
        .bind(&project_id)
        .bind(&env_id)
        .bind(new.flag)
        .bind(new.rule)
        .bind(new.control)
        .bind(new.treatment)
        .bind(new.template_key)
        .bind(to_json(new.template)?)
        .bind(to_json(new.state)?)
        .bind(new.actor.kind.as_str())
        .bind(&new.actor.id)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(unique("active release", new.flag))?;
        insert_decision(&mut tx, &id, new.actor, new.message, None, at).await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor: new.actor,
                action: "release.created",
                resource_kind: "release",
                resource_key: &id,
                before: &Value::Null,
                after: &json!({
                    "flag": new.flag, "rule": new.rule, "control": new.control,
                    "treatment": new.treatment, "template": new.template_key,
                    "state": new.state,
                }),
                comment: None,
                at,
            },
        )
        .await?;
        let record = load_release(&mut tx, &id).await?;
        tx.commit().await?;
        Ok(record)
    }

    pub(super) async fn release_impl(
        &self,
        project: &str,
        id: &str,
    ) -> Result<ReleaseRecord, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let record = load_release(&mut conn, id).await?;
        if record.project != project {
            return Err(StoreError::not_found("release", id));
        }
        Ok(record)
    }

    pub(super) async fn releases_impl(
        &self,
        project: &str,
        environment: Option<&str>,
        flag: Option<&str>,
    ) -> Result<Vec<ReleaseRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let env_id = match environment {
            Some(environment) => Some(environment_id(&mut conn, &project_id, environment).await?),
            None => None,
        };
        let mut sql = format!("SELECT {RELEASE_COLUMNS} WHERE r.project_id = $1");
        if env_id.is_some() {
            sql.push_str(" AND r.environment_id = $2");
        }
        if flag.is_some() {
            sql.push_str(if env_id.is_some() {
                " AND r.flag_key = $3"
            } else {
                " AND r.flag_key = $2"
            });
        }
        sql.push_str(" ORDER BY r.seq DESC");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(project_id);
        if let Some(env_id) = env_id {
            query = query.bind(env_id);
        }
        if let Some(flag) = flag {
            query = query.bind(flag.to_string());
        }
        query
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(release_from)
            .collect()
    }

    pub(super) async fn active_releases_impl(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} WHERE r.active = 1 ORDER BY r.seq"
        )))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(release_from)
        .collect()
    }

    pub(super) async fn update_release_impl(
        &self,
        update: &ReleaseUpdate<'_>,
    ) -> Result<ReleaseRecord, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, update.project).await?;
        let current = load_release(&mut tx, update.id).await?;
        if current.project != update.project {
            return Err(StoreError::not_found("release", update.id));
        }
        let env_id = environment_id(&mut tx, &project_id, &current.environment).await?;
        if let Some((config, based_on)) = update.flag_config {
            // As every configuration write: the revision bump first takes the environment's
            // lock (PostgreSQL), then the version check refuses a configuration derived from
            // one that changed meanwhile.
            bump_revision(&mut tx, &project_id, Some(&env_id), self.channel()).await?;
            let config: &FlagConfig = config;
            write_flag_config(
                &mut tx,
                ConfigWrite {
                    project_id: &project_id,
                    environment_id: &env_id,
                    flag: &current.flag,
                    config,
                    expected_version: Some(based_on),
                    actor: update.actor,
                    comment: update.message,
                    audit_comment: update.message,
                    action: update.action,
                    at,
                },
            )
            .await?;
        } else if current.active != update.active {
            // A release that ends without changing its flag (aborted, or rolled back before it
            // served the treatment) still changes what the environment's SDKs watch
            // (`watchedFlags`): a new revision tells them, and every server sharing the
            // database, at once rather than at the environment's next change.
            bump_revision(&mut tx, &project_id, Some(&env_id), self.channel()).await?;
        }
        let state = to_json(update.state)?;
        let report = update.report.map(to_json).transpose()?;
        let written = sqlx::query(
            "UPDATE releases SET state = $1, version = version + 1, active = $2, updated_at = $3, \
             report = COALESCE($6, report), reported_at = CASE WHEN $6 IS NULL THEN reported_at \
             ELSE $3 END WHERE id = $4 AND version = $5",
        )
        .bind(&state)
        .bind(i64::from(update.active))
        .bind(at)
        .bind(update.id)
        .bind(update.expected_version as i64)
        .bind(report)
        .execute(&mut *tx)
        .await?;
        if written.rows_affected() != 1 {
            return Err(StoreError::VersionMismatch {
                what: "release",
                expected: update.expected_version,
                actual: current.version,
            });
        }
        if let Some(message) = update.message {
            insert_decision(&mut tx, update.id, update.actor, message, update.report, at).await?;
        }
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor: update.actor,
                action: update.action,
                resource_kind: "release",
                resource_key: update.id,
                before: &json!({"state": current.state}),
                after: &json!({"state": update.state}),
                comment: update.message,
                at,
            },
        )
        .await?;
        super::webhooks::record_events(&mut tx, &project_id, update.events, at).await?;
        let record = load_release(&mut tx, update.id).await?;
        tx.commit().await?;
        Ok(record)
    }

    pub(super) async fn release_decisions_impl(
        &self,
        project: &str,
        id: &str,
    ) -> Result<Vec<ReleaseDecision>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let record = load_release(&mut conn, id).await?;
        if record.project != project {
            return Err(StoreError::not_found("release", id));
        }
        sqlx::query(
            "SELECT actor_kind, actor_id, message, report, created_at FROM release_decisions \
             WHERE release_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| {
            Ok(ReleaseDecision {
                at: row.try_get("created_at")?,
                actor: actor_from(
                    &row.try_get::<String, _>("actor_kind")?,
                    row.try_get("actor_id")?,
                ),
                message: row.try_get("message")?,
                report: row
                    .try_get::<Option<String>, _>("report")?
                    .map(|r| from_json(&r))
                    .transpose()?,
            })
        })
        .collect()
    }

    pub(super) async fn record_release_report_impl(
        &self,
        id: &str,
        expected_version: u64,
        report: &Value,
    ) -> Result<bool, StoreError> {
        let at = self.now();
        let mut conn = self.pool.acquire().await?;
        let written = sqlx::query(
            "UPDATE releases SET report = $1, reported_at = $2 \
             WHERE id = $3 AND version = $4 AND active = 1",
        )
        .bind(to_json(report)?)
        .bind(at)
        .bind(id)
        .bind(expected_version as i64)
        .execute(&mut *conn)
        .await?;
        Ok(written.rows_affected() == 1)
    }

    pub(super) async fn claim_release_impl(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // One conditional statement: two claimers racing cannot both see the lease free.
        let claimed = sqlx::query(
            "UPDATE releases SET lease_owner = $1, lease_until = $2 \
             WHERE id = $3 AND active = 1 AND (lease_owner IS NULL OR lease_owner = $1 \
             OR lease_until < $4)",
        )
        .bind(owner)
        .bind(now.saturating_add(ttl_ms))
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }
}
