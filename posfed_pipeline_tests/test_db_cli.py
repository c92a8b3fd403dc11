"""``posfed db status | sync | resync``: what an operator sees of the store-and-forward, and a
check that every ``posfed`` command is documented in the README."""

from __future__ import annotations

import argparse
import re

import pytest

from posfed_pipeline import cli
from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import load_config
from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.stages.processing import process_batch
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import write_store_config

TS = "2026-11-20T10:15:00+01:00"


@pytest.fixture
def cli_store(tmp_path, monkeypatch):
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    path = write_store_config(tmp_path / "posfed.toml", tmp_path / "state")
    config = load_config(path)
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    return path, config


def _accept(config, *receipt_ids):
    terminal = config.terminal("bakery_1")
    paths = [drop_receipt(terminal.inbox, receipt_doc(r, timestamp=TS)) for r in receipt_ids]
    ledger = open_ledger(config.home)
    process_batch(config, terminal, paths, ledger=ledger, spec=load_spec(config.dat_spec))


def test_status_shows_the_lag_and_sync_clears_it(cli_store, capsys):
    path, config = cli_store
    _accept(config, "S1", "S2")

    assert cli.main(["--config", str(path), "db", "status"]) == 0
    out = capsys.readouterr().out
    assert "central database lag: OK: 2 receipt(s) and 2 delivery record(s) not yet" in out
    assert f"schema revision: {central_db.head_revision()}" in out

    assert cli.main(["--config", str(path), "db", "sync"]) == 0
    out = capsys.readouterr().out
    assert "2 delivery record(s) stored, 2 new receipt(s), 0 refused" in out
    assert "the central database holds every accepted receipt" in out

    assert cli.main(["--config", str(path), "db", "status"]) == 0
    out = capsys.readouterr().out
    assert "2026-11-20  bakery_1" in out and "last sync:" in out

    assert cli.main(["--config", str(path), "db", "resync", "--day", "2026-11-20"]) == 0
    assert "2 delivery record(s) back in the outbox" in capsys.readouterr().out
    assert cli.main(["--config", str(path), "db", "sync"]) == 0
    assert "0 new receipt(s)" in capsys.readouterr().out  # sent again, stored once
    assert cli.main(["--config", str(path), "db", "resync", "--day", "20th"]) == 2


def test_status_with_the_central_database_away_still_tells_the_lag(cli_store, capsys, monkeypatch):
    path, config = cli_store
    _accept(config, "S1")
    monkeypatch.setenv("POSFED_DB_URL", "postgresql+psycopg://posfed@127.0.0.1:1/register")

    assert cli.main(["--config", str(path), "db", "status"]) == 1
    captured = capsys.readouterr()
    assert "1 receipt(s) and 1 delivery record(s) not yet in the central database" in captured.out
    assert "out of reach" in captured.err

    assert cli.main(["--config", str(path), "db", "sync"]) == 1
    assert "nothing is lost" in capsys.readouterr().err
    assert open_ledger(config.home).lag().pending_receipts == 1


def _commands(parser: argparse.ArgumentParser, prefix: str = "posfed") -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(f"{prefix} {name}")
                found += _commands(sub, f"{prefix} {name}")
    return found


def test_every_command_is_documented_in_the_readme(monkeypatch):
    parsers: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        cli.main([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    readme = (REPO_ROOT / "README.md").read_text()
    documented = set(re.findall(r"posfed(?: [a-z][a-z-]+)+", readme))
    missing = [c for c in _commands(parsers[0]) if not any(d.startswith(c) for d in documented)]
    assert missing == []
