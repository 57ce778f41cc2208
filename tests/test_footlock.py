"""Foot locking (runtime/footlock.py) on the shipped default model."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.controller import Controller
from runtime.features import FeatureLayout
from runtime.footlock import FootLock, FootLockSettings, find_legs
from runtime.model import load_model
from runtime.skeleton import Skeleton
from tests.conftest import small_skeleton

LEFT_TOE = 17  # the default skeleton's LeftToeBase, the left leg's held joint


@pytest.fixture(scope="module")
def model():
    return load_model(None)


@pytest.fixture(scope="module")
def stance(model):
    """A start pose with the left foot planted and its knee bent (start frame 2): rotations (1, J, 4), root (1, 3)."""
    ctrl = Controller(model, 1, seed=0)
    ctrl.reset(start=2)
    p = ctrl.poses()
    return p.local_rotations.copy(), p.root_position.copy()


def glide(model, stance, speeds, left_contact, settings=None):
    """The stance pose carried forward (+Z) by speeds (m per frame) with the left leg's contacts as given:
    shown and raw world positions (T, J, 3), shown rotations (T, J, 4) and the left leg's lock state per frame."""
    rot, root = stance
    lock = FootLock(model.skeleton, model.layout, 1, settings)
    shown, raw, rots, states = [], [], [], []
    for v, c in zip(speeds, left_contact):
        root = root + np.array([0.0, 0.0, v], np.float32)
        q = lock.apply(rot, root, np.array([[c, c, 0.0, 0.0]], np.float32))
        rots.append(q[0])
        shown.append(lock.positions(q, root)[0])
        raw.append(lock.positions(rot, root)[0])
        states.append((bool(lock.locked[0, 0]), bool(lock.armed[0, 0]), float(lock.weight[0, 0])))
    return np.array(shown, np.float64), np.array(raw, np.float64), np.array(rots), states


def horizontal(p: np.ndarray) -> np.ndarray:
    return p[..., [0, 2]]


def test_legs_are_found_from_the_contact_joints(model):
    legs = find_legs(model.skeleton, model.layout)
    names = model.skeleton.names
    assert [(names[g.hip], names[g.knee], names[g.ankle], names[g.pin]) for g in legs] == [
        ("LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase"), ("RightUpLeg", "RightLeg", "RightFoot", "RightToeBase")]
    # The Bandai hierarchy (names as in its BVH files): a foot and a toe contact per leg.
    bandai = Skeleton(["Hips", "Spine", "UpperLeg_L", "LowerLeg_L", "Foot_L", "Toes_L", "UpperLeg_R", "LowerLeg_R",
                       "Foot_R", "Toes_R"], [-1, 0, 0, 2, 3, 4, 0, 6, 7, 8],
                      [[0, 0, 0], [0, 0.1, 0], [0.1, -0.05, 0], [0, -0.4, 0], [0, -0.4, 0], [0, -0.05, 0.12],
                       [-0.1, -0.05, 0], [0, -0.4, 0], [0, -0.4, 0], [0, -0.05, 0.12]])
    layout = FeatureLayout.for_skeleton(bandai, 30)
    assert layout.contact_joints == ("Foot_L", "Toes_L", "Foot_R", "Toes_R")
    legs = find_legs(bandai, layout)
    assert [(g.hip, g.knee, g.ankle, g.pin, g.columns) for g in legs] == [(2, 3, 4, 5, (0, 1)), (6, 7, 8, 9, (2, 3))]
    # A foot without a toe contact holds its ankle.
    small = small_skeleton()
    legs = find_legs(small, FeatureLayout.for_skeleton(small, 30))
    assert [(g.hip, g.knee, g.ankle, g.pin) for g in legs] == [(3, 4, 5, 5), (6, 7, 8, 8)]


def test_a_sliding_foot_is_pinned_by_the_leg(model, stance):
    frames = 40
    shown, raw, rots, states = glide(model, stance, [0.005] * frames, [1.0] * frames)
    assert all(locked for locked, _, _ in states)
    toe = horizontal(shown[:, LEFT_TOE])
    assert np.abs(horizontal(raw[:, LEFT_TOE])[-1] - horizontal(raw[:, LEFT_TOE])[0]).max() > 0.19  # the model slid
    assert np.abs(toe - toe[0]).max() < 1e-3, "the planted toe moved"
    skeleton = model.skeleton
    fk = skeleton.forward_kinematics(rots.astype(np.float64), shown[:, 0])[0]
    assert np.abs(fk - shown).max() < 1e-5, "positions are not the FK of the shown rotations"
    # The leg bends more as the body passes over the foot; the knee stays on the model's side.
    hip, knee, ankle = shown[:, 14], shown[:, 15], shown[:, 16]
    raw_normal = np.cross(raw[:, 16] - raw[:, 14], raw[:, 15] - raw[:, 14])
    assert np.all(np.sum(np.cross(ankle - hip, knee - hip) * raw_normal, axis=-1) > 0), "the knee flipped"
    assert np.allclose(np.linalg.norm(knee - hip, axis=-1), np.linalg.norm(skeleton.offsets[15]), atol=1e-5)
    # The model's other joints are untouched.
    untouched = [j for j in range(skeleton.n_joints) if j not in (14, 15, 16)]
    assert np.abs(rots[:, untouched] - stance[0][0, untouched]).max() < 1e-6


def test_an_over_extended_lock_releases_smoothly_without_stretching(model, stance):
    frames = 40
    speed = 0.03  # the body glides 0.9 m/s over a planted foot: the leg cannot keep up for long
    shown, raw, _, states = glide(model, stance, [speed] * frames, [1.0] * frames)
    released = [t for t, (locked, armed, _) in enumerate(states) if not locked and not armed]
    assert released, "the lock never let go"
    span = np.linalg.norm(model.skeleton.offsets[15]) + np.linalg.norm(model.skeleton.offsets[16])
    assert (np.linalg.norm(shown[:, 16] - shown[:, 14], axis=-1) <= span + 1e-6).all(), "the leg stretched"
    first = released[0]
    held = np.linalg.norm(horizontal(shown[first, LEFT_TOE] - raw[first, LEFT_TOE]))
    assert held > 0.2
    # The foot catches up over the fade frames, not in one frame.
    step = np.linalg.norm(np.diff(horizontal(shown[first - 1:first + 8, LEFT_TOE]), axis=0), axis=-1)
    assert step.max() < 0.4 * held and np.abs(np.diff(step)).max() < 0.25 * held
    # Then it re-locks where the model has it (the contact never dropped), and holds again.
    again = next(t for t in range(first + 1, frames) if states[t][0])
    assert np.abs(horizontal(shown[again, LEFT_TOE] - raw[again, LEFT_TOE])).max() < 1e-4


def test_release_fades_out_to_the_models_pose(model, stance):
    settings = FootLockSettings()
    hold, after = 20, 12
    shown, raw, rots, states = glide(model, stance, [0.005] * (hold + after), [1.0] * hold + [0.0] * after, settings)
    toe = horizontal(shown[:, LEFT_TOE])
    step = np.linalg.norm(np.diff(toe, axis=0), axis=-1)
    held = np.linalg.norm(toe[hold - 1] - horizontal(raw[hold - 1, LEFT_TOE]))
    assert held > 0.09
    # No faster and no more sudden than a smoothstep over blend_frames on top of the model's own 5 mm per frame.
    frames = settings.blend_frames
    assert step.max() < 1.5 / frames * held + 0.01, "the release jumped"
    assert np.abs(np.diff(step)).max() < 6.0 / frames ** 2 * held + 0.005, "the release jerked"
    assert [round(w, 3) for _, _, w in states[hold:hold + settings.blend_frames]] == [0.926, 0.741, 0.5, 0.259, 0.074, 0.0]
    done = hold + settings.blend_frames - 1
    assert np.abs(rots[done:] - stance[0][0]).max() < 1e-6, "after the fade the pose is the model's"


def test_hysteresis_keeps_a_flickering_contact_from_chattering(model, stance):
    settings = FootLockSettings()
    between = (settings.contact_on + settings.contact_off) / 2
    flicker = [1.0] + [between - 0.05, between + 0.05] * 8
    _, _, _, states = glide(model, stance, [0.002] * len(flicker), flicker)
    assert all(locked for locked, _, _ in states)
    _, _, _, states = glide(model, stance, [0.002] * 16, [settings.contact_on - 0.05, 0.0] * 8)
    assert not any(locked for locked, _, _ in states)


def test_no_foot_joint_is_shown_under_the_floor(model, stance):
    rot, root = stance
    sunk = root - np.array([0.0, 0.05, 0.0], np.float32)  # the whole body 5 cm down: toes below y = 0
    lock = FootLock(model.skeleton, model.layout, 1, FootLockSettings(floor_m=0.0))
    contacts = np.zeros((1, 4), np.float32)
    raw = lock.positions(rot, sunk)[0]
    feet = [model.skeleton.index(n) for n in model.layout.contact_joints]
    assert raw[feet, 1].min() < -0.02
    shown = lock.positions(lock.apply(rot, sunk, contacts), sunk)[0]
    assert shown[feet, 1].min() > -1e-5


def test_settings_are_checked():
    for bad in ({"contact_on": 0.3, "contact_off": 0.5}, {"blend_frames": 0}, {"reach": 1.0}, {"step_lift": 2.0}):
        with pytest.raises(ValueError, match="foot lock"):
            FootLockSettings(**bad)


def test_controller_shows_locked_poses_without_changing_the_model(model):
    raw = Controller(model, 3, seed=5)
    locked = Controller(model, 3, seed=5, foot_lock=True)
    held = np.zeros(2)
    for _ in range(120):
        a, b = raw.step(), locked.step()
        assert np.array_equal(raw.features(), locked.features()), "the lock changed what the model sees"
        assert np.array_equal(a.root_position, b.root_position)
        held += locked.foot_lock.locked.sum(0)
    assert held.min() > 50, "the default model's feet were hardly ever locked"
    p = locked.poses()
    fk = model.skeleton.forward_kinematics(p.local_rotations.astype(np.float64), p.root_position.astype(np.float64))[0]
    assert np.abs(fk - p.positions).max() < 1e-5
    assert np.abs(p.local_rotations - raw.poses().local_rotations).max() > 1e-3
    # reset forgets the locks of the characters put back on a start frame, and shows them as they stand.
    k = int(np.argmax(np.abs(locked.foot_lock.held[..., [0, 2]]).max((1, 2))))
    assert np.abs(locked.foot_lock.held[k]).max() > 1e-3
    locked.reset([k], start=0)
    assert np.abs(locked.foot_lock.held[k]).max() == 0.0
    again = Controller(model, 1, seed=0, foot_lock=True)
    again.reset(start=0)
    assert np.abs(again.poses().local_rotations[0] - locked.poses().local_rotations[k]).max() < 1e-6
