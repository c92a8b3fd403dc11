"""Seen in a real browser: the Dagster UI shows posfed's asset lineage and per-terminal sensors.

A real ``dagster-webserver`` serves a temp store (one terminal-day already processed, so the
lineage shows materializations) on 127.0.0.1 and a free port; headless Chromium from the
distribution's packages (``tools/browser.py``), driven by Selenium, opens the pages
an operator would. With ``POSFED_UPDATE_SCREENSHOTS=1`` the screenshots are written to
``docs/asset-lineage.png`` and ``docs/sensors.png``; otherwise into the test's temp folder.

Without Chromium this skips, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from posfed_pipeline import packaged
from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import PosfedConfig, load_config
from posfed_pipeline.dagster_home import render_instance_yaml
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.partitions import terminal_day_key
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.names import RECEIPTS_JOB
from posfed_pipeline_tests.support.processes import free_port, wait_for
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.servers import (
    dagster_process,
    dagster_services,
    wait_until_serving,
)
from posfed_pipeline_tests.support.stores import write_store_config
from posfed_pipeline_tests.support.ui import (
    PAGE_TIMEOUT_SECONDS,
    click_text,
    dismiss_community_modal,
    save_screenshot,
    screenshot_folder,
    wait_visible_text,
)

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = [pytest.mark.slow, pytest.mark.browser]

LOCATION = packaged.location_name()
RECEIPT_ASSETS = ["receipt_files", "validated_receipts", "central_db_receipts", "dat_files"]
TERMINALS = [
    ("bakery_1", "10", "Bakkerij"),
    ("butcher_1", "20", "Slagerij"),
    ("deli_1", "30", "Delicatessen"),
]


@pytest.fixture
def ui_store(tmp_path, monkeypatch) -> tuple[PosfedConfig, Path, Path]:
    """A temp store with one terminal-day processed; returns (config, config path, DAGSTER_HOME)."""
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    config_path = write_store_config(
        tmp_path / "posfed.toml",
        tmp_path / "state",
        terminals=[
            {"id": id_, "department": department, "tenant": tenant}
            for id_, department, tenant in TERMINALS
        ],
    )
    config = load_config(config_path)
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    dagster_home = tmp_path / "dagster_home"
    render_instance_yaml(dagster_home)

    terminal = config.terminal("bakery_1")
    now = datetime.now(terminal.timezone).replace(microsecond=0)
    drop_receipt(terminal.inbox, receipt_doc("UI0001", timestamp=now.isoformat()))
    defs = build_definitions(config)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        result = defs.resolve_job_def(RECEIPTS_JOB).execute_in_process(
            run_config=receipt_op_config(ReceiptBatchConfig(files=["UI0001.json"])),
            partition_key=terminal_day_key(terminal.id, now.date()),
            instance=instance,
        )
        # ...and the central database's copy, as the sync sensor or the trigger would run it.
        synced = defs.resolve_job_def("central_db_sync_job").execute_in_process(instance=instance)
    assert result.success and synced.success
    return config, config_path, dagster_home


@pytest.fixture
def webserver(ui_store, tmp_path) -> Iterator[str]:
    """``dagster-webserver`` on 127.0.0.1 and a free port; yields its base URL."""
    _config, config_path, dagster_home = ui_store
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "POSFED_CONFIG": str(config_path)}
    env.pop("POSFED_HOME", None)
    env.pop("POSFED_DB_URL", None)
    log_path = tmp_path / "webserver.log"
    base_url = f"http://127.0.0.1:{port}"
    with dagster_process(
        [
            "dagster-webserver",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
        ],
        env=env,
        log_path=log_path,
    ) as server:
        wait_until_serving(base_url, server, log_path, PAGE_TIMEOUT_SECONDS)
        yield base_url


def test_ui_shows_the_asset_lineage_and_one_sensor_per_terminal(webserver, browser, tmp_path):
    screenshots = screenshot_folder(tmp_path)

    browser.get(f"{webserver}/locations/{LOCATION}/asset-groups/receipts")
    dismiss_community_modal(browser)
    for asset in RECEIPT_ASSETS:
        wait_visible_text(browser, asset)
    # The processed terminal-day shows in the graph: its asset checks passed.
    wait_visible_text(browser, "1 / 1 Passed")
    time.sleep(1)  # let the graph finish its zoom-to-fit animation before the picture
    save_screenshot(browser, screenshots / "asset-lineage.png")

    browser.get(f"{webserver}/automation")
    dismiss_community_modal(browser)
    for terminal_id, _department, _tenant in TERMINALS:
        wait_visible_text(browser, f"{terminal_id}_inbox_sensor")
    save_screenshot(browser, screenshots / "sensors.png")


@pytest.fixture
def operator_stack(tmp_path, monkeypatch):
    """The demo's services on a temp store (webserver, daemon, warm run workers; the trigger
    off, so the terminals' sensors deliver): two terminals, partitions from yesterday, each
    with a processed receipt in the archive today. Yields (base URL, config, DAGSTER_HOME)."""
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    today = datetime.now().astimezone().date()
    config_path = write_store_config(
        tmp_path / "posfed.toml",
        tmp_path / "state",
        store={
            "id": "ui-store",
            "timezone": "Europe/Amsterdam",
            "partitions_start": str(today - timedelta(days=1)),
        },
        terminals=[
            {"id": id_, "department": department, "tenant": tenant}
            for id_, department, tenant in TERMINALS[:2]
        ],
    )
    config = load_config(config_path)
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    dagster_home = tmp_path / "dagster_home"
    render_instance_yaml(dagster_home)
    defs = build_definitions(config)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for terminal_id, department, _ in TERMINALS[:2]:
            terminal = config.terminal(terminal_id)
            now = datetime.now(terminal.timezone).replace(microsecond=0)
            doc = receipt_doc(f"OK{department}", terminal_id, department, timestamp=now.isoformat())
            drop_receipt(terminal.inbox, doc)
            result = defs.resolve_job_def(RECEIPTS_JOB).execute_in_process(
                run_config=receipt_op_config(ReceiptBatchConfig(files=[f"OK{department}.json"])),
                partition_key=terminal_day_key(terminal_id, now.date()),
                instance=instance,
                tags={"posfed/terminal": terminal_id},
            )
            assert result.success

    with dagster_services(config_path, dagster_home, tmp_path) as base_url:
        yield base_url, config, dagster_home


def test_an_operator_backfills_from_the_asset_page_and_finds_the_rejected_receipt(
    operator_stack, browser, tmp_path
):
    from selenium.webdriver.common.by import By

    base_url, config, dagster_home = operator_stack
    browser.set_window_size(1920, 1000)  # the check's metadata table is wide
    screenshots = screenshot_folder(tmp_path)
    # A till sends a receipt whose total is wrong; the terminal's sensor takes it.
    bakery = config.terminal("bakery_1")
    now = datetime.now(bakery.timezone).replace(microsecond=0)
    drop_receipt(bakery.inbox, receipt_doc("BAD0001", timestamp=now.isoformat(), total="99.99"))
    wait_for(
        (bakery.quarantine / "BAD0001.json").exists,
        120,
        "the sensor to quarantine BAD0001.json",
        tmp_path / "daemon.log",
    )

    # The operator re-runs the store's days from the dat_files asset page: Materialize, all
    # terminal-days, launch.
    browser.get(f"{base_url}/assets/dat_files")
    dismiss_community_modal(browser)
    click_text(browser, "Materialize…")
    # One step makes validated_receipts and dat_files: the UI says so and adds it.
    click_text(browser, "Confirm")
    # Today's terminal-days, every terminal: two runs, as a backfill.
    click_text(browser, "Latest")
    browser.find_elements(By.XPATH, "//button[normalize-space(.)='All']")[-1].click()
    wait_visible_text(browser, "2 partitions")
    save_screenshot(browser, screenshots / "backfill-dialog.png")
    click_text(browser, "Launch backfill")

    # The Backfills tab: the backfill completes, both runs on the warm workers.
    deadline = time.monotonic() + 120
    while True:
        browser.get(f"{base_url}/runs")
        click_text(browser, "Backfills")
        time.sleep(2)
        if "Success" in browser.find_element(By.TAG_NAME, "body").text:
            break
        assert time.monotonic() < deadline, browser.find_element(By.TAG_NAME, "body").text

    # The runs list: the run that rejected the receipt says so in its tags.
    browser.get(f"{base_url}/runs")
    wait_visible_text(browser, "posfed/rejected: 1")
    save_screenshot(browser, screenshots / "runs-rejected.png")

    # The asset's Checks tab: the check is failed (yellow: a warning), and the reason reads
    # as text: the file, the rule, the value, where it went, the command that re-queues it.
    browser.get(f"{base_url}/assets/validated_receipts?view=checks")
    wait_visible_text(browser, "validation_pass_rate")
    time.sleep(2)
    # Its Partitions tab: today's bakery_1 is red; the other terminal-days pass.
    tabs = browser.find_elements(By.XPATH, "//*[normalize-space(.)='Partitions' and not(*)]")
    tabs[-1].click()
    wait_visible_text(browser, "Failed (1)")
    # (The day is also the range's axis label: its list entry is the last one.)
    days = browser.find_elements(By.XPATH, f"//*[normalize-space(.)='{now.date()}' and not(*)]")
    [d for d in days if d.is_displayed()][-1].click()
    click_text(browser, "bakery_1")
    browser.execute_script(
        "arguments[0].scrollIntoView({block: 'center'})",
        wait_visible_text(browser, "BAD0001.json"),
    )
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Failed" in body
    assert "total must equal the sum of the line amounts" in body
    assert str(bakery.quarantine / "BAD0001.json") in body
    assert "posfed quarantine retry bakery_1 BAD0001.json" in body
    save_screenshot(browser, screenshots / "rejection-check.png")
