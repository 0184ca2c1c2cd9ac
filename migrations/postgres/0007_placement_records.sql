-- Placement changes join the ledger, each naming who made it.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('issued', 'denied', 'ca', 'policy', 'placement'));
