-- Canary coverage: SDKs break each (flag, variant, minute)'s first exposures down by the values
-- of the release's coverage attributes (at most 20 values per attribute and stage, then
-- "other"; "(none)" for a context without the attribute). One row per environment, flag,
-- minute, variant, attribute and value; `count` is added to by the upsert, in the same
-- transaction and under the same batch id as the outcome row it belongs to, so a retried
-- batch counts once. The controller sums a stage's minutes per variant, attribute and value.
CREATE TABLE coverage_counts (
    environment_id TEXT NOT NULL REFERENCES environments (id),
    flag TEXT NOT NULL,
    minute BIGINT NOT NULL,
    variant TEXT NOT NULL,
    attribute TEXT NOT NULL,
    value TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (environment_id, flag, minute, variant, attribute, value)
);
