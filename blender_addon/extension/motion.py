"""Stepping the model: the one place that starts a controller, so live play and bakes of a seed agree."""
from __future__ import annotations

import numpy as np

from .runtime.bake import bake
from .runtime.control import ControlScript
from .runtime.controller import Controller
from .runtime.model import MotionModel


def start_controller(model: MotionModel, seed: int, start: int | None, foot_lock: bool = True) -> Controller:
    """A one-character controller on a start frame (None: picked by the seed), as runtime.bake.bake starts it."""
    ctrl = Controller(model, 1, seed=seed, foot_lock=foot_lock)
    ctrl.reset(start=start)
    return ctrl


def run(model: MotionModel, frames: int, seed: int, start: int | None,
        control: ControlScript | None = None, foot_lock: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Step frames times, steered by control: root positions (T, 3) and local rotations (T, J, 4) (x, y, z, w)."""
    clip = bake(model, frames, seed, 1, start, control=control, foot_lock=foot_lock)
    return clip.root_positions[:, 0], clip.rotations[:, 0]
