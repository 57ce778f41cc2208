"""Measures of motion that apply alike to mocap clips and to model rollouts (numpy only).

Gait (speed and turning of the body's ground path over a gait cycle, read off world joint positions, so it
does not depend on how a model defines its character frame), the share of frames in each gait, frozen windows,
and Gaussian statistics for Frechet distances. Time is the last axis of per-frame series (..., T).
"""
from __future__ import annotations

import numpy as np

from runtime.features import FeatureLayout, character_frames
from runtime.rotations import yaw_matrix

GAIT_WINDOW_S = 1.0      # speed and turning are net change over this long: a whole gait cycle of sway and twist
# (name, lowest speed m/s): each gait runs up to the next one's lowest speed.
GAITS = (("standing", 0.0), ("walking", 0.3), ("jogging", 1.5), ("running", 2.5))
FREEZE_WINDOW_S = 2.0    # a window is frozen when the joints' mean world speed stays below FREEZE_SPEED
FREEZE_SPEED = 0.05


def gait_series(origin: np.ndarray, yaw: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Speed (m/s) and unsigned turning rate (deg/s) over GAIT_WINDOW_S windows of a ground path.

    origin (..., T, 3) and yaw (..., T) are where the body is and which way it faces, frame by frame (see
    character_path); each window's net displacement and net turn count, so the hips' sway and twist within a
    gait cycle do not.
    """
    width = min(max(1, round(GAIT_WINDOW_S * fps)), origin.shape[-2] - 1)
    step = origin[..., width:, :] - origin[..., :-width, :]
    heading = np.unwrap(yaw, axis=-1)
    seconds = width / fps
    return (np.hypot(step[..., 0], step[..., 2]) / seconds,
            np.abs(heading[..., width:] - heading[..., :-width]) / seconds * 180.0 / np.pi)


def character_path(positions: np.ndarray, root_rotation: np.ndarray, layout: FeatureLayout) -> tuple[np.ndarray, np.ndarray]:
    """Ground origin (..., 3) and heading (...) of world poses: joint positions (..., J, 3), root rotation (..., 3, 3)."""
    return character_frames(positions, root_rotation[..., None, :, :], layout)


def gait_summary(speed: np.ndarray, turn: np.ndarray) -> dict:
    """Percentiles of speed and turning and the share of frames in each gait, from flat samples."""
    speed, turn = np.ravel(speed), np.ravel(turn)
    out = {"speed_p10": float(np.percentile(speed, 10)), "speed_p50": float(np.percentile(speed, 50)),
           "speed_p90": float(np.percentile(speed, 90)),
           "turn_p50": float(np.percentile(turn, 50)), "turn_p90": float(np.percentile(turn, 90))}
    edges = [low for _, low in GAITS[1:]]
    counts = np.bincount(np.searchsorted(edges, speed, side="right"), minlength=len(GAITS))
    out.update({f"share_{name}": float(c / len(speed)) for (name, _), c in zip(GAITS, counts)})
    return out


def frozen_windows(joint_speed: np.ndarray, fps: float) -> np.ndarray:
    """Whether each non-overlapping FREEZE_WINDOW_S window of mean joint speeds (..., T) stays below FREEZE_SPEED."""
    width = max(1, round(FREEZE_WINDOW_S * fps))
    n = joint_speed.shape[-1] // width
    return joint_speed[..., : n * width].reshape(joint_speed.shape[:-1] + (n, width)).mean(-1) < FREEZE_SPEED


def joint_speed(positions: np.ndarray, fps: float) -> np.ndarray:
    """Mean world speed of the joints (..., T) of world positions (..., T, J, 3); frame 0 is 0."""
    out = np.zeros(positions.shape[:-2])
    if positions.shape[-3] > 1:
        out[..., 1:] = np.linalg.norm(np.diff(positions, axis=-3), axis=-1).mean(-1) * fps
    return out


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Frechet distance between Gaussians: |ma - mb|^2 + tr(Ca + Cb - 2 (Ca^1/2 Cb Ca^1/2)^1/2)."""
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def gaussian(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of samples (..., D) over all leading axes."""
    flat = samples.reshape(-1, samples.shape[-1]).astype(np.float64)
    return flat.mean(0), np.cov(flat, rowvar=False)


def standardiser(samples: np.ndarray, blocks: list[slice]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and scale of samples (N, D), each column's scale floored at a tenth of its block's.

    Near-constant columns (the root joint's own x and z in its character frame) would otherwise turn
    millimetre errors into huge z-scores.
    """
    mean, std = samples.mean(0), samples.std(0)
    for block in blocks:
        typical = np.sqrt((std[block] ** 2).mean())
        std[block] = np.maximum(std[block], 0.1 * typical) if typical > 1e-9 else 1.0
    return mean, std


def frame_quantities(prev: np.ndarray, cur: np.ndarray, layout: FeatureLayout, fps: float) -> dict[str, np.ndarray]:
    """Per-frame measures of raw frames cur (..., F) that follow frames prev (..., F), read off the features.

    root_speed, pose_speed (mean joint speed in the character frame) and root_height (joint 0) are (...);
    skate (horizontal world speed of each contact joint, m/s) and contact (the frame's own labels) are (..., C).
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
        out["contact"] = cur[..., layout.slice("contacts")] > 0.5
    return out
