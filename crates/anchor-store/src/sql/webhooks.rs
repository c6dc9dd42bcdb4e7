//! Webhooks and their delivery log.
//!
//! The signing secret is stored as given (the server reads it back to sign every delivery), so
//! it is read by one query only, the dispatcher's claim, and never appears in a record, an audit
//! entry or an error. Deliveries are an outbox: the dispatcher claims due ones by moving
//! `next_attempt_at` forward by a lease with a compare-and-set on its old value, which gives
//! concurrent claimers (several servers on one PostgreSQL) disjoint deliveries on both backends
//! without `FOR UPDATE SKIP LOCKED`. A write that announces an event records its deliveries in
//! its own transaction ([`record_events`]), so no event is lost between a commit and its
//! deliveries.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{AuditRecord, SqlStore, audit, from_json, limit, new_id, project_id, to_json};
use crate::types::*;

/// The columns [`webhook_from`] reads, with `FROM`: append a `WHERE` clause.
macro_rules! select_webhooks {
    () => {
        "SELECT w.id, w.name, w.url, w.events, w.format, w.enabled, w.created_at, \
         w.updated_at, p.key AS project FROM webhooks w JOIN projects p ON p.id = w.project_id "
    };
}

/// The columns [`delivery_from`] reads, with `FROM`: append a `WHERE` clause.
macro_rules! select_deliveries {
    () => {
        "SELECT d.id, d.webhook_id, d.event_type, d.payload, d.attempts, d.status, \
         d.last_http_status, d.last_error, d.next_attempt_at, d.created_at, d.updated_at \
         FROM webhook_deliveries d "
    };
}

fn webhook_from(row: &AnyRow) -> Result<Webhook, StoreError> {
    let format: String = row.try_get("format")?;
    Ok(Webhook {
        id: row.try_get("id")?,
        project: row.try_get("project")?,
        name: row.try_get("name")?,
        url: row.try_get("url")?,
        events: from_json(&row.try_get::<String, _>("events")?)?,
        format: WebhookFormat::parse(&format)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown webhook format `{format}`")))?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn delivery_from(row: &AnyRow) -> Result<WebhookDelivery, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(WebhookDelivery {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_type: row.try_get("event_type")?,
        payload: from_json(&row.try_get::<String, _>("payload")?)?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery status `{status}`")))?,
        last_http_status: row
            .try_get::<Option<i64>, _>("last_http_status")?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get("last_error")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// What the audit log keeps of a webhook: everything but its secret (which the record does not
/// hold) and its times, and of its URL only the scheme and host: every member of the project
/// reads the audit log, and some receivers (Slack's among them) take the URL's path as the
/// credential.
fn audit_value(webhook: &Webhook) -> Value {
    serde_json::json!({
        "name": webhook.name,
        "url": webhook.redacted_url(),
        "events": webhook.events,
        "format": webhook.format,
        "enabled": webhook.enabled,
    })
}

fn check_events(events: &[String]) -> Result<(), StoreError> {
    if events.is_empty() || events.iter().any(|e| e.is_empty()) {
        return Err(StoreError::Invalid(
            "a webhook subscribes to at least one event type (`*` for all)".into(),
        ));
    }
    Ok(())
}

/// The webhook `id` of the project (`NotFound` when the project has no such webhook).
async fn load_webhook(
    conn: &mut AnyConnection,
    project_id: &str,
    id: &str,
) -> Result<Webhook, StoreError> {
    sqlx::query(concat!(
        select_webhooks!(),
        "WHERE w.id = $1 AND w.project_id = $2"
    ))
    .bind(id)
    .bind(project_id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(webhook_from)
    .transpose()?
    .ok_or_else(|| StoreError::not_found("webhook", id))
}

/// Records one pending delivery of an event, due at `at`, in the caller's transaction: to every
/// enabled webhook of the project subscribed to `event_type`, or, with `only`, to that webhook
/// whatever its subscriptions and state.
async fn enqueue(
    conn: &mut AnyConnection,
    project_id: &str,
    event_type: &str,
    data: &Value,
    only: Option<&str>,
    at: i64,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    if event_type.is_empty() || event_type == ALL_EVENTS {
        return Err(StoreError::Invalid(format!(
            "`{event_type}` is not an event type"
        )));
    }
    let payload = to_json(data)?;
    let targets = match only {
        Some(id) => vec![load_webhook(conn, project_id, id).await?],
        None => sqlx::query(concat!(
            select_webhooks!(),
            "WHERE w.project_id = $1 AND w.enabled = 1 ORDER BY w.created_at, w.id"
        ))
        .bind(project_id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(webhook_from)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|w| w.subscribes_to(event_type))
        .collect(),
    };
    let mut deliveries = Vec::with_capacity(targets.len());
    for webhook in &targets {
        deliveries.push(insert_delivery(conn, &webhook.id, event_type, &payload, at).await?);
    }
    Ok(deliveries)
}

/// The transactional outbox: records the deliveries of the events a write announces, in the
/// write's own transaction, so that a write that fails or is never committed announces nothing
/// and a committed one cannot lose its announcement.
pub(super) async fn record_events(
    conn: &mut AnyConnection,
    project_id: &str,
    events: &[OutboxEvent<'_>],
    at: i64,
) -> Result<(), StoreError> {
    for event in events {
        enqueue(conn, project_id, event.event_type, event.data, None, at).await?;
    }
    Ok(())
}

/// [`record_events`] for a write of a flag configuration: the event's data gets the
/// configuration's new `version`, which the caller could not know before the write.
pub(super) async fn record_config_event(
    conn: &mut AnyConnection,
    project_id: &str,
    event: Option<OutboxEvent<'_>>,
    version: u64,
    at: i64,
) -> Result<(), StoreError> {
    let Some(event) = event else {
        return Ok(());
    };
    let mut data = event.data.clone();
    if let Value::Object(members) = &mut data {
        members.insert("version".into(), version.into());
    }
    let event = OutboxEvent {
        event_type: event.event_type,
        data: &data,
    };
    record_events(conn, project_id, &[event], at).await
}

async fn insert_delivery(
    conn: &mut AnyConnection,
    webhook_id: &str,
    event_type: &str,
    payload: &str,
    at: i64,
) -> Result<WebhookDelivery, StoreError> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, webhook_id, event_type, payload, attempts, status, \
         last_http_status, last_error, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 0, 'pending', NULL, NULL, $5, $5, $5)",
    )
    .bind(&id)
    .bind(webhook_id)
    .bind(event_type)
    .bind(payload)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(WebhookDelivery {
        id,
        webhook_id: webhook_id.to_string(),
        event_type: event_type.to_string(),
        payload: from_json(payload)?,
        attempts: 0,
        status: DeliveryStatus::Pending,
        last_http_status: None,
        last_error: None,
        next_attempt_at: Some(at),
        created_at: at,
        updated_at: at,
    })
}

impl SqlStore {
    pub(super) async fn create_webhook_impl(
        &self,
        actor: &Actor,
        project: &str,
        new: &NewWebhook,
    ) -> Result<Webhook, StoreError> {
        check_events(&new.events)?;
        if new.secret.is_empty() {
            return Err(StoreError::Invalid("empty webhook secret".into()));
        }
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let webhook = Webhook {
            id: new_id(),
            project: project.to_string(),
            name: new.name.clone(),
            url: new.url.clone(),
            events: new.events.clone(),
            format: new.format,
            enabled: new.enabled,
            created_at: at,
            updated_at: at,
        };
        sqlx::query(
            "INSERT INTO webhooks (id, project_id, name, url, secret, events, format, enabled, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&webhook.id)
        .bind(&project_id)
        .bind(&webhook.name)
        .bind(&webhook.url)
        .bind(&new.secret)
        .bind(to_json(&webhook.events)?)
        .bind(webhook.format.as_str())
        .bind(i64::from(webhook.enabled))
        .bind(at)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: "webhook.created",
                resource_kind: "webhook",
                resource_key: &webhook.id,
                before: &Value::Null,
                after: &audit_value(&webhook),
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(webhook)
    }

    pub(super) async fn webhooks_impl(&self, project: &str) -> Result<Vec<Webhook>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        let rows = sqlx::query(concat!(
            select_webhooks!(),
            "WHERE w.project_id = $1 ORDER BY w.created_at, w.id"
        ))
        .bind(&project_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(webhook_from).collect()
    }

    pub(super) async fn webhook_impl(
        &self,
        project: &str,
        id: &str,
    ) -> Result<Webhook, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        load_webhook(&mut conn, &project_id, id).await
    }

    pub(super) async fn update_webhook_impl(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        update: &WebhookUpdate,
    ) -> Result<Webhook, StoreError> {
        if let Some(events) = &update.events {
            check_events(events)?;
        }
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let before = load_webhook(&mut tx, &project_id, id).await?;
        let mut after = before.clone();
        if let Some(name) = &update.name {
            after.name.clone_from(name);
        }
        if let Some(url) = &update.url {
            after.url.clone_from(url);
        }
        if let Some(events) = &update.events {
            after.events.clone_from(events);
        }
        if let Some(format) = update.format {
            after.format = format;
        }
        if let Some(enabled) = update.enabled {
            after.enabled = enabled;
        }
        if after == before {
            return Ok(before);
        }
        after.updated_at = at;
        // Guarded by `updated_at`: a concurrent update in between (on PostgreSQL, whose
        // transactions here do not lock the row when reading it) fails instead of being lost.
        let changed = sqlx::query(
            "UPDATE webhooks SET name = $1, url = $2, events = $3, format = $4, enabled = $5, \
             updated_at = $6 WHERE id = $7 AND updated_at = $8",
        )
        .bind(&after.name)
        .bind(&after.url)
        .bind(to_json(&after.events)?)
        .bind(after.format.as_str())
        .bind(i64::from(after.enabled))
        .bind(at)
        .bind(id)
        .bind(before.updated_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(StoreError::Invalid(
                "the webhook changed meanwhile; read it again".into(),
            ));
        }
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: "webhook.updated",
                resource_kind: "webhook",
                resource_key: id,
                before: &audit_value(&before),
                after: &audit_value(&after),
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    pub(super) async fn rotate_webhook_secret_impl(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
        secret: &str,
    ) -> Result<Webhook, StoreError> {
        if secret.is_empty() {
            return Err(StoreError::Invalid("empty webhook secret".into()));
        }
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let mut webhook = load_webhook(&mut tx, &project_id, id).await?;
        sqlx::query("UPDATE webhooks SET secret = $1, updated_at = $2 WHERE id = $3")
            .bind(secret)
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        webhook.updated_at = at;
        // Neither secret: the entry only says that it changed.
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: "webhook.secret_rotated",
                resource_kind: "webhook",
                resource_key: id,
                before: &serde_json::json!({ "secretRotatedAt": null }),
                after: &serde_json::json!({ "secretRotatedAt": at }),
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(webhook)
    }

    pub(super) async fn delete_webhook_impl(
        &self,
        actor: &Actor,
        project: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let webhook = load_webhook(&mut tx, &project_id, id).await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            // A concurrent deletion won; it wrote the audit entry.
            return Err(StoreError::not_found("webhook", id));
        }
        audit(
            &mut tx,
            AuditRecord {
                project_id: &project_id,
                environment_id: None,
                actor,
                action: "webhook.deleted",
                resource_kind: "webhook",
                resource_key: id,
                before: &audit_value(&webhook),
                after: &Value::Null,
                comment: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn enqueue_webhook_deliveries_impl(
        &self,
        project: &str,
        event_type: &str,
        data: &Value,
        only: Option<&str>,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let at = self.now();
        let mut tx = self.begin().await?;
        let project_id = project_id(&mut tx, project).await?;
        let deliveries = enqueue(&mut tx, &project_id, event_type, data, only, at).await?;
        tx.commit().await?;
        Ok(deliveries)
    }

    pub(super) async fn claim_webhook_deliveries_impl(
        &self,
        now: i64,
        lease_ms: i64,
        max: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        if lease_ms <= 0 {
            return Err(StoreError::Invalid(format!(
                "a delivery lease must be positive, not {lease_ms} ms"
            )));
        }
        let lease_until = now.saturating_add(lease_ms);
        let candidates = sqlx::query(
            "SELECT id, next_attempt_at FROM webhook_deliveries \
             WHERE status = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2",
        )
        .bind(now)
        .bind(limit(max))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(candidates.len());
        for candidate in &candidates {
            let id: String = candidate.try_get("id")?;
            let due: i64 = candidate.try_get("next_attempt_at")?;
            // The compare-and-set: of concurrent claimers, the first to move `next_attempt_at`
            // wins; on PostgreSQL the others wait for its row lock, re-check the condition on
            // the new row version and change nothing.
            let won = sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = $1, attempts = attempts + 1, \
                 updated_at = $2 WHERE id = $3 AND status = 'pending' AND next_attempt_at = $4",
            )
            .bind(lease_until)
            .bind(now)
            .bind(&id)
            .bind(due)
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1;
            if !won {
                continue;
            }
            let row = sqlx::query(concat!(select_deliveries!(), "WHERE d.id = $1"))
                .bind(&id)
                .fetch_one(&self.pool)
                .await?;
            let delivery = delivery_from(&row)?;
            let target = sqlx::query(
                "SELECT w.name, w.url, w.secret, w.format, w.enabled, p.key AS project \
                 FROM webhooks w JOIN projects p ON p.id = w.project_id WHERE w.id = $1",
            )
            .bind(&delivery.webhook_id)
            .fetch_one(&self.pool)
            .await?;
            let format: String = target.try_get("format")?;
            claimed.push(ClaimedDelivery {
                delivery,
                project: target.try_get("project")?,
                webhook_name: target.try_get("name")?,
                url: target.try_get("url")?,
                secret: target.try_get("secret")?,
                format: WebhookFormat::parse(&format).ok_or_else(|| {
                    StoreError::Corrupt(format!("unknown webhook format `{format}`"))
                })?,
                enabled: target.try_get::<i64, _>("enabled")? != 0,
                lease_until,
            });
        }
        Ok(claimed)
    }

    pub(super) async fn finish_webhook_delivery_impl(
        &self,
        outcome: &DeliveryOutcome<'_>,
    ) -> Result<bool, StoreError> {
        let next = match outcome.status {
            DeliveryStatus::Pending => Some(outcome.next_attempt_at.ok_or_else(|| {
                StoreError::Invalid("a delivery to retry needs its next attempt's time".into())
            })?),
            DeliveryStatus::Succeeded | DeliveryStatus::Failed => None,
        };
        let recorded = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, last_http_status = $2, last_error = $3, \
             next_attempt_at = $4, updated_at = $5 \
             WHERE id = $6 AND status = 'pending' AND next_attempt_at = $7",
        )
        .bind(outcome.status.as_str())
        .bind(outcome.http_status.map(i64::from))
        .bind(outcome.error)
        .bind(next)
        .bind(self.now())
        .bind(outcome.id)
        .bind(outcome.lease_until)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(recorded == 1)
    }

    pub(super) async fn webhook_deliveries_impl(
        &self,
        project: &str,
        webhook_id: &str,
        max: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let project_id = project_id(&mut conn, project).await?;
        load_webhook(&mut conn, &project_id, webhook_id).await?;
        let rows = sqlx::query(concat!(
            select_deliveries!(),
            "WHERE d.webhook_id = $1 ORDER BY d.created_at DESC, d.id DESC LIMIT $2"
        ))
        .bind(webhook_id)
        .bind(limit(max))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(delivery_from).collect()
    }

    pub(super) async fn prune_webhook_deliveries_impl(
        &self,
        older_than: i64,
        keep_per_webhook: u32,
    ) -> Result<u64, StoreError> {
        let old = sqlx::query("DELETE FROM webhook_deliveries WHERE created_at < $1")
            .bind(older_than)
            .execute(&self.pool)
            .await?
            .rows_affected();
        // Ids are UUIDv7, so they order deliveries of the same millisecond by creation too.
        let surplus = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM (SELECT id, \
             ROW_NUMBER() OVER (PARTITION BY webhook_id ORDER BY created_at DESC, id DESC) AS n \
             FROM webhook_deliveries) ranked WHERE ranked.n > $1)",
        )
        .bind(i64::from(keep_per_webhook))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(old + surplus)
    }
}
