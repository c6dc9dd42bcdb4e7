-- Change requests of segments: `resource_kind` says what a request proposes. A flag request
-- keeps its flag in `flag_id` and its configuration in `proposed`; a segment request has no
-- `flag_id`, names its segment in `segment_key` (the segment may not exist yet, or be deleted
-- meanwhile, so it is not a reference) and keeps the proposed segment, key lists included, as
-- JSON in `proposed_segment` (`proposed` then holds an empty, disabled configuration).
--
-- SQLite cannot drop a NOT NULL constraint, so `change_requests` is rebuilt. sqlx runs this
-- file in a transaction with foreign keys ON, where `PRAGMA foreign_keys` has no effect and
-- dropping the referenced table would orphan the reviews (a deferred violation still fails
-- the commit). So the reviews table is rebuilt too: both copies are made first, the reviews'
-- copy referencing the requests' copy, then the old tables are dropped (child first) and the
-- copies renamed; the rename rewrites the reference to `change_requests`. No step ever
-- violates a foreign key.
CREATE TABLE change_requests_new (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL REFERENCES projects (id),
    environment_id TEXT NOT NULL REFERENCES environments (id),
    flag_id TEXT REFERENCES flags (id),
    base_version BIGINT NOT NULL,
    proposed TEXT NOT NULL,
    comment TEXT,
    author_kind TEXT NOT NULL,
    author_id TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('open', 'approved', 'rejected', 'applied', 'cancelled', 'failed')),
    edition BIGINT NOT NULL DEFAULT 0,
    apply_at BIGINT,
    applied_version BIGINT,
    failure TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    resource_kind TEXT NOT NULL DEFAULT 'flag' CHECK (resource_kind IN ('flag', 'segment')),
    proposed_segment TEXT,
    segment_key TEXT
);

CREATE TABLE change_request_reviews_new (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    change_request_id TEXT NOT NULL REFERENCES change_requests_new (id),
    edition BIGINT NOT NULL,
    reviewer_kind TEXT NOT NULL,
    reviewer_id TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment TEXT,
    created_at BIGINT NOT NULL
);

INSERT INTO change_requests_new (seq, id, project_id, environment_id, flag_id, base_version,
    proposed, comment, author_kind, author_id, status, edition, apply_at, applied_version,
    failure, created_at, updated_at, resource_kind, proposed_segment, segment_key)
SELECT seq, id, project_id, environment_id, flag_id, base_version, proposed, comment,
    author_kind, author_id, status, edition, apply_at, applied_version, failure, created_at,
    updated_at, 'flag', NULL, NULL
FROM change_requests;

INSERT INTO change_request_reviews_new (seq, change_request_id, edition, reviewer_kind,
    reviewer_id, decision, comment, created_at)
SELECT seq, change_request_id, edition, reviewer_kind, reviewer_id, decision, comment,
    created_at
FROM change_request_reviews;

DROP TABLE change_request_reviews;
DROP TABLE change_requests;

ALTER TABLE change_requests_new RENAME TO change_requests;
ALTER TABLE change_request_reviews_new RENAME TO change_request_reviews;

-- The indexes of 0004, dropped with their tables.
CREATE INDEX change_requests_by_project ON change_requests (project_id, created_at);

-- The scheduler's question: approved requests whose time has come, oldest first.
CREATE INDEX change_requests_due ON change_requests (apply_at)
    WHERE status = 'approved' AND apply_at IS NOT NULL;

CREATE INDEX change_request_reviews_by_request
    ON change_request_reviews (change_request_id, edition);
