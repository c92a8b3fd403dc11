"""`make compat`: posfed on the newest Dagster, dagster-webserver, dagster-postgres, pandera
and SQLAlchemy that pip installs together, in a virtual environment of its own (.venv-compat),
against the tests that pin Dagster's private API down: the fast path's contract tests, the UI
launch tests, a demo receipt end to end (and the sensors' path, which carries the store when
the fast path is off).

1. The newest set: posfed with the newest releases its ranges (pyproject.toml) allow that
   resolve together: pip -U of them in one resolution with posfed itself. dagster-postgres is
   left out here: each of its releases requires one dagster release and comes days after it,
   so it would hold the others back.
2. dagster-postgres: the release that matches the dagster of step 1, if there is one, and then
   the PostgreSQL instance tests; if there is none, this says so (`make test` runs those tests
   where it installs: the development environment).
3. dagster alone, as `pip install -U dagster` leaves a server: dagster may be a release ahead
   of dagster-webserver (pip warns that their pins disagree). The same tests again.

A release newer than fastpath/compatibility.py's tested ranges is run with the override
(POSFED_ALLOW_UNTESTED_DAGSTER): when it passes, record it there. Not part of `make test`: it
downloads. Exits 1 if a test failed.

Usage: python3 scripts/compat.py [--venv .venv-compat] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("dagster", "dagster-webserver", "dagster-graphql", "dagster-postgres", "pandera")
PACKAGES += ("sqlalchemy",)
TESTS = [
    "posfed_pipeline_tests/test_fastpath.py",  # the fast path's contract with Dagster internals
    "posfed_pipeline_tests/test_dagster_compatibility.py",
    "posfed_pipeline_tests/test_ui_launches.py",  # every way the UI launches a run
    "posfed_pipeline_tests/test_install.py",  # the wheel's demo: a receipt to its .dat
    "posfed_pipeline_tests/test_daemon_e2e.py",  # the sensors: the path without the fast path
]
POSTGRES_TESTS = ["posfed_pipeline_tests/test_prod_instance.py"]  # the PostgreSQL instance
# Development tools the tests do not need (and dg, whose every release pins one dagster).
NOT_FOR_TESTS = {"dagster-dg-cli", "dagster-postgres", "ruff", "mypy", "import-linter"}
OVERRIDE_ENV = "POSFED_ALLOW_UNTESTED_DAGSTER"  # as posfed_pipeline/fastpath/compatibility.py


def say(line: str = "") -> None:
    print(f"compat: {line}" if line else "", flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, text=True, **kwargs)


class Venv:
    def __init__(self, path: Path):
        self.path = path
        self.python = str(path / "bin" / "python")

    def pip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([self.python, "-m", "pip", *args], check=check, capture_output=True)

    def versions(self) -> dict[str, str]:
        probe = (
            "import json, importlib.metadata as m\n"
            "found = {}\n"
            f"for name in {PACKAGES!r}:\n"
            "    try: found[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(found))"
        )
        return json.loads(run([self.python, "-c", probe], check=True, capture_output=True).stdout)

    def untested(self) -> list[str]:
        """What posfed itself (fastpath/compatibility.py) finds outside its tested ranges."""
        probe = (
            "import json\nfrom posfed_pipeline.fastpath import compatibility\n"
            "print(json.dumps(compatibility.check(env={}).untested))"
        )
        return json.loads(run([self.python, "-c", probe], check=True, capture_output=True).stdout)

    def conflicts(self) -> list[str]:
        checked = self.pip("check", check=False)
        return [line for line in checked.stdout.splitlines() if line] if checked.returncode else []


def tools_for_tests() -> list[str]:
    """The `dev` extra's requirements the tests need (pyproject.toml), as written there."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dev = extras["optional-dependencies"]["dev"]
    return [r for r in dev if _name(r) not in NOT_FOR_TESTS]


def declared(package: str) -> str:
    """posfed's own requirement on ``package`` (pyproject.toml), e.g. dagster>=1.13.27,<1.14."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    every = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    return next(r for r in every if _name(r) == package)


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement)[0]


def show(title: str, venv: Venv) -> dict[str, str]:
    found = venv.versions()
    say(f"{title}: " + ", ".join(f"{name} {v}" for name, v in found.items()))
    for conflict in venv.conflicts():
        say(f"  pip check: {conflict}")
    return found


def pytest(venv: Venv, tests: list[str], found: dict[str, str], label: str) -> tuple[bool, str]:
    env = None
    untested = venv.untested()
    if untested:
        say(f"  outside the tested ranges (fastpath/compatibility.py): {', '.join(untested)}")
        say(f"  so the tests run with {OVERRIDE_ENV}={found['dagster']}; if they pass, record it")
        env = dict(os.environ, **{OVERRIDE_ENV: found["dagster"]})
    say(f"  pytest {' '.join(t.split('/')[-1] for t in tests)}")
    process = subprocess.Popen(
        [venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = ""
    log = venv.path / f"pytest-{label}.log"
    with log.open("w") as out:
        for line in process.stdout:
            out.write(line)
            if line.strip():
                last = line.strip()
            if re.match(r"^(FAILED|ERROR) ", line) or " passed" in line or " failed" in line:
                print(f"    {line.rstrip()}", flush=True)
    ok = process.wait() == 0
    return ok, f"{last.strip('= ')} (log: {log.relative_to(REPO)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=".venv-compat", help="where (default .venv-compat)")
    parser.add_argument("--keep", action="store_true", help="reuse the venv instead of a new one")
    args = parser.parse_args()
    venv = Venv(REPO / args.venv)
    results: list[tuple[str, dict[str, str], bool | None, str]] = []

    say(f"a new virtual environment in {args.venv}" if not args.keep else f"reusing {args.venv}")
    venv_args = [sys.executable, "-m", "venv"] + ([] if args.keep else ["--clear"])
    run([*venv_args, str(venv.path)], check=True)
    venv.pip("install", "--quiet", "--upgrade", "pip")

    # 1. The newest set, in one resolution with posfed (whose ranges bound it).
    say("1. the newest dagster, dagster-webserver, pandera and SQLAlchemy that install together")
    venv.pip(
        "install", "--quiet", "--upgrade", "-e", ".", "-e", "./dev",
        "dagster", "dagster-webserver", "pandera", "sqlalchemy", *tools_for_tests(),
    )  # fmt: skip
    newest = show("resolved", venv)
    ok, summary = pytest(venv, TESTS, newest, "newest-set")
    results.append(("newest set", newest, ok, summary))

    # 2. dagster-postgres for that dagster, if it has one.
    say(f"2. dagster-postgres for dagster {newest['dagster']}")
    # Within posfed's range: unbounded, pip would find an ancient release that pins nothing.
    postgres = declared("dagster-postgres")
    matching = venv.pip(
        "install", "--quiet", "--dry-run", "--upgrade", postgres,
        f"dagster=={newest['dagster']}", "dagster-webserver==" + newest["dagster-webserver"],
        check=False,
    )  # fmt: skip
    if matching.returncode == 0:
        pin = f"dagster=={newest['dagster']}"
        venv.pip("install", "--quiet", "--upgrade", postgres, pin)
        with_postgres = show("resolved", venv)
        ok, summary = pytest(venv, POSTGRES_TESTS, with_postgres, "postgres")
        results.append(("dagster-postgres", with_postgres, ok, summary))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            report = Path(scratch) / "report.json"
            venv.pip(
                "install", "--quiet", "--dry-run", "--ignore-installed", "--no-deps",
                "--report", str(report), postgres,
            )  # fmt: skip
            [item] = json.loads(report.read_text())["install"]
        needs = [r for r in item["metadata"].get("requires_dist", []) if r.startswith("dagster")]
        release = item["metadata"]["version"]
        summary = (
            f"no release for dagster {newest['dagster']} (the newest, {release}, requires "
            f"{', '.join(needs)}): PostgreSQL instance tests not run here; `make test` runs them "
            "where it installs"
        )
        say(f"  {summary}")
        results.append(("dagster-postgres", {"dagster-postgres": release}, None, summary))
    if matching.returncode == 0:  # back to the set without it, for step 3
        venv.pip("uninstall", "--quiet", "--yes", "dagster-postgres")

    # 3. dagster alone, as `pip install -U dagster` does, within posfed's range.
    say("3. the newest dagster alone (pip install -U dagster)")
    venv.pip("install", "--quiet", "--upgrade", declared("dagster"), check=False)
    alone = show("resolved", venv)
    if alone["dagster"] == newest["dagster"]:
        summary = f"no dagster newer than {newest['dagster']}: as in 1."
        say(f"  {summary}")
        results.append(("dagster alone", alone, None, summary))
    else:
        ok, summary = pytest(venv, TESTS, alone, "dagster-alone")
        results.append(("dagster alone", alone, ok, summary))

    say()
    say("summary")
    for title, found, ok, summary in results:
        verdict = {True: "PASSED", False: "FAILED", None: "--"}[ok]
        say(f"  {title:17} {verdict:7} " + ", ".join(f"{n} {v}" for n, v in found.items()))
        say(f"  {'':17} {'':7} {summary}")
    return 1 if any(ok is False for _, _, ok, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
