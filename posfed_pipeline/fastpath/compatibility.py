"""The Dagster releases posfed is tested on, and what it does on another.

posfed's fast path (the inbox trigger and the warm run workers) and its pooled instance
storages rest on Dagster internals (``dagster_internals.py``). pyproject.toml lets pip install
any 1.13 release, so that Dagster's weekly fixes reach a store without a posfed release; the
ones below are those the fast path's contract tests, the UI launch tests and a demo receipt end
to end passed on (``make compat`` runs them on the newest). On any other release:

- the fast path refuses to start, naming the tested releases, the found one and the override;
  everything else runs: the daemon's sensors (the catch-up path) take every receipt, a few
  seconds later, runs start in fresh processes through Dagster's default launcher, and the
  instance keeps Dagster's own storages instead of posfed's pooled subclasses of them. So a
  ``pip install -U dagster`` slows a checkout rather than stopping it, as long as the release
  keeps the private modules ``dagster_internals`` imports: one that moved them stops every
  Dagster process at start (dagster.yaml names posfed's launcher and storages), with this
  module's message; docs/deployment.md says how to roll back.
- ``POSFED_ALLOW_UNTESTED_DAGSTER=<the installed dagster release>`` in every posfed service's
  environment runs all of posfed on it anyway, with a warning at each start. It names the
  release, so that an override given for one release does not carry over to the next upgrade.

An environment variable, not a key of posfed.toml: the store file describes the store, this
describes the software installed on one server, and the instance's storages (loaded by every
Dagster process, without posfed's configuration) must read it too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

from packaging.version import InvalidVersion, Version

# From posfed's floor (pyproject.toml) to the newest release `make compat` passed on. dagster
# alone may be a release ahead of dagster-webserver (`pip install -U dagster` leaves that set).
TESTED_RANGES: dict[str, tuple[str, str]] = {
    "dagster": ("1.13.27", "1.13.29"),
    "dagster-webserver": ("1.13.27", "1.13.28"),
    "dagster-postgres": ("0.29.27", "0.29.27"),
}
# dagster-postgres (the production instance) is tested only with the dagster it requires: its
# releases follow dagster's a few days later, and pip holds dagster back to them until then.
DAGSTER_TESTED_WITH_POSTGRES: tuple[str, str] = ("1.13.27", "1.13.27")

OVERRIDE_ENV = "POSFED_ALLOW_UNTESTED_DAGSTER"


def installed_versions() -> dict[str, str]:
    """The installed release of each package posfed tests a range of (absent ones left out)."""
    return dict(_installed_versions())


@lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    found = []
    for package in TESTED_RANGES:
        with contextlib.suppress(PackageNotFoundError):  # not installed: not used
            found.append((package, version(package)))
    return tuple(found)


def _in(found: str, tested: tuple[str, str]) -> bool:
    try:
        return Version(tested[0]) <= Version(found) <= Version(tested[1])
    except InvalidVersion:
        return False


def _span(tested: tuple[str, str]) -> str:
    return tested[0] if tested[0] == tested[1] else f"{tested[0]}–{tested[1]}"


def tested_releases() -> str:
    """The tested releases, as a person reads them."""
    ranges = [f"{package} {_span(tested)}" for package, tested in TESTED_RANGES.items()]
    ranges[-1] += f" (with dagster {_span(DAGSTER_TESTED_WITH_POSTGRES)})"
    return ", ".join(ranges)


def rollback_command(installed: Iterable[str] = ("dagster", "dagster-webserver")) -> str:
    """A pip command that installs a tested set of the ``installed`` packages (pip picks the
    newest set that fits; named together, so that none is left at a release the others'
    requirements exclude)."""
    ranges = " ".join(
        f"'{package}>={floor},<={newest}'"
        for package, (floor, newest) in TESTED_RANGES.items()
        if package in installed
    )
    return f"pip install {ranges}"


@dataclass(frozen=True)
class DagsterCompatibility:
    """What was found against what is tested, and whether the fast path may run on it."""

    found: Mapping[str, str]  # package -> installed release
    untested: tuple[str, ...]  # "dagster 1.14.0", ... : what falls outside the tested ranges
    override: str | None  # the value of POSFED_ALLOW_UNTESTED_DAGSTER, if set

    @property
    def tested(self) -> bool:
        return not self.untested

    @property
    def overridden(self) -> bool:
        """Untested, and the operator allowed this very dagster release."""
        return (
            not self.tested
            and self.override is not None
            and self.override.strip() == self.found.get("dagster")
        )

    @property
    def fast_path_allowed(self) -> bool:
        return self.tested or self.overridden

    def found_releases(self) -> str:
        return ", ".join(f"{package} {release}" for package, release in self.found.items())

    def message(self) -> str:
        """One paragraph for the fast path's log, ``posfed demo`` and ``posfed status``."""
        if self.tested:
            return f"Dagster: {self.found_releases()}, tested with posfed."
        dagster = self.found.get("dagster", "?")
        head = (
            f"Dagster: found {self.found_releases()}; posfed is tested on {tested_releases()}, "
            f"not on {', '.join(self.untested)}."
        )
        if self.overridden:
            return (
                f"{head} {OVERRIDE_ENV}={dagster} is set: the fast path runs on it anyway, "
                "UNTESTED. If runs misbehave, unset it and restart the services, or install a "
                f"tested set: {rollback_command(self.found)}"
            )
        mismatch = (
            f" ({OVERRIDE_ENV}={self.override.strip()} names another release: the override "
            "holds for the release it names.)"
            if self.override
            else ""
        )
        return (
            f"{head} The fast path is off: the sensors deliver every receipt, a few seconds "
            "later, and runs start in fresh processes. To run it on this release anyway, set "
            f"{OVERRIDE_ENV}={dagster} for every posfed service and restart them; or install a "
            f"tested set: {rollback_command(self.found)}.{mismatch}"
        )


def check(
    found: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
) -> DagsterCompatibility:
    """The installed releases (or ``found``) against the tested ranges; the override from the
    environment (or ``env``)."""
    found = dict(installed_versions() if found is None else found)
    env = os.environ if env is None else env
    untested = [
        f"{package} {release}"
        for package, release in found.items()
        if package in TESTED_RANGES and not _in(release, TESTED_RANGES[package])
    ]
    dagster = found.get("dagster", "?")
    if "dagster-postgres" in found and not _in(dagster, DAGSTER_TESTED_WITH_POSTGRES):
        untested.append(f"dagster {dagster} with dagster-postgres {found['dagster-postgres']}")
    override = env.get(OVERRIDE_ENV) or None
    return DagsterCompatibility(found=found, untested=tuple(untested), override=override)
