"""Train a motion tokenizer (VQ-VAE over clips) on a frames.npz (`python -m trainer.train_tokenizer`).

The recipe is T2M-GPT's (../shared/NOTES.md section 2): 64-frame windows that stay inside one clip,
SmoothL1 reconstruction + 0.5 x SmoothL1 on the joint-position columns + 0.02 x commitment, AdamW 2e-4
with a warm-up and one step-down, batch 256. Every log_every steps the run writes a checkpoint
(atomically), a row of log.csv and losses.png; --resume continues a run exactly where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from runtime.atomic import atomic_write_text
from runtime.cli import fail, parse, write_error
from runtime.features import FeatureLayout
from runtime.preview import save_figure
from runtime.skeleton import Skeleton

from .checkpoint import (CHECKPOINT_NAME, CheckpointError, checkpoint_path, read_checkpoint, remove_stale_temporaries,
                         save_checkpoint, settled_config)
from .config import CHOICES, ConfigError, flatten_sections, parse_override, read_toml
from .data import (Frames, FramesError, Normaliser, RolloutSampler, clip_rows, heldout_clips, load_frames,
                   parse_layout, parse_skeleton, training_clips)
from .models import MotionTokenizer, TokenizerSpec
from .models.tokenizer import QUANTIZERS
from .runs import (ABORT_ENV, add_shortcuts, plot_loss_curves, resolve_device, rng_state, run_summary,
                   seed_everything, set_rng_state, write_history_csv)

FORMAT = "motion-tokenizer-checkpoint"
VERSION = 1
RESUMABLE_CHANGES = ("device", "threads", "steps")  # settings a resumed run may change without altering results
TOKENIZER_CHOICES = {"quantizer": QUANTIZERS, "normalisation": CHOICES["normalisation"]}


@dataclass
class TokenizerConfig:
    """Everything that decides a tokenizer run (defaults: the T2M-GPT recipe)."""

    # model
    width: int = 512
    codes: int = 512
    code_dim: int = 512
    levels: int = 2                   # x2 downsamplings: 2**levels frames per token
    dilations: list[int] = field(default_factory=lambda: [9, 3, 1])
    quantizer: str = "ema_reset"      # ema_reset | straight_through
    decay: float = 0.99
    reset_threshold: float = 1.0
    # data
    window: int = 64
    normalisation: str = "zscore"     # zscore | minmax | none
    holdout_every: int = 0            # hold out every k-th source clip with its mirror (0: none)
    # loop
    batch_size: int = 256
    steps: int = 300_000
    lr: float = 2e-4
    warmup_steps: int = 1000
    lr_milestones: list[int] = field(default_factory=lambda: [200_000])
    lr_gamma: float = 0.05
    weight_decay: float = 0.0
    log_every: int = 1000             # steps between log rows and checkpoints
    seed: int = 0
    device: str = "cpu"
    threads: int = 0                  # torch intra-op threads (0: torch's default)
    # losses
    position_weight: float = 0.5
    commit_weight: float = 0.02

    def spec(self, frame_size: int) -> TokenizerSpec:
        """The network shape this config asks for."""
        return TokenizerSpec(frame_size, self.width, self.codes, self.code_dim, self.levels, tuple(self.dilations),
                             self.quantizer, self.decay, self.reset_threshold)

    def validate(self) -> "TokenizerConfig":
        """Check values; raise ConfigError naming the first bad one."""
        for key, allowed in TOKENIZER_CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} = {getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        for key in ("width", "codes", "code_dim", "levels", "window", "batch_size", "steps", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} = {getattr(self, key)}: must be at least 1")
        for key in ("holdout_every", "warmup_steps", "threads", "weight_decay", "position_weight", "commit_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} = {getattr(self, key)}: must not be negative")
        if not self.dilations or min(self.dilations) < 1:
            raise ConfigError("dilations must be a non-empty list of positive integers")
        if self.window % 2 ** self.levels:
            raise ConfigError(f"window = {self.window}: must be a multiple of the {2 ** self.levels} frames per token")
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"decay = {self.decay}: must lie in (0, 1)")
        if self.lr <= 0 or not 0 < self.lr_gamma <= 1:
            raise ConfigError("lr must be positive and lr_gamma in (0, 1]")
        return self


FIELDS = {f.name: f for f in dataclasses.fields(TokenizerConfig)}


def _coerce(key: str, value: Any) -> Any:
    """Check one value against the field's type (ints are accepted for floats)."""
    if key not in FIELDS:
        raise ConfigError(f"unknown setting {key!r}")
    default = getattr(TokenizerConfig(), key)
    if isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key} = {value!r}: expected a {type(default).__name__}")
    return value


def config_from_dict(values: dict[str, Any], base: TokenizerConfig | None = None) -> TokenizerConfig:
    """A config from flat or sectioned (model/data/train/loss tables) key-value pairs."""
    changes = {key: _coerce(key, value) for key, value in flatten_sections(values).items()}
    return dataclasses.replace(base or TokenizerConfig(), **changes).validate()


def config_to_toml(config: TokenizerConfig) -> str:
    """The config as flat TOML, readable back with config_from_dict(tomllib.loads(...))."""
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in dataclasses.asdict(config).items())


def learning_rate(step: int, config: TokenizerConfig) -> float:
    """Linear warm-up over warmup_steps, then lr, times lr_gamma at each milestone passed."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    return config.lr * warm * config.lr_gamma ** sum(step >= m for m in config.lr_milestones)


def window_sampler(frames: Frames, clips: np.ndarray, config: TokenizerConfig) -> RolloutSampler:
    """Batches of `window`-frame index windows that never cross a clip boundary."""
    return RolloutSampler(frames, clips, config.window, config.batch_size)


def tokenizer_loss(out: dict[str, torch.Tensor], target: torch.Tensor, positions: slice,
                   config: TokenizerConfig) -> dict[str, torch.Tensor]:
    """The loss terms of one batch: recon, position, commit (and codebook for straight-through), total."""
    recon = out["recon"]
    terms = {"recon": F.smooth_l1_loss(recon, target),
             "position": F.smooth_l1_loss(recon[..., positions], target[..., positions]),
             "commit": out["commit"]}
    total = terms["recon"] + config.position_weight * terms["position"] + config.commit_weight * terms["commit"]
    if "codebook" in out:
        terms["codebook"] = out["codebook"]
        total = total + out["codebook"]
    terms["loss"] = total
    return terms


def pad_to_tokens(frames: np.ndarray, frames_per_token: int) -> np.ndarray:
    """Repeat the last frame until the length is a multiple of frames_per_token."""
    extra = -len(frames) % frames_per_token
    return np.concatenate([frames, np.repeat(frames[-1:], extra, axis=0)]) if extra else frames


@torch.no_grad()
def reconstruct_clips(model: MotionTokenizer, clips: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """Encode -> decode whole normalised clips (each padded, then trimmed back); the model stays as it was."""
    was_training = model.training
    model.eval()
    out = []
    for clip in clips:
        x = torch.from_numpy(pad_to_tokens(clip, model.spec.frames_per_token)).to(device)[None]
        out.append(model.decode(model.encode(x))[0, :len(clip)].cpu().numpy())
    model.train(was_training)
    return out


def position_error_mm(a: np.ndarray, b: np.ndarray, layout: FeatureLayout) -> np.ndarray:
    """Per-frame mean joint distance (mm) between the character-frame positions of raw frames a and b (T, F)."""
    cols = layout.slice("positions")
    diff = (a[:, cols] - b[:, cols]).reshape(len(a), layout.n_joints, 3)
    return 1000.0 * np.linalg.norm(diff, axis=-1).mean(axis=-1)


@dataclass
class TokenizerRun:
    """A trained tokenizer with everything needed to evaluate or export it."""

    path: Path
    model: MotionTokenizer   # eval mode; works in normalised units
    spec: TokenizerSpec
    normaliser: Normaliser
    layout: FeatureLayout
    skeleton: Skeleton
    fps: float
    config: TokenizerConfig
    step: int
    history: list[dict]
    data: dict               # training data summary, held-out clip names included


def read_tokenizer_checkpoint(path: str | Path) -> dict:
    """Load a tokenizer checkpoint (tensors on the CPU); CheckpointError when missing or foreign."""
    return read_checkpoint(path, FORMAT, VERSION,
                           "not a tokenizer checkpoint (train one with python -m trainer.train_tokenizer)")


def load_tokenizer_run(path: str | Path, device: str | torch.device = "cpu") -> TokenizerRun:
    """A run folder or checkpoint file -> an eval-mode tokenizer with its normaliser, layout and skeleton."""
    file = checkpoint_path(path)
    state = read_tokenizer_checkpoint(file)
    try:
        spec = TokenizerSpec.from_state(state["spec"])
        model = MotionTokenizer(spec)
        model.load_state_dict(state["model"])
        return TokenizerRun(file, model.to(device).eval(), spec, Normaliser.from_state(state["normaliser"]),
                            parse_layout(state["layout"], f"{file}: layout"),
                            parse_skeleton(state["skeleton"], f"{file}: skeleton"), float(state["fps"]),
                            config_from_dict(state["config"]), int(state["step"]), list(state["history"]),
                            dict(state["data"]))
    except (KeyError, TypeError, ValueError, RuntimeError, ConfigError, FramesError) as exc:
        raise CheckpointError(f"{file}: inconsistent checkpoint ({exc.__class__.__name__}: {exc})") from None


class TokenizerLog:
    """Progress bar, log.csv and losses.png of a run."""

    def __init__(self, out: Path, total: int, done: int, progress: bool):
        self.out = out
        self.bar = tqdm(total=total, initial=done, disable=not progress, unit="step", dynamic_ncols=True)

    def step(self, terms: dict[str, float]) -> None:
        """Record one optimiser step."""
        self.bar.set_postfix({k: f"{terms[k]:.4g}" for k in ("loss", "recon", "perplexity")}, refresh=False)
        self.bar.update(1)

    def rows(self, history: list[dict]) -> None:
        """Rewrite log.csv and losses.png from the whole history (so they always match the checkpoint)."""
        write_history_csv(history, self.out / "log.csv")
        plot_history(history, self.out / "losses.png")

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()


def plot_history(history: list[dict], path: Path) -> None:
    """Loss curves (log scale) and code usage against optimiser steps, written as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_loss_curves(ax, steps, history, ("loss", "recon", "position", "commit", "codebook", "heldout_recon"))
    ax.set_xlabel("step")
    ax.legend()
    ax2.plot(steps, [row["usage"] * 100 for row in history], label="codes used in the interval (%)")
    ax2.plot(steps, [100 * row["perplexity"] / row["codes"] for row in history], label="perplexity / codes (%)")
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 105)
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def train_tokenizer(config: TokenizerConfig | None, frames_path: str | Path, out: str | Path, resume: bool = False,
                    progress: bool = True) -> Path:
    """Train (or with resume=True continue) a tokenizer on frames_path into the run folder out.

    When resuming, config may be None (the checkpoint's is used); otherwise only device, threads and
    steps may differ from the checkpoint's. Returns the run folder.
    """
    out = Path(out)
    frames = load_frames(frames_path)
    state = read_tokenizer_checkpoint(out) if resume else None
    config = settled_config(out, frames, state, config, config_from_dict, RESUMABLE_CHANGES)
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, frames, out, state, device, progress)
    finally:
        torch.set_num_threads(threads)


def _train(config: TokenizerConfig, frames: Frames, out: Path, state: dict | None, device: torch.device,
           progress: bool) -> Path:
    """The loop behind train_tokenizer(), once config and data are settled."""
    layout = frames.layout
    clips, held = training_clips(frames.clip_names, config.holdout_every), heldout_clips(frames.clip_names,
                                                                                       config.holdout_every)
    if len(clips) == 0:
        raise FramesError(f"{frames.path}: holding out every {config.holdout_every} clip(s) leaves none to train on")
    sampler = window_sampler(frames, clips, config)
    normaliser = (Normaliser.from_state(state["normaliser"]) if state else
                  Normaliser.fit(frames.data[clip_rows(frames, clips)], config.normalisation))
    normalised = normaliser.normalise(frames.data).astype(np.float32)
    data = torch.from_numpy(normalised).to(device)
    starts, ends = frames.clip_starts, frames.end_indices
    held_clips = [normalised[starts[c]:ends[c] + 1] for c in held
                  if ends[c] - starts[c] + 1 >= 2 ** config.levels]

    seed_everything(config.seed)
    spec = config.spec(layout.size)
    model = MotionTokenizer(spec).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99),
                                  weight_decay=config.weight_decay, fused=True)
    sample_rng = torch.Generator().manual_seed(config.seed)
    step, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        sample_rng.set_state(state["sample_rng"])
        step, history = int(state["step"]), list(state["history"])
        set_rng_state(state["rng"])
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    if state is None:
        atomic_write_text(out / "config.toml", config_to_toml(config))
    positions = layout.slice("positions")
    log = TokenizerLog(out, config.steps, step, progress)
    abort_after = int(os.environ.get(ABORT_ENV, "0"))
    steps_here = 0
    while step < config.steps:
        n = min(config.log_every - step % config.log_every, config.steps - step)
        sums: dict[str, float] = {}
        used = torch.zeros(spec.codes, dtype=torch.bool, device=device)
        started = time.perf_counter()
        for rows in sampler.epoch(sample_rng, n):
            lr = learning_rate(step, config)
            for group in optimiser.param_groups:
                group["lr"] = lr
            batch = data[rows.to(device)]
            result = model(batch)
            terms = tokenizer_loss(result, batch, positions, config)
            optimiser.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimiser.step()
            used[result["codes"].flatten()] = True
            values = {k: float(v.detach()) for k, v in terms.items()} | {"perplexity": float(result["perplexity"])}
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            step += 1
            steps_here += 1
            log.step(values)
            if abort_after and steps_here >= abort_after:
                os._exit(3)  # the crash-test hook of trainer.train: die like a kill, no cleanup
        seconds = time.perf_counter() - started
        row = {"step": step, "lr": lr, **{k: v / n for k, v in sums.items()}, "codes": spec.codes,
               "usage": float(used.float().mean()), "seconds": round(seconds, 3),
               "windows_per_s": round(n * config.batch_size / seconds, 1)}
        if held_clips:
            recon = reconstruct_clips(model, held_clips, device)
            row["heldout_recon"] = float(np.mean([F.smooth_l1_loss(torch.from_numpy(r), torch.from_numpy(c)).item()
                                                  for r, c in zip(recon, held_clips)]))
            row["heldout_mpjpe_mm"] = float(np.concatenate([
                position_error_mm(normaliser.denormalise(r), normaliser.denormalise(c), layout)
                for r, c in zip(recon, held_clips)]).mean())
        history.append(row)
        save_checkpoint({
            "format": FORMAT, "version": VERSION, "step": step, "model": model.state_dict(),
            "optimizer": optimiser.state_dict(), "sample_rng": sample_rng.get_state(), "rng": rng_state(),
            "spec": spec.state(), "config": dataclasses.asdict(config), "normaliser": normaliser.state(),
            "layout": layout.to_json(), "skeleton": frames.skeleton.to_json(), "fps": frames.fps,
            "history": history,
            "data": {"path": str(frames.path), "frames": len(frames.data), "clips": frames.n_clips,
                     "holdout_every": config.holdout_every,
                     "heldout": [frames.clip_names[c] for c in held], "source": json.dumps(frames.source)},
        }, out / CHECKPOINT_NAME)
        log.rows(history)
    log.close()
    return out


EXAMPLES = """examples:
  python -m trainer.train_tokenizer frames.npz --out runs/tok                       # the T2M-GPT recipe
  python -m trainer.train_tokenizer frames.npz --out runs/tok-cpu --width 128 --codes 256 --code-dim 128 \\
      --batch-size 64 --steps 3000 --log-every 250 --holdout-every 10 --threads 2
  python -m trainer.train_tokenizer frames.npz --out runs/tok-st --quantizer straight_through
  python -m trainer.train_tokenizer frames.npz --out runs/tok --resume --steps 400000   # continue or extend
  python -m trainer.tokenizer_export runs/tok --out models/walk                       # add it to a model directory

Config files are TOML with the keys of trainer.train_tokenizer.TokenizerConfig, flat or under [model],
[data], [train] and [loss]. Precedence: defaults < --config < --set < the options below.
"""
SHORTCUTS = {
    "width": "channels of the encoder's and decoder's convolutions",
    "codes": "codebook size",
    "code_dim": "length of each code vector",
    "levels": "x2 downsamplings: a token stands for 2**levels frames",
    "quantizer": "ema_reset: T2M-GPT's moving-average codebook with dead-code resets; straight_through: a "
                 "codebook learned by gradient",
    "window": "frames per training window",
    "batch_size": "windows per mini-batch",
    "steps": "optimiser steps in all; a resumed run may raise it",
    "lr": "AdamW learning rate after the warm-up",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "log_every": "steps between log rows and checkpoints",
    "holdout_every": "hold out every k-th clip (with its mirror) for evaluation; 0: train on every clip",
    "normalisation": "per-feature scaling of the frames",
    "seed": "random seed of the weights and batches",
    "device": "torch device: cpu, cuda or cuda:N",
    "threads": "torch intra-op threads; 0: torch's default",
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.train_tokenizer", description=__doc__.split("\n")[0],
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("frames", help="frames.npz written by python -m trainer.prepare")
    parser.add_argument("--out", required=True, help="run folder (checkpoint.pt, config.toml, log.csv, losses.png)")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (value in TOML syntax); repeatable")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    options = parser.add_argument_group("common settings (shortcuts for --set)",
                                        "Defaults are TokenizerConfig's (the T2M-GPT recipe); a resumed run keeps "
                                        "its own.")
    add_shortcuts(options, TokenizerConfig(), SHORTCUTS, TOKENIZER_CHOICES)
    return parser


def config_from_args(args: argparse.Namespace, base: TokenizerConfig) -> TokenizerConfig:
    """Apply --config, then --set and the shortcut options onto base."""
    config = config_from_dict(read_toml(args.config), base) if args.config else base
    overrides = dict(parse_override(text) for text in args.set)
    overrides.update({key: getattr(args, key) for key in SHORTCUTS if getattr(args, key) is not None})
    return config_from_dict(overrides, config)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; bad input gives one line on stderr and exit code 2."""
    args = parse(build_parser(), argv)
    try:
        base = (config_from_dict(read_tokenizer_checkpoint(args.out)["config"]) if args.resume
                else TokenizerConfig())
        config = config_from_args(args, base)
        out = train_tokenizer(config, args.frames, args.out, resume=args.resume, progress=not args.no_progress)
    except (FramesError, ConfigError, CheckpointError) as exc:
        return fail(exc)
    except OSError as exc:
        return fail(write_error(exc, args.out))
    print(run_summary(out, read_tokenizer_checkpoint(out)["history"], ("loss", "recon", "perplexity", "usage")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
