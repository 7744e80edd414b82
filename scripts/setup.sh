#!/usr/bin/env bash
# Install what cdc-bridge and its tests need: a venv with the package, and (for the
# tests) the PostgreSQL 15 and MariaDB server binaries the fixtures start on free ports,
# Debian's chromium (a real browser for the status page) and promtool.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

want_servers="${1:-}"
if [ "$want_servers" = "--with-test-servers" ]; then
    missing=()
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
    { command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; } && command -v mariadb-install-db >/dev/null || missing+=(mariadb-server)
    command -v runuser >/dev/null || missing+=(util-linux)
    command -v chromium >/dev/null || missing+=(chromium)      # the status page's browser test
    command -v promtool >/dev/null || missing+=(prometheus)    # checks deploy/'s alert rules
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        else
            echo "missing system packages: ${missing[*]} (install them, or run as root)" >&2
            exit 1
        fi
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import cdc_bridge.cli.main"
