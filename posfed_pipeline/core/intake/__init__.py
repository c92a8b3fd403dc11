"""From a terminal's bytes to a checked receipt: formats, POSLog, validation."""
