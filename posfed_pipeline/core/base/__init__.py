"""What everything stands on: the clock, durable file writes, the local SQLite files, errors."""
