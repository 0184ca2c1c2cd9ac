-- Revocation: revoked certificates, listed in their issuer's CRL until they expire, and the
-- apps and cells that get no certificate any more. Revocations join the ledger and the change
-- feed.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('issued', 'denied', 'ca', 'policy', 'placement', 'revocation'));

ALTER TABLE changes DROP CONSTRAINT changes_topic_check;
ALTER TABLE changes
    ADD CONSTRAINT changes_topic_check
    CHECK (topic IN ('placement', 'policy', 'ca', 'revocation'));

-- One row per revoked certificate, kept until it expires.
CREATE TABLE revoked_certs (
    serial              TEXT    PRIMARY KEY,
    issuer_fingerprint  TEXT    NOT NULL,
    not_after           BIGINT  NOT NULL,
    revoked_at_ms       BIGINT  NOT NULL,
    reason              TEXT    NOT NULL,
    requested_by        TEXT    NOT NULL
);
CREATE INDEX revoked_certs_not_after ON revoked_certs (not_after);

-- Apps and cells refused every certificate from now on.
CREATE TABLE revoked_subjects (
    kind           TEXT    NOT NULL CHECK (kind IN ('app', 'cell')),
    subject        TEXT    NOT NULL,
    revoked_at_ms  BIGINT  NOT NULL,
    reason         TEXT    NOT NULL,
    requested_by   TEXT    NOT NULL,
    PRIMARY KEY (kind, subject)
);
