"""posfed's fast path: an event-driven trigger and warm run workers (see service.py).

It is built on Dagster internals (dagster_internals.py, launcher.py) that change between
releases without notice: a Dagster other than the pinned one is refused here, by name, before
any of them is imported, rather than failing later in a worker or a sensor tick."""

import dagster as dg

DAGSTER_VERSION = "1.13.27"  # as pinned in pyproject.toml

if dg.__version__ != DAGSTER_VERSION:
    raise ImportError(
        f"posfed's fast path needs dagster {DAGSTER_VERSION} (pinned in pyproject.toml) and "
        f"found dagster {dg.__version__}: install posfed's pinned versions "
        f"(pip install 'dagster=={DAGSTER_VERSION}'), or port fastpath/dagster_internals.py "
        "and run its tests"
    )
