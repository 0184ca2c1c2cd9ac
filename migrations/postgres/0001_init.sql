-- CA certificates and their sealed private keys (AES-256-GCM under the KEK).
CREATE TABLE ca_certs (
    id           BIGSERIAL PRIMARY KEY,
    role         TEXT   NOT NULL CHECK (role IN ('root', 'intermediate')),
    state        TEXT   NOT NULL CHECK (state IN ('prepared', 'active', 'retired')),
    fingerprint  TEXT   NOT NULL UNIQUE,
    cert_der     BYTEA  NOT NULL,
    sealed_key   BYTEA,
    not_before   BIGINT NOT NULL,
    not_after    BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- The issuance ledger: append-only, dense sequence from 0 (the Merkle leaf index).
CREATE TABLE ledger_entries (
    seq                BIGINT PRIMARY KEY,
    kind               TEXT   NOT NULL CHECK (kind IN ('issued', 'denied')),
    recorded_at_ms     BIGINT NOT NULL,
    serial             TEXT   UNIQUE,
    spiffe_id          TEXT,
    instance_guid      TEXT   NOT NULL,
    app_guid           TEXT   NOT NULL,
    space_guid         TEXT,
    org_guid           TEXT,
    cell_id            TEXT   NOT NULL,
    container_ip       TEXT,
    not_before         BIGINT,
    not_after          BIGINT,
    public_key_sha256  TEXT,
    issuer_fingerprint TEXT,
    cert_der           BYTEA,
    reason             TEXT,
    leaf_hash          BYTEA  NOT NULL
);
CREATE INDEX ledger_entries_app ON ledger_entries (app_guid, seq);
CREATE INDEX ledger_entries_time ON ledger_entries (recorded_at_ms);
