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
    added_at_ms      BIGINT  NOT NULL,
    PRIMARY KEY (origin, destination_app, source_app, protocol, port_start, port_end)
);

-- Enforcement modes set by operators: for the whole foundation (scope_id ''), a space or an app.
CREATE TABLE enforcement_modes (
    scope       TEXT    NOT NULL CHECK (scope IN ('foundation', 'space', 'app')),
    scope_id    TEXT    NOT NULL,
    mode        TEXT    NOT NULL CHECK (mode IN ('trust-domain', 'policy')),
    set_at_ms   BIGINT  NOT NULL,
    PRIMARY KEY (scope, scope_id)
);

-- Policy changes and mode switches join the ledger.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_kind_check CHECK (kind IN ('issued', 'denied', 'ca', 'policy'));
