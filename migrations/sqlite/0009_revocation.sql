-- Revocation: revoked certificates, listed in their issuer's CRL until they expire, and the
-- apps and cells that get no certificate any more. Revocations join the ledger and the change
-- feed; SQLite cannot change a CHECK in place, so both tables are rebuilt with the same
-- columns in the same order.
CREATE TABLE ledger_entries_v9 (
    seq                INTEGER PRIMARY KEY,
    kind               TEXT    NOT NULL CHECK (kind IN ('issued', 'denied', 'ca', 'policy', 'placement', 'revocation')),
    recorded_at_ms     INTEGER NOT NULL,
    serial             TEXT    UNIQUE,
    spiffe_id          TEXT,
    instance_guid      TEXT,
    app_guid           TEXT,
    space_guid         TEXT,
    org_guid           TEXT,
    cell_id            TEXT,
    container_ip       TEXT,
    not_before         INTEGER,
    not_after          INTEGER,
    public_key_sha256  TEXT,
    issuer_fingerprint TEXT,
    cert_der           BLOB,
    reason             TEXT,
    leaf_hash          BLOB    NOT NULL
);
INSERT INTO ledger_entries_v9 SELECT * FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_v9 RENAME TO ledger_entries;
CREATE INDEX ledger_entries_app ON ledger_entries (app_guid, seq);
CREATE INDEX ledger_entries_time ON ledger_entries (recorded_at_ms);
CREATE INDEX ledger_entries_cell ON ledger_entries (cell_id, seq);

CREATE TABLE changes_v9 (
    seq      BIGINT NOT NULL PRIMARY KEY,
    topic    TEXT   NOT NULL CHECK (topic IN ('placement', 'policy', 'ca', 'revocation')),
    subject  TEXT   NOT NULL,
    at_ms    BIGINT NOT NULL
);
INSERT INTO changes_v9 SELECT * FROM changes;
DROP TABLE changes;
ALTER TABLE changes_v9 RENAME TO changes;
CREATE INDEX changes_at ON changes (at_ms);

-- One row per revoked certificate, kept until it expires.
CREATE TABLE revoked_certs (
    serial              TEXT    PRIMARY KEY,
    issuer_fingerprint  TEXT    NOT NULL,
    not_after           INTEGER NOT NULL,
    revoked_at_ms       INTEGER NOT NULL,
    reason              TEXT    NOT NULL,
    requested_by        TEXT    NOT NULL
);
CREATE INDEX revoked_certs_not_after ON revoked_certs (not_after);

-- Apps and cells refused every certificate from now on.
CREATE TABLE revoked_subjects (
    kind           TEXT    NOT NULL CHECK (kind IN ('app', 'cell')),
    subject        TEXT    NOT NULL,
    revoked_at_ms  INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    requested_by   TEXT    NOT NULL,
    PRIMARY KEY (kind, subject)
);
