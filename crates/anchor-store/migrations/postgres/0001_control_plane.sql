-- Projects, environments, flags with per-environment configurations, their revisions, and the
-- audit log. Timestamps are unix milliseconds, JSON is text and booleans are BIGINT 0/1, so
-- that both backends decode alike through sqlx's `Any` driver.
CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE environments (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    position BIGINT NOT NULL,
    requires_approval BIGINT NOT NULL DEFAULT 0,
    requires_comment BIGINT NOT NULL DEFAULT 0,
    revision BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, key)
);

CREATE TABLE flags (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    key TEXT NOT NULL,
    definition TEXT NOT NULL,
    archived BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, key)
);

CREATE TABLE flag_configs (
    flag_id TEXT NOT NULL REFERENCES flags (id),
    environment_id TEXT NOT NULL REFERENCES environments (id),
    config TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (flag_id, environment_id)
);

CREATE TABLE revisions (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments (id),
    resource_kind TEXT NOT NULL,
    resource_key TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    comment TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (environment_id, resource_kind, resource_key, version)
);

CREATE TABLE audit_log (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL REFERENCES projects (id),
    environment_id TEXT REFERENCES environments (id),
    actor_kind TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_kind TEXT NOT NULL,
    resource_key TEXT NOT NULL,
    diff TEXT NOT NULL,
    comment TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX audit_log_by_project_time ON audit_log (project_id, created_at);
