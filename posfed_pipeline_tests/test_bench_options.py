"""``posfed bench``'s co-located load, backlog and profile options, in their parts that need no
store: what the command refuses, the load's CPU kept out of the store's, the CPU table's
ranking. The options end to end are in test_bench.py (slow)."""

import os
import time
from pathlib import Path

import pytest
from posfed_dev.bench import CoLocatedLoad, Processes, top_functions

from posfed_pipeline.cli import main


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--backlog", "10", "--isolate", "flood"], "--backlog goes with --rate"),
        (["--backlog", "10", "--burst"], "--backlog goes with --rate"),
        (["--backlog", "10", "--terminals", "1"], "at least 2 terminals"),
        (["--load", "-1"], "must not be negative"),
    ],
)
def test_bench_refuses_backlog_and_load_it_cannot_measure(options, says, capsys):
    assert main(["bench", *options]) == 2
    assert says in capsys.readouterr().err


def test_co_located_load_burns_cpu_that_is_not_counted_as_the_stores(tmp_path):
    processes = Processes(tmp_path, dict(os.environ))  # the store: nothing started
    load = CoLocatedLoad(1, processes)
    (busy,) = load.busy
    deadline = time.monotonic() + 30  # a busy machine gives it less than a core
    while _cpu_seconds(busy.pid) < 0.3 and time.monotonic() < deadline:
        time.sleep(0.1)
    cpu = load.stop()
    assert cpu >= 0.3  # it ran, burning CPU
    assert not os.path.exists(f"/proc/{busy.pid}")  # and is gone, reaped
    assert processes.tree_cpu() < 0.05  # none of it is the store's
    assert processes.stop() < 0.05


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_cpu_table_ranks_functions_by_inclusive_share_without_generic_frames():
    thread = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"
    raw = "\n".join(
        [
            f"{thread};serve (trigger.py:10);launch (pool.py:20);execute (pool.py:30) 6",
            f"{thread};serve (trigger.py:10);launch (pool.py:21) 2",
            "<module> (posfed.py:1);main (cli.py:5);scan (inbox.py:7) 2",
        ]
    )
    samples, top = top_functions(raw)
    assert samples == 10
    assert [(f"{share:.0%}", function, file) for share, function, file in top] == [
        ("80%", "serve", "trigger.py"),
        ("80%", "launch", "pool.py"),  # two lines of one function: one function
        ("60%", "execute", "pool.py"),
        ("20%", "main", "cli.py"),
        ("20%", "scan", "inbox.py"),
    ]
