#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then bake a clip with the shipped default model.
# Extra arguments go to `python -m runtime.bake` (e.g. --frames 900 --preview clip.gif).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${OUT:-clip.npz}
exec .venv/bin/python -m runtime.bake "$out" "$@"
