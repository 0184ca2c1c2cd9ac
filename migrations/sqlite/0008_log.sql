-- The verifiable log over the ledger: an RFC 9162 Merkle tree whose leaves are the entries'
-- leaf hashes in seq order, kept as C2SP tiles, with signed checkpoints.

-- Full tiles only: the 256 hashes of tree level 8·level at indices 256·idx onwards, written
-- once when the ledger completes them. Partial tiles are made from the entries when asked for.
CREATE TABLE log_tiles (
    level   INTEGER NOT NULL CHECK (level >= 0),
    idx     INTEGER  NOT NULL CHECK (idx >= 0),
    hashes  BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
);

-- Every checkpoint signed: the tree size, its root, and the signed note as published.
CREATE TABLE log_checkpoints (
    size          INTEGER PRIMARY KEY,
    root          BLOB  NOT NULL,
    note          TEXT   NOT NULL,
    signed_at_ms  INTEGER NOT NULL
);

-- The checkpoint signing keys: the public verifier key, and the Ed25519 seed sealed with the
-- KEK. One is current; a retired one stays so that old checkpoints can still be checked.
CREATE TABLE log_keys (
    verifier       TEXT   PRIMARY KEY,
    sealed_seed    BLOB  NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    retired_at_ms  INTEGER
);
-- At most one current key, whichever server makes it first.
CREATE UNIQUE INDEX log_keys_one_current ON log_keys ((retired_at_ms IS NULL))
    WHERE retired_at_ms IS NULL;

-- Audit queries by cell.
CREATE INDEX ledger_entries_cell ON ledger_entries (cell_id, seq);
