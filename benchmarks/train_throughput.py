"""Training throughput: the output-blend mixture decoder against per-sample weight blending.

Both models share the same weights, data, batches and training loop (trainer.train.RolloutTrainer);
only the decoder's formulation differs. The reference blends the expert weights for every sample,
W_b = sum_e c_be W_e, then runs a batched matmul; ours blends expert outputs with one dense matmul
per layer. Timed side by side in one run, interleaved mini-batch by mini-batch.

    python benchmarks/train_throughput.py [--batches 16] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models import KLSchedule, MixtureDecoder, ModelSpec, MotionVAE
from trainer.config import TrainConfig
from trainer.train import RolloutTrainer, make_optimiser

REFERENCE_FRAME = 267  # the reference's feature frame: 22 joints, 30 fps


class WeightBlendDecoder(nn.Module):
    """The reference formulation of the same mixture decoder: per-sample blended weights, then bmm."""

    def __init__(self, source: MixtureDecoder):
        super().__init__()
        layers = source.expert_parameters()
        self.weights = nn.ParameterList(nn.Parameter(w.detach().clone()) for w, _ in layers)  # (E, in, out)
        self.biases = nn.ParameterList(nn.Parameter(b.detach().clone()) for _, b in layers)    # (E, out)
        self.gate = source.gate

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        coeff = torch.softmax(self.gate(torch.cat((z, condition), dim=-1)), dim=-1)
        h = condition
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            experts, fan_in, fan_out = weight.shape
            x = torch.cat((z, h), dim=-1).unsqueeze(1)                                   # (B, 1, in)
            blended = (coeff @ weight.reshape(experts, -1)).view(-1, fan_in, fan_out)     # (B, in, out)
            h = torch.baddbmm((coeff @ bias).unsqueeze(1), x, blended).squeeze(1)
            if i < len(self.weights) - 1:
                h = F.elu(h)
        return h


def make_trainer(model: MotionVAE) -> RolloutTrainer:
    """The training loop's rollout runner with the paper's settings."""
    return RolloutTrainer(model, make_optimiser(model, 1e-4), model.spec, KLSchedule(), torch.ones(1), TrainConfig())


def rate(trainer: RolloutTrainer, window: torch.Tensor, student: torch.Tensor) -> float:
    """Training samples (batch x rollout steps) per second on one mini-batch."""
    started = time.perf_counter()
    trainer.run(window, student, step=0)
    return window.shape[0] * len(student) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=16, help="timed mini-batches per model (default 16)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rollout", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spec = ModelSpec(frame_size=REFERENCE_FRAME)  # latent 32, hidden 256, 6 experts, gate 64
    ours = MotionVAE(spec)
    reference = MotionVAE(spec)
    reference.load_state_dict(ours.state_dict())
    reference.decoder = WeightBlendDecoder(ours.decoder)
    reference.decoder.gate.load_state_dict(ours.decoder.gate.state_dict())

    z, c = torch.randn(args.batch_size, spec.latent), torch.randn(args.batch_size, spec.cond_size)
    with torch.no_grad():
        gap = (ours.decoder(z, c) - reference.decoder(z, c)).abs().max().item()

    # Smooth random frames, one long clip; every mini-batch is a window of n_cond + rollout frames.
    steps = torch.arange(4000, dtype=torch.float32)[:, None]
    data = torch.sin(steps * torch.rand(REFERENCE_FRAME) * 0.2 + torch.rand(REFERENCE_FRAME) * 6)
    window = spec.n_cond + args.rollout
    starts = torch.randint(len(data) - window, (args.batches, args.batch_size))
    windows = [data[s[:, None] + torch.arange(window)] for s in starts]
    student = torch.ones(args.rollout, dtype=torch.bool)  # the student phase: outputs fed back

    trainers = {"output blend (ours)": make_trainer(ours), "weight blend (reference)": make_trainer(reference)}
    for trainer in trainers.values():
        rate(trainer, windows[0], student)  # warm-up: allocator, kernels
    # Interleaved mini-batch by mini-batch, so both formulations see the same machine load.
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for window in windows:
        for name, trainer in trainers.items():
            rates[name].append(rate(trainer, window, student))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch_size}, rollout "
          f"{args.rollout}, frame {REFERENCE_FRAME}, decoder {sum(p.numel() for p in ours.decoder.parameters()):,} "
          f"parameters; max output difference {gap:.1e}")
    for name, values in rates.items():
        print(f"  {name:<26} {statistics.median(values):8.0f} samples/s  (median of {len(values)} mini-batches, "
              f"range {min(values):.0f}-{max(values):.0f})")
    ratio = statistics.median(rates["output blend (ours)"]) / statistics.median(rates["weight blend (reference)"])
    print(f"speed-up: {ratio:.2f}x (target >= 2.5x)")


if __name__ == "__main__":
    main()
