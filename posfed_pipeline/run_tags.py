"""The run tags posfed sets and reads, named once (no Dagster import: the run launcher loads this
in every Dagster process).

A run's *lane* is what serialises it: a terminal's runs go one at a time (its receipts in
order), and so do the central database syncs. The run queue (``tag_concurrency_limits`` in
deploy/dagster.*.yaml) and the warm worker pool both honour it.
"""

TERMINAL_TAG = "posfed/terminal"  # a receipts run: the terminal whose files it carries
LANE_TAG = "posfed/lane"  # any other serialised run: its lane
SYNC_LANE = "central_db_sync"
GRPC_INFO_TAG = "dagster/grpc_info"  # set by Dagster's default launcher on the runs it starts
ACCEPTED_TAG = "posfed/run_worker_pool"  # set when a warm pool queues a run
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"


def lane_of(tags: dict[str, str]) -> tuple[str | None, bool]:
    """(lane, background) of a run: a terminal's lane, or a background lane such as the sync."""
    terminal = tags.get(TERMINAL_TAG)
    if terminal:
        return terminal, False
    lane = tags.get(LANE_TAG)
    return (f"lane:{lane}", True) if lane else (None, False)
