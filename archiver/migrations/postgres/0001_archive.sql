-- The archive: every message of archived rooms once, keyed by (room, epoch, seq); room
-- metadata; per-user read and delivery markers.
CREATE TABLE IF NOT EXISTS messages (
    room    TEXT   NOT NULL,
    epoch   TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    sender  TEXT   NOT NULL,
    body    JSONB  NOT NULL,
    -- unix milliseconds: the frame's `ts`
    at      BIGINT NOT NULL,
    PRIMARY KEY (room, epoch, seq)
);
-- History pages read a room's messages by time and seq.
CREATE INDEX IF NOT EXISTS messages_room_at ON messages (room, at, seq);

CREATE TABLE IF NOT EXISTS rooms (
    room    TEXT   PRIMARY KEY,
    title   TEXT,
    topic   TEXT,
    meta    JSONB  NOT NULL DEFAULT '{}'::jsonb,
    -- unix milliseconds of the first archived message
    created BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS markers (
    room          TEXT   NOT NULL,
    "user"        TEXT   NOT NULL,
    read_seq      BIGINT NOT NULL DEFAULT 0,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    at            BIGINT NOT NULL,
    PRIMARY KEY (room, "user")
);
