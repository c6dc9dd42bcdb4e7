//! Changing and deleting environments: the statements behind
//! [`Store::update_environment`](crate::Store::update_environment) and
//! [`Store::delete_environment`](crate::Store::delete_environment).
//!
//! An environment is referenced (without `ON DELETE CASCADE`, in both backends' migrations) by
//! `flag_configs`, `revisions`, `audit_log`, `segments` (and through them `segment_keys`),
//! `sdk_keys`, `change_requests` (and through them `change_request_reviews`), `releases` (and
//! through them `release_decisions`), `evaluation_counts`, `telemetry_batches`,
//! `outcome_aggregates`, `coverage_counts` and `flag_last_evaluated`. A deletion removes the
//! rows of each, children before parents, except the audit log's, which it keeps and detaches:
//! what happened stays on record.

use serde_json::{Value, json};
use sqlx::{AnyConnection, Row};

use super::{
    AuditRecord, SqlStore, audit, bump_revision, environment_from, notify_sdk_keys, project_id,
};
use crate::{Actor, Environment, EnvironmentUpdate, StoreError};

/// What the audit log records of an environment: its settings, not its revision counter.
fn audit_value(environment: &Environment) -> Value {
    json!({
        "key": environment.key,
        "name": environment.name,
        "position": environment.position,
        "requiresApproval": environment.requires_approval,
        "requiresComment": environment.requires_comment,
    })
}

/// The project's environments with their ids, in display order, after taking their row locks
/// on PostgreSQL, so that two writers reordering one project take turns (SQLite's `BEGIN
/// IMMEDIATE` already serialises them).
async fn lock_environments(
    conn: &mut AnyConnection,
    project_id: &str,
    project: &str,
) -> Result<Vec<(String, Environment)>, StoreError> {
    sqlx::query("UPDATE environments SET revision = revision WHERE project_id = $1")
        .bind(project_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "SELECT id, key, name, position, requires_approval, requires_comment, revision, \
         created_at FROM environments WHERE project_id = $1 ORDER BY position, key",
    )
    .bind(project_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| Ok((row.try_get("id")?, environment_from(row, project)?)))
    .collect()
}

/// Numbers the environments 0, 1, 2… in the order given, writing only the positions that
/// differ.
async fn renumber(
    conn: &mut AnyConnection,
    order: &[(String, Environment)],
) -> Result<(), StoreError> {
    for (position, (id, environment)) in order.iter().enumerate() {
        let position = position as i64;
        if environment.position != position {
            sqlx::query("UPDATE environments SET position = $1 WHERE id = $2")
                .bind(position)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// The statements that delete what lives in an environment, children before parents. Each
/// binds the environment's id as `$1`.
const DELETE_CONTENTS: &[&str] = &[
    "DELETE FROM release_decisions WHERE release_id IN \
     (SELECT id FROM releases WHERE environment_id = $1)",
    "DELETE FROM releases WHERE environment_id = $1",
    "DELETE FROM change_request_reviews WHERE change_request_id IN \
     (SELECT id FROM change_requests WHERE environment_id = $1)",
    "DELETE FROM change_requests WHERE environment_id = $1",
    "DELETE FROM segment_keys WHERE segment_id IN \
     (SELECT id FROM segments WHERE environment_id = $1)",
    "DELETE FROM segments WHERE environment_id = $1",
    "DELETE FROM sdk_keys WHERE environment_id = $1",
    "DELETE FROM flag_configs WHERE environment_id = $1",
    "DELETE FROM revisions WHERE environment_id = $1",
    "DELETE FROM evaluation_counts WHERE environment_id = $1",
    "DELETE FROM outcome_aggregates WHERE environment_id = $1",
    "DELETE FROM coverage_counts WHERE environment_id = $1",
    "DELETE FROM flag_last_evaluated WHERE environment_id = $1",
    "DELETE FROM telemetry_batches WHERE environment_id = $1",
    // The history stays; it no longer names an environment that is gone.
    "UPDATE audit_log SET environment_id = NULL WHERE environment_id = $1",
];

impl SqlStore {
    pub(super) async fn update_environment_impl(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        update: &EnvironmentUpdate,
        comment: Option<&str>,
    ) -> Result<Environment, StoreError> {
        if update.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(StoreError::Invalid(
                "an environment's name cannot be empty".into(),
            ));
        }
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let mut order = lock_environments(&mut tx, &project_id, project).await?;
        let from = order
            .iter()
            .position(|(_, e)| e.key == key)
            .ok_or_else(|| StoreError::not_found("environment", key))?;
        let (env_id, before) = order[from].clone();
        let mut after = before.clone();
        if let Some(name) = &update.name {
            after.name.clone_from(name);
        }
        if let Some(requires_approval) = update.requires_approval {
            after.requires_approval = requires_approval;
        }
        if let Some(requires_comment) = update.requires_comment {
            after.requires_comment = requires_comment;
        }
        if let Some(position) = update.position {
            let last = order.len() - 1;
            let to = usize::try_from(position)
                .ok()
                .filter(|to| *to <= last)
                .ok_or_else(|| {
                    StoreError::Invalid(format!("position {position} is not between 0 and {last}"))
                })?;
            let moved = order.remove(from);
            order.insert(to, moved);
            // Renumbered whole, so that positions are dense whatever they were before.
            renumber(&mut tx, &order).await?;
            after.position = to as i64;
        }
        if audit_value(&after) == audit_value(&before) {
            tx.commit().await?;
            return Ok(after);
        }
        sqlx::query(
            "UPDATE environments SET name = $1, requires_approval = $2, requires_comment = $3 \
             WHERE id = $4",
        )
        .bind(&after.name)
        .bind(i64::from(after.requires_approval))
        .bind(i64::from(after.requires_comment))
        .bind(&env_id)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: Some(&env_id),
                actor,
                action: "environment.updated",
                resource_kind: "environment",
                resource_key: key,
                before: &audit_value(&before),
                after: &audit_value(&after),
                comment,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    pub(super) async fn delete_environment_impl(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let mut order = lock_environments(&mut tx, &project_id, project).await?;
        let at_position = order
            .iter()
            .position(|(_, e)| e.key == key)
            .ok_or_else(|| StoreError::not_found("environment", key))?;
        if order.len() == 1 {
            return Err(StoreError::Invalid(format!(
                "`{key}` is the project's only environment: a project keeps at least one"
            )));
        }
        let (env_id, environment) = order.remove(at_position);
        let active: Vec<String> = sqlx::query(
            "SELECT flag_key FROM releases WHERE environment_id = $1 AND active = 1 \
             ORDER BY flag_key",
        )
        .bind(&env_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("flag_key"))
        .collect::<Result<_, _>>()?;
        if !active.is_empty() {
            return Err(StoreError::Invalid(format!(
                "a release is still under way in `{key}` (flag `{}`): finish or abort it first",
                active.join("`, `")
            )));
        }
        // Announced at commit (PostgreSQL), before the row goes: other servers then find the
        // environment gone and drop its snapshot, and forget its SDK keys.
        bump_revision(&mut tx, &project_id, Some(&env_id), self.channel()).await?;
        notify_sdk_keys(&mut tx, self.channel()).await?;
        for statement in DELETE_CONTENTS {
            sqlx::query(*statement)
                .bind(&env_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM environments WHERE id = $1")
            .bind(&env_id)
            .execute(&mut *tx)
            .await?;
        renumber(&mut tx, &order).await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: "environment.deleted",
                resource_kind: "environment",
                resource_key: key,
                before: &audit_value(&environment),
                after: &Value::Null,
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
