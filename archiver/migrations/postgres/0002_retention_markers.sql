-- Retention: a message of a room with `archive_days` carries when it may go (unix ms);
-- NULL keeps it for good. When each row was written (unix ms, the archiver's clock) tells
-- a page whether a missing seq is still on its way.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS keep_until BIGINT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS archived_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS messages_keep_until ON messages (keep_until)
    WHERE keep_until IS NOT NULL;
-- Markers are of one epoch of the room (seqs start over in a new one).
ALTER TABLE markers ADD COLUMN IF NOT EXISTS epoch TEXT NOT NULL DEFAULT '';
