"""The suite's own layout: test modules share code through ``support/`` only, ``conftest.py``
holds fixtures and hooks only, and a test that uses PostgreSQL carries the ``postgres`` marker."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

from posfed_pipeline_tests.support.processes import SESSION_MARKER

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.name
# A module no other may import: a test module, or conftest (pytest loads it; it is no library).
FORBIDDEN = re.compile(rf"^{PACKAGE}\.(test_\w+|conftest)$")
# The same, in the source of a script a test runs in a subprocess.
FORBIDDEN_IN_SCRIPT = re.compile(
    rf"^\s*(?:from|import)\s+{PACKAGE}\.(?:test_\w+|conftest)\b", re.MULTILINE
)


def _modules() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def _imported(node: ast.AST) -> list[str]:
    """The modules an import statement names (``from P import m`` names ``P.m`` too)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from . import test_x, from .conftest import y
            base = ".".join([PACKAGE, *filter(None, [base])])
        return [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return []


def test_no_module_of_the_suite_imports_a_test_module_or_conftest():
    offences = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            bad = [name for name in _imported(node) if FORBIDDEN.match(name)]
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                bad = FORBIDDEN_IN_SCRIPT.findall(node.value) and [node.value.strip()[:80]]
            if bad:
                offences.append(f"{path.relative_to(TESTS)}:{node.lineno}: {', '.join(bad)}")
    assert offences == [], "import from posfed_pipeline_tests.support instead:\n" + "\n".join(
        offences
    )


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(target) in {"pytest.fixture", "fixture"}


def test_conftest_holds_fixtures_and_hooks_only():
    tree = ast.parse((TESTS / "conftest.py").read_text())
    others = [
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        or (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and not node.name.startswith("pytest_")
            and not any(_is_fixture(d) for d in node.decorator_list)
        )
    ]
    assert others == [], f"move these to posfed_pipeline_tests/support/: {others}"


def test_a_test_that_uses_postgres_without_the_marker_is_refused(pytester, monkeypatch):
    """The collection hook refuses the run, naming the unmarked tests and only them."""
    # The inner session's end looks for its own processes, never this session's.
    monkeypatch.setenv(SESSION_MARKER, "test-layout-inner-session")
    # Installed plugins are not needed to collect, and finding them is most of the time taken.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(
        test_unmarked=textwrap.dedent(
            """
            import pytest

            @pytest.fixture(params=["sqlite", "postgresql"])
            def dialect(request):
                return request.param

            def test_fixture(pg_database_url):
                pass

            def test_param(dialect):
                pass

            @pytest.mark.postgres
            def test_marked(pg_database_url):
                pass

            def test_without_postgres():
                pass
            """
        )
    )
    args = ["-p", f"{PACKAGE}.conftest", "-c", str(TESTS.parent / "pyproject.toml")]
    result = pytester.runpytest_inprocess(*args, "--rootdir", str(pytester.path), "--co", "-q")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    refused = "\n".join(result.errlines)
    assert "not marked `postgres`" in refused
    assert "test_unmarked.py::test_fixture" in refused
    assert "test_unmarked.py::test_param[postgresql]" in refused
    assert "test_param[sqlite]" not in refused
    assert "test_marked" not in refused and "test_without_postgres" not in refused
