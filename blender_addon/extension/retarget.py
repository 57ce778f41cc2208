"""Model poses -> pose-bone values of any rig, through a bone map (runtime/rigmap.py does the matching and the
rest alignment; this module is its Blender side: axes, armature matrices and pose-bone bases).

A driven bone's armature-space pose is C W S^T C^T @ B: W the joint's world rotation from the model, S its rest
alignment (model rest directions -> the rig's), B the bone's rest orientation and C the Y-up -> Z-up turn. The root
bone's head follows the model's root scaled by the rigs' hip-height ratio, and each leg's thigh and shin are turned
so its toe lands where the model's does, scaled alike (runtime.rigmap.rig_world).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .convert import Y_UP_TO_Z_UP, positions_to_blender, positions_to_model, wxyz
from .errors import AddonError
from .runtime.rigmap import RigBones, RigMatchError, Transfer, match, rig_world, transfer
from .runtime.rotations import matrix_to_quat, quat_continuous, quat_to_matrix
from .runtime.skeleton import Skeleton


@dataclass(frozen=True)
class RigRest:
    """An armature's bones, parents first, in armature space."""

    names: tuple[str, ...]
    parents: np.ndarray  # (B,) each bone's parent index, -1 for roots
    rest: np.ndarray  # (B, 4, 4) rest matrices (Bone.matrix_local)
    basis: np.ndarray  # (B, 4, 4) current pose bases: bones the map leaves out keep theirs


@dataclass(frozen=True)
class Binding:
    """A model skeleton bound to a rig through a bone map, the rest alignment and root scale worked out."""

    skeleton: Skeleton
    rig: RigRest
    bones: RigBones  # the rig in the model's axes
    plan: Transfer
    relative_rest: np.ndarray  # (B, 4, 4) each bone's rest relative to its parent's (its own rest for roots)
    levels: tuple[np.ndarray, ...]  # rig bones grouped by depth, roots first

    @property
    def driven(self) -> np.ndarray:
        """(M,) rig bones the model drives; the first is the root joint's, which also moves."""
        return self.plan.bones

    @property
    def bone_names(self) -> list[str]:
        """Names of the driven bones, in driven order."""
        return [self.rig.names[b] for b in self.driven]

    @property
    def root_bone(self) -> str:
        """Name of the bone the model's root drives."""
        return self.rig.names[self.driven[0]]


@dataclass(frozen=True)
class RigPose:
    """Pose-bone values for T frames: rotation_quaternion (w, x, y, z) of each driven bone, and the root's location."""

    quaternions: np.ndarray  # (T, M, 4), each track in one hemisphere
    root_location: np.ndarray  # (T, 3)


def _affine_inverse(m: np.ndarray) -> np.ndarray:
    """Inverses of affine 4x4 matrices (..., 4, 4) by the adjugate (np.linalg.inv is slow on many tiny matrices)."""
    a, t = m[..., :3, :3], m[..., :3, 3]
    c0, c1, c2 = a[..., :, 0], a[..., :, 1], a[..., :, 2]
    rows = np.stack([np.cross(c1, c2), np.cross(c2, c0), np.cross(c0, c1)], axis=-2)
    inv = rows / np.sum(c0 * rows[..., 0, :], axis=-1)[..., None, None]
    out = np.zeros_like(m)
    out[..., :3, :3] = inv
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", inv, t)
    out[..., 3, 3] = 1.0
    return out


def _problems(skeleton: Skeleton, rig: RigRest, bone_map: dict[str, str]) -> list[str]:
    """Everything wrong with a bone map, one phrase each: unknown bones, bones driven twice, no root."""
    bones = set(rig.names)
    problems = [f"{joint} -> '{bone}' is not a bone of the armature"
                for joint, bone in bone_map.items() if bone and bone not in bones and joint in skeleton.names]
    seen: dict[str, str] = {}
    for joint in skeleton.names:
        bone = bone_map.get(joint, "")
        if bone in seen:
            problems.append(f"{seen[bone]} and {joint} both drive '{bone}'")
        elif bone:
            seen[bone] = joint
    if not bone_map.get(skeleton.names[0]):
        problems.append(f"the root joint {skeleton.names[0]} drives no bone")
    return problems


def rig_bones(rig: RigRest) -> RigBones:
    """An armature's bones with their heads in the model's axes, for runtime.rigmap."""
    return RigBones(rig.names, rig.parents, positions_to_model(rig.rest[:, :3, 3]))


def auto_map(skeleton: Skeleton, rig: RigRest):
    """runtime.rigmap.match on an armature: the bone map, the preset it used and what it left unmatched."""
    return match(skeleton, rig_bones(rig))


def bind(skeleton: Skeleton, rig: RigRest, bone_map: dict[str, str]) -> Binding:
    """Bind a skeleton to a rig through bone_map (joint -> bone, "" for none); AddonError lists every problem."""
    problems = _problems(skeleton, rig, bone_map)
    if problems:
        raise AddonError(f"Bone map: {'; '.join(problems)}. Fix the table or press Auto-match.")
    bones = rig_bones(rig)
    try:
        plan = transfer(skeleton, bones, bone_map)
    except RigMatchError as e:
        raise AddonError(f"Bone map: {e}.") from None
    has_parent = rig.parents >= 0
    relative = rig.rest.copy()
    relative[has_parent] = _affine_inverse(rig.rest[rig.parents[has_parent]]) @ rig.rest[has_parent]
    depth = np.zeros(len(rig.names), dtype=np.int64)
    for b in np.flatnonzero(has_parent):  # parents first, so each parent's depth is final
        depth[b] = depth[rig.parents[b]] + 1
    levels = tuple(np.flatnonzero(depth == d) for d in range(depth.max() + 1))
    return Binding(skeleton, rig, bones, plan, relative, levels)


def pose(binding: Binding, root_positions: np.ndarray, local_rotations: np.ndarray,
         continuous: bool = True) -> RigPose:
    """Model poses (root positions (T, 3), local rotations (T, J, 4) x, y, z, w) -> the rig's pose-bone values.

    continuous keeps each quaternion track in one hemisphere over T (what keyframes need).
    """
    rig, plan = binding.rig, binding.plan
    heads, turn = rig_world(binding.skeleton, binding.bones, plan, quat_to_matrix(np.asarray(local_rotations,
                                                                                            np.float64)),
                            np.asarray(root_positions, np.float64))
    # (T, M, 3, 3) armature space: the turn away from rest, in Blender's axes, on the bone's rest orientation.
    want = Y_UP_TO_Z_UP @ turn[:, plan.bones] @ Y_UP_TO_Z_UP.T @ rig.rest[plan.bones, :3, :3]
    t, n_bones = len(root_positions), len(rig.names)
    slot = np.full(n_bones, -1)
    slot[binding.driven] = np.arange(len(binding.driven))
    root_bone = binding.driven[0]
    # posed[:, -1] stays the identity: the "parent" that index -1 picks for root bones.
    posed = np.broadcast_to(np.eye(4), (t, n_bones + 1, 4, 4)).copy()
    frames = np.empty((t, n_bones, 4, 4))
    for level in binding.levels:
        frame = posed[:, rig.parents[level]] @ binding.relative_rest[level]  # where the bone sits with no basis
        out = frame @ rig.basis[level]
        mine = slot[level] >= 0
        out[:, mine, :3, :3] = want[:, slot[level][mine]]
        out[:, mine, :3, 3] = frame[:, mine, :3, 3]
        if root_bone in level:
            out[:, np.flatnonzero(level == root_bone)[0], :3, 3] = positions_to_blender(heads[:, root_bone])
        frames[:, level], posed[:, level] = frame, out
    basis = _affine_inverse(frames[:, binding.driven]) @ posed[:, binding.driven]
    quats = matrix_to_quat(basis[..., :3, :3])
    if continuous:
        quats = quat_continuous(quats, axis=0)
    return RigPose(wxyz(quats), basis[:, 0, :3, 3])
