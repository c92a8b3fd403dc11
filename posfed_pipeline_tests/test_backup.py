"""Backup and restore of a store server's local state, through the commands an operator runs."""

import io
import subprocess
import sys
import tarfile
from datetime import date
from pathlib import Path

import pytest

from posfed_pipeline.core.config import load_config
from posfed_pipeline.core.state import quarantine
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline_tests.support.daemon import sensor_and_runs
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.stores import write_store_config

WHEN = "2026-11-20T10:15:00+01:00"
DAY = date(2026, 11, 20)


def _posfed(config_path, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "posfed_pipeline.cli", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _files(home: Path) -> dict[str, bytes]:
    """Every file of the state that is not a SQLite side file, by relative path."""
    return {
        p.relative_to(home).as_posix(): p.read_bytes()
        for p in home.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm", ".db"))
    }


@pytest.mark.slow
def test_a_restored_store_knows_every_receipt_and_file_and_bills_nothing_twice(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    home = tmp_path / "state"
    config_path = write_store_config(tmp_path / "posfed.toml", home)
    config = load_config(config_path)
    config.ensure_folders()
    bakery = config.terminal("bakery_1")
    for n in range(3):
        drop_receipt(bakery.inbox, receipt_doc(f"K{n}", timestamp=WHEN))
    drop_receipt(bakery.inbox, receipt_doc("KBAD", timestamp=WHEN, total="1.00"))
    sensor_and_runs(config)
    waiting = drop_receipt(bakery.inbox, receipt_doc("K9", timestamp=WHEN))  # not taken yet
    before_files = _files(home)
    before_ledger = {
        r.receipt_id for r in open_ledger(home).receipts(terminal_id="bakery_1", business_day=DAY)
    }
    assert before_ledger == {"K0", "K1", "K2"}

    made = _posfed(config_path, "backup", "create", str(tmp_path / "b.tar.gz"))
    assert made.returncode == 0, made.stderr
    assert "databases)" in made.stdout

    # The disk is lost: a new, empty home. Restore, verified.
    home.rename(tmp_path / "lost")
    restored = _posfed(config_path, "backup", "restore", str(tmp_path / "b.tar.gz"))
    assert restored.returncode == 0, restored.stderr
    assert _files(home) == before_files
    assert {
        r.receipt_id for r in open_ledger(home).receipts(terminal_id="bakery_1", business_day=DAY)
    } == before_ledger
    assert [q.name for q in quarantine.quarantined_files(bakery)] == ["KBAD.json"]
    assert (bakery.inbox / waiting.name).exists()

    # The restored store carries on: the waiting file is taken, and K0 sent again by the till
    # is a re-delivery the restored ledger recognises; its .dat is not written twice.
    dat_k0 = config.dat_dir / "20261120" / "scon10K0.dat"
    first_bytes = dat_k0.read_bytes()
    dat_k0.unlink()  # the billing software imported (moved) it
    drop_receipt(bakery.inbox, receipt_doc("K0", timestamp=WHEN), name="K0-again.json")
    sensor_and_runs(load_config(config_path))
    assert (config.dat_dir / "20261120" / "scon10K9.dat").exists()
    assert not dat_k0.exists()
    assert first_bytes  # it was delivered once, before the loss

    # Restoring over a home that is in use needs --replace; the old one is kept, renamed.
    refused = _posfed(config_path, "backup", "restore", str(tmp_path / "b.tar.gz"))
    assert refused.returncode == 2 and "--replace" in refused.stderr
    replaced = _posfed(config_path, "backup", "restore", str(tmp_path / "b.tar.gz"), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "before-restore" in replaced.stdout
    assert [p.name for p in tmp_path.glob("state.before-restore-*")]


@pytest.mark.slow
def test_a_damaged_backup_is_refused_and_the_home_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("POSFED_HOME", raising=False)
    home = tmp_path / "state"
    config_path = write_store_config(tmp_path / "posfed.toml", home)
    config = load_config(config_path)
    config.ensure_folders()
    drop_receipt(config.terminal("bakery_1").inbox, receipt_doc("D1", timestamp=WHEN))
    sensor_and_runs(config)
    assert _posfed(config_path, "backup", "create", str(tmp_path / "b.tar.gz")).returncode == 0

    # Rewrite one archived receipt inside the backup: its checksum no longer matches.
    with (
        tarfile.open(tmp_path / "b.tar.gz") as good,
        tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as bad,
    ):
        for member in good.getmembers():
            data = good.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("D1.json"):
                data = data.replace(b"D1", b"D2")
            bad.addfile(member, io.BytesIO(data) if data is not None else None)
    home.rename(tmp_path / "lost")
    refused = _posfed(config_path, "backup", "restore", str(tmp_path / "bad.tar.gz"))
    assert refused.returncode == 1
    assert "damaged" in refused.stderr and "D1.json: checksum differs" in refused.stderr
    assert not home.exists()
    assert _posfed(config_path, "backup", "restore", str(tmp_path / "nope.tar.gz")).returncode == 2
