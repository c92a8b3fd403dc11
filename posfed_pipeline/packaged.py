"""Files posfed ships inside its package, found with importlib.resources, so that an installed
wheel works from any folder, not only from a checkout. (In a checkout, deploy/dagster.*.yaml,
workspace.yaml, dat_specs/ and posfed.toml are links to these.)"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PROFILES = "posfed_pipeline.profiles"
DAT_SPECS = "posfed_pipeline.dat_specs"
DEFAULT_DAT_SPEC = "scon_default.json"
DEMO = "posfed_pipeline.demo"
DEMO_STORE_FILE = "posfed.toml"


def instance_profile(profile: str) -> str:
    """The Dagster instance profile ``dev`` (embedded) or ``prod`` (PostgreSQL), as text."""
    return instance_profile_file(profile).read_text()


def instance_profile_file(profile: str) -> Path:
    return _as_path(files(PROFILES) / f"dagster.{profile}.yaml")


def workspace_file() -> Path:
    """The Dagster workspace (one code location, posfed's), as a file for ``-w``."""
    return _as_path(files(PROFILES) / "workspace.yaml")


def code_server_workspace_file() -> Path:
    """The workspace that loads the code location from a code server of its own, at the
    socket POSFED_CODE_SERVER_SOCKET names (posfed demo, the production units)."""
    return _as_path(files(PROFILES) / "workspace.code-server.yaml")


def location_name() -> str:
    """The code location's name, as the workspace gives it (pyproject's [tool.dagster] and
    [tool.dg.project] must say the same: test_definitions checks)."""
    return _location_in(workspace_file())


def headoffice_location_name() -> str:
    """The head office's code location's name, as its workspace gives it."""
    return _location_in(headoffice_workspace_file())


def _location_in(workspace_path: Path) -> str:
    import yaml

    workspace = yaml.safe_load(workspace_path.read_text())
    [entry] = workspace["load_from"]
    return entry["python_module"]["location_name"]


def headoffice_workspace_file() -> Path:
    """The head office's workspace: its own code location, never a store's
    (``posfed headoffice``)."""
    return _as_path(files(PROFILES) / "workspace.headoffice.yaml")


def headoffice_code_server_workspace_file() -> Path:
    """The head office's workspace that loads its location from a code server of its own
    (``posfed headoffice``'s webserver and daemon)."""
    return _as_path(files(PROFILES) / "workspace.headoffice.code-server.yaml")


def headoffice_example() -> Path:
    """A commented ``headoffice.toml``, to copy and fill in with the chain's stores."""
    return _as_path(files(PROFILES) / "headoffice.toml")


def default_dat_spec() -> Path:
    return _as_path(files(DAT_SPECS) / DEFAULT_DAT_SPEC)


def dat_spec_files() -> list[Path]:
    """The .dat layouts posfed ships, with their README (what ``posfed demo`` writes out)."""
    return sorted(
        _as_path(entry)
        for entry in files(DAT_SPECS).iterdir()
        if entry.name.endswith((".json", ".md"))
    )


def demo_store_file() -> Path:
    """The demo store's posfed.toml: 20 terminals of ten businesses (the checkout's posfed.toml
    is a link to it)."""
    return _as_path(files(DEMO) / DEMO_STORE_FILE)


def _as_path(resource) -> Path:
    # pip installs posfed as files, never zipped: the resource is a file other processes
    # (dagster -w) and the config can name.
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: posfed's installation is incomplete (reinstall it)")
    return path
