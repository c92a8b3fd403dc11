"""The Dagster definitions load, and are built from the terminal registry."""

import dagster as dg

from posfed_pipeline.core.config import load_config
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.partitions import split_terminal_day_key, terminal_day_key
from posfed_pipeline.names import RECEIPTS_JOB
from posfed_pipeline_tests.support.repo import REPO_ROOT


def test_demo_store_definitions_load_with_one_sensor_per_terminal():
    config = load_config(REPO_ROOT / "posfed.toml")
    defs = build_definitions(config)

    dg.Definitions.validate_loadable(defs)
    assert len(config.terminals) == 20
    assert sorted(s.name for s in defs.sensors) == sorted(
        [f"{terminal_id}_inbox_sensor" for terminal_id in config.terminal_ids]
        + ["central_db_sync_sensor", "late_receipts_sensor"]
        + ["run_failure_alert_sensor", "central_db_lag_alert_sensor", "terminal_health_sensor"]
    )
    receipts = defs.resolve_job_def(RECEIPTS_JOB)
    assert set(receipts.asset_layer.executable_asset_keys) == {
        dg.AssetKey("validated_receipts"),
        dg.AssetKey("dat_files"),
    }
    sync = defs.resolve_job_def("central_db_sync_job")
    assert set(sync.asset_layer.executable_asset_keys) == {dg.AssetKey("central_db_receipts")}


def test_each_area_gives_its_definitions_and_every_name_is_in_names():
    """Each ``defs/<area>.py`` returns one ``dg.Definitions`` and is merged; whatever the code
    location holds is named in ``posfed_pipeline.names``, the one place names are defined."""
    import importlib
    import pkgutil

    import posfed_pipeline.defs
    from posfed_pipeline import names
    from posfed_pipeline.core.base.clock import SYSTEM_CLOCK
    from posfed_pipeline.definitions import AREAS

    config = load_config(REPO_ROOT / "posfed.toml")
    modules = [
        importlib.import_module(f"posfed_pipeline.defs.{m.name}")
        for m in pkgutil.iter_modules(posfed_pipeline.defs.__path__)
    ]
    assert {m for m in modules if hasattr(m, "definitions")} == set(AREAS)
    for area in AREAS:
        assert isinstance(area.definitions(config, SYSTEM_CLOCK), dg.Definitions), area

    named = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    named |= {names.inbox_sensor_name(t) for t in config.terminal_ids}
    named |= {names.health_check_name(t) for t in config.terminal_ids}
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    assert {j.name for j in repo.get_all_jobs()} - {"__ASSET_JOB"} <= named
    assert {s.name for s in [*repo.sensor_defs, *repo.schedule_defs]} <= named
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} <= named
    assert {k.name for k in graph.asset_check_keys} <= named


def test_asset_lineage_runs_from_files_to_dat(config):
    graph = build_definitions(config).resolve_asset_graph()

    def parents(key: str) -> set[str]:
        return {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}

    # The .dat never waits for the central database: both hang off the validated receipts.
    assert parents("validated_receipts") == {"receipt_files"}
    assert parents("dat_files") == {"validated_receipts"}
    assert parents("central_db_receipts") == {"validated_receipts"}
    assert parents("tenant_settlements") == {"central_db_receipts"}
    checks = {key.name for key in graph.asset_check_keys}
    assert "central_db_lag" in checks


def test_adding_a_terminal_adds_its_sensor_and_partitions(config, tmp_path):
    from dataclasses import replace

    from posfed_pipeline.core.model.terminal import Terminal

    extra = Terminal(
        id="deli_9",
        department="30",
        tenant="Deli",
        inbox=tmp_path / "deli_9" / "inbox",
        timezone=config.timezone,
    )
    bigger = replace(config, terminals=(*config.terminals, extra), _by_id={})
    defs = build_definitions(bigger)

    assert "deli_9_inbox_sensor" in {s.name for s in defs.sensors}
    partitions = defs.resolve_job_def(RECEIPTS_JOB).partitions_def
    keys = partitions.get_partition_keys(dynamic_partitions_store=None)
    assert "2026-01-01|deli_9" in keys


def test_partition_keys_round_trip():
    from datetime import date

    key = terminal_day_key("bakery_1", date(2026, 11, 24))
    assert str(key) == "2026-11-24|bakery_1"
    assert split_terminal_day_key(str(key)) == ("bakery_1", date(2026, 11, 24))
    assert split_terminal_day_key(key) == ("bakery_1", date(2026, 11, 24))


def test_the_jobs_the_ui_builds_run_in_process_and_lanes_name_the_real_assets():
    """Materialize on an asset page runs Dagster's implicit asset job: in a warm run worker (a
    daemonic process, which may not fork) it must not start a process per step."""
    from posfed_pipeline.names import SYNC_JOB
    from posfed_pipeline.run_tags import RECEIPT_ASSETS, SYNC_ASSETS

    defs = build_definitions(load_config(REPO_ROOT / "posfed.toml"))
    for job in [defs.resolve_implicit_global_asset_job_def(), *defs.resolve_all_job_defs()]:
        assert job.executor_def.name == dg.in_process_executor.name, job.name
    receipts = defs.resolve_job_def(RECEIPTS_JOB).asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in receipts} == RECEIPT_ASSETS
    sync = defs.resolve_job_def(SYNC_JOB).asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in sync} == SYNC_ASSETS


def test_runs_started_from_the_ui_get_their_terminal_or_lane():
    from posfed_pipeline.run_tags import missing_lane_tags

    partition = {"dagster/partition": "2026-11-30|bakery_1"}
    assert missing_lane_tags("__ASSET_JOB", {"dat_files", "validated_receipts"}, partition) == {
        "posfed/terminal": "bakery_1"
    }
    assert missing_lane_tags(
        RECEIPTS_JOB, None, {"dagster/partition/terminal": "deli_1", **partition}
    ) == {"posfed/terminal": "deli_1"}
    assert missing_lane_tags("__ASSET_JOB", {"central_db_receipts"}, {}) == {
        "posfed/lane": "central_db_sync"
    }
    # Already tagged (by a sensor or the trigger), or not a laned run: nothing added.
    assert missing_lane_tags(RECEIPTS_JOB, None, {"posfed/terminal": "x", **partition}) == {}
    assert missing_lane_tags("daily_reconciliation_job", {"daily_reconciliation"}, partition) == {}


def test_the_code_location_has_one_name_everywhere_dagster_reads_it():
    """The workspaces (the plain one; the code server's: posfed demo, the systemd units),
    `dagster dev` ([tool.dagster]) and `dg` ([tool.dg.project]) load one location; the fast
    path's runs carry its name."""
    import tomllib

    import yaml

    from posfed_pipeline import packaged
    from posfed_pipeline.fastpath.dagster_internals import LOCATION_NAME
    from posfed_pipeline_tests.support.repo import REPO_ROOT

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]
    [served] = yaml.safe_load(packaged.code_server_workspace_file().read_text())["load_from"]
    names = {
        packaged.location_name(),
        served["grpc_server"]["location_name"],
        project["dagster"]["code_location_name"],
        project["dg"]["project"]["code_location_name"],
        LOCATION_NAME,
    }
    assert len(names) == 1


def test_the_sync_keeps_its_lineage_but_never_lists_every_terminal_day(config, engine, monkeypatch):
    """The UI's asset graph shows validated_receipts ─▶ central_db_receipts and dat_files ─▶
    archive_retention, yet a sync run lists no terminal-day partitions: at 200 terminals a
    year of them (74,000) was three quarters of a sync run's CPU."""
    from posfed_pipeline.names import SYNC_JOB

    defs = build_definitions(config)
    graph = defs.resolve_asset_graph()
    for upstream, downstream in [
        ("validated_receipts", "central_db_receipts"),
        ("dat_files", "archive_retention"),
    ]:
        assert dg.AssetKey(upstream) in graph.get(dg.AssetKey(downstream)).parent_keys

    def listing_every_key(*args, **kwargs):
        raise AssertionError("a sync run listed every terminal-day partition")

    with dg.instance_for_test() as instance:
        # Dagster looks at the partitions of a dependency only once it has a materialization.
        instance.report_runless_asset_event(
            dg.AssetMaterialization("validated_receipts", partition="2026-11-20|bakery_1")
        )
        monkeypatch.setattr(dg.MultiPartitionsDefinition, "get_partition_keys", listing_every_key)
        assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success
