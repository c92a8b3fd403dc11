"""The head office view (``posfed headoffice``): its configuration, its verdicts, and its code
location materialized against a PostgreSQL central database fed by several stores through
posfed's real stages and sync."""

from __future__ import annotations

import os
import subprocess
import sys
import time as clock_time
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from posfed_pipeline import names, packaged
from posfed_pipeline.core import central_db
from posfed_pipeline.core.base.clock import ManualClock
from posfed_pipeline.core.central_db.chain import StoreDay, SyncBatch, TenantTotals
from posfed_pipeline.core.config import ConfigError, load_config
from posfed_pipeline.core.config.headoffice import (
    headoffice_config_from_dict,
    load_headoffice_config,
)
from posfed_pipeline.core.operations import audit
from posfed_pipeline.core.operations import headoffice as watch
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.markdown import md_table, md_text
from posfed_pipeline.headoffice.definitions import (
    build_headoffice_definitions,
    chain_settlement_requests,
)
from posfed_pipeline_tests.support.chain import TERMINALS, chain_store, feed, sell
from posfed_pipeline_tests.support.databases import PG_SERVER, fresh_databases
from posfed_pipeline_tests.support.repo import REPO_ROOT

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
DAY = date(2026, 11, 20)  # a Friday
BEFORE = DAY - timedelta(days=1)
NOW = datetime(2026, 11, 20, 11, 30, tzinfo=AMSTERDAM)
HOSTILE_TENANT = "Deli <b>|[Pay](http://e.vil)"


def office_file(**tables) -> dict:
    raw = {
        "headoffice": {"timezone": "Europe/Amsterdam", "partitions_start": "2026-11-01"},
        "store_defaults": {"opening_hours": "08:00-21:00", "silent_after_minutes": 30},
        "stores": [{"id": "store-001"}],
    }
    raw.update(tables)
    return raw


def office(tmp_path: Path, **tables):
    return headoffice_config_from_dict(office_file(**tables), base_dir=tmp_path)


# --- the configuration ------------------------------------------------------------------------


def test_the_shipped_example_loads_and_each_store_takes_the_defaults_it_does_not_override():
    config = load_headoffice_config(packaged.headoffice_example())

    assert config.store_ids == ("store-001", "store-002", "store-003")
    utrecht, amersfoort, lisboa = config.stores
    assert (utrecht.name, utrecht.timezone.key) == ("Utrecht Centrum", "Europe/Amsterdam")
    assert utrecht.hours.opening_hours == (time(8), time(21))
    assert amersfoort.hours.opening_hours == (time(6), time(23))
    assert "sun" in amersfoort.hours.open_days and "sun" not in utrecht.hours.open_days
    assert lisboa.timezone.key == "Europe/Lisbon"
    assert utrecht.silent_after == timedelta(minutes=30)
    assert config.settled_by == time(3) and config.settlement_days == 7
    # A store found in the central database but not listed: the defaults, flagged.
    stranger = config.store("store-999")
    assert (stranger.listed, stranger.timezone.key) == (False, "Europe/Amsterdam")


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"stores": [{"id": "store-1"}, {"id": "store_1"}]}, "would name the same checks"),
        ({"stores": [{"id": "a"}, {"id": "a"}]}, "store id 'a' appears twice"),
        ({"stores": [{"id": "../x"}]}, r"stores\[0\]: id '../x' is not a store id"),
        ({"stores": [{"id": "a", "silent_after": 5}]}, "did you mean silent_after_minutes"),
        ({"store_defaults": {"opening_hours": "8-21"}}, 'must read like "07:00-21:00"'),
        ({"headoffice": {"partitions_start": "2026-11-01", "settled_by": "3am"}}, "settled_by"),
        ({"headoffice": {"timezone": "UTC"}}, "partitions_start must be set"),
    ],
)
def test_a_head_office_file_posfed_cannot_use_is_refused_naming_the_place(
    tmp_path, tables, message
):
    with pytest.raises(ConfigError, match=message):
        office(tmp_path, **tables)


def test_without_a_file_it_says_where_it_looked_and_where_the_example_is(tmp_path):
    with pytest.raises(ConfigError, match="no head office configuration") as refused:
        load_headoffice_config(tmp_path / "headoffice.toml")
    assert str(packaged.headoffice_example()) in str(refused.value)


def test_posfed_headoffice_without_a_central_database_says_which_variable_to_set(
    tmp_path, monkeypatch, capsys
):
    from posfed_pipeline.cli import main

    for name in ("POSFED_DB_URL", "POSFED_DB_DIALECT"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "headoffice.toml"
    path.write_text('[headoffice]\npartitions_start = "2026-11-01"\n')

    assert main(["headoffice", str(path), "--check"]) == 2
    assert "POSFED_DB_URL" in capsys.readouterr().err
    assert not (tmp_path / ".posfed-headoffice").exists()  # nothing started, nothing written


# --- the verdicts, on facts given -------------------------------------------------------------


def _day(store: str, day: date, last_sold: datetime, receipts: int = 3) -> StoreDay:
    return StoreDay(store, day, receipts, last_sold.astimezone(UTC), last_sold.astimezone(UTC))


def test_a_store_silent_while_open_needs_a_look_and_one_outside_its_hours_does_not(tmp_path):
    config = office(
        tmp_path,
        stores=[
            {"id": "store-001"},
            {"id": "store-002", "timezone": "America/New_York", "opening_hours": "09:00-17:00"},
        ],
    )
    amsterdam, new_york = config.stores
    last = datetime(2026, 11, 20, 10, 0, tzinfo=AMSTERDAM)

    silent = watch.judge_store(amsterdam, [_day("store-001", DAY, last)], [], NOW)
    assert silent.open_now and not silent.sending
    assert silent.not_sending == (
        "no receipt since 2026-11-20 10:00: quiet for 90 min while open (limit 30 min)",
    )
    assert silent.receipts_today == 3 and silent.quiet_for == timedelta(minutes=90)

    # 05:30 in New York: closed, however long it has been quiet.
    evening = datetime(2026, 11, 19, 16, 0, tzinfo=ZoneInfo("America/New_York"))
    closed = watch.judge_store(new_york, [_day("store-002", BEFORE, evening)], [], NOW)
    assert (closed.open_now, closed.sending, closed.receipts_today) == (False, True, 0)
    assert closed.last_receipt_at == evening

    # Silence counts from the opening, not from last night: at 08:20 it has been 20 minutes.
    morning = datetime(2026, 11, 20, 8, 20, tzinfo=AMSTERDAM)
    yesterday = datetime(2026, 11, 19, 20, 55, tzinfo=AMSTERDAM)
    fresh = watch.judge_store(amsterdam, [_day("store-001", BEFORE, yesterday)], [], morning)
    assert fresh.sending and fresh.quiet_for == timedelta(minutes=20)
    # ...and a store that sent nothing at all since it opened is silent past the limit.
    nothing = watch.judge_store(amsterdam, [], [], NOW)
    assert nothing.not_sending == (
        "no receipt yet: quiet for 3 h 30 min while open (limit 30 min)",
    )


def test_the_sync_lag_is_the_newest_transactions_and_fails_over_its_limit(tmp_path):
    [store] = office(tmp_path, stores=[{"id": "store-001", "max_sync_lag_minutes": 5}]).stores
    at = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    catching_up = [
        SyncBatch(at, at - timedelta(minutes=40), 500),
        SyncBatch(at + timedelta(minutes=1), at - timedelta(minutes=9), 120),
    ]
    behind = watch.judge_store(store, [], catching_up, NOW)
    assert behind.sync_lag == timedelta(minutes=10)
    assert behind.max_sync_lag == timedelta(minutes=40)
    assert behind.sync_behind == (
        "its newest receipts reached the central database 10 min after their .dat file "
        "(limit 5 min)",
    )
    caught_up = [*catching_up, SyncBatch(at + timedelta(minutes=2), at + timedelta(minutes=2), 3)]
    current = watch.judge_store(store, [], caught_up, NOW)
    assert current.sync_current and current.sync_lag == timedelta(0)


def test_closed_days_without_a_settlement_or_with_receipts_since_are_listed(tmp_path):
    config = office(
        tmp_path,
        stores=[{"id": "s1"}, {"id": "s2"}, {"id": "s3", "timezone": "America/New_York"}],
    )
    cents = Decimal("0.01")
    receipts = {
        ("s1", BEFORE, "Bakkerij"): TenantTotals(10, Decimal("100.50")),
        ("s1", BEFORE, "Slagerij"): TenantTotals(2, Decimal("20.00")),
        ("s2", BEFORE, "Bakkerij"): TenantTotals(5, Decimal("7.25")),
        ("s1", DAY, "Bakkerij"): TenantTotals(1, Decimal("1.00")),  # today: open
        ("s3", BEFORE, "Bakkerij"): TenantTotals(1, Decimal("1.00")),  # settled below
    }
    settled = {
        ("s1", BEFORE, "Bakkerij"): TenantTotals(9, Decimal("90.00")),
        ("s1", BEFORE, "Slagerij"): TenantTotals(2, Decimal("20.00")),
        ("s1", BEFORE, "Kaas"): TenantTotals(0, Decimal("0.00")),  # a tenant that sold nothing
        ("s3", BEFORE, "Bakkerij"): TenantTotals(1, Decimal("1.00")),
    }
    unsettled, not_closed = watch.find_unsettled(config, receipts, settled, NOW)

    assert [(u.store_id, u.business_day, u.reason, u.tenants) for u in unsettled] == [
        ("s1", BEFORE, "receipts since", ("Bakkerij",)),
        ("s2", BEFORE, "no settlement", ()),
    ]
    s1, s2 = unsettled
    assert (s1.receipts, s1.net, s1.receipts_settled, s1.net_settled) == (
        12,
        Decimal("120.50"),
        11,
        Decimal("110.00"),
    )
    assert s2.net.as_tuple().exponent == cents.as_tuple().exponent
    assert not_closed == [("s1", DAY)]
    # Before 03:00 the day after, a day is not judged yet.
    early = datetime(2026, 11, 20, 2, 59, tzinfo=AMSTERDAM)
    assert watch.find_unsettled(config, receipts, settled, early)[0] == []


# --- the code location ------------------------------------------------------------------------


def test_the_head_office_location_loads_with_two_checks_per_store_and_no_store_definitions(
    tmp_path,
):
    config = office(tmp_path, stores=[{"id": "store-001"}, {"id": "store.002"}])
    defs = build_headoffice_definitions(config, "sqlite:///unused.db")
    dg.Definitions.validate_loadable(defs)

    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        names.CENTRAL_DB_RECEIPTS,
        names.TENANT_SETTLEMENTS,
        names.STORE_ACTIVITY,
        names.CHAIN_SETTLEMENTS,
        names.UNSETTLED_STORE_DAYS,
    }
    # The stores' assets are read here, never materialized.
    assert not graph.get(dg.AssetKey(names.CENTRAL_DB_RECEIPTS)).is_materializable
    assert {k.name for k in graph.asset_check_keys} == {
        "store_001_is_sending",
        "store_001_sync_is_current",
        "store_002_is_sending",
        "store_002_sync_is_current",
        names.EVERY_STORE_LISTED_CHECK,
        names.EVERY_STORE_SETTLED_CHECK,
        names.CLOSED_DAYS_SETTLED_CHECK,
    }
    repo = defs.get_repository_def()
    assert {s.name: s.cron_schedule for s in repo.schedule_defs} == {
        names.STORE_ACTIVITY_SCHEDULE: "*/5 * * * *",
        names.UNSETTLED_DAYS_SCHEDULE: "10 * * * *",
        names.CHAIN_SETTLEMENT_SCHEDULE: "0 3 * * *",
    }
    assert all(s.execution_timezone == "Europe/Amsterdam" for s in repo.schedule_defs)
    # One location name wherever Dagster reads it.
    import yaml

    [served] = yaml.safe_load(packaged.headoffice_code_server_workspace_file().read_text())[
        "load_from"
    ]
    assert (
        names.HEADOFFICE_LOCATION
        == packaged.headoffice_location_name()
        == served["grpc_server"]["location_name"]
        != packaged.location_name()
    )
    # And the store's location holds nothing of the head office's.
    store = build_definitions(load_config(REPO_ROOT / "posfed.toml")).resolve_asset_graph()
    assert not {k.to_user_string() for k in store.get_all_asset_keys()} & {
        names.STORE_ACTIVITY,
        names.CHAIN_SETTLEMENTS,
        names.UNSETTLED_STORE_DAYS,
    }


def test_the_daily_chain_settlement_refreshes_the_last_days_within_the_partitions(tmp_path):
    config = office(tmp_path)
    at = datetime(2026, 11, 5, 3, 0, tzinfo=AMSTERDAM)
    requests = chain_settlement_requests(config, at)
    # partitions_start 2026-11-01: four of the seven days before the 5th exist.
    assert [r.partition_key for r in requests] == [
        "2026-11-01",
        "2026-11-02",
        "2026-11-03",
        "2026-11-04",
    ]
    assert len({r.run_key for r in requests}) == 4


def test_the_head_office_files_are_package_data_so_a_wheel_ships_them():
    import tomllib
    from fnmatch import fnmatch

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["posfed_pipeline.profiles"]
    for path in (
        packaged.headoffice_workspace_file(),
        packaged.headoffice_code_server_workspace_file(),
        packaged.headoffice_example(),
        packaged.instance_profile_file("headoffice"),
    ):
        assert any(fnmatch(path.name, pattern) for pattern in patterns), path.name


# --- against a central database fed by three stores -------------------------------------------


@pytest.fixture
def central_url(monkeypatch):
    """A fresh PostgreSQL central database for this test, at posfed's schema; POSFED_DB_URL
    names it, as on a head office server."""
    name = f"posfed_headoffice_{uuid.uuid4().hex[:10]}"
    with fresh_databases(name):
        url = f"{PG_SERVER}/{name}"
        engine = central_db.make_engine(url)
        central_db.upgrade_database(engine)
        engine.dispose()
        monkeypatch.setenv("POSFED_DB_URL", url)
        monkeypatch.delenv("POSFED_DB_PASSWORD", raising=False)
        yield url


def _settle(config, url: str, day: date) -> None:
    """The store's own nightly settlement (its tenant_settlements asset does this)."""
    engine = central_db.make_engine(url)
    audit.store_settlements(engine, day, audit.settle_day(config, engine, day), config.store_id)
    engine.dispose()


def _run(defs: dg.Definitions, job: str, instance, **kwargs) -> dg.ExecuteInProcessResult:
    """The job the head office's schedule launches, run here in this process."""
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, **kwargs)
    assert result.success
    return result


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    [event] = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _lag_in_the_central_database(url: str, store_id: str) -> float:
    """The newest sync transaction's lag, read straight from pos_ingest_ledger."""
    rows = [e for e in central_db.ledger_entries(central_db.make_engine(url), store_id=store_id)]
    newest = max(e.loaded_at for e in rows)
    oldest = min(e.dat_written_at for e in rows if e.loaded_at == newest and e.dat_written_at)
    return (newest - oldest).total_seconds()


@pytest.mark.slow
@pytest.mark.postgres
def test_the_head_office_sees_each_store_its_settlements_and_the_days_not_settled(
    tmp_path, central_url
):
    tills = TERMINALS[:4]  # two tenants, two tills each
    hostile = {"id": "deli_1", "department": "30", "tenant": HOSTILE_TENANT}
    amsterdam = chain_store(tmp_path, 1, central_url, terminals=[*tills, hostile])
    new_york = chain_store(tmp_path, 2, central_url, timezone="America/New_York", terminals=tills)
    lisbon = chain_store(tmp_path, 3, central_url, timezone="Europe/Lisbon", terminals=tills)
    stranger = chain_store(tmp_path, 4, central_url, terminals=tills[:1])
    ny, lis = ZoneInfo("America/New_York"), ZoneInfo("Europe/Lisbon")

    # Yesterday: every store sold; Amsterdam's and New York's stores settled, Lisbon's did not.
    sold_1 = sell(amsterdam, [datetime.combine(BEFORE, time(12), AMSTERDAM)] * 2, seed=1)
    sold_2 = sell(new_york, [datetime(2026, 11, 19, h, tzinfo=ny) for h in (10, 16)], seed=2)
    sold_3 = sell(lisbon, [datetime(2026, 11, 19, 15, tzinfo=lis)], seed=3)
    # Today: Amsterdam's store sold until 10:00 and went quiet; Lisbon's sold ten minutes ago.
    sell(
        amsterdam,
        [datetime(2026, 11, 20, h, tzinfo=AMSTERDAM) for h in (9, 10)],
        seed=4,
        sold=sold_1,
    )
    sell(lisbon, [datetime(2026, 11, 20, 10, 20, tzinfo=lis)], seed=5, sold=sold_3)
    sell(stranger, [datetime(2026, 11, 20, 11, 0, tzinfo=AMSTERDAM)], seed=6)
    for config in (amsterdam, lisbon, stranger):
        feed(config)
    # New York's sync is behind: its receipts reach the central database 6.5 s after their .dat.
    clock_time.sleep(6.5)
    feed(new_york)
    _settle(amsterdam, central_url, BEFORE)
    _settle(new_york, central_url, BEFORE)
    settled_1 = dict(sold_1.of_day(BEFORE))
    # Late receipts of yesterday (one per till) reach Amsterdam's after its settlement.
    sell(amsterdam, [datetime.combine(BEFORE, time(20, 30), AMSTERDAM)], seed=7, sold=sold_1)
    feed(amsterdam)

    config = office(
        tmp_path,
        store_defaults={"opening_hours": "08:00-21:00", "silent_after_minutes": 30},
        stores=[
            {"id": "store-001", "name": "Utrecht"},
            {
                "id": "store-002",
                "name": "New York",
                "timezone": "America/New_York",
                "opening_hours": "09:00-17:00",
                "max_sync_lag_minutes": 0.1,
            },
            {"id": "store-003", "name": "Lisboa", "timezone": "Europe/Lisbon"},
        ],
    )
    clock = ManualClock(NOW.timestamp())
    defs = build_headoffice_definitions(config, central_url, clock=clock)

    with dg.instance_for_test() as instance:
        # --- store_activity: who is sending, whose sync is behind -----------------------------
        activity = _run(defs, names.STORE_ACTIVITY_JOB, instance)
        checks = _checks(activity)
        assert not checks["store_001_is_sending"].passed  # quiet since 10:00, open
        meta = {k: v.value for k, v in checks["store_001_is_sending"].metadata.items()}
        assert meta["last_receipt_at"] == "2026-11-20 10:00:00"
        assert meta["receipts_today"] == 2 * len(amsterdam.terminals)
        assert meta["problem"] == (
            "no receipt since 2026-11-20 10:00: quiet for 90 min while open (limit 30 min)"
        )
        assert checks["store_002_is_sending"].passed  # 05:30 in New York: closed
        assert checks["store_003_is_sending"].passed  # ten minutes ago
        lisboa = {k: v.value for k, v in checks["store_003_is_sending"].metadata.items()}
        assert lisboa["last_receipt_at"] == "2026-11-20 10:20:00"
        assert lisboa["quiet_minutes"] == 10.0
        # The sync lag, as the central database records it.
        assert checks["store_001_sync_is_current"].passed
        assert not checks["store_002_sync_is_current"].passed
        lag = {k: v.value for k, v in checks["store_002_sync_is_current"].metadata.items()}
        assert lag["sync_lag_seconds"] == pytest.approx(
            _lag_in_the_central_database(central_url, "store-002"), abs=1e-6
        )
        assert lag["sync_lag_seconds"] >= 6.5
        ok = {k: v.value for k, v in checks["store_001_sync_is_current"].metadata.items()}
        assert 0 <= ok["sync_lag_seconds"] < 6
        assert ok["sync_lag_seconds"] == pytest.approx(
            _lag_in_the_central_database(central_url, "store-001"), abs=1e-6
        )
        # A store that sends but is not listed.
        assert not checks[names.EVERY_STORE_LISTED_CHECK].passed
        assert checks[names.EVERY_STORE_LISTED_CHECK].metadata["not_listed"].value == "store-004"
        summary = _metadata(activity, names.STORE_ACTIVITY)
        assert (summary["stores"], summary["not_sending"], summary["sync_behind"]) == (4, 1, 1)

        # --- unsettled_store_days: yesterday, Amsterdam's has receipts since, Lisbon's none ----
        unsettled = _run(defs, names.UNSETTLED_DAYS_JOB, instance)
        assert not _checks(unsettled)[names.CLOSED_DAYS_SETTLED_CHECK].passed
        listed = _metadata(unsettled, names.UNSETTLED_STORE_DAYS)
        assert listed["not_settled"] == 2
        table = listed["store_days"]
        late_tenants = ", ".join(sorted(settled_1))
        all_1, all_3 = sold_1.of_day(BEFORE), sold_3.of_day(BEFORE)
        expected = md_table(
            ["store", "business day", "why", "receipts", "net", "settled receipts", "settled net"],
            [
                (
                    "store-001",
                    BEFORE.isoformat(),
                    f"receipts since: {late_tenants}",
                    sum(n for n, _ in all_1.values()),
                    sum(net for _, net in all_1.values()),
                    sum(n for n, _ in settled_1.values()),
                    sum(net for _, net in settled_1.values()),
                ),
                (
                    "store-003",
                    BEFORE.isoformat(),
                    "no settlement",
                    sum(n for n, _ in all_3.values()),
                    sum(net for _, net in all_3.values()),
                    "-",
                    "-",
                ),
            ],
            align="lllrrrr",
        )
        assert table == expected

        # --- chain_settlements of yesterday: per tenant across the stores that settled --------
        day_key = BEFORE.isoformat()
        chain_day = _run(defs, names.CHAIN_SETTLEMENT_JOB, instance, partition_key=day_key)
        settlement = _metadata(chain_day, names.CHAIN_SETTLEMENTS)
        sold_2_day = sold_2.of_day(BEFORE)
        tenants = sorted(set(settled_1) | set(sold_2_day))
        rows = []
        for tenant in tenants:
            parts = [p for p in (settled_1.get(tenant), sold_2_day.get(tenant)) if p]
            net = sum(net for _, net in parts)
            rows.append((tenant, len(parts), sum(n for n, _ in parts), net, "0.00", net))
        assert settlement["settlement"] == md_table(
            ["tenant", "stores", "receipts", "gross", "returns", "net"], rows, align="lrrrrr"
        )
        assert Decimal(settlement["net_total"]) == sum(r[-1] for r in rows)
        # Text a store's configuration gave its tenant shows as the text it is.
        assert md_text(HOSTILE_TENANT) in settlement["settlement"]
        assert "<b>" not in settlement["settlement"] and "](http" not in settlement["settlement"]
        not_settled = _checks(chain_day)[names.EVERY_STORE_SETTLED_CHECK]
        assert not not_settled.passed
        assert "store\\-001" in not_settled.metadata["not_settled"].value
        assert "store\\-003" in not_settled.metadata["not_settled"].value

        # --- both stores settle (again): the chain's day is complete, exact to the cent -------
        _settle(amsterdam, central_url, BEFORE)
        _settle(lisbon, central_url, BEFORE)
        chain_day = _run(defs, names.CHAIN_SETTLEMENT_JOB, instance, partition_key=day_key)
        assert _checks(chain_day)[names.EVERY_STORE_SETTLED_CHECK].passed
        settlement = _metadata(chain_day, names.CHAIN_SETTLEMENTS)
        everyone = [sold_1.of_day(BEFORE), sold_2_day, sold_3.of_day(BEFORE)]
        for tenant in {t for sold in everyone for t in sold}:
            parts = [sold[tenant] for sold in everyone if tenant in sold]
            net = sum(net for _, net in parts)
            row = (tenant, len(parts), sum(n for n, _ in parts), net, "0.00", net)
            assert md_table(["a"] * 6, [row]).splitlines()[-1] in settlement["settlement"]
        assert Decimal(settlement["net_total"]) == sum(
            net for sold in everyone for _, net in sold.values()
        )
        unsettled = _run(defs, names.UNSETTLED_DAYS_JOB, instance)
        assert _checks(unsettled)[names.CLOSED_DAYS_SETTLED_CHECK].passed


@pytest.mark.slow
def test_the_head_office_reads_the_embedded_sqlite_central_database_the_same_way(
    tmp_path, monkeypatch
):
    url = f"sqlite:///{tmp_path / 'central.db'}"
    central_db.upgrade_database(central_db.make_engine(url))
    monkeypatch.setenv("POSFED_DB_URL", url)
    first = chain_store(tmp_path, 1, url, terminals=TERMINALS[:2])
    second = chain_store(tmp_path, 2, url, terminals=TERMINALS[2:4])
    sold_1 = sell(first, [datetime.combine(BEFORE, time(11), AMSTERDAM)] * 3, seed=1)
    sold_2 = sell(second, [datetime.combine(BEFORE, time(14), AMSTERDAM)] * 2, seed=2)
    sell(first, [datetime(2026, 11, 20, 11, 25, tzinfo=AMSTERDAM)], seed=3, sold=sold_1)
    feed(first)
    feed(second)
    _settle(first, url, BEFORE)
    config = office(tmp_path, stores=[{"id": "store-001"}, {"id": "store-002"}])
    defs = build_headoffice_definitions(config, url, clock=ManualClock(NOW.timestamp()))

    with dg.instance_for_test() as instance:
        checks = _checks(_run(defs, names.STORE_ACTIVITY_JOB, instance))
        assert checks["store_001_is_sending"].passed  # five minutes ago
        assert not checks["store_002_is_sending"].passed  # nothing today, open since 08:00
        unsettled = _metadata(
            _run(defs, names.UNSETTLED_DAYS_JOB, instance), names.UNSETTLED_STORE_DAYS
        )
        assert unsettled["not_settled"] == 1 and "store\\-002" in unsettled["store_days"]
        chain_day = _run(defs, names.CHAIN_SETTLEMENT_JOB, instance, partition_key=str(BEFORE))
        settlement = _metadata(chain_day, names.CHAIN_SETTLEMENTS)
        assert Decimal(settlement["net_total"]) == sum(
            sold_1.of_day(BEFORE)[t][1] for t in sold_1.of_day(BEFORE)
        )
        assert not sold_2.of_day(BEFORE).keys() & sold_1.of_day(BEFORE).keys()
        assert not _checks(chain_day)[names.EVERY_STORE_SETTLED_CHECK].passed


@pytest.mark.slow
@pytest.mark.postgres
def test_posfed_headoffice_check_reads_the_central_database_and_says_what_needs_a_look(
    tmp_path, central_url, capsys
):
    from posfed_pipeline.cli import main

    store = chain_store(tmp_path, 1, central_url, terminals=TERMINALS[:2])
    sell(store, [datetime.now(AMSTERDAM).replace(microsecond=0)], seed=1)
    feed(store)
    path = tmp_path / "headoffice.toml"
    path.write_text(
        '[headoffice]\npartitions_start = "2026-11-01"\ntimezone = "Europe/Amsterdam"\n'
        '[[stores]]\nid = "store-001"\nname = "Utrecht"\n'
    )

    assert main(["headoffice", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "the code location loads (1 stores listed)" in out
    assert "store-001: open, last receipt" in out and ": ok" in out

    # A second store sends, not listed: exit 1, and it says so.
    other = chain_store(tmp_path, 2, central_url, terminals=TERMINALS[:1])
    sell(other, [datetime.now(AMSTERDAM).replace(microsecond=0)], seed=2)
    feed(other)
    assert main(["headoffice", str(path), "--check"]) == 1
    assert "store-002: open" in capsys.readouterr().out


@pytest.mark.slow
def test_dagster_loads_the_head_office_workspace_and_the_store_location_still_passes_dg_check(
    tmp_path,
):
    env = {
        **os.environ,
        "POSFED_HEADOFFICE_CONFIG": str(packaged.headoffice_example()),
        "POSFED_DB_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none",  # never connected to
        "DAGSTER_HOME": str(tmp_path),
    }
    bin_dir = Path(sys.executable).parent
    office_check = subprocess.run(
        [
            str(bin_dir / "dagster"),
            "definitions",
            "validate",
            "-w",
            str(packaged.headoffice_workspace_file()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert office_check.returncode == 0, office_check.stdout + office_check.stderr
    said = office_check.stdout + office_check.stderr
    assert "Validation successful for code location headoffice" in said

    store_check = subprocess.run(
        [str(bin_dir / "dg"), "check", "defs"],
        cwd=REPO_ROOT,
        env={k: v for k, v in env.items() if not k.startswith("POSFED_")},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert store_check.returncode == 0, store_check.stdout + store_check.stderr


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.browser
def test_posfed_headoffice_serves_the_chain_in_its_own_dagster_ui(tmp_path, central_url, browser):
    """The real command: its webserver and daemon on the head office's own instance and
    port; the assets, materialized, and their checks as an operator opens them."""
    from posfed_pipeline_tests.support.processes import free_port, wait_for
    from posfed_pipeline_tests.support.servers import dagster_process, wait_until_serving
    from posfed_pipeline_tests.support.ui import (
        click_text,
        dismiss_community_modal,
        save_screenshot,
        screenshot_folder,
        wait_visible_text,
    )

    now = datetime.now(AMSTERDAM).replace(microsecond=0)
    yesterday = now - timedelta(days=1)
    stores = [chain_store(tmp_path, n, central_url, terminals=TERMINALS[:6]) for n in (1, 2, 3)]
    for n, store in enumerate(stores, start=1):
        # Store 3 sold its last receipt two hours ago and went quiet.
        last = now - timedelta(hours=2) if n == 3 else now
        sell(store, [yesterday, last - timedelta(minutes=5), last], seed=n)
        feed(store)
    for store in stores[:2]:  # store 3 did not settle yesterday
        _settle(store, central_url, yesterday.date())
    path = tmp_path / "office" / "headoffice.toml"
    path.parent.mkdir()
    path.write_text(
        '[headoffice]\nname = "Chain head office"\ntimezone = "Europe/Amsterdam"\n'
        f'partitions_start = "{(now - timedelta(days=7)).date()}"\nsettled_by = "00:00"\n'
        '[store_defaults]\nopening_hours = "00:00-24:00"\nsilent_after_minutes = 10\n'
        '[[stores]]\nid = "store-001"\nname = "Utrecht Centrum"\n'
        '[[stores]]\nid = "store-002"\nname = "Amersfoort Station"\n'
        '[[stores]]\nid = "store-003"\nname = "Lisboa Baixa"\n'
        # Open since three hours ago, whatever the hour: its two hours' silence counts.
        f'opening_hours = "{now - timedelta(hours=3):%H:%M}-{now + timedelta(hours=3):%H:%M}"\n'
    )
    config = load_headoffice_config(path)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "POSFED_CONFIG")}
    log = tmp_path / "headoffice.log"
    command = ["posfed", "headoffice", str(path), "--port", str(port)]
    with dagster_process(command, env=env, log_path=log) as server:
        wait_until_serving(base_url, server, log, timeout=180)
        # Its own instance, under [headoffice] home: the runs the schedules would launch.
        assert (config.dagster_home / "dagster.yaml").is_file()
        defs = build_headoffice_definitions(config, central_url)
        with dg.DagsterInstance.from_config(str(config.dagster_home)) as instance:
            activity = _run(defs, names.STORE_ACTIVITY_JOB, instance)
            _run(defs, names.UNSETTLED_DAYS_JOB, instance)
            day_key = yesterday.date().isoformat()
            _run(defs, names.CHAIN_SETTLEMENT_JOB, instance, partition_key=day_key)
        checks = _checks(activity)
        assert checks["store_001_is_sending"].passed
        assert not checks["store_003_is_sending"].passed  # quiet for two hours, open

        screenshots = screenshot_folder(tmp_path)
        browser.set_window_size(1600, 1000)
        browser.get(f"{base_url}/locations/headoffice/asset-groups/headoffice")
        dismiss_community_modal(browser)
        for asset in (names.STORE_ACTIVITY, names.CHAIN_SETTLEMENTS, names.UNSETTLED_STORE_DAYS):
            wait_visible_text(browser, asset)
        clock_time.sleep(2)  # the graph's zoom-to-fit animation
        save_screenshot(browser, screenshots / "headoffice-assets.png")

        # The silent store's check, as the operator opens it: why, in words.
        browser.get(f"{base_url}/assets/{names.STORE_ACTIVITY}?view=checks")
        wait_visible_text(browser, "store_001_sync_is_current")
        click_text(browser, "store_003_is_sending")
        quiet = (now - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M")
        wait_for(
            lambda: f"no receipt since {quiet}: quiet for 2 h" in browser.page_source,
            60,
            "the silent store's reason on its check",
            log,
        )
        clock_time.sleep(1)
        save_screenshot(browser, screenshots / "headoffice-checks.png")
    assert not server.outlived, f"posfed headoffice left {server.outlived} running"
