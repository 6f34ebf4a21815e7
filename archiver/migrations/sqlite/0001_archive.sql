-- The archive: every message of archived rooms once, keyed by (room, epoch, seq); room
-- metadata; per-user read and delivery markers. Bodies and meta are JSON text.
CREATE TABLE IF NOT EXISTS messages (
    room    TEXT    NOT NULL,
    epoch   TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    sender  TEXT    NOT NULL,
    body    TEXT    NOT NULL,
    -- unix milliseconds: the frame's `ts`
    at      INTEGER NOT NULL,
    PRIMARY KEY (room, epoch, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_room_at ON messages (room, at, seq);

CREATE TABLE IF NOT EXISTS rooms (
    room    TEXT    PRIMARY KEY,
    title   TEXT,
    topic   TEXT,
    meta    TEXT    NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS markers (
    room          TEXT    NOT NULL,
    "user"        TEXT    NOT NULL,
    read_seq      INTEGER NOT NULL DEFAULT 0,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    at            INTEGER NOT NULL,
    PRIMARY KEY (room, "user")
);
