from dataclasses import replace

import numpy as np
import pytest

from runtime.features import FeatureLayout, decode, encode, integrate_root
from runtime.rotations import yaw_matrix
from tests.conftest import random_motion, small_skeleton


def test_layout_blocks_and_json_round_trip():
    skel = small_skeleton()
    lay = FeatureLayout.for_skeleton(skel, 30.0)
    assert lay.contact_joints == ("LeftFoot", "RightFoot")
    assert lay.heading_joints == ("LeftUpLeg", "RightUpLeg")
    assert [b[0] for b in lay.blocks] == ["root", "positions", "velocities", "orientations", "contacts"]
    assert lay.size == 3 + 9 * 12 + 2
    assert FeatureLayout.from_json(lay.to_json()) == lay
    broken = lay.to_dict()
    broken["blocks"][1][2] += 1
    with pytest.raises(ValueError, match="block table"):
        FeatureLayout.from_dict(broken)
    newer = dict(lay.to_dict(), version=99)
    with pytest.raises(ValueError, match="newer"):
        FeatureLayout.from_dict(newer)


def test_encode_decode_reproduces_world_and_local():
    motion = random_motion(small_skeleton(), n_frames=200, seed=11)
    lay = FeatureLayout.for_skeleton(motion.skeleton, motion.fps)
    enc = encode(motion, lay)
    pose, origin, yaw = decode(enc.features.astype(np.float32).astype(np.float64), lay, motion.skeleton, enc.start)
    ref_pos, ref_rot = motion.world()
    assert np.abs(pose.positions - ref_pos).max() < 1e-5
    assert np.abs(pose.world_rotations - ref_rot).max() < 1e-5
    fk, _ = motion.skeleton.forward_kinematics(pose.local_rotations, pose.root_position)
    assert np.abs(fk - ref_pos).max() < 1e-5


def test_character_frame_faces_forward_and_stays_on_ground():
    motion = random_motion(small_skeleton(), seed=12)
    lay = FeatureLayout.for_skeleton(motion.skeleton, motion.fps)
    enc = encode(motion, lay)
    _, origin, yaw = decode(enc.features, lay, motion.skeleton, enc.start)
    assert np.allclose(origin[:, 1], 0.0)
    pos, _ = motion.world()
    left = pos[:, 3] - pos[:, 6]  # LeftUpLeg - RightUpLeg
    local = np.einsum("tji,tj->ti", yaw_matrix(yaw), left)  # into the character frame
    assert np.all(local[:, 0] > 0) and np.allclose(local[:, 2], 0.0, atol=1e-9)


def test_root_deltas_integrate_like_a_turning_walk():
    root = np.tile([0.0, 0.05, np.pi / 60], (61, 1))  # 5 cm per frame, half a turn in 60 frames
    origin, yaw = integrate_root(root)
    assert np.isclose(yaw[-1], np.pi)
    # 60 equal chords of a circle make a half circle: the end is one diameter away, to the left (+x).
    assert np.isclose(np.linalg.norm(origin[-1]), 0.05 / np.sin(np.pi / 120))
    assert origin[-1, 0] > 0 and np.isclose(origin[-1, 2], 0.05)  # sum of cos(k pi/60), k < 60, is 1


def test_mirror_swaps_contacts_and_round_trips():
    motion = random_motion(small_skeleton(), n_frames=150, seed=13, speed=0.0)
    rot, trans = motion.rotations.copy(), motion.translations.copy()
    rot[:, :6] = rot[:1, :6]  # the body and left leg hold still while the right leg swings
    trans[:] = trans[:1]
    motion = replace(motion, rotations=rot, translations=trans)
    lay = FeatureLayout.for_skeleton(motion.skeleton, motion.fps)
    a = encode(motion, lay).features
    b = encode(motion.mirrored(), lay).features
    c = lay.slice("contacts")
    assert a[:, c][:, 0].min() == 1.0 and a[:, c][:, 1].mean() < 0.5
    assert np.array_equal(a[:, c], b[:, c][:, ::-1])
    again = encode(motion.mirrored().mirrored(), lay).features
    assert np.abs(again - a).max() < 1e-8
