-- Per-variant outcome telemetry reported by SDKs: what the progressive-rollout guardrails
-- judge. One row per environment, flag, minute and variant (`minute` is unix seconds at the
-- start of the minute; `flag` is the key the SDK reported, as in `evaluation_counts`).
-- `exposures` (distinct units the SDK served the variant in that minute), `requests` and
-- `errors` are added to by the upsert itself. `latency` (an `anchor_rollout::LatencySketch`
-- as JSON) and `metrics` (custom metric name -> `MetricSums` as JSON) cannot be merged in
-- portable SQL: the upsert that adds the counts also takes the row's lock, and the store then
-- merges both in Rust and writes them back in the same transaction, so concurrent batches
-- take turns on the row and none loses another's sketch.
-- Numbered 0009: 0008 belongs to another branch; migrations apply by version, so a gap is fine.
CREATE TABLE outcome_aggregates (
    environment_id TEXT NOT NULL REFERENCES environments (id),
    flag TEXT NOT NULL,
    minute BIGINT NOT NULL,
    variant TEXT NOT NULL,
    exposures BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    latency TEXT NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (environment_id, flag, minute, variant)
);
