"""The checkout the tests run from, and the files of it they read."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = REPO_ROOT / "dat_specs" / "scon_default.json"
