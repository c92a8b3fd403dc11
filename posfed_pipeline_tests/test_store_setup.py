"""A store's first setup through the real command line: `posfed init` writes a commented store
file from a few options, `posfed config check` says whether posfed can start on one, and the
demo store posfed ships (the checkout's posfed.toml is a link to it) is written out by
`posfed demo` where there is none. (`posfed demo` itself, from the wheel: test_install.py.)"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
from pathlib import Path

import pytest

from posfed_pipeline import packaged
from posfed_pipeline.cli import main
from posfed_pipeline.core.config import load_config
from posfed_pipeline.demo import is_demo_store, write_demo_store
from posfed_pipeline_tests.support.processes import free_port
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import write_store_config

STORE = ["--store-id", "store-007", "--timezone", "Europe/Amsterdam"]
BASE = ["--store-id", "s1", "--timezone", "UTC"]
TILLS = ["--terminal", "bakery_1:10:1", "--terminal", "bakery_2:10:2", "--terminal", "butcher_1:20"]


@pytest.fixture(autouse=True)
def _no_store_from_the_environment(monkeypatch):
    for name in ("POSFED_CONFIG", "POSFED_HOME", "POSFED_DB_URL", "POSFED_DB_DIALECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("POSFED_DB_PASSWORD", raising=False)


def _init(folder: Path, *options: str) -> int:
    return main(["--config", str(folder / "posfed.toml"), "init", *options])


# --- posfed init --------------------------------------------------------------------------------


def test_init_writes_a_store_file_that_loads_with_the_terminals_given(tmp_path, capsys):
    tenant = ["--tenant", "10=Bakkerij De Korenschoof", "--name", "Hoofdstraat"]
    assert _init(tmp_path, *STORE, *TILLS, *tenant) == 0

    written = tmp_path / "posfed.toml"
    config = load_config(written)
    assert (config.store_id, config.store_name) == ("store-007", "Hoofdstraat")
    assert config.timezone.key == "Europe/Amsterdam"
    assert [(t.id, t.department, t.tenant, t.receipt_id_prefix) for t in config.terminals] == [
        ("bakery_1", "10", "Bakkerij De Korenschoof", "1"),
        ("bakery_2", "10", "Bakkerij De Korenschoof", "2"),
        ("butcher_1", "20", "20", ""),
    ]
    assert config.home == tmp_path / ".posfed"
    assert config.dat_spec == packaged.default_dat_spec()
    assert config.db_url == f"sqlite:///{tmp_path / '.posfed' / 'central.db'}"
    out = capsys.readouterr().out
    assert f"wrote {written}: store store-007 (Europe/Amsterdam), 3 terminals" in out
    assert "posfed config check" in out
    # Commented as posfed.toml is: every table there, each key explained.
    text = written.read_text()
    for table in ("store", "paths", "intake", "delivery", "health", "dat", "sync", "alerts"):
        assert f"\n[{table}]\n" in text
    assert re.search(r'^timezone = "Europe/Amsterdam" +# the business day', text, re.M)
    assert "# max_age_days = 45 " in text
    assert max(len(line) for line in text.splitlines()) <= 100


def _uncommented(text: str, tables: set[str] | None = None) -> str:
    """``# key = value`` lines made settings (in ``tables`` only, if given)."""
    lines, table = [], None
    for line in text.splitlines():
        heading = re.match(r"^\[+([\w.]+)\]+$", line)
        table = heading.group(1) if heading else table
        setting = re.match(r"^# (\w+ = .*)$", line)
        # A till uses a ready marker or a batch marker, never both (the loader refuses that).
        if setting and not line.startswith("# batch_marker") and table in (tables or {table}):
            line = setting.group(1)
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_keys_init_comments_out_are_real_keys_and_show_their_defaults(tmp_path):
    assert _init(tmp_path, *STORE, *TILLS) == 0
    written = tmp_path / "posfed.toml"
    text = written.read_text()
    as_written = load_config(written)

    # Every key commented out, uncommented: all are keys posfed knows, with values it takes.
    every = tmp_path / "every.toml"
    every.write_text(_uncommented(text))
    assert every.read_text().count("\n# ") < text.count("\n# ")
    load_config(every)

    # Those shown as defaults are the defaults: uncommented, nothing changes.
    defaults = tmp_path / "defaults.toml"
    defaults.write_text(_uncommented(text, {"paths", "intake", "retention", "sync"}))
    assert "\nmax_age_days = 45" in defaults.read_text()
    assert load_config(defaults) == dataclasses.replace(as_written, config_path=defaults)


def test_init_never_replaces_a_file_without_force(tmp_path, capsys):
    existing = tmp_path / "posfed.toml"
    existing.write_text("# mine\n")
    assert _init(tmp_path, *STORE, *TILLS) == 2
    assert f"{existing} exists; --force replaces it" in capsys.readouterr().err
    assert existing.read_text() == "# mine\n"

    assert _init(tmp_path, *STORE, *TILLS, "--force") == 0
    assert len(load_config(existing).terminals) == 3


def test_init_writes_where_config_names_creating_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "etc" / "posfed" / "store.toml"
    assert main(["init", "--config", str(target), *STORE, "--terminal", "a_1:1"]) == 0
    assert load_config(target).terminal_ids == ["a_1"]
    assert not (tmp_path / "posfed.toml").exists()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (
            ["--store-id", "s1", "--timezone", "Europe/Amsterdm", "--terminal", "a_1:10"],
            "unknown timezone 'Europe/Amsterdm' (did you mean Europe/Amsterdam?)",
        ),
        (
            ["--store-id", "s1", "--timezone", "Mars/Olympus", "--terminal", "a_1:10"],
            "unknown timezone 'Mars/Olympus'",
        ),
        (
            ["--store-id", "s 1", "--timezone", "UTC", "--terminal", "a_1:10"],
            "store id 's 1' must be 1-32 letters",
        ),
        (
            [*BASE, "--terminal", "bakery_1"],
            "'bakery_1' is not ID:DEPARTMENT[:PREFIX] (e.g. bakery_1:10",
        ),
        (
            [*BASE, "--terminal", "1bakery:10"],
            "the id '1bakery' must start with a letter",
        ),
        (
            [*BASE, "--terminal", "bakery_1:10-20"],
            "the department '10-20' must be 1-8 letters or digits",
        ),
        (
            [*BASE, "--terminal", "a_1:10", "--terminal", "a_1:20"],
            "terminal a_1 is given more than once",
        ),
        (
            [*BASE, "--terminal", "a_1:10", "--tenant", "20=X"],
            "a tenant for department '20', which no terminal has (departments: 10)",
        ),
        (
            [*BASE, "--terminal", "a_1:10", "--tenant", "X"],
            "'X' is not DEPARTMENT=NAME",
        ),
        (
            [*BASE, "--terminal", "a_1:10", "--terminal", "a_2:10"],
            "a_1 and a_2, both department 10",
        ),
        (
            [*STORE, "--terminal", "a_1:10", "--database-url", "postgresql://u@db/central"],
            "not postgresql (did you mean postgresql+psycopg://…?)",
        ),
        (
            [*STORE, "--terminal", "a_1:10", "--database-url", "not a url"],
            "--database-url 'not a url' is not a database URL",
        ),
    ],
)
def test_init_refuses_bad_options_with_exit_2_and_writes_nothing(tmp_path, capsys, options, says):
    assert _init(tmp_path, *options) == 2
    err = capsys.readouterr().err
    assert says in err
    assert err.startswith("posfed init: ")
    assert list(tmp_path.iterdir()) == []


def test_two_tills_of_a_department_are_told_how_to_tell_them_apart(tmp_path, capsys):
    options = [*STORE, "--terminal", "a_1:10", "--terminal", "a_2:10"]
    assert _init(tmp_path, *options) == 2
    err = capsys.readouterr().err
    assert "could write the same .dat file" in err
    assert "With posfed init: --terminal ID:DEPARTMENT[:PREFIX], e.g. bakery_2:10:2." in err


def test_init_without_its_required_options_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _init(tmp_path, *STORE)
    assert exit_.value.code == 2
    assert "--terminal" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_database_url_goes_to_a_private_env_file_never_into_the_store_file(
    tmp_path, capsys, monkeypatch
):
    url = "postgresql+psycopg://posfed:s3cr%40t@db.example:5432/central?connect_timeout=5"
    assert _init(tmp_path, *STORE, *TILLS, "--database-url", url) == 0
    env_file = tmp_path / "posfed.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "s3cr" not in (tmp_path / "posfed.toml").read_text()
    assert "posfed.env beside this file" in (tmp_path / "posfed.toml").read_text()
    settings = dict(
        re.match(r"^(\w+)='(.*)'$", line).groups()
        for line in env_file.read_text().splitlines()
        if not line.startswith("#")
    )
    assert settings == {
        "POSFED_CONFIG": str(tmp_path / "posfed.toml"),
        "POSFED_DB_URL": "postgresql+psycopg://posfed@db.example:5432/central?connect_timeout=5",
        "POSFED_DB_PASSWORD": "s3cr@t",
    }
    assert "(mode 0600)" in capsys.readouterr().out
    # Loaded into the environment, posfed reaches the database the URL named.
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert load_config().db_url == url
    # An existing env file is kept, as the store file is.
    env_file.write_text("# mine\n")
    assert _init(tmp_path / "other", *STORE, *TILLS) == 0  # no URL: no env file
    assert not (tmp_path / "other" / "posfed.env").exists()
    (tmp_path / "posfed.toml").unlink()
    assert _init(tmp_path, *STORE, *TILLS, "--database-url", url) == 2
    assert f"{env_file} exists" in capsys.readouterr().err
    assert env_file.read_text() == "# mine\n"


def test_a_store_folder_whose_path_an_env_file_cannot_carry_is_refused(tmp_path, capsys):
    folder = tmp_path / "o'brien's store"
    url = "postgresql+psycopg://posfed@db.example:5432/central"
    assert _init(folder, *STORE, *TILLS, "--database-url", url) == 2
    assert "a path with a quote" in capsys.readouterr().err
    assert not folder.exists()
    assert _init(folder, *STORE, *TILLS) == 0  # without a URL there is no env file to write


# --- posfed config check ------------------------------------------------------------------------


def test_config_check_summarises_a_good_store_file(tmp_path, capsys, monkeypatch):
    assert _init(tmp_path, *STORE, *TILLS, "--name", "Hoofdstraat") == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{tmp_path / 'posfed.toml'}: posfed can start on it"
    assert "store-007 (Hoofdstraat), time zone Europe/Amsterdam" in out
    assert "terminals         3 in 2 departments: bakery_1, bakery_2, butcher_1" in out
    assert f"embedded SQLite, {tmp_path / '.posfed' / 'central.db'}" in out
    assert f"{packaged.default_dat_spec()} (scon-default, 1 version)" in out

    monkeypatch.setenv("POSFED_DB_URL", "postgresql+psycopg://posfed:pw@db.example/central")
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert "postgresql (POSFED_DB_URL): postgresql+psycopg://posfed:***@db.example/central" in out
    assert "pw@" not in out


def test_config_check_names_an_env_file_beside_it_that_was_not_loaded(tmp_path, capsys):
    url = "postgresql+psycopg://posfed@db.example/central"
    assert _init(tmp_path, *STORE, *TILLS, "--database-url", url) == 0
    capsys.readouterr()
    assert main(["config", "check", "--config", str(tmp_path / "posfed.toml")]) == 0
    out = capsys.readouterr().out
    assert f"({tmp_path / 'posfed.env'} names another: load it first" in out


def test_config_check_checks_the_demo_store(capsys):
    assert main(["--config", str(REPO_ROOT / "posfed.toml"), "config", "check"]) == 0
    out = capsys.readouterr().out
    assert "store-001 (Demo Market), time zone Europe/Amsterdam" in out
    assert "terminals         20 in 10 departments: bakery_1, bakery_2, " in out
    assert f"{REPO_ROOT / 'dat_specs' / 'scon_default.json'} (scon-default" in out


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda text: text.replace("max_age_days = 36500", "max_age_dayz = 36500"),
            ["[intake]: unknown setting(s) max_age_dayz (did you mean max_age_days?)"],
        ),
        (
            lambda text: text.replace('"Europe/Amsterdam"', '"Europe/Amsterdm"'),
            ["[store] timezone: unknown timezone 'Europe/Amsterdm'", "Europe/Amsterdam?"],
        ),
        (
            lambda text: text.replace('department = "20"', 'department = "20-x"'),
            ["terminals[1]: department '20-x' must be 1-8 letters or digits"],
        ),
        (lambda text: text.replace("[intake]", "[intake"), ["not valid TOML"]),
        (
            lambda text: text.replace(str(REPO_ROOT / "dat_specs"), "missing_specs"),
            ["[dat] spec:", "missing_specs/scon_default.json: no such spec file"],
        ),
    ],
)
def test_config_check_refuses_a_bad_store_file_with_the_loaders_reasons(
    tmp_path, capsys, change, says
):
    config = write_store_config(tmp_path / "posfed.toml", tmp_path / "home")
    config.write_text(change(config.read_text()))
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"posfed: configuration error: {config}")
    for part in says:
        assert part in err


def test_config_check_without_a_store_file_says_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "check"]) == 2
    assert f"no configuration at {tmp_path / 'posfed.toml'}" in capsys.readouterr().err


# --- the demo store -----------------------------------------------------------------------------


def test_the_checkouts_posfed_toml_is_the_packaged_demo_store_and_its_paths_are_the_checkouts(
    monkeypatch,
):
    """One source (the packaged file, which the wheel carries) and `make demo` as before:
    state in the checkout's .posfed/, layouts from its dat_specs/."""
    link = REPO_ROOT / "posfed.toml"
    assert link.is_symlink()
    assert link.resolve() == packaged.demo_store_file().resolve()
    monkeypatch.chdir(REPO_ROOT)
    config = load_config()
    assert config.config_path == link
    assert config.home == REPO_ROOT / ".posfed"
    assert config.dat_spec == REPO_ROOT / "dat_specs" / "scon_default.json"
    assert is_demo_store(config)


def test_the_simulated_tills_are_for_the_demo_store_only(tmp_path):
    other = load_config(write_store_config(tmp_path / "posfed.toml", tmp_path / "home"))
    assert not is_demo_store(other)


def test_writing_the_demo_store_out_keeps_what_is_there(tmp_path):
    own_spec = tmp_path / "dat_specs" / "scon_default.json"
    own_spec.parent.mkdir()
    own_spec.write_text("{}  # edited by the user\n")

    store = write_demo_store(tmp_path)

    assert store.config_file == tmp_path / "posfed.toml"
    assert store.kept == (own_spec,)
    assert tmp_path / "posfed.toml" in store.written
    assert tmp_path / "dat_specs" / "README.md" in store.written
    assert own_spec.read_text() == "{}  # edited by the user\n"
    assert tomllib.loads(store.config_file.read_text())["store"]["id"] == "store-001"
    again = write_demo_store(tmp_path)
    assert again.written == ()


def test_posfed_demo_uses_an_existing_store_file_and_never_replaces_it(
    tmp_path, capsys, monkeypatch
):
    """Here a store file posfed refuses: `posfed demo` reports it and writes nothing over it."""
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "posfed.toml"
    own.write_text("[store]\nid = 'mine'\n")  # no terminals
    assert main(["demo", "--port", str(free_port())]) == 2
    assert "no [[terminals]] configured" in capsys.readouterr().err
    assert own.read_text() == "[store]\nid = 'mine'\n"
    assert sorted(os.listdir(tmp_path)) == ["posfed.toml"]


def test_posfed_demo_writes_nothing_where_posfed_config_names_a_missing_file(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POSFED_CONFIG", str(tmp_path / "elsewhere.toml"))
    assert main(["demo", "--port", str(free_port())]) == 2
    assert f"no configuration at {tmp_path / 'elsewhere.toml'}" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("rate", ["0", "-1", "nan", "inf", "fast"])
def test_posfed_demo_refuses_a_rate_its_tills_cannot_keep(rate, capsys):
    # 0 would stop the tills at once (a division by zero in their thread), less than 0 would
    # write receipts without pause.
    with pytest.raises(SystemExit) as refused:
        main(["demo", "--rate", rate])
    assert refused.value.code == 2
    assert "argument --rate" in capsys.readouterr().err
