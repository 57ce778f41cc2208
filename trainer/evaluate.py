"""Quality of a Motion VAE as a user sees it, against held-out mocap (`python -m trainer.evaluate`).

Long random-latent rollouts run through the runtime exactly as engines get them (the exported ONNX step and
runtime.Controller; a training run is exported to a temporary folder first), starting from held-out frames.
Everything is read off the world pose engines show (forward kinematics of the local rotations) and off the
held-out clips' world poses by one rule (Track), and the verdict compares the two:

- drift: Frechet distance of pose features (joint positions and velocities in the hips' frame, standardised by
  the held-out data) over the first EARLY_S seconds and over the last third of the rollouts, and their ratio;
- gait: speed and turning of the hips' ground path over whole gait cycles, percentiles and the share of frames
  standing, walking, jogging and running over the last third, beside the held-out clips';
- starts: from the held-out clips' standing frames, the share of characters that walk off within START_S, beside
  the share of those frames the clips themselves walk off from (a model that never starts stands for good once
  it stops);
- feet: skating (horizontal speed of planted feet), contacts found from the positions (runtime.contacts);
  feet under the floor;
- the rotations against the predicted positions (FK error), freezing, NaNs and divergence resets;
- for a training run also held-out next-frame reconstruction and how much of the latent is used.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.atomic import atomic_write_text
from runtime.cli import UsageError, check_memory, check_output_file, fail, parse, write_error
from runtime.contacts import foot_floor, planted_speed
from runtime.controller import Controller
from runtime.features import FeatureLayout, decode
from runtime.model import PRECISIONS, MotionModel, ModelError, load_model
from runtime.rotations import quat_to_matrix, yaw_matrix

from .checkpoint import CheckpointError, LoadedRun, checkpoint_path, load_run, read_checkpoint
from .config import ConfigError
from .data import Frames, FramesError, RolloutSampler, clip_rows, heldout_clips, load_frames
from .models import kl_per_dimension
from .motion_metrics import (GAITS, character_path, frechet_distance, frozen_windows, gait_series, gait_summary,
                             gaussian, joint_speed, standardiser)
from .runs import resolve_device

DEFAULT_HOLDOUT_EVERY = 10
DEFAULT_ROLLOUTS = 64
DEFAULT_FRAMES = 3000
ROLLOUT_FRAME_BYTES = 8192.0  # features and decoded poses a rollout keeps per frame (a 22-joint body, roughly)
ACTIVE_KL = 0.01          # nats: a latent dimension carrying less than this is counted as collapsed
EARLY_S = 10.0            # the rollouts' first seconds, for the drift ratio
LATE_FRACTION = 1 / 3     # the rollouts' last third: where drift, gait and skating are judged
UNDER_FLOOR_M = 0.03      # a foot joint this far below its floor is under the floor
START_S = 3.0             # a standing character walks off when its speed over a gait window passes walking's
FK_CHUNK = 100            # frames put through forward kinematics at once
# The verdict: every measure within its bound of the held-out data's.
BOUNDS = {
    "drift": 1.3,              # Frechet(last third) / Frechet(first EARLY_S)
    "speed": 0.15,             # relative error of root speed p50 and p90
    "turning": 0.25,           # relative error of turning p90
    "gait_share": 0.15,        # absolute difference of each gait's share of frames
    "skating": 1.5,            # planted-foot speed / the data's
    "fk_mean_mm": 1.0,         # FK of the rotations against the predicted positions
    "fk_p99_mm": 10.0,
    "frozen": 0.05,            # frozen-window share above the data's
    "under_floor": 0.01,       # share of frames with a foot under the floor above the data's
    "starts": 0.15,            # absolute difference of the share that walks off from standing within START_S
}


def _rows(frames: Frames, clips: np.ndarray):
    """(first, last) frame index of each clip."""
    return zip(frames.clip_starts[clips], frames.end_indices[clips])


@dataclass
class Reference:
    """What the held-out clips score on every measure, and the units the rollouts are measured in."""

    feature_mean: np.ndarray
    feature_scale: np.ndarray
    feature_cov: np.ndarray
    floor: np.ndarray         # (C,) floor height of each contact joint
    gait: dict
    skating: float | None     # None when no foot of the clips is ever planted
    planted_share: float
    frozen: float
    under_floor: float
    frames: int
    standing: np.ndarray      # frames (indices into the frames' data) where the clips stand, START_S from an end
    starts: float | None      # the share of those the clips walk off from within START_S (None: never standing)


@dataclass
class Track:
    """Per-frame measures of world poses (leading axes ..., then time T), read the same way off mocap and rollouts."""

    origin: np.ndarray        # (..., T, 3) the hips' ground point
    yaw: np.ndarray           # (..., T) heading from the hips
    features: np.ndarray      # (..., T-1, 6J) joint positions and velocities in that frame, from frame 1 on
    joint_speed: np.ndarray   # (..., T) mean world speed of the joints
    feet: np.ndarray          # (..., T, C, 3) world positions of the contact joints


def contact_indices(layout: FeatureLayout) -> list[int]:
    """Joint indices of the layout's contact joints (the feet)."""
    return [layout.joint_names.index(name) for name in layout.contact_joints]


def track(positions: np.ndarray, root_rotation: np.ndarray, layout: FeatureLayout, fps: float) -> Track:
    """Measures of world joint positions (..., T, J, 3) with the root's world rotation (..., T, 3, 3).

    The pose features are taken in the hips' own frame at each frame, not in the model's character frame,
    so models that define their frame differently (smoothed or not) are measured alike.
    """
    origin, yaw = character_path(positions, root_rotation, layout)
    to_frame = yaw_matrix(-yaw[..., 1:])[..., None, :, :]
    rel = (to_frame @ (positions[..., 1:, :, :] - origin[..., 1:, None, :])[..., None])[..., 0]
    vel = (to_frame @ (np.diff(positions, axis=-3) * fps)[..., None])[..., 0]
    features = np.concatenate([rel.reshape(rel.shape[:-2] + (-1,)), vel.reshape(vel.shape[:-2] + (-1,))], axis=-1)
    return Track(origin, yaw, features, joint_speed(positions, fps), positions[..., contact_indices(layout), :])


def reference(frames: Frames, clips: np.ndarray) -> Reference:
    """Measure the given clips of frames by the rules the rollouts are measured by."""
    layout, fps, skeleton = frames.layout, frames.fps, frames.skeleton
    tracks = []
    for s, e in _rows(frames, clips):
        pose = decode(frames.data[s:e + 1].astype(np.float64), layout, skeleton)[0]
        tracks.append(track(pose.positions, pose.world_rotations[:, 0], layout, fps))
    feats = np.concatenate([t.features for t in tracks])
    j3 = 3 * layout.n_joints
    mean, scale = standardiser(feats, [slice(0, j3), slice(j3, 2 * j3)])
    cov = gaussian((feats - mean) / scale)[1]
    gaits = [gait_series(t.origin, t.yaw, fps) for t in tracks if len(t.yaw) > 1]
    frozen = np.concatenate([frozen_windows(t.joint_speed[1:], fps) for t in tracks])
    floor = foot_floor(np.concatenate([t.feet[..., 1] for t in tracks]))
    skate, planted, under = [], [], []
    for t in tracks:
        speed, on = planted_speed(t.feet, fps, floor)
        skate.append(speed[on])
        planted.append(on[1:].ravel())
        under.append((t.feet[..., 1] < floor - UNDER_FLOOR_M).any(-1))
    skate = np.concatenate(skate)
    standing, moved = [], []
    for (s, _), t in zip(_rows(frames, clips), tracks):
        at, off = standing_starts(t.origin, t.yaw, fps)
        standing.append(s + at)
        moved.append(off)
    standing, moved = np.concatenate(standing), np.concatenate(moved)
    return Reference(mean, scale, cov, floor,
                     gait_summary(np.concatenate([g[0] for g in gaits]), np.concatenate([g[1] for g in gaits])),
                     float(skate.mean()) if len(skate) else None,
                     float(np.concatenate(planted).mean()) if layout.contact_joints else 0.0,
                     float(frozen.mean()) if frozen.size else 0.0,
                     float(np.concatenate(under).mean()) if layout.contact_joints else 0.0, len(feats),
                     standing, float(moved.mean()) if len(moved) else None)


def standing_starts(origin: np.ndarray, yaw: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """A clip's standing frames (below walking speed over the gait window ending there) with START_S of clip after
    them, and whether the clip walks off from each within START_S: reaches walking speed over a gait window that
    lies within the START_S frames after it, the rule starts() reads rollouts by."""
    speed = gait_series(origin, yaw, fps)[0]
    width = len(origin) - len(speed)  # window i spans frames i .. i + width
    horizon = round(START_S * fps)
    at = np.flatnonzero(speed < GAITS[1][1]) + width
    at = at[at + horizon < len(origin)]
    if len(at) == 0 or horizon <= width:
        return at, np.zeros(len(at), bool)
    # the windows after frame f start at f + 1 .. f + horizon - width
    fastest = np.lib.stride_tricks.sliding_window_view(speed, horizon - width)[at + 1].max(axis=-1)
    return at, fastest >= GAITS[1][1]


def start_windows(frames: Frames, clips: np.ndarray, n_cond: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n raw condition windows (n, n_cond, F) from random places in the given clips."""
    starts = np.concatenate([np.arange(s, e - n_cond + 2) for s, e in _rows(frames, clips) if e - s + 1 >= n_cond])
    first = rng.choice(starts, n)
    return frames.data[first[:, None] + np.arange(n_cond)]


def rollouts(model: MotionModel, frames: Frames, clips: np.ndarray, ref: Reference, n: int, length: int,
             seed: int) -> dict:
    """n random-latent rollouts of length frames through the runtime, from held-out frames, measured."""
    layout, fps, skeleton = model.layout, model.fps, model.skeleton
    rng = np.random.default_rng(seed)
    ctrl = Controller(model, n, seed=seed)
    ctrl.reset(frames=start_windows(frames, clips, model.n_cond, n, rng))
    j = layout.n_joints
    shown = np.zeros((n, length, j, 3), np.float32)       # FK of the rotations engines get
    root_rot = np.zeros((n, length, 3, 3), np.float32)
    fk_error = np.zeros((length, n, j), np.float32)
    resets = np.zeros((n, length), bool)
    finite = np.ones(n, bool)
    chunk_rot = np.zeros((FK_CHUNK, n, j, 4), np.float64)
    chunk_root = np.zeros((FK_CHUNK, n, 3))
    chunk_pos = np.zeros((FK_CHUNK, n, j, 3))
    for t in range(length):
        poses = ctrl.step()
        finite &= np.isfinite(poses.positions).all(axis=(1, 2))
        resets[:, t] = poses.reset
        k = t % FK_CHUNK
        chunk_rot[k], chunk_root[k], chunk_pos[k] = poses.local_rotations, poses.root_position, poses.positions
        if k == FK_CHUNK - 1 or t == length - 1:
            fk, world = skeleton.forward_kinematics_matrices(quat_to_matrix(chunk_rot[:k + 1]), chunk_root[:k + 1])
            fk_error[t - k:t + 1] = np.linalg.norm(fk - chunk_pos[:k + 1], axis=-1)
            shown[:, t - k:t + 1] = fk.transpose(1, 0, 2, 3)
            root_rot[:, t - k:t + 1] = world[:, :, 0].transpose(1, 0, 2, 3)
    return summarise(ref, layout, fps, track(shown.astype(np.float64), root_rot.astype(np.float64), layout, fps),
                     fk_error, resets, finite)


def starts(model: MotionModel, frames: Frames, ref: Reference, n: int, seed: int) -> dict | None:
    """Random-latent rollouts of START_S from n of the reference's standing frames: the share that walks off."""
    clip = np.searchsorted(frames.end_indices, ref.standing)  # each frame's clip: its condition window stays in it
    at = ref.standing[ref.standing - frames.clip_starts[clip] >= model.n_cond - 1]
    if len(at) == 0:
        return None
    rng = np.random.default_rng(seed)
    at = rng.choice(at, min(n, len(at)), replace=False)
    ctrl = Controller(model, len(at), seed=seed)
    ctrl.reset(frames=frames.data[at[:, None] + np.arange(1 - model.n_cond, 1)])
    horizon = round(START_S * model.fps)
    positions = np.zeros((len(at), horizon, model.layout.n_joints, 3))
    root_rot = np.zeros((len(at), horizon, 3, 3))
    for t in range(horizon):
        poses = ctrl.step()
        positions[:, t], root_rot[:, t] = poses.positions, quat_to_matrix(poses.local_rotations[:, 0])
    speed = gait_series(*character_path(positions, root_rot, model.layout), model.fps)[0]
    return {"model": float((speed >= GAITS[1][1]).any(axis=-1).mean()), "data": ref.starts,
            "characters": int(len(at)), "seconds": START_S}


def summarise(ref: Reference, layout: FeatureLayout, fps: float, rolled: Track, fk_error: np.ndarray,
              resets: np.ndarray, finite: np.ndarray) -> dict:
    """The rollout measures beside the reference's, as plain data."""
    n, length = rolled.yaw.shape
    early = min(length - 1, max(1, round(EARLY_S * fps)))
    late = max(2, round(length * LATE_FRACTION))
    z = (rolled.features - ref.feature_mean) / ref.feature_scale
    fd_early = frechet_distance(*gaussian(z[:, :early]), np.zeros(z.shape[-1]), ref.feature_cov)
    fd_late = frechet_distance(*gaussian(z[:, -late:]), np.zeros(z.shape[-1]), ref.feature_cov)
    speed, turn = gait_series(rolled.origin[:, -late:], rolled.yaw[:, -late:], fps)
    out = {
        "rollouts": {"characters": n, "frames": length, "late_frames": late, "early_frames": early,
                     "resets": int(resets.sum()), "characters_reset": int(resets.any(1).sum()),
                     "non_finite": int((~finite).sum())},
        "frechet": {"first": fd_early, "last": fd_late, "drift": fd_late / max(fd_early, 1e-9),
                    "units": "z-scores of held-out joint positions and velocities in the hips' frame"},
        "gait": {"model": gait_summary(speed, turn), "data": ref.gait},
    }
    frozen = frozen_windows(rolled.joint_speed[:, 1:], fps)
    out["freezing"] = {"model": float(frozen.mean()) if frozen.size else 0.0, "data": ref.frozen}
    mm = fk_error * 1000.0
    out["fk_error_mm"] = {"mean": float(mm.mean()), "p99": float(np.percentile(mm, 99)), "max": float(mm.max())}
    if layout.contact_joints:
        feet = rolled.feet[:, -late:]
        speed_fk, planted = planted_speed(feet, fps, ref.floor)
        skate = float(speed_fk[planted].mean()) if planted.any() else None
        out["feet"] = {"skating_mps": skate, "data_skating_mps": ref.skating,
                       "skating_ratio": skate / ref.skating if skate is not None and ref.skating else None,
                       "planted_share": float(planted[:, 1:].mean()), "data_planted_share": ref.planted_share,
                       "under_floor": float((feet[..., 1] < ref.floor - UNDER_FLOOR_M).any(-1).mean()),
                       "data_under_floor": ref.under_floor}
    return out


def checks(result: dict) -> dict[str, dict]:
    """Each bounded measure: its value, the bound and whether it holds."""
    roll, gait = result["rollouts"], result["gait"]
    model, data = gait["model"], gait["data"]
    out = {"finite": (roll["non_finite"], "== 0", roll["non_finite"] == 0),
           "no_resets": (roll["resets"], "== 0", roll["resets"] == 0),
           "drift": (result["frechet"]["drift"], f"<= {BOUNDS['drift']}",
                     result["frechet"]["drift"] <= BOUNDS["drift"])}
    for key, bound in (("speed_p50", "speed"), ("speed_p90", "speed"), ("turn_p90", "turning")):
        rel = abs(model[key] - data[key]) / max(data[key], 1e-9)
        out[key] = (rel, f"relative error <= {BOUNDS[bound]}", rel <= BOUNDS[bound])
    for name in ("standing", "walking", "jogging", "running"):
        diff = abs(model[f"share_{name}"] - data[f"share_{name}"])
        out[f"share_{name}"] = (diff, f"|model - data| <= {BOUNDS['gait_share']}", diff <= BOUNDS["gait_share"])
    frozen = result["freezing"]["model"] - result["freezing"]["data"]
    out["freezing"] = (frozen, f"excess <= {BOUNDS['frozen']}", frozen <= BOUNDS["frozen"])
    fk = result["fk_error_mm"]
    out["fk_mean_mm"] = (fk["mean"], f"<= {BOUNDS['fk_mean_mm']}", fk["mean"] <= BOUNDS["fk_mean_mm"])
    out["fk_p99_mm"] = (fk["p99"], f"<= {BOUNDS['fk_p99_mm']}", fk["p99"] <= BOUNDS["fk_p99_mm"])
    if result.get("starts"):
        diff = abs(result["starts"]["model"] - result["starts"]["data"])
        out["starts"] = (diff, f"|model - data| <= {BOUNDS['starts']}", diff <= BOUNDS["starts"])
    if "feet" in result:
        feet = result["feet"]
        if feet["data_skating_mps"]:  # data whose feet never plant cannot judge skating
            ratio = feet["skating_ratio"]
            out["skating"] = (ratio, f"<= {BOUNDS['skating']}", ratio is not None and ratio <= BOUNDS["skating"])
        under = feet["under_floor"] - feet["data_under_floor"]
        out["under_floor"] = (under, f"excess <= {BOUNDS['under_floor']}", under <= BOUNDS["under_floor"])
    return {k: {"value": None if v is None else float(v), "bound": b, "ok": bool(ok)} for k, (v, b, ok) in out.items()}


class TorchModel:
    """A trained checkpoint for the measures that need the encoder (reconstruction, latent use)."""

    def __init__(self, run: LoadedRun, device: torch.device):
        self.run, self.device = run, device

    def next_frame(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Next normalised frame (B, F) from z itself (not prior noise) and a normalised condition (B, n_cond*F)."""
        return self.run.model.decoder(z, condition)[:, : self.run.layout.size]


@torch.no_grad()
def reconstruction(model: TorchModel, frames: Frames, clips: np.ndarray, max_windows: int = 8192,
                   batch: int = 1024) -> dict:
    """Next-frame error through the posterior mean on clips, and how the latent is used there."""
    run = model.run
    spec, layout, norm = run.spec, run.layout, run.normaliser
    stride = run.config.future_stride
    span = spec.n_cond + 1 + (spec.n_future - 1) * stride
    starts = RolloutSampler(frames, clips, span, 1).starts
    starts = starts[np.linspace(0, len(starts) - 1, min(max_windows, len(starts))).astype(np.int64)]
    rows = (starts[:, None] + torch.arange(span)).numpy()
    windows = norm.normalise(torch.from_numpy(frames.data[rows]).to(model.device))
    future = spec.n_cond + np.arange(spec.n_future) * stride
    errors, stats, root = [], [], []
    root_cols = layout.slice("root")
    for part in windows.split(batch):
        condition, target = part[:, : spec.n_cond].flatten(1), part[:, future].flatten(1)
        pred = model.next_frame(run.model.posterior_mean(target, condition), condition)
        now, nxt, pred_raw = (norm.denormalise(f) for f in (part[:, spec.n_cond - 1], part[:, spec.n_cond], pred))
        errors.append((pred_raw - nxt, pred - part[:, spec.n_cond]))
        stats.append(run.model.encode(target, condition))
        root.append(torch.stack([f[:, root_cols][:, :2] for f in (now, nxt, pred_raw)], 1))
    raw = torch.cat([e[0] for e in errors]).cpu().numpy()
    normed = torch.cat([e[1] for e in errors]).cpu().numpy()
    rmse = {name: float(np.sqrt((raw[:, layout.slice(name)] ** 2).mean())) for name, _, _ in layout.blocks}
    joints = raw[:, layout.slice("positions")].reshape(len(raw), -1, 3)
    out = {"windows": len(rows), "mse_normalised": float((normed ** 2).mean()), "rmse_by_block": rmse,
           "joint_error_mm": float(np.linalg.norm(joints, axis=-1).mean() * 1000),
           "root_acceleration": root_response(torch.cat(root).cpu().numpy().astype(np.float64))}
    if "mu" in stats[0]:
        kl = kl_per_dimension(torch.cat([s["mu"] for s in stats]), torch.cat([s["logvar"] for s in stats]))
        kl = kl.cpu().numpy()
        latent = {"kl_per_dim": [round(float(v), 5) for v in kl], "kl_total": float(kl.sum()),
                  "active_dims": int((kl > ACTIVE_KL).sum()), "latent": len(kl)}
    else:
        quantizer = run.model.quantizer
        codes = torch.cat([quantizer.nearest(s["z_e"]) for s in stats])
        latent = {"perplexity": float(quantizer.perplexity(codes)), "codes_used": int(codes.unique().numel()),
                  "codes": quantizer.codes}
    return {"reconstruction": out, "latent": latent}


def root_response(steps: np.ndarray) -> dict:
    """How much of the data's change of root step the decoder reproduces, from (N, 3, 2) ground steps: the
    condition's, the data's next and the predicted next. Along the condition's step direction: the regression
    slope of predicted on data change and their correlation (1 and 1 for a decoder that follows every speed
    change; a slope well under 1 leaves speed to wander over a long rollout)."""
    ahead = steps[:, 0] / np.maximum(np.linalg.norm(steps[:, 0], axis=-1, keepdims=True), 1e-9)
    data, pred = (((steps[:, k] - steps[:, 0]) * ahead).sum(-1) for k in (1, 2))
    if data.std() == 0 or pred.std() == 0:
        return {"slope": None, "correlation": None}
    return {"slope": float((pred * data).sum() / (data * data).sum()), "correlation": float(np.corrcoef(pred, data)[0, 1])}


def evaluated_clips(frames: Frames, every: int, trained_every: int | None) -> tuple[np.ndarray, str]:
    """The held-out clips to judge against, and a note saying whether training saw them."""
    held = heldout_clips(frames.clip_names, every)
    if len(held) == 0:
        return np.arange(frames.n_clips), "all clips (none held out; seen in training)"
    seen = "held out in" if trained_every == every else "seen in"
    return held, f"1 in {every} source clips and their mirrors, {seen} training"


def evaluate(model: MotionModel, frames: Frames, holdout_every: int, n_rollouts: int = DEFAULT_ROLLOUTS,
             length: int = DEFAULT_FRAMES, seed: int = 0, run: TorchModel | None = None,
             trained_every: int | None = None) -> dict:
    """Every measure of model on frames' held-out clips, with the verdict, as plain data."""
    if model.layout != frames.layout:
        raise FramesError(f"{frames.path}: its feature layout differs from the model's "
                          f"({frames.layout.size} vs {model.layout.size} features)")
    clips, note = evaluated_clips(frames, holdout_every, trained_every)
    result: dict = {"model": str(model.path if run is None else run.run.path), "precision": model.precision,
                    "frames": str(frames.path),
                    "evaluated_clips": {"which": note, "count": int(len(clips)),
                                        "frames": int(len(clip_rows(frames, clips)))}}
    if run is not None:
        run.run.model.eval()
        result["epoch"] = run.run.epoch
        result.update(reconstruction(run, frames, clips))
    ref = reference(frames, clips)
    result.update(rollouts(model, frames, clips, ref, n_rollouts, length, seed))
    result["starts"] = starts(model, frames, ref, n_rollouts, seed)
    result["checks"] = checks(result)
    result["verdict"] = "pass" if all(c["ok"] for c in result["checks"].values()) else "fail"
    return result


def open_model(path: str | Path, device: str, scratch: Path,
               precision: str = "float32") -> tuple[MotionModel, TorchModel | None, int | None]:
    """The runtime model behind a model directory or a training run (exported into scratch first), stepping its
    step graph of precision."""
    path = Path(path)
    if path.is_dir() and (path / "model.json").is_file():
        return load_model(path, precision=precision), None, None
    from .export import export_run  # the export pulls in the ONNX exporter: only runs need it

    run = load_run(path, resolve_device(device))
    export_run(load_run(path), scratch / "model", licence="evaluation copy",
               data=read_checkpoint(checkpoint_path(path)).get("data", {}), check=False, precision=precision)
    return load_model(scratch / "model", precision=precision), TorchModel(run, resolve_device(device)), run.config.holdout_every


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def format_table(result: dict) -> str:
    """The measures and the verdict as aligned text."""
    lines = [f"model   {result['model']} ({result.get('precision', 'float32')} step graph)", f"frames  {result['frames']}",
             f"judged against {result['evaluated_clips']['count']} clips "
             f"({result['evaluated_clips']['frames']} frames): {result['evaluated_clips']['which']}"]
    if "reconstruction" in result:
        rec, lat = result["reconstruction"], result["latent"]
        latent = (f"KL {lat['kl_total']:.3g} nats/frame, {lat['active_dims']}/{lat['latent']} dims active"
                  if "kl_total" in lat else f"{lat['codes_used']}/{lat['codes']} codes, perplexity {lat['perplexity']:.3g}")
        lines.append(f"held-out next frame: joint error {rec['joint_error_mm']:.1f} mm; {latent}")
        acc = rec["root_acceleration"]
        lines.append(f"root speed changes followed: slope {_fmt(acc['slope'])}, correlation {_fmt(acc['correlation'])} "
                     "(1 and 1: every one)")
    roll = result["rollouts"]
    lines.append(f"rollouts: {roll['characters']} x {roll['frames']} frames; judged over the last "
                 f"{roll['late_frames']} (drift: against the first {roll['early_frames']})")
    lines.append(f"{'measure':<26}{'model':>10}{'data':>10}")
    fd = result["frechet"]
    lines.append(f"{'frechet first / last':<26}{_fmt(fd['first']):>10}{_fmt(fd['last']):>10}   (model, model)")
    gm, gd = result["gait"]["model"], result["gait"]["data"]
    for key in gm:
        lines.append(f"{key:<26}{_fmt(gm[key]):>10}{_fmt(gd[key]):>10}")
    if result.get("starts"):
        st = result["starts"]
        label = f"walk off within {st['seconds']:g} s"
        lines.append(f"{label:<26}{_fmt(st['model']):>10}{_fmt(st['data']):>10}")
    lines.append(f"{'frozen windows':<26}{_fmt(result['freezing']['model']):>10}{_fmt(result['freezing']['data']):>10}")
    if "feet" in result:
        feet = result["feet"]
        for label, a, b in (("skating m/s (FK)", "skating_mps", "data_skating_mps"),
                            ("planted share", "planted_share", "data_planted_share"),
                            ("foot under floor", "under_floor", "data_under_floor")):
            lines.append(f"{label:<26}{_fmt(feet[a]):>10}{_fmt(feet[b]):>10}")
    fk = result["fk_error_mm"]
    lines.append(f"{'FK vs positions mm':<26}mean {fk['mean']:.2f}, p99 {fk['p99']:.2f}, max {fk['max']:.1f}")
    lines.append("checks:")
    for name, c in result["checks"].items():
        lines.append(f"  {name:<24}{_fmt(c['value']):>10}  {c['bound']:<32}{'ok' if c['ok'] else 'FAIL'}")
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)


EXAMPLES = """examples:
  python -m trainer.evaluate runs/walk frames.npz
  python -m trainer.evaluate models/walk frames.npz --rollouts 64 --frames 3000 --json eval.json
  python -m trainer.evaluate runs/walk frames.npz --strict          # exit 1 when the verdict is fail
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n")[0],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a training run (folder or checkpoint.pt) or an exported model directory")
    parser.add_argument("frames", help="frames.npz with the model's skeleton and layout (its held-out clips are "
                                       "the reference)")
    parser.add_argument("--rollouts", type=int, default=DEFAULT_ROLLOUTS,
                        help="characters rolled out together (default %(default)s)")
    parser.add_argument("--frames", dest="length", type=int, default=DEFAULT_FRAMES,
                        help="frames per rollout (default %(default)s)")
    parser.add_argument("--holdout-every", type=int,
                        help=f"judge against every k-th source clip and its mirror (default: the run's, else "
                             f"{DEFAULT_HOLDOUT_EVERY})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the start frames and latents (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device for reconstruction: cpu, cuda, auto "
                                                        "(default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", help="where to write the JSON (default: eval.json in the run folder, or "
                                       "beside nothing for a model directory: printed only)")
    parser.add_argument("--strict", action="store_true", help="exit with code 1 when the verdict is fail")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="the step graph the rollouts run: float32 or int8 (a model directory needs its int8 graph: "
                             "`python -m trainer.export --precision int8 DIR`; default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; bad input gives one line on stderr and exit code 2."""
    args = parse(build_parser(), argv)
    try:
        if args.rollouts < 1 or args.length < 2 or args.threads < 0 or args.seed < 0:
            raise FramesError("--rollouts must be at least 1, --frames at least 2, --threads and --seed not negative")
        if args.json:
            check_output_file(args.json, (".json",))
        check_memory(ROLLOUT_FRAME_BYTES * args.rollouts * args.length,
                     f"--rollouts {args.rollouts} x --frames {args.length}")
        if args.threads:
            torch.set_num_threads(args.threads)
        frames = load_frames(args.frames)
        with tempfile.TemporaryDirectory(prefix="mvae-eval-") as scratch:
            model, run, trained_every = open_model(args.model, args.device, Path(scratch), args.precision)
            every = args.holdout_every if args.holdout_every is not None else (trained_every or DEFAULT_HOLDOUT_EVERY)
            result = evaluate(model, frames, every, args.rollouts, args.length, args.seed, run, trained_every)
        out = Path(args.json) if args.json else (checkpoint_path(args.model).parent / "eval.json" if run else None)
        if out is not None:
            atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    except (FramesError, CheckpointError, ConfigError, ModelError, UsageError) as exc:
        return fail(exc)
    except OSError as exc:
        return fail(write_error(exc, args.json or args.model))
    print(format_table(result))
    if out is not None:
        print(f"metrics written to {out}")
    return 1 if args.strict and result["verdict"] != "pass" else 0


if __name__ == "__main__":
    sys.exit(main())
