"""The trigger's inotify: one instance for every inbox, however many terminals."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from posfed_pipeline.fastpath.inbox_events import InboxEvents


def test_more_inboxes_than_linux_allows_inotify_instances_are_all_watched(tmp_path):
    # Linux allows 128 inotify instances per user by default; 200 terminals need 200 inboxes.
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    folders = [tmp_path / f"t{n}" / "inbox" for n in range(max(200, limit + 20))]
    seen: list[Path] = []
    arrived = threading.Event()

    def on_file(path: Path) -> None:
        seen.append(path)
        if len(seen) == 4:
            arrived.set()

    events = InboxEvents(on_file, on_overflow=lambda: None)
    for folder in folders:
        folder.mkdir(parents=True)
        events.watch(str(folder))
    events.start()
    try:
        (folders[0] / "a.json").write_text("{}")  # written and closed
        temp = folders[-1] / ".b.tmp"
        temp.write_text("{}")
        os.rename(temp, folders[-1] / "b.json")  # moved in
        (folders[len(folders) // 2] / "sub").mkdir()  # a folder is no receipt
        (folders[len(folders) // 2] / "c.json").write_text("{}")
        assert arrived.wait(5), seen
    finally:
        events.stop()
    assert sorted(seen) == sorted(
        [
            folders[0] / "a.json",
            folders[-1] / ".b.tmp",  # closed there before its rename; the trigger ignores it
            folders[-1] / "b.json",
            folders[len(folders) // 2] / "c.json",
        ]
    )
