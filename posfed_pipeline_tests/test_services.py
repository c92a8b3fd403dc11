"""Long-running services stop cleanly and never step on each other: the fast path's socket
lock, and a demo that leaves nothing behind however it is started and however it ends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from posfed_pipeline_tests.conftest import (
    REPO_ROOT,
    dagster_process,
    free_port,
    kill_marked,
    processes_marked,
    wait_for,
    write_store_config,
)

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = pytest.mark.slow


def _store_env(tmp_path: Path) -> dict[str, str]:
    config_path = write_store_config(tmp_path / "posfed.toml", tmp_path / "home")
    env = dict(os.environ, POSFED_CONFIG=str(config_path))
    for name in ("POSFED_HOME", "POSFED_DB_URL", "DAGSTER_HOME"):
        env.pop(name, None)
    return env


def test_a_second_fast_path_is_refused_and_the_first_keeps_serving(tmp_path, monkeypatch):
    from posfed_pipeline.fastpath.launcher import ask_pool, default_socket_path

    env = _store_env(tmp_path)
    first_log = tmp_path / "first.log"
    command = ["posfed", "fastpath", "--no-trigger", "--workers", "1"]
    with dagster_process(command, env=env, log_path=first_log) as first:
        wait_for(lambda: "fast path up" in first_log.read_text(), 120, "the fast path", first_log)
        second = subprocess.run(
            [str(Path(sys.executable).with_name("posfed")), "fastpath", "--no-trigger"],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        said = re.search(
            r"^posfed fastpath: another posfed fastpath \(pid (\d+)\) serves (\S+); stop it first$",
            second.stderr,
            re.MULTILINE,
        )
        assert said and int(said[1]) == first.pid, second.stderr
        socket_path = Path(said[2])
        # ...the socket every Dagster process of this instance's home asks.
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster_home"))
        assert socket_path == default_socket_path()
        # The first one's socket is still its own, and answers.
        assert first.poll() is None
        answer = ask_pool({"op": "health", "run_id": "none"}, socket_path)
    assert answer == {"ok": True, "status": "NOT_FOUND"}


def test_a_demo_started_in_the_background_stops_everything_on_sigint_or_when_killed(tmp_path):
    """Started as `posfed demo &` does (SIGINT ignored, inherited by what it starts): SIGINT
    still stops it and all it started; and a demo killed outright takes its children along."""
    env = _store_env(tmp_path)
    posfed = str(Path(sys.executable).with_name("posfed"))

    def start_demo(log: Path) -> tuple[subprocess.Popen, str]:
        marker = uuid.uuid4().hex
        port = free_port()
        with log.open("wb") as out:
            demo = subprocess.Popen(
                [posfed, "demo", "--no-simulator", "--port", str(port)],
                env={**env, "POSFED_TEST_PROCESS": marker},
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
            )

        def all_up() -> bool:
            text = log.read_text(errors="replace")
            return "fast path up" in text and _serving(port)

        wait_for(all_up, 180, "the demo's web UI and fast path", log)
        return demo, marker

    def gone(marker: str) -> bool:
        return not processes_marked("POSFED_TEST_PROCESS", marker)

    demo, marker = start_demo(tmp_path / "demo-sigint.log")
    try:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
        wait_for(lambda: gone(marker), 30, "every process of the demo to stop", tmp_path / "x")
    finally:
        left = kill_marked("POSFED_TEST_PROCESS", marker)
    assert left == []

    demo, marker = start_demo(tmp_path / "demo-kill.log")
    try:
        demo.kill()  # SIGKILL: the demo itself can stop nothing
        demo.wait(timeout=10)
        wait_for(lambda: gone(marker), 60, "the demo's children to follow it", tmp_path / "x")
    finally:
        left = kill_marked("POSFED_TEST_PROCESS", marker)
    assert left == []


def _serving(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False
