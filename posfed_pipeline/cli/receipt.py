"""``posfed receipt validate``: the pipeline's verdict on receipt files, moving none."""

from __future__ import annotations

import json
import os
from pathlib import Path

from posfed_pipeline.cli.common import EXIT_OK, EXIT_VERDICT, store_config
from posfed_pipeline.core import dat
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.intake import parsing


def add_parser(commands) -> None:
    receipt = commands.add_parser("receipt", help="check receipt files").add_subparsers(
        dest="receipt_command", required=True, metavar="ACTION"
    )
    validate = receipt.add_parser(
        "validate",
        help="the pipeline's verdict on receipt files, with reasons; exit 1 if any is invalid",
    )
    validate.add_argument(
        "--terminal",
        help="terminal whose format and rules apply (default: the terminal folder the file is "
        "in, else the receipt's own terminalId)",
    )
    validate.add_argument(
        "--json", action="store_true", help='print a list of {"file", "valid", "errors"}'
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(handler=_receipt_validate)


def _receipt_validate(args) -> int:
    from posfed_pipeline.core.model.receipt import Problem
    from posfed_pipeline.core.stages import processing
    from posfed_pipeline.core.state.inbox import printable_name
    from posfed_pipeline.core.state.ledger import ledger_path, open_ledger

    config = store_config(args)
    chosen = config.terminal(args.terminal) if args.terminal else None  # unknown: exit 2
    spec = dat.load_spec(config.dat_spec)
    # The store's ledger, if this is its server: a receipt id it holds with other content is
    # refused by the pipeline, so here too. Only read.
    ledger = open_ledger(config.home) if ledger_path(config.home).exists() else None
    verdicts: dict[str, tuple[str | None, list[Problem]]] = {}
    by_terminal: dict[str, dict[Path, str]] = {}
    for name in args.files:
        path = Path(name)
        not_a_file = _not_a_regular_file(path)
        if not_a_file:
            verdicts[name] = (None, [Problem("file", printable_name(name), not_a_file)])
            continue
        terminal_id = chosen.id if chosen else _terminal_of_file(config, path)
        if terminal_id is None:
            rule = "cannot tell which terminal this file is from; pass --terminal ID"
            verdicts[name] = (None, [Problem("terminalId", "unknown", rule)])
            continue
        by_terminal.setdefault(terminal_id, {})[path] = name

    # The pipeline's stages, without moving any file (processing.judge); a batch at a time in
    # which no two files share a name (reports name files, not paths).
    # A file of several transactions (POSLog) has a verdict per transaction: "<file>#<n>".
    transaction_names: dict[str, str] = {}  # "<file>#<n>" -> "transaction 2 (SequenceNumber …)"
    for terminal_id, names in by_terminal.items():
        terminal = config.terminal(terminal_id)
        for group in _batches_of_distinct_names(names):
            judgement = processing.judge(config, terminal, list(group), spec=spec, ledger=ledger)
            batch, report = judgement.intake, judgement.validation
            by_name = {path.name: name for path, name in group.items()}

            def shown(file_name: str, by_name=by_name) -> str:
                """The argument a reported name came from; "<file>#<n>": a transaction's."""
                if file_name in by_name:
                    return by_name[file_name]
                base, _, index = file_name.rpartition("#")
                return f"{by_name[base]}#{index}"

            for key, label in batch.transactions.items():
                transaction_names[shown(key)] = label
            for rejected_name, problems in batch.rejected:
                verdicts[shown(rejected_name)] = (terminal_id, problems)
            for receipt, problems in report.invalid:
                verdicts[_shown_name(batch, group, receipt)] = (terminal_id, problems)
            for receipt, reason in judgement.conflicts:
                problem = Problem("receiptId", receipt.receipt_id, reason)
                verdicts[_shown_name(batch, group, receipt)] = (terminal_id, [problem])
            for receipt in report.valid:
                verdicts[_shown_name(batch, group, receipt)] = (terminal_id, [])
            for missing in batch.missing:
                problem = Problem("file", printable_name(missing), "vanished while reading")
                verdicts[by_name[missing]] = (terminal_id, [problem])
            for changed in batch.deferred:
                rule = "changed while it was read (still being written?): run this again"
                verdicts[by_name[changed]] = (terminal_id, [Problem("file", changed, rule)])
            for held, why in batch.held:
                problem = Problem("file", printable_name(held), why)
                verdicts[by_name[held]] = (terminal_id, [problem])

    order = {name: n for n, name in enumerate(dict.fromkeys(args.files))}

    def in_file_order(name: str) -> tuple[int, int]:
        if name in order:
            return order[name], 0
        file_name, _, index = name.rpartition("#")
        return order[file_name], int(index)

    results = [(name, *verdicts[name]) for name in sorted(verdicts, key=in_file_order)]
    if args.json:
        listing = [
            {
                "file": printable_name(name),
                "terminal": terminal_id,
                **({"transaction": transaction_names[name]} if name in transaction_names else {}),
                "valid": not problems,
                "errors": [p.as_dict() for p in problems],
            }
            for name, terminal_id, problems in results
        ]
        print(json.dumps(listing, indent=2, ensure_ascii=False))
    else:
        for name, terminal_id, problems in results:
            where = f" ({terminal_id})" if terminal_id else ""
            if name in transaction_names:
                where += f" {transaction_names[name]}"
            print(f"{printable_name(name)}{where}: {'INVALID' if problems else 'valid'}")
            for problem in problems:
                print(
                    printable_name(f"  - {problem.field}: {problem.rule} (value: {problem.value})")
                )
        invalid = sum(1 for _, _, problems in results if problems)
        print(f"receipt validate: {len(results) - invalid} valid, {invalid} invalid")
    return EXIT_VERDICT if any(problems for _, _, problems in results) else EXIT_OK


def _batches_of_distinct_names(names: dict[Path, str]) -> list[dict[Path, str]]:
    """``names`` (path -> as given) split so that no batch holds two files of one name."""
    batches: list[dict[Path, str]] = []
    for path, name in names.items():
        batch = next((b for b in batches if all(p.name != path.name for p in b)), None)
        if batch is None:
            batch = {}
            batches.append(batch)
        batch[path] = name
    return batches


def _not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` cannot be validated as a file (None: it can), as the pipeline would see
    it in an inbox: a symlink is never followed there, nor anything but a regular file read."""
    import stat

    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot be examined: {exc.strerror}"
    if stat.S_ISLNK(mode):
        return "a symbolic link: posfed never follows one in an inbox (validate its target)"
    if not stat.S_ISREG(mode):
        return "not a regular file: posfed never opens one in an inbox"
    return None


def _shown_name(batch, names: dict[Path, str], receipt) -> str:
    from posfed_pipeline.core.stages import processing

    name = names[batch.path_of(receipt)]
    part = batch.parts.get(id(receipt))
    return processing.part_name(name, part) if part else name


def _terminal_of_file(config: PosfedConfig, path: Path) -> str | None:
    """The terminal folder a file sits in (inbox, archive, quarantine), else its terminalId."""
    places = {Path(os.path.abspath(path)), path.resolve()}  # as written, and through links
    for terminal in config.terminals:
        if any(place.is_relative_to(terminal.folder) for place in places):
            return terminal.id
    try:
        data = path.read_bytes()[: parsing.MAX_FILE_BYTES]
    except OSError:
        return None
    # Read the claim in each configured format; it counts only from a terminal of that format.
    for mapping in dict.fromkeys(t.mapping for t in config.terminals):
        claimed = parsing.claimed_terminal_id(data, mapping)
        if claimed in config.terminal_ids and config.terminal(claimed).mapping == mapping:
            return claimed
    return None
