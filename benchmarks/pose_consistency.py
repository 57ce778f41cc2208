"""Engine-ready rotations: do the runtime's local rotations, put through forward kinematics, land the joints
where the model predicted them?

The model predicts joint positions and joint orientations separately; engines only use the rotations.
A large gap means the two heads disagree, which shows as limbs that do not reach where the data says.
Usage: python benchmarks/pose_consistency.py [--model DIR] [--frames 3000] [--characters 8]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from runtime.controller import Controller
from runtime.model import load_model


def main() -> int:
    """Roll out, compare FK(local rotations) with predicted positions, print mean and worst error."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model directory (default: the shipped default model)")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--characters", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = load_model(args.model)
    ctrl = Controller(model, args.characters, seed=args.seed)
    errors = np.zeros((args.frames, args.characters, model.skeleton.n_joints))
    resets = 0
    for t in range(args.frames):
        p = ctrl.step()
        fk, _ = model.skeleton.forward_kinematics(p.local_rotations.astype(np.float64),
                                                  p.root_position.astype(np.float64))
        errors[t] = np.linalg.norm(fk - p.positions, axis=-1)
        resets += int(p.reset.sum())
    mm = errors * 1000
    worst = np.argsort(mm.mean(axis=(0, 1)))[::-1][:3]
    print(f"model {model.name}: {args.frames} frames x {args.characters} characters, {resets} divergence resets")
    print(f"FK(local rotations) vs predicted positions: mean {mm.mean():.1f} mm, 95th percentile "
          f"{np.percentile(mm, 95):.1f} mm, max {mm.max():.1f} mm")
    print("largest mean gaps: " + ", ".join(f"{model.skeleton.names[j]} {mm[..., j].mean():.1f} mm" for j in worst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
