"""posfed's fast path: an event-driven trigger and warm run workers (see service.py).

It is built on Dagster internals (dagster_internals.py, launcher.py) that change between
releases without notice. posfed is tested on the releases compatibility.py lists; on another,
the fast path refuses to start unless the operator allows that release, and everything else
(the sensors, the instance every Dagster process loads) keeps running without it. Nothing is
refused at import: the instance's run launcher and storages live in this package."""
