#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project with every extra (bpy pins numpy 1.26 here; the
# runtime alone also runs on numpy 2, which tests/test_wheel.py checks in a clean venv).
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged. pip's wheel cache
# lives outside the checkout (~/.cache/pip), so fresh clones reuse downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "error: $PY not found; this project needs Python 3.11 (bpy 5.0.1 requires it)" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
EXTRAS="train,dev,gltf,preview,progress,bridge,blender"
stamp=.venv/.installed-$( (cat pyproject.toml; echo "$EXTRAS") | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (first run only) ..."
  log=.venv/pip-install.log
  # torch is pinned to the CPU build that pip finds locally; a looser pin would download several GB.
  if ! .venv/bin/python -m pip install -e ".[$EXTRAS]" >"$log" 2>&1; then
    tail -20 "$log" >&2
    echo "error: pip install failed; the whole log is in $log" >&2
    exit 2
  fi
  rm -f .venv/.installed-* && touch "$stamp"
fi
