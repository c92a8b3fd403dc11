"""posfed's metrics for a fleet's monitoring: ``posfed metrics`` serves a store's figures in
the Prometheus text format (``service``), read by ``core.operations.store_metrics`` and
``sources`` (Dagster's failed runs, service restarts), written by ``exposition``
(prometheus-client). docs/operating.md#metrics-for-a-fleet lists every metric."""
