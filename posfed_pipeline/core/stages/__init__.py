"""The stage sequence: a terminal's files to the ledger and the .dat, the ledger to the
register, and how runs are launched."""
