-- CA rotation: when each CA certificate became active, was retired, and (roots) left the
-- trust bundle.
ALTER TABLE ca_certs
    ADD COLUMN activated_at BIGINT,
    ADD COLUMN retired_at BIGINT,
    ADD COLUMN pruned_at BIGINT;
UPDATE ca_certs SET activated_at = created_at WHERE state = 'active';

-- CA events join the ledger; they concern no instance, so the placement columns become
-- optional.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_kind_check CHECK (kind IN ('issued', 'denied', 'ca')),
    ALTER COLUMN instance_guid DROP NOT NULL,
    ALTER COLUMN app_guid DROP NOT NULL,
    ALTER COLUMN cell_id DROP NOT NULL;
