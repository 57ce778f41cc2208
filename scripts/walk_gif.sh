#!/usr/bin/env bash
# Redraws docs/walk.gif, the README's picture of the shipped default model walking; run it after retraining.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-.venv/bin/python}" -m runtime.bake "$tmp/walk.npz" --frames 150 --preview docs/walk.gif -q
