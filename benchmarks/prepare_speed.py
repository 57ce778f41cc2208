"""How long `trainer.prepare` takes on the Bandai locomotion folder (171 BVH files, with mirroring).

The target is under 15 s on a 2-core machine. Printed next to it, measured in the same run: the time spent
only parsing the BVH files, so the cost of the conversion itself is visible.
Usage: python benchmarks/prepare_speed.py [FOLDER]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from runtime.bvh import read_bvh
from trainer.prepare import find_bvh_files, prepare, save_frames

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "mocap" / "bandai2_locomotion"


def main() -> int:
    """Run the benchmark and print the table."""
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not folder.exists():
        print(f"skipped: {folder} is not present")
        return 0
    files = find_bvh_files([str(folder)])
    t0 = time.perf_counter()
    for f in files:
        read_bvh(f)
    parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep = prepare(files, fps=30.0, mirror=True, progress=False)
    with tempfile.TemporaryDirectory() as tmp:  # never keep data derived from licensed mocap
        save_frames(Path(tmp) / "frames.npz", prep)
    total = time.perf_counter() - t0
    frames = len(prep.data)
    print(f"{len(files)} files -> {len(prep.clip_names)} clips, {frames} frames ({prep.source['minutes']:.1f} min)")
    print(f"{'step':<28}{'seconds':>10}{'frames/s':>12}")
    print(f"{'parse BVH only':<28}{parse:>10.2f}{frames / 2 / parse:>12.0f}")
    print(f"{'prepare --mirror (all)':<28}{total:>10.2f}{frames / total:>12.0f}")
    print(f"target 15 s: {total / 15:.2f} of the budget ({'ok' if total < 15 else 'TOO SLOW'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
