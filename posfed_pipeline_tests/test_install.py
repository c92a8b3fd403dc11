"""posfed installs from its wheel and runs from any folder, not only from a checkout.

The wheel is built from a copy of the source tree (the checkout stays clean) and installed,
without its dependencies, into a fresh virtual environment that borrows this one's installed
dependencies through a .pth file: what is tested is the wheel's own content (the package, its
instance profiles, workspace and default .dat spec as package data), not a download.
"""

from __future__ import annotations

import json
import shutil
import signal
import site
import subprocess
import sys
import uuid
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from posfed_pipeline_tests.support.processes import free_port, kill_marked, wait_for
from posfed_pipeline_tests.support.receipts import receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import write_store_config

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = pytest.mark.slow

BUILD_TIMEOUT_SECONDS = 300


def _wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    shutil.copytree(
        REPO_ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".posfed", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(dist), str(source)],
        check=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    [wheel] = dist.glob("posfed-*.whl")
    return wheel


def _venv_with(wheel: Path, root: Path) -> Path:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        + ["--no-deps", str(wheel)],
        check=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    [own] = venv.glob("lib/python3*/site-packages")
    (own / "borrowed-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_wheel_installs_and_the_demo_runs_from_another_folder(tmp_path):
    wheel = _wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        packages = {name.split("/")[0] for name in archive.namelist()}
        shipped = set(archive.namelist())
    # The product only: the development package (bench, chaos, simulated tills) stays out.
    assert packages == {"posfed_pipeline", f"posfed-{wheel.name.split('-')[1]}.dist-info"}
    assert "posfed_pipeline/fastpath/warm_up_receipt.json" in shipped
    assert "posfed_pipeline/core/dat/dat_spec.schema.json" in shipped
    venv = _venv_with(wheel, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    imported = subprocess.run(
        [str(venv / "bin/python"), "-c", "import posfed_pipeline; print(posfed_pipeline.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert imported.startswith(str(venv)), imported  # the wheel's copy, not the checkout's

    # A store that names no .dat spec: the one the wheel ships.
    config_path = write_store_config(elsewhere / "posfed.toml", elsewhere / "state", dat={})
    marker = uuid.uuid4().hex
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "POSFED_CONFIG": str(config_path),
        "POSFED_TEST_PROCESS": marker,
    }
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [str(venv / "bin/posfed"), "demo", "--no-simulator", "--port", str(port)],
            cwd=elsewhere,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "fast path up" in log.read_text(), 180, "the demo's fast path", log)
        inbox = elsewhere / "state" / "terminals" / "bakery_1" / "inbox"
        now = datetime.now().astimezone().replace(microsecond=0)
        (inbox / "W1.json").write_text(json.dumps(receipt_doc("W1", timestamp=now.isoformat())))
        dat_dir = elsewhere / "state" / "dat"
        [dat] = wait_for(lambda: list(dat_dir.rglob("*.dat")), 120, "the receipt's .dat", log)
        assert dat.read_bytes()  # rendered with the packaged default spec
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
    finally:
        left = kill_marked("POSFED_TEST_PROCESS", marker)
        if demo.poll() is None:
            demo.kill()
    assert left == []
