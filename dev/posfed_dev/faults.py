"""Real faults for the tests, ``posfed bench`` and ``posfed chaos``: a TCP fault proxy and a
throwaway PostgreSQL cluster. Tooling: the product never imports this module.

- ``FaultProxy`` sits between posfed and a database server (standard library only). It can
  *partition* the link (bytes are held, nothing is answered, nothing is reset: what a dropped
  WAN line or VPN looks like to both ends), *reset* every connection (RST), and add latency.
- ``ThrowawayPostgres`` is a PostgreSQL cluster of its own (``initdb`` + ``pg_ctl`` from the
  machine's PostgreSQL binaries) in a temp folder on a free port, so a test can stop and start
  the server without touching the shared one.
- ``hold_lock`` holds ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` on the receipt tables from a
  second session, as a DBA's long transaction would.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

RECEIPT_TABLES = ("pos_receipt", "pos_receipt_line", "pos_ingest_ledger")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the TCP fault proxy -----------------------------------------------------------------


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, proxy: FaultProxy, client: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()

    def run(self) -> None:
        try:
            # A connection made during a partition waits, unanswered, until it heals.
            while self.proxy.partitioned and not self.closed.is_set():
                time.sleep(0.02)
            if self.closed.is_set():
                return
            self.upstream = socket.create_connection(self.proxy.target, timeout=5)
            self.upstream.settimeout(None)
        except OSError:
            self.close()
            return
        threading.Thread(target=self._pump, args=(self.upstream, self.client), daemon=True).start()
        self._pump(self.client, self.upstream)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                if self.proxy.partitioned:
                    time.sleep(0.02)  # hold: read nothing, send nothing, answer nothing
                    continue
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                if self.proxy.latency:
                    time.sleep(self.proxy.latency)
                while self.proxy.partitioned and not self.closed.is_set():
                    time.sleep(0.02)  # bytes read just before the partition are held too
                target.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self, *, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                if reset:  # linger 0: close() sends RST instead of FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        self.proxy._forget(self)


class FaultProxy:
    """``127.0.0.1:<port>`` forwarding to ``target``; ``partition``, ``heal``, ``reset``,
    ``latency`` act on the link at once."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0):
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.partitioned = False
        self.latency = 0.0
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset()

    def partition(self) -> None:
        """Go silent: no byte passes either way, nothing is closed or reset."""
        self.partitioned = True

    def heal(self) -> None:
        self.partitioned = False

    def reset(self) -> int:
        """Reset (RST) every open connection; new ones are accepted as usual."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close(reset=True)
        return len(links)

    def set_latency(self, seconds: float) -> None:
        self.latency = max(0.0, seconds)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._links)

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            link = _Link(self, client)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=link.run, daemon=True).start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)


# --- a PostgreSQL cluster of its own -------------------------------------------------------


def postgres_bindir() -> Path:
    """The machine's PostgreSQL server binaries (Debian: /usr/lib/postgresql/<major>/bin)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise FileNotFoundError("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temp folder on a free port, trust auth, user ``postgres``.

    As root, the server runs as the ``postgres`` system user (PostgreSQL refuses root).
    """

    def __init__(self, *, port: int | None = None, fsync: bool = False):
        self.port = port or free_port()
        self.fsync = fsync
        self.bindir = postgres_bindir()
        # Not under pytest's 0700 temp folders: the postgres user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="posfed-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o755)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=True, cwd=self.root
        )

    def __enter__(self) -> ThrowawayPostgres:
        self.create()
        return self

    def __exit__(self, *_exc) -> None:
        self.destroy()

    def create(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown that disconnects clients; ``immediate``: a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        try:
            self._run("pg_ctl", "-D", str(self.data), "status")
        except subprocess.CalledProcessError:
            return False
        return True

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running:
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", *, port: int | None = None) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port or self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=5",
            autocommit=True,
        ) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def hold_lock(
    host: str, port: int, database: str, tables: tuple[str, ...] = RECEIPT_TABLES
) -> Iterator[None]:
    """Another session holds an exclusive lock on ``tables`` until the block ends."""
    import psycopg

    with psycopg.connect(
        f"host={host} port={port} user=postgres dbname={database} connect_timeout=5"
    ) as holder:
        holder.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            holder.rollback()
