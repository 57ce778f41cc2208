"""Bake a clip from a model: `python -m runtime.bake OUT [--model DIR] [--frames N] ...`.

The output format follows OUT's suffix: .npz (every array), .bvh (any DCC), .glb (Godot 4, Blender).
With several characters, .bvh and .glb get one file per character (OUT_0.glb, OUT_1.glb, ...).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path, atomic_paths
from .bvh import write_bvh
from .cli import UsageError, check_input_file, check_memory, check_output_file, fail, number, parse, require
from .cli import progress as with_progress
from .control import ControlScript, resample_path
from .controller import Controller
from .gltf import write_glb
from .model import PRECISIONS, MotionModel, ModelError, load_model
from .motion import Motion
from .preview import FORMATS as PREVIEW_FORMATS
from .preview import MAX_PANELS, PreviewError, check_output, render

FORMATS = (".npz", ".bvh", ".glb")
MAX_CONTROL_BYTES = 64 << 20
EXAMPLES = """examples:
  python -m runtime.bake clip.npz                         # 300 frames from the shipped default model
  python -m runtime.bake walk.glb --frames 900 --seed 3   # open in Godot 4 or Blender
  python -m runtime.bake walk.bvh --model models/mine --start 2 --preview walk.gif
  python -m runtime.bake crowd.npz --characters 16
  python -m runtime.bake steer.glb --model models/walk --control joystick.json   # [[t, dir_x, dir_z, speed], ...]
  python -m runtime.bake route.bvh --model models/walk --control path.json       # [[x, z], ...]
  python -m runtime.bake raw.npz --no-foot-lock           # the model's poses as they are, feet not pinned
  python -m runtime.bake fast.glb --model models/walk --precision int8   # the int8 step graph
"""


class BakeError(UsageError):
    """Bad bake arguments; the message says which and why."""


@dataclass
class Clip:
    """A baked clip of K characters over T frames (arrays indexed [frame, character, ...])."""

    model: MotionModel
    root_positions: np.ndarray  # (T, K, 3)
    rotations: np.ndarray  # (T, K, J, 4) local, the root's in world space
    positions: np.ndarray  # (T, K, J, 3)
    contacts: np.ndarray  # (T, K, C)
    features: np.ndarray  # (T, K, F) raw feature frames
    resets: np.ndarray  # (T, K) bool

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return len(self.root_positions)


def bake(model: MotionModel, frames: int, seed: int | None = 0, characters: int = 1, start: int | None = None,
         progress: bool = False, control: ControlScript | None = None, foot_lock: bool = True) -> Clip:
    """Step a controller frames times and collect every pose; control steers every character with a policy.

    foot_lock pins planted feet in the poses (runtime/footlock.py); the model's own motion is the same either way.
    """
    ctrl = Controller(model, characters, seed=seed, foot_lock=foot_lock)
    ctrl.reset(start=start)
    j, c = model.skeleton.n_joints, len(model.layout.contact_joints)
    out = Clip(model, np.zeros((frames, characters, 3), np.float32), np.zeros((frames, characters, j, 4), np.float32),
               np.zeros((frames, characters, j, 3), np.float32), np.zeros((frames, characters, c), np.float32),
               np.zeros((frames, characters, model.frame_size), np.float32), np.zeros((frames, characters), bool))
    # No bar without tqdm (Blender bundles this module without it).
    for t in with_progress(range(frames), progress, desc="bake", unit="frame"):
        p = ctrl.step(control=None if control is None else control.at(t / model.fps, ctrl.state.origin))
        out.root_positions[t] = p.root_position
        out.rotations[t] = p.local_rotations
        out.positions[t] = p.positions
        out.contacts[t] = p.contacts
        out.features[t] = ctrl.features()
        out.resets[t] = p.reset
    return out


def character_motion(clip: Clip, k: int) -> Motion:
    """One character of a clip as a Motion (for BVH output)."""
    skel = clip.model.skeleton
    trans = np.broadcast_to(skel.offsets, (clip.n_frames, skel.n_joints, 3)).copy()
    trans[:, 0] = clip.root_positions[:, k]
    return Motion(skel, clip.rotations[:, k].astype(np.float64), trans, clip.model.fps, f"character{k}")


def output_paths(out: Path, characters: int) -> list[Path]:
    """The files a bake of characters writes for out: out itself, or OUT_0, OUT_1, ... for .bvh and .glb."""
    if characters == 1 or out.suffix.lower() == ".npz":
        return [out]
    return [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(characters)]


def write_clip(out: Path, clip: Clip, into: list[Path] | None = None) -> list[Path]:
    """Write a clip in the format of out's suffix; returns the files written.

    into: where to write instead of output_paths(out, ...) (temporary names of the same suffix).
    """
    model = clip.model
    paths = into if into is not None else output_paths(out, clip.root_positions.shape[1])
    if out.suffix.lower() == ".npz":
        with atomic_path(paths[0], suffix=".npz") as tmp:
            np.savez(tmp, fps=np.float64(model.fps), skeleton=np.array(model.skeleton.to_json()),
                     layout=np.array(model.layout.to_json()), root_positions=clip.root_positions,
                     local_rotations=clip.rotations, world_positions=clip.positions, contacts=clip.contacts,
                     features=clip.features, resets=clip.resets, model=np.array(json.dumps(
                         {"name": model.name, "path": str(model.path)})))
        return paths
    for k, path in enumerate(paths):
        if out.suffix.lower() == ".bvh":
            write_bvh(path, character_motion(clip, k))
        else:
            write_glb(path, model.skeleton, model.fps, clip.root_positions[:, k], clip.rotations[:, k],
                      name=f"{model.name}_{k}" if len(paths) > 1 else model.name)
    return paths


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m runtime.bake", description=__doc__.split("\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help=f"output file: {', '.join(FORMATS)}")
    p.add_argument("--model", help="model directory (default: the shipped default model)")
    p.add_argument("--frames", type=int, default=300, help="frames to bake (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the latents (default 0)")
    p.add_argument("--characters", type=int, default=1, help="characters baked side by side (default 1)")
    p.add_argument("--start", type=int, help="start frame index from the model's start frames (default random)")
    p.add_argument("--providers", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="onnxruntime device: %(choices)s (default %(default)s)")
    p.add_argument("--precision", default="float32", choices=PRECISIONS,
                   help="the step graph: float32, or int8 (faster; the model directory needs decoder-int8.onnx, "
                        "see docs/model-directory.md) (default %(default)s)")
    p.add_argument("--control", metavar="JSON", help="steer with the model's policies: a joystick script or a "
                   "path (see runtime/control.py ControlScript)")
    p.add_argument("--no-foot-lock", dest="foot_lock", action="store_false",
                   help="keep the model's raw poses: planted feet are not pinned (see runtime/footlock.py)")
    p.add_argument("--preview", metavar="FILE", help="also render a 3-D preview following each character (up to "
                   f"{MAX_PANELS} side by side): .gif, .mp4 (needs ffmpeg) or .png (the last frame)"),
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(args: argparse.Namespace) -> list[Path]:
    """Numbers, output paths and the extras they need, before any work; returns the files to write."""
    out = check_output_file(args.out, FORMATS)
    number(args.frames, "--frames", 1, integer=True)
    number(args.characters, "--characters", 1, integer=True)
    if args.seed < 0:
        raise BakeError(f"--seed must be 0 or more, got {args.seed}")
    if args.start is not None and args.start < 0:
        raise BakeError(f"--start must be 0 or more, got {args.start}")
    if out.suffix.lower() == ".glb":
        require("pygltflib", ".glb output")
    outputs = output_paths(out, args.characters)
    for path in outputs:
        check_output_file(path)
    if args.preview:
        require("matplotlib", "--preview")
        check_output_file(args.preview, PREVIEW_FORMATS, "--preview")
        check_output(args.preview)  # and ffmpeg for .mp4
        if Path(args.preview).resolve() in {p.resolve() for p in outputs}:
            raise BakeError(f"{args.preview}: --preview must not overwrite the bake's own output")
    return outputs


def _check_size(args: argparse.Namespace, model: MotionModel, control: ControlScript | None) -> None:
    """The memory the bake's arrays will take, checked against this machine's before allocating them."""
    j, c, f = model.skeleton.n_joints, len(model.layout.contact_joints), model.frame_size
    per_frame = 4 * (3 + 4 * j + 3 * j + c + f) + 1  # float32 poses, contacts and features, a reset flag
    per_character = 4 * (2 * model.n_cond * f + 8 * j + 3 * j + f + c + model.latent_size) * 4  # controller
    if control is not None and control.task == "path":  # every character keeps the path resampled
        per_character += 16 * len(resample_path(control.rows, control.closed))
    check_memory(float(args.frames) * args.characters * per_frame + float(args.characters) * per_character,
                 f"--frames {args.frames} x --characters {args.characters}")


class _NotJsonNumber(ValueError):
    """NaN or Infinity in a JSON file: Python's parser takes them, JSON does not."""


def _no_constant(name: str) -> float:
    raise _NotJsonNumber(name)


def _control(path: str, model: MotionModel) -> ControlScript:
    """The --control file, checked against the model's policies."""
    check_input_file(path, "control file")
    if Path(path).stat().st_size > MAX_CONTROL_BYTES:
        raise BakeError(f"{path}: a control file of at most {MAX_CONTROL_BYTES >> 20} MB was expected")
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
        data = json.loads(text, parse_constant=_no_constant)
        script = ControlScript.from_json(data, path)
    except OSError as e:
        raise BakeError(f"{path}: cannot read the control file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise BakeError(f"{path}: expected UTF-8 JSON text, found a byte that is not UTF-8 at offset {e.start} "
                        "(save the file as UTF-8)") from None
    except json.JSONDecodeError as e:
        raise BakeError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise BakeError(f"{path}: JSON nested too deeply to be a control file") from None
    except _NotJsonNumber as e:
        raise BakeError(f"{path}: expected finite JSON numbers, found {e}") from None
    except ValueError as e:
        raise BakeError(str(e)) from None
    if script.task not in model.policies:
        have = ", ".join(sorted(model.policies)) or "none"
        raise BakeError(f"{path}: model {model.name!r} has no {script.task} policy (it has: {have}); train one "
                        f"with `python -m trainer.policy {script.task}`")
    return script


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input (one line on stderr, nothing written)."""
    args = parse(build_parser(), argv)
    try:
        outputs = _check_args(args)
        model = load_model(args.model, providers=args.providers, precision=args.precision)
        if args.start is not None and not 0 <= args.start < len(model.start_frames):
            raise BakeError(f"--start {args.start}: the model has start frames 0..{len(model.start_frames) - 1}")
        control = _control(args.control, model) if args.control else None
        _check_size(args, model, control)
        clip = bake(model, args.frames, args.seed, args.characters, args.start, progress=not args.quiet,
                    control=control, foot_lock=args.foot_lock)
        # Every file (and the preview) is written under a temporary name and renamed only when all succeeded.
        with atomic_paths(outputs + ([Path(args.preview)] if args.preview else [])) as tmps:
            write_clip(Path(args.out), clip, tmps[:len(outputs)])
            if args.preview:  # its line names the temporary file: say the real one
                note = render(tmps[-1], clip.positions, model.skeleton, model.fps, clip.contacts,
                              model.layout.contact_joints, title=model.name).replace(str(tmps[-1]), args.preview)
    except (UsageError, ModelError, PreviewError) as e:
        return fail(e)
    except OSError as e:  # the disk filled up or the folder went away while writing
        return fail(f"{e.filename or args.out}: cannot write ({e.strerror or e})")
    resets = int(clip.resets.sum())
    print(f"baked {args.frames} frames x {args.characters} character(s) at {model.fps:g} fps from {model.name} "
          f"({model.providers[0]}, {model.precision}) -> {', '.join(map(str, outputs))}"
          + (f"; {resets} divergence reset(s)" if resets else ""))
    if args.preview:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
