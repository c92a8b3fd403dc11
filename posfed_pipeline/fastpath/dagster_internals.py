"""Everything posfed's fast path needs from Dagster that is not public API, in one place.

Tested on the releases in compatibility.py (dagster 1.13.27–1.13.29); on another the fast path
stays off unless the operator allows that release, and the storages below turn into Dagster's
own (compatibility.py says why). posfed_pipeline_tests/test_fastpath.py fails loudly if an
upgrade changes what is used here: a run created here must be recognised by the sensor daemon
as its own (no duplicate after a sensor tick), runs must execute in warm worker processes, and
two of them at once must not deadlock; ``make compat`` runs it on the newest releases.

Public now, and taken from ``dagster`` (``dg.``) rather than from here: ``RunRequest``,
``DefaultRunLauncher`` (the base of launcher.py's run launcher), ``DagsterInstance``,
``DagsterRun``, ``QueuedRunCoordinator`` (coordinator.py). Still private in dagster 1.13, each
because Dagster's public API has no equivalent:

- ``InProcessCodeLocationOrigin`` and ``LoadableTargetOrigin``: the trigger loads the code
  location once, in its own process, under the same location name as workspace.yaml, so the
  runs it creates carry the same repository origin as the sensor daemon's (the daemon matches
  run keys per origin); ``InProcessCodeLocation._get_repo_def`` hands it the job definitions
  that location loaded. The public ``DagsterInstance`` has no way to create a run for a code
  location's job as a sensor's, with that origin.
- ``create_execution_plan`` + ``snapshot_from_execution_plan`` + ``RemoteExecutionPlan`` (what
  ``CodeLocation.get_execution_plan`` does, from the code location's job definition) and
  ``DagsterInstance.create_run`` (a method of the public class, not public itself): what the
  sensor daemon does to create a sensor run (dagster/_daemon/sensor.py, ``_create_sensor_run``).
- ``DagsterInstance._subscribers``: its empty per-run entries are dropped
  (``drop_idle_event_subscriptions``), as they would otherwise grow by one per run for as long
  as a warm worker or the trigger lives.
- ``recon_job_from_origin`` and ``execute_run``: what a run worker process does with an
  existing run's id (the public ``execute_job`` creates a new run); ``ReconstructableRepository``
  to load the job that way before the first run.
- The run launcher's other types (``LaunchRunContext``, ``CheckRunHealthResult``,
  ``WorkerStatus``, ``ConfigurableClassData``), for launcher.py; ``InstigatorType`` for the
  benchmarks' sensor-tick queries.
- The SQLite run, event-log and schedule storages, subclassed to keep one connection pool per
  process: Dagster's own open a new engine and connection for every query (about 65 per run),
  which was more than half of a short run's CPU. Likewise dagster-postgres's storages, which
  open a new PostgreSQL connection per query (its own webserver optimisation swaps in a pooled
  engine the same way, ``optimize_for_webserver``).

Elsewhere, by module path rather than import: the instance profiles' ``compute_logs``
(``dagster._core.storage.noop_compute_log_manager``: the class is in Dagster's API reference,
under that module only) and the daemon's command line (``python -m dagster._daemon``, as
``dagster dev`` starts it: the ``dagster-daemon`` script would depend on PATH); names.py copies
one private tag name (``GRPC_INFO_TAG``), checked by test_fastpath.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from posfed_pipeline.fastpath import compatibility

try:
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.execution.api import create_execution_plan, execute_run
    from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.remote_representation.code_location import InProcessCodeLocation
    from dagster._core.remote_representation.external import RemoteExecutionPlan
    from dagster._core.snap.execution_plan_snapshot import snapshot_from_execution_plan
    from dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log import (
        ConsolidatedSqliteEventLogStorage,
    )
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
    from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import (
        SqliteScheduleStorage,
    )
    from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._serdes import ConfigurableClassData
    from dagster._utils.hosted_user_process import recon_job_from_origin
except ImportError as moved:  # a Dagster far from the tested ones: say which, and what to do
    raise ImportError(f"{moved}. {compatibility.check().message()}") from moved

from posfed_pipeline import packaged
from posfed_pipeline.names import RUN_KEY_TAG, SENSOR_NAME_TAG

# Private types other modules need (the run launcher, the benchmarks), handed on from here.
__all__ = [
    "CheckRunHealthResult",
    "ConfigurableClassData",
    "InstigatorType",
    "LaunchRunContext",
    "WorkerStatus",
]
CODE_MODULE = "posfed_pipeline.definitions"
# The runs the trigger creates must carry the location name the daemon's runs carry.
LOCATION_NAME = packaged.location_name()
REPOSITORY_NAME = "__repository__"


def load_code_location(
    instance: dg.DagsterInstance, working_directory: Path
) -> InProcessCodeLocation:
    origin = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            executable_path=sys.executable,
            module_name=CODE_MODULE,
            working_directory=str(working_directory),
        ),
        location_name=LOCATION_NAME,
    )
    return origin.create_location(instance)


class SensorStyleRunFactory:
    """Creates runs exactly as the sensor daemon would for a terminal's sensor."""

    def __init__(
        self, instance: dg.DagsterInstance, code_location: InProcessCodeLocation, job_name: str
    ):
        self.instance = instance
        self.repository = code_location.get_repository(REPOSITORY_NAME)
        self.remote_job = self.repository.get_full_job(job_name)
        # The job definition the code location loaded (RepositoryDefinition caches it), not a
        # second build of the definitions.
        self.job_def = code_location._get_repo_def(REPOSITORY_NAME).get_job(job_name)

    def create_run(
        self, request: dg.RunRequest, sensor_name: str, run_id: str | None = None
    ) -> dg.DagsterRun:
        """``run_id``: the run's id chosen beforehand (the checkout's recording run, whose id
        its receipts were accepted under); None: a new one."""
        # As the daemon does: partition tags and config only for a partitioned request.
        resolved = (
            request.with_resolved_tags_and_config(
                target_definition=self.job_def,
                dynamic_partitions_requests=[],
                dynamic_partitions_store=self.instance,
            )
            if request.partition_key is not None
            else request
        )
        # From the code location's job definition, as CodeLocation.get_execution_plan would
        # from its reconstructable job, which keeps one job definition process-wide
        # (lru_cache(maxsize=1)): a receipts run after a sync run would look the job up again.
        plan = RemoteExecutionPlan(
            execution_plan_snapshot=snapshot_from_execution_plan(
                create_execution_plan(
                    self.job_def,
                    run_config=resolved.run_config,
                    instance_ref=self.instance.get_ref() if self.instance.is_persistent else None,
                ),
                self.remote_job.identifying_job_snapshot_id,
            )
        )
        tags = {
            **(self.remote_job.run_tags or {}),
            **resolved.tags,
            SENSOR_NAME_TAG: sensor_name,
            RUN_KEY_TAG: resolved.run_key,
        }
        return self.instance.create_run(
            job_name=self.remote_job.name,
            run_id=run_id,
            run_config=resolved.run_config,
            resolved_op_selection=self.remote_job.resolved_op_selection,
            step_keys_to_execute=None,
            status=dg.DagsterRunStatus.NOT_STARTED,
            op_selection=None,
            root_run_id=None,
            parent_run_id=None,
            tags=tags,
            job_snapshot=self.remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=self.remote_job.parent_job_snapshot,
            remote_job_origin=self.remote_job.get_remote_origin(),
            job_code_origin=self.remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=self.repository.asset_graph,
        )

    def existing_run(self, run_key: str, sensor_name: str) -> dg.DagsterRun | None:
        runs = self.instance.get_runs(
            filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor_name}),
            limit=1,
        )
        return runs[0] if runs else None


_reconstructed: dict[str, object] = {}


def load_job_as_runs_will(job_name: str) -> dg.JobDefinition:
    """Load the code location's job the way a run's origin will (module ``defs``), ahead of
    the first run: the definitions are built here, once (posfed_pipeline.definitions keeps
    them for the process)."""
    repository = ReconstructableRepository.for_module(CODE_MODULE, "defs", os.getcwd())
    return repository.get_definition().get_job(job_name)


def _reconstructable(origin):
    # Reconstructing a job imports and builds the definitions: once per worker, not per run.
    key = origin.get_id()
    if key not in _reconstructed:
        _reconstructed[key] = recon_job_from_origin(origin)
    return _reconstructed[key]


def execute_run_in_this_process(
    instance: dg.DagsterInstance, run: dg.DagsterRun
) -> dg.DagsterRunStatus:
    """Execute a created run here, as a run worker would; returns its final status."""
    origin = run.job_code_origin
    if origin is None:
        raise ValueError(f"run {run.run_id} has no code origin; it cannot be executed here")
    try:
        execute_run(_reconstructable(origin), run, instance)
    finally:
        drop_idle_event_subscriptions(instance)
    finished = instance.get_run_by_id(run.run_id)
    return finished.status if finished else dg.DagsterRunStatus.FAILURE


def drop_idle_event_subscriptions(instance: dg.DagsterInstance) -> int:
    """Forget the runs nobody listens to; returns how many.

    Every event a process reports looks up its run's listeners in the instance's
    ``defaultdict(list)``, which keeps an empty list per run id for good: about 200 bytes per
    run, without end, in a process that handles runs for weeks (a worker, the trigger).
    """
    subscribers = instance._subscribers  # noqa: SLF001
    idle = [run_id for run_id, listeners in list(subscribers.items()) if not listeners]
    for run_id in idle:
        subscribers.pop(run_id, None)
    return len(idle)


# --- SQLite instance storage with one connection pool per process -------------------------------

_engines: dict[tuple[str, int], sa.Engine] = {}
_engines_lock = threading.Lock()


def pooled_sqlite_engine(conn_string: str) -> sa.Engine:
    """One engine (and connection pool) per database file and process.

    Keyed by pid as well: a forked child must not share its parent's SQLite connections.
    """
    key = (conn_string, os.getpid())
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = sa.create_engine(
                conn_string,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
                pool_size=5,
                max_overflow=20,
            )
            _engines[key] = engine
        return engine


# Dagster's storages ask the database's catalog whether a migration's columns or tables exist,
# several times per run, uncached: on PostgreSQL that reflection was about a tenth of a run
# worker's time. Columns do not vanish while a process runs (`dagster instance migrate` only
# adds, and needs a restart anyway), so a yes is kept; a no is asked again.
_SCHEMA_CHECKS = (
    "has_run_stats_index_cols",
    "has_bulk_actions_selector_cols",
    "has_backfill_id_column",
    "has_bulk_action_job_name_column",
    "has_backfill_tags_table",
    "has_asset_key_col",
    "has_default_pool_limit_col",
    "has_instigators_table",
)


def _keeping_yes(check):
    @functools.wraps(check)
    def kept(self, *args):
        known = self.__dict__.setdefault("_schema_yes", set())
        key = (check.__name__, *args)
        if key in known:
            return True
        answer = check(self, *args)
        if answer:
            known.add(key)
        return answer

    return kept


def _remember_schema(cls: type) -> type:
    for name in _SCHEMA_CHECKS:
        check = getattr(cls, name, None)
        if check is not None:
            setattr(cls, name, _keeping_yes(check))
    return cls


@contextmanager
def _pooled_transaction(conn_string: str):
    # What Dagster's SQLite storages do per query (connect, begin, commit), minus the new
    # engine and connection each time.
    with pooled_sqlite_engine(conn_string).connect() as conn, conn.begin():
        yield conn


class _PooledSqliteConnections:
    """Every query on the process's pooled engine; dispose() closes the idle connections (file
    handles), and the engine stays usable by the other instances of this process."""

    _conn_string: str

    def connect(self):
        return _pooled_transaction(self._conn_string)

    def dispose(self) -> None:
        super().dispose()
        pooled_sqlite_engine(self._conn_string).dispose()


def dagsters_own_storage(
    pooled: type, found: compatibility.DagsterCompatibility | None = None
) -> type | None:
    """The Dagster storage class ``pooled`` extends, when posfed's pooling must stay out of the
    instance: on a Dagster release outside the tested ones (``found``, default: the installed
    ones), unless the operator allowed it. None when the pooled class may be used.

    The pooling rests on how Dagster's storages connect; a release that changed that must not
    take down the instance every Dagster process loads (the daemon's sensors among them)."""
    verdict = compatibility.check() if found is None else found
    if verdict.fast_path_allowed:
        return None
    return next(c for c in pooled.__mro__ if c.__module__.split(".")[0].startswith("dagster"))


class _PooledFromLocal(_PooledSqliteConnections):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        own = dagsters_own_storage(cls)
        if own is not None:
            return own.from_config_value(inst_data, config_value)
        # Dagster's own names its class here; build this one instead.
        return cls.from_local(inst_data=inst_data, **config_value)


@_remember_schema
class PooledSqliteRunStorage(_PooledFromLocal, SqliteRunStorage):
    """Dagster's SQLite run storage, reusing its connections (``run_storage`` in dagster.yaml)."""


@_remember_schema
class PooledSqliteScheduleStorage(_PooledFromLocal, SqliteScheduleStorage):
    """Dagster's SQLite schedule storage (sensor ticks and cursors), reusing its connections."""


@_remember_schema
class PooledSqliteEventLogStorage(_PooledSqliteConnections, ConsolidatedSqliteEventLogStorage):
    """One SQLite event log for every run, reusing its connections."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        own = dagsters_own_storage(cls)
        if own is not None:
            return own.from_config_value(inst_data, config_value)
        return super().from_config_value(inst_data, config_value)

    def _connect(self):
        return self.connect()


# --- PostgreSQL instance storage (production profile) with one connection pool per process ------


IDLE_PING_SECONDS = 10.0


def _ping_after_idle(engine: sa.Engine) -> None:
    """Check a connection before use only if it sat idle: a run's ~65 queries each check one out,
    and SQLAlchemy's ``pool_pre_ping`` (a round trip every time) was a fifth of a run worker's
    time. A connection the server dropped while it was idle is replaced before use; one that
    drops in use fails that query, and SQLAlchemy then discards the pool's stale connections."""

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, proxy) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < IDLE_PING_SECONDS:
            return
        try:
            with contextlib.closing(dbapi_connection.cursor()) as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:
            raise sa.exc.DisconnectionError("idle connection is gone") from exc


def _pooled_postgres(base: type) -> type:
    """``base`` (a dagster-postgres storage) with a pooled engine shared within the process."""
    from dagster_postgres.utils import (
        create_pg_engine,
        get_token_provider_from_config,
        pg_url_from_config,
    )

    class Pooled(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            key = (self.postgres_url, os.getpid())
            with _engines_lock:
                engine = _engines.get(key)
                if engine is None:
                    engine = create_pg_engine(
                        self.postgres_url,
                        self._token_provider,
                        isolation_level="AUTOCOMMIT",
                        # A few per process: daemon threads, webserver, fast path, each worker.
                        pool_size=2,
                        max_overflow=6,
                        pool_recycle=3600,
                    )
                    _ping_after_idle(engine)
                    _engines[key] = engine
            self._engine = engine

        @classmethod
        def from_config_value(cls, inst_data, config_value):
            own = dagsters_own_storage(cls)
            if own is not None:
                return own.from_config_value(inst_data, config_value)
            # dagster-postgres names its own class here; build this one instead.
            return cls(
                inst_data=inst_data,
                postgres_url=pg_url_from_config(config_value),
                should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                token_provider=get_token_provider_from_config(config_value),
            )

    Pooled.__name__ = Pooled.__qualname__ = f"Pooled{base.__name__}"
    Pooled.__module__ = __name__
    return _remember_schema(Pooled)


_POSTGRES_STORAGES = {
    "PooledPostgresRunStorage": "PostgresRunStorage",
    "PooledPostgresEventLogStorage": "PostgresEventLogStorage",
    "PooledPostgresScheduleStorage": "PostgresScheduleStorage",
}


def __getattr__(name: str):
    # Built on first use, so that the embedded (SQLite) profile never imports dagster-postgres
    # (the `prod` extra).
    if name not in _POSTGRES_STORAGES:
        raise AttributeError(name)
    import dagster_postgres

    cls = _pooled_postgres(getattr(dagster_postgres, _POSTGRES_STORAGES[name]))
    globals()[name] = cls
    return cls
