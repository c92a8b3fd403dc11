"""The vocabulary: a receipt, its barcodes, a terminal (with its delivery and health rules) and
how a vendor's files map onto a receipt, the outbox row; and how the store file declares them."""
