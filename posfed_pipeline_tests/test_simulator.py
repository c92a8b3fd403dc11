"""The receipt simulator and `posfed simulate`: realistic receipts that pass validation."""

import json

from posfed_pipeline.cli import main
from posfed_pipeline.core.intake import parsing
from posfed_pipeline.core.intake.validation import validate_batch
from posfed_pipeline.demo.tills import ReceiptSimulator
from posfed_pipeline_tests.support.stores import write_store_config


def test_simulated_receipts_are_valid_and_exact(config):
    simulator = ReceiptSimulator(list(config.terminals), seed=7)
    receipts = []
    for terminal in config.terminals:
        for _ in range(25):
            path = simulator.drop(terminal)
            receipts.append(parsing.read_receipt_file(path, terminal))

    report = validate_batch(receipts)
    assert report.invalid == []
    assert all(r.total == r.lines_total for r in receipts)
    assert len({(r.terminal_id, r.receipt_id) for r in receipts}) == len(receipts)


def test_simulate_command_drops_receipts_into_the_first_n_terminals(tmp_path, capsys):
    config_file = write_store_config(tmp_path / "store.toml", tmp_path / "state")

    code = main(
        [
            "--config",
            str(config_file),
            "simulate",
            "--terminals",
            "1",
            "--rate",
            "40",
            "--duration",
            "0.25",
            "--seed",
            "1",
        ]
    )

    assert code == 0
    dropped = list((tmp_path / "state" / "terminals" / "bakery_1" / "inbox").glob("*.json"))
    assert 5 <= len(dropped) <= 11
    assert not list((tmp_path / "state" / "terminals" / "butcher_1" / "inbox").iterdir())
    assert json.loads(dropped[0].read_text())["terminalId"] == "bakery_1"
    assert f"dropped {len(dropped)} receipts into 1 terminal inboxes" in capsys.readouterr().out


def test_simulate_refuses_a_terminal_count_it_cannot_honour(tmp_path, capsys):
    config = write_store_config(tmp_path / "posfed.toml", tmp_path / "home")  # 2 terminals
    for count in ("0", "3", "-1"):
        assert main(["--config", str(config), "simulate", "--terminals", count]) == 2
        assert "--terminals must be 1 to 2" in capsys.readouterr().err
    assert not list((tmp_path / "home").rglob("*.json"))


def test_an_unknown_terminal_is_named_with_the_known_ones(tmp_path, capsys):
    config = write_store_config(tmp_path / "posfed.toml", tmp_path / "home")
    assert main(["--config", str(config), "quarantine", "list", "--terminal", "bakery_9"]) == 2
    err = capsys.readouterr().err
    assert "unknown terminal 'bakery_9'" in err and "(known: bakery_1, butcher_1)" in err
