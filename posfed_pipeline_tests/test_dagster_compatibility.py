"""Which Dagster releases posfed is tested on, and what it says and does on another
(fastpath/compatibility.py). The found releases are given to the functions that decide, as a
store server would find them after a `pip install -U`; the fast path's own refusal and the
instance's storages are in test_fastpath.py, the releases themselves in `make compat`."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from posfed_pipeline.cli.common import EXIT_UNTESTED_DAGSTER
from posfed_pipeline.cli.demo import demo_fast_path
from posfed_pipeline.cli.status_table import print_status
from posfed_pipeline.fastpath.compatibility import OVERRIDE_ENV, TESTED_RANGES, check
from posfed_pipeline_tests.support.repo import REPO_ROOT

NEWEST_SET = {"dagster": "1.13.28", "dagster-webserver": "1.13.28"}
PRODUCTION_SET = {
    "dagster": "1.13.27",
    "dagster-webserver": "1.13.27",
    "dagster-postgres": "0.29.27",
}


@pytest.mark.parametrize(
    "found",
    [
        PRODUCTION_SET,
        NEWEST_SET,
        # What `pip install -U dagster` alone leaves: dagster a release ahead of its webserver.
        {"dagster": "1.13.29", "dagster-webserver": "1.13.28"},
    ],
)
def test_the_tested_sets_run_everything_and_say_so_briefly(found):
    verdict = check(found=found, env={})
    assert verdict.tested and verdict.fast_path_allowed and not verdict.overridden
    assert verdict.message().startswith(f"Dagster: dagster {found['dagster']}")
    assert demo_fast_path(True, verdict) == (True, None)


@pytest.mark.parametrize(
    "found, untested",
    [
        ({"dagster": "1.13.30", "dagster-webserver": "1.13.28"}, "dagster 1.13.30"),
        ({"dagster": "1.13.26", "dagster-webserver": "1.13.26"}, "dagster 1.13.26"),
        ({"dagster": "1.13.29", "dagster-webserver": "1.13.29"}, "dagster-webserver 1.13.29"),
        ({"dagster": "1.14.0rc1"}, "dagster 1.14.0rc1"),
        ({"dagster": "not-a-version"}, "dagster not-a-version"),
        # dagster upgraded under the production instance's dagster-postgres, which requires
        # the dagster it was released with.
        (
            {"dagster": "1.13.28", "dagster-postgres": "0.29.27"},
            "dagster 1.13.28 with dagster-postgres 0.29.27",
        ),
    ],
)
def test_another_release_turns_the_fast_path_off_and_names_the_override(found, untested):
    verdict = check(found=found, env={})
    assert not verdict.fast_path_allowed
    said = verdict.message()
    assert untested in verdict.untested
    assert f"not on {', '.join(verdict.untested)}." in said
    assert "posfed is tested on dagster 1.13.27–1.13.29, dagster-webserver 1.13.27–1.13.28" in said
    assert "The fast path is off: the sensors deliver every receipt" in said
    assert f"set {OVERRIDE_ENV}={found['dagster']} for every posfed service" in said
    # The way back names every installed package, so pip cannot leave one behind.
    assert "pip install 'dagster>=1.13.27,<=1.13.29'" in said
    assert ("'dagster-postgres>=0.29.27,<=0.29.27'" in said) == ("dagster-postgres" in found)
    assert demo_fast_path(True, verdict) == (False, said)
    assert demo_fast_path(False, verdict) == (False, None)


def test_the_override_holds_for_the_release_it_names_only():
    found = {"dagster": "1.13.30", "dagster-webserver": "1.13.28"}
    allowed = check(found=found, env={OVERRIDE_ENV: "1.13.30"})
    assert allowed.fast_path_allowed and allowed.overridden
    said = allowed.message()
    assert f"{OVERRIDE_ENV}=1.13.30 is set: the fast path runs on it anyway, UNTESTED" in said
    assert demo_fast_path(True, allowed) == (True, said)  # said at start-up all the same

    for other in ("1", "yes", "1.13.29"):
        refused = check(found=found, env={OVERRIDE_ENV: other})
        assert not refused.fast_path_allowed
        assert f"{OVERRIDE_ENV}={other} names another release" in refused.message()
    # On a tested release the override changes nothing and says nothing.
    assert (
        check(found=NEWEST_SET, env={OVERRIDE_ENV: "1.13.28"})
        .message()
        .endswith("tested with posfed.")
    )


def test_posfed_status_shows_the_releases_and_what_an_untested_one_means(capsys):
    print_status([], {}, check(found=NEWEST_SET, env={}))
    shown = capsys.readouterr().out
    assert "dagster 1.13.28, dagster-webserver 1.13.28, tested with posfed." in shown
    print_status([], {}, check(found={"dagster": "1.14.0"}, env={}))
    shown = " ".join(capsys.readouterr().out.split())  # as a person reads it, unwrapped
    assert "found dagster 1.14.0" in shown and f"{OVERRIDE_ENV}=1.14.0" in shown


def test_the_tested_ranges_lie_within_what_pyproject_lets_pip_install():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["prod"]]
    requirements = {r.name: r for r in map(Requirement, declared) if r.name in TESTED_RANGES}
    assert requirements.keys() == TESTED_RANGES.keys()
    for package, (floor, newest) in TESTED_RANGES.items():
        allowed = requirements[package].specifier
        # The floor is the lowest release pip may install; the newest tested one installs too.
        assert f">={floor}" in {str(s) for s in allowed}, (package, allowed)
        assert Version(newest) in allowed and Version(floor) <= Version(newest)


def test_the_fast_path_unit_is_not_restarted_on_an_untested_dagster():
    unit = (REPO_ROOT / "deploy/systemd/posfed-fastpath.service").read_text()
    assert re.findall(r"^RestartPreventExitStatus=(\d+)$", unit, re.M) == [
        str(EXIT_UNTESTED_DAGSTER)
    ]
