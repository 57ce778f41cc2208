"""A short CPU training run on the Bandai locomotion set: do long rollouts stay stable, is the KL alive?

Prepares ../shared/mocap/bandai2_locomotion (mirrored, 30 fps) into a temporary folder, trains a
mixture Motion VAE briefly on the CPU (holding out 1 in 10 source clips), then runs random-latent
rollouts of 10,000 frames and prints the KL of every latent dimension. Everything derived from the
data (frames, checkpoint, logs) lives in a temporary folder and is deleted at the end: the data's
licence (CC BY-NC-ND 4.0) forbids keeping derived copies.

    python benchmarks/train_realdata.py [--batches-per-epoch 100] [--rollouts 16] [--frames 10000]

Exit code 0 when the rollouts are stable and the KL has not collapsed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainer.config import TrainConfig
from trainer.data import load_frames
from trainer.evaluate import ACTIVE_KL, evaluate, format_table, open_model
from trainer.prepare import find_bvh_files, prepare, save_frames
from trainer.train import train

BANDAI = Path(__file__).resolve().parents[2] / "shared" / "mocap" / "bandai2_locomotion"
MIN_ACTIVE_DIMS = 4  # fewer latent dimensions than this carrying information counts as a collapse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=BANDAI, help=f"BVH folder (default {BANDAI})")
    parser.add_argument("--phases", type=int, nargs=3, default=(2, 2, 6), metavar=("TEACHER", "RAMP", "STUDENT"),
                        help="epochs per scheduled-sampling phase (default 2 2 6)")
    parser.add_argument("--batches-per-epoch", type=int, default=100)
    parser.add_argument("--kl-capacity", type=float, default=8.0,
                        help="nats per frame the latent is asked to carry (capacity-mode KL, default 8)")
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.data.is_dir() or not any(args.data.glob("*.bvh")):
        print(f"skipped: {args.data} is not present")
        return 0
    torch.set_num_threads(args.threads)
    teacher, ramp, student = args.phases
    steps = (teacher + ramp + student) * args.batches_per_epoch * 8
    config = TrainConfig(teacher_epochs=teacher, ramp_epochs=ramp, student_epochs=student,
                         batches_per_epoch=args.batches_per_epoch, holdout_every=10, threads=args.threads,
                         kl_mode="capacity", kl_capacity=args.kl_capacity, kl_capacity_steps=steps // 2)
    with tempfile.TemporaryDirectory(prefix="mvae-bandai-") as tmp:
        started = time.perf_counter()
        prep = prepare(find_bvh_files([str(args.data)]), fps=30.0, mirror=True, progress=False)
        save_frames(Path(tmp) / "frames.npz", prep)
        print(f"prepared {prep.source['clips']} clips, {prep.source['frames']} frames, {prep.layout.size} features "
              f"in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        run = train(config, Path(tmp) / "frames.npz", Path(tmp) / "run")
        history = open_model(run).run.history
        print(f"trained {config.epochs} epochs x {args.batches_per_epoch} batches in "
              f"{time.perf_counter() - started:.0f} s; last epoch: recon {history[-1]['recon']:.4f}, "
              f"KL {history[-1]['kl']:.4f} nats/dim, {history[-1]['samples_per_s']:.0f} samples/s")
        started = time.perf_counter()
        result = evaluate(open_model(run), load_frames(Path(tmp) / "frames.npz"), holdout_every=10,
                          n_rollouts=args.rollouts, length=args.frames)
        print(f"evaluated in {time.perf_counter() - started:.0f} s\n")
    print(format_table(result))
    latent = result["latent"]
    print("\nKL per latent dimension (nats, held-out clips):")
    for start in range(0, len(latent["kl_per_dim"]), 8):
        print("  " + "  ".join(f"z{i:02d} {v:7.4f}" for i, v in enumerate(latent["kl_per_dim"][start:start + 8], start)))
    alive = latent["active_dims"] >= MIN_ACTIVE_DIMS
    print(f"\nrollouts: {args.rollouts} x {args.frames} frames, stable: {'yes' if result['stable'] else 'NO'} "
          f"(flags: {', '.join(k for k, v in result['flags'].items() if v) or 'none'})")
    print(f"KL collapse: {'no' if alive else 'YES'} ({latent['active_dims']} of {latent['latent']} dimensions "
          f"above {ACTIVE_KL} nats, total {latent['kl_total']:.3f} nats per frame)")
    return 0 if result["stable"] and alive else 1


if __name__ == "__main__":
    sys.exit(main())
