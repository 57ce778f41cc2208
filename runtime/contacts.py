"""Planted feet found from joint positions alone: the one rule benchmarks and evaluations share.

A foot joint is planted on a frame when it is within PLANTED_HEIGHT_M of its floor, moves vertically slower
than PLANTED_VERTICAL_MPS, and stays so for at least PLANTED_MIN_FRAMES frames in a row (a one-frame rule
also catches toes skimming the floor in swing). The same rule is applied to mocap and to model output, so
their sliding speeds compare like for like; a joint's floor is a low percentile of its height in the mocap.
"""
from __future__ import annotations

import numpy as np

PLANTED_HEIGHT_M = 0.025
PLANTED_VERTICAL_MPS = 0.15
PLANTED_MIN_FRAMES = 3
FLOOR_PERCENTILE = 2.0


def joint_floors(positions: np.ndarray, percentile: float = FLOOR_PERCENTILE) -> np.ndarray:
    """Each joint's floor height (K,): a low percentile of its height in world positions (..., K, 3)."""
    y = np.asarray(positions, np.float64)[..., 1]
    return np.percentile(y.reshape(-1, y.shape[-1]), percentile, axis=0)


def _held(mask: np.ndarray, frames: int) -> np.ndarray:
    """mask (T, ...) kept only where it is part of a run of at least frames consecutive True along axis 0."""
    if frames <= 1 or len(mask) == 0:
        return mask.copy()
    t = len(mask)
    count = np.concatenate([np.zeros((1,) + mask.shape[1:], np.int64), np.cumsum(mask, axis=0)])
    starts = np.zeros((t + frames - 1,) + mask.shape[1:], np.int64)
    if t >= frames:
        # starts[s]: a full run of `frames` Trues begins at s; a frame is kept if such a run covers it.
        starts[:t - frames + 1] = (count[frames:] - count[:-frames]) == frames
    covered = np.cumsum(starts, axis=0)
    covered[frames:] -= covered[:-frames].copy()
    return covered[:t] > 0


def planted_mask(positions: np.ndarray, fps: float, floor: np.ndarray,
                 min_frames: int = PLANTED_MIN_FRAMES) -> np.ndarray:
    """Planted frames (T, ..., K) of foot joints from world positions (T, ..., K, 3) of one continuous clip.

    floor (K,) or broadcastable to (..., K): each joint's floor height (see joint_floors).
    """
    p = np.asarray(positions, np.float64)
    y = p[..., 1]
    vertical = np.zeros_like(y)
    if len(y) > 1:
        vertical[1:] = np.abs(np.diff(y, axis=0)) * fps
        vertical[0] = vertical[1]
    low = (y - np.asarray(floor, np.float64) < PLANTED_HEIGHT_M) & (vertical < PLANTED_VERTICAL_MPS)
    return _held(low, min_frames)


def planted_speeds(positions: np.ndarray, fps: float, mask: np.ndarray) -> np.ndarray:
    """Horizontal speeds (m/s) of every step whose two frames are both planted: the sliding of planted feet.

    positions (T, ..., K, 3) and mask (T, ..., K) from planted_mask; returns a flat array of speeds.
    """
    p = np.asarray(positions, np.float64)
    if len(p) < 2:
        return np.zeros(0)
    step = np.diff(p, axis=0)
    speed = np.hypot(step[..., 0], step[..., 2]) * fps
    return speed[mask[1:] & mask[:-1]]
