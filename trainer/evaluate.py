"""Quality metrics of a trained Motion VAE (`python -m trainer.evaluate`).

Measures next-frame reconstruction on held-out clips, how much the latent is used, and what long
random-latent rollouts do: NaNs, explosions, freezing, sinking, foot skating, and the Frechet distance
between their feature statistics and the data's. Rollout statistics are accumulated chunk by chunk,
so 10,000-frame rollouts never sit in memory whole.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.atomic import atomic_write_text
from runtime.cli import UsageError, check_memory, check_output_file, fail, parse, write_error
from runtime.features import FeatureLayout
from runtime.rotations import yaw_matrix

from .checkpoint import CheckpointError, LoadedRun, checkpoint_path, load_run
from .data import (Frames, FramesError, Normaliser, RolloutSampler, clip_rows, heldout_clips,
                   load_frames)
from .config import ConfigError
from .models import kl_per_dimension
from .runs import resolve_device

DEFAULT_HOLDOUT_EVERY = 10
ROLLOUT_FRAME_BYTES = 8192.0  # features and decoded poses a rollout keeps per frame (a 22-joint body, roughly)
ACTIVE_KL = 0.01          # nats: a latent dimension carrying less than this is counted as collapsed
EXPLODE_MARGIN = 3.0      # block ranges beyond a column's data range: a value there has exploded
FREEZE_SECONDS = 2.0      # window over which freezing and height are judged
FREEZE_SPEED = 0.05       # m/s: below this, both root and mean joint speed count as frozen
FREEZE_TOLERANCE = 0.2    # allowed excess of frozen windows over the data's own fraction
HEIGHT_TOLERANCE = 0.1    # metres beyond the data's root-height range (1st..99th percentile)
CONTACT_ON = 0.5


class TorchModel:
    """A trained checkpoint behind the small interface the metrics use (a model folder comes later)."""

    def __init__(self, run: LoadedRun, device: torch.device):
        self.run, self.device = run, device
        self.decoder = run.decoder

    @property
    def layout(self) -> FeatureLayout:
        """Feature layout of the frames the model predicts."""
        return self.run.layout

    @property
    def normaliser(self) -> Normaliser:
        """The model's normalisation of raw frames."""
        return self.run.normaliser

    @property
    def n_cond(self) -> int:
        """Condition frames."""
        return self.run.spec.n_cond

    def next_frame(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Next normalised frame (B, F) from z and a normalised condition (B, n_cond*F)."""
        return self.decoder(z, condition)

    def prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n random latents for a rollout step."""
        return self.run.model.sample_prior(n, generator)

    def encode(self, x: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior statistics of normalised target frames."""
        return self.run.model.encode(x, condition)

    def posterior_mean(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The latent that best explains x."""
        return self.run.model.posterior_mean(x, condition)


def open_model(path: str | Path, device: str = "cpu") -> TorchModel:
    """A model to evaluate from a run folder or checkpoint file."""
    path = Path(path)
    if path.is_dir() and (path / "model.json").is_file():
        # An exported model folder (ONNX decoder + model.json) plugs in here with the same interface.
        raise CheckpointError(f"{path}: exported model folders are not evaluable yet; pass the run folder")
    device = resolve_device(device)
    return TorchModel(load_run(path, device), device)


def frame_quantities(prev: np.ndarray, cur: np.ndarray, layout: FeatureLayout, fps: float) -> dict[str, np.ndarray]:
    """Per-frame motion measures of frames cur (..., F) that follow frames prev (..., F).

    root_speed, pose_speed (mean joint speed in the character frame) and root_height (joint 0) are (...);
    skate (horizontal foot speed in the world, m/s) and contact are (..., C).
    """
    n = layout.n_joints
    root = cur[..., layout.slice("root")]
    p_cur = cur[..., layout.slice("positions")].reshape(cur.shape[:-1] + (n, 3))
    p_prev = prev[..., layout.slice("positions")].reshape(prev.shape[:-1] + (n, 3))
    out = {"root_speed": np.hypot(root[..., 0], root[..., 1]) * fps,
           "pose_speed": np.linalg.norm(p_cur - p_prev, axis=-1).mean(-1) * fps,
           "root_height": p_cur[..., 0, 1]}
    if layout.has("contacts"):
        feet = [layout.joint_names.index(name) for name in layout.contact_joints]
        # Current feet seen from the previous character frame: rotate by dyaw, shift by (dx, dz).
        turn = yaw_matrix(root[..., 2])[..., None, :, :]
        moved = (turn @ p_cur[..., feet, :, None])[..., 0]
        moved[..., 0] += root[..., None, 0]
        moved[..., 2] += root[..., None, 1]
        step = moved - p_prev[..., feet, :]
        out["skate"] = np.hypot(step[..., 0], step[..., 2]) * fps
        out["contact"] = cur[..., layout.slice("contacts")] > CONTACT_ON
    return out


def window_means(values: np.ndarray, width: int) -> np.ndarray:
    """Means over consecutive non-overlapping windows along the last axis (a partial tail is dropped)."""
    n = values.shape[-1] // width
    return values[..., : n * width].reshape(values.shape[:-1] + (n, width)).mean(-1)


def frozen(root_speed: np.ndarray, pose_speed: np.ndarray) -> np.ndarray:
    """Whether windowed root and pose speeds are both near zero."""
    return (root_speed < FREEZE_SPEED) & (pose_speed < FREEZE_SPEED)


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Frechet distance between Gaussians: |ma - mb|^2 + tr(Ca + Cb - 2 (Ca^1/2 Cb Ca^1/2)^1/2)."""
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


@dataclass
class DataReference:
    """The data's ranges and statistics, and what the data itself scores on every rollout measure."""

    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray           # per-column data minimum, raw units
    high: np.ndarray
    slack: np.ndarray         # per column: how far beyond [low, high] counts as an explosion
    cov: np.ndarray
    frozen_fraction: float
    height_low: float
    height_high: float
    height_mean: float
    skate: float | None
    window: int

    def zscore(self, frames: np.ndarray) -> np.ndarray:
        """Frames in the evaluator's units (independent of the model's own normalisation)."""
        return (frames - self.mean) / self.std


def data_reference(frames: Frames) -> DataReference:
    """Statistics of all clips of frames, measured like rollouts."""
    data = frames.data.astype(np.float64)
    layout, fps = frames.layout, frames.fps
    mean, std = data.mean(0), data.std(0)
    low, high = data.min(0), data.max(0)
    slack = np.empty_like(mean)
    for _, start, stop in layout.blocks:
        # Judged against the block's typical range, not the column's own: a drifting hip height is
        # sinking (measured below), not an explosion; values that leave the body's scale are.
        spread = np.sqrt(((high - low)[start:stop] ** 2).mean())
        slack[start:stop] = EXPLODE_MARGIN * (spread if spread > Normaliser.EPS else 1.0)
        # Near-constant columns (the root's own x/z in its character frame) would turn tiny errors
        # into huge z-scores: floor each column's scale at a tenth of its block's typical scale, and
        # give a block that never varies (contacts never set) unit scale, as Normaliser does.
        typical = np.sqrt((std[start:stop] ** 2).mean())
        std[start:stop] = np.maximum(std[start:stop], 0.1 * typical) if typical > Normaliser.EPS else 1.0
    z = (data - mean) / std
    prev = np.concatenate([data[:1], data[:-1]])
    q = frame_quantities(prev, data, layout, fps)
    inside = np.ones(len(data), dtype=bool)
    inside[frames.clip_starts] = False  # a clip's first frame has no predecessor in its clip
    window = max(1, round(FREEZE_SECONDS * fps))
    flags = [frozen(window_means(q["root_speed"][s + 1:e + 1], window),
                    window_means(q["pose_speed"][s + 1:e + 1], window))
             for s, e in zip(frames.clip_starts, frames.end_indices)]
    flags = np.concatenate(flags)
    skate = None
    if "skate" in q:
        on = q["contact"] & inside[:, None]
        skate = float(q["skate"][on].mean()) if on.any() else 0.0
    height = q["root_height"]
    return DataReference(mean, std, low, high, slack, np.cov(z, rowvar=False),
                         float(flags.mean()) if len(flags) else 0.0, float(np.percentile(height, 1)),
                         float(np.percentile(height, 99)), float(height.mean()), skate, window)


class RolloutStats:
    """Accumulates rollout measures chunk by chunk; a rollout that turns NaN or explodes drops out."""

    def __init__(self, n: int, ref: DataReference, layout: FeatureLayout, fps: float):
        self.ref, self.layout, self.fps = ref, layout, fps
        self.nan = np.zeros(n, dtype=bool)
        self.exploded = np.zeros(n, dtype=bool)
        self.first_failure = np.full(n, -1)
        self.frozen_windows = 0
        self.windows = 0
        self.frozen_at_end = np.zeros(n, dtype=bool)
        self.height_low = np.full(n, np.inf)
        self.height_high = np.full(n, -np.inf)
        self.last_height = np.full(n, np.nan)
        self.skate_sum, self.skate_count = 0.0, 0
        self.sum = np.zeros(len(ref.mean))
        self.outer = np.zeros((len(ref.mean), len(ref.mean)))
        self.count = 0

    @property
    def alive(self) -> np.ndarray:
        """Which rollouts have neither turned NaN nor exploded so far."""
        return ~(self.nan | self.exploded)

    def add(self, prev: np.ndarray, chunk: np.ndarray, first_frame: int) -> None:
        """Add frames (B, T, F) of every rollout, raw units; prev (B, F) precedes them."""
        broken = ~self.alive
        z = self.ref.zscore(chunk)
        with np.errstate(invalid="ignore", over="ignore"):
            nonfinite = ~np.isfinite(chunk).all(axis=2)                                     # (B, T)
            bad = nonfinite | ((chunk < self.ref.low - self.ref.slack)
                               | (chunk > self.ref.high + self.ref.slack)).any(axis=2)
        new = ~broken & bad.any(axis=1)
        self.first_failure[new] = first_frame + bad.argmax(axis=1)[new]
        self.nan |= new & nonfinite.any(axis=1)
        self.exploded |= new & ~nonfinite.any(axis=1)
        alive = self.alive
        if not alive.any():
            return
        frames, z = chunk[alive], z[alive]
        before = np.concatenate([prev[alive][:, None], frames[:, :-1]], axis=1)
        q = frame_quantities(before, frames, self.layout, self.fps)
        still = frozen(window_means(q["root_speed"], self.ref.window), window_means(q["pose_speed"], self.ref.window))
        self.frozen_windows += int(still.sum())
        self.windows += still.size
        if still.shape[1]:
            self.frozen_at_end[alive] = still[:, -1]
        heights = window_means(q["root_height"], self.ref.window)
        if heights.shape[1]:
            self.height_low[alive] = np.minimum(self.height_low[alive], heights.min(1))
            self.height_high[alive] = np.maximum(self.height_high[alive], heights.max(1))
            self.last_height[alive] = heights[:, -1]
        if "skate" in q:
            self.skate_sum += float(q["skate"][q["contact"]].sum())
            self.skate_count += int(q["contact"].sum())
        flat = z.reshape(-1, z.shape[-1])
        self.sum += flat.sum(0)
        self.outer += flat.T @ flat
        self.count += len(flat)

    def summary(self) -> dict:
        """The measures as plain data, with the data's own values beside them."""
        ref, n, alive = self.ref, len(self.nan), self.alive
        out: dict = {
            "stability": {"rollouts": n, "nan_rollouts": int(self.nan.sum()),
                          "exploded_rollouts": int(self.exploded.sum()),
                          "first_failure_frame": int(self.first_failure[~alive].min()) if (~alive).any() else None,
                          "explode_margin_block_ranges": EXPLODE_MARGIN},
            "freezing": {"window_s": FREEZE_SECONDS, "speed_threshold_mps": FREEZE_SPEED,
                         "frozen_window_fraction": self.frozen_windows / self.windows if self.windows else None,
                         "data_frozen_window_fraction": ref.frozen_fraction,
                         "frozen_at_end_fraction": float(self.frozen_at_end[alive].mean()) if alive.any() else None},
        }
        low = float(self.height_low[alive].min()) if alive.any() else None
        high = float(self.height_high[alive].max()) if alive.any() else None
        drift = None if low is None else max(ref.height_low - low, high - ref.height_high, 0.0)
        out["sinking"] = {"root_height_min_m": low, "root_height_max_m": high,
                          "data_root_height_range_m": [ref.height_low, ref.height_high],
                          "final_height_offset_m": float(np.nanmean(self.last_height[alive]) - ref.height_mean)
                          if alive.any() else None,
                          "height_drift_m": drift}
        skate = self.skate_sum / self.skate_count if self.skate_count else None
        out["foot_skating"] = {"contact_frames": self.skate_count, "mean_speed_mps": skate,
                               "data_mean_speed_mps": ref.skate,
                               "ratio_to_data": skate / ref.skate if skate is not None and ref.skate else None}
        fd = None
        if self.count > 1:
            mean = self.sum / self.count
            cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
            fd = frechet_distance(mean, cov, np.zeros_like(mean), ref.cov)
        out["frechet"] = {"distance": fd, "frames": self.count, "units": "z-scores of the data"}
        out["flags"] = {
            "nan": bool(self.nan.any()), "explosion": bool(self.exploded.any()),
            "freezing": self.windows > 0 and self.frozen_windows / self.windows > ref.frozen_fraction + FREEZE_TOLERANCE,
            "sinking": drift is not None and drift > HEIGHT_TOLERANCE,
        }
        return out


@torch.no_grad()
def rollouts(model: TorchModel, frames: Frames, ref: DataReference, n: int, length: int, seed: int,
             chunk_windows: int = 10) -> dict:
    """n random-latent rollouts of length frames from random data windows, measured chunk by chunk."""
    gen = torch.Generator().manual_seed(seed)
    layout, norm, k = model.layout, model.normaliser, model.n_cond
    starts = RolloutSampler(frames, np.arange(frames.n_clips), k, n).starts
    first = starts[torch.randint(len(starts), (n,), generator=gen)]
    window = torch.from_numpy(frames.data[(first[:, None] + torch.arange(k)).numpy()]).to(model.device)
    condition = norm.normalise(window)                                  # (n, k, F)
    stats = RolloutStats(n, ref, layout, frames.fps)
    prev = frames.data[(first + k - 1).numpy()].astype(np.float64)
    chunk = ref.window * chunk_windows
    done = 0
    while done < length and stats.alive.any():
        steps = min(chunk, length - done)
        out = torch.empty(n, steps, layout.size, device=model.device)
        for t in range(steps):
            nxt = model.next_frame(model.prior(n, gen), condition.flatten(1))
            out[:, t] = nxt
            # A diverged rollout is recorded in out; feeding it zeros from here on keeps non-finite
            # arithmetic (slow on CPUs) away from the batch it shares with healthy rollouts.
            nxt = torch.nan_to_num(nxt, nan=0.0, posinf=0.0, neginf=0.0)
            condition = torch.cat((condition[:, 1:], nxt[:, None]), dim=1)
        raw = norm.denormalise(out).cpu().numpy().astype(np.float64)
        stats.add(prev, raw, done)
        prev = raw[:, -1]
        done += steps
    result = stats.summary()
    result["stability"]["frames"] = length
    result["stability"]["frames_simulated"] = done  # less when every rollout failed early
    return result


@torch.no_grad()
def reconstruction(model: TorchModel, frames: Frames, clips: np.ndarray, max_windows: int = 8192,
                   batch: int = 1024) -> dict:
    """Next-frame error through the posterior mean on clips, and how the latent is used there."""
    spec, layout, norm = model.run.spec, model.layout, model.normaliser
    span = spec.n_cond + spec.n_future
    starts = RolloutSampler(frames, clips, span, 1).starts
    starts = starts[np.linspace(0, len(starts) - 1, min(max_windows, len(starts))).astype(np.int64)]
    rows = (starts[:, None] + torch.arange(span)).numpy()
    windows = norm.normalise(torch.from_numpy(frames.data[rows]).to(model.device))
    errors, stats = [], []
    for part in windows.split(batch):
        condition, target = part[:, : spec.n_cond].flatten(1), part[:, spec.n_cond:].flatten(1)
        pred = model.next_frame(model.posterior_mean(target, condition), condition)
        errors.append((norm.denormalise(pred) - norm.denormalise(part[:, spec.n_cond]),
                       pred - part[:, spec.n_cond]))
        stats.append(model.encode(target, condition))
    raw = torch.cat([e[0] for e in errors]).cpu().numpy()
    normed = torch.cat([e[1] for e in errors]).cpu().numpy()
    rmse = {name: float(np.sqrt((raw[:, layout.slice(name)] ** 2).mean())) for name, _, _ in layout.blocks}
    out = {"windows": len(rows), "mse_normalised": float((normed ** 2).mean()), "rmse_by_block": rmse}
    if "mu" in stats[0]:
        kl = kl_per_dimension(torch.cat([s["mu"] for s in stats]), torch.cat([s["logvar"] for s in stats]))
        kl = kl.cpu().numpy()
        latent = {"kl_per_dim": [round(float(v), 5) for v in kl], "kl_total": float(kl.sum()),
                  "active_dims": int((kl > ACTIVE_KL).sum()), "latent": len(kl)}
    else:
        quantizer = model.run.model.quantizer
        codes = torch.cat([quantizer.nearest(s["z_e"]) for s in stats])
        latent = {"perplexity": float(quantizer.perplexity(codes)), "codes_used": int(codes.unique().numel()),
                  "codes": quantizer.codes}
    return {"reconstruction": out, "latent": latent}


def evaluate(model: TorchModel, frames: Frames, holdout_every: int, n_rollouts: int = 32,
             length: int = 10_000, seed: int = 0) -> dict:
    """All metrics of model on frames, as plain data."""
    if model.layout != frames.layout:
        raise FramesError(f"{frames.path}: its feature layout differs from the model's "
                          f"({frames.layout.size} vs {model.layout.size} features)")
    model.run.model.eval()
    held = heldout_clips(frames.clip_names, holdout_every)
    unseen = model.run.config.holdout_every == holdout_every
    clips, note = held, f"1 in {holdout_every} source clips, {'held out in' if unseen else 'seen in'} training"
    if len(held) == 0:
        clips, note = np.arange(frames.n_clips), "all clips (none held out; seen in training)"
    result = {"model": str(model.run.path), "frames": str(frames.path), "epoch": model.run.epoch,
              "evaluated_clips": {"which": note, "count": int(len(clips)),
                                  "frames": int(len(clip_rows(frames, clips)))}}
    result.update(reconstruction(model, frames, clips))
    ref = data_reference(frames)
    result.update(rollouts(model, frames, ref, n_rollouts, length, seed))
    result["stable"] = not any(result["flags"].values())
    return result


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def format_table(result: dict) -> str:
    """The metrics as an aligned text table (the per-dimension KL list is left to the JSON)."""
    lines = []
    for section, values in result.items():
        if not isinstance(values, dict):
            lines.append(f"{section:<34} {_fmt(values)}")
            continue
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    lines.append(f"  {key + '.' + sub:<32} {_fmt(v)}")
            elif key != "kl_per_dim":
                lines.append(f"  {key:<32} {_fmt(value)}")
    return "\n".join(lines)


EXAMPLES = """examples:
  python -m trainer.evaluate runs/walk frames.npz
  python -m trainer.evaluate runs/walk/checkpoint.pt frames.npz --rollouts 64 --frames 10000 --json eval.json
  python -m trainer.evaluate runs/walk frames.npz --frames 2000 --strict   # exit 1 when a flag is raised
  python -m trainer.evaluate runs/walk frames.npz --device cuda --rollouts 256
"""


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; bad input gives one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n")[0],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder or checkpoint file")
    parser.add_argument("frames", help="frames.npz with the model's skeleton and layout")
    parser.add_argument("--rollouts", type=int, default=32, help="parallel random-latent rollouts (default 32)")
    parser.add_argument("--frames", dest="length", type=int, default=10_000, help="frames per rollout (default 10000)")
    parser.add_argument("--holdout-every", type=int,
                        help=f"held-out clips for reconstruction (default: the run's, else {DEFAULT_HOLDOUT_EVERY})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", help="where to write the JSON (default: eval.json beside the checkpoint)")
    parser.add_argument("--strict", action="store_true", help="exit with code 1 when any flag is raised")
    args = parse(parser, argv)
    try:
        if args.rollouts < 1 or args.length < 1 or args.threads < 0 or args.seed < 0:
            raise FramesError("--rollouts and --frames must be at least 1, --threads and --seed not negative")
        if args.json:
            check_output_file(args.json, (".json",))
        check_memory(ROLLOUT_FRAME_BYTES * args.rollouts * args.length,
                     f"--rollouts {args.rollouts} x --frames {args.length}")
        if args.threads:
            torch.set_num_threads(args.threads)
        model = open_model(args.model, args.device)
        frames = load_frames(args.frames)
        every = args.holdout_every
        if every is None:
            every = model.run.config.holdout_every or DEFAULT_HOLDOUT_EVERY
        result = evaluate(model, frames, every, args.rollouts, args.length, args.seed)
        out = Path(args.json) if args.json else checkpoint_path(args.model).parent / "eval.json"
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    except (FramesError, CheckpointError, ConfigError, UsageError) as exc:
        return fail(exc)
    except OSError as exc:
        return fail(write_error(exc, args.json or args.model))
    print(format_table(result))
    print(f"metrics written to {out}")
    return 1 if args.strict and not result["stable"] else 0


if __name__ == "__main__":
    sys.exit(main())
