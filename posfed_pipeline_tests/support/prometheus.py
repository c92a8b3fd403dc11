"""A real Prometheus server for the tests (Debian's ``prometheus``, installed by
scripts/install-system-deps.sh; never its system service): its own config, a fresh storage
folder, a free port, a short scrape interval; and its query API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from posfed_pipeline_tests.support.processes import free_port, wait_for

PROMETHEUS = Path("/usr/bin/prometheus")


@contextmanager
def prometheus_server(
    folder: Path, targets: list[str], *, rule_files: list[Path] = (), scrape_seconds: float = 1.0
) -> Iterator[str]:
    """Prometheus scraping ``targets`` (host:port, job ``posfed``) every ``scrape_seconds``,
    with ``rule_files`` loaded; yields its base URL once it is ready. Stopped with SIGTERM."""
    if not PROMETHEUS.exists():
        pytest.fail(f"{PROMETHEUS} is missing: run scripts/install-system-deps.sh")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {
                    "scrape_interval": f"{scrape_seconds:g}s",
                    "evaluation_interval": f"{scrape_seconds:g}s",
                },
                "rule_files": [str(path) for path in rule_files],
                "scrape_configs": [
                    {
                        "job_name": "posfed",
                        "scrape_timeout": f"{scrape_seconds:g}s",
                        "static_configs": [{"targets": targets}],
                    }
                ],
            },
            indent=2,
        )
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),  # carries the session's marker: none outlives the suite
        )
    try:
        wait_for(lambda: _ready(base_url, server, log), 60, "Prometheus to be ready", log)
        yield base_url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _ready(base_url: str, server: subprocess.Popen, log: Path) -> bool:
    if server.poll() is not None:
        pytest.fail(f"Prometheus exited\n{log.read_text(errors='replace')[-3000:]}")
    try:
        with urllib.request.urlopen(f"{base_url}/-/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def api(base_url: str, path: str, **params: str) -> dict:
    """GET /api/v1/<path>; its ``data`` (a failed query fails the test with Prometheus's words)."""
    url = f"{base_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        body = json.loads(refused.read())
    if body.get("status") != "success":
        pytest.fail(f"Prometheus refused {params}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def query(base_url: str, expr: str) -> list[dict]:
    """An instant query's result: [{"metric": {labels}, "value": [time, "value"]}, ...]."""
    return api(base_url, "query", query=expr)["result"]


def values_by(base_url: str, expr: str, label: str) -> dict[str, float]:
    """label value -> sample value, of an instant query's series."""
    return {row["metric"].get(label, ""): float(row["value"][1]) for row in query(base_url, expr)}
