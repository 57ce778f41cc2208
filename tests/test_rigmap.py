"""runtime.rigmap on rigs built in code in each convention (tests/rigs.py) and on the CMU 131 skeleton:
what is matched and reported, how the mapped bones turn, and where the feet go."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime import contacts, rigcheck, rigmap
from runtime.bake import bake
from runtime.bvh import read_bvh, write_bvh
from runtime.model import load_model
from runtime.motion import Motion
from runtime.rotations import quat_to_matrix
from runtime.skeleton import Skeleton
from tests.rigs import LEGS, RigSpec, angle_deg, anonymous, rigs

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "default"
CMU_131 = Path(__file__).resolve().parents[2] / "shared" / "mocap" / "cmu_permissive_extra" / "131_01.bvh"
TOE_DIP_M = 0.005  # toes may go at most this far under the ground
SLIDE_RATIO = 1.1  # planted toes may slide at most this times as fast as the model's own
FRAMES, CHARACTERS = 600, 4


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def clip(model):
    """The shipped model walking, foot lock on (as every front end runs it by default)."""
    return bake(model, FRAMES, 0, CHARACTERS, None, foot_lock=True)


SPECS = {spec.name: spec for spec in rigs(load_model(DEFAULT_MODEL).skeleton)}


def _rig(spec: RigSpec) -> rigmap.RigBones:
    return rigmap.RigBones(spec.names, spec.parents, spec.head_array)


def _cmu_rig() -> tuple[rigmap.RigBones, object]:
    if not CMU_131.exists():
        pytest.skip(f"{CMU_131} is not here (the CMU mocap in ../shared)")
    skeleton = read_bvh(CMU_131).skeleton
    return rigmap.RigBones.from_skeleton(skeleton), skeleton


def feet(model, clip, rig: rigmap.RigBones, plan: rigmap.Transfer, toes: list[str], follow: bool = True):
    """Lowest toe height (metres) on the rig, and planted toes' sliding (m/s) on the model and on the rig, the rig's
    measured at the model's size (divided by the root scale) with runtime.contacts' rule, over every character."""
    sk = model.skeleton
    low, slides = np.inf, []
    for k in range(clip.rotations.shape[1]):
        rot = quat_to_matrix(clip.rotations[:, k].astype(np.float64))
        root = clip.root_positions[:, k].astype(np.float64)
        heads = rigmap.rig_world(sk, rig, plan, rot, root, follow_feet=follow)[0]
        model_toes = sk.forward_kinematics_matrices(rot, root)[0][:, [sk.index("LeftToeBase"),
                                                                      sk.index("RightToeBase")]]
        rig_toes = heads[:, [rig.names.index(t) for t in toes]]
        low = min(low, rig_toes[..., 1].min())
        pair = []
        for toes_xyz in (model_toes, rig_toes / plan.root_scale):
            speed, planted = contacts.planted_speed(toes_xyz, model.fps, contacts.foot_floor(toes_xyz[..., 1]))
            pair.append(speed[planted])
        slides.append(pair)
    return low, np.concatenate([s[0] for s in slides]).mean(), np.concatenate([s[1] for s in slides]).mean()


@pytest.mark.parametrize("name", [*SPECS, "cmu-asf-anonymous"])
def test_each_convention_is_matched_part_by_part_and_extra_bones_are_reported(model, name):
    spec = anonymous(SPECS["cmu-asf"]) if name.endswith("anonymous") else SPECS[name]
    found = rigmap.match(model.skeleton, _rig(spec))
    assert found.preset == spec.preset
    assert found.bone_map == spec.expected
    assert found.unmatched_joints == ()
    assert set(found.unmatched_bones) == set(spec.names) - set(spec.expected.values())


def test_a_collarbone_is_the_first_bone_off_the_spine_whatever_its_name(model):
    spec = SPECS["cmu-asf"]
    found = rigmap.match(model.skeleton, _rig(spec)).bone_map
    # The model's LeftShoulder is a collarbone; CMU's LeftShoulder is the upper arm.
    assert found["LeftShoulder"] == "LeftCollar" and found["LeftArm"] == "LeftShoulder"
    assert "lowerneck" not in found.values() and "LHipJoint" not in found.values()


@pytest.mark.parametrize("name", list(SPECS))
def test_mapped_bones_turn_in_the_world_as_the_models(model, clip, name):
    spec, sk = SPECS[name], model.skeleton
    rig = _rig(spec)
    plan = rigmap.transfer(sk, rig, rigmap.match(sk, rig).bone_map)
    for m, j in enumerate(plan.joints):
        assert angle_deg(plan.align[m], spec.align[sk.names[j]]) < 1e-6, sk.names[j]
    rot = quat_to_matrix(clip.rotations[:, 0].astype(np.float64))
    world = sk.forward_kinematics_matrices(rot, clip.root_positions[:, 0].astype(np.float64))[1]
    turn = rigmap.rig_world(sk, rig, plan, rot, clip.root_positions[:, 0])[1]
    # Thighs and shins of rigs with other leg proportions are turned to keep the feet on the model's footprints.
    check = [m for m, j in enumerate(plan.joints) if spec.leg_scale == 1.0 or sk.names[j] not in LEGS]
    error = angle_deg(turn[:, plan.bones[check]] @ spec.align_array(sk, plan.joints[check]),
                      world[:, plan.joints[check]])
    assert error.max() < 0.01, f"{sk.names[plan.joints[check][error.max(0).argmax()]]}: {error.max():.4f} deg"


@pytest.mark.parametrize("name", ["rigify", "godot"])
def test_rigs_with_other_leg_lengths_keep_the_models_ground_contact_and_stride(model, clip, name):
    spec = SPECS[name]
    rig = _rig(spec)
    plan = rigmap.transfer(model.skeleton, rig, rigmap.match(model.skeleton, rig).bone_map)
    # The hip height with the legs hanging straight: the model's, its legs below the hip joints scaled.
    offsets = model.skeleton.offsets[[model.skeleton.index(n) for n in ("LeftUpLeg", "LeftLeg", "LeftFoot",
                                                                        "LeftToeBase")], 1]
    want = (-offsets[0] - spec.leg_scale * offsets[1:].sum()) / -offsets.sum()
    assert plan.root_scale == pytest.approx(want, rel=1e-6)
    toes = [spec.expected["LeftToeBase"], spec.expected["RightToeBase"]]
    low, model_slide, rig_slide = feet(model, clip, rig, plan, toes)
    raw_low, _, raw_slide = feet(model, clip, rig, plan, toes, follow=False)
    print(f"{name}: root scale {plan.root_scale:.3f}, lowest toe {low * 1000:+.1f} mm, planted sliding "
          f"{rig_slide / model_slide:.2f}x the model's; without the feet following {raw_low * 1000:+.1f} mm, "
          f"{raw_slide / model_slide:.2f}x")
    assert low > -TOE_DIP_M, f"toes {-low * 1000:.1f} mm under the ground"
    assert rig_slide <= SLIDE_RATIO * model_slide, f"planted toes slide {rig_slide:.4f} m/s vs {model_slide:.4f}"


def test_cmu_131_maps_every_joint_and_keeps_its_toes_on_the_ground(model, clip):
    rig, skeleton = _cmu_rig()
    found = rigmap.match(model.skeleton, rig)
    assert found.preset == "cmu-asf" and found.unmatched_joints == ()
    assert found.bone_map["LeftShoulder"] == "LeftCollar" and found.bone_map["RightArm"] == "RightShoulder"
    assert {"LHipJoint", "RHipJoint", "lowerneck", "lhand", "LFingers", "LThumb"} <= set(found.unmatched_bones)
    plan = rigmap.transfer(model.skeleton, rig, found.bone_map)
    low, model_slide, rig_slide = feet(model, clip, rig, plan, ["LeftToe", "RightToe"])
    assert low > -TOE_DIP_M, f"toes {-low * 1000:.1f} mm under the ground"
    assert rig_slide <= SLIDE_RATIO * model_slide, f"planted toes slide {rig_slide:.4f} m/s vs {model_slide:.4f}"
    # Without the feet following the model's, the CMU legs (built otherwise than the model's) dip and slide.
    low, _, raw_slide = feet(model, clip, rig, plan, ["LeftToe", "RightToe"], follow=False)
    assert low < -TOE_DIP_M and raw_slide > 5 * model_slide


def test_a_rig_without_hips_is_refused_with_what_is_missing(model):
    rig = rigmap.RigBones(["a", "b"], [-1, 0], [[0, 1, 0], [0, 0, 0]])
    with pytest.raises(rigmap.RigMatchError, match="no hips"):
        rigmap.find_body(rig)
    assert rigmap.match(model.skeleton, rig).preset == "names"


@pytest.mark.parametrize("name", ["rigify", "godot"])
def test_leg_rotations_for_a_client_show_the_rig_what_rig_world_shows(model, clip, name):
    spec, sk = SPECS[name], model.skeleton
    rig = _rig(spec)
    plan = rigmap.transfer(sk, rig, rigmap.match(sk, rig).bone_map)
    rot = quat_to_matrix(clip.rotations[:, 0].astype(np.float64))
    root = clip.root_positions[:, 0].astype(np.float64)
    heads, turn = rigmap.rig_world(sk, rig, plan, rot, root)
    moved = rigmap.follow_feet_rotations(sk, rig, plan, rot, root)
    heads_again, turn_again = rigmap.rig_world(sk, rig, plan, moved, root, follow_feet=False)
    assert angle_deg(turn, turn_again).max() < 1e-6 and np.abs(heads - heads_again).max() < 1e-6
    assert angle_deg(moved, rot).max() > 1.0  # the legs did move


def test_rigcheck_reports_a_bvh_skeletons_match_and_feet(model, tmp_path, capsys):
    spec = SPECS["unreal"]
    skeleton = Skeleton(spec.names, spec.parents, np.vstack([spec.head_array[:1], spec.head_array[1:]
                                                             - spec.head_array[spec.parents[1:]]]))
    t = 3
    rotations = np.tile([0.0, 0.0, 0.0, 1.0], (t, skeleton.n_joints, 1))
    translations = np.broadcast_to(skeleton.offsets, (t, skeleton.n_joints, 3)).copy()
    write_bvh(tmp_path / "unreal.bvh", Motion(skeleton, rotations, translations, 30.0), scale=100.0)
    assert rigcheck.main([str(tmp_path / "unreal.bvh"), "--feet", "--frames", "60", "--characters", "1"]) == 0
    out = capsys.readouterr().out
    assert "preset: unreal; 22 of 22 joints driven" in out and "clavicle_l" in out
    assert "undriven bones: root, spine_02, spine_04, neck_02, upperarm_l_twist, upperarm_r_twist" in out
    assert "feet following the model: lowest toe" in out and "feet not following" in out
    assert rigcheck.main([str(tmp_path / "missing.bvh")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
