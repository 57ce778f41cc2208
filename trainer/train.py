"""The scheduled-sampling training loop of the Motion VAE (`python -m trainer.train`)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from runtime.atomic import atomic_write_text
from runtime.features import FeatureLayout
from runtime.cli import fail, parse, write_error
from runtime.preview import save_figure

from .checkpoint import (CHECKPOINT_NAME, FORMAT, VERSION, CheckpointError, read_checkpoint, remove_stale_temporaries,
                         save_checkpoint, settled_config)
from .config import CHOICES, ConfigError, TrainConfig, from_dict, load_config, parse_override, to_toml
from .data import (Frames, FramesError, Normaliser, RolloutSampler, clip_rows, load_frames, rollout_window,
                   training_clips)
from .models import KLSchedule, ModelSpec, MotionVAE, kl_divergence, reconstruction_loss
from .models.pose_losses import PoseLosses
from .runs import (ABORT_ENV, add_shortcuts, plot_loss_curves, resolve_device, rng_state, run_summary,
                   seed_everything, set_rng_state, write_history_csv)

RESUMABLE_CHANGES = ("device", "threads")  # settings a resumed run may change without altering results
START_FRAMES = 16                           # condition windows kept in the checkpoint for export/runtime
LOSS_KEYS = ("loss", "recon", "kl", "kl_weighted", "commit", "perplexity", "fk", "foot")


def phase(epoch: int, config: TrainConfig) -> str:
    """Scheduled-sampling phase of an epoch: teacher, ramping or student."""
    if epoch < config.teacher_epochs:
        return "teacher"
    return "ramping" if epoch < config.teacher_epochs + config.ramp_epochs else "student"


def student_probability(epoch: int, config: TrainConfig) -> float:
    """Probability that a rollout step feeds back the model's own output (0 teacher, 1 student).

    Ramping epoch k of R uses (k+1)/(R+1), so the ramp lies strictly between the two pure phases.
    """
    name = phase(epoch, config)
    if name == "teacher":
        return 0.0
    if name == "student":
        return 1.0
    return (epoch - config.teacher_epochs + 1) / (config.ramp_epochs + 1)


def learning_rate(epoch: int, config: TrainConfig) -> float:
    """Linear decay from lr at the first epoch to lr_end at the last."""
    if config.epochs == 1:
        return config.lr
    return config.lr + (config.lr_end - config.lr) * epoch / (config.epochs - 1)


def model_spec(config: TrainConfig, frame_size: int) -> ModelSpec:
    """The model shape a config asks for."""
    names = {f.name for f in dataclasses.fields(ModelSpec)} - {"frame_size"}
    return ModelSpec(frame_size=frame_size, **{n: getattr(config, n) for n in names})


def kl_schedule(config: TrainConfig) -> KLSchedule:
    """The KL weighting a config asks for."""
    return KLSchedule(config.kl_mode, config.kl_beta, config.kl_gamma, config.kl_capacity,
                      config.kl_capacity_steps)


def make_optimiser(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (CPU and CUDA): about 1.4x the training speed of the default on 2 cores."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def column_weights(config: TrainConfig, layout: FeatureLayout) -> torch.Tensor | None:
    """Per-feature weights of the reconstruction loss (None: all alike)."""
    if config.root_weight == 1.0:
        return None
    # The root's step and turn decide where a character goes: they are 3 of hundreds of columns, so an
    # unweighted loss leaves the latent to spend its capacity on the pose.
    columns = torch.ones(layout.size)
    columns[layout.slice("root")] = config.root_weight
    return columns


def future_weights(config: TrainConfig) -> torch.Tensor:
    """Per-future-frame reconstruction weights, summing to one."""
    w = torch.tensor(config.future_weights or [1.0] * config.n_future)
    return w / w.sum()


class RolloutTrainer:
    """One mini-batch of rollouts: an optimiser step per rollout step, no backprop across steps."""

    def __init__(self, model: nn.Module, optimiser: torch.optim.Optimizer, spec: ModelSpec,
                 kl: KLSchedule, weights: torch.Tensor, config: TrainConfig, pose: PoseLosses | None = None,
                 columns: torch.Tensor | None = None):
        self.model, self.optimiser, self.spec = model, optimiser, spec
        self.kl, self.weights, self.config, self.pose = kl, weights, config, pose
        self.columns = columns

    def _pose_terms(self, terms: dict, prediction: torch.Tensor, seen: torch.Tensor, window: torch.Tensor,
                    k: int) -> torch.Tensor:
        """Add the pose losses of the first predicted frame to terms; return their weighted sum."""
        pose, config, n_cond = self.pose, self.config, self.spec.n_cond
        raw = pose.raw(prediction[:, 0])
        extra = prediction.new_zeros(())
        if config.fk_weight > 0:
            terms["fk"] = pose.rotation_gap(raw)
            extra = extra + config.fk_weight * terms["fk"]
        if config.foot_weight > 0:
            terms["foot"] = pose.foot_slide(pose.raw(seen), raw, pose.raw(window[:, n_cond + k - 1]),
                                            pose.raw(window[:, n_cond + k]))
            extra = extra + config.foot_weight * terms["foot"]
        return extra

    @torch.no_grad()
    def _prior_frames(self, fed: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """fed with a prior_feedback share of its rows replaced by frames decoded from prior samples.

        A posterior sample has seen the true next frame, so a rollout fed only posterior frames never leaves
        the data the way a run-time rollout does; frames from the prior put the states the runtime will reach
        into training, where the decoder (and a learned prior) learn to come back from them.
        """
        model = self.model.module if hasattr(self.model, "module") else self.model
        flat = condition.flatten(1)
        z = model.sample_prior(len(flat), condition=flat if model.prior is not None else None)
        drawn = model.decoder(z.to(flat.device), flat)[:, : fed.shape[-1]]
        pick = torch.rand(len(fed), 1, device=fed.device) < self.config.prior_feedback
        return torch.where(pick, drawn, fed)

    def run(self, window: torch.Tensor, student: torch.Tensor, step: int) -> dict[str, float]:
        """Train on windows (B, rollout_window(...), F); student[k] feeds back step k's output.

        Returns the loss terms averaged over the rollout steps.
        """
        n_cond = self.spec.n_cond
        offsets = torch.arange(self.spec.n_future, device=window.device) * self.config.future_stride
        weights = self.weights.to(window.device)
        condition = window[:, :n_cond]
        totals: dict[str, torch.Tensor] = {}
        steps = len(student)
        for k in range(steps):
            target = window[:, n_cond + k + offsets]
            seen = condition
            if self.config.condition_noise > 0:
                # The decoder must bring a slightly-off pose back towards the data, as it must at run time.
                seen = condition + self.config.condition_noise * torch.randn_like(condition)
            out = self.model(target.flatten(1), seen.flatten(1))
            prediction = out["prediction"].view_as(target)
            terms = {"recon": reconstruction_loss(prediction, target, weights, self.columns)}
            if "mu" in out:
                terms["kl"] = kl_divergence(out["mu"], out["logvar"], out.get("prior_mu"), out.get("prior_logvar"))
                terms["kl_weighted"] = self.kl.loss(terms["kl"], self.spec.latent, step + k)
                loss = terms["recon"] + terms["kl_weighted"]
            else:
                terms["commit"] = out["commit"]
                terms["perplexity"] = out["perplexity"]
                loss = terms["recon"] + self.config.commit_weight * out["commit"]
            if self.pose is not None:
                loss = loss + self._pose_terms(terms, prediction, condition[:, -1], window, k)
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
            terms["loss"] = loss
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + value.detach()
            if k + 1 < steps:
                # One coin per step for the whole batch: the next condition ends with either the
                # model's own (detached) prediction or the ground-truth frame.
                fed = prediction[:, 0].detach() if bool(student[k]) else window[:, n_cond + k]
                if bool(student[k]) and self.config.prior_feedback > 0:
                    fed = self._prior_frames(fed, condition)
                condition = torch.cat((condition[:, 1:], fed.unsqueeze(1)), dim=1)
        return {key: float(value) / steps for key, value in totals.items()}


@dataclass
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        """Whether a process group is initialised."""
        return dist.is_available() and dist.is_initialized()

    @property
    def main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0


def setup_distributed(config: TrainConfig) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE is set; otherwise a single process."""
    device = resolve_device(config.device)
    if "WORLD_SIZE" not in os.environ:
        return Distributed(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, device)


class RunLog:
    """Progress bar, TensorBoard scalars, the CSV of epoch means and the loss-curve PNG of a run."""

    def __init__(self, out: Path, total_batches: int, done_batches: int, step: int, enabled: bool,
                 progress: bool):
        self.out, self.enabled = out, enabled
        self.bar = tqdm(total=total_batches, initial=done_batches, disable=not (enabled and progress),
                        unit="batch", dynamic_ncols=True)
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("note: tensorboard is not installed; skipping TensorBoard logs", file=sys.stderr)
            else:
                # purge_step drops events a killed run logged past its last checkpoint.
                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step or None)

    def batch(self, losses: dict[str, float], step: int, epoch_label: str) -> None:
        """Record one mini-batch."""
        if not self.enabled:
            return
        self.bar.set_description(epoch_label, refresh=False)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items() if k in ("loss", "recon", "kl")},
                             refresh=False)
        self.bar.update(1)
        if self.writer is not None:
            for key, value in losses.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def epoch(self, history: list[dict]) -> None:
        """Rewrite the CSV from the whole history (so it always matches the last checkpoint)."""
        if not self.enabled:
            return
        write_history_csv(history, self.out / "log.csv")
        if self.writer is not None:
            row = history[-1]
            for key in ("lr", "student_probability"):
                self.writer.add_scalar(f"schedule/{key}", row[key], row["step"])
            self.writer.flush()

    def close(self, history: list[dict]) -> None:
        """Close the bar and writer and draw the loss curves."""
        self.bar.close()
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.close()
        if history:
            plot_losses(history, self.out / "losses.png")


def plot_losses(history: list[dict], path: Path) -> None:
    """Loss curves per epoch (log scale), phase boundaries shaded, written as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    plot_loss_curves(ax, [row["epoch"] for row in history], history, ("loss", "recon", "kl", "commit"))
    for name, color in (("teacher", "tab:green"), ("ramping", "tab:orange")):
        inside = [row["epoch"] for row in history if row["phase"] == name]
        if inside:
            ax.axvspan(min(inside) - 0.5, max(inside) + 0.5, color=color, alpha=0.1, label=name)
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def _start_frames(frames: Frames, clips: np.ndarray, n_cond: int) -> torch.Tensor:
    """The first condition window of up to START_FRAMES training clips, raw units (k, n_cond, F)."""
    firsts = [s for s, e in zip(frames.clip_starts[clips], frames.end_indices[clips]) if e - s + 1 >= n_cond]
    rows = np.asarray(firsts[:START_FRAMES])[:, None] + np.arange(n_cond)
    return torch.from_numpy(frames.data[rows].copy())


def train(config: TrainConfig | None, frames_path: str | Path, out: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Train (or with resume=True continue) a Motion VAE on frames_path into the run folder out.

    When resuming, config may be None (the checkpoint's is used); otherwise only device and threads
    may differ from the checkpoint's. Returns the run folder.
    """
    out = Path(out)
    frames = load_frames(frames_path)
    state = read_checkpoint(out / CHECKPOINT_NAME) if resume else None
    config = settled_config(out, frames, state, config, from_dict, RESUMABLE_CHANGES)
    world = setup_distributed(config)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, frames, out, state, world, progress)
    finally:
        torch.set_num_threads(threads)
        if world.active:
            dist.destroy_process_group()


def _train(config: TrainConfig, frames: Frames, out: Path, state: dict | None, world: Distributed,
           progress: bool) -> Path:
    """The loop behind train(), once config, data and process group are settled."""
    layout, device = frames.layout, world.device
    clips = training_clips(frames.clip_names, config.holdout_every)
    if len(clips) == 0:
        raise FramesError(f"{frames.path}: holding out every {config.holdout_every} clip(s) leaves none to train on")
    sampler = RolloutSampler(frames, clips, rollout_window(config.n_cond, config.rollout, config.n_future,
                                                       config.future_stride),
                             config.batch_size, world.rank, world.world)
    sampler.balance_speed(frames, config.balance_speed)
    normaliser = (Normaliser.from_state(state["normaliser"]) if state else
                  Normaliser.fit(frames.data[clip_rows(frames, clips)], config.normalisation))
    data = torch.from_numpy(normaliser.normalise(frames.data)).to(device)

    seed_everything(config.seed)  # the same initial weights on every rank
    spec = model_spec(config, layout.size)
    model = MotionVAE(spec).to(device)
    optimiser = make_optimiser(model, config.lr)
    sample_rng = torch.Generator().manual_seed(config.seed)  # batches and coins, shared by all ranks
    epoch0, step, history = 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        sample_rng.set_state(state["sample_rng"])
        epoch0, step, history = state["epoch"], state["step"], list(state["history"])
        if len(state["rng"]) == world.world:
            set_rng_state(state["rng"][world.rank])
        else:
            # Resumed on another number of ranks: no saved state fits, so reseed per rank and epoch
            # (the run continues soundly but no longer replays the uninterrupted one exactly).
            seed_everything(config.seed + 7919 * (world.rank + 1) + epoch0)
    elif world.world > 1:
        seed_everything(config.seed + world.rank)  # different sampling noise on each rank
    net = model
    if world.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        if state is None:
            atomic_write_text(out / "config.toml", to_toml(config))
    batches = config.batches_per_epoch or len(sampler)
    log = RunLog(out, config.epochs * batches, epoch0 * batches, step, world.main, progress)
    if config.foot_weight > 0 and not layout.has("contacts"):
        raise ConfigError(f"foot_weight = {config.foot_weight}: {frames.path} has no foot contacts to plant "
                          "(prepare it with contacts, or set foot_weight = 0)")
    pose = (PoseLosses(layout, frames.skeleton, normaliser.shift, normaliser.scale, device)
            if config.fk_weight > 0 or config.foot_weight > 0 else None)
    columns = column_weights(config, layout)
    trainer = RolloutTrainer(net, optimiser, spec, kl_schedule(config), future_weights(config), config, pose,
                             None if columns is None else columns.to(device))
    abort_after = int(os.environ.get(ABORT_ENV, "0"))
    steps_here = 0
    for epoch in range(epoch0, config.epochs):
        lr, p_student = learning_rate(epoch, config), student_probability(epoch, config)
        for group in optimiser.param_groups:
            group["lr"] = lr
        label = f"epoch {epoch + 1}/{config.epochs} {phase(epoch, config)}"
        sums: dict[str, float] = {}
        started, n = time.perf_counter(), 0
        model.train()
        for rows in sampler.epoch(sample_rng, config.batches_per_epoch):
            coins = torch.rand(config.rollout, generator=sample_rng) < p_student
            losses = trainer.run(data[rows.to(device)], coins, step)
            step += config.rollout
            steps_here += config.rollout
            n += 1
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            log.batch(losses, step, label)
            if abort_after and steps_here >= abort_after:
                os._exit(3)
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "phase": phase(epoch, config), "student_probability": p_student,
                        "lr": lr, "step": step, **{k: sums[k] / n for k in LOSS_KEYS if k in sums},
                        "kl_capacity": trainer.kl.capacity(step), "seconds": round(seconds, 3),
                        "samples_per_s": round(n * config.rollout * config.batch_size * world.world / seconds, 1)})
        rng = [rng_state()]
        if world.active and world.world > 1:
            rng = [None] * world.world
            dist.all_gather_object(rng, rng_state())
        if world.main:
            save_checkpoint({
                "format": FORMAT, "version": VERSION, "epoch": epoch + 1, "step": step,
                "model": model.state_dict(), "optimizer": optimiser.state_dict(),
                "sample_rng": sample_rng.get_state(), "rng": rng, "spec": spec.state(),
                "config": dataclasses.asdict(config), "normaliser": normaliser.state(),
                "layout": layout.to_json(), "skeleton": frames.skeleton.to_json(), "fps": frames.fps,
                "history": history, "start_frames": _start_frames(frames, clips, config.n_cond),
                "data": {"path": str(frames.path), "frames": len(frames.data), "clips": frames.n_clips,
                         "holdout_every": config.holdout_every, "source": json.dumps(frames.source)},
            }, out / CHECKPOINT_NAME)
        log.epoch(history)
    log.close(history)
    return out


EXAMPLES = """examples:
  python -m trainer.train frames.npz --out runs/walk
  python -m trainer.train frames.npz --out runs/walk --config configs/mocap.toml --device cuda
  python -m trainer.train frames.npz --out runs/quick --epochs 14 --batches-per-epoch 50
  python -m trainer.train frames.npz --out runs/vq --set quantize=true --set vq_codes=256
  python -m trainer.train frames.npz --out runs/walk --resume          # continue after a crash
  torchrun --nproc_per_node=4 -m trainer.train frames.npz --out runs/big --device cuda

Config files are TOML with the keys of trainer.config.TrainConfig, flat or under [model], [data],
[train] and [loss]. Precedence: defaults < --config < --epochs < --set < the options below.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.train", description="Train a Motion VAE on a frames.npz.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("frames", help="frames.npz written by python -m trainer.prepare")
    parser.add_argument("--out", required=True, help="run folder (checkpoint, log.csv, losses.png, tensorboard/)")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (value in TOML syntax); repeatable")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    options = parser.add_argument_group("common settings (shortcuts for --set)",
                                        "Defaults are trainer.config.TrainConfig's; a resumed run keeps its own.")
    options.add_argument("--epochs", type=int, help="total epochs, split 20:20:100 over teacher/ramping/student "
                         f"(default {TrainConfig().epochs})")
    add_shortcuts(options, TrainConfig(), {
        "teacher_epochs": "epochs of teacher forcing: every step is fed the data's frame",
        "ramp_epochs": "epochs whose chance of feeding a step the model's own output rises from 0 to 1",
        "student_epochs": "epochs feeding every step the model's own output",
        "batches_per_epoch": "mini-batches per epoch; 0: one pass over a shuffle of every valid rollout start",
        "batch_size": "rollouts per mini-batch",
        "rollout": "steps per rollout, an optimiser step each",
        "lr": "Adam learning rate of the first epoch, decaying linearly to lr_end by the last",
        "seed": "random seed of the weights, batches and sampling",
        "device": "torch device: cpu, cuda or cuda:N",
        "threads": "torch intra-op threads; 0: torch's default",
        "decoder": "mixture: the paper's mixture of experts; single: one network",
        "normalisation": "per-feature scaling of the frames",
        "holdout_every": "hold out every k-th clip (with its mirror) for evaluation; 0: train on every clip",
        "kl_mode": "beta: kl_beta * KL; capacity: kl_gamma * |KL - C|, C rising to kl_capacity",
        "n_cond": "condition frames the decoder sees",
        "n_future": "future frames predicted at each step",
        "future_stride": "frames between predicted future frames (offsets 1, 1+s, ...)",
    }, CHOICES)
    return parser


def config_from_args(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """Apply --config, then --epochs, then --set and the shortcut options (checked together) onto base."""
    config = load_config(args.config, base) if args.config else base
    if args.epochs is not None:
        config = config.with_epochs(args.epochs)
    overrides = dict(parse_override(text) for text in args.set)
    overrides.update({f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                      if getattr(args, f.name, None) is not None})
    return from_dict(overrides, config)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; bad input gives one line on stderr and exit code 2."""
    args = parse(build_parser(), argv)
    try:
        base = from_dict(read_checkpoint(Path(args.out) / CHECKPOINT_NAME)["config"]) if args.resume else TrainConfig()
        config = config_from_args(args, base)
        out = train(config, args.frames, args.out, resume=args.resume, progress=not args.no_progress)
    except (FramesError, ConfigError, CheckpointError) as exc:
        return fail(exc)
    except OSError as exc:
        return fail(write_error(exc, args.out))
    if "RANK" not in os.environ or os.environ["RANK"] == "0":
        print(run_summary(out, read_checkpoint(out / CHECKPOINT_NAME)["history"], ("loss", "recon", "kl", "commit")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
