"""Every way the Dagster UI launches work, sent as the UI sends it, to a real webserver.

A real ``dagster-webserver`` and ``dagster-daemon`` serve a temp store of three terminals with
two business days of archived receipts; the runs go to posfed's warm run workers
(``posfed fastpath``) or, with no pool running, to Dagster's default launcher (the fallback).
The GraphQL documents are the UI's own (dagster-webserver's bundled sources:
``LaunchAssetChoosePartitionsDialog``, ``LaunchAssetExecutionButton``, ``RunUtils``): the
materialize button of an asset page or the asset graph, the launchpad of the job page, the
re-execution of a failed run, and backfills of many terminal-days. Each must succeed, carry
its terminal's tag and respect the one-run-per-terminal limit.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from posfed_pipeline import packaged
from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import load_config
from posfed_pipeline.dagster_home import render_instance_yaml
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.partitions import terminal_day_key
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.names import RECEIPTS_JOB, TERMINAL_TAG
from posfed_pipeline_tests.support.processes import wait_for
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.servers import dagster_services
from posfed_pipeline_tests.support.stores import write_store_config

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = pytest.mark.slow

LOCATION = packaged.location_name()
REPOSITORY = "__repository__"
ASSET_JOB = "__ASSET_JOB"
TERMINALS = [
    ("bakery_1", "10", "Bakkerij"),
    ("butcher_1", "20", "Slagerij"),
    ("deli_1", "30", "Deli"),
]
RECEIPT_ASSETS = [{"path": ["validated_receipts"]}, {"path": ["dat_files"]}]
RECEIPT_CHECKS = [
    {"assetKey": {"path": ["validated_receipts"]}, "name": "validation_pass_rate"},
    {"assetKey": {"path": ["dat_files"]}, "name": "dat_files_reparse"},
]
RUN_TIMEOUT_SECONDS = 120

LAUNCH_RUN = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { id } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""
REEXECUTE = """
mutation LaunchPipelineReexecution($reexecutionParams: ReexecutionParams) {
  launchPipelineReexecution(reexecutionParams: $reexecutionParams) {
    __typename
    ... on LaunchRunSuccess { run { id parentRunId } }
    ... on PythonError { message }
  }
}"""
BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
# What the materialize dialog asks before launching one partition (ConfigFetch.tsx).
PARTITION_TAGS_AND_CONFIG = """
query ConfigPartitionForAssetJobQuery($repositoryName: String!,
    $repositoryLocationName: String!, $jobName: String!, $partitionName: String!,
    $assetKeys: [AssetKeyInput!]!) {
  pipelineOrError(params: {pipelineName: $jobName, repositoryName: $repositoryName,
      repositoryLocationName: $repositoryLocationName}) {
    ... on Pipeline {
      partition(partitionName: $partitionName, selectedAssetKeys: $assetKeys) {
        runConfigOrError { ... on PartitionRunConfig { yaml } }
        tagsOrError { ... on PartitionTags { results { key value } } }
      }
    }
  }
}"""
RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { status startTime endTime tags { key value } }
  }
}"""
BACKFILL_STATUS = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    ... on PartitionBackfill { status runs(limit: 100) { id } }
  }
}"""


class UiStack:
    def __init__(self, base_url: str, dagster_home: Path, config, days, log: Path):
        self.base_url, self.dagster_home, self.config, self.days, self.log = (
            base_url,
            dagster_home,
            config,
            days,
            log,
        )

    def gql(self, query: str, **variables) -> dict:
        request = urllib.request.Request(
            f"{self.base_url}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            reply = json.loads(response.read())
        assert "errors" not in reply, reply["errors"]
        return reply["data"]

    def partition_tags_and_config(self, job_name: str, partition: str) -> tuple[list, str]:
        data = self.gql(
            PARTITION_TAGS_AND_CONFIG,
            repositoryName=REPOSITORY,
            repositoryLocationName=LOCATION,
            jobName=job_name,
            partitionName=partition,
            assetKeys=RECEIPT_ASSETS,
        )["pipelineOrError"]["partition"]
        return data["tagsOrError"]["results"], data["runConfigOrError"]["yaml"]

    def launch(self, job_name: str, partition: str, assets=None, checks=None) -> str:
        """The materialize dialog's "Launch 1 run" (or the launchpad's, for a job)."""
        tags, run_config = self.partition_tags_and_config(job_name, partition)
        selector = {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "pipelineName": job_name,
        }
        if assets is not None:
            selector |= {"assetSelection": assets, "assetCheckSelection": checks or []}
        params = {
            "mode": "default",
            "executionMetadata": {"tags": tags},
            "runConfigData": run_config,
            "selector": selector,
        }
        result = self.gql(LAUNCH_RUN, executionParams=params)["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["id"]

    def run(self, run_id: str) -> dict:
        run = self.gql(RUN, runId=run_id)["runOrError"]
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        if run["status"] == "FAILURE":  # why, for the assertion's message
            with dg.DagsterInstance.from_config(str(self.dagster_home)) as instance:
                run["errors"] = [
                    record.user_message
                    for record in instance.all_logs(run_id)
                    if record.level >= logging.ERROR
                ]
        return run

    def wait_run(self, run_id: str) -> dict:
        def finished():
            run = self.run(run_id)
            return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

        return wait_for(finished, RUN_TIMEOUT_SECONDS, f"run {run_id}", self.log)

    def wait_backfill(self, backfill_id: str, runs: int) -> list[dict]:
        def completed():
            backfill = self.gql(BACKFILL_STATUS, backfillId=backfill_id)["partitionBackfillOrError"]
            return backfill if backfill["status"] != "REQUESTED" else None

        backfill = wait_for(completed, RUN_TIMEOUT_SECONDS * 2, "the backfill", self.log)
        assert backfill["status"] == "COMPLETED_SUCCESS", backfill
        assert len(backfill["runs"]) == runs
        return [self.wait_run(r["id"]) for r in backfill["runs"]]


@pytest.fixture(scope="module", params=["warm_workers", "fallback_launcher"])
def ui_stack(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp(request.param)
    config_path = write_store_config(
        tmp_path / "posfed.toml",
        tmp_path / "state",
        terminals=[{"id": i, "department": d, "tenant": t} for i, d, t in TERMINALS],
    )
    # The receipts runs read the spec from here: a test breaks it to make a run fail.
    spec = tmp_path / "spec.json"
    spec.write_bytes((REPO_ROOT / "dat_specs" / "scon_default.json").read_bytes())
    config_path.write_text(
        config_path.read_text().replace(
            json.dumps(str(REPO_ROOT / "dat_specs" / "scon_default.json")), json.dumps(str(spec))
        )
    )
    config = load_config(config_path)
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    dagster_home = tmp_path / "dagster_home"
    render_instance_yaml(dagster_home)

    # Two business days of receipts, processed and archived: what a backfill re-processes.
    today = datetime.now(config.timezone).replace(microsecond=0)
    days = [(today - timedelta(days=1)).date(), today.date()]
    defs = build_definitions(config)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for terminal_id, department, _ in TERMINALS:
            terminal = config.terminal(terminal_id)
            for n, day in enumerate(days):
                when = datetime.combine(day, today.time(), config.timezone)
                doc = receipt_doc(
                    f"{terminal_id[:2].upper()}{n}001",
                    terminal_id,
                    department,
                    timestamp=min(when, today).isoformat(),
                )
                name = drop_receipt(terminal.inbox, doc).name
                result = defs.resolve_job_def(RECEIPTS_JOB).execute_in_process(
                    run_config=receipt_op_config(ReceiptBatchConfig(files=[name])),
                    partition_key=terminal_day_key(terminal_id, day),
                    instance=instance,
                )
                assert result.success

    with dagster_services(
        config_path, dagster_home, tmp_path, warm_workers=request.param == "warm_workers"
    ) as base_url:
        yield UiStack(base_url, dagster_home, config, days, tmp_path / "daemon.log")


def _partition(terminal_id: str, day) -> str:
    return f"{day.isoformat()}|{terminal_id}"


def _assert_receipts_run(run: dict, terminal_id: str) -> None:
    assert run["status"] == "SUCCESS", f"run failed: {run.get('errors')}"
    assert run["tags"][TERMINAL_TAG] == terminal_id
    if "posfed/run_worker_pool" in run["tags"]:
        assert "dagster/grpc_info" not in run["tags"]


def test_materialize_from_the_asset_page_and_the_asset_graph(ui_stack):
    day = ui_stack.days[-1]
    # The asset page's Materialize of one terminal-day: both assets of the step, and its checks.
    page = ui_stack.launch(ASSET_JOB, _partition("bakery_1", day), RECEIPT_ASSETS, RECEIPT_CHECKS)
    # The asset graph, dat_files selected: the UI adds validated_receipts (one step makes both,
    # it says) and sends the same pair with their checks.
    graph = ui_stack.launch(ASSET_JOB, _partition("butcher_1", day), RECEIPT_ASSETS, RECEIPT_CHECKS)
    _assert_receipts_run(ui_stack.wait_run(page), "bakery_1")
    _assert_receipts_run(ui_stack.wait_run(graph), "butcher_1")
    with dg.DagsterInstance.from_config(str(ui_stack.dagster_home)) as instance:
        record = instance.get_latest_materialization_event(dg.AssetKey("dat_files"))
        assert record is not None and record.run_id in (page, graph)


def test_launch_from_the_job_page(ui_stack):
    run_id = ui_stack.launch(RECEIPTS_JOB, _partition("deli_1", ui_stack.days[0]))
    _assert_receipts_run(ui_stack.wait_run(run_id), "deli_1")


def test_reexecution_of_a_failed_run(ui_stack):
    spec = Path(ui_stack.config.dat_spec)
    good = spec.read_bytes()
    spec.write_text("{ not a spec")
    try:
        parent = ui_stack.launch(
            ASSET_JOB, _partition("deli_1", ui_stack.days[-1]), RECEIPT_ASSETS, RECEIPT_CHECKS
        )
        assert ui_stack.wait_run(parent)["status"] == "FAILURE"
    finally:
        spec.write_bytes(good)
    for strategy in ("FROM_FAILURE", "ALL_STEPS"):
        result = ui_stack.gql(
            REEXECUTE, reexecutionParams={"parentRunId": parent, "strategy": strategy}
        )["launchPipelineReexecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        _assert_receipts_run(ui_stack.wait_run(result["run"]["id"]), "deli_1")


def test_backfills_of_many_terminal_days_run_one_per_terminal_at_a_time(ui_stack):
    """The asset page's Materialize of many keys and the job page's partitions tab, launched
    together (the backfill daemon ticks every 30 s: together they share its ticks): every run
    succeeds, and a terminal's runs never overlap, across both backfills."""
    partitions = [_partition(t, day) for t, _, _ in TERMINALS for day in ui_stack.days]
    job_partitions = {
        "partitionSetName": f"{RECEIPTS_JOB}_partition_set",
        "repositorySelector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
    }
    backfill_ids = []
    for target in ({"assetSelection": RECEIPT_ASSETS}, {"selector": job_partitions}):
        params = {"partitionNames": partitions, "fromFailure": False, "tags": [], **target}
        result = ui_stack.gql(BACKFILL, backfillParams=params)["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        backfill_ids.append(result["backfillId"])
    runs = [run for b in backfill_ids for run in ui_stack.wait_backfill(b, len(partitions))]

    by_terminal = defaultdict(list)
    for run in runs:
        terminal_id = run["tags"]["dagster/partition"].split("|")[1]
        _assert_receipts_run(run, terminal_id)
        by_terminal[terminal_id].append((run["startTime"], run["endTime"]))
    assert sorted(by_terminal) == sorted(t for t, _, _ in TERMINALS)
    for terminal_id, spans in by_terminal.items():
        assert len(spans) == 2 * len(ui_stack.days)
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"two runs of {terminal_id} overlapped: {spans}"


def test_the_ui_shows_the_run_queues_limits(ui_stack):
    """The limits live in dagster.yaml's `concurrency:` block, where the UI reads them."""
    queue = ui_stack.gql(
        "{ instance { runQueuingSupported runQueueConfig"
        " { maxConcurrentRuns tagConcurrencyLimitsYaml } } }"
    )["instance"]
    assert queue["runQueuingSupported"]
    assert queue["runQueueConfig"]["maxConcurrentRuns"] == 4
    limits = yaml.safe_load(queue["runQueueConfig"]["tagConcurrencyLimitsYaml"])
    assert {(limit["key"], limit["limit"]) for limit in limits} == {
        (TERMINAL_TAG, 1),
        ("posfed/lane", 1),
    }
