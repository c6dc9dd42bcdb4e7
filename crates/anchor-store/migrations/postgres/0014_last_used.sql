-- When each SDK key and personal access token was last used to authenticate, in unix
-- milliseconds; NULL for one never used since this column exists. Servers note uses in memory
-- and write them here in bulk about once a minute, so it is precise to within that interval;
-- the value only ever moves forward, whichever server writes it.
ALTER TABLE sdk_keys ADD COLUMN last_used_at BIGINT;
ALTER TABLE tokens ADD COLUMN last_used_at BIGINT;
