"""The planted-foot rule shared by the evaluator and the benchmarks: contacts found from positions alone."""
from __future__ import annotations

import numpy as np

from runtime.contacts import (CONTACT_HOLD_FRAMES, foot_floor, held, horizontal_speed, planted_mask,
                              planted_speed)

FPS = 30.0


def test_held_keeps_only_runs_at_least_as_long_as_asked():
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1], bool)
    assert held(mask, 3, axis=0).astype(int).tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1]
    assert np.array_equal(held(mask, 1, axis=0), mask)
    stacked = np.stack([mask, ~mask])  # runs along the last axis, independently per row
    assert np.array_equal(held(stacked, 3, axis=1)[0], held(mask, 3, axis=0))


def test_a_foot_is_planted_only_when_low_still_and_for_three_frames():
    t = np.arange(60)
    # Down on the floor for 20 frames, a swing arc of 20 frames, then a 2-frame touch and a long plant.
    height = np.where(t < 20, 0.03, 0.03 + 0.15 * np.sin(np.pi * np.clip(t - 20, 0, 20) / 20))
    height[40:42] = 0.03
    height[42:45] = 0.10
    height[45:] = 0.03
    floor = np.array([0.03])
    planted = planted_mask(height[:, None], FPS, floor)[:, 0]
    assert planted[:20].all() and not planted[21:40].any()
    assert not planted[40:42].any(), "a touch shorter than the hold is swing, not a plant"
    assert planted[46:].all()
    assert CONTACT_HOLD_FRAMES == 3


def test_skating_is_the_horizontal_speed_of_planted_frames_only():
    t = np.arange(30)
    feet = np.zeros((30, 2, 3))
    feet[:, 0, 2] = 0.01 * t           # planted foot sliding 1 cm a frame: 0.3 m/s
    feet[:, 1, 1] = 0.3                # a foot held high never counts, however fast it moves
    feet[:, 1, 0] = 0.1 * t
    speed, planted = planted_speed(feet, FPS, foot_floor(feet[..., 1]) * 0)
    assert not planted[0].any(), "frame 0 has nothing to slide from"
    assert planted[1:, 0].all() and not planted[:, 1].any()
    np.testing.assert_allclose(speed[planted], 0.3)
    np.testing.assert_allclose(horizontal_speed(feet, FPS)[1:, 1], 3.0)


def test_floor_is_a_low_percentile_per_joint():
    heights = np.stack([np.linspace(0.0, 1.0, 101), np.linspace(0.5, 0.7, 101)], axis=-1)
    np.testing.assert_allclose(foot_floor(heights), [0.05, 0.51])
