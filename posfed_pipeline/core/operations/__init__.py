"""Watching a store: reconciliation and audits, terminal health, alerts."""
