-- Container-to-container policies: those kept by idmint itself (`idmint policy add`, origin
-- 'store') and the last good set read from CF's policy server (origin 'policy-server'), kept so a
-- restart starts from it and records only what changed since. `policy.source` says which is in
-- force. Protocol and ports are kept as given, though mTLS cannot see them.
CREATE TABLE policies (
    origin           TEXT    NOT NULL CHECK (origin IN ('store', 'policy-server')),
    source_app       TEXT    NOT NULL,
    destination_app  TEXT    NOT NULL,
    protocol         TEXT    NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    port_start       INTEGER NOT NULL CHECK (port_start BETWEEN 1 AND 65535),
    port_end         INTEGER NOT NULL CHECK (port_end BETWEEN port_start AND 65535),
    added_at_ms      INTEGER NOT NULL,
    PRIMARY KEY (origin, destination_app, source_app, protocol, port_start, port_end)
);

-- Enforcement modes set by operators: for the whole foundation (scope_id ''), a space or an app.
CREATE TABLE enforcement_modes (
    scope       TEXT    NOT NULL CHECK (scope IN ('foundation', 'space', 'app')),
    scope_id    TEXT    NOT NULL,
    mode        TEXT    NOT NULL CHECK (mode IN ('trust-domain', 'policy')),
    set_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (scope, scope_id)
);

-- Policy changes and mode switches join the ledger. SQLite cannot change a CHECK in place, so
-- the table is rebuilt with the same columns in the same order.
CREATE TABLE ledger_entries_v4 (
    seq                INTEGER PRIMARY KEY,
    kind               TEXT    NOT NULL CHECK (kind IN ('issued', 'denied', 'ca', 'policy')),
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
INSERT INTO ledger_entries_v4 SELECT * FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_v4 RENAME TO ledger_entries;
CREATE INDEX ledger_entries_app ON ledger_entries (app_guid, seq);
CREATE INDEX ledger_entries_time ON ledger_entries (recorded_at_ms);
