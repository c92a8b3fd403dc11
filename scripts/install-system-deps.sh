#!/usr/bin/env bash
# What the test suite needs from the system, installed by the project rather than by hand:
# unixODBC + the FreeTDS ODBC driver (so pyodbc imports and the SQL Server path is exercised),
# Chromium + chromedriver (the UI is checked in a real browser),
# Samba's smbd and OpenSSH's sshd + sftp-server (terminals deliver receipts over SMB and SFTP;
# the tests start their own servers on free high ports, never the system's services), sshfs,
# Prometheus and promtool (the metrics tests scrape a running store and check the alert rules),
# and a running local PostgreSQL for the live database tests.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
odbcinst -q -d 2>/dev/null | grep -qi freetds || missing+=(unixodbc tdsodbc)
# Headless Chromium and its WebDriver, for the browser test of the Dagster UI.
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || missing+=(chromium chromium-driver)
command -v smbd >/dev/null || [ -x /usr/sbin/smbd ] || missing+=(samba)
[ -x /usr/sbin/sshd ] && [ -x /usr/lib/openssh/sftp-server ] || missing+=(openssh-server openssh-sftp-server)
# sshfs (FUSE): an inbox on a network mount, the case inotify cannot see (watch = "poll").
command -v sshfs >/dev/null || missing+=(sshfs)
# Prometheus (the server and promtool): the tests start their own on a free port.
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "system-deps: installing ${missing[*]}"
  as_root apt-get update -qq
  # policy-rc.d 101: the packages must not start their system services (the tests start
  # their own servers); restored afterwards.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  [ $had_policy -eq 1 ] || { printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null; as_root chmod +x "$policy"; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  [ $had_policy -eq 1 ] || as_root rm -f "$policy"
fi

if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "system-deps: starting the local PostgreSQL cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi
