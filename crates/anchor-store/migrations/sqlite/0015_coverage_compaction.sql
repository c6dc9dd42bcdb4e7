-- Compaction of coverage counts, as 0012 did for the other telemetry: `span` is how many
-- seconds a row covers (60 for a minute as SDKs report it, 3600 for an hour whose minutes were
-- merged into one row at the hour's start), so an hour is merged once and keeps its key, and
-- reads over a range of minutes need no change. The index on `minute` lets compaction and
-- expiry find old rows in age order without scanning every flag.
-- Numbered 0015: 0014 belongs to another branch; migrations apply by version, so a gap is fine.
ALTER TABLE coverage_counts ADD COLUMN span BIGINT NOT NULL DEFAULT 60;
CREATE INDEX coverage_counts_by_age ON coverage_counts (minute);
