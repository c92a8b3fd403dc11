"""A run queue that gives every run its lane before queueing it.

Configured in dagster.yaml (deploy/dagster.*.yaml) in place of Dagster's
``QueuedRunCoordinator``, with the same settings. Runs created by posfed's sensors and trigger
carry their lane tag already; runs started from the UI (materialize on an asset page or the
asset graph, a backfill of many terminal-days, the launchpad, a re-execution) do not, and would
otherwise escape the one-run-per-terminal limit. The event-driven trigger launches directly and
never passes through here.
"""

from __future__ import annotations

import dagster as dg

from posfed_pipeline.run_tags import missing_lane_tags


class LaneRunCoordinator(dg.QueuedRunCoordinator):
    def submit_run(self, context):
        run = context.dagster_run
        assets = {key.to_user_string() for key in run.asset_selection or ()}
        lane_tags = missing_lane_tags(run.job_name, assets, dict(run.tags))
        if lane_tags:
            self._instance.add_run_tags(run.run_id, lane_tags)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = context._replace(dagster_run=run)
        return super().submit_run(context)
