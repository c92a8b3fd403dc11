"""``posfed quarantine``: rejected files listed, explained, re-queued or set aside."""

from __future__ import annotations

import json
import sys

from posfed_pipeline.cli.common import EXIT_OK, EXIT_USAGE, EXIT_VERDICT, store_config


def add_parser(commands) -> None:
    group = commands.add_parser(
        "quarantine", help="rejected files: list, read why, re-queue once fixed, or discard"
    ).add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    listing = group.add_parser("list", help="quarantined files with their first reason")
    listing.add_argument("--terminal", help="only this terminal")
    listing.add_argument("--json", action="store_true", help="the reports as a JSON list")
    listing.set_defaults(handler=_quarantine_list)
    show = group.add_parser("show", help="a quarantined file's report and its history")
    show.add_argument("terminal", metavar="TERMINAL")
    show.add_argument("file", metavar="FILE", help="its name in the quarantine")
    show.set_defaults(handler=_quarantine_show)
    retry = group.add_parser(
        "retry", help="move files back into their inbox, to be processed again (logged)"
    )
    retry.add_argument("terminal", metavar="TERMINAL")
    retry.add_argument("files", nargs="*", metavar="FILE", help="names in the quarantine")
    retry.add_argument("--all", action="store_true", help="every file the terminal has there")
    retry.set_defaults(handler=_quarantine_retry)
    discard = group.add_parser(
        "discard",
        help="set files aside for good, with a reason (kept in quarantine/discarded/, logged)",
    )
    discard.add_argument("terminal", metavar="TERMINAL")
    discard.add_argument("files", nargs="+", metavar="FILE", help="names in the quarantine")
    discard.add_argument("--reason", required=True, help="why, for the history")
    discard.set_defaults(handler=_quarantine_discard)


def _quarantine_list(args) -> int:
    from posfed_pipeline.core.state import quarantine
    from posfed_pipeline.core.state.inbox import printable_name

    config = store_config(args)
    terminals = [config.terminal(args.terminal)] if args.terminal else list(config.terminals)
    entries = [e for t in terminals for e in quarantine.quarantined_files(t)]
    not_taken = [(t.id, entry) for t in terminals for entry in _entries_not_taken(t)]
    if args.json:
        listing = [{"terminal": e.terminal, "name": e.name, **e.report} for e in entries]
        listing += [
            {
                "terminal": terminal_id,
                "name": printable_name(entry.name),
                "not_taken": entry.kind,
                "where": "inbox",
            }
            for terminal_id, entry in not_taken
        ]
        print(json.dumps(listing, indent=2, ensure_ascii=False))
        return EXIT_OK
    for e in entries:
        when = e.report.get("quarantined_at", "?")
        print(f"{e.terminal}  {printable_name(e.name)}  {when}  {printable_name(e.first_problem)}")
    print(f"quarantine: {len(entries)} file(s)")
    if not_taken:
        for terminal_id, entry in not_taken:
            print(f"{terminal_id}  inbox/{entry.describe()}")
        print(
            f"inboxes: {len(not_taken)} entr{'y' if len(not_taken) == 1 else 'ies'} not taken "
            "(not regular files, or a writer's temporary name left behind): move or delete them"
        )
    return EXIT_OK


def _entries_not_taken(terminal) -> list:
    """What the terminal's health check reports as left alone in its inbox."""
    import time

    from posfed_pipeline.core.operations import terminal_health
    from posfed_pipeline.core.state import inbox

    try:
        scan = inbox.scan_inbox_within(terminal, terminal_health.LISTING_TIMEOUT_SECONDS)
    except OSError:
        return []  # `posfed status` says the inbox cannot be listed
    limit = terminal.health.max_waiting_minutes * 60
    return terminal_health.entries_not_taken(scan, limit, time.time())


def _quarantine_show(args) -> int:
    from posfed_pipeline.core.state import quarantine

    terminal = store_config(args).terminal(args.terminal)
    try:
        entry = quarantine.find(terminal, args.file)
    except FileNotFoundError as exc:
        print(f"posfed: {exc}", file=sys.stderr)
        return EXIT_VERDICT
    print(json.dumps(entry.report, indent=2, ensure_ascii=False))
    print("history:")
    original = entry.report.get("file", entry.name)
    for event in quarantine.history(terminal, original):
        when = event.get("quarantined_at") or event.get("at")
        if event["event"] == "renamed":  # its name could not be carried: what it was called
            print(f"  {when}  renamed from {event.get('original_name')} ({event.get('reason')})")
            continue
        print(f"  {when}  {event['event']}  as {event.get('quarantined_as')}")
    return EXIT_OK


def _quarantine_retry(args) -> int:
    import getpass

    from posfed_pipeline.core.state import quarantine

    terminal = store_config(args).terminal(args.terminal)
    names = [e.name for e in quarantine.quarantined_files(terminal)] if args.all else args.files
    if not names:
        print("posfed: name the files to retry, or pass --all", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    for name in names:
        try:
            back = quarantine.retry(terminal, name, by=getpass.getuser())
        except FileNotFoundError as exc:
            print(f"posfed: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{terminal.id}: {name} -> inbox/{back.name}")
    print(f"quarantine retry: {len(names) - failed} re-queued, {failed} not found")
    return EXIT_VERDICT if failed else EXIT_OK


def _quarantine_discard(args) -> int:
    import getpass

    from posfed_pipeline.core.state import quarantine

    terminal = store_config(args).terminal(args.terminal)
    failed = 0
    for name in args.files:
        try:
            moved = quarantine.discard(terminal, name, reason=args.reason, by=getpass.getuser())
        except FileNotFoundError as exc:
            print(f"posfed: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{terminal.id}: {name} -> quarantine/{quarantine.DISCARDED_FOLDER}/{moved.name}")
    print(f"quarantine discard: {len(args.files) - failed} set aside, {failed} not found")
    return EXIT_VERDICT if failed else EXIT_OK
