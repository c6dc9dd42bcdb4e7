-- Change requests: a proposed configuration of one flag in one environment, waiting for an
-- approval (environments that require one) or for its time (`apply_at`, applied by the
-- server's scheduler). Only TEXT and BIGINT, as in 0001: times are unix milliseconds, JSON is
-- text.
--
-- `edition` counts the edits of a request. A review belongs to the edition it saw, so an edit
-- voids earlier approvals without deleting them: only the reviews of the current edition count.
-- `seq` orders requests and reviews made within one millisecond.
CREATE TABLE change_requests (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL REFERENCES projects (id),
    environment_id TEXT NOT NULL REFERENCES environments (id),
    flag_id TEXT NOT NULL REFERENCES flags (id),
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
    updated_at BIGINT NOT NULL
);

CREATE INDEX change_requests_by_project ON change_requests (project_id, created_at);

-- The scheduler's question: approved requests whose time has come, oldest first.
CREATE INDEX change_requests_due ON change_requests (apply_at)
    WHERE status = 'approved' AND apply_at IS NOT NULL;

CREATE TABLE change_request_reviews (
    seq BIGSERIAL PRIMARY KEY,
    change_request_id TEXT NOT NULL REFERENCES change_requests (id),
    edition BIGINT NOT NULL,
    reviewer_kind TEXT NOT NULL,
    reviewer_id TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX change_request_reviews_by_request
    ON change_request_reviews (change_request_id, edition);
