"""frames.npz reading and checking, normalisation, held-out splits and rollout sampling."""
from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from runtime.features import FeatureLayout
from runtime.skeleton import Skeleton

from .prepare import MIRROR_SUFFIX

REQUIRED_KEYS = ("data", "end_indices", "layout", "skeleton", "fps")
SPEED_BIN_MPS = 0.25  # root-speed bins of the speed-balanced sampler


class FramesError(ValueError):
    """A frames.npz that cannot be trained or evaluated on; the message names the file and the problem."""


def parse_layout(text: str, where: str) -> FeatureLayout:
    """A FeatureLayout from its JSON text; FramesError naming where when it is not one."""
    try:
        return FeatureLayout.from_json(text)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise FramesError(f"{where}: not a valid feature layout ({exc.__class__.__name__}: {exc})") from None


def parse_skeleton(text: str, where: str) -> Skeleton:
    """A Skeleton from its JSON text; FramesError naming where when it is not one."""
    try:
        return Skeleton.from_json(text)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
        raise FramesError(f"{where}: not a valid skeleton ({exc.__class__.__name__}: {exc})") from None


@dataclass(frozen=True)
class Frames:
    """The contents of a checked frames.npz."""

    path: Path
    data: np.ndarray            # (N, F) float32
    end_indices: np.ndarray     # (C,) int64, inclusive last frame of each clip
    clip_names: tuple[str, ...]
    fps: float
    layout: FeatureLayout
    skeleton: Skeleton
    source: dict

    @property
    def clip_starts(self) -> np.ndarray:
        """First frame index of each clip."""
        return np.concatenate([[0], self.end_indices[:-1] + 1]).astype(np.int64)

    @property
    def n_clips(self) -> int:
        """Number of clips."""
        return len(self.end_indices)


def _source_summary(text: str, where: str) -> dict:
    """The 'source' JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FramesError(f"{where}: 'source' is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise FramesError(f"{where}: 'source' must hold a JSON object")
    return value


def load_frames(path: str | Path) -> Frames:
    """Read and check a frames.npz; raise FramesError with one sentence on anything unusable."""
    path = Path(path)
    where = str(path)
    if path.exists() and not path.is_file():
        raise FramesError(f"{where}: expected a frames.npz file, found a folder or special file")
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FramesError(f"{where}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FramesError(f"{where}: not a readable .npz file ({exc.__class__.__name__})") from None
    if not hasattr(npz, "files"):
        raise FramesError(f"{where}: not a frames.npz (a bare .npy array)")
    try:
        return _checked(path, npz)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as exc:
        raise FramesError(f"{where}: damaged .npz file ({exc.__class__.__name__})") from None
    finally:
        npz.close()


def _checked(path: Path, npz) -> Frames:
    """load_frames' checks of an open npz."""
    where = str(path)
    missing = [k for k in REQUIRED_KEYS if k not in npz.files]
    if missing:
        raise FramesError(f"{where}: missing key(s) {', '.join(missing)} "
                          f"(found {', '.join(npz.files) or 'none'})")
    try:
        data = np.asarray(npz["data"])
        ends = np.asarray(npz["end_indices"])
        fps = float(npz["fps"])
        names = tuple(str(n) for n in npz["clip_names"]) if "clip_names" in npz.files else None
    except (ValueError, TypeError) as exc:
        raise FramesError(f"{where}: unreadable array ({exc})") from None
    if not 0 < fps <= 1000:  # NaN fails too
        raise FramesError(f"{where}: 'fps' must be in (0, 1000], got {fps}")
    layout = parse_layout(str(npz["layout"][()]), f"{where}: layout")
    skeleton = parse_skeleton(str(npz["skeleton"][()]), f"{where}: skeleton")
    source = _source_summary(str(npz["source"][()]), where) if "source" in npz.files else {}
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.floating):
        raise FramesError(f"{where}: 'data' must be a 2-D float array, got {data.dtype} {data.shape}")
    if data.shape[1] != layout.size:
        raise FramesError(f"{where}: 'data' has {data.shape[1]} columns but the layout describes {layout.size}")
    bad = ~np.isfinite(data)
    if bad.any():
        frame, column = np.argwhere(bad)[0]
        raise FramesError(f"{where}: 'data' holds {int(bad.sum())} NaN/inf values "
                          f"(first at frame {frame}, column {column})")
    if ends.ndim != 1 or len(ends) == 0 or not np.issubdtype(ends.dtype, np.integer):
        raise FramesError(f"{where}: 'end_indices' must be a non-empty 1-D integer array")
    if ends[0] < 0 or np.any(np.diff(ends) <= 0) or ends[-1] != len(data) - 1:
        raise FramesError(f"{where}: 'end_indices' must rise strictly and end at the last frame "
                          f"({len(data) - 1}), got {ends[0]}..{ends[-1]}")
    if names is None:
        names = tuple(f"clip_{i:04d}" for i in range(len(ends)))
    if len(names) != len(ends):
        raise FramesError(f"{where}: {len(names)} clip_names for {len(ends)} clips")
    if tuple(skeleton.names) != layout.joint_names:
        raise FramesError(f"{where}: the skeleton's joints differ from the layout's joint_names")
    return Frames(path, data.astype(np.float32, copy=False), ends.astype(np.int64), names, fps,
                  layout, skeleton, source)


def heldout_clips(clip_names: tuple[str, ...], every: int) -> np.ndarray:
    """Indices of held-out clips: every k-th source clip (the k-th, 2k-th, ...) with its mirror; none for 0.

    A clip and its mirrored copy always fall on the same side, so no held-out motion is trained on
    in mirror image.
    """
    if every <= 0:
        return np.zeros(0, dtype=np.int64)
    bases = [name.removesuffix(MIRROR_SUFFIX) for name in clip_names]
    held = set(list(dict.fromkeys(bases))[every - 1::every])
    return np.array([i for i, base in enumerate(bases) if base in held], dtype=np.int64)


def training_clips(clip_names: tuple[str, ...], every: int) -> np.ndarray:
    """Indices of the clips left for training after heldout_clips."""
    return np.setdiff1d(np.arange(len(clip_names), dtype=np.int64), heldout_clips(clip_names, every))


def clip_rows(frames: Frames, clips: np.ndarray) -> np.ndarray:
    """Frame indices of the given clips, concatenated."""
    starts, ends = frames.clip_starts[clips], frames.end_indices[clips]
    if len(clips) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(s, e + 1) for s, e in zip(starts, ends)])


@dataclass(frozen=True)
class Normaliser:
    """normalised = (x - shift) / scale, per column; zscore, minmax (to [-1, 1]) or none."""

    kind: str
    shift: np.ndarray  # (F,) float32
    scale: np.ndarray  # (F,) float32

    EPS = 1e-4  # columns flatter than this (e.g. constant contacts) keep unit scale

    @classmethod
    def fit(cls, data: np.ndarray, kind: str) -> "Normaliser":
        """Statistics of data (N, F) for the given kind."""
        data = data.astype(np.float64)
        if kind == "zscore":
            shift, scale = data.mean(0), data.std(0)
        elif kind == "minmax":
            low, high = data.min(0), data.max(0)
            shift, scale = (high + low) / 2, (high - low) / 2
        elif kind == "none":
            shift, scale = np.zeros(data.shape[1]), np.ones(data.shape[1])
        else:
            raise ValueError(f"unknown normalisation {kind!r}")
        scale = np.where(scale < cls.EPS, 1.0, scale)
        return cls(kind, shift.astype(np.float32), scale.astype(np.float32))

    def normalise(self, x):
        """Map raw frames (numpy or torch, last axis F) to normalised units."""
        shift, scale = self._like(x)
        return (x - shift) / scale

    def denormalise(self, x):
        """Map normalised frames back to raw units."""
        shift, scale = self._like(x)
        return x * scale + shift

    def _like(self, x):
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(self.shift, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.scale, dtype=x.dtype, device=x.device))
        return self.shift, self.scale

    def state(self) -> dict:
        """Plain-data form for checkpoints and model.json."""
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "Normaliser":
        """Inverse of state()."""
        return cls(state["kind"], np.asarray(state["shift"], np.float32), np.asarray(state["scale"], np.float32))


def rollout_window(n_cond: int, rollout: int, n_future: int, stride: int = 1) -> int:
    """Frames one rollout touches: its condition frames, then every step's target frames (stride apart)."""
    return n_cond + rollout + (n_future - 1) * stride


class RolloutSampler:
    """Mini-batches of frame-index windows that never cross a clip boundary.

    A window starting at t covers t .. t+window-1 and is valid only if all of it lies inside one clip.
    Every rank draws the same permutation from the shared generator and takes its own slice, so
    distributed ranks see disjoint batches.
    """

    def __init__(self, frames: Frames, clips: np.ndarray, window: int, batch_size: int,
                 rank: int = 0, world: int = 1):
        starts, ends = frames.clip_starts[clips], frames.end_indices[clips]
        lengths = ends - starts + 1
        valid = [np.arange(s, e - window + 2) for s, e in zip(starts, ends) if e - s + 1 >= window]
        if not valid:
            longest = int(lengths.max()) if len(lengths) else 0
            raise FramesError(f"{frames.path}: none of its {len(clips)} selected clips is long enough for a "
                              f"window of {window} frames (condition + rollout + future; longest: {longest})")
        self.starts = torch.from_numpy(np.concatenate(valid))
        self.window = window
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.weights: torch.Tensor | None = None

    def balance_speed(self, frames: Frames, strength: float, bin_mps: float = SPEED_BIN_MPS) -> None:
        """Draw windows against how common their root speed is: weight density^-strength (0 keeps uniform).

        Each window's speed is its frames' mean root speed, binned every bin_mps; strength 1 makes every
        bin equally likely. Rare gaits (running in mostly-walking mocap) then get as many updates as common
        ones, while what follows a given pose, within its clip, is unchanged.
        """
        if strength <= 0:
            self.weights = None
            return
        root = frames.data[:, frames.layout.slice("root")]
        speed = np.hypot(root[:, 0], root[:, 1]) * frames.fps
        cumulative = np.concatenate([[0.0], np.cumsum(speed)])
        first = self.starts.numpy()
        mean = (cumulative[first + self.window] - cumulative[first]) / self.window
        bins = np.floor(mean / bin_mps).astype(np.int64)
        density = np.bincount(bins)[bins] / len(bins)
        weights = density ** -strength
        self.weights = torch.from_numpy(weights / weights.sum())

    def __len__(self) -> int:
        """Batches in one full epoch (at least one; drawn with replacement when starts are too few)."""
        return max(1, len(self.starts) // (self.batch_size * self.world))

    def epoch(self, generator: torch.Generator, limit: int = 0) -> Iterator[torch.Tensor]:
        """Yield (batch, window) frame-index tensors for one epoch; limit caps the batch count."""
        n_batches = limit or len(self)
        need = n_batches * self.batch_size * self.world
        if self.weights is not None:
            order = torch.multinomial(self.weights, need, replacement=True, generator=generator)
        elif need <= len(self.starts):
            order = torch.randperm(len(self.starts), generator=generator)[:need]
        else:
            order = torch.randint(len(self.starts), (need,), generator=generator)
        chosen = self.starts[order].view(n_batches, self.world, self.batch_size)[:, self.rank]
        offsets = torch.arange(self.window)
        for first in chosen:
            yield first[:, None] + offsets
