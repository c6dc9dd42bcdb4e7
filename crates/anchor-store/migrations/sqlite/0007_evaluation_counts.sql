-- Evaluation counts reported by SDKs (telemetry), summed per environment, minute, flag and
-- variant. `minute` is unix seconds at the start of the minute. `flag` is the key the SDK
-- reported, not a reference: SDKs also count flags that do not exist (or no longer do).
-- `variant` is '' when the SDK served the caller's default (the batch's `null`): a variant
-- name is never empty, and a key column cannot hold NULL. Batches add to `count` with
-- `INSERT ... ON CONFLICT ... DO UPDATE SET count = count + excluded.count`.
-- The key's order serves the one question asked: one flag in one environment over a range of
-- minutes.
CREATE TABLE evaluation_counts (
    environment_id TEXT NOT NULL REFERENCES environments (id),
    flag TEXT NOT NULL,
    minute BIGINT NOT NULL,
    variant TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (environment_id, flag, minute, variant)
);

-- The ids of the telemetry batches an environment has counted, written in the same
-- transaction as their counts, so that a retried batch counts once. Forgotten after a while
-- (`received_at`, unix milliseconds).
CREATE TABLE telemetry_batches (
    environment_id TEXT NOT NULL REFERENCES environments (id),
    batch_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (environment_id, batch_id)
);

CREATE INDEX telemetry_batches_by_age ON telemetry_batches (environment_id, received_at);
