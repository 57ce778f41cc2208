"""Foot locking (runtime/footlock.py): its numpy form on the shipped default model, its exported form in a
model directory's step graph (trainer/foot_lock_graph.py), and the two against each other."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.controller import Controller
from runtime.features import FeatureLayout
from runtime.footlock import (STATE, STATE_WIDTH, FootLockRig, FootLockSettings, find_legs, lock_step, planted_heights,
                              raw_kinematics, settings_vector)
from runtime.model import ModelError, load_model, sha256_file
from runtime.posefk import PoseKinematics
from runtime.skeleton import Skeleton
from tests.conftest import small_skeleton

LEFT_TOE = 17  # the default skeleton's LeftToeBase, the left leg's held joint
LEFT_FOOT = 16


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


class Lock:
    """lock_step in numpy over one character, frame by frame, as the Controller runs it for older models."""

    def __init__(self, model, settings: FootLockSettings | None = None) -> None:
        rig = FootLockRig(model.skeleton, model.layout)
        self.k, self.kinematics = rig.namespace(), PoseKinematics(model.skeleton)
        self.vector = settings_vector(settings or FootLockSettings(), rig,
                                      planted_heights(model.meta, model.layout, model.start_frames), model.fps)
        self.state = np.zeros((1, rig.n_legs, STATE_WIDTH))
        self.enabled = np.ones(1, bool)

    def __call__(self, rotations, root, contacts):
        """Shown rotations and positions of one raw frame."""
        world, positions = raw_kinematics(self.kinematics, self.k, rotations, root)
        shown, positions, self.state = lock_step(np, self.k, rotations, world, positions, root[:, None], contacts,
                                                 self.state, self.enabled, self.vector)
        return shown, positions

    def field(self, name: str) -> np.ndarray:
        return self.state[0, :, STATE[name]]


def positions_of(model, rotations, root):
    return model.skeleton.forward_kinematics(np.asarray(rotations, np.float64), np.asarray(root, np.float64))[0]


def glide(model, stance, speeds, left_contact, settings=None, lift=None):
    """The stance pose carried forward (+Z) by speeds (m per frame), optionally lifted by lift (m per frame), with
    the left leg's contacts as given: shown and raw world positions (T, J, 3), shown rotations (T, J, 4) and the left
    leg's (locked, disarmed, weight) per frame."""
    rot, root = stance
    lock = Lock(model, settings)
    shown, raw, rots, states = [], [], [], []
    for t, (v, c) in enumerate(zip(speeds, left_contact)):
        root = root + np.array([0.0, 0.0 if lift is None else lift[t], v])
        q, p = lock(rot, root, np.array([[c, c, 0.0, 0.0]]))
        rots.append(q[0])
        shown.append(p[0])
        raw.append(positions_of(model, rot, root)[0])
        states.append((bool(lock.field("locked")[0]), bool(lock.field("disarmed")[0]), float(lock.field("weight")[0])))
    return np.array(shown), np.array(raw), np.array(rots), states


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
    assert np.abs(toe - toe[0]).max() < 1e-4, "the planted toe moved"
    # The flat foot's heel stays too: its pitch is held near flat.
    heel = horizontal(shown[:, LEFT_FOOT])
    assert np.abs(heel - heel[0]).max() < 1e-3, "the planted heel moved"
    skeleton = model.skeleton
    assert np.abs(positions_of(model, rots, shown[:, 0]) - shown).max() < 1e-6, "positions are not the rotations' FK"
    # The leg bends more as the body passes over the foot; the knee stays on the model's side.
    hip, knee, ankle = shown[:, 14], shown[:, 15], shown[:, 16]
    raw_normal = np.cross(raw[:, 16] - raw[:, 14], raw[:, 15] - raw[:, 14])
    assert np.all(np.sum(np.cross(ankle - hip, knee - hip) * raw_normal, axis=-1) > 0), "the knee flipped"
    assert np.allclose(np.linalg.norm(knee - hip, axis=-1), np.linalg.norm(skeleton.offsets[15]), atol=1e-6)
    # The model's other joints are untouched.
    untouched = [j for j in range(skeleton.n_joints) if j not in (14, 15, 16)]
    assert np.abs(rots[:, untouched] - stance[0][0, untouched]).max() < 1e-6


def test_a_landing_foot_is_held_from_its_first_still_frame_before_its_contact(model, stance):
    """The contact rule (pin low and vertically still) locks a foot whose contact is rising but not on yet, and a lock
    holds the foot where it was shown the frame before, so the lock's first frame does not slide."""
    frames = 12
    contact = [0.0] + [0.4] * 5 + [1.0] * 6  # between contact_off and contact_on
    shown, raw, _, states = glide(model, stance, [0.01] * frames, contact)
    first = next(t for t, (locked, _, _) in enumerate(states) if locked)
    assert first == 1, "the planted foot waited for its contact"
    toe = horizontal(shown[:, LEFT_TOE])
    assert np.abs(toe[first:] - toe[first - 1]).max() < 1e-4
    # A foot rising faster than the rule allows is not locked before its contact.
    _, _, _, states = glide(model, stance, [0.01] * frames, contact, lift=[0.01] * frames)
    assert [locked for locked, _, _ in states].index(True) == 6


def test_an_over_extended_lock_releases_smoothly_without_stretching(model, stance):
    frames = 40
    speed = 0.03  # the body glides 0.9 m/s over a planted foot: the leg cannot keep up for long
    shown, raw, _, states = glide(model, stance, [speed] * frames, [1.0] * frames)
    released = [t for t, (locked, disarmed, _) in enumerate(states) if not locked and disarmed]
    assert released, "the lock never let go"
    span = np.linalg.norm(model.skeleton.offsets[15]) + np.linalg.norm(model.skeleton.offsets[16])
    assert (np.linalg.norm(shown[:, 16] - shown[:, 14], axis=-1) <= span + 1e-6).all(), "the leg stretched"
    first = released[0]
    held = np.linalg.norm(horizontal(shown[first, LEFT_TOE] - raw[first, LEFT_TOE]))
    assert held > 0.2
    # The foot catches up over the fade frames, not in one frame, stepping over the ground.
    step = np.linalg.norm(np.diff(horizontal(shown[first - 1:first + FootLockSettings().blend_frames, LEFT_TOE]),
                                  axis=0), axis=-1)
    assert step.max() < 0.4 * held and np.abs(np.diff(step)).max() < 0.25 * held
    assert shown[first + 1:first + 6, LEFT_TOE, 1].min() > raw[first + 1:first + 6, LEFT_TOE, 1].min() + 0.01
    # Then it locks again (the contact never dropped) where it stands, and holds.
    again = next(t for t in range(first + 1, frames) if states[t][0])
    assert np.abs(horizontal(shown[again:again + 3, LEFT_TOE] - shown[again - 1, LEFT_TOE])).max() < 1e-4


def test_release_fades_out_to_the_models_pose(model, stance):
    settings = FootLockSettings()
    hold, after = 20, 12
    lift = [0.0] * hold + [0.01] * after  # the model lifts the foot as its contact ends
    shown, raw, rots, states = glide(model, stance, [0.005] * (hold + after), [1.0] * hold + [0.0] * after, settings,
                                     lift)
    toe = horizontal(shown[:, LEFT_TOE])
    step = np.linalg.norm(np.diff(toe, axis=0), axis=-1)
    held = np.linalg.norm(toe[hold - 1] - horizontal(raw[hold - 1, LEFT_TOE]))
    assert held > 0.09
    # No faster and no more sudden than a smoothstep over blend_frames on top of the model's own 5 mm per frame.
    frames = settings.blend_frames
    assert step.max() < 1.5 / frames * held + 0.01, "the release jumped"
    assert np.abs(np.diff(step)).max() < 6.0 / frames ** 2 * held + 0.005, "the release jerked"
    assert [round(w, 3) for _, _, w in states[hold:hold + frames]] == [0.926, 0.741, 0.5, 0.259, 0.074, 0.0]
    done = hold + frames - 1
    assert np.abs(rots[done:] - stance[0][0]).max() < 1e-6, "after the fade the pose is the model's"


def test_hysteresis_keeps_a_flickering_contact_from_chattering(model, stance):
    settings = FootLockSettings()
    between = (settings.contact_on + settings.contact_off) / 2
    flicker = [1.0] + [between - 0.05, between + 0.05] * 8
    _, _, _, states = glide(model, stance, [0.002] * len(flicker), flicker)
    assert all(locked for locked, _, _ in states)
    # Held in the air (no rule lock), a contact that never reaches contact_on locks nothing.
    _, _, _, states = glide(model, stance, [0.002] * 16, [settings.contact_on - 0.05, 0.0] * 8,
                            lift=[0.0] + [0.02, -0.02] * 7 + [0.02])
    assert not any(locked for locked, _, _ in states)


def test_no_foot_joint_is_shown_under_the_floor(model, stance):
    rot, root = stance
    sunk = root - np.array([0.0, 0.05, 0.0])  # the whole body 5 cm down: toes below y = 0
    lock = Lock(model, FootLockSettings(floor_m=0.0))
    feet = [model.skeleton.index(n) for n in model.layout.contact_joints]
    assert positions_of(model, rot, sunk)[0, feet, 1].min() < -0.02
    shown, positions = lock(rot, sunk, np.zeros((1, 4)))
    assert positions[0, feet, 1].min() > -1e-6
    assert np.abs(positions_of(model, shown, sunk) - positions).max() < 1e-6


def test_settings_are_checked(model):
    for bad in ({"contact_on": 0.3, "contact_off": 0.5}, {"blend_frames": 0}, {"reach": 1.0}, {"step_lift": 2.0},
                {"heel_band": -0.1}, {"step_height": 1.0}, {"planted_m": (0.0, float("nan"))}):
        with pytest.raises(ValueError, match="foot lock"):
            FootLockSettings(**bad)
    with pytest.raises(ValueError, match="planted_m must hold 4"):
        Controller(model, 1, foot_lock=FootLockSettings(planted_m=(0.02, 0.07)))


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
    fk = positions_of(model, p.local_rotations, p.root_position)
    assert np.abs(fk - p.positions).max() < 1e-5
    assert np.abs(p.local_rotations - raw.poses().local_rotations).max() > 1e-3
    # reset forgets the locks of the characters put back on a start frame, and shows them as they stand.
    k = int(np.argmax(np.abs(locked.foot_lock.held[..., :2]).max((1, 2))))
    assert np.abs(locked.foot_lock.held[k]).max() > 1e-3
    locked.reset([k], start=0)
    assert np.abs(locked.foot_lock.held[k]).max() == 0.0
    again = Controller(model, 1, seed=0, foot_lock=True)
    again.reset(start=0)
    assert np.abs(again.poses().local_rotations[0] - locked.poses().local_rotations[k]).max() < 1e-6


def test_the_exported_step_graph_locks_feet_as_numpy_does(model_dir):
    """A model exported now locks in its step graph; it agrees with lock_step in numpy on the same raw frames."""
    model = load_model(model_dir)
    assert model.foot_lock_in_graph and model.meta["foot_lock"]["version"] >= 1
    ctrl = Controller(model, 6, seed=3, foot_lock=True)
    ctrl.foot_lock.enabled[5] = False
    rig = FootLockRig(model.skeleton, model.layout)
    k, kinematics = rig.namespace(), PoseKinematics(model.skeleton)
    worst = np.zeros(3)
    for _ in range(150):
        before = ctrl.foot_lock.state.copy()
        p = ctrl.step()
        root = p.root_position[:, None].astype(np.float64)
        world, positions = raw_kinematics(kinematics, k, ctrl.state.rotations, root[:, 0])
        shown, positions, state = lock_step(np, k, ctrl.state.rotations, world, positions, root, p.contacts, before,
                                            ctrl.foot_lock.enabled, ctrl.foot_lock.vector)
        keep = ~p.reset  # a character the divergence guard put back was shown by numpy itself
        # (the heading's direction, taken from a foot seen nearly end-on, is ill-conditioned: not compared)
        steady = np.abs(state - ctrl.foot_lock.state)[keep][..., :STATE["was_heading"].start]
        worst = np.maximum(worst, [np.abs(shown - p.local_rotations)[keep].max(initial=0),
                                   np.abs(positions - p.positions)[keep].max(initial=0), steady.max(initial=0)])
        fk = positions_of(model, p.local_rotations, p.root_position)
        assert np.abs(fk - p.positions).max() < 1e-5
    assert (worst < [1e-4, 1e-4, 1e-3]).all(), f"graph and numpy differ by {worst} (rotations, positions, state)"
    assert ctrl.foot_lock.locked[:5].any(), "nothing was locked"
    assert not ctrl.foot_lock.locked[5].any() and np.abs(ctrl.foot_lock.held[5]).max() == 0.0
    # Switched off, a character's graph output is its raw pose once its fade has run out.
    assert np.abs(ctrl.poses().local_rotations[5] - ctrl.state.rotations[5]).max() < 1e-6


def test_the_graph_skips_its_lock_when_nobody_needs_it_and_lets_a_release_fade_first(model_dir):
    """All locks off and nothing held: the If in the graph shows the raw pose and keeps no state; a lock switched off
    while held still fades out before the graph stops running the lock."""
    model = load_model(model_dir)
    ctrl = Controller(model, 4, seed=3, foot_lock=True)
    for _ in range(60):
        ctrl.step()
    assert ctrl.foot_lock.locked.any(), "nothing was locked"
    ctrl.foot_lock.enabled[:] = False
    weights = []
    for _ in range(60):
        ctrl.step()
        weights.append(ctrl.foot_lock.weight.max())
    assert 0 < weights[0] < 1 and weights[-1] == 0.0, f"the release did not fade: {weights[:5]}"
    assert np.all(np.diff(weights) <= 1e-6), "a fading lock came back"
    p = ctrl.step()
    assert not ctrl.foot_lock.state.any(), "the skipped lock kept state"
    assert np.array_equal(p.local_rotations, ctrl.state.rotations) and np.array_equal(p.positions, ctrl._positions)


def test_custom_settings_reach_the_graph(model_dir):
    model = load_model(model_dir)
    ctrl = Controller(model, 4, seed=1, foot_lock=FootLockSettings(floor_m=0.5))  # a floor half a metre up
    feet = [model.skeleton.index(n) for n in model.layout.contact_joints]
    for _ in range(30):
        p = ctrl.step()
        assert p.positions[:, feet, 1].min() > 0.5 - 1e-5
    assert ctrl._positions[:, feet, 1].min() < 0.4  # the raw feet are below it


def test_models_without_a_current_foot_lock_are_told_to_re_export(model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["foot_lock"]["version"] = 999
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="foot lock is version 999.*re-export"):
        load_model(folder)
    assert sha256_file(folder / "decoder.onnx") == meta["files"]["decoder.onnx"]["sha256"]
