-- CA rotation: when each CA certificate became active, was retired, and (roots) left the
-- trust bundle.
ALTER TABLE ca_certs ADD COLUMN activated_at INTEGER;
ALTER TABLE ca_certs ADD COLUMN retired_at INTEGER;
ALTER TABLE ca_certs ADD COLUMN pruned_at INTEGER;
UPDATE ca_certs SET activated_at = created_at WHERE state = 'active';

-- CA events join the ledger; they concern no instance, so the placement columns become
-- optional. SQLite cannot change a CHECK or NOT NULL in place, so the table is rebuilt with
-- the same columns in the same order.
CREATE TABLE ledger_entries_v3 (
    seq                INTEGER PRIMARY KEY,
    kind               TEXT    NOT NULL CHECK (kind IN ('issued', 'denied', 'ca')),
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
INSERT INTO ledger_entries_v3 SELECT * FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_v3 RENAME TO ledger_entries;
CREATE INDEX ledger_entries_app ON ledger_entries (app_guid, seq);
CREATE INDEX ledger_entries_time ON ledger_entries (recorded_at_ms);
