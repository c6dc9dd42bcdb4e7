-- Project webhooks and their delivery log. Only TEXT and BIGINT, as in 0001: booleans are 0/1,
-- times unix milliseconds, JSON as text.
--
-- A webhook's `secret` is stored as given, not hashed: the server must read it back to sign
-- every delivery (HMAC-SHA256). The store never returns it in a webhook record; only the
-- dispatcher's claim reads it. `events` is a JSON array of event types, `["*"]` for all.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    format TEXT NOT NULL CHECK (format IN ('json', 'slack')),
    enabled BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX webhooks_by_project ON webhooks (project_id, created_at);

-- One event for one webhook, and where its delivery stands. `payload` is the event's data;
-- the body sent is built from it, the delivery's id and `created_at`, so every attempt sends
-- the same body. A pending delivery is due at `next_attempt_at`; a dispatcher claims it by
-- moving `next_attempt_at` forward by a lease (compare-and-set on the old value), so two
-- servers sharing the database never send one delivery at the same time. Finished deliveries
-- have no `next_attempt_at`.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL REFERENCES webhooks (id),
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    last_http_status BIGINT,
    last_error TEXT,
    next_attempt_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, created_at);
