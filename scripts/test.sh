#!/usr/bin/env bash
# Runs the whole test suite after setting up what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Godot 4 headless for the Godot tests (cached outside the checkout; those tests skip if this fails)
bash scripts/godot.sh || echo "warning: Godot 4 could not be installed; the Godot tests will skip" >&2
mkdir -p test-artifacts
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider --durations=10 "$@"
