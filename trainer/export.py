"""Export a training run to a model directory: decoder.onnx + model.json (see docs/model-directory.md).

The directory is written beside its destination and renamed into place, so a failed export never
leaves a half-written model. After writing, a 300-step closed-loop rollout compares onnxruntime with torch.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from runtime.cli import UsageError, fail, parse, write_error
from runtime.footlock import idle_lock_inputs
from runtime.model import INT8_FILE, PRECISIONS, SCHEMA_VERSION, ModelError, load_model, sha256_file

from .checkpoint import CheckpointError, LoadedRun, load_run, read_checkpoint
from .config import TrainConfig
from .data import Frames, Normaliser
from .models import ModelSpec, MotionVAE
from .staging import check_model_out, staged_dir
from .foot_lock_graph import (LOCK_INPUTS, LOCK_OUTPUTS, LockedStepGraph, foot_lock_meta, planted_heights,
                              skip_idle_lock)
from .quantize import add_int8
from .step_graph import INPUTS, OUTPUTS, StepGraph

EXAMPLES = """examples:
  python -m trainer.export runs/walk --out models/walk
  python -m trainer.export runs/walk/checkpoint.pt --out models/walk --name walk --licence "CC0"
  python -m trainer.export runs/walk --out models/walk --precision int8   # float32 and int8 step graphs
  python -m trainer.export --precision int8 models/walk                   # add the int8 graph to a model directory
"""
VERIFY_STEPS = 300
VERIFY_TOLERANCE = 1e-4
# A character whose normalised frame leaves this band has diverged (z-score units, or minmax halves);
# the runtime resets it to a start frame.
BOUND = {"zscore": 40.0, "minmax": 20.0, "none": np.inf}
OPSET = 17


def export_step_onnx(run: LoadedRun, bounds: np.ndarray, path: Path) -> tuple[list[str], list[str]]:
    """Write the run's runtime step graph (decoder + pose decoding + foot lock, when the skeleton has legs) as
    ONNX with a dynamic batch axis; returns its input and output names."""
    norm = run.normaliser
    graph = StepGraph(run.decoder.cpu().eval(), norm.shift, norm.scale, bounds, run.layout, run.skeleton).eval()
    b, j = 2, run.layout.n_joints
    example = (torch.zeros(b, run.spec.latent), torch.zeros(b, run.spec.cond_size), torch.zeros(b, 3),
               torch.zeros(b, 1), torch.zeros(b, j, 4))
    inputs, outputs = INPUTS, OUTPUTS
    locked = LockedStepGraph(graph, run.skeleton, run.layout).eval()
    if locked.n_legs:
        graph, inputs, outputs = locked, INPUTS + LOCK_INPUTS, OUTPUTS + LOCK_OUTPUTS
        example += locked.example_inputs(b)
    batched = [name for name in inputs + outputs if name != "foot_lock_settings"]
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but exact for these graphs
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in batched}, opset_version=OPSET, dynamo=False)
    if locked.n_legs:
        skip_idle_lock(path)
    return inputs, outputs


def _bounds(kind: str, size: int) -> np.ndarray:
    bound = BOUND.get(kind, np.inf)
    return np.array([[-bound] * size, [bound] * size], dtype=np.float32)


def model_metadata(run: LoadedRun, name: str, licence: str, data: dict) -> dict:
    """model.json content, without the file hashes."""
    norm = run.normaliser
    size = run.layout.size
    latent: dict = {"size": run.spec.latent, "prior": "normal"}
    if run.model.prior is not None:
        # The graph maps its z input through p(z | condition): callers still draw z from N(0, I).
        latent = {"size": run.spec.latent, "prior": "conditional",
                  "input": "standard-normal noise, mapped inside decoder.onnx through the learned p(z | condition)"}
    if run.model.quantizer is not None:
        latent = {"size": run.spec.latent, "prior": "codebook",
                  "codebook": run.model.quantizer.codebook.detach().cpu().numpy().round(7).tolist()}
    source = json.loads(data.get("source", "{}") or "{}")
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "kind": "vq" if run.spec.quantize else run.spec.decoder,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fps": run.fps,
        "skeleton": run.skeleton.to_dict(),
        "layout": run.layout.to_dict(),
        "normalisation": {"kind": norm.kind, "shift": norm.shift.tolist(), "scale": norm.scale.tolist(),
                          "applies_to": "decoder inputs and outputs are normalised"},
        "bounds": _bounds(norm.kind, size).tolist(),
        "latent": latent,
        "condition_frames": run.spec.n_cond,
        "start_frames": run.start_frames.round(7).tolist(),
        "data": {"clips": data.get("clips"), "frames": data.get("frames"), "minutes": source.get("minutes"),
                 "files": len(source.get("files", [])), "mirror": source.get("mirror"), "licence": licence},
        "training": {"epochs": run.epoch, "spec": run.spec.state()},
        "files": {},
        "policies": {},
    }


def verify(run: LoadedRun, folder: Path, steps: int = VERIFY_STEPS, seed: int = 0) -> float:
    """Max |onnxruntime - torch| of the next frame at every step of a rollout from every start frame.

    Both see the same condition each step (the rollout follows onnxruntime), so the figure measures the
    exported graph, not the chaos of two free-running autoregressive loops drifting apart.
    """
    model = load_model(folder)
    decoder = run.decoder.cpu().eval()
    rng = np.random.default_rng(seed)
    cond = model.normalise(model.start_frames).reshape(len(model.start_frames), -1)
    f = model.frame_size
    worst = 0.0
    with torch.no_grad():
        for _ in range(steps):
            z = rng.standard_normal((len(cond), model.latent_size)).astype(np.float32)
            if model.codebook is not None:
                z = model.codebook[rng.integers(len(model.codebook), size=len(cond))]
            ort_next = model.decoder.run(["next_frame"], _decoder_feed(model, z, cond))[0]
            torch_next = decoder(torch.from_numpy(z), torch.from_numpy(cond)).numpy()
            worst = max(worst, float(np.abs(ort_next - torch_next).max()))
            cond = np.concatenate([cond[:, f:], ort_next], axis=1)
    return worst


def _decoder_feed(model, z: np.ndarray, cond: np.ndarray) -> dict[str, np.ndarray]:
    n = len(z)
    return {"z": z, "condition": cond, "origin": np.zeros((n, 3), np.float32), "yaw": np.zeros((n, 1), np.float32),
            "previous_rotations": np.zeros((n, model.skeleton.n_joints, 4), np.float32), **idle_lock_inputs(model, n)}


def untrained_run(frames: Frames, config: TrainConfig | None = None, seed: int = 0) -> LoadedRun:
    """A run with freshly initialised weights over frames: for tests and benchmarks of the export path."""
    config = config or TrainConfig()
    torch.manual_seed(seed)
    spec = ModelSpec(**{**{k: getattr(config, k) for k in ModelSpec.__dataclass_fields__ if hasattr(config, k)},
                        "frame_size": frames.layout.size})
    starts = frames.clip_starts[:, None] + np.arange(spec.n_cond)
    return LoadedRun(path=frames.path, model=MotionVAE(spec).eval(), spec=spec,
                     normaliser=Normaliser.fit(frames.data, config.normalisation), layout=frames.layout,
                     skeleton=frames.skeleton, fps=frames.fps, config=config, epoch=0, history=[],
                     start_frames=frames.data[starts[:16]])


def export(run_path: str | Path, out: str | Path, name: str | None = None, licence: str = "unspecified",
           precision: str = "float32") -> float:
    """Export a run folder or checkpoint to the model directory out; returns the verification difference.

    precision int8 adds the int8 step graph beside the float32 one (trainer/quantize.py).
    """
    return export_run(load_run(run_path), out, name, licence, read_checkpoint(run_path).get("data", {}),
                      precision=precision)


def export_run(run: LoadedRun, out: str | Path, name: str | None = None, licence: str = "unspecified",
               data: dict | None = None, check: bool = True, precision: str = "float32") -> float:
    """Export a loaded run to the model directory out (replaced atomically); returns the verification difference.

    check=False skips comparing onnxruntime with torch (returning NaN), for scratch copies of runs under
    evaluation, whose rollouts may blow up on purpose. precision int8 adds the int8 step graph.
    """
    data = data or {}
    out = Path(out)
    with staged_dir(out) as staging:
        meta = model_metadata(run, name or out.name, licence, data)
        inputs, outputs = export_step_onnx(run, np.asarray(meta["bounds"], np.float32), staging / "decoder.onnx")
        meta["files"]["decoder.onnx"] = {"sha256": sha256_file(staging / "decoder.onnx"),
                                         "graph": "runtime step (trainer/step_graph.py, trainer/foot_lock_graph.py)",
                                         "inputs": inputs, "outputs": outputs}
        if "foot_lock_state" in inputs:
            meta["foot_lock"] = foot_lock_meta(run.skeleton, run.layout, planted_heights(
                run.layout, data.get("path"), run.start_frames))
        (staging / "model.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        diff = verify(run, staging) if check else float("nan")
        if check and not diff < VERIFY_TOLERANCE:
            raise ModelError(f"{out}: onnxruntime and torch differ by {diff:.2e} (> {VERIFY_TOLERANCE:g}) "
                             "over the verification rollout; nothing was written")
        if precision == "int8":
            add_int8(staging)
    return diff


def superseded(out: str | Path) -> list[str]:
    """What a model directory holds beside its decoder (policies, a tokenizer), which an export over it drops."""
    try:
        meta = json.loads((Path(out) / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(meta, dict):
        return []
    found = [f"policy-{task}" for task in meta.get("policies") or {}]
    return found + (["tokenizer"] if meta.get("tokenizer") else [])


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (or its checkpoint.pt) written by trainer.train; or, with --precision "
                               "int8 and no --out, a model directory to add the int8 step graph to")
    p.add_argument("--out", help="the model directory to write (replaced if it exists)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32: decoder.onnx; int8: also decoder-int8.onnx, the network's weights int8 per output "
                        "channel (default %(default)s)")
    p.add_argument("--name", help="model name (default: the folder name)")
    p.add_argument("--licence", default="unspecified",
                   help="licence note of the training data, kept in model.json (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input."""
    args = parse(build_parser(), argv)
    if args.out is None:
        return _add_precision(args)
    dropped = superseded(args.out)
    try:
        check_model_out(Path(args.out), args.name)
        diff = export(args.run, args.out, args.name, args.licence, args.precision)
    except (CheckpointError, ModelError, UsageError) as e:
        return fail(e)
    except OSError as e:
        return fail(write_error(e, args.out))
    print(f"exported {args.run} -> {args.out}: onnxruntime vs torch max difference {diff:.2e} "
          f"over a {VERIFY_STEPS}-step rollout (tolerance {VERIFY_TOLERANCE:g})"
          + (f"; with {INT8_FILE}" if args.precision == "int8" else ""))
    if dropped:
        # Policies steer the old decoder's latents, so keeping them would give characters that walk wrong.
        print(f"note: {args.out} held {', '.join(dropped)}; an export writes the new decoder alone, so train "
              "and export those again")
    return 0


def _add_precision(args: argparse.Namespace) -> int:
    """`trainer.export --precision int8 MODEL_DIR`: the int8 step graph added to an existing model directory."""
    folder = Path(args.run)
    if not (folder / "model.json").is_file():
        return fail(f"{folder}: --out is required to export a run (only a model directory, with --precision int8, "
                    "is exported in place)")
    if args.precision != "int8" or args.name is not None:
        return fail(f"{folder}: a model directory takes only --precision int8 (adding its int8 step graph); give a "
                    "run folder and --out to export")
    try:
        figures = add_int8(folder)
    except ModelError as e:
        return fail(e)
    except OSError as e:
        return fail(write_error(e, folder))
    print(f"added {folder / INT8_FILE}: its next frame differs from the float32 graph's by {figures['mean']:.2e} "
          f"on average and {figures['max']:.2e} at most (standard deviations of the data) over a "
          f"{figures['steps']}-step rollout of {figures['characters']} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
