"""BVH files or folders -> frames.npz, the training data of a Motion VAE.

frames.npz holds:
    data             float32 (N, F)  every clip's feature frames, concatenated
    end_indices      int64 (C,)      the inclusive last row of each clip
    clip_names       str (C,)
    clip_start_root  float64 (C, 3)  x, z, yaw of each clip's first character frame
    fps              float
    skeleton         JSON text of runtime.skeleton.Skeleton
    layout           JSON text of runtime.features.FeatureLayout
    source           JSON text: input files, options and a summary
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.atomic import atomic_path, atomic_paths
from runtime.bvh import UNITS, MocapError, read_bvh
from runtime.cli import UsageError, check_memory, check_output_file, fail, number, parse, require
from runtime.cli import progress as with_progress
from runtime.features import FeatureLayout, decode, encode
from runtime.motion import Motion
from runtime.preview import FORMATS as PREVIEW_FORMATS
from runtime.preview import PreviewError, check_output, render
from runtime.skeleton import Skeleton

MIRROR_SUFFIX = "~mirror"  # a clip's mirrored copy is named NAME~mirror (the trainer's hold-out split pairs them)
MIN_FPS, MAX_FPS = 1.0, 1000.0  # target frame rates of training data
SCALE_RANGE = (1e-6, 1e3)  # metres per file unit: a micrometre to a kilometre
# Bytes per output frame and joint while a clip is converted (float64 rotations, matrices, positions, features).
WORK_BYTES_PER_JOINT_FRAME = 400
EXAMPLES = """examples:
  python -m trainer.prepare mocap/ -o frames.npz --mirror
  python -m trainer.prepare a.bvh b.bvh -o frames.npz --fps 30 --scale cm --up y
  python -m trainer.prepare cmu/ -o frames.npz --joints 31 --preview clip.gif
  python -m trainer.prepare cmu/ -o frames.npz --joints Hips,LeftUpLeg,LeftLeg,...   (keep a subset)
"""


@dataclass
class Prepared:
    """Frames of many clips with their skeleton and layout."""

    data: np.ndarray
    end_indices: np.ndarray
    clip_names: list[str]
    clip_start_root: np.ndarray
    skeleton: Skeleton
    layout: FeatureLayout
    source: dict


def find_bvh_files(inputs: list[str]) -> list[Path]:
    """BVH files named directly or found (recursively, sorted) in folders."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() == ".bvh" and q.is_file())
            if not found:
                raise MocapError(f"{p}: no .bvh files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise MocapError(f"{p}: expected a BVH file or a folder, found a FIFO, socket or device")
        else:
            raise MocapError(f"{p}: no such file or folder")
    return files


def load_clip(path: Path, fps: float, scale: float | str, up: str, joints: int | list[str] | None) -> Motion:
    """Read one BVH and bring it to the training convention: no dummy root, rigid bones, target fps."""
    motion = read_bvh(path, scale=scale, up=up, expect_joints=joints if isinstance(joints, int) else None)
    motion = motion.without_static_root()
    if isinstance(joints, list):
        missing = [n for n in joints if n not in motion.skeleton.names]
        if missing:
            raise MocapError(f"{path}: --joints names {', '.join(missing)}, not in the file's hierarchy")
        try:
            motion = motion.subset(joints)
        except ValueError as e:
            raise MocapError(f"{path}: --joints: {e}") from None
    frames = int(motion.duration * fps) + 2
    try:
        check_memory(frames * motion.skeleton.n_joints * WORK_BYTES_PER_JOINT_FRAME,
                     f"{motion.n_frames} frames at {motion.fps:g} fps resampled to {frames} at --fps {fps:g}")
    except UsageError as e:
        raise MocapError(f"{path}: {e}") from None
    return motion.rigid().resample(fps)


def prepare(files: list[Path], fps: float = 30.0, mirror: bool = False, scale: float | str = "auto",
            up: str = "auto", joints: int | list[str] | None = None, contacts: bool = True,
            progress: bool = True) -> Prepared:
    """Read, convert and encode every clip (and its mirror image)."""
    skeleton: Skeleton | None = None
    layout: FeatureLayout | None = None
    chunks, names, starts, ends = [], [], [], []
    total = 0
    for path in with_progress(files, progress, desc="prepare", unit="clip"):
        motion = load_clip(path, fps, scale, up, joints)
        if skeleton is None:
            skeleton = motion.skeleton
            layout = FeatureLayout.for_skeleton(skeleton, fps, contacts)
            if mirror and np.all(skeleton.mirror_map == np.arange(skeleton.n_joints)):
                raise MocapError(f"{path}: --mirror needs left/right joint names (Left/Right, L/R, _l/_r, .L/.R)")
        elif (motion.skeleton.names != skeleton.names
              or not np.array_equal(motion.skeleton.parents, skeleton.parents)):
            raise MocapError(f"{path}: its hierarchy differs from {files[0]}'s "
                             f"({motion.skeleton.n_joints} joints vs {skeleton.n_joints}); prepare one skeleton at a time")
        if motion.n_frames < 2:
            raise MocapError(f"{path}: only {motion.n_frames} frame at {fps:g} fps; a clip needs at least 2")
        variants = [(motion, motion.name)] + ([(motion.mirrored(), motion.name + MIRROR_SUFFIX)] if mirror else [])
        for clip, name in variants:
            enc = encode(clip, layout)
            if not np.isfinite(enc.features).all():
                raise MocapError(f"{path}: its motion overflows to non-finite features (values too large for "
                                 "the units; check --scale)")
            chunks.append(enc.features)
            starts.append(enc.start)
            names.append(name)
            total += len(enc.features)
            ends.append(total - 1)
    if skeleton is None or layout is None:
        raise MocapError("no input files")
    data = np.concatenate(chunks).astype(np.float32)
    source = {"files": [str(f) for f in files], "fps": fps, "mirror": mirror, "scale": scale, "up": up,
              "clips": len(names), "frames": int(total), "minutes": round(total / fps / 60, 3)}
    return Prepared(data, np.array(ends, dtype=np.int64), names, np.array(starts), skeleton, layout, source)


def save_frames(path: str | Path, prep: Prepared) -> None:
    """Write frames.npz atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, data=prep.data, end_indices=prep.end_indices, clip_names=np.array(prep.clip_names),
                 clip_start_root=prep.clip_start_root, fps=np.float64(prep.layout.fps),
                 skeleton=np.array(prep.skeleton.to_json()), layout=np.array(prep.layout.to_json()),
                 source=np.array(json.dumps(prep.source)))


def preview(path: str | Path, prep: Prepared, clip: int = 0) -> str:
    """Render one clip of prepared data in 3-D, decoded from its features; returns what was drawn."""
    first = 0 if clip == 0 else int(prep.end_indices[clip - 1]) + 1
    feats = prep.data[first:int(prep.end_indices[clip]) + 1].astype(np.float64)
    pose, _, _ = decode(feats, prep.layout, prep.skeleton, prep.clip_start_root[clip])
    return render(path, pose.positions, prep.skeleton, prep.layout.fps, pose.contacts, prep.layout.contact_joints,
                  title=prep.clip_names[clip])


def _parse_joints(text: str | None) -> int | list[str] | None:
    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    return [n.strip() for n in text.split(",") if n.strip()]


def _parse_scale(text: str) -> float | str:
    if text in UNITS or text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or one of auto, {', '.join(UNITS)}") from None
    if not SCALE_RANGE[0] <= value <= SCALE_RANGE[1]:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected metres per file unit from {SCALE_RANGE[0]:g} to "
                                         f"{SCALE_RANGE[1]:g}, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m trainer.prepare", description=__doc__.split("\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="BVH files or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="the frames.npz to write")
    p.add_argument("--fps", type=float, default=30.0, help="target frame rate (default 30)")
    p.add_argument("--mirror", action="store_true", help="add a left/right mirrored copy of every clip")
    p.add_argument("--joints", help="expected joint count in each file, or comma-separated joint names to keep")
    p.add_argument("--scale", type=_parse_scale, default="auto",
                   help=f"metres per file unit, or a unit ({', '.join(UNITS)}); default: auto from the body height")
    p.add_argument("--up", choices=["auto", "y", "z"], default="auto",
                   help="the files' up axis: %(choices)s; auto tells it from the body's shape (default %(default)s)")
    p.add_argument("--no-contacts", action="store_true", help="leave out the foot-contact block")
    p.add_argument("--preview", metavar="FILE", help="also render the first clip in 3-D, as decoded from its "
                   "features: .gif, .mp4 (needs ffmpeg) or .png (its last frame)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit code 0 on success, 2 on bad input (one line on stderr, nothing written)."""
    args = parse(build_parser(), argv)
    out = Path(args.output)
    try:
        check_output_file(out)
        number(args.fps, "--fps", MIN_FPS, MAX_FPS)
        if args.preview:
            require("matplotlib", "--preview")
            check_output_file(args.preview, PREVIEW_FORMATS, "--preview")
            check_output(args.preview)  # and ffmpeg for .mp4
            if Path(args.preview).resolve() == out.resolve():
                raise UsageError(f"{args.preview}: --preview must not overwrite the output")
        files = find_bvh_files(args.inputs)
        prep = prepare(files, args.fps, args.mirror, args.scale, args.up, _parse_joints(args.joints),
                       not args.no_contacts, progress=not args.quiet)
        # Both files under temporary names, renamed only when both are written.
        with atomic_paths([out] + ([Path(args.preview)] if args.preview else [])) as tmps:
            save_frames(tmps[0], prep)
            if args.preview:  # its line names the temporary file: say the real one
                note = preview(tmps[1], prep).replace(str(tmps[1]), args.preview)
    except (MocapError, UsageError, PreviewError) as e:
        return fail(e)
    except OSError as e:
        return fail(f"{e.filename or out}: cannot write ({e.strerror or e})")
    s, lay = prep.source, prep.layout
    print(f"{s['clips']} clips ({len(files)} files{', mirrored' if args.mirror else ''}), {s['frames']} frames, "
          f"{s['minutes']:.2f} min at {args.fps:g} fps | skeleton: {prep.skeleton.n_joints} joints, root "
          f"{prep.skeleton.names[0]}, contacts {', '.join(lay.contact_joints) or 'none'} | "
          f"{lay.size} features/frame -> {out}")
    if args.preview:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
