"""posfed installs from its wheel and runs from any folder, not only from a checkout.

The wheel is built once from a copy of the source tree (the checkout stays clean) and installed,
without its dependencies, into a fresh virtual environment that borrows this one's installed
dependencies through a .pth file, posfed and posfed-dev left out: what is tested is the wheel's
own content (the package, its instance profiles, workspace, .dat specs and demo store as
package data), not a download, and nothing of the development package.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import signal
import site
import subprocess
import sys
import time
import uuid
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from posfed_pipeline import packaged
from posfed_pipeline.core.config import load_config
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
            ".git", ".venv*", ".posfed", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
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
    (own / "borrowed-dependencies.pth").write_text(str(_dependencies_only(root / "deps")) + "\n")
    return venv


def _dependencies_only(folder: Path) -> Path:
    """This environment's installed packages, as links in one folder, without posfed's and
    posfed-dev's (their metadata would show the checkout's entry points to the wheel)."""
    folder.mkdir()
    for packages in map(Path, site.getsitepackages()):
        for entry in packages.iterdir():
            name = entry.name.lower()
            if name.startswith(("posfed", "__editable__")) or (folder / entry.name).exists():
                continue
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel, and a fresh virtual environment with it installed (built once)."""
    root = tmp_path_factory.mktemp("install")
    wheel = _wheel(root)
    return wheel, _venv_with(wheel, root)


def _env(venv: Path, home: Path, marker: str, **more: str) -> dict[str, str]:
    return {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "POSFED_TEST_PROCESS": marker,
        **more,
    }


def test_the_wheel_installs_and_the_demo_runs_from_another_folder(tmp_path, installed):
    wheel, venv = installed
    with zipfile.ZipFile(wheel) as archive:
        packages = {name.split("/")[0] for name in archive.namelist()}
        shipped = set(archive.namelist())
    # The product only: the development package (bench, chaos, simulate) stays out.
    assert packages == {"posfed_pipeline", f"posfed-{wheel.name.split('-')[1]}.dist-info"}
    assert "posfed_pipeline/fastpath/warm_up_receipt.json" in shipped
    assert "posfed_pipeline/core/dat/dat_spec.schema.json" in shipped
    # The demo store and its simulated tills.
    assert {"posfed_pipeline/demo/posfed.toml", "posfed_pipeline/demo/tills.py"} <= shipped
    assert "posfed_pipeline/dat_specs/scon_default.json" in shipped
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
    env = _env(venv, tmp_path, marker, POSFED_CONFIG=str(config_path))
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


def test_posfed_demo_in_an_empty_folder_writes_the_demo_store_out_and_runs_it(
    tmp_path, installed, monkeypatch
):
    """pip install, then go: the bare wheel (no posfed-dev) in a folder with no posfed.toml
    and no POSFED_CONFIG writes the demo store out, its tills drop receipts, .dat files come."""
    _, venv = installed
    python = str(venv / "bin/python")
    bare = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('posfed_dev'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert bare.stdout.strip() == "None"  # the simulated tills are the product's own
    empty = tmp_path / "empty"
    empty.mkdir()
    marker = uuid.uuid4().hex
    port = free_port()
    log = tmp_path / "demo.log"
    started = time.monotonic()
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [str(venv / "bin/posfed"), "demo", "--port", str(port)],
            cwd=empty,
            env=_env(venv, tmp_path, marker),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        dat_dir = empty / ".posfed" / "dat"
        wait_for(lambda: list(dat_dir.rglob("*.dat")), 300, "a .dat from the demo's tills", log)
        first_dat_seconds = time.monotonic() - started
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0
    finally:
        left = kill_marked("POSFED_TEST_PROCESS", marker)
        if demo.poll() is None:
            demo.kill()
    assert left == []
    said = log.read_text()
    assert f"the demo store is written into {empty}: posfed.toml, dat_specs/" in said
    assert f"20 terminals, state in {empty / '.posfed'}" in said
    assert "skipping" not in said  # no half-found plugin
    print(f"first .dat {first_dat_seconds:.0f} s after `posfed demo` started")

    # What was written is the demo store posfed ships, byte for byte, and loads as it is.
    written = empty / "posfed.toml"
    assert written.read_bytes() == packaged.demo_store_file().read_bytes()
    specs = [spec.name for spec in packaged.dat_spec_files()]
    assert "scon_default.json" in specs
    _, mismatch, errors = filecmp.cmpfiles(
        empty / "dat_specs", packaged.default_dat_spec().parent, specs, shallow=False
    )
    assert (mismatch, errors) == ([], [])
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    config = load_config(written)
    assert len(config.terminals) == 20
    assert config.home == empty / ".posfed"
    assert config.dat_spec == empty / "dat_specs" / "scon_default.json"
    checked = subprocess.run(
        [str(venv / "bin/posfed"), "config", "check"],
        cwd=empty,
        env=_env(venv, tmp_path, marker),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    assert "20 in 10 departments" in checked.stdout and "embedded SQLite" in checked.stdout
