"""The checks a loaded configuration passes before posfed starts on it: those that read other
files or need the .dat engine, so they are not the file model's (``core.config.schema``)."""

from __future__ import annotations

from posfed_pipeline.core.config.errors import ConfigError
from posfed_pipeline.core.config.store_config import PosfedConfig


def check_at_start(config: PosfedConfig) -> None:
    """Refuse, naming the file, a configuration posfed must not start on."""
    _refuse_shared_dat_names(config)


def _refuse_shared_dat_names(config: PosfedConfig) -> None:
    """One .dat file is one sale: terminals whose file names could coincide never start."""
    # Imported here: loading a spec is work, and most of the .dat engine is not config's.
    from posfed_pipeline.core.dat import SpecError, load_spec
    from posfed_pipeline.core.dat.names import HOW_TO_TELL_APART, dat_name_clashes

    try:
        spec = load_spec(config.dat_spec)
    except (OSError, SpecError):
        # Reported where a spec is needed (a receipts run, `posfed spec check`): commands that
        # never render one, such as `posfed db upgrade --sql` for a DBA, still work.
        return
    clashes = dat_name_clashes(config.terminals, spec)
    if clashes:
        raise ConfigError(
            f"{config.config_path or 'configuration'}: these terminals could write the same .dat "
            "file, and one file would be two sales to the billing software:\n"
            + "".join(f"  - {clash}\n" for clash in clashes[:20])
            + (f"  ... and {len(clashes) - 20} more\n" if len(clashes) > 20 else "")
            + HOW_TO_TELL_APART
        )
