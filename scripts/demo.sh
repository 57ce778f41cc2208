#!/usr/bin/env bash
# The main job on a fresh machine: set up, then generate licence-free procedural mocap, turn it into
# training frames and draw a preview. (Once the default model ships, this bakes a clip with it.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-out/demo}
mkdir -p "$out"
.venv/bin/python -m trainer.procedural "$out/bvh" --clips 6 --seconds 20 --seed 1
.venv/bin/python -m trainer.prepare "$out/bvh" -o "$out/frames.npz" --mirror --preview "$out/frames.png"
echo "wrote $out/frames.npz and $out/frames.png"
