"""Receipts: receipt files → validated receipts → .dat files, one terminal-day per run.

Both computed assets are materialized by one step that runs ``processing.process_batch`` (the
one sequence of stages, also what the tests run): a receipt is validated, accepted by the local
ledger and rendered as one unit, and one step keeps a run short. The central database is fed
from the ledger by its own asset (``defs.central_db``), so it never delays a .dat file. The runs
are launched by the inbox sensors (``defs.inbox_sensors``) and the fast path.
"""

import shlex
import warnings
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import dagster as dg
from pydantic import Field

from posfed_pipeline.core import central_db
from posfed_pipeline.core.base.clock import Clock
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.dat import DatSpec, load_spec
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.stages import checkout, processing
from posfed_pipeline.core.stages.batch_summary import BatchSummary, RejectedFile
from posfed_pipeline.core.state import inbox, quarantine, retention
from posfed_pipeline.core.state.checkout_journal import CheckoutJournal, checkout_journal_path
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.defs.markdown import md_table
from posfed_pipeline.defs.partitions import split_terminal_day_key, terminal_day_partitions
from posfed_pipeline.names import (
    DAT_FILES,
    DAT_REPARSE_CHECK,
    DAY_DIMENSION,
    PARTITION_TAG,
    RECEIPT_FILES,
    RECEIPT_PIPELINE_OP,
    RECEIPTS_GROUP,
    RECEIPTS_JOB,
    REJECTED_TAG,
    RUN_KEY_TAG,
    TERMINAL_DIMENSION,
    VALIDATED_RECEIPTS,
    VALIDATION_CHECK,
)


class ReceiptBatchConfig(dg.Config):
    files: list[str] = Field(
        default_factory=list,
        description="Inbox file names to process. Empty: re-process the partition's day from "
        "the archive (a backfill).",
    )
    attempt: int = Field(
        default=0,
        description="How many runs took these files before: a file the file system would not "
        "let posfed read or move is tried again, and quarantined with the error at the "
        "fifth attempt.",
    )
    record_checkout: bool = Field(
        default=False,
        description="Set by the fast path: record the batches its checkout already processed "
        "under this run's id (their .dat files are delivered) instead of processing files.",
    )
    redeliver_dat: bool = Field(
        default=False,
        description="A backfill only: write every .dat file of the day again, also those "
        "already delivered (the billing software will import, and bill, them again). Off: only "
        ".dat files the store's ledger has no record of are written.",
    )


def receipt_op_config(batch: ReceiptBatchConfig) -> dict:
    return {"ops": {RECEIPT_PIPELINE_OP: {"config": batch.model_dump()}}}


# Launched by the inbox sensors (and the fast path) with a ReceiptBatchConfig.
receipts_job = dg.define_asset_job(
    RECEIPTS_JOB,
    selection=dg.AssetSelection.assets(VALIDATED_RECEIPTS, DAT_FILES),
    # A run is a handful of milliseconds of work: a process per step would cost seconds.
    executor_def=dg.in_process_executor,
    description="Validate, accept and render one terminal's new receipts for one day.",
)


def definitions(config: PosfedConfig, clock: Clock) -> dg.Definitions:
    partitions = terminal_day_partitions(config)
    receipt_files = dg.AssetSpec(
        RECEIPT_FILES,
        description="Receipt files the POS terminals drop into their inbox folders.",
        partitions_def=partitions,
        group_name=RECEIPTS_GROUP,
        kinds={"file", "json"},
    )
    return dg.Definitions(
        assets=[receipt_files, _receipt_pipeline(config, partitions, clock)],
        jobs=[receipts_job],
    )


def _receipt_pipeline(
    posfed: PosfedConfig, partitions: dg.PartitionsDefinition, clock: Clock
) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name=RECEIPT_PIPELINE_OP,
        specs=[
            dg.AssetSpec(
                VALIDATED_RECEIPTS,
                deps=[RECEIPT_FILES],
                description="Receipts that passed the pandera schemas and were accepted by the "
                "store's local ledger; the rest are quarantined with their reasons.",
                kinds={"pandas", "pandera", "sqlite"},
            ),
            dg.AssetSpec(
                DAT_FILES,
                deps=[VALIDATED_RECEIPTS],
                description="Fixed-width .dat files for the central billing software.",
                kinds={"file"},
                # Usually reported as an event, not yielded as an output: _dat_files_event.
                skippable=True,
            ),
        ],
        check_specs=_partitioned_check_specs(partitions),
        partitions_def=partitions,
        group_name=RECEIPTS_GROUP,
        # Transient failures (a locked ledger, a busy disk) retry at 1 s, 2 s, 4 s.
        retry_policy=dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL),
    )
    def receipt_pipeline(context: dg.AssetExecutionContext, config: ReceiptBatchConfig):
        yield from process_receipts(context, config, posfed, clock)

    return receipt_pipeline


def process_receipts(
    context: dg.AssetExecutionContext, batch: ReceiptBatchConfig, posfed: PosfedConfig, clock: Clock
):
    """The receipt pipeline's step: a terminal-day's batch (or, for a backfill, its archive)
    through the stages, or the batches the fast path's checkout processed under this run's id;
    yields both materializations and both checks."""
    terminal_id, day = split_terminal_day_key(context.partition_key)
    terminal = posfed.terminal(terminal_id)
    with classified_errors("loading the .dat spec"):  # a broken spec: no retry helps
        spec = load_spec(posfed.dat_spec)
    from_archive = not batch.files and not batch.record_checkout
    if batch.record_checkout:
        journal = CheckoutJournal(checkout_journal_path(posfed.home))
        summary = _recorded_summary(context, journal)
    elif from_archive:
        paths = _archived_paths(context, terminal, day)
        with classified_errors("processing receipts"):
            result = processing.process_batch(
                posfed,
                terminal,
                paths,
                ledger=open_ledger(posfed.home),
                spec=spec,
                from_archive=True,
                run_id=context.run.run_id,
                day=day,
                redeliver_dat=batch.redeliver_dat,
                clock=clock,
            )
        summary = BatchSummary.of(result, spec, day)
    else:
        try:
            with classified_errors("processing receipts"):
                outcome = checkout.process_inbox_batch(
                    posfed,
                    terminal,
                    batch.files,
                    day=day,
                    ledger=open_ledger(posfed.home),
                    spec=spec,
                    run_id=context.run.run_id,
                    run_key=context.run.tags.get(RUN_KEY_TAG),
                    attempt=batch.attempt,
                    clock=clock,
                )
        except checkout.NothingToTake as nothing:  # nothing this run may take: say so
            raise dg.Failure(description=str(nothing), allow_retries=False) from nothing
        for reason in outcome.refused:
            # A file replaced by a symlink since it was listed, a name edited in the
            # launchpad: the rest of the batch went on.
            context.log.warning(f"skipped: {reason}")
        summary = outcome.summary
    _note_files_left(context, posfed, day, batch, summary, from_archive)
    yield from _reported(context, posfed, terminal, day, spec, summary, from_archive)
    if batch.record_checkout:
        # Recorded: the window's batches are this run's (its metadata and checks) from now on.
        journal.forget(_recorded_run_id(context))


def _recorded_run_id(context: dg.AssetExecutionContext) -> str:
    # A re-execution from the UI records what its original run was to record.
    return context.run.root_run_id or context.run.run_id


def _recorded_summary(context: dg.AssetExecutionContext, journal: CheckoutJournal) -> BatchSummary:
    run_id = _recorded_run_id(context)
    summaries = [BatchSummary.from_json(text) for text in journal.summaries(run_id)]
    context.log.info(
        f"recording {len(summaries)} batch(es) of {sum(s.files for s in summaries)} file(s) "
        "that the fast path's checkout processed under this run's id"
        if summaries
        else "nothing left to record: the checkout's batches of this run were recorded before"
    )
    return BatchSummary.merged(summaries)


def _reported(
    context: dg.AssetExecutionContext,
    posfed: PosfedConfig,
    terminal: Terminal,
    day: date,
    spec: DatSpec,
    summary: BatchSummary,
    from_archive: bool,
):
    yield dg.MaterializeResult(
        asset_key=VALIDATED_RECEIPTS,
        metadata=_validated_metadata(summary, from_archive),
    )
    if summary.rejections_total:
        # The runs list shows tags: a rejection is visible there without opening the run.
        context.instance.add_run_tags(
            context.run.run_id, {REJECTED_TAG: str(summary.rejections_total)}
        )
    yield rejection_check_result(terminal, summary, quarantine.waiting_for(terminal, day))
    yield _dat_files_event(context, _dat_metadata(posfed, spec, summary, from_archive))
    yield _reparse_check_result(summary)


def _dat_files_event(
    context: dg.AssetExecutionContext, metadata: dict
) -> dg.AssetMaterialization | dg.MaterializeResult:
    """dat_files' materialization: an event of the step rather than its output, in every run
    that materializes only this step's assets (the launchers', a backfill's, the asset page's).

    For an asset output Dagster records provenance, the materialization of each dependency it
    was made from; for a dependency made in the same step (validated_receipts) it takes the
    asset's latest materialization of any partition (dagster#18649). When another terminal's
    run stored one in between, dat_files named that terminal's validated_receipts and the run
    logged "Data version mismatch": once every few runs at 10 receipts/s. An event carries no
    provenance to get wrong, and the run makes one query and one event less. The lineage is
    the assets' (``deps`` above); a partition's run, .dat files and checks are found as before.

    A run composed in the UI with assets of other steps gets the output: Dagster skips a step
    whose upstream output was not yielded (daily_reconciliation after dat_files). That run
    records Dagster's provenance, as every run did before."""
    others = (context.run.asset_selection or frozenset()) - set(context.selected_asset_keys)
    if others:
        return dg.MaterializeResult(asset_key=DAT_FILES, metadata=metadata)
    terminal_id, day = split_terminal_day_key(context.partition_key)
    return dg.AssetMaterialization(
        asset_key=DAT_FILES,
        partition=context.partition_key,
        metadata=metadata,
        # What Dagster tags an output's materialization of a multi-partition with: the UI
        # finds a terminal's or a day's partitions by them.
        tags={
            f"{PARTITION_TAG}/{TERMINAL_DIMENSION}": terminal_id,
            f"{PARTITION_TAG}/{DAY_DIMENSION}": day.isoformat(),
        },
    )


def _archived_paths(context: dg.AssetExecutionContext, terminal: Terminal, day: date) -> list[Path]:
    restored = retention.restore_day(terminal, day)
    paths = inbox.archived_files(terminal, day)
    context.log.info(
        f"backfill: re-processing {len(paths)} archived file(s) of {day}"
        + (f" ({restored} restored from a compressed archive)" if restored else "")
    )
    return paths


def _note_files_left(
    context: dg.AssetExecutionContext,
    posfed: PosfedConfig,
    day: date,
    batch: ReceiptBatchConfig,
    summary: BatchSummary,
    from_archive: bool,
) -> None:
    """Files the batch left in the inbox for a later look (the claim table has them); a
    redelivery."""
    if batch.redeliver_dat and from_archive:
        context.log.warning(
            f"backfill with redeliver_dat: {summary.dat_files} .dat file(s) of {day} "
            "delivered to the billing software again"
        )
    if summary.still_being_written:
        # Relaunched once their writer had time to finish (the claim says when).
        context.log.warning(
            f"{summary.still_being_written} file(s) unreadable but modified in the last "
            f"{posfed.incomplete_grace_seconds:g} s, left in the inbox: "
            + ", ".join(summary.deferred[:20])
        )
    for name, why in summary.held[:20]:
        context.log.warning(f"{name} left in the inbox for a later attempt: {why}")


def _validated_metadata(summary: BatchSummary, from_archive: bool) -> dict:
    rejections = summary.rejections
    return {
        # First, so the terminal-day's partition page shows it at the top.
        **(
            {
                "rejected_files": dg.MetadataValue.text(
                    ", ".join(r.file for r in rejections[:10])
                    + (" ..." if summary.rejections_total > 10 else "")
                    + f" (quarantined; why: the {VALIDATION_CHECK} check)"
                )
            }
            if rejections
            else {}
        ),
        "files": summary.files,
        "receipts_valid": summary.receipts_valid,
        "receipts_rejected": summary.receipts_rejected,
        "receipts_accepted": summary.receipts_accepted,
        "redeliveries": summary.redeliveries,
        "conflicts_quarantined": 0 if from_archive else summary.conflicts,
        "already_handled": summary.already_handled,
        "still_being_written": summary.still_being_written,
        "left_for_a_later_attempt": summary.left_for_later,
        "amount_accepted": dg.MetadataValue.text(str(summary.amount_accepted)),
        **({"checkout_batches": summary.batches} if summary.batches != 1 else {}),
    }


def _dat_metadata(
    posfed: PosfedConfig, spec: DatSpec, summary: BatchSummary, from_archive: bool
) -> dict:
    latencies = summary.dat_seconds
    return {
        "dat_files": summary.dat_files,
        "redeliveries_not_reemitted": summary.redeliveries,
        "folder": dg.MetadataValue.path(str(posfed.dat_dir)),
        "spec": spec.name,
        "max_file_to_dat_seconds": dg.MetadataValue.float(
            round(latencies[-1], 3) if latencies else 0.0
        ),
        "median_file_to_dat_seconds": dg.MetadataValue.float(
            round(latencies[len(latencies) // 2], 3) if latencies else 0.0
        ),
        **({"deliveries_resynced": summary.resynced} if from_archive else {}),
    }


def _reparse_check_result(summary: BatchSummary) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=DAT_FILES,
        check_name=DAT_REPARSE_CHECK,
        passed=not summary.dat_failures_total,
        metadata={
            "checked": summary.dat_files,
            "failures": dg.MetadataValue.json(summary.dat_failures),
        },
    )


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
        if isinstance(exc, OSError) or central_db.is_transient_error(exc):
            raise
        raise dg.Failure(
            description=f"{stage} failed permanently: {exc}", allow_retries=False
        ) from exc


def _partitioned_check_specs(partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    """The checks, per terminal-day: the Checks tab keeps each partition's last verdict, so a
    rejection stays red for its terminal-day after other terminals' runs pass."""
    with warnings.catch_warnings():
        # Partitioned checks are a preview feature in dagster 1.13; said once here, not per load.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                VALIDATION_CHECK,
                asset=VALIDATED_RECEIPTS,
                description="Every receipt file of the terminal-day passed validation; a "
                "rejected one names its file, the rule, the value, where it went and the "
                "command that re-queues it.",
                partitions_def=partitions,
            ),
            dg.AssetCheckSpec(
                DAT_REPARSE_CHECK,
                asset=DAT_FILES,
                description="Every .dat file written re-parses against its spec version.",
                partitions_def=partitions,
            ),
        ]


def rejection_check_result(
    terminal: Terminal,
    summary: BatchSummary,
    waiting: list[quarantine.Quarantined],
) -> dg.AssetCheckResult:
    """The validation check of a terminal-day, as an operator reads it.

    It fails while any file of the day sits in quarantine (``waiting``), not only in the run
    that rejected it: the terminal's next receipt must not turn it green again. Plain-text
    fields name the first file (this run's, else the oldest waiting), the rule, the value,
    where it went and the command that re-queues it; the table below lists all of them."""
    # Conflicts passed validation and were refused after it: one count per file.
    rejections = summary.rejections
    checked = summary.checked
    metadata: dict[str, dg.RawMetadataValue] = {
        "rejected_by_this_run": summary.rejections_total,
        "waiting_in_quarantine": len(waiting),
    }
    rows = [(r.file, r.problems[0]) for r in rejections]
    this_run = {str(r.quarantined_to) for r in rejections}
    rows += [(w.name, w.first_problem) for w in waiting if str(w.path) not in this_run]
    metadata |= _first_rejected_fields(terminal, rejections, waiting)
    metadata |= {
        "pass_rate": dg.MetadataValue.float(
            (checked - summary.rejected_files) / checked if checked else 1.0
        ),
        "reasons": dg.MetadataValue.md(
            md_table(["file", "first problem"], rows[:50]) if rows else "No rejected receipts."
        ),
    }
    if rejections or waiting:
        # No receipt text here: the UI renders a description as markdown.
        description = (
            f"{len(waiting) or summary.rejections_total} file(s) of this terminal-day in "
            "quarantine"
            + (f", {summary.rejections_total} rejected by this run" if rejections else "")
            + ": see file, rule, value, quarantined_to and requeue_command"
        )
    else:
        description = "every receipt file of the day passed"
    return dg.AssetCheckResult(
        asset_key=VALIDATED_RECEIPTS,
        check_name=VALIDATION_CHECK,
        passed=not rejections and not waiting,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def _first_rejected_fields(
    terminal: Terminal,
    rejections: list[RejectedFile],
    waiting: list[quarantine.Quarantined],
) -> dict[str, dg.MetadataValue]:
    """The fields naming the first file: this run's first rejection, else the oldest waiting."""
    names = [w.name for w in waiting]
    if rejections:
        first = rejections[0]
        problem = first.problems[0]
        return _first_file_fields(
            terminal,
            first.file,
            f"{problem.field}: {problem.rule}",
            problem.value,
            Path(first.quarantined_to) if first.quarantined_to else None,
            names,
        )
    if waiting:
        problems = waiting[0].report.get("problems") or [{}]
        return _first_file_fields(
            terminal,
            waiting[0].report.get("file", waiting[0].name),
            waiting[0].first_problem,
            str(problems[0].get("value", "")),
            waiting[0].path,
            names,
        )
    return {}


def _first_file_fields(
    terminal: Terminal, file: str, rule: str, value: str, where, waiting_names: list[str]
) -> dict[str, dg.MetadataValue]:
    names = waiting_names or ([where.name] if where else [])
    if names:
        requeue = (
            "fix the file or the terminal's settings, then: posfed quarantine retry "
            + " ".join(shlex.quote(n) for n in [terminal.id, *names[:10]])
            + (" ..." if len(names) > 10 else "")
            + f" (a file never to bill: posfed quarantine discard {terminal.id} FILE --reason ...)"
        )
    else:
        requeue = "not moved (a backfill re-reads the archive): fix the rule, then backfill again"
    return {
        "file": dg.MetadataValue.text(file),
        "rule": dg.MetadataValue.text(rule),
        "value": dg.MetadataValue.text(value),
        "quarantined_to": dg.MetadataValue.text(str(where) if where else "not moved"),
        "requeue_command": dg.MetadataValue.text(requeue),
    }
