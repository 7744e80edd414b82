#!/usr/bin/env bash
# Run the whole test suite against real services that the fixtures start themselves
# (nats-server, PostgreSQL with wal_level=logical, MariaDB) on free ports, plus ruff.
# Usage: bash scripts/test.sh [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-test-servers || exit 1
lint=0
.venv/bin/ruff check bridge adapters outbox tests bench examples || lint=1
.venv/bin/python -m pytest "$@"
code=$?
if [ "$code" = 5 ]; then
    echo "pytest collected no tests: failing on purpose" >&2
    exit 1
fi
if [ "$code" = 0 ] && [ "$lint" != 0 ]; then
    echo "tests passed but ruff found problems" >&2
    exit 1
fi
exit "$code"
