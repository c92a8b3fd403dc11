"""posfed's fast path: an event-driven trigger and warm run workers (see service.py)."""
