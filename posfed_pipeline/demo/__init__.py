"""The demo store posfed ships, so that ``posfed demo`` runs from an installed wheel in an empty
folder as ``make demo`` does in a checkout: its store file (``posfed.toml`` here; the checkout's
posfed.toml is a link to it), written out with the .dat layouts it names for the user to read
and edit, and its simulated tills (``tills``)."""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from posfed_pipeline import packaged
from posfed_pipeline.core.config import DEFAULT_CONFIG_FILE, PosfedConfig

DAT_SPECS_FOLDER = "dat_specs"  # as the demo store's [dat] spec names it


@dataclass(frozen=True)
class WrittenStore:
    """What ``write_demo_store`` wrote: the store file, and the files beside it it refers to."""

    config_file: Path
    written: tuple[Path, ...]
    kept: tuple[Path, ...]  # already there: never replaced


def write_demo_store(folder: Path) -> WrittenStore:
    """The demo store's files, written into ``folder``: posfed.toml and dat_specs/ (the .dat
    layouts, with their README). A file already there is kept as it is, never replaced."""
    sources = [(packaged.demo_store_file(), folder / DEFAULT_CONFIG_FILE)]
    sources += [(spec, folder / DAT_SPECS_FOLDER / spec.name) for spec in packaged.dat_spec_files()]
    written: list[Path] = []
    kept: list[Path] = []
    for source, target in sources:
        if target.exists() or target.is_symlink():
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    return WrittenStore(folder / DEFAULT_CONFIG_FILE, tuple(written), tuple(kept))


def is_demo_store(config: PosfedConfig) -> bool:
    """Whether ``config`` is the demo store (its id and name): the simulated tills write made-up
    sales, which must never reach a real store's billing software."""
    store = tomllib.loads(packaged.demo_store_file().read_text(encoding="utf-8"))["store"]
    return (config.store_id, config.store_name) == (store["id"], store["name"])
