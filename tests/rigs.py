"""Rigs built in code in the conventions users bring (Mixamo, Rigify, Unreal, Godot's humanoid profile, CMU BVH
conversions): names, hierarchy, in-between and extra bones, rest poses (T-pose, A-pose, bent knees) and
proportions (legs 0.9x and 1.15x), made from a model skeleton so that what each bone should do is known.

Each RigSpec says which bone each model joint should drive (`expected`) and the rest alignment each driven joint
should get (`align`: the rotation taking the model's rest directions onto the rig's, known from how the rig was
posed), so tests compare engines against the model without trusting runtime.rigmap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.skeleton import Skeleton

LEFT_ARM = ("LeftArm", "LeftForeArm", "LeftHand")
RIGHT_ARM = ("RightArm", "RightForeArm", "RightHand")
LEGS = ("LeftUpLeg", "LeftLeg", "RightUpLeg", "RightLeg")  # turned by the feet's IK on rigs of other proportions


@dataclass
class RigSpec:
    """A rig: bones (names, parents, heads in the model's axes, metres, standing on y = 0) and what is known."""

    name: str
    preset: str
    names: list[str] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    heads: list[np.ndarray] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)  # model joint -> bone
    align: dict[str, np.ndarray] = field(default_factory=dict)  # model joint -> S
    leg_scale: float = 1.0
    roll_seed: int | None = None  # random bone rolls (engines' own bone orientations) when set

    def add(self, name: str, parent: str | None, head: np.ndarray, joint: str | None = None) -> None:
        """A bone at head under parent (None: a root); joint: the model joint it should be driven by."""
        self.names.append(name)
        self.parents.append(-1 if parent is None else self.names.index(parent))
        self.heads.append(np.asarray(head, np.float64))
        if joint is not None:
            self.expected[joint] = name

    def align_array(self, skeleton: Skeleton, joints: np.ndarray) -> np.ndarray:
        """(M, 3, 3) the known alignment of joints (indices into skeleton)."""
        return np.stack([self.align[skeleton.names[j]] for j in joints])

    @property
    def head_array(self) -> np.ndarray:
        """(B, 3) heads."""
        return np.array(self.heads)

    def rolls(self) -> np.ndarray:
        """Each bone's roll about its own axis (radians): 0, or random ones for rolled rigs."""
        if self.roll_seed is None:
            return np.zeros(len(self.names))
        return np.random.default_rng(self.roll_seed).uniform(-np.pi, np.pi, len(self.names))


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


class _Posed:
    """The model's rest joint positions, re-posed: arms turned (A-pose), knees bent, legs scaled."""

    def __init__(self, skeleton: Skeleton, a_pose: float = 0.0, leg_scale: float = 1.0, knee: float = 0.0) -> None:
        self.skeleton = skeleton
        self.p = skeleton.rest_positions() + skeleton.offsets[0]
        self.align = {n: np.eye(3) for n in skeleton.names}
        for joint, sign in (("LeftArm", -1.0), ("RightArm", 1.0)):
            self._turn(joint, _rotation([0, 0, 1], sign * a_pose))
        for side in ("Left", "Right"):
            self._turn(f"{side}Leg", _rotation([1, 0, 0], knee))
            hip = self.p[skeleton.index(f"{side}UpLeg")]
            below = self._below(f"{side}UpLeg")
            self.p[below] = hip + (self.p[below] - hip) * leg_scale
        # Lift the body so the toes stand where the model's do.
        self.p[:, 1] += (skeleton.rest_positions() + skeleton.offsets[0])[skeleton.index("LeftToeBase"), 1] \
            - self.p[skeleton.index("LeftToeBase"), 1]

    def _below(self, joint: str) -> list[int]:
        j = self.skeleton.index(joint)
        out = [j]
        for k in range(j + 1, self.skeleton.n_joints):
            if int(self.skeleton.parents[k]) in out:
                out.append(k)
        return out

    def _turn(self, joint: str, r: np.ndarray) -> None:
        below = self._below(joint)
        pivot = self.p[below[0]].copy()
        self.p[below] = (self.p[below] - pivot) @ r.T + pivot
        for k in below:
            self.align[self.skeleton.names[k]] = r @ self.align[self.skeleton.names[k]]

    def __getitem__(self, joint: str) -> np.ndarray:
        return self.p[self.skeleton.index(joint)].copy()

    def between(self, a: str, b: str, t: float) -> np.ndarray:
        """A point a share t of the way from joint a to joint b."""
        return (1 - t) * self[a] + t * self[b]


def _limbs(spec: RigSpec, body: _Posed, names: dict[str, str], chest: str, hips: str,
           twist: bool = False, collar_at_chest: bool = False) -> None:
    """Arms and legs in a naming scheme (names: part -> "{Side}..." patterns)."""
    for side, s, S in (("Left", "l", "L"), ("Right", "r", "R")):
        def n(part: str) -> str:
            return names[part].format(Side=side, s=s, S=S)
        spec.add(n("shoulder"), chest, body[f"{side}Shoulder"] if not collar_at_chest else body["Spine2"],
                 f"{side}Shoulder")
        spec.add(n("upper_arm"), n("shoulder"), body[f"{side}Arm"], f"{side}Arm")
        spec.add(n("forearm"), n("upper_arm"), body[f"{side}ForeArm"], f"{side}ForeArm")
        spec.add(n("hand"), n("forearm"), body[f"{side}Hand"], f"{side}Hand")
        if twist:  # twist bones hang beside the chain: no part of it
            spec.add(n("upper_arm") + "_twist", n("upper_arm"), body.between(f"{side}Arm", f"{side}ForeArm", 0.5))
        spec.add(n("thigh"), hips, body[f"{side}UpLeg"], f"{side}UpLeg")
        spec.add(n("shin"), n("thigh"), body[f"{side}Leg"], f"{side}Leg")
        spec.add(n("foot"), n("shin"), body[f"{side}Foot"], f"{side}Foot")
        spec.add(n("toe"), n("foot"), body[f"{side}ToeBase"], f"{side}ToeBase")
    spec.align.update(body.align)


def rigs(skeleton: Skeleton) -> list[RigSpec]:
    """One rig per convention, from the model's skeleton (its joint names as the default model has them)."""
    out = []

    body = _Posed(skeleton)
    spec = RigSpec("mixamo", "mixamo")
    spec.add("mixamorig:Hips", None, body["Hips"], "Hips")
    for a, b in (("Spine", "Hips"), ("Spine1", "Spine"), ("Spine2", "Spine1"), ("Neck", "Spine2"), ("Head", "Neck")):
        spec.add(f"mixamorig:{a}", f"mixamorig:{b}", body[a], a)
    spec.add("mixamorig:HeadTop_End", "mixamorig:Head", body["Head"] + [0, 0.18, 0])
    _limbs(spec, body, {"shoulder": "mixamorig:{Side}Shoulder", "upper_arm": "mixamorig:{Side}Arm",
                        "forearm": "mixamorig:{Side}ForeArm", "hand": "mixamorig:{Side}Hand",
                        "thigh": "mixamorig:{Side}UpLeg", "shin": "mixamorig:{Side}Leg",
                        "foot": "mixamorig:{Side}Foot", "toe": "mixamorig:{Side}ToeBase"},
           "mixamorig:Spine2", "mixamorig:Hips")
    spec.add("mixamorig:LeftHandIndex1", "mixamorig:LeftHand", body["LeftHand"] + [0.09, 0, 0.02])
    out.append(spec)

    # Rigify: A-pose, legs 1.15x, the DEF- chain with split (twist) segments and extra deform bones.
    body = _Posed(skeleton, a_pose=45.0, leg_scale=1.15)
    spec = RigSpec("rigify", "rigify", leg_scale=1.15, roll_seed=3)
    spec.add("DEF-spine", None, body["Hips"], "Hips")
    spec.add("DEF-spine.001", "DEF-spine", body["Spine"], "Spine")
    spec.add("DEF-spine.002", "DEF-spine.001", body["Spine1"], "Spine1")
    spec.add("DEF-spine.003", "DEF-spine.002", body["Spine2"], "Spine2")
    spec.add("DEF-spine.004", "DEF-spine.003", body["Neck"], "Neck")
    spec.add("DEF-spine.005", "DEF-spine.004", body.between("Neck", "Head", 0.5))
    spec.add("DEF-spine.006", "DEF-spine.005", body["Head"], "Head")
    for side, S in (("Left", "L"), ("Right", "R")):
        spec.add(f"DEF-shoulder.{S}", "DEF-spine.003", body[f"{side}Shoulder"], f"{side}Shoulder")
        spec.add(f"DEF-upper_arm.{S}", f"DEF-shoulder.{S}", body[f"{side}Arm"], f"{side}Arm")
        spec.add(f"DEF-upper_arm.{S}.001", f"DEF-upper_arm.{S}", body.between(f"{side}Arm", f"{side}ForeArm", 0.5))
        spec.add(f"DEF-forearm.{S}", f"DEF-upper_arm.{S}.001", body[f"{side}ForeArm"], f"{side}ForeArm")
        spec.add(f"DEF-forearm.{S}.001", f"DEF-forearm.{S}", body.between(f"{side}ForeArm", f"{side}Hand", 0.5))
        spec.add(f"DEF-hand.{S}", f"DEF-forearm.{S}.001", body[f"{side}Hand"], f"{side}Hand")
        spec.add(f"DEF-breast.{S}", "DEF-spine.003", body.between("Spine1", f"{side}Shoulder", 0.5) + [0, 0, 0.1])
        spec.add(f"DEF-pelvis.{S}", "DEF-spine", body.between("Hips", f"{side}UpLeg", 0.5) + [0, 0.05, 0.05])
        spec.add(f"DEF-thigh.{S}", "DEF-spine", body[f"{side}UpLeg"], f"{side}UpLeg")
        spec.add(f"DEF-thigh.{S}.001", f"DEF-thigh.{S}", body.between(f"{side}UpLeg", f"{side}Leg", 0.5))
        spec.add(f"DEF-shin.{S}", f"DEF-thigh.{S}.001", body[f"{side}Leg"], f"{side}Leg")
        spec.add(f"DEF-shin.{S}.001", f"DEF-shin.{S}", body.between(f"{side}Leg", f"{side}Foot", 0.5))
        spec.add(f"DEF-foot.{S}", f"DEF-shin.{S}.001", body[f"{side}Foot"], f"{side}Foot")
        spec.add(f"DEF-toe.{S}", f"DEF-foot.{S}", body[f"{side}ToeBase"], f"{side}ToeBase")
    spec.align.update(body.align)
    out.append(spec)

    # Unreal Mannequin: a root on the ground, five spine bones, two neck bones, twist bones, rolled bones.
    body = _Posed(skeleton, a_pose=30.0)
    spec = RigSpec("unreal", "unreal", roll_seed=5)
    spec.add("root", None, np.zeros(3))
    spec.add("pelvis", "root", body["Hips"], "Hips")
    chain = [("spine_01", body["Spine"], "Spine"), ("spine_02", body.between("Spine", "Spine1", 0.5), None),
             ("spine_03", body["Spine1"], "Spine1"), ("spine_04", body.between("Spine1", "Spine2", 0.5), None),
             ("spine_05", body["Spine2"], "Spine2")]
    parent = "pelvis"
    for name, head, joint in chain:
        spec.add(name, parent, head, joint)
        parent = name
    spec.add("neck_01", "spine_05", body["Neck"], "Neck")
    spec.add("neck_02", "neck_01", body.between("Neck", "Head", 0.5))
    spec.add("head", "neck_02", body["Head"], "Head")
    _limbs(spec, body, {"shoulder": "clavicle_{s}", "upper_arm": "upperarm_{s}", "forearm": "lowerarm_{s}",
                        "hand": "hand_{s}", "thigh": "thigh_{s}", "shin": "calf_{s}", "foot": "foot_{s}",
                        "toe": "ball_{s}"}, "spine_05", "pelvis", twist=True)
    out.append(spec)

    # Godot's SkeletonProfileHumanoid names, legs 0.9x, knees slightly bent in the rest pose.
    body = _Posed(skeleton, leg_scale=0.9, knee=-10.0)
    spec = RigSpec("godot", "godot", leg_scale=0.9)
    spec.add("Hips", None, body["Hips"], "Hips")
    for name, parent, joint in (("Spine", "Hips", "Spine"), ("Chest", "Spine", "Spine1"),
                                ("UpperChest", "Chest", "Spine2"), ("Neck", "UpperChest", "Neck"),
                                ("Head", "Neck", "Head")):
        spec.add(name, parent, body[joint], joint)
    _limbs(spec, body, {"shoulder": "{Side}Shoulder", "upper_arm": "{Side}UpperArm", "forearm": "{Side}LowerArm",
                        "hand": "{Side}Hand", "thigh": "{Side}UpperLeg", "shin": "{Side}LowerLeg",
                        "foot": "{Side}Foot", "toe": "{Side}Toes"}, "UpperChest", "Hips")
    out.append(spec)

    # A CMU BVH conversion: in-between bones of zero offset (LHipJoint, LowerBack), collars named Shoulder.
    body = _Posed(skeleton)
    spec = RigSpec("cmu-bvh", "cmu-bvh", roll_seed=9)
    spec.add("Hips", None, body["Hips"], "Hips")
    spec.add("LowerBack", "Hips", body["Hips"], "Spine")
    spec.add("Spine", "LowerBack", body["Spine1"], "Spine1")
    spec.add("Spine1", "Spine", body["Spine2"], "Spine2")
    spec.add("Neck", "Spine1", body["Neck"], "Neck")
    spec.add("Neck1", "Neck", body.between("Neck", "Head", 0.5))
    spec.add("Head", "Neck1", body["Head"], "Head")
    for side, letter in (("Left", "L"), ("Right", "R")):
        spec.add(f"{letter}HipJoint", "Hips", body["Hips"])
    for side, letter in (("Left", "L"), ("Right", "R")):
        spec.add(f"{side}Shoulder", "Spine1", body[f"{side}Shoulder"], f"{side}Shoulder")
        spec.add(f"{side}Arm", f"{side}Shoulder", body[f"{side}Arm"], f"{side}Arm")
        spec.add(f"{side}ForeArm", f"{side}Arm", body[f"{side}ForeArm"], f"{side}ForeArm")
        spec.add(f"{side}Hand", f"{side}ForeArm", body[f"{side}Hand"], f"{side}Hand")
        spec.add(f"{side}UpLeg", f"{letter}HipJoint", body[f"{side}UpLeg"], f"{side}UpLeg")
        spec.add(f"{side}Leg", f"{side}UpLeg", body[f"{side}Leg"], f"{side}Leg")
        spec.add(f"{side}Foot", f"{side}Leg", body[f"{side}Foot"], f"{side}Foot")
        spec.add(f"{side}ToeBase", f"{side}Foot", body[f"{side}ToeBase"], f"{side}ToeBase")
    spec.align.update(body.align)
    out.append(spec)

    # The CMU ASF naming (subject 131's BVH): arms hanging down, collars named Collar and upper arms Shoulder,
    # in-between bones at the hips (LHipJoint), the neck (lowerneck) and the wrists (lhand).
    body = _Posed(skeleton, a_pose=90.0)
    spec = RigSpec("cmu-asf", "cmu-asf", roll_seed=11)
    spec.add("Hips", None, body["Hips"], "Hips")
    for side, letter in (("Left", "L"), ("Right", "R")):
        spec.add(f"{letter}HipJoint", "Hips", body["Hips"])
        spec.add(f"{side}Hip", f"{letter}HipJoint", body[f"{side}UpLeg"], f"{side}UpLeg")
        spec.add(f"{side}Knee", f"{side}Hip", body[f"{side}Leg"], f"{side}Leg")
        spec.add(f"{side}Ankle", f"{side}Knee", body[f"{side}Foot"], f"{side}Foot")
        spec.add(f"{side}Toe", f"{side}Ankle", body[f"{side}ToeBase"], f"{side}ToeBase")
    spec.add("lowerback", "Hips", body["Spine"], "Spine")
    spec.add("Chest", "lowerback", body["Spine1"], "Spine1")
    spec.add("Chest2", "Chest", body["Spine2"], "Spine2")
    spec.add("lowerneck", "Chest2", body["Spine2"])
    spec.add("Neck", "lowerneck", body["Neck"], "Neck")
    spec.add("Head", "Neck", body["Head"], "Head")
    for side, letter in (("Left", "l"), ("Right", "r")):
        spec.add(f"{side}Collar", "Chest2", body[f"{side}Shoulder"], f"{side}Shoulder")
        spec.add(f"{side}Shoulder", f"{side}Collar", body[f"{side}Arm"], f"{side}Arm")
        spec.add(f"{side}Elbow", f"{side}Shoulder", body[f"{side}ForeArm"], f"{side}ForeArm")
        spec.add(f"{side}Wrist", f"{side}Elbow", body[f"{side}Hand"], f"{side}Hand")
        spec.add(f"{letter}hand", f"{side}Wrist", body[f"{side}Hand"])
        spec.add(f"{side[0]}Fingers", f"{letter}hand", body[f"{side}Hand"] + [0, -0.08, 0])
    spec.align.update(body.align)
    out.append(spec)
    return out


def anonymous(spec: RigSpec) -> RigSpec:
    """The same rig with every bone renamed bone_000, bone_001, ...: only the hierarchy and rest pose are left."""
    rename = {n: f"bone_{i:03d}" for i, n in enumerate(spec.names)}
    return RigSpec(spec.name + "-anonymous", "hierarchy", [rename[n] for n in spec.names], list(spec.parents),
                   list(spec.heads), {j: rename[b] for j, b in spec.expected.items()}, dict(spec.align),
                   spec.leg_scale, spec.roll_seed)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The angle (degrees) of the rotation between rotation matrices a and b (..., 3, 3)."""
    rel = np.swapaxes(a, -1, -2) @ b
    cos = np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    # arccos loses precision near 0: the norm of the skew part gives small angles exactly.
    sin = np.linalg.norm(np.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                                   rel[..., 1, 0] - rel[..., 0, 1]], -1), axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))
