"""The root of posfed's own errors: every error posfed raises on purpose derives from
``PosfedError``, so a caller can tell "posfed refused this, with a reason" from a bug.

Each keeps the built-in base it had (``ValueError`` for bad input, ``RuntimeError`` for a state
it cannot work in), so ``except ValueError`` around a parser still works."""


class PosfedError(Exception):
    """An error posfed raises on purpose; its message says what to do."""
