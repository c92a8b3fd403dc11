"""The head office view: a Dagster code location of its own (``posfed headoffice``), reading
the chain's central database, never run by a store and never loading a store's location.

    central_db_receipts ─▶ store_activity          every 5 min: per store, last receipt and
                                                   sync lag; <store>_is_sending,
                                                   <store>_sync_is_current, every_store_listed
    tenant_settlements ─▶ chain_settlements        daily, per business day: per tenant across
                                                   stores; every_store_settled
    both ─▶ unsettled_store_days                   hourly: store-days closed and not settled;
                                                   closed_days_settled

``central_db_receipts`` and ``tenant_settlements`` are the stores' assets (each store's posfed
writes them); here they are the tables the head office reads. The facts and verdicts are the
core's (``core.operations.headoffice``, ``core.central_db.chain``); this package shows them.
"""
