"""Checkpoints: atomic writes, checked reads, and loading a finished run for evaluation or export."""
from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.atomic import atomic_write_bytes
from runtime.features import FeatureLayout
from runtime.skeleton import Skeleton

from .config import TrainConfig, from_dict
from .data import Normaliser, parse_layout, parse_skeleton
from .models import ModelSpec, MotionVAE, NextFrameDecoder, next_frame_decoder

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "motionvae-trainer-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A run folder or checkpoint that cannot be read; the message names the file."""


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file of a run folder, or path itself when it names a file."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write state so that a reader (or a crash) never meets a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete temporary checkpoint files a killed run may have left in folder."""
    for tmp in Path(folder).glob(f".{CHECKPOINT_NAME}.*.tmp"):
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint (tensors on the CPU); raise CheckpointError when missing or foreign."""
    file = checkpoint_path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no checkpoint there")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{file}: unreadable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a trainer checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{file}: checkpoint version {state.get('version')}, expected {VERSION}")
    return state


@dataclass
class LoadedRun:
    """A trained model with everything needed to run, evaluate or export it."""

    path: Path
    model: MotionVAE               # eval mode; model.decoder is forward(z, condition) -> (B, n_future*F)
    spec: ModelSpec
    normaliser: Normaliser         # the model works in normalised units
    layout: FeatureLayout
    skeleton: Skeleton
    fps: float
    config: TrainConfig
    epoch: int                     # completed epochs
    history: list[dict]
    start_frames: np.ndarray       # (k, n_cond, F) raw condition windows from training clip starts

    @property
    def decoder(self) -> NextFrameDecoder:
        """The export-ready decoder: forward(z (B, latent), condition (B, n_cond*F)) -> next frame (B, F)."""
        return next_frame_decoder(self.model)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run folder or checkpoint file into an eval-mode model with its normaliser and layout."""
    file = checkpoint_path(path)
    state = read_checkpoint(file)
    try:
        spec = ModelSpec(**state["spec"])
        model = MotionVAE(spec)
        model.load_state_dict(state["model"])
        layout = parse_layout(state["layout"], f"{file}: layout")
        run = LoadedRun(
            path=file, model=model.to(device).eval(), spec=spec,
            normaliser=Normaliser.from_state(state["normaliser"]), layout=layout,
            skeleton=parse_skeleton(state["skeleton"], f"{file}: skeleton"), fps=float(state["fps"]),
            config=from_dict(state["config"]), epoch=int(state["epoch"]), history=list(state["history"]),
            start_frames=state["start_frames"].numpy())
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{file}: inconsistent checkpoint ({exc.__class__.__name__}: {exc})") from None
    return run
