"""The names posfed gives its Dagster definitions and run tags, each defined once.

The Dagster layer (``defs/``), the fast path, the CLI and the tests refer to these. No Dagster
import, nor any other: the run launcher loads this module in every Dagster process. Asset keys
are strings as Dagster prints them (one part each); Dagster takes them wherever a key goes.
A name here is part of what an operator sees and what deploy/dagster.*.yaml and a store's
run history refer to: renaming one is a migration, not a refactoring.
"""

# Asset groups
RECEIPTS_GROUP = "receipts"
AUDITS_GROUP = "audits"
TERMINALS_GROUP = "terminals"

# Asset keys
RECEIPT_FILES = "receipt_files"
VALIDATED_RECEIPTS = "validated_receipts"
DAT_FILES = "dat_files"
CENTRAL_DB_RECEIPTS = "central_db_receipts"
DAILY_RECONCILIATION = "daily_reconciliation"
TENANT_SETTLEMENTS = "tenant_settlements"
ARCHIVE_RETENTION = "archive_retention"
TERMINAL_INBOXES = "terminal_inboxes"

# The op that materializes validated_receipts and dat_files: a receipts run's config is keyed
# by it.
RECEIPT_PIPELINE_OP = "receipt_pipeline"
TERMINAL_HEALTH_CHECKS_OP = "terminal_health_checks"

# Asset checks
VALIDATION_CHECK = "validation_pass_rate"  # on validated_receipts
DAT_REPARSE_CHECK = "dat_files_reparse"  # on dat_files
LAG_CHECK = "central_db_lag"  # on central_db_receipts
DB_ROWS_CHECK = "db_rows_match_archive"  # on daily_reconciliation
DAT_FILES_CHECK = "dat_files_match_db"  # on daily_reconciliation
RECEIPT_NUMBERS_CHECK = "receipt_numbers_complete"  # on daily_reconciliation


def health_check_name(terminal_id: str) -> str:
    """A terminal's check on terminal_inboxes."""
    return f"{terminal_id}_is_delivering"


# Jobs
RECEIPTS_JOB = "receipts_job"
SYNC_JOB = "central_db_sync_job"
RECONCILIATION_JOB = "reconciliation_job"
SETTLEMENT_JOB = "settlement_job"
RETENTION_JOB = "retention_job"

# Sensors
SYNC_SENSOR = "central_db_sync_sensor"
LATE_RECEIPTS_SENSOR = "late_receipts_sensor"
RUN_FAILURE_SENSOR = "run_failure_alert_sensor"
LAG_ALERT_SENSOR = "central_db_lag_alert_sensor"
HEALTH_SENSOR = "terminal_health_sensor"


def inbox_sensor_name(terminal_id: str) -> str:
    """A terminal's inbox sensor: also the sensor name the fast path's runs carry."""
    return f"{terminal_id}_inbox_sensor"


# Schedules
RECONCILIATION_SCHEDULE = "nightly_reconciliation_schedule"
SETTLEMENT_SCHEDULE = "nightly_settlement_schedule"
RETENTION_SCHEDULE = "nightly_retention_schedule"

# Partition dimensions of a terminal × day partition.
TERMINAL_DIMENSION = "terminal"
DAY_DIMENSION = "day"

# Run tags posfed sets and reads. A run's *lane* is what serialises it (``run_tags.lane_of``).
TERMINAL_TAG = "posfed/terminal"  # a receipts run: the terminal whose files it carries
LANE_TAG = "posfed/lane"  # any other serialised run: its lane
SYNC_LANE = "central_db_sync"  # the LANE_TAG of a sync run
# The ledger's sync slot held by the fast path's sync pass (no run): its key starts so.
SYNC_PASS_PREFIX = "sync-pass:"
REJECTED_TAG = "posfed/rejected"  # a receipts run that quarantined files: how many
# A receipts run carrying a backlog (a flooded inbox, a catch-up after an outage): it runs at a
# lower CPU priority, so the terminals whose cashiers wait for one receipt go first.
BACKLOG_TAG = "posfed/backlog"
# A receipts run recording what the fast path's checkout processed under its id: its lane.
CHECKOUT_RECORD_TAG = "posfed/checkout_record"
CHECKOUT_RECORD_LANE = "checkout_records"
ACCEPTED_TAG = "posfed/run_worker_pool"  # set when a warm pool queues a run
# Set on a failed sync run: "transient" (the central database was out of reach) and "repeated"
# (the same error as the attempt before) are not alerted one by one: the lag check and the lag
# alert speak for them. "permanent" (a new error no retry fixes) is alerted at once.
FAILURE_KIND_TAG = "posfed/sync_failure"
LATE_RECEIPTS_TAG = "posfed/late_receipts"  # an audit run again for a day late receipts changed
# Tags Dagster sets. Its default launcher's is hidden, hence the dot
# (dagster._core.storage.tags.GRPC_INFO_TAG; test_fastpath pins it).
GRPC_INFO_TAG = ".dagster/grpc_info"
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
PARTITION_TAG = "dagster/partition"
# A multi-partition run's terminal dimension.
TERMINAL_PARTITION_TAG = f"{PARTITION_TAG}/{TERMINAL_DIMENSION}"

# --- The head office (posfed_pipeline/headoffice): a code location of its own, on a head office
# server, reading the central database; a store never loads it.
HEADOFFICE_LOCATION = "headoffice"
HEADOFFICE_GROUP = "headoffice"
# The stores' assets it reads keep their keys in its graph (CENTRAL_DB_RECEIPTS and
# TENANT_SETTLEMENTS, above: one meaning each); its own:
STORE_ACTIVITY = "store_activity"
CHAIN_SETTLEMENTS = "chain_settlements"
UNSETTLED_STORE_DAYS = "unsettled_store_days"
# Asset checks
EVERY_STORE_LISTED_CHECK = "every_store_listed"  # on store_activity
EVERY_STORE_SETTLED_CHECK = "every_store_settled"  # on chain_settlements (one day)
CLOSED_DAYS_SETTLED_CHECK = "closed_days_settled"  # on unsettled_store_days
# Jobs and schedules
STORE_ACTIVITY_JOB = "store_activity_job"
CHAIN_SETTLEMENT_JOB = "chain_settlement_job"
UNSETTLED_DAYS_JOB = "unsettled_days_job"
STORE_ACTIVITY_SCHEDULE = "store_activity_every_5_minutes"
CHAIN_SETTLEMENT_SCHEDULE = "chain_settlement_daily"
UNSETTLED_DAYS_SCHEDULE = "unsettled_days_hourly"


def store_name(store_id: str) -> str:
    """A store id as Dagster's names take it (letters, digits, '_'): ``store-001`` ->
    ``store_001`` (headoffice.toml refuses two ids that would read the same)."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in store_id)


def store_sending_check_name(store_id: str) -> str:
    """A store's check on store_activity: is it sending while open?"""
    return f"{store_name(store_id)}_is_sending"


def store_sync_check_name(store_id: str) -> str:
    """A store's check on store_activity: is its sync current?"""
    return f"{store_name(store_id)}_sync_is_current"
