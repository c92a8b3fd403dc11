"""The store server's own state on its disk: the ledger, the claim table, inboxes,
quarantine, the archive's retention, backups."""
