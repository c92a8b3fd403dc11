#!/usr/bin/env bash
# What the test suite needs from the system, installed by the project rather than by hand:
# unixODBC + the FreeTDS ODBC driver (so pyodbc imports and the SQL Server path is exercised),
# Chromium + chromedriver (the UI is checked in a real browser),
# and a running local PostgreSQL for the live database tests.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
odbcinst -q -d 2>/dev/null | grep -qi freetds || missing+=(unixodbc tdsodbc)
# Headless Chromium and its WebDriver, for the browser test of the Dagster UI.
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || missing+=(chromium chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "system-deps: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "system-deps: starting the local PostgreSQL cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi
