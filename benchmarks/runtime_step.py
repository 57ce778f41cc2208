"""Runtime step speed, side by side in one run on this machine.

(a) One Controller.step for 1 character (onnxruntime, the exported step graph: decoder + pose decoding)
    against the same decoder in PyTorch eager with per-sample weight blending (the reference formulation).
(b) Throughput at 1, 64, 1024 and 4096 characters in character-steps per second, and the ratio to a plain
    numpy matmul doing the decoder's arithmetic (the experts' dense layers at the same batch), i.e. how
    close to this machine's matmul limit the whole step is.
Usage: python benchmarks/runtime_step.py [--model DIR] [--threads N] [--providers cpu|cuda]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from runtime.controller import Controller
from runtime.model import load_model


def timed(fn, min_seconds: float = 0.5, min_calls: int = 5) -> float:
    """Median seconds per call over repeated batches of calls."""
    fn()
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(samples) < min_calls:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return float(np.median(samples))


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
    spec = model.meta["training"]["spec"]
    from trainer.models import ModelSpec, MotionVAE

    vae = MotionVAE(ModelSpec(**spec)).eval()
    if args.run:
        from trainer.checkpoint import load_run

        vae = load_run(args.run).model
    ref = reference_decoder(vae.decoder, spec["latent"])
    z1 = torch.randn(1, spec["latent"])
    c1 = torch.randn(1, spec["n_cond"] * spec["frame_size"])
    with torch.no_grad():
        t_ref = timed(lambda: ref(z1, c1))
    ctrl = Controller(model, 1, seed=0)
    t_step = timed(lambda: ctrl.step())
    print(f"device: {model.providers[0]}, threads {args.threads}; model {model.name} "
          f"({spec['decoder']}, hidden {spec['hidden']}, {model.skeleton.n_joints} joints)")
    print("(a) one step, 1 character")
    print(f"  {'PyTorch eager, per-sample weight blend (decoder only)':<58}{t_ref * 1e3:8.3f} ms")
    print(f"  {'Controller.step (decoder + poses, onnxruntime)':<58}{t_step * 1e3:8.3f} ms")
    print(f"  speed-up {t_ref / t_step:.2f}x (target >= 2.5x)")

    print("(b) throughput")
    print(f"  {'characters':>10}{'step ms':>10}{'char-steps/s':>14}{'numpy matmul ms':>17}{'step / matmul':>15}")
    dec = vae.decoder
    weights = [w.detach().flatten(1).numpy() for w in dec.weights]
    for n in (int(s) for s in args.sizes.split(",")):
        ctrl = Controller(model, n, seed=0)
        t = timed(lambda: ctrl.step(), min_seconds=1.0)
        xs = [np.random.rand(n, w.shape[0]).astype(np.float32) for w in weights]
        t_mm = timed(lambda: [x @ w for x, w in zip(xs, weights)], min_seconds=1.0)
        print(f"  {n:>10}{t * 1e3:>10.3f}{n / t:>14.0f}{t_mm * 1e3:>17.3f}{t / t_mm:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
