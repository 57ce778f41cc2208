"""Check how a skeleton is matched to a model before using it as a rig (`python -m runtime.rigcheck`).

Reads a BVH file's skeleton as a rig, matches it with runtime.rigmap (the preset, each model joint's bone, the
bones left undriven, the root-motion scale) and, with --feet, bakes the model and measures the rig's feet with
runtime.contacts' rule: the lowest toe, and planted toes' sliding against the model skeleton's own (the rig's
measured at the model's size), with the feet following the model's toes as the front ends do and without.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from . import contacts, rigmap
from .bake import bake
from .bvh import MocapError, read_bvh
from .cli import UsageError, check_input_file, fail, number, parse
from .model import ModelError, MotionModel, load_model
from .rotations import quat_to_matrix

EXAMPLES = """examples:
  python -m runtime.rigcheck character.bvh                    # the match: preset, bone map, undriven bones
  python -m runtime.rigcheck character.bvh --feet --frames 600 --characters 4
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m runtime.rigcheck", description=__doc__.split("\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bvh", help="a BVH file whose skeleton is the rig (its motion is not used)")
    p.add_argument("--model", help="model directory (default: the shipped default model)")
    p.add_argument("--feet", action="store_true", help="also bake the model and measure the rig's toes")
    p.add_argument("--frames", type=int, default=600, help="frames baked for --feet (default 600)")
    p.add_argument("--characters", type=int, default=4, help="characters baked for --feet (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bake (default 0)")
    return p


def report(skeleton, rig: rigmap.RigBones, found: rigmap.BoneMatch, plan: rigmap.Transfer) -> list[str]:
    """The match as lines of text."""
    pairs = ", ".join(f"{j} -> {b}" for j, b in found.bone_map.items() if b)
    return [f"preset: {found.preset}; {sum(1 for b in found.bone_map.values() if b)} of {skeleton.n_joints} "
            f"joints driven: {pairs}",
            f"undriven bones: {', '.join(found.unmatched_bones) or 'none'}",
            f"joints without a bone: {', '.join(found.unmatched_joints) or 'none'}",
            f"root motion x{plan.root_scale:.4f} (the rig's hip height over the model's)"]


def feet(model: MotionModel, rig: rigmap.RigBones, found: rigmap.BoneMatch, plan: rigmap.Transfer, frames: int,
         characters: int, seed: int) -> list[str]:
    """The rig's lowest toe and planted sliding against the model's, with and without following its toes."""
    sk = model.skeleton
    toes = [j for j in ("LeftToeBase", "RightToeBase") if found.bone_map.get(j)]
    held = [sk.index(j) for j in toes] or [int(plan.legs[k, 4]) for k in range(len(plan.legs))]
    if not held:
        raise UsageError("--feet: the rig has no legs matched to the model's")
    bones = [plan.bones[list(plan.joints).index(j)] for j in held]
    clip = bake(model, frames, seed, characters, None)
    out = []
    for follow in (True, False):
        low, slides = np.inf, [[], []]
        for k in range(characters):
            rot = quat_to_matrix(clip.rotations[:, k].astype(np.float64))
            root = clip.root_positions[:, k].astype(np.float64)
            heads = rigmap.rig_world(sk, rig, plan, rot, root, follow_feet=follow)[0][:, bones]
            low = min(low, float(heads[..., 1].min()))
            for i, xyz in enumerate((sk.forward_kinematics_matrices(rot, root)[0][:, held], heads / plan.root_scale)):
                speed, planted = contacts.planted_speed(xyz, model.fps, contacts.foot_floor(xyz[..., 1]))
                slides[i].append(speed[planted])
        ours, theirs = float(np.concatenate(slides[1]).mean()), float(np.concatenate(slides[0]).mean())
        out.append(f"feet {'following the model' if follow else 'not following'}: lowest toe "
                   f"{low * 1000:+.1f} mm; planted toes slide {ours:.4f} m/s against the "
                   f"model's {theirs:.4f} ({ours / theirs:.2f}x)")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input (one line on stderr)."""
    args = parse(build_parser(), argv)
    try:
        number(args.frames, "--frames", 2, integer=True)
        number(args.characters, "--characters", 1, integer=True)
        if args.seed < 0:
            raise UsageError(f"--seed must be 0 or more, got {args.seed}")
        skeleton = read_bvh(check_input_file(args.bvh, "BVH file")).skeleton
        model = load_model(args.model)
        rig = rigmap.RigBones.from_skeleton(skeleton)
        found = rigmap.match(model.skeleton, rig)
        plan = rigmap.transfer(model.skeleton, rig, found.bone_map)
        lines = report(model.skeleton, rig, found, plan)
        if args.feet:
            lines += feet(model, rig, found, plan, args.frames, args.characters, args.seed)
    except (UsageError, MocapError, ModelError, rigmap.RigMatchError) as e:
        return fail(e)
    print(f"{args.bvh}: {len(rig.names)} bones")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
