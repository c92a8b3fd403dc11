"""Assets: receipt files → validated receipts → central DB rows → .dat files.

The three computed assets are materialized by one step on purpose: a receipt is validated,
loaded and rendered as one unit (never half-loaded), and one step keeps a run short. Lineage,
metadata and checks are still reported per asset.
"""

import time
from contextlib import contextmanager
from decimal import Decimal

import dagster as dg
from pydantic import Field

from posfed_pipeline.core import inbox, processing, retention, store
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.dat import check_dat, load_spec
from posfed_pipeline.defs.partitions import split_terminal_day_key
from posfed_pipeline.defs.resources import CentralDbResource

GROUP = "receipts"
RECEIPT_FILES = dg.AssetKey("receipt_files")
VALIDATED_RECEIPTS = dg.AssetKey("validated_receipts")
CENTRAL_DB_RECEIPTS = dg.AssetKey("central_db_receipts")
DAT_FILES = dg.AssetKey("dat_files")
PIPELINE_OP = "receipt_pipeline"


class ReceiptBatchConfig(dg.Config):
    files: list[str] = Field(
        default_factory=list,
        description="Inbox file names to process. Empty: re-process the partition's day from "
        "the archive (a backfill).",
    )


def receipt_op_config(batch: ReceiptBatchConfig) -> dict:
    return {"ops": {PIPELINE_OP: {"config": batch.model_dump()}}}


def build_receipt_assets(
    posfed: PosfedConfig, partitions: dg.PartitionsDefinition
) -> list[dg.AssetSpec | dg.AssetsDefinition]:
    receipt_files = dg.AssetSpec(
        RECEIPT_FILES,
        description="Receipt files the POS terminals drop into their inbox folders.",
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"file", "json"},
    )

    @dg.multi_asset(
        name=PIPELINE_OP,
        specs=[
            dg.AssetSpec(
                VALIDATED_RECEIPTS,
                deps=[RECEIPT_FILES],
                description="Receipts that passed the pandera schemas; the rest are "
                "quarantined with their reasons.",
                kinds={"pandas", "pandera"},
            ),
            dg.AssetSpec(
                CENTRAL_DB_RECEIPTS,
                deps=[VALIDATED_RECEIPTS],
                description="Receipt and line rows in the central register's database.",
                kinds={"sqlalchemy"},
            ),
            dg.AssetSpec(
                DAT_FILES,
                deps=[CENTRAL_DB_RECEIPTS],
                description="Fixed-width .dat files for the central billing software.",
                kinds={"file"},
            ),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "validation_pass_rate",
                asset=VALIDATED_RECEIPTS,
                description="Every receipt of the run passed validation.",
            ),
            dg.AssetCheckSpec(
                "dat_files_reparse",
                asset=DAT_FILES,
                description="Every .dat file written re-parses against its spec version.",
            ),
        ],
        partitions_def=partitions,
        group_name=GROUP,
        # Transient failures (a locked database, a busy disk) retry at 1 s, 2 s, 4 s.
        retry_policy=dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL),
    )
    def receipt_pipeline(
        context: dg.AssetExecutionContext,
        config: ReceiptBatchConfig,
        central_db: CentralDbResource,
    ):
        terminal_id, day = split_terminal_day_key(context.partition_key)
        terminal = posfed.terminal(terminal_id)
        spec = load_spec(posfed.dat_spec)
        with classified_errors("central database"):
            central_db.check_schema()
            engine = central_db.get_engine()

        from_archive = not config.files
        if from_archive:
            restored = retention.restore_day(terminal, day)
            paths = inbox.archived_files(terminal, day)
            context.log.info(
                f"backfill: re-processing {len(paths)} archived file(s) of {day}"
                + (f" ({restored} restored from a compressed archive)" if restored else "")
            )
        else:
            try:
                paths = [inbox.inbox_path(terminal, name) for name in config.files]
            except ValueError as exc:
                raise dg.Failure(description=str(exc), allow_retries=False) from None
        mtimes = {p.name: _mtime(p) for p in paths}
        move = not from_archive

        batch = processing.read_batch(
            terminal,
            paths,
            quarantine=move,
            incomplete_grace_seconds=posfed.incomplete_grace_seconds if move else 0.0,
        )
        if batch.deferred:
            # The terminal's sensor looks at them again once their writer had time to finish.
            context.log.warning(
                f"{len(batch.deferred)} file(s) unreadable but modified in the last "
                f"{posfed.incomplete_grace_seconds:g} s, left in the inbox: "
                + ", ".join(batch.deferred[:20])
            )
        report = processing.validate(
            posfed, terminal, batch, quarantine=move, check_age=move, spec=spec
        )
        rejected = len(batch.rejected) + len(report.invalid)
        yield dg.MaterializeResult(
            asset_key=VALIDATED_RECEIPTS,
            metadata={
                "files": len(paths) - len(batch.missing) - len(batch.deferred),
                "receipts_valid": len(report.valid),
                "receipts_rejected": rejected,
                "already_handled": len(batch.missing),
                "still_being_written": len(batch.deferred),
            },
        )
        total = len(report.valid) + rejected
        yield dg.AssetCheckResult(
            asset_key=VALIDATED_RECEIPTS,
            check_name="validation_pass_rate",
            passed=rejected == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "pass_rate": dg.MetadataValue.float(len(report.valid) / total if total else 1.0),
                "rejected": rejected,
                "reasons": dg.MetadataValue.md(_reasons_table(batch, report)),
            },
        )

        with classified_errors("loading into the central database"):
            loaded = processing.load(
                engine, terminal, batch, report.valid, quarantine=move, run_id=context.run.run_id
            )
        yield dg.MaterializeResult(
            asset_key=CENTRAL_DB_RECEIPTS,
            metadata={
                "receipts_inserted": len(loaded.inserted),
                "receipts_already_loaded": len(loaded.duplicates),
                "conflicts_quarantined": len(loaded.conflicts),
                "conflicts": dg.MetadataValue.md(_conflicts_table(loaded)),
                "lines": loaded.line_count,
                "amount_total": dg.MetadataValue.text(
                    str(sum((r.total for r in loaded.inserted), Decimal("0.00")))
                ),
            },
        )

        accepted = loaded.inserted + loaded.duplicates
        with classified_errors("writing .dat files"):
            written = processing.emit(
                posfed, terminal, spec, accepted, engine=engine, run_id=context.run.run_id
            )
            if move:
                processing.archive(terminal, batch, accepted)
        now = time.time()
        latencies = sorted(now - mtimes[r.source_file] for r in accepted if r.source_file in mtimes)
        yield dg.MaterializeResult(
            asset_key=DAT_FILES,
            metadata={
                "dat_files": len(written),
                "folder": dg.MetadataValue.path(str(posfed.dat_dir)),
                "spec": spec.name,
                "max_file_to_dat_seconds": dg.MetadataValue.float(
                    round(latencies[-1], 3) if latencies else 0.0
                ),
                "median_file_to_dat_seconds": dg.MetadataValue.float(
                    round(latencies[len(latencies) // 2], 3) if latencies else 0.0
                ),
            },
        )
        failures = [
            f"{path.name}: {problems[0]}"
            for path in written
            if (problems := check_dat(path.read_bytes(), spec.version_for(day)))
        ]
        yield dg.AssetCheckResult(
            asset_key=DAT_FILES,
            check_name="dat_files_reparse",
            passed=not failures,
            metadata={"checked": len(written), "failures": dg.MetadataValue.json(failures)},
        )

    return [receipt_files, receipt_pipeline]


@contextmanager
def classified_errors(stage: str):
    """Transient failures propagate, so the RetryPolicy retries them (1 s, 2 s, 4 s); anything
    else fails the step at once: retrying a constraint violation or bad data cannot help."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as exc:
        # A locked or full disk, an unwritable .dat folder: the next attempt may well succeed.
        if isinstance(exc, OSError) or store.is_transient_error(exc):
            raise
        raise dg.Failure(
            description=f"{stage} failed permanently: {exc}", allow_retries=False
        ) from exc


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _reasons_table(batch: processing.IntakeResult, report) -> str:
    rows = [(path.name, problems) for path, problems in batch.rejected]
    rows += [(r.source_file, problems) for r, problems in report.invalid]
    if not rows:
        return "No rejected receipts."
    lines = ["| file | first problem | problems |", "|---|---|---|"]
    for name, problems in rows[:50]:
        lines.append(f"| {name} | {str(problems[0]).replace('|', '/')} | {len(problems)} |")
    return "\n".join(lines)


def _conflicts_table(loaded) -> str:
    if not loaded.conflicts:
        return "No conflicts."
    lines = ["| receipt | file | reason |", "|---|---|---|"]
    for receipt in loaded.conflicts[:50]:
        reason = loaded.conflict_reason(receipt).replace("|", "/")
        lines.append(f"| {receipt.receipt_id} | {receipt.source_file} | {reason} |")
    return "\n".join(lines)
