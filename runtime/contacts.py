"""Planted feet found from joint positions: one rule, applied alike to mocap and to a model's output.

A foot joint is planted on a frame when it is within CONTACT_HEIGHT_M of its floor height, moves vertically
slower than CONTACT_VERTICAL_MPS, and both hold for at least CONTACT_HOLD_FRAMES frames in a row (a single
frame also catches toes skimming the floor in swing). Foot skating is the horizontal speed of planted feet.
Arrays carry time on the axis before the foot axis: heights (..., T, C), positions (..., T, C, 3).
"""
from __future__ import annotations

import numpy as np

CONTACT_HEIGHT_M = 0.025
CONTACT_VERTICAL_MPS = 0.15
CONTACT_HOLD_FRAMES = 3
FLOOR_PERCENTILE = 5.0  # a foot joint's floor: this percentile of its height over the mocap


def foot_floor(heights: np.ndarray) -> np.ndarray:
    """Floor height of each foot joint (C,) from its heights over any frames (..., C)."""
    flat = np.asarray(heights, np.float64).reshape(-1, heights.shape[-1])
    return np.percentile(flat, FLOOR_PERCENTILE, axis=0)


def held(mask: np.ndarray, frames: int, axis: int) -> np.ndarray:
    """mask where it is True for a run of at least `frames` consecutive entries along axis."""
    mask = np.moveaxis(np.asarray(mask, bool), axis, -1)
    if frames <= 1 or mask.shape[-1] == 0:
        return np.moveaxis(mask.copy(), -1, axis)
    # Run lengths by cumulative counts: a run's length is reached at its end, then spread back over it.
    t = mask.shape[-1]
    idx = np.arange(t)
    last_false = np.maximum.accumulate(np.where(~mask, idx, -1), axis=-1)
    length_so_far = idx - last_false                         # position within the current run (1-based)
    next_false = np.minimum.accumulate(np.where(~mask, idx, t)[..., ::-1], axis=-1)[..., ::-1]
    run_length = length_so_far + (next_false - idx) - 1
    return np.moveaxis(mask & (run_length >= frames), -1, axis)


def planted_mask(heights: np.ndarray, fps: float, floor: np.ndarray) -> np.ndarray:
    """Planted frames (..., T, C) of foot joints from their world heights (..., T, C) and floors (C,)."""
    heights = np.asarray(heights, np.float64)
    vertical = np.zeros_like(heights)
    if heights.shape[-2] > 1:
        vertical[..., 1:, :] = np.abs(np.diff(heights, axis=-2)) * fps
        vertical[..., 0, :] = vertical[..., 1, :]
    near = (heights - floor < CONTACT_HEIGHT_M) & (vertical < CONTACT_VERTICAL_MPS)
    return held(near, CONTACT_HOLD_FRAMES, axis=-2)


def horizontal_speed(positions: np.ndarray, fps: float) -> np.ndarray:
    """Horizontal (x, z) speed (..., T, C) of joints (..., T, C, 3) between frames t-1 and t; frame 0 is 0."""
    positions = np.asarray(positions, np.float64)
    speed = np.zeros(positions.shape[:-1])
    if positions.shape[-3] > 1:
        step = np.diff(positions[..., [0, 2]], axis=-3)
        speed[..., 1:, :] = np.hypot(step[..., 0], step[..., 1]) * fps
    return speed


def planted_speed(positions: np.ndarray, fps: float, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal speed and planted mask (..., T, C) of foot joints (..., T, C, 3); frame 0 never counts as planted.

    Frame 0 has no frame before it to slide from, so sequences can be measured apart and pooled.
    """
    planted = planted_mask(positions[..., 1], fps, floor)
    planted[..., 0, :] = False
    return horizontal_speed(positions, fps), planted
