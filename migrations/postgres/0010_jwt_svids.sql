-- JWT-SVIDs: the ES256 keys that sign them (sealed with the key-encryption key, like the CA's),
-- and a ledger kind for each token issued.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('issued', 'denied', 'ca', 'policy', 'placement', 'revocation', 'jwt_svid'));

-- One row per JWT signing key: prepared (published, not signing), active (signing), retired
-- (published until the last token it signed has expired), removed (no longer published; kept,
-- so that when the bundle last changed is known).
CREATE TABLE jwt_keys (
    kid              TEXT    PRIMARY KEY,
    state            TEXT    NOT NULL CHECK (state IN ('prepared', 'active', 'retired', 'removed')),
    public_point     BYTEA   NOT NULL,
    sealed_key       BYTEA   NOT NULL,
    created_at_ms    BIGINT  NOT NULL,
    activated_at_ms  BIGINT,
    retired_at_ms    BIGINT,
    removed_at_ms    BIGINT
);
