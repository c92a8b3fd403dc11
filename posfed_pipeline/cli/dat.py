"""``posfed spec`` (check a .dat layout spec) and ``posfed dat`` (render, parse and check .dat
files)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posfed_pipeline.cli.common import EXIT_OK, EXIT_USAGE, EXIT_VERDICT, store_config
from posfed_pipeline.core import dat
from posfed_pipeline.core.config import ConfigError
from posfed_pipeline.core.intake import parsing


def add_parser(commands) -> None:
    spec = commands.add_parser("spec", help=".dat layout specs").add_subparsers(
        dest="spec_command", required=True, metavar="ACTION"
    )
    check = spec.add_parser("check", help="validate a spec; exit 1 with the reasons")
    check.add_argument("spec", help="the spec file (JSON, format in dat_specs/README.md)")
    check.set_defaults(handler=_spec_check)

    datp = commands.add_parser("dat", help="render, parse and check .dat files").add_subparsers(
        dest="dat_command", required=True, metavar="ACTION"
    )
    render = datp.add_parser(
        "render", help="render receipts to DIR/<date folder>/<file name>, printing each path"
    )
    render.add_argument("--spec", required=True)
    render.add_argument("--out", required=True, metavar="DIR")
    render.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="store configuration naming the terminals and their department codes "
        "(default: $POSFED_CONFIG or ./posfed.toml)",
    )
    render.add_argument("--terminal", help="terminal id (default: the receipt's terminalId)")
    render.add_argument("receipts", nargs="+", metavar="RECEIPT.json")
    render.set_defaults(handler=_dat_render)
    version_help = (
        "business day YYYY-MM-DD selecting the spec version "
        "(default: the file's date folder, else the newest version)"
    )
    parse = datp.add_parser("parse", help="print a .dat file's records as JSON")
    parse.add_argument("--spec", required=True)
    parse.add_argument("--date", help=version_help)
    parse.add_argument("file")
    parse.set_defaults(handler=_dat_parse)
    dcheck = datp.add_parser("check", help="exit 0 if a .dat file conforms byte for byte")
    dcheck.add_argument("--spec", required=True)
    dcheck.add_argument("--date", help=version_help)
    dcheck.add_argument("file")
    dcheck.set_defaults(handler=_dat_check)


def _spec_check(args) -> int:
    try:
        spec = dat.load_spec(args.spec)
    except dat.SpecError as exc:
        print(f"spec check: INVALID: {args.spec} ({len(exc.problems)} problem(s))", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_VERDICT
    for version in spec.versions:
        widths = ", ".join(f"{kind} {version.width(kind)} bytes" for kind, _ in version.records())
        print(
            f"spec check: {spec.name} version from {version.effective_from}: {widths}, "
            f"{version.encoding}"
        )
    print(f"spec check: OK ({args.spec})")
    return EXIT_OK


def _dat_render(args) -> int:
    try:
        spec = dat.load_spec(args.spec)
    except dat.SpecError as exc:
        print(f"dat render: invalid spec:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = store_config(args)
    except ConfigError as exc:
        print(
            f"dat render: the store configuration names each terminal's department code, "
            f"and it cannot be read: {exc} (pass --config FILE or set POSFED_CONFIG)",
            file=sys.stderr,
        )
        return EXIT_USAGE

    def terminal_of(path: Path):
        terminal_id = args.terminal
        if not terminal_id:
            try:
                doc = json.loads(path.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"not a JSON receipt ({exc})") from None
            terminal_id = doc.get("terminalId") if isinstance(doc, dict) else None
            if not isinstance(terminal_id, str) or not terminal_id:
                raise ValueError("the receipt has no terminalId; pass --terminal ID")
        if terminal_id not in config.terminal_ids:
            ids = config.terminal_ids
            known = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
            raise ValueError(
                f"terminal {terminal_id!r} is not in the store configuration "
                f"{config.config_path} (known: {known}); pass --config for its store"
            )
        return config.terminal(terminal_id)

    from posfed_pipeline.core.stages import processing

    out = Path(args.out)
    failed = 0
    for name in args.receipts:
        path = Path(name)
        try:
            terminal = terminal_of(path)
            receipt = parsing.read_receipt_file(path, terminal)
            # The pipeline's own verdict first: a receipt it would quarantine is not rendered.
            batch = processing.IntakeResult(receipts=[receipt])
            report = processing.validate(
                config, terminal, batch, quarantine=False, check_age=False, spec=spec
            )
            if report.invalid:
                failed += 1
                problems = "; ".join(str(p) for p in report.invalid[0][1])
                print(f"dat render: {name}: invalid, not rendered: {problems}", file=sys.stderr)
                continue
            rendered = dat.render_receipt(receipt, terminal, spec)
            print(dat.write_dat(out, rendered, spec, receipt.business_day))
        except (OSError, ValueError) as exc:  # IntakeError, DatRenderError, ConfigError included
            failed += 1
            print(f"dat render: {name}: cannot render: {exc}", file=sys.stderr)
    return EXIT_VERDICT if failed else EXIT_OK


def _version_for_file(spec: dat.DatSpec, args) -> dat.LayoutVersion:
    """--date if given, else the day the file's date folder names, else the newest version."""
    from datetime import date

    if args.date:
        try:
            day = date.fromisoformat(args.date)
        except ValueError:
            raise ValueError(f"--date {args.date!r} is not a date YYYY-MM-DD") from None
        return spec.version_for(day)
    for version in reversed(spec.versions):
        day = version.day_from_path(args.file)
        if day is not None:
            return spec.version_for(day)
    return spec.versions[-1]


def _dat_inputs(command: str, args) -> tuple[bytes, dat.LayoutVersion] | None:
    """The file's bytes and the spec version to read it with; None (reported) if unusable."""
    try:
        spec = dat.load_spec(args.spec)
        version = _version_for_file(spec, args)
        return Path(args.file).read_bytes(), version
    except dat.SpecError as exc:
        print(f"{command}: invalid spec:\n{exc}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"{command}: {args.file}: {exc}", file=sys.stderr)
    return None


def _dat_parse(args) -> int:
    inputs = _dat_inputs("dat parse", args)
    if inputs is None:
        return EXIT_USAGE
    content, version = inputs
    try:
        records = dat.parse_dat(content, version)
    except dat.DatFormatError as exc:
        for problem in exc.problems:
            print(f"dat parse: {args.file}: {problem}", file=sys.stderr)
        return EXIT_VERDICT
    print(json.dumps(records, indent=2, ensure_ascii=False))
    return EXIT_OK


def _dat_check(args) -> int:
    inputs = _dat_inputs("dat check", args)
    if inputs is None:
        return EXIT_USAGE
    content, version = inputs
    problems = dat.check_dat(content, version)
    for problem in problems:
        print(f"dat check: {args.file}: {problem}", file=sys.stderr)
    if not problems:
        print(f"dat check: {args.file}: OK (version from {version.effective_from})")
    return EXIT_VERDICT if problems else EXIT_OK
