#!/usr/bin/env bash
# mypy --strict on the import package cdc_bridge. The folders bridge/, adapters/ and
# outbox/ are mapped under one package at install (setup.py); mypy reads files, so it
# gets the same tree as symlinks under build/typecheck/cdc_bridge.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/cdc_bridge
rm -rf build/typecheck
mkdir -p "$tree"
for entry in bridge/*; do
    case "$(basename "$entry")" in __pycache__) continue ;; esac
    ln -s "../../../$entry" "$tree/"
done
ln -s ../../../adapters "$tree/adapters"
ln -s ../../../outbox "$tree/outbox"
exec .venv/bin/mypy -p cdc_bridge "$@"
