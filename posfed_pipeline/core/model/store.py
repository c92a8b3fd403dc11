"""The retail store: the id that every row of the register carries beside the terminal's."""

# The [store] id of a configuration that names none.
DEFAULT_STORE_ID = "store"
