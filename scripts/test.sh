#!/usr/bin/env bash
# The whole check, as CI runs it: ruff, mypy --strict, then the two test lanes:
#   fast     tests/fast/: pure logic, no servers (seconds)
#   service  everything else, against real services the fixtures start themselves on
#            free ports (nats-server, PostgreSQL with wal_level=logical, MariaDB), so
#            services already running on this machine are neither needed nor disturbed.
# Usage: bash scripts/test.sh                 everything
#        bash scripts/test.sh -m fast         one lane (any pytest arguments: one run)
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-test-servers || exit 1

failed=()
.venv/bin/ruff check bridge adapters outbox tests bench examples docs setup.py || failed+=(ruff)
bash scripts/typecheck.sh || failed+=(mypy)

export CDC_FUZZ="${CDC_FUZZ:-thorough}"  # property tests at full count (a desk run of tests/fast: a tenth)

run_pytest() {  # pytest, where "collected no tests" (exit 5) is a failure too
    .venv/bin/python -m pytest "$@"
    local code=$?
    if [ "$code" = 5 ]; then
        echo "pytest collected no tests for: $*" >&2
        return 1
    fi
    return "$code"
}

if [ $# -gt 0 ]; then
    run_pytest "$@" || failed+=(pytest)
else
    run_pytest -m fast -p no:cacheprovider tests/fast || failed+=("fast lane")
    # the longest fault tests (marker by_hand, tests/conftest.py) run by hand: -m by_hand
    run_pytest -m "service and not by_hand" -p no:cacheprovider --durations=30 \
        || failed+=("service lane")
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all checks passed: ruff, mypy --strict, tests"
