-- Compaction of old telemetry (`Store::compact_telemetry`). `span` is how many seconds a row
-- covers: 60 for a minute as SDKs report it, 3600 for an hour whose minutes were merged into
-- one row at the hour's start (`minute` then holds the hour's start). Compaction takes only
-- rows of span 60, so an hour is merged once, and a merged hour keeps its key, so reads over
-- a range of minutes need no change. The indexes on `minute` let compaction and expiry find
-- old rows in age order without scanning every flag, and the one on `received_at` lets old
-- batch ids be forgotten across environments.
-- Numbered 0012: 0011 belongs to another branch; migrations apply by version, so a gap is fine.
ALTER TABLE evaluation_counts ADD COLUMN span BIGINT NOT NULL DEFAULT 60;
ALTER TABLE outcome_aggregates ADD COLUMN span BIGINT NOT NULL DEFAULT 60;
CREATE INDEX evaluation_counts_by_age ON evaluation_counts (minute);
CREATE INDEX outcome_aggregates_by_age ON outcome_aggregates (minute);
CREATE INDEX telemetry_batches_by_receipt ON telemetry_batches (received_at);
