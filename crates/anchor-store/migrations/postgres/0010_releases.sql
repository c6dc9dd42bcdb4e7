-- Progressive releases. A template is a project's recipe (stages, guardrails, policies) as
-- JSON; a release applies one to one flag in one environment, moving one rule's (or the
-- default serve's) two-variant rollout from `control` to `treatment`. The server interprets
-- the JSON (anchor-rollout's types); the store keeps it as given. Only TEXT and BIGINT, as in
-- 0001: times are unix milliseconds, JSON is text.
CREATE TABLE release_templates (
    project_id TEXT NOT NULL REFERENCES projects (id),
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    template TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
);

-- `state` is the state machine's JSON; `version` counts its writes, so a writer that read an
-- older state (another server, or a person racing the controller) changes nothing. `active`
-- is 1 until the release is finished: one active release per flag and environment. The lease
-- lets one server at a time drive a release (`lease_owner` until `lease_until`). `report` is
-- the guardrails' latest report (every check's estimate, bounds and counts) as of
-- `reported_at`, kept on every tick so people see the evidence between decisions.
CREATE TABLE releases (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL REFERENCES projects (id),
    environment_id TEXT NOT NULL REFERENCES environments (id),
    flag_key TEXT NOT NULL,
    rule_id TEXT,
    control_variant TEXT NOT NULL,
    treatment_variant TEXT NOT NULL,
    template_key TEXT NOT NULL,
    template TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    active BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0,
    report TEXT,
    reported_at BIGINT,
    created_by_kind TEXT NOT NULL,
    created_by_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX releases_one_active ON releases (environment_id, flag_key) WHERE active = 1;
CREATE INDEX releases_by_project ON releases (project_id, created_at);

-- The decision log: every step that changed something and every person's action, in words,
-- with the guardrails' report behind it.
CREATE TABLE release_decisions (
    seq BIGSERIAL PRIMARY KEY,
    release_id TEXT NOT NULL REFERENCES releases (id),
    actor_kind TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    message TEXT NOT NULL,
    report TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX release_decisions_by_release ON release_decisions (release_id, seq);
