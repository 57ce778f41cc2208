#!/usr/bin/env bash
# Runs the whole test suite after setting up what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p test-artifacts
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=10 "$@"
