"""Partitions that last: the Dagster UI with 200 terminals × 3 years of days.

    .venv/bin/python dev/benchmarks/bench_partitions.py [--terminals 200] [--years 3]
        [--windows 12,0] [--materialized-days 30]

For each window (``[store] partition_window_months``; 0: every day since the first) it builds
a temp store whose first day is ``--years`` back, records a materialization of ``dat_files``
for every terminal on the last ``--materialized-days`` days (runless events: what the runs
would have left), starts a real ``dagster-webserver`` on a free port and times:
- the GraphQL the asset page asks for its partitions (status ranges, counts, keys),
- the asset page's Partitions tab in headless Chromium, until the partition count shows,
- ``launchPartitionBackfill`` for one terminal's every day and for one day's every terminal
  (no daemon runs: the time is the UI's request until the backfill is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date, datetime
from pathlib import Path

import dagster as dg
from posfed_dev.bench import terminal_specs
from posfed_dev.browser import headless_chromium, missing_browser
from posfed_dev.faults import free_port

from posfed_pipeline import names, packaged
from posfed_pipeline.core.config import load_config
from posfed_pipeline.dagster_home import render_instance_yaml
from posfed_pipeline.defs.partitions import terminal_day_key

ASSET = names.DAT_FILES
# One step makes both: the UI's Materialize of dat_files selects validated_receipts too.
BACKFILL_ASSETS = [names.VALIDATED_RECEIPTS, names.DAT_FILES]

PARTITIONS_QUERY = """
query AssetPartitions($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      partitionKeysByDimension { name partitionKeys }
      assetPartitionStatuses {
        __typename
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey primaryDimEndKey
            secondaryDim {
              __typename
              ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
"""
BACKFILL_MUTATION = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""


def write_store(root: Path, terminals: int, first_day: date, window: int) -> Path:
    lines = [
        "[store]",
        'id = "partitions"',
        'timezone = "Europe/Amsterdam"',
        f'partitions_start = "{first_day}"',
        f"partition_window_months = {window}",
        "[paths]",
        f'home = "{root / "state"}"',
    ]
    for terminal_id, department, tenant, prefix in terminal_specs(terminals):
        lines += [
            "[[terminals]]",
            f'id = "{terminal_id}"',
            f'department = "{department}"',
            f'tenant = "{tenant}"',
            f'receipt_id_prefix = "{prefix}"',
        ]
    path = root / "posfed.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def record_materializations(dagster_home: Path, config, days: int) -> int:
    today = datetime.now(config.timezone).date()
    keys = [
        terminal_day_key(t.id, date.fromordinal(today.toordinal() - n))
        for n in range(days)
        for t in config.terminals
    ]
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for key in keys:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=ASSET, partition=key)
            )
    return len(keys)


def graphql(base_url: str, query: str, variables: dict) -> tuple[dict, float]:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"{base_url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    seconds = time.perf_counter() - started
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors: {answer['errors']}")
    return answer["data"], seconds


def start_webserver(config_path: Path, dagster_home: Path, root: Path) -> tuple:
    log = root / "web.log"
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "POSFED_CONFIG": str(config_path)}
    env.pop("POSFED_HOME", None)
    env.pop("POSFED_DB_URL", None)
    webserver = str(Path(sys.executable).with_name("dagster-webserver"))
    command = [webserver, "-h", "127.0.0.1", "-p", str(port), "-w", str(packaged.workspace_file())]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the webserver exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/server_info", timeout=2):
                break
        except OSError:
            if time.monotonic() - started > 300:
                raise
            time.sleep(0.25)
    # The code location loads after the server answers: wait until the asset is there.
    while True:
        try:
            data, _ = graphql(base_url, PARTITIONS_QUERY, {"path": [ASSET]})
            if data["assetNodeOrError"]["__typename"] == "AssetNode":
                break
        except (OSError, RuntimeError):
            pass
        if time.monotonic() - started > 300:
            raise RuntimeError(f"the code location did not load:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return process, base_url, time.monotonic() - started


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def time_asset_page(driver, base_url: str, expected: str) -> float:
    """Seconds from navigation to the Partitions tab showing ``expected`` (the count)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.perf_counter()
    driver.get(f"{base_url}/assets/{ASSET}?view=partitions")
    WebDriverWait(driver, 600, poll_frequency=0.05).until(
        lambda d: expected in d.find_element(By.TAG_NAME, "body").text
    )
    return time.perf_counter() - started


def measure(args, window: int, root: Path) -> dict:
    today = date.today()
    first_day = today.replace(year=today.year - args.years)
    config_path = write_store(root, args.terminals, first_day, window)
    config = load_config(config_path)
    config.ensure_folders()
    dagster_home = root / "dagster_home"
    render_instance_yaml(dagster_home)
    started = time.perf_counter()
    recorded = record_materializations(dagster_home, config, args.materialized_days)
    print(
        f"  window {window}: {recorded:,} materializations recorded "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    process, base_url, startup = start_webserver(config_path, dagster_home, root)
    try:
        timings = []
        for _ in range(args.repeat):
            data, seconds = graphql(base_url, PARTITIONS_QUERY, {"path": [ASSET]})
            timings.append(seconds)
        stats = data["assetNodeOrError"]["partitionStats"]
        days = next(
            d["partitionKeys"]
            for d in data["assetNodeOrError"]["partitionKeysByDimension"]
            if d["name"] == "day"
        )
        page = []
        if not missing_browser():
            driver = headless_chromium(root / "browser")
            try:
                expected = f"{stats['numPartitions']:,}"
                for _ in range(args.repeat):
                    page.append(time_asset_page(driver, base_url, expected))
            finally:
                driver.quit()
        terminal = config.terminals[0].id
        one_terminal = [terminal_day_key(terminal, date.fromisoformat(d)) for d in days]
        one_day = [terminal_day_key(t.id, today) for t in config.terminals]
        launches = {}
        for label, names in (
            ("one terminal's days", one_terminal),
            ("one day's terminals", one_day),
        ):
            params = {
                "partitionNames": names,
                "assetSelection": [{"path": [a]} for a in BACKFILL_ASSETS],
                "title": f"bench: {label}",
            }
            answer, seconds = graphql(base_url, BACKFILL_MUTATION, {"params": params})
            outcome = answer["launchPartitionBackfill"]
            if outcome["__typename"] != "LaunchBackfillSuccess":
                raise RuntimeError(f"backfill of {label}: {outcome}")
            launches[label] = {"partitions": len(names), "seconds": round(seconds, 3)}
        return {
            "window_months": window,
            "partitions": stats["numPartitions"],
            "materialized": stats["numMaterialized"],
            "days": len(days),
            "webserver_ready_s": round(startup, 1),
            "partitions_query_s": {
                "first": round(timings[0], 3),
                "median": round(statistics.median(timings), 3),
            },
            "asset_page_s": {
                "first": round(page[0], 2),
                "median": round(statistics.median(page), 2),
            }
            if page
            else None,
            "backfill_launch": launches,
        }
    finally:
        stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, default=200)
    parser.add_argument("--years", type=int, default=3)
    parser.add_argument("--windows", default="12,0", help="window months to compare (0: none)")
    parser.add_argument("--materialized-days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the figures as JSON")
    args = parser.parse_args()
    results = []
    for window in (int(w) for w in args.windows.split(",")):
        root = Path(tempfile.mkdtemp(prefix="posfed-partitions-"))
        try:
            results.append(measure(args, window, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(json.dumps(results[-1], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
