#!/usr/bin/env bash
# Run the whole test suite against real services that the fixtures start themselves
# (nats-server, PostgreSQL with wal_level=logical, MariaDB) on free ports.
# Usage: bash scripts/test.sh [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-test-servers || exit 1
.venv/bin/ruff check bridge adapters outbox tests || exit 1
.venv/bin/python -m pytest "$@"
code=$?
if [ "$code" = 5 ]; then
    echo "pytest collected no tests: failing on purpose" >&2
    exit 1
fi
exit "$code"
