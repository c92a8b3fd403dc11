"""The run tags posfed sets and reads, named once (no Dagster import: the run launcher loads this
in every Dagster process).

A run's *lane* is what serialises it: a terminal's runs go one at a time (its receipts in
order), and so do the central database syncs. The run queue (``tag_concurrency_limits`` in
deploy/dagster.*.yaml) and the warm worker pool both honour it.
"""

TERMINAL_TAG = "posfed/terminal"  # a receipts run: the terminal whose files it carries
LANE_TAG = "posfed/lane"  # any other serialised run: its lane
REJECTED_TAG = "posfed/rejected"  # a receipts run that quarantined files: how many
# A receipts run carrying a backlog (a flooded inbox, a catch-up after an outage): it runs at a
# lower CPU priority, so the terminals whose cashiers wait for one receipt go first.
BACKLOG_TAG = "posfed/backlog"
BACKLOG_FILES = 20  # a run carrying at least this many files is a backlog
SYNC_LANE = "central_db_sync"
# Set by Dagster's default launcher on the runs it starts: a hidden tag, hence the dot
# (dagster._core.storage.tags.GRPC_INFO_TAG; test_fastpath pins it).
GRPC_INFO_TAG = ".dagster/grpc_info"
ACCEPTED_TAG = "posfed/run_worker_pool"  # set when a warm pool queues a run
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
PARTITION_TAG = "dagster/partition"
TERMINAL_PARTITION_TAG = "dagster/partition/terminal"  # a multi-partition run's dimension

# What a run materializes decides its lane (asset keys as Dagster prints them).
RECEIPTS_JOB = "receipts_job"
SYNC_JOB = "central_db_sync_job"
RECEIPT_ASSETS = frozenset({"validated_receipts", "dat_files"})
SYNC_ASSETS = frozenset({"central_db_receipts"})


def lane_of(tags: dict[str, str]) -> tuple[str | None, bool]:
    """(lane, background) of a run: a terminal's lane (in the background for a backlog), or a
    background lane such as the sync."""
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
