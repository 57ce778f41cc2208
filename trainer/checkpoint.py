"""Checkpoints: atomic writes, checked reads, resume rules, and loading a finished run for evaluation or export."""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from runtime.atomic import atomic_write_bytes
from runtime.features import FeatureLayout
from runtime.skeleton import Skeleton

from .config import ConfigError, TrainConfig, from_dict
from .data import Frames, FramesError, Normaliser, parse_layout, parse_skeleton
from .models import ModelSpec, MotionVAE, NextFrameDecoder, next_frame_decoder

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "motionvae-trainer-checkpoint"
VERSION = 1
Config = TypeVar("Config")  # a run's config dataclass with validate(): TrainConfig, TokenizerConfig


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


def read_checkpoint(path: str | Path, format_tag: str = FORMAT, version: int = VERSION,
                    foreign: str = "not a trainer checkpoint") -> dict:
    """Load a checkpoint of format_tag (tensors on the CPU); CheckpointError when missing or foreign.

    foreign is what the error says of a file of another format.
    """
    file = checkpoint_path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no checkpoint there")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file (a text file gives a KeyError)
        raise CheckpointError(f"{file}: unreadable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("format") != format_tag:
        raise CheckpointError(f"{file}: {foreign}")
    if state.get("version") != version:
        raise CheckpointError(f"{file}: checkpoint version {state.get('version')}, expected {version}")
    return state


def settled_config(out: Path, frames: Frames, state: dict | None, config: Config | None,
                   parse: Callable[[dict], Config], resumable: tuple[str, ...]) -> Config:
    """The validated config a run in out goes on with; state is its checkpoint when resuming, else None.

    A resumed run needs frames of the checkpoint's skeleton and layout and keeps the checkpoint's config (read
    with parse) but for the resumable settings; a new run needs a config and a run folder without a checkpoint.
    """
    if state is not None:
        _same_data_shape(state, frames)
        config = _resumed_config(parse(state["config"]), config, resumable)
    elif (out / CHECKPOINT_NAME).exists():
        raise ConfigError(f"{out} already holds a checkpoint: pass --resume, or choose another --out")
    if config is None:
        raise ConfigError("a config is needed to start a new run")
    return config.validate()


def _same_data_shape(state: dict, frames: Frames) -> None:
    """Raise FramesError when frames were made for another skeleton or layout than the checkpoint."""
    layout = parse_layout(state["layout"], "checkpoint layout")
    skeleton = parse_skeleton(state["skeleton"], "checkpoint skeleton")
    if layout != frames.layout or not skeleton.same_as(frames.skeleton):
        raise FramesError(f"{frames.path}: its skeleton or feature layout differs from the checkpoint's "
                          f"({frames.layout.n_joints} joints, {frames.layout.size} features vs "
                          f"{layout.n_joints} joints, {layout.size} features)")


def _resumed_config(saved: Config, config: Config | None, resumable: tuple[str, ...]) -> Config:
    """The checkpoint's config, with only the resumable settings (those that do not change results) from config."""
    if config is None:
        return saved
    for field in dataclasses.fields(saved):
        if field.name not in resumable and getattr(config, field.name) != getattr(saved, field.name):
            raise ConfigError(f"cannot change {field.name} when resuming "
                              f"({getattr(saved, field.name)!r} in the checkpoint)")
    return dataclasses.replace(saved, **{k: getattr(config, k) for k in resumable})


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
