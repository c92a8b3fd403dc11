"""Every exception class posfed defines derives from ``PosfedError``, so that a caller can tell
"posfed refused this, with a reason" from a bug, and a new class cannot forget it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import posfed_dev

import posfed_pipeline
from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.central_db.errors import CentralDbError

# Alembic's environment script runs only inside an Alembic command (it needs its context).
NOT_IMPORTABLE = {"posfed_pipeline.core.central_db.migrations.env"}


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for package in (posfed_pipeline, posfed_dev):
        for module_info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if module_info.name in NOT_IMPORTABLE or module_info.name.endswith(".__main__"):
                continue
            module = importlib.import_module(module_info.name)
            found += [
                cls
                for _, cls in inspect.getmembers(module, inspect.isclass)
                if issubclass(cls, BaseException) and cls.__module__ == module.__name__
            ]
    return found


def test_every_posfed_exception_derives_from_posfed_error():
    classes = _exception_classes()
    assert len(classes) > 20, "the walk found too few classes: it no longer sees the packages"
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, PosfedError)]
    assert strays == [], f"derive these from PosfedError (core/base/errors.py): {strays}"


def test_each_keeps_its_built_in_base():
    """``except ValueError`` around a parser, ``except OSError`` around a file still work."""
    from posfed_pipeline.core.base.fsutil import ContentConflict, NoHardLinks
    from posfed_pipeline.core.central_db.errors import DatabaseConfigError
    from posfed_pipeline.core.central_db.timeouts import DeadlineExceeded
    from posfed_pipeline.core.intake.parsing import IntakeError
    from posfed_pipeline.core.state.inbox import NotARegularFile

    assert issubclass(IntakeError, ValueError)
    assert issubclass(DatabaseConfigError, ValueError)
    assert issubclass(DeadlineExceeded, TimeoutError)
    assert issubclass(NoHardLinks, OSError)
    assert issubclass(ContentConflict, FileExistsError)
    assert issubclass(NotARegularFile, FileNotFoundError)
    error = NoHardLinks(1, "Operation not permitted", "/x")  # OSError's arguments still apply
    assert (error.errno, error.filename) == (1, "/x")


def test_the_central_databases_errors_are_one_family():
    from posfed_pipeline.core.central_db.errors import DatabaseConfigError, DatabaseUnavailable
    from posfed_pipeline.core.central_db.timeouts import DeadlineExceeded
    from posfed_pipeline.core.stages.sync import SchemaMissing

    for cls in (DatabaseUnavailable, DatabaseConfigError, DeadlineExceeded, SchemaMissing):
        assert issubclass(cls, CentralDbError)
