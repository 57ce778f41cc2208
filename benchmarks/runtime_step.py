"""Runtime step speed, side by side in one run on this machine.

(a) One Controller.step for 1 character (onnxruntime, the exported step graph: decoder + pose decoding), with
    the float32 graph and the int8 one, against the same decoder in PyTorch eager with per-sample weight
    blending (the reference formulation), warm (each called back to back) and cold (called in turn, each
    evicting the others' weights). Two rows show where the step's time goes: the decoder part of the step
    graph alone in onnxruntime, and a bare numpy matmul of the experts' layers (the weights every float32
    formulation must read each step).
(b) Throughput at 1, 64, 1024 and 4096 characters in character-steps per second, and the ratio to a plain
    numpy matmul doing the decoder's arithmetic (the experts' dense layers at the same batch), i.e. how
    close to this machine's matmul limit the whole step is; the int8 step beside it; and the float32 step with
    every character steered by a control policy (the model's joystick policy when it has one), i.e. what a
    policy adds.
A model directory without an int8 graph gets one made in a temporary folder (trainer/quantize.py).
Functions compared in one table are called in turn, so that a change of load on the machine hits them alike.
Usage: python benchmarks/runtime_step.py [--model DIR] [--threads N] [--providers cpu|cuda] [--sizes 1,64,...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

# numpy's BLAS reads its thread count once, at import: give it --threads like onnxruntime and torch.
_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
os.environ.setdefault("OPENBLAS_NUM_THREADS", _THREADS)
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime.controller import Controller  # noqa: E402
from runtime.model import PROVIDERS, load_model, onnx_session  # noqa: E402


def timed(fns: dict[str, Callable[[], object]], min_seconds: float = 0.5, min_rounds: int = 5) -> dict[str, float]:
    """Median seconds per call of each function, called in turn so that load changes hit them alike."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds * len(fns) or len(samples[next(iter(fns))]) < min_rounds:
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    return {name: float(np.median(v)) for name, v in samples.items()}


# A command per task for the "with control" column: the policy's cost does not depend on the values.
CONTROLS = {"joystick": {"direction": [0.0, 1.0], "speed": 1.2}, "target": {"target": [5.0, 5.0]},
            "path": {"path": [[0.0, 0.0], [0.0, 10.0], [10.0, 10.0]], "closed": True}}


def reference_decoder(decoder, latent: int):
    """The reference's per-sample weight blend, on the trained mixture decoder's own weights."""
    layers = [(w.permute(1, 0, 2).contiguous(), b) for w, b in zip(decoder.weights, decoder.biases)]

    def forward(z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        coeff = decoder.coefficients(z, condition)
        h = condition
        for i, (w, b) in enumerate(layers):
            x = torch.cat((z, h), dim=-1)
            blended_w = torch.einsum("be,eio->bio", coeff, w)   # one weight matrix per sample
            h = torch.bmm(x.unsqueeze(1), blended_w).squeeze(1) + coeff @ b
            if i < len(layers) - 1:
                h = torch.nn.functional.elu(h)
        return h

    return forward


def int8_model(model, scratch: Path, providers: str, threads: int):
    """The model stepping its int8 graph; made in scratch (a copy of the directory) when the model has none."""
    folder = model.path
    if "int8" not in (model.meta.get("precisions") or {}):
        from trainer.quantize import add_int8

        folder = scratch / "int8"
        folder.mkdir()
        (folder / "model.json").write_text(json.dumps(model.meta), encoding="utf-8")
        for name in model.meta["files"]:
            (folder / name).symlink_to((model.path / name).resolve())
        add_int8(folder)
    return load_model(folder, providers=providers, threads=threads, precision="int8")


def decoder_session(model, threads: int):
    """The step graph cut down to its decoder (z, condition -> next_frame), in onnxruntime."""
    import onnx

    path = model.decoder_file
    graph = onnx.utils.Extractor(onnx.load(str(path))).extract_model(["z", "condition"], ["next_frame"])
    providers = "cuda" if PROVIDERS["cuda"] in model.providers else "cpu"
    return onnx_session(path, providers, threads, graph.SerializeToString())[0]


def main() -> int:
    """Run the benchmark and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model directory (default: the shipped default model)")
    ap.add_argument("--run", help="training run of that model, for the PyTorch baseline (default: rebuild "
                                  "the decoder from the ONNX weights is not possible, so a fresh one of the same shape)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--providers", default="cpu")
    ap.add_argument("--sizes", default="1,64,1024,4096")
    args = ap.parse_args()
    torch.set_num_threads(max(args.threads, 1))
    model = load_model(args.model, providers=args.providers, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="mvae-bench-") as scratch:
        return tables(args, model, int8_model(model, Path(scratch), args.providers, args.threads))


def tables(args: argparse.Namespace, model, int8) -> int:
    """Time the float32 and int8 steps against the reference and the matmul floor, and print the tables."""
    spec = model.meta["training"]["spec"]
    from trainer.models import ModelSpec, MotionVAE

    vae = MotionVAE(ModelSpec(**spec)).eval()
    if args.run:
        from trainer.checkpoint import load_run

        vae = load_run(args.run).model
    ref = reference_decoder(vae.decoder, spec["latent"])
    z1 = torch.randn(1, spec["latent"])
    c1 = torch.randn(1, spec["n_cond"] * spec["frame_size"])
    ctrl, ctrl8 = Controller(model, 1, seed=0), Controller(int8, 1, seed=0)
    decoder = decoder_session(model, args.threads)
    feed = {"z": z1.numpy(), "condition": c1.numpy()}
    weights = [w.detach().flatten(1).numpy() for w in vae.decoder.weights]
    rows = [np.random.rand(1, w.shape[0]).astype(np.float32) for w in weights]
    parts = {"reference": lambda: ref(z1, c1), "step": ctrl.step, "int8": ctrl8.step,
             "decoder": lambda: decoder.run(None, feed),
             "matmul": lambda: [x @ w for x, w in zip(rows, weights)]}
    with torch.no_grad():
        # Warm: each alone, back to back, its weights staying in cache. Cold: called in turn, so each finds
        # the cache full of the other's weights, as a step does in a game frame with other work around it.
        warm = {name: timed({name: fn}, min_seconds=2.0)[name] for name, fn in parts.items()}
        cold = timed({"reference": parts["reference"], "step": ctrl.step, "int8": ctrl8.step}, min_seconds=2.0)
    task = "joystick" if "joystick" in model.policies else next(iter(sorted(model.policies)), None)
    control = {"task": task, **CONTROLS.get(task, {})} if task else None
    print(f"device: {model.providers[0]}, threads {args.threads}, load average {os.getloadavg()[0]:.2f}; model {model.name} "
          f"({spec['decoder']}, hidden {spec['hidden']}, {model.skeleton.n_joints} joints)")
    print("(a) one step, 1 character" + " " * 33 + f"{'warm ms':>10}{'cold ms':>10}")
    for label, name in (("PyTorch eager, per-sample weight blend (decoder only)", "reference"),
                        ("Controller.step, float32 (decoder + poses, onnxruntime)", "step"),
                        ("Controller.step, int8", "int8")):
        print(f"  {label:<56}{warm[name] * 1e3:10.3f}{cold[name] * 1e3:10.3f}")
    for label, name, target in (("float32", "step", 2.5), ("int8", "int8", 4.0)):
        print(f"  speed-up, {label}: warm {warm['reference'] / warm[name]:.2f}x, "
              f"cold {cold['reference'] / cold[name]:.2f}x (target >= {target:g}x)")
    for label, name in (("  of which the decoder alone (onnxruntime)", "decoder"),
                        ("  numpy matmul of the layers (the weight-read floor)", "matmul")):
        print(f"  {label:<56}{warm[name] * 1e3:10.3f}{'':>10}  (reference / this: "
              f"{warm['reference'] / warm[name]:.2f}x)")

    print("(b) throughput" + (f"; with control: every character on the {task} policy" if task else ""))
    print(f"  {'characters':>10}{'step ms':>10}{'char-steps/s':>14}{'numpy matmul ms':>17}{'step / matmul':>15}"
          f"{'int8 step ms':>14}{'int8 / float32':>16}" + (f"{'with control ms':>17}{'control adds ms':>17}" if task else ""))
    for n in (int(s) for s in args.sizes.split(",")):
        free, steered, free8 = Controller(model, n, seed=0), Controller(model, n, seed=0), Controller(int8, n, seed=0)
        xs = [np.random.rand(n, w.shape[0]).astype(np.float32) for w in weights]
        fns = {"step": free.step, "matmul": lambda: [x @ w for x, w in zip(xs, weights)], "int8": free8.step}
        if task:
            fns["control"] = lambda: steered.step(control=control)
        t = timed(fns, min_seconds=1.0)
        row = (f"  {n:>10}{t['step'] * 1e3:>10.3f}{n / t['step']:>14.0f}{t['matmul'] * 1e3:>17.3f}"
               f"{t['step'] / t['matmul']:>15.2f}{t['int8'] * 1e3:>14.3f}{t['int8'] / t['step']:>16.2f}")
        if task:
            row += f"{t['control'] * 1e3:>17.3f}{(t['control'] - t['step']) * 1e3:>17.3f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
