-- Change requests of segments: `resource_kind` says what a request proposes. A flag request
-- keeps its flag in `flag_id` and its configuration in `proposed`; a segment request has no
-- `flag_id`, names its segment in `segment_key` (the segment may not exist yet, or be deleted
-- meanwhile, so it is not a reference) and keeps the proposed segment, key lists included, as
-- JSON in `proposed_segment` (`proposed` then holds an empty, disabled configuration).
ALTER TABLE change_requests ALTER COLUMN flag_id DROP NOT NULL;
ALTER TABLE change_requests ADD COLUMN resource_kind TEXT NOT NULL DEFAULT 'flag'
    CHECK (resource_kind IN ('flag', 'segment'));
ALTER TABLE change_requests ADD COLUMN proposed_segment TEXT;
ALTER TABLE change_requests ADD COLUMN segment_key TEXT;
