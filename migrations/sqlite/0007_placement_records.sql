-- Placement changes join the ledger, each naming who made it. SQLite cannot change a CHECK in
-- place, so the table is rebuilt with the same columns in the same order.
CREATE TABLE ledger_entries_v7 (
    seq                INTEGER PRIMARY KEY,
    kind               TEXT    NOT NULL CHECK (kind IN ('issued', 'denied', 'ca', 'policy', 'placement')),
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
INSERT INTO ledger_entries_v7 SELECT * FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_v7 RENAME TO ledger_entries;
CREATE INDEX ledger_entries_app ON ledger_entries (app_guid, seq);
CREATE INDEX ledger_entries_time ON ledger_entries (recorded_at_ms);
