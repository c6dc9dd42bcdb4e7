-- The latest minute in which an SDK reported evaluating each flag in each environment, kept
-- on telemetry ingestion (only ever moved forward) so that the flag list can say when each
-- flag was last evaluated without reading every minute of `evaluation_counts`. `minute` is
-- unix seconds at the start of the minute; `flag` is the reported key, as there.
CREATE TABLE flag_last_evaluated (
    environment_id TEXT NOT NULL REFERENCES environments (id),
    flag TEXT NOT NULL,
    minute BIGINT NOT NULL,
    PRIMARY KEY (environment_id, flag)
);

INSERT INTO flag_last_evaluated (environment_id, flag, minute)
SELECT environment_id, flag, MAX(minute) FROM evaluation_counts GROUP BY environment_id, flag;
