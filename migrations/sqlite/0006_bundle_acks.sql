-- What each cell's agent last reported of the trust bundles its sidecars hold: a bundle by its
-- roots' SHA-256 fingerprints (sorted, space-separated; '' for sidecars that acknowledged
-- none yet) and how many sidecars hold it. Each report replaces the cell's rows; the servers
-- count reports younger than `server.agent_ack_grace` before a new root signs.
CREATE TABLE bundle_acks (
    cell            TEXT   NOT NULL,
    roots           TEXT   NOT NULL,
    sidecars        BIGINT NOT NULL CHECK (sidecars > 0),
    reported_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (cell, roots)
);
