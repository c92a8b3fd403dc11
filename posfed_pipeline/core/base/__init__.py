"""What everything stands on: the clock, durable file writes."""
