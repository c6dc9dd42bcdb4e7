-- Segments and SDK keys, both per environment. Only TEXT and BIGINT, as in 0001: booleans are
-- 0/1, times unix milliseconds.
--
-- A segment's rules and description are one row (`body`: the engine's segment as JSON without
-- its key lists); its included and excluded targeting keys are rows of `segment_keys`, so that
-- 100,000 keys neither bloat every read of the rules nor get rewritten whole on every change.
-- The counts are kept beside the body so that listings never scan the keys.
CREATE TABLE segments (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments (id),
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    included_count BIGINT NOT NULL,
    excluded_count BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (environment_id, key)
);

CREATE TABLE segment_keys (
    segment_id TEXT NOT NULL REFERENCES segments (id),
    kind TEXT NOT NULL CHECK (kind IN ('included', 'excluded')),
    key TEXT NOT NULL,
    PRIMARY KEY (segment_id, kind, key)
);

-- SDK keys: only the SHA-256 hash of the secret and a short prefix for display are stored.
CREATE TABLE sdk_keys (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments (id),
    kind TEXT NOT NULL CHECK (kind IN ('server', 'client')),
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

CREATE INDEX sdk_keys_by_environment ON sdk_keys (environment_id, kind, created_at);
