//! Compaction of old telemetry (evaluation counts, outcome aggregates and coverage counts):
//! minutes merged into hours, old rows and batch ids deleted.
//!
//! Every step is one short transaction over at most `rows_per_transaction` rows, oldest first.
//! A merge deletes its minute rows with `DELETE … RETURNING` and adds exactly what that
//! statement returned to the hour rows, in the same transaction: a row is merged by whichever
//! transaction deleted it, and by no other. On PostgreSQL the rows to take are chosen with
//! `FOR UPDATE SKIP LOCKED`, so two servers compacting at once take disjoint batches instead of
//! queueing on each other's rows (a row another server deleted in the meantime is skipped,
//! and the outer `span = 60` is checked again on the row as it then is). On SQLite
//! `BEGIN IMMEDIATE` makes them take turns.
//!
//! Minutes are taken in order of age, so an hour's first minute (the key its hour row takes)
//! is merged no later than the rest of its hour; and the hour row's upsert sets `span` to an
//! hour, so even a minute row at that key would be absorbed rather than added twice.

use std::collections::BTreeMap;

use anchor_rollout::ArmObservations;
use sqlx::{AssertSqlSafe, Row};

use super::{Backend, COUNTS_PER_STATEMENT, SqlStore, add_outcome, from_json, merge_arm};
use crate::types::*;

/// A (environment id, flag, hour start, variant) key of a merged hour.
type HourKey = (String, String, i64, String);

/// A (environment id, flag, hour start, variant, attribute, value) key of a merged hour of
/// coverage counts.
type CoverageHourKey = (String, String, i64, String, String, String);

/// The primary key of `evaluation_counts` and `outcome_aggregates`, age first (the order rows
/// are taken in).
const KEY: &str = "minute, environment_id, flag, variant";

/// The primary key of `coverage_counts`, age first.
const COVERAGE_KEY: &str = "minute, environment_id, flag, variant, attribute, value";

impl SqlStore {
    pub(super) async fn compact_telemetry_impl(
        &self,
        retention: &TelemetryRetention,
    ) -> Result<CompactionReport, StoreError> {
        let now_ms = self.now();
        let now = now_ms.div_euclid(1_000);
        let hour_floor = |t: i64| t.div_euclid(HOUR_SPAN_SECS) * HOUR_SPAN_SECS;
        // Whole hours only: an hour is merged once every minute of it is past the retention.
        let merge_before = hour_floor(now.saturating_sub(retention.minute_secs));
        let expire_before = hour_floor(now.saturating_sub(retention.keep_secs));
        let limit = i64::from(retention.rows_per_transaction.max(1));
        let mut report = CompactionReport::default();
        // Expiry first, so nothing is merged only to be deleted.
        for (table, key) in [
            ("evaluation_counts", KEY),
            ("outcome_aggregates", KEY),
            ("coverage_counts", COVERAGE_KEY),
        ] {
            loop {
                let n = self.expire_rows(table, key, expire_before, limit).await?;
                report.rows_expired += n;
                if n < limit as u64 {
                    break;
                }
            }
        }
        loop {
            let n = self.merge_evaluation_minutes(merge_before, limit).await?;
            report.minutes_merged += n;
            if n < limit as u64 {
                break;
            }
        }
        loop {
            let n = self.merge_outcome_minutes(merge_before, limit).await?;
            report.minutes_merged += n;
            if n < limit as u64 {
                break;
            }
        }
        loop {
            let n = self.merge_coverage_minutes(merge_before, limit).await?;
            report.minutes_merged += n;
            if n < limit as u64 {
                break;
            }
        }
        loop {
            let n = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM telemetry_batches WHERE (environment_id, batch_id) IN \
                 (SELECT environment_id, batch_id FROM telemetry_batches WHERE received_at < $1 \
                 ORDER BY received_at LIMIT $2{})",
                self.skip_locked()
            )))
            .bind(now_ms.saturating_sub(retention.batch_ids_ms))
            .bind(limit)
            .execute(&self.pool)
            .await?
            .rows_affected();
            report.batch_ids_forgotten += n;
            if n < limit as u64 {
                break;
            }
        }
        Ok(report)
    }

    /// On PostgreSQL, holds the compaction lock until `tx` ends. Two servers merging at once
    /// could deadlock: an hour's row shares its key with the minute row at the hour's start, so
    /// one merger's upsert of an hour can wait on a minute row the other has taken while the
    /// other waits on it. Merges are short, so taking turns costs little.
    async fn one_merger_at_a_time(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            // Any fixed number; only compaction uses it.
            sqlx::query("SELECT pg_advisory_xact_lock(7106533)")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite has no row locks: its writers take turns).
    fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Deletes up to `limit` of `table`'s rows (whose primary key is `key`) whose minute (or
    /// hour) began before `before`.
    async fn expire_rows(
        &self,
        table: &str,
        key: &str,
        before: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE ({key}) IN \
             (SELECT {key} FROM {table} WHERE minute < $1 \
             ORDER BY minute LIMIT $2{})",
            self.skip_locked()
        )))
        .bind(before)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// The statement that deletes up to `$2` of `table`'s minute rows (whose primary key is
    /// `key`, age first) older than `$1`, oldest first, returning `columns` of each.
    fn take_minutes_sql(&self, table: &str, key: &str, columns: &str) -> String {
        format!(
            "DELETE FROM {table} WHERE span = {MINUTE_SPAN_SECS} AND ({key}) IN \
             (SELECT {key} FROM {table} \
             WHERE span = {MINUTE_SPAN_SECS} AND minute < $1 \
             ORDER BY {key} LIMIT $2{}) \
             RETURNING {columns}",
            self.skip_locked()
        )
    }

    /// Merges up to `limit` evaluation-count minutes older than `before` into their hours, in
    /// one transaction. Returns how many minute rows it merged.
    async fn merge_evaluation_minutes(&self, before: i64, limit: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        self.one_merger_at_a_time(&mut tx).await?;
        let taken = sqlx::query(AssertSqlSafe(self.take_minutes_sql(
            "evaluation_counts",
            KEY,
            "environment_id, flag, minute, variant, count",
        )))
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut hours: BTreeMap<HourKey, i64> = BTreeMap::new();
        for r in &taken {
            let minute: i64 = r.try_get("minute")?;
            let key = (
                r.try_get("environment_id")?,
                r.try_get("flag")?,
                minute.div_euclid(HOUR_SPAN_SECS) * HOUR_SPAN_SECS,
                r.try_get("variant")?,
            );
            let sum = hours.entry(key).or_insert(0);
            *sum = sum.saturating_add(r.try_get::<i64, _>("count")?);
        }
        // In key order, as ingestion locks its rows, so concurrent writers cannot deadlock.
        let hours: Vec<_> = hours.into_iter().collect();
        for chunk in hours.chunks(COUNTS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO evaluation_counts (environment_id, flag, minute, variant, count, span) \
                 VALUES ",
            );
            for i in 0..chunk.len() {
                let n = 1 + 5 * i;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, {HOUR_SPAN_SECS})",
                    n,
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4
                ));
            }
            sql.push_str(
                " ON CONFLICT (environment_id, flag, minute, variant) \
                 DO UPDATE SET count = evaluation_counts.count + excluded.count, \
                 span = excluded.span",
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for ((env, flag, hour, variant), count) in chunk {
                query = query
                    .bind(env.as_str())
                    .bind(flag.as_str())
                    .bind(*hour)
                    .bind(variant.as_str())
                    .bind(*count);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(taken.len() as u64)
    }

    /// Merges up to `limit` outcome minutes older than `before` into their hours (counts added,
    /// sketches and metric sums merged), in one transaction. Returns how many minute rows it
    /// merged.
    async fn merge_outcome_minutes(&self, before: i64, limit: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        self.one_merger_at_a_time(&mut tx).await?;
        let taken = sqlx::query(AssertSqlSafe(self.take_minutes_sql(
            "outcome_aggregates",
            KEY,
            "environment_id, flag, minute, variant, exposures, requests, errors, latency, metrics",
        )))
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let count = |r: &sqlx::any::AnyRow, column: &str| -> Result<u64, StoreError> {
            Ok(r.try_get::<i64, _>(column)?.max(0) as u64)
        };
        let mut hours: BTreeMap<HourKey, ArmObservations> = BTreeMap::new();
        for r in &taken {
            let minute: i64 = r.try_get("minute")?;
            let key = (
                r.try_get("environment_id")?,
                r.try_get("flag")?,
                minute.div_euclid(HOUR_SPAN_SECS) * HOUR_SPAN_SECS,
                r.try_get("variant")?,
            );
            let arm = ArmObservations {
                exposures: count(r, "exposures")?,
                requests: count(r, "requests")?,
                errors: count(r, "errors")?,
                latency: from_json(&r.try_get::<String, _>("latency")?)?,
                metrics: from_json(&r.try_get::<String, _>("metrics")?)?,
            };
            merge_arm(hours.entry(key).or_default(), &arm);
        }
        for ((env, flag, hour, variant), arm) in &hours {
            add_outcome(&mut tx, env, (flag, *hour, variant), HOUR_SPAN_SECS, arm).await?;
        }
        tx.commit().await?;
        Ok(taken.len() as u64)
    }

    /// Merges up to `limit` coverage-count minutes older than `before` into their hours (per
    /// variant, attribute and value, counts added), in one transaction. Returns how many
    /// minute rows it merged.
    async fn merge_coverage_minutes(&self, before: i64, limit: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        self.one_merger_at_a_time(&mut tx).await?;
        let taken = sqlx::query(AssertSqlSafe(self.take_minutes_sql(
            "coverage_counts",
            COVERAGE_KEY,
            "environment_id, flag, minute, variant, attribute, value, count",
        )))
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut hours: BTreeMap<CoverageHourKey, i64> = BTreeMap::new();
        for r in &taken {
            let minute: i64 = r.try_get("minute")?;
            let key = (
                r.try_get("environment_id")?,
                r.try_get("flag")?,
                minute.div_euclid(HOUR_SPAN_SECS) * HOUR_SPAN_SECS,
                r.try_get("variant")?,
                r.try_get("attribute")?,
                r.try_get("value")?,
            );
            let sum = hours.entry(key).or_insert(0);
            *sum = sum.saturating_add(r.try_get::<i64, _>("count")?);
        }
        // In key order, as ingestion locks its rows, so concurrent writers cannot deadlock.
        let hours: Vec<_> = hours.into_iter().collect();
        for chunk in hours.chunks(COUNTS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO coverage_counts \
                 (environment_id, flag, minute, variant, attribute, value, count, span) VALUES ",
            );
            for i in 0..chunk.len() {
                let n = 1 + 7 * i;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, {HOUR_SPAN_SECS})",
                    n,
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6
                ));
            }
            sql.push_str(
                " ON CONFLICT (environment_id, flag, minute, variant, attribute, value) \
                 DO UPDATE SET count = coverage_counts.count + excluded.count, \
                 span = excluded.span",
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for ((env, flag, hour, variant, attribute, value), count) in chunk {
                query = query
                    .bind(env.as_str())
                    .bind(flag.as_str())
                    .bind(*hour)
                    .bind(variant.as_str())
                    .bind(attribute.as_str())
                    .bind(value.as_str())
                    .bind(*count);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(taken.len() as u64)
    }
}
