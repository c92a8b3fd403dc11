"""The retail store: the id that every row of the central database carries beside the
terminal's, so that a chain's stores share one database."""

# The [store] id of a configuration that names none.
DEFAULT_STORE_ID = "store"
