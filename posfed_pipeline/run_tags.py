"""A run's lane, from its tags (no Dagster import: the run launcher loads this in every Dagster
process; the tags themselves are named in ``posfed_pipeline.names``).

A run's *lane* is what serialises it: a terminal's runs go one at a time (its receipts in
order), and so do the central database syncs. The run queue (``tag_concurrency_limits`` in
deploy/dagster.*.yaml) and the warm worker pool both honour it.
"""

from posfed_pipeline.names import (
    BACKLOG_TAG,
    CENTRAL_DB_RECEIPTS,
    CHECKOUT_RECORD_LANE,
    CHECKOUT_RECORD_TAG,
    DAT_FILES,
    LANE_TAG,
    PARTITION_TAG,
    RECEIPTS_JOB,
    SYNC_JOB,
    SYNC_LANE,
    TERMINAL_PARTITION_TAG,
    TERMINAL_TAG,
    VALIDATED_RECEIPTS,
)

BACKLOG_FILES = 20  # a run carrying at least this many files is a backlog (BACKLOG_TAG)

# What a run materializes decides its lane.
RECEIPT_ASSETS = frozenset({VALIDATED_RECEIPTS, DAT_FILES})
SYNC_ASSETS = frozenset({CENTRAL_DB_RECEIPTS})


def lane_of(tags: dict[str, str]) -> tuple[str | None, bool]:
    """(lane, background) of a run: a terminal's lane (in the background for a backlog), or a
    background lane such as the sync."""
    if tags.get(CHECKOUT_RECORD_TAG) == "true":
        # Not the terminal's lane: a recording run, in the background, never holds up its
        # terminal's next receipt.
        return f"lane:{CHECKOUT_RECORD_LANE}", True
    terminal = tags.get(TERMINAL_TAG)
    if terminal:
        return terminal, tags.get(BACKLOG_TAG) == "true"
    lane = tags.get(LANE_TAG)
    return (f"lane:{lane}", True) if lane else (None, False)


def missing_lane_tags(
    job_name: str, asset_keys: set[str] | None, tags: dict[str, str]
) -> dict[str, str]:
    """The lane tags a run lacks: runs that posfed's launchers create carry them already; runs
    launched from the UI (an asset page, a backfill, the launchpad) get them here, so the
    one-at-a-time limits hold however a run was started."""
    if TERMINAL_TAG in tags or LANE_TAG in tags:
        return {}
    assets = asset_keys or set()
    if job_name == RECEIPTS_JOB or assets & RECEIPT_ASSETS:
        terminal = tags.get(TERMINAL_PARTITION_TAG) or _terminal_of_partition(
            tags.get(PARTITION_TAG)
        )
        return {TERMINAL_TAG: terminal} if terminal else {}
    if job_name == SYNC_JOB or assets & SYNC_ASSETS:
        return {LANE_TAG: SYNC_LANE}
    return {}


def _terminal_of_partition(partition_key: str | None) -> str | None:
    # A terminal × day key prints as "<day>|<terminal>" (dimensions sorted by name).
    if not partition_key or "|" not in partition_key:
        return None
    return partition_key.split("|", 1)[1] or None
