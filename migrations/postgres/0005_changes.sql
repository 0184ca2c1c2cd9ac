-- The change feed servers sharing one database follow: one row per change to the placements,
-- the policies and modes, or the CA, numbered densely in commit order (each is written under a
-- lock with the next number), so a server that reads every row after the last one it applied
-- has missed nothing. Old rows are pruned; a server further behind than the oldest row reloads.
CREATE TABLE changes (
    seq      BIGINT NOT NULL PRIMARY KEY,
    topic    TEXT   NOT NULL CHECK (topic IN ('placement', 'policy', 'ca')),
    subject  TEXT   NOT NULL,
    at_ms    BIGINT NOT NULL
);
CREATE INDEX changes_at ON changes (at_ms);
