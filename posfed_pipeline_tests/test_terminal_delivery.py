"""Receipts as tills really deliver them: through a real Samba server, a real OpenSSH SFTP
server, and an inbox on a network mount (sshfs), into the real fast path (trigger + warm run
workers + Dagster runs).

Every way a till writes (``WRITE_STYLES``: plain; slow, chunks over seconds on one handle;
pre-sized, zero-filled then written; temp name then rename; written, closed, re-opened and
appended), a test each over SMB and over SFTP, must be delivered exactly once, nothing
quarantined. Latency is measured by
``posfed bench --delivery smb|sftp``, not asserted here.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from posfed_dev.faults import FaultProxy
from posfed_dev.terminal_servers import (
    WRITE_STYLES,
    SambaServer,
    SftpServer,
    SshfsMount,
    chroot_safe_folder,
    sftp_deliver,
    smb_deliver,
)

from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.inbox_sensors import LISTING_TIMEOUT_SECONDS
from posfed_pipeline.fastpath.service import start_fastpath
from posfed_pipeline.names import RECEIPTS_JOB, inbox_sensor_name
from posfed_pipeline_tests.support.receipts import receipt_doc
from posfed_pipeline_tests.support.stores import open_instance_store

# Real smbd, sshd and mounts: `make check` leaves it out.
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow, pytest.mark.terminal_servers]


@pytest.fixture
def store_dir():
    """A store whose terminal folders sshd accepts as chroots (root-owned up to /)."""
    root = chroot_safe_folder("store-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _open_store(root: Path, monkeypatch, **overrides):
    return open_instance_store(root, monkeypatch, intake={"stability_seconds": 0.3}, **overrides)


def _doc(receipt_id: str, terminal) -> bytes:
    now = datetime.now(terminal.timezone).replace(microsecond=0).isoformat()
    return json.dumps(
        receipt_doc(receipt_id, terminal.id, terminal.department, timestamp=now), indent=1
    ).encode()


def _dat(config, terminal, receipt_id: str) -> Path:
    day = datetime.now(terminal.timezone).strftime("%Y%m%d")
    return config.dat_dir / day / f"scon{terminal.department}{receipt_id}.dat"


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _assert_each_delivered_once(config, sent: dict[str, list[str]]) -> None:
    """Every receipt: accepted once, one .dat, its file archived once; nothing quarantined or
    left over; every run a success. (A file a run found still being written is left in the
    inbox and carried again by a later run: runs may share a file, receipts are never doubled.)
    """
    instance = dg.DagsterInstance.get()
    _wait(lambda: all(r.is_finished for r in instance.get_runs()), 60, "every run to finish")
    runs = [r for r in instance.get_runs() if r.job_name == RECEIPTS_JOB]
    # The fast path's checkout took them: any run (a recording run, one for a batch the
    # checkout handed on, a sensor's) succeeded.
    assert {r.status for r in runs} <= {dg.DagsterRunStatus.SUCCESS}
    ledger = open_ledger(config.home)
    for terminal_id, receipt_ids in sent.items():
        terminal = config.terminal(terminal_id)
        names = sorted(f"{r}.json" for r in receipt_ids)
        archived = sorted(p.name for p in terminal.archive_root.rglob("*") if p.is_file())
        assert archived == names
        assert not [p for p in terminal.quarantine.rglob("*") if p.is_file()]
        assert sorted(p.name for p in terminal.inbox.iterdir()) == []
        day = datetime.now(terminal.timezone).date()
        accepted = ledger.receipts(terminal_id=terminal_id, business_day=day)
        assert sorted(r.receipt_id for r in accepted) == sorted(receipt_ids)
        dats = sorted(p.name for p in (config.dat_dir / f"{day:%Y%m%d}").iterdir())
        for receipt_id in receipt_ids:
            assert dats.count(f"scon{terminal.department}{receipt_id}.dat") == 1


@pytest.mark.parametrize("style", WRITE_STYLES)
def test_receipts_written_over_smb_arrive_once(style, store_dir, monkeypatch):
    """Two tills at once, each writing two receipts through Samba in one way."""
    config, dagster_home = _open_store(store_dir, monkeypatch)
    shares = {t.id: t.inbox for t in config.terminals}
    fastpath = start_fastpath(config, dagster_home, workers=2)
    sent: dict[str, list[str]] = {t.id: [] for t in config.terminals}
    try:
        with SambaServer(shares) as samba:

            def till(terminal) -> None:  # one till per terminal, all at once
                connection: dict = {}
                for n in range(2):
                    receipt_id = f"S{WRITE_STYLES.index(style)}{n}{terminal.department}"
                    smb_deliver(
                        samba,
                        terminal.id,
                        f"{receipt_id}.json",
                        _doc(receipt_id, terminal),
                        style,
                        connection_cache=connection,
                    )
                    sent[terminal.id].append(receipt_id)

            failures = []

            def run_till(terminal) -> None:
                try:
                    till(terminal)
                except Exception as exc:
                    failures.append(f"{terminal.id}: {exc!r}")

            tills = [threading.Thread(target=run_till, args=(t,)) for t in config.terminals]
            for thread in tills:
                thread.start()
            for thread in tills:
                thread.join(timeout=120)
            assert not failures
            _wait(
                lambda: all(
                    _dat(config, config.terminal(t), r).exists()
                    for t, ids in sent.items()
                    for r in ids
                ),
                60,
                "every .dat file",
            )
            _wait(
                lambda: not any(any(t.inbox.iterdir()) for t in config.terminals),
                30,
                "empty inboxes",
            )
    finally:
        fastpath.stop()
    assert sum(len(ids) for ids in sent.values()) == 4
    _assert_each_delivered_once(config, sent)


@pytest.mark.parametrize("style", WRITE_STYLES)
def test_receipts_uploaded_by_sftp_into_a_chrooted_inbox_arrive_once(style, store_dir, monkeypatch):
    config, dagster_home = _open_store(store_dir, monkeypatch)
    terminal = config.terminal("bakery_1")
    fastpath = start_fastpath(config, dagster_home, workers=2)
    sent = {terminal.id: []}
    try:
        with SftpServer(terminal.folder) as sshd, sshd.client() as sftp:
            # The till sees its own terminal folder only, and starts in its inbox.
            assert sftp.normalize(".") == "/inbox"
            assert "butcher_1" not in sftp.listdir("/")
            assert sftp.listdir("/..") == sftp.listdir("/")
            for n in range(2):
                receipt_id = f"F{WRITE_STYLES.index(style)}{n}"
                sftp_deliver(sftp, f"{receipt_id}.json", _doc(receipt_id, terminal), style)
                sent[terminal.id].append(receipt_id)
            _wait(
                lambda: all(_dat(config, terminal, r).exists() for r in sent[terminal.id]),
                60,
                "every .dat file",
            )
            _wait(lambda: not any(terminal.inbox.iterdir()), 30, "an empty inbox")
    finally:
        fastpath.stop()
    _assert_each_delivered_once(config, sent)


def test_an_inbox_on_a_network_mount_is_polled_and_delivers(store_dir, monkeypatch):
    """The inbox is a folder of a file server (here: SFTP) mounted with sshfs. The till writes
    on the server's side: inotify on the mount sees nothing, so the terminal says
    ``watch = "poll"``. Its archive stays on the local disk (a copy across file systems)."""
    nas = store_dir / "nas"  # the file server's folder, chroot-safe
    (nas / "bakery_1").mkdir(parents=True)
    nas.chmod(0o755)
    root = store_dir / "store"
    root.mkdir()
    inbox = root / "mnt" / "bakery_1" / "inbox"
    terminals = [
        {
            "id": "bakery_1",
            "department": "10",
            "tenant": "Bakkerij",
            "inbox": str(inbox),
            "watch": "poll",
            "poll_interval_seconds": 0.5,
        },
        {"id": "butcher_1", "department": "20", "tenant": "Slagerij"},
    ]
    with SftpServer(nas, start="/") as sshd, SshfsMount(sshd, "/bakery_1", inbox, port=sshd.port):
        config, dagster_home = _open_store(root, monkeypatch, terminals=terminals)
        terminal = config.terminal("bakery_1")
        assert terminal.delivery.watch == "poll"
        fastpath = start_fastpath(config, dagster_home, workers=2)
        try:
            sent = {terminal.id: []}
            for n in range(3):
                receipt_id = f"N{n}"
                # Written on the server, as a till writing to the NAS would.
                (nas / "bakery_1" / f"{receipt_id}.json").write_bytes(_doc(receipt_id, terminal))
                sent[terminal.id].append(receipt_id)
            _wait(
                lambda: all(_dat(config, terminal, r).exists() for r in sent[terminal.id]),
                30,
                "every .dat file",
            )
            _wait(lambda: not any((nas / "bakery_1").iterdir()), 30, "an empty share folder")
        finally:
            fastpath.stop()
        _assert_each_delivered_once(config, sent)


def test_a_share_that_hangs_holds_up_its_own_terminal_only(store_dir, monkeypatch):
    """bakery_1's inbox is a mounted share whose server stops answering (the link drops every
    packet: no reset, so every access to the mount hangs). While a listing of it is still
    hanging, butcher_1's receipts are delivered, and bakery_1's sensor says what is wrong
    instead of holding the code server's threads."""
    nas = store_dir / "nas"
    (nas / "bakery_1").mkdir(parents=True)
    root = store_dir / "store"
    root.mkdir()
    mount = root / "mnt" / "bakery_1" / "inbox"
    terminals = [
        {"id": "bakery_1", "department": "10", "inbox": str(mount), "watch": "poll"},
        {"id": "butcher_1", "department": "20"},
    ]
    with (
        SftpServer(None, start="/") as sshd,
        FaultProxy("127.0.0.1", sshd.port) as link,
        SshfsMount(sshd, str(nas / "bakery_1"), mount, port=link.port, give_up_after=120),
    ):
        config, dagster_home = _open_store(root, monkeypatch, terminals=terminals)
        bakery, butcher = config.terminal("bakery_1"), config.terminal("butcher_1")
        fastpath = start_fastpath(config, dagster_home, workers=2)
        try:
            (nas / "bakery_1" / "H0.json").write_bytes(_doc("H0", bakery))
            _wait(lambda: _dat(config, bakery, "H0").exists(), 30, "the share's first receipt")

            link.partition()
            listing = threading.Thread(target=lambda: list(mount.iterdir()), daemon=True)
            listing.start()
            for n in range(3):
                (butcher.inbox / f"L{n}.json").write_bytes(_doc(f"L{n}", butcher))
            _wait(
                lambda: all(_dat(config, butcher, f"L{n}").exists() for n in range(3)),
                60,
                "butcher_1's receipts",
            )
            assert listing.is_alive(), "the share answered again: the test proved nothing"

            defs = build_definitions(config)
            sensor = defs.resolve_sensor_def(inbox_sensor_name(bakery.id))
            started = time.monotonic()
            tick = sensor(dg.build_sensor_context(instance=dg.DagsterInstance.get()))
            assert time.monotonic() - started < LISTING_TIMEOUT_SECONDS + 5
            assert "unreadable" in tick.skip_reason.skip_message
            assert "answer" in tick.skip_reason.skip_message
            other = defs.resolve_sensor_def(inbox_sensor_name(butcher.id))
            assert other(dg.build_sensor_context(instance=dg.DagsterInstance.get())).skip_reason
        finally:
            link.heal()
            fastpath.stop()
        _assert_each_delivered_once(config, {"butcher_1": ["L0", "L1", "L2"]})
