"""Long-running services stop cleanly and never step on each other: the fast path's socket
lock, and a demo that leaves nothing behind however it is started and however it ends."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from posfed_pipeline_tests.support.processes import (
    free_port,
    kill_marked,
    processes_marked,
    wait_for,
)
from posfed_pipeline_tests.support.receipts import receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.servers import dagster_process
from posfed_pipeline_tests.support.stores import write_store_config

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = pytest.mark.slow


def _store_env(tmp_path: Path) -> dict[str, str]:
    # Metrics on a port of their own: never another demo's 9464.
    metrics = {"listen": f"127.0.0.1:{free_port()}"}
    config_path = write_store_config(tmp_path / "posfed.toml", tmp_path / "home", metrics=metrics)
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


# --- supervision ------------------------------------------------------------------------------


class _Till(threading.Thread):
    """Drops a receipt into the store's terminals in turn, once a second, as the tills would,
    until stopped; remembers each receipt's .dat file."""

    def __init__(self, config, prefix: str):
        super().__init__(daemon=True)
        self.config = config
        self.prefix = prefix
        self.sent: dict[str, Path] = {}  # receipt id -> its .dat
        self.halt = threading.Event()
        self._lock = threading.Lock()

    def drop(self) -> tuple[str, Path]:
        with self._lock:
            return self._drop()

    def _drop(self) -> tuple[str, Path]:
        terminal = self.config.terminals[len(self.sent) % len(self.config.terminals)]
        now = datetime.now(terminal.timezone).replace(microsecond=0)
        doc = receipt_doc(
            f"{self.prefix}{len(self.sent):04d}",
            terminal.id,
            terminal.department,
            timestamp=now.isoformat(),
        )
        dat_file = (
            self.config.dat_dir
            / now.strftime("%Y%m%d")
            / f"scon{terminal.department}{doc['receiptId']}.dat"
        )
        self.sent[doc["receiptId"]] = dat_file
        path = terminal.inbox / f"{doc['receiptId']}.json"
        with open(path, "w") as handle:  # as a POS does: open, write, close
            handle.write(json.dumps(doc))
        return doc["receiptId"], dat_file

    def run(self) -> None:
        while not self.halt.wait(1.0):
            self.drop()


def _services(dagster_home: Path) -> dict:
    from posfed_pipeline.processes.services import state_file
    from posfed_pipeline.processes.supervisor import read_state

    try:
        return read_state(state_file(dagster_home))["services"]
    except (OSError, ValueError):
        return {}


def _metrics_served(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return b"posfed_service_restarts_total" in answer.read()
    except OSError:
        return False


def _warm_workers(fastpath_pid: int) -> set[int]:
    from posfed_pipeline.processes.supervisor import children

    found = set()
    for pid in children(fastpath_pid):
        with contextlib.suppress(OSError):
            if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
    return found


def _ui_can_plan_a_run(port: int) -> bool:
    """The UI asks the code server for a job's execution plan, as its Launchpad does."""
    import urllib.request

    query = (
        '{ executionPlanOrError(pipeline: {repositoryLocationName: "posfed", '
        'repositoryName: "__repository__", pipelineName: "receipts_job"}, mode: "default") '
        "{ __typename } }"
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            reply = json.loads(answer.read())
    except (OSError, ValueError):
        return False
    return reply.get("data", {}).get("executionPlanOrError", {}).get("__typename") == (
        "ExecutionPlan"
    )


def _inbox_sensors_ticked_since(instance, since: float) -> bool:
    """Every terminal's sensor has ticked since ``since``, and not failed."""
    states = [
        s for s in instance.all_instigator_state() if s.instigator_name.endswith("_inbox_sensor")
    ]
    for state in states:
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
        if not ticks or ticks[0].timestamp < since or ticks[0].status.value == "FAILURE":
            return False
    return bool(states)


def test_the_demo_restarts_whatever_is_killed_and_every_receipt_gets_its_dat_once(
    tmp_path, monkeypatch
):
    """SIGKILL the webserver, the daemon, the code server, the fast path, a warm worker and the
    metrics of a running demo, one after another, while receipts arrive: each comes back and serves
    again, the demo says what happened, receipts dropped right after each kill get their .dat
    within seconds, and in the end every receipt was billed exactly once."""
    import dagster as dg
    from posfed_dev.chaos import BillingImporter

    from posfed_pipeline.core import central_db
    from posfed_pipeline.core.config import load_config
    from posfed_pipeline.fastpath.launcher import ask_pool, default_socket_path
    from posfed_pipeline.processes.services import code_server_socket_path
    from posfed_pipeline.processes.supervisor import unix_socket_answers

    env = _store_env(tmp_path)
    config = load_config(env["POSFED_CONFIG"])
    dagster_home = config.home / "dagster_home"
    # Where the demo's launcher finds the pool (a short /tmp name when the home is deep).
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    pool_socket = default_socket_path()
    port = free_port()
    log = tmp_path / "demo.log"
    command = ["posfed", "demo", "--no-simulator", "--port", str(port)]

    def pool_ready() -> bool:
        stats = ask_pool({"op": "stats"}, pool_socket, timeout=5.0) or {}
        return stats.get("ready") == 2 and stats.get("background_ready") == 1

    def said(text: str) -> bool:
        return text in log.read_text(errors="replace")

    till = _Till(config, "S")
    importer = BillingImporter(config.dat_dir, tmp_path / "billing")

    def kill_and_see_it_back(kind: str) -> None:
        services = _services(dagster_home)
        if kind == "warm worker":
            victim = min(_warm_workers(services["fastpath"]["pid"]))
        else:
            victim = services[kind]["pid"]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        receipt_id, dat_file = till.drop()
        if kind == "warm worker":
            line = f"run worker (pid {victim}) was killed by SIGKILL; a new one is starting"
            wait_for(lambda: said(line), 60, "the pool to replace its worker", log)
            wait_for(pool_ready, 120, "a warm worker in its place", log)
        else:
            line = f"posfed demo: {kind} (pid {victim}) was killed by SIGKILL; restarting it in 1 s"
            wait_for(lambda: said(line), 30, f"the demo to notice the {kind} died", log)
            wait_for(
                lambda: (
                    _services(dagster_home)[kind]["pid"] not in (None, victim)
                    and _services(dagster_home)[kind]["state"] == "running"
                ),
                30,
                f"the {kind} to be restarted",
                log,
            )
        # ... and serving again.
        if kind == "webserver":
            wait_for(lambda: _serving(port), 120, "the web UI to answer again", log)
        elif kind == "daemon":
            wait_for(
                lambda: _inbox_sensors_ticked_since(instance, killed_at),
                120,
                "the daemon's sensors to tick again",
                log,
            )
        elif kind == "code-server":
            socket_path = code_server_socket_path(dagster_home)
            wait_for(lambda: unix_socket_answers(socket_path), 120, "the code server", log)
            back_at = time.time()
            # The daemon and the UI find the new code server by themselves.
            wait_for(
                lambda: _inbox_sensors_ticked_since(instance, back_at),
                60,
                "the sensors to tick against the new code server",
                log,
            )
            wait_for(lambda: _ui_can_plan_a_run(port), 60, "the UI to plan runs again", log)
        elif kind == "fastpath":
            wait_for(lambda: log.read_text().count("fast path up") == 2, 120, "it again", log)
            wait_for(pool_ready, 120, "its warm workers", log)
        elif kind == "metrics":
            url = f"http://{config.metrics.listen}/metrics"
            wait_for(lambda: _metrics_served(url), 60, "the metrics served again", log)
        # The receipt that arrived right after the kill is billed all the same.
        wait_for(lambda: importer.billed(dat_file), 60, f"{receipt_id}'s .dat", log)

    with dagster_process(command, env=env, log_path=log) as demo:
        wait_for(
            lambda: _serving(port) and said("fast path up") and pool_ready(),
            240,
            "the demo's web UI, fast path and warm workers",
            log,
        )
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        importer.start()
        till.start()
        for kind in ("webserver", "daemon", "code-server", "fastpath", "warm worker", "metrics"):
            kill_and_see_it_back(kind)
        till.halt.set()
        till.join()
        wait_for(
            lambda: all(importer.billed(dat_file) for dat_file in till.sent.values()),
            120,
            "every receipt's .dat",
            log,
        )
        engine = central_db.make_engine(config.db_url)
        today = {
            terminal.id: datetime.now(terminal.timezone).date() for terminal in config.terminals
        }
        wait_for(
            lambda: (
                sum(central_db.count_receipts(engine, t, day) for t, day in today.items())
                == len(till.sent)
            ),
            120,
            "every receipt in the central database",
            log,
        )
        importer.stop()
        assert demo.poll() is None  # the demo never stopped
        restarts = {name: s["restarts"] for name, s in _services(dagster_home).items()}
        instance.dispose()
    assert restarts == {"code-server": 1, "fastpath": 1, "webserver": 1, "daemon": 1, "metrics": 1}
    # Billed exactly once each: no sale lost, none written again after it was imported.
    expected = {p.relative_to(config.dat_dir) for p in till.sent.values()}
    imported = importer.imported()
    assert set(imported) == expected
    assert set(imported.values()) == {1}
    assert demo.outlived == []


def test_sigterm_while_receipts_flow_stops_everything_the_demo_started(tmp_path):
    """The demo at 10 receipts/s, told to stop by SIGTERM (as a service manager would) in the
    middle of the flow: it exits, and nothing it started, however far down, is left running."""
    env = _store_env(tmp_path)
    marker = uuid.uuid4().hex
    port = free_port()
    log = tmp_path / "demo.log"
    posfed = str(Path(sys.executable).with_name("posfed"))
    dat_dir = tmp_path / "home" / "dat"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [posfed, "demo", "--simulator", "--rate", "10", "--port", str(port)],
            env={**env, "POSFED_TEST_PROCESS": marker},
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: _serving(port) and len(list(dat_dir.rglob("*.dat"))) >= 50,
            240,
            "the demo to bill 50 simulated receipts",
            log,
        )
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0
        left = processes_marked("POSFED_TEST_PROCESS", marker)
    finally:
        outlived = kill_marked("POSFED_TEST_PROCESS", marker)
        if demo.poll() is None:
            demo.kill()
    assert left == [], outlived
    assert "posfed demo: stopped" in log.read_text()


def test_a_taken_port_stops_the_demo_before_anything_starts(tmp_path):
    env = _store_env(tmp_path)
    posfed = str(Path(sys.executable).with_name("posfed"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = subprocess.run(
            [posfed, "demo", "--no-simulator", "--port", str(port)],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert demo.returncode == 2
    assert demo.stderr.startswith(
        f"posfed demo: port {port} on 127.0.0.1 is already in use (another posfed demo or "
        "Dagster UI?); start with --port N to use another port"
    ), demo.stderr
    # Nothing was started or even prepared: no store state, no Dagster instance.
    assert not (tmp_path / "home").exists()


def test_a_service_that_keeps_dying_is_restarted_ever_later_until_it_runs_a_minute(tmp_path):
    """1 s, 2 s, 4 s ... at most 30 s between restarts; a service that ran for a minute
    before it died is restarted after 1 s again. Each death is one line, and the state file
    says what happened."""
    from posfed_pipeline.core.base.clock import ManualClock
    from posfed_pipeline.processes.supervisor import Service, Supervisor, read_state

    clock = ManualClock()
    lines: list[str] = []
    state_file = tmp_path / "services.json"
    supervisor = Supervisor(
        [Service("flaky", [sys.executable, "-c", "raise SystemExit(3)"])],
        label="test",
        state_file=state_file,
        say=lines.append,
        clock=clock,
    )

    def die_and_wait() -> float:
        """Until the supervisor notices the process exited; the delay it announced."""
        pid = read_state(state_file)["services"]["flaky"]["pid"]
        said_before = len(lines)
        deadline = time.monotonic() + 30
        while len(lines) == said_before and time.monotonic() < deadline:
            supervisor.poll()
            time.sleep(0.05)
        found = re.fullmatch(
            rf"test: flaky \(pid {pid}\) exited with status 3; "
            r"restarting it in (\d+) s \(restart \d+\)",
            lines[-1],
        )
        assert found, lines[-1]
        return float(found[1])

    def restart_after(delay: float) -> None:
        pid = read_state(state_file)["services"]["flaky"]["pid"]
        clock.advance(delay - 0.5)
        supervisor.poll()
        assert read_state(state_file)["services"]["flaky"]["state"] == "restarting"
        clock.advance(0.5)
        supervisor.poll()
        assert lines[-1].startswith("test: flaky restarted (pid ")
        assert read_state(state_file)["services"]["flaky"]["pid"] != pid

    supervisor.start()
    try:
        delays = []
        for _ in range(7):
            delays.append(die_and_wait())
            restart_after(delays[-1])
        assert delays == [1, 2, 4, 8, 16, 30, 30]
        clock.advance(60)  # it "ran" a minute before it died this time
        assert die_and_wait() == 1
        state = read_state(state_file)["services"]["flaky"]
        assert state["restarts"] == 8
        assert state["last_exit"] == "exited with status 3"
    finally:
        supervisor.stop()
    assert read_state(state_file)["services"]["flaky"]["state"] == "stopped"


def test_a_second_supervisor_of_one_state_folder_is_refused_naming_the_first(tmp_path):
    from posfed_pipeline.processes.supervisor import AlreadySupervised, Supervisor

    def supervisor() -> Supervisor:
        return Supervisor([], label="posfed demo", state_file=tmp_path / "services.json")

    first = supervisor()
    first.claim()
    with pytest.raises(AlreadySupervised) as refused:
        supervisor().claim()
    assert str(refused.value) == (
        f"another posfed demo (pid {os.getpid()}) runs the services of {tmp_path}; stop it first"
    )
