"""Blender bake speed, side by side in one run: the extension's keyframe writer against keyframe_insert.

Both key the same 22-bone armature (the procedural skeleton) for 1,000 frames: a rotation_quaternion per bone
and the root's location, 91 F-curves. (a) the extension's writer: a new Action, one channelbag F-curve at a
time filled with keyframe_points.foreach_set; (b) setting each pose bone and calling keyframe_insert, frame by
frame, as live-mocap add-ons bake. Both results are checked to hold the same values.
Usage: python benchmarks/blender_bake.py [--frames N]   (needs bpy 5.0.1 in the environment)
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trainer.procedural import procedural_skeleton


def _extension(folder: Path):
    """The extension's package, staged (sources + runtime, no wheels) and imported from folder."""
    from blender_addon.build import stage

    package = stage(folder, wheels=[])
    sys.path.insert(0, str(folder))
    return importlib.import_module(package.name)


def _motion(frames: int, bones: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth unit quaternions (T, B, 4) w first, in one hemisphere per track, and a root path (T, 3)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None] / 30.0
    axes = rng.normal(size=(bones, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    half = 0.4 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5, bones) * t)
    quats = np.concatenate([np.cos(half)[..., None], np.sin(half)[..., None] * axes], axis=-1)
    root = np.stack([0.1 * np.sin(t[:, 0]), -1.2 * t[:, 0], 0.95 + 0.02 * np.sin(8 * t[:, 0])], axis=-1)
    return quats, root


def _keyframe_insert(obj, names: list[str], quats: np.ndarray, root: np.ndarray) -> None:
    """The per-key baseline: pose every bone, then keyframe_insert it, frame after frame."""
    bones = [obj.pose.bones[n] for n in names]
    for f in range(len(quats)):
        for b, bone in enumerate(bones):
            bone.rotation_quaternion = quats[f, b]
            bone.keyframe_insert("rotation_quaternion", frame=f + 1, group=bone.name)
        bones[0].location = root[f]
        bones[0].keyframe_insert("location", frame=f + 1, group=bones[0].name)


def _values(obj, frames: list[int], names: list[str]) -> np.ndarray:
    """Pose-bone rotations and root location that obj's Action gives at frames."""
    scene = obj.users_scene[0]
    out = []
    for f in frames:
        scene.frame_set(f)
        out.append(np.concatenate([np.ravel([obj.pose.bones[n].rotation_quaternion for n in names]),
                                   obj.pose.bones[names[0]].location]))
    return np.array(out)


def main() -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="motionvae-bench-") as scratch:
        os.environ["BLENDER_USER_RESOURCES"] = scratch  # leave the user's own Blender folders alone
        try:
            import bpy
        except ImportError:
            print("error: bpy is not installed (pip install bpy==5.0.1)", file=sys.stderr)
            return 2
        ext = _extension(Path(scratch) / "extension")
        return _run(bpy, importlib.import_module(f"{ext.__name__}.action"),
                    importlib.import_module(f"{ext.__name__}.rig"), args.frames)


def _run(bpy, action, rig, n_frames: int) -> int:
    """Key the same motion both ways on two copies of the armature and print the times."""
    bpy.ops.wm.read_homefile(use_empty=True)
    skeleton = procedural_skeleton()
    names = list(skeleton.names)
    fast = rig.create_armature(bpy.context, skeleton, "fast")
    slow = rig.create_armature(bpy.context, skeleton, "slow")
    quats, root = _motion(n_frames, len(names))
    frames = 1 + np.arange(n_frames)

    start = time.perf_counter()
    channels = [action.bone_channel(n, "rotation_quaternion", quats[:, b]) for b, n in enumerate(names)]
    channels.append(action.bone_channel(names[0], "location", root))
    action.write_action(fast, "fast", frames, channels)
    t_fast = time.perf_counter() - start

    start = time.perf_counter()
    _keyframe_insert(slow, names, quats, root)
    t_slow = time.perf_counter() - start

    check = [1, n_frames // 3, n_frames]
    diff = np.abs(_values(fast, check, names) - _values(slow, check, names)).max()
    curves = 4 * len(names) + 3
    print(f"bake {len(names)} bones x {n_frames} frames ({curves} F-curves, {curves * n_frames:,} keys), "
          f"Blender {bpy.app.version_string}; both Actions agree to {diff:.1e}")
    print(f"  {'keyframe_points.foreach_set (extension)':42s} {t_fast:8.3f} s")
    print(f"  {'keyframe_insert per bone and frame':42s} {t_slow:8.3f} s")
    print(f"  {'speed-up':42s} {t_slow / t_fast:8.0f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
