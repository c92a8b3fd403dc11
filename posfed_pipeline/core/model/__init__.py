"""The vocabulary: a receipt, its barcodes, a terminal's delivery rules, the outbox row."""
