"""Real delivery servers for the tests and ``posfed bench``: how tills reach a store server.

Tooling, like ``faults``: the product never imports this module.

- ``SambaServer``: Debian's ``smbd`` on a free high port, its config, state and password
  database in a temp folder, one share per terminal inbox (what Windows tills write into).
- ``SftpServer``: OpenSSH's ``sshd`` on a free port with a throwaway host key and a
  key-authenticated user, ``internal-sftp`` chrooted to one terminal's folder and started in
  its inbox (docs/terminals.md), as the till sees it.
- ``SshfsMount``: a folder of the SFTP server mounted with ``sshfs`` (FUSE): an inbox on a
  network mount, where inotify sees no remote writes; through a ``faults.FaultProxy`` it is a
  share that hangs.
- ``smb_deliver`` / ``sftp_deliver``: write one receipt in one of the ways tills do
  (``WRITE_STYLES``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from posfed_dev.faults import free_port
from posfed_pipeline.core.base.errors import PosfedError

WRITE_STYLES = ("plain", "slow", "presized", "rename", "reopen_append")
SMBD = "/usr/sbin/smbd"
SSHD = "/usr/sbin/sshd"


class ServerDidNotStart(PosfedError, RuntimeError):
    pass


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerDidNotStart(f"exited {process.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise ServerDidNotStart(f"not listening on {port} after {timeout}s:\n{log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()


class _ServerProcess:
    """A server on 127.0.0.1 and a free port, its files in a temp folder of its own: started
    by ``with``, stopped (its whole process group) and its folder removed on leaving, also when
    it fails to start."""

    def __init__(self, prefix: str, user: str | None):
        self.user = user or _current_user()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.process: subprocess.Popen | None = None
        self._log = None

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def _launch(self, command: list[str], log_name: str) -> None:
        """Run ``command`` in its own session, output in ``log_name``, until it listens."""
        log = self.root / log_name
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _wait_for_port(self.port, self.process, log)

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            _stop(self.process)
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


# --- SMB ----------------------------------------------------------------------------------


class SambaServer(_ServerProcess):
    """``smbd`` sharing ``shares`` (name -> folder) to one user, on 127.0.0.1 and a free port."""

    def __init__(self, shares: dict[str, Path], *, user: str | None = None):
        super().__init__("posfed-smbd-", user)
        self.shares = shares
        self.password = uuid.uuid4().hex

    def _start(self) -> None:
        folders = {n: self.root / n for n in ("private", "lock", "state", "cache", "pid", "rpc")}
        for folder in folders.values():
            folder.mkdir()
        config = self.root / "smb.conf"
        lines = [
            "[global]",
            "server role = standalone server",
            f"smb ports = {self.port}",
            "interfaces = 127.0.0.1",
            "bind interfaces only = yes",
            "disable netbios = yes",
            f"private dir = {folders['private']}",
            f"lock directory = {folders['lock']}",
            f"state directory = {folders['state']}",
            f"cache directory = {folders['cache']}",
            f"pid directory = {folders['pid']}",
            f"ncalrpc dir = {folders['rpc']}",
            f"log file = {self.root / 'smbd.log'}",
            f"passdb backend = tdbsam:{folders['private'] / 'passdb.tdb'}",
            "load printers = no",
            "printcap name = /dev/null",
            "disable spoolss = yes",
            "server min protocol = SMB2_10",
        ]
        for name, path in self.shares.items():
            lines += [f"[{name}]", f"path = {path}", "read only = no", f"valid users = {self.user}"]
        config.write_text("\n".join(lines) + "\n")
        subprocess.run(
            ["pdbedit", "-s", str(config), "-a", "-u", self.user, "-t"],
            input=f"{self.password}\n{self.password}\n",
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )
        self._launch(
            [SMBD, "--foreground", "--no-process-group", "-s", str(config), "--debug-stdout"],
            "smbd.out",
        )

    def unc(self, share: str, name: str = "") -> str:
        return rf"\\127.0.0.1\{share}" + (rf"\{name}" if name else "")

    @property
    def auth(self) -> dict:
        return {"username": self.user, "password": self.password, "port": self.port}


def smb_deliver(
    server: SambaServer,
    share: str,
    name: str,
    data: bytes,
    style: str,
    *,
    connection_cache: dict | None = None,
) -> float:
    """Write ``data`` as ``share\\name`` the way a till of ``style`` does; returns the moment
    (time.time()) the file was complete: its last close, or its rename.
    ``connection_cache``: one per till (a dict), so each till has its own SMB connection."""
    import smbclient as smb

    auth = {**server.auth, "connection_cache": connection_cache}
    path = server.unc(share, name)
    if style == "plain":
        with smb.open_file(path, mode="wb", **auth) as handle:
            handle.write(data)
    elif style == "slow":  # one handle, four chunks over a second and a half
        with smb.open_file(path, mode="wb", **auth) as handle:
            for chunk in _chunks(data, 4):
                handle.write(chunk)
                handle.flush()
                time.sleep(0.5)
    elif style == "presized":  # extended to its final size (zeros), then filled in
        with smb.open_file(path, mode="wb", **auth) as handle:
            handle.truncate(len(data))
            handle.flush()
            time.sleep(0.3)
            handle.seek(0)
            handle.write(data)
    elif style == "rename":  # a temp name, then renamed into place
        temp = server.unc(share, f"{name}.tmp")
        with smb.open_file(temp, mode="wb", **auth) as handle:
            handle.write(data)
        smb.rename(temp, path, **auth)
    elif style == "reopen_append":  # written, closed, re-opened, the rest appended
        half = len(data) // 2
        with smb.open_file(path, mode="wb", **auth) as handle:
            handle.write(data[:half])
        time.sleep(0.3)
        with smb.open_file(path, mode="ab", **auth) as handle:
            handle.write(data[half:])
    else:
        raise ValueError(f"unknown write style {style!r} (known: {', '.join(WRITE_STYLES)})")
    return time.time()


def _chunks(data: bytes, parts: int) -> list[bytes]:
    size = max(1, -(-len(data) // parts))
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- SFTP ---------------------------------------------------------------------------------


def chroot_safe_folder(prefix: str = "posfed-sftp-") -> Path:
    """A new folder every ancestor of which sshd accepts for a chroot (root-owned, writable by
    nobody else: not /tmp, which is world-writable)."""
    base = Path.home() / ".cache" / "posfed-sftp"
    base.mkdir(parents=True, exist_ok=True, mode=0o755)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    folder.chmod(0o755)
    return folder


class SftpServer(_ServerProcess):
    """``sshd`` on 127.0.0.1 and a free port: key login for ``user``, ``internal-sftp`` only,
    chrooted to ``chroot`` (None: no chroot, for a benchmark's temp store) and started in its
    ``start`` folder (the terminal's inbox)."""

    def __init__(self, chroot: Path | None, *, start: str = "/inbox", user: str | None = None):
        super().__init__("posfed-sshd-", user)
        self.chroot = chroot
        self.start = start
        self.client_key = self.root / "client_key"

    def _start(self) -> None:
        host_key = self.root / "host_key"
        for key in (host_key, self.client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                check=True,
                timeout=30,
            )
        authorized = self.root / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        config = self.root / "sshd_config"
        config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key}\n"
            f"PidFile {self.root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {authorized}\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "Subsystem sftp internal-sftp\n"
            f"Match User {self.user}\n"
            + (f"  ChrootDirectory {self.chroot}\n" if self.chroot else "")
            + f"  ForceCommand internal-sftp -d {self.start}\n"
            "  AllowTcpForwarding no\n"
            "  X11Forwarding no\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation
        self._launch([SSHD, "-D", "-e", "-f", str(config)], "sshd.log")

    @contextlib.contextmanager
    def client(self, port: int | None = None) -> Iterator:
        """A paramiko SFTP session as the till (``port``: e.g. a fault proxy's)."""
        import paramiko

        key = paramiko.Ed25519Key.from_private_key_file(str(self.client_key))
        transport = paramiko.Transport(("127.0.0.1", port or self.port))
        try:
            transport.connect(username=self.user, pkey=key)
            sftp = paramiko.SFTPClient.from_transport(transport)
            sftp.get_channel().settimeout(30)
            sftp.chdir(self.start)
            yield sftp
        finally:
            transport.close()


def sftp_deliver(sftp, name: str, data: bytes, style: str) -> float:
    """As ``smb_deliver``, through a paramiko SFTP session started in the inbox."""
    if style == "plain":
        with sftp.open(name, "wb") as handle:
            handle.write(data)
    elif style == "slow":
        with sftp.open(name, "wb") as handle:
            for chunk in _chunks(data, 4):
                handle.write(chunk)
                handle.flush()
                time.sleep(0.5)
    elif style == "presized":
        with sftp.open(name, "wb") as handle:
            handle.truncate(len(data))
            handle.flush()
            time.sleep(0.3)
            handle.seek(0)
            handle.write(data)
    elif style == "rename":
        with sftp.open(f"{name}.part", "wb") as handle:
            handle.write(data)
        sftp.posix_rename(f"{name}.part", name)
    elif style == "reopen_append":
        half = len(data) // 2
        with sftp.open(name, "wb") as handle:
            handle.write(data[:half])
        time.sleep(0.3)
        with sftp.open(name, "ab") as handle:
            handle.write(data[half:])
    else:
        raise ValueError(f"unknown write style {style!r} (known: {', '.join(WRITE_STYLES)})")
    return time.time()


class SshfsMount:
    """``remote`` (a path as the SFTP user sees it) mounted at ``mountpoint`` with sshfs,
    caches off (a poller must see the server's listing, not a copy), through ``port``."""

    def __init__(
        self,
        server: SftpServer,
        remote: str,
        mountpoint: Path,
        *,
        port: int,
        give_up_after: int = 15,
    ):
        """``give_up_after``: seconds of silence before sshfs declares the server gone (until
        then, every access to the mount hangs)."""
        self.server, self.remote, self.mountpoint, self.port = server, remote, mountpoint, port
        self.give_up_after = give_up_after

    def __enter__(self) -> SshfsMount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        options = ",".join(
            [
                f"IdentityFile={self.server.client_key}",
                "StrictHostKeyChecking=no",
                "UserKnownHostsFile=/dev/null",
                "cache=no",
                "dir_cache=no",
                "ServerAliveInterval=5",
                f"ServerAliveCountMax={max(1, self.give_up_after // 5)}",
            ]
        )
        subprocess.run(
            [
                "sshfs",
                "-p",
                str(self.port),
                "-o",
                options,
                f"{self.server.user}@127.0.0.1:{self.remote}",
                str(self.mountpoint),
            ],
            check=True,
            timeout=30,
            capture_output=True,
        )
        return self

    def __exit__(self, *exc) -> None:
        # Lazy: a mount whose server hangs would block a plain unmount.
        subprocess.run(
            ["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30
        )


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
