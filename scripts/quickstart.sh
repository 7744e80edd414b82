#!/usr/bin/env bash
# One command from a fresh clone: install, create a small legacy database, keep writing
# to it, and run the bridge on the embedded default until Ctrl-C.
# Watch the events from another terminal:  .venv/bin/cdc-bridge tail -c examples/quickstart.yaml 'cdc.>'
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/legacy_app.py --db .cdc-bridge/legacy.db --create-only
.venv/bin/python examples/legacy_app.py --db .cdc-bridge/legacy.db --interval 1 &
writer=$!
trap 'kill $writer 2>/dev/null || true' EXIT
echo "legacy app writing to .cdc-bridge/legacy.db (pid $writer); starting cdc-bridge (Ctrl-C stops)"
.venv/bin/cdc-bridge run -c examples/quickstart.yaml
