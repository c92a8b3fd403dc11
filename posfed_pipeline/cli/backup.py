"""``posfed backup``: the store server's local state written to a file and restored from one."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from posfed_pipeline.cli.common import EXIT_OK, EXIT_USAGE, EXIT_VERDICT, store_config


def add_parser(commands) -> None:
    group = commands.add_parser(
        "backup", help="the store server's local state (ledger, inboxes, archive, ...) in a file"
    ).add_subparsers(dest="backup_command", required=True, metavar="ACTION")
    create = group.add_parser(
        "create", help="write a consistent backup while posfed runs (databases by SQLite's API)"
    )
    create.add_argument(
        "file",
        nargs="?",
        help="the .tar.gz to write (default: posfed-backup-<store>-<time>.tar.gz here)",
    )
    create.set_defaults(handler=_backup_create)
    restore = group.add_parser(
        "restore", help="restore a backup into the home folder (services stopped), verified"
    )
    restore.add_argument("file", help="a file written by `posfed backup create`")
    restore.add_argument(
        "--replace",
        action="store_true",
        help="the home folder is not empty: rename it to <home>.before-restore-<time> first",
    )
    restore.set_defaults(handler=_backup_restore)


def _backup_create(args) -> int:
    from posfed_pipeline.core.state import backup

    config = store_config(args)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = Path(args.file or f"posfed-backup-{config.store_id}-{stamp}.tar.gz")

    def progress(files: int, name: str) -> None:
        print(f"\rbackup: {files} files ({name[-60:]})", end="", file=sys.stderr, flush=True)

    try:
        done = backup.create_backup(config.home, target, progress=progress)
    except backup.BackupError as exc:
        print(f"backup create: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"\rbackup create: {done.path}: {done.files} files ({done.databases} databases), "
        f"{done.bytes / 1e6:.1f} MB of {config.home}"
    )
    return EXIT_OK


def _backup_restore(args) -> int:
    from posfed_pipeline.core.state import backup, claims

    config = store_config(args)
    claim_table = claims.claim_table_path(config.home)
    if claim_table.exists() and claims.ClaimTable(claim_table).alive():
        print(
            "backup restore: posfed's fast path is running on this home; stop the services "
            "(posfed-fastpath, the daemon, the webserver, the code server; or posfed demo) first",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        done = backup.restore_backup(Path(args.file), config.home, replace=args.replace)
    except backup.BackupError as exc:
        print(f"backup restore: {exc}", file=sys.stderr)
        return EXIT_VERDICT if isinstance(exc, backup.BackupDamaged) else EXIT_USAGE
    if done.moved_aside:
        print(f"backup restore: the previous {config.home} is kept as {done.moved_aside}")
    print(
        f"backup restore: {done.files} files ({done.databases} databases) verified and "
        f"restored into {done.home}; start the services again"
    )
    return EXIT_OK
