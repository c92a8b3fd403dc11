"""The stage sequence: a terminal's files to the ledger and the .dat (processing), the ledger to
the central database (sync), and how runs are launched (launching)."""
