"""The README's repository table and import-linter's layers contract say what the tree holds:
a folder renamed, a layer package added or removed, and this fails until both say so."""

from __future__ import annotations

import re
import tomllib

from posfed_pipeline_tests.support.repo import REPO_ROOT

CORE = REPO_ROOT / "posfed_pipeline" / "core"


def _core_packages() -> set[str]:
    return {p.name for p in CORE.iterdir() if (p / "__init__.py").is_file()}


def _readme_table() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## The repository", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_the_core_holds_packages_only_and_the_layers_contract_names_each_once():
    modules = {p.name for p in CORE.glob("*.py") if p.name != "__init__.py"}
    assert modules == set(), "the core holds layer packages, not loose modules"
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    [layers] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    named = [name.strip() for layer in layers["layers"] for name in layer.split(":")]
    assert sorted(named) == sorted(_core_packages())
    # Type-only imports count too: no circle hides behind `if TYPE_CHECKING`.
    assert config["tool"]["importlinter"]["exclude_type_checking_imports"] is False


def test_the_readme_table_names_folders_that_exist_and_every_core_layer():
    rows = _readme_table()
    assert rows
    for row in rows:
        first_cell = row.split("|")[1]
        for path in re.findall(r"`([^`]+)`", first_cell):
            if "/" in path or path.endswith(".py"):
                candidates = [REPO_ROOT / path, REPO_ROOT / "posfed_pipeline" / path]
                assert any(c.exists() for c in candidates), f"README names {path}: not there"
    [core_row] = [r for r in rows if r.startswith("| `posfed_pipeline/core/`")]
    listed = set(re.findall(r"`(\w+)`", core_row.split("|")[2]))
    assert listed == _core_packages()
