"""``posfed bench`` end to end on a tiny store: a functional test of the harness, not a timing.

Latency figures depend on the machine and its load; this test never asserts them.
"""

import json
import subprocess
import sys

import pytest

from posfed_pipeline_tests.support.repo import REPO_ROOT

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = pytest.mark.slow


def bench(out, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``posfed bench ARGS --quiet --json OUT``: what it printed, and its one report."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "posfed_pipeline.cli",
            "bench",
            *args,
            "--quiet",
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (report,) = json.loads(out.read_text())
    return result, report


def test_bench_posfed_small_run_loses_and_duplicates_nothing(tmp_path):
    args = ["--mode", "posfed", "--terminals", "2", "--rate", "2", "--duration", "3"]
    # Two trading days compressed into the run: receipts of three business days.
    result, report = bench(tmp_path / "bench.json", *args, "--idle", "2", "--days", "2")
    assert report["mode"] == "posfed"
    # The idle phase: every process measured, in cores and MB (their values are the bench's).
    idle = report["idle"]
    assert set(idle["cores_by_process"]) == set(idle["rss_mb_by_process"]) >= {"daemon"}
    assert idle["seconds"] >= 2 and all(mb > 0 for mb in idle["rss_mb_by_process"].values())
    assert report["sent"] == 6
    assert report["dat_files"] == report["sent"]
    assert report["lost"] == 0
    assert report["duplicated"] == 0
    assert report["db_rows"] == report["sent"]
    # The checkout: no run per batch; each terminal-day's recording run, waited for, succeeded.
    assert report["runs"] == 0 and report["runs_by_status"] == {}
    assert set(report["recording_runs_by_status"]) == {"SUCCESS"}
    assert report["latency"]["p50"] is not None  # measured, whatever its value
    # Memory at each simulated midnight, every process.
    days = report["rss_mb_by_simulated_day"]
    assert [d["day"] for d in days] == sorted({d["day"] for d in days}) and len(days) >= 2
    assert all(d["rss_mb"]["daemon"] > 0 for d in days)
    # The printed report says the same.
    lines = {line.split("  ")[0]: line.split()[-1] for line in result.stdout.splitlines() if line}
    assert lines["lost"] == "0"
    assert lines["duplicated"] == "0"
    assert "RSS MB day 2" in lines


def test_bench_backlog_drains_beside_co_located_load_and_is_profiled(tmp_path):
    """``--backlog`` drains while the others sell (and the run waits for it), ``--load`` runs
    beside the store with its CPU apart, ``--profile`` writes the CPU table. Functional only."""
    profile = tmp_path / "profile"
    args = ["--terminals", "3", "--rate", "2", "--duration", "5", "--backlog", "20"]
    result, report = bench(tmp_path / "bench.json", *args, "--load", "1", "--profile", str(profile))
    # The backlog: every file once, drained, timed; the others measured meanwhile.
    assert (report["backlog_files"], report["backlog_terminal"]) == (20, "butcher_1")
    assert (report["backlog_lost"], report["backlog_duplicated"]) == (0, 0)
    assert report["backlog_drain_seconds"] > 0 and report["backlog_files_per_second"] > 0
    during = report["others_latency_during_drain"]
    assert during["until"] == "drained" and during["receipts"] >= 1
    assert report["sent"] >= 10 and report["lost"] == 0 and report["duplicated"] == 0
    assert report["db_rows"] == report["sent"]
    # The load ran beside it, and its CPU is its own.
    assert report["load_processes"] == 1 and report["load_cpu_seconds"] > 1
    # Every Python process the bench started was sampled; the table says where CPU went.
    table = (profile / "cpu-table.md").read_text()
    assert report["profile_table"] == str(profile / "cpu-table.md")
    for role in ("daemon", "code server", "fast path", "run worker"):
        assert f"### {role} (pid " in table
    assert "| inclusive share | function | file |" in table
    assert list(profile.glob("fast-path-*.txt"))
    lines = {
        line.split("  ")[0]: line.split("  ")[-1].strip() for line in result.stdout.splitlines()
    }
    assert lines["co-located load"] == "1 busy processes"
    assert lines["backlog lost/duplicated"] == "0/0"
    assert "backlog drained in" in lines and "load CPU s" in lines
    assert f"CPU table by process (py-spy): {profile / 'cpu-table.md'}" in result.stdout


@pytest.mark.terminal_servers
def test_bench_through_real_servers_with_one_terminal_in_trouble(tmp_path):
    """The delivery and isolation scenarios run end to end: SMB writes with a flooded inbox,
    SFTP uploads with a share that hangs. Functional only: the figures are the bench's job."""
    for delivery, isolate in (("smb", "flood"), ("sftp", "hung")):
        result, report = bench(
            tmp_path / f"{delivery}.json",
            *["--terminals", "3", "--rate", "2", "--duration", "3", "--delivery", delivery],
            *["--isolate", isolate, "--flood-files", "40"],
        )
        assert report["delivery"] == delivery
        assert report["isolated"].startswith(("butcher_1: 40 files", "butcher_1: its share"))
        assert report["sent"] == 6 and report["lost"] == 0 and report["duplicated"] == 0
        assert "terminal in trouble" in result.stdout


@pytest.mark.postgres
def test_bench_stores_loads_one_central_database_from_several_stores_exactly(tmp_path):
    """``--stores K``: K store processes sell and sync into one PostgreSQL central database of the
    bench's own; every receipt arrives once and every settlement adds up."""
    out = tmp_path / "chain.json"
    result = subprocess.run(
        [sys.executable, "-m", "posfed_pipeline.cli", "bench", "--stores", "3"]
        + ["--terminals", "4", "--rate", "4", "--duration", "3", "--quiet", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["stores"] == 3 and len(report["per_store"]) == 3
    assert report["receipts"] >= 3 * 4 * 2  # most of 4/s for 3 s in each store
    assert (report["in_register"], report["lost"], report["duplicated"]) == (
        report["receipts"],
        0,
        0,
    )
    assert report["settlement_exact_per_store"] and report["chain_settlement_exact"]
    assert all(s["in_register"] == s["accepted"] for s in report["per_store"].values())
    assert "lost 0, duplicated 0" in result.stdout
