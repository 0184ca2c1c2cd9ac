-- JWT-SVIDs: the ES256 keys that sign them (sealed with the key-encryption key, like the CA's),
-- and a ledger kind for each token issued. SQLite cannot change a CHECK in place, so the
-- ledger table is rebuilt with the same columns in the same order.
CREATE TABLE ledger_entries_v10 (
    seq                INTEGER PRIMARY KEY,
    kind               TEXT    NOT NULL CHECK (kind IN ('issued', 'denied', 'ca', 'policy', 'placement', 'revocation', 'jwt_svid')),
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
INSERT INTO ledger_entries_v10 SELECT * FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_v10 RENAME TO ledger_entries;
CREATE INDEX ledger_entries_app ON ledger_entries (app_guid, seq);
CREATE INDEX ledger_entries_time ON ledger_entries (recorded_at_ms);
CREATE INDEX ledger_entries_cell ON ledger_entries (cell_id, seq);

-- One row per JWT signing key: prepared (published, not signing), active (signing), retired
-- (published until the last token it signed has expired), removed (no longer published; kept,
-- so that when the bundle last changed is known).
CREATE TABLE jwt_keys (
    kid              TEXT    PRIMARY KEY,
    state            TEXT    NOT NULL CHECK (state IN ('prepared', 'active', 'retired', 'removed')),
    public_point     BLOB    NOT NULL,
    sealed_key       BLOB    NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    activated_at_ms  INTEGER,
    retired_at_ms    INTEGER,
    removed_at_ms    INTEGER
);
