"""``posfed init`` (a commented store file for a new store, from a few options) and ``posfed
config check`` (can posfed start on a store file? A summary, or the loader's reasons)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
from pathlib import Path

from posfed_pipeline.cli.common import EXIT_OK, EXIT_USAGE, store_config
from posfed_pipeline.core.config import (
    ConfigError,
    PosfedConfig,
    check_at_start,
    config_from_dict,
    resolve_config_path,
)
from posfed_pipeline.core.config.new_store import (
    TENANT_FORM,
    TERMINAL_FORM,
    NewStore,
    check_new_store,
    store_file_text,
    tenant_from_text,
    terminal_from_text,
)

ENV_FILE = "posfed.env"  # beside the store file, as /etc/posfed/posfed.env on a store server
# The central database URLs posfed has a driver for (docs/database.md).
DRIVERS = ("postgresql+psycopg", "mssql+pyodbc", "sqlite")
_CONFIG_HELP = "the store file (default: $POSFED_CONFIG or ./posfed.toml)"


def add_parser(commands) -> None:
    init = commands.add_parser(
        "init",
        help="write a commented posfed.toml for a new store from a few options",
        description="Write a commented store file (posfed.toml, or the file --config names) "
        "for a new store: its id, time zone, terminals and their departments; every other "
        "setting commented out at its default, each explained. An existing file is never "
        "replaced without --force. The central database is never named in the store file: "
        f"--database-url writes it into {ENV_FILE} beside it (mode 0600) for the environment. "
        "Example: posfed init --store-id store-007 --timezone Europe/Amsterdam "
        "--terminal bakery_1:10:1 --terminal bakery_2:10:2 --terminal butcher_1:20 "
        "--tenant '10=Bakkerij De Korenschoof'",
    )
    init.add_argument(
        "--store-id",
        required=True,
        metavar="ID",
        help="the store's id, unique in the chain (1-32 letters, digits, '.', '-', '_')",
    )
    init.add_argument(
        "--timezone",
        required=True,
        metavar="ZONE",
        help="the store's IANA time zone, e.g. Europe/Amsterdam: its business day",
    )
    init.add_argument(
        "--terminal",
        dest="terminals",
        action="append",
        required=True,
        metavar=TERMINAL_FORM,
        help="a till (repeat for each): its id, its department code and, where a department "
        "has several tills, what its receipt numbers begin with, e.g. bakery_1:10:1",
    )
    init.add_argument(
        "--tenant",
        dest="tenants",
        action="append",
        default=[],
        metavar=TENANT_FORM,
        help="the business behind a department (repeat; default: the department code)",
    )
    init.add_argument("--name", help="the store's name (default: its id)")
    init.add_argument(
        "--home",
        metavar="DIR",
        help="where the store's state lives, relative to the store file (default .posfed; "
        "a store server: /var/lib/posfed)",
    )
    init.add_argument(
        "--database-url",
        metavar="URL",
        help="the central database, e.g. postgresql+psycopg://posfed@db.example:5432/central "
        f"(default: the embedded SQLite under the state folder); written to {ENV_FILE}",
    )
    init.add_argument("--force", action="store_true", help="replace files that exist")
    init.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help=_CONFIG_HELP)
    init.set_defaults(handler=_init)

    group = commands.add_parser("config", help="the store file").add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    check = group.add_parser(
        "check",
        help="check a store file as posfed loads it: exit 0 with a summary, 2 with the reasons",
    )
    check.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help=_CONFIG_HELP)
    check.set_defaults(handler=_check)


# --- posfed init --------------------------------------------------------------------------------


def _init(args) -> int:
    try:
        store = _new_store(args)
        database = _database_setting(args.database_url) if args.database_url else None
    except ValueError as exc:
        return _refuse(f"posfed init: {exc}")
    target = resolve_config_path(args.config)
    env_file = target.parent / ENV_FILE if database else None
    if env_file and ("'" in str(target) or "\n" in str(target)):
        return _refuse(
            f"posfed init: {target!s}: a path with a quote or a line break cannot be written "
            f"into {ENV_FILE} as it is; choose another folder, or write {ENV_FILE} yourself"
        )
    if env_file:
        store = dataclasses.replace(store, env_file=ENV_FILE)
    for path in (target, env_file):
        if path and os.path.lexists(path) and not args.force:
            return _refuse(f"posfed init: {path} exists; --force replaces it")
    text = store_file_text(store)
    try:
        # What posfed will say when it starts on the file, said now, before it is written.
        config = config_from_dict(tomllib.loads(text), base_dir=target.parent, config_path=target)
        check_at_start(config)
    except ConfigError as exc:
        hint = ""
        if "receipt_id_prefix" in str(exc):
            hint = f"\nWith posfed init: --terminal {TERMINAL_FORM}, e.g. bakery_2:10:2."
        return _refuse(f"posfed init: posfed would refuse this store:\n{exc}{hint}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(
        f"posfed init: wrote {target}: store {store.store_id} ({store.timezone}), "
        f"{_count(len(store.terminals), 'terminal')}; state in {config.home}"
    )
    if env_file and database:
        _write_env_file(env_file, target, *database)
        print(f"posfed init: wrote {env_file} (mode 0600): the central database's URL")
    named = "" if target == resolve_config_path(None) else f" --config {target}"
    load = f"`set -a; . {env_file}; set +a`, then " if env_file else ""
    print(f"posfed init: next, read it; then {load}`posfed config check{named}`")
    return EXIT_OK


def _new_store(args) -> NewStore:
    terminals = tuple(terminal_from_text(text) for text in args.terminals)
    tenants = dict(tenant_from_text(text) for text in args.tenants)
    store = NewStore(
        store_id=args.store_id,
        timezone=args.timezone,
        terminals=terminals,
        name=args.name or None,
        tenants=tenants,
        **({"home": args.home} if args.home else {}),
    )
    check_new_store(store)
    return store


def _database_setting(text: str) -> tuple[str, str | None]:
    """The URL without its password, and the password: the two environment variables."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from posfed_pipeline.core.central_db.engines import url_without_password

    example = "e.g. postgresql+psycopg://posfed@db.example:5432/central"
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise ValueError(f"--database-url {text!r} is not a database URL ({example})") from None
    if url.drivername not in DRIVERS:
        meant = next((d for d in DRIVERS if d.startswith(url.drivername.split("+")[0])), None)
        hint = f" (did you mean {meant}://…?)" if meant else ""
        raise ValueError(
            f"--database-url: posfed reaches a central database through "
            f"{', '.join(DRIVERS)}, not {url.drivername}{hint}"
        )
    without_password = url_without_password(url)
    password = url.password if isinstance(url.password, str) else None
    for value in (without_password, password or ""):
        if "'" in value or "\n" in value:
            raise ValueError(
                "--database-url holds a quote or a line break, which an environment file "
                f"cannot carry as it is: write {ENV_FILE} yourself (docs/database.md)"
            )
    return without_password, password


def _write_env_file(path: Path, config_file: Path, url: str, password: str | None) -> None:
    lines = [
        "# The store's environment, written by `posfed init`: posfed reads the central database",
        "# from the environment only, never from posfed.toml. Before a posfed command:",
        f"#   set -a; . {path}; set +a",
        "# On a store server, the services' EnvironmentFile= (deploy/systemd/posfed.env.example",
        "# in posfed's repository lists the rest). Keep it private: it may hold a password.",
        f"POSFED_CONFIG='{config_file}'",
        f"POSFED_DB_URL='{url}'",
    ]
    if password:
        lines.append(f"POSFED_DB_PASSWORD='{password}'")
    # Created private, never readable by others even for a moment.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


# --- posfed config check ------------------------------------------------------------------------


def _check(args) -> int:
    config = store_config(args)  # a ConfigError: exit 2 with its reasons (cli.main)
    spec = _dat_spec(config)
    departments = {t.department for t in config.terminals}
    listed = ", ".join(config.terminal_ids[:8])
    if len(config.terminals) > 8:
        listed += f" and {len(config.terminals) - 8} more"
    name = f" ({config.store_name})" if config.store_name != config.store_id else ""
    print(f"{config.config_path}: posfed can start on it")
    print(f"  store             {config.store_id}{name}, time zone {config.timezone.key}")
    print(
        f"  terminals         {len(config.terminals)} in "
        f"{_count(len(departments), 'department')}: {listed}"
    )
    print(f"  state             {config.home}")
    print(f"  central database  {_database(config)}")
    print(f"  .dat spec         {config.dat_spec} ({spec})")
    return EXIT_OK


def _dat_spec(config: PosfedConfig) -> str:
    """The spec's name and versions; a spec posfed cannot use is a configuration error here
    (the loader leaves it to the first run that renders a .dat)."""
    from posfed_pipeline.core.dat import SpecError, load_spec

    try:
        spec = load_spec(config.dat_spec)
    except SpecError as exc:
        raise ConfigError(f"{config.config_path}: [dat] spec: {exc}") from None
    return f"{spec.name}, {_count(len(spec.versions), 'version')}"


def _database(config: PosfedConfig) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(config.db_url)
    if url.get_backend_name() == "sqlite" and not _from_environment():
        described = f"embedded SQLite, {url.database}"
        env_file = config.config_path.parent / ENV_FILE if config.config_path else None
        if env_file and env_file.is_file() and "POSFED_DB_URL=" in env_file.read_text():
            described += (
                f" ({env_file} names another: load it first, `set -a; . {env_file}; set +a`)"
            )
        return described
    source = "POSFED_DB_URL" if os.environ.get("POSFED_DB_URL") else "POSFED_DB_* variables"
    return f"{url.get_backend_name()} ({source}): {url.render_as_string(hide_password=True)}"


def _from_environment() -> bool:
    return any(os.environ.get(name) for name in ("POSFED_DB_URL", "POSFED_DB_DIALECT"))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _refuse(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_USAGE
