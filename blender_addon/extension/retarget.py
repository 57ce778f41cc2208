"""Model poses -> pose-bone values of any rig, through a bone map, with rest-pose compensation.

The model's rest pose has every joint frame aligned with the world; a rig's rest pose may differ (an A-pose,
other bone rolls, bones pointing anywhere). Each driven bone gets a rest swing S: the rotation that best takes
the model's rest directions to its mapped children onto the rig's. A bone's armature-space pose is then
W @ S^T @ B, with W the joint's world rotation from the model and B the bone's rest orientation, so at the
model's rest pose the rig's limbs point where the model's do, and every bone turns as its joint turns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .convert import positions_to_blender, rotations_to_blender, wxyz
from .errors import AddonError
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
    """A model skeleton bound to a rig through a bone map, rest-pose compensation worked out."""

    skeleton: Skeleton
    rig: RigRest
    driven: np.ndarray  # (M,) rig bones the model drives; the first is the root joint's, which also moves
    joints: np.ndarray  # (M,) the model joint driving each, ascending (so joint 0, the root, comes first)
    rest_align: np.ndarray  # (M, 3, 3) S^T @ B of each driven bone
    relative_rest: np.ndarray  # (B, 4, 4) each bone's rest relative to its parent's (its own rest for roots)
    levels: tuple[np.ndarray, ...]  # rig bones grouped by depth, roots first

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


def _swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a onto unit vector b."""
    v, c = np.cross(a, b), float(a @ b)
    if c < -1.0 + 1e-9:  # opposite: half a turn about any axis square to a
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + k + k @ k / (1.0 + c)


def _fit_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation that best takes directions a (n, 3) onto directions b (n, 3) (Kabsch; a swing when n is 1)."""
    keep = (np.linalg.norm(a, axis=1) > 1e-9) & (np.linalg.norm(b, axis=1) > 1e-9)
    a = a[keep] / np.linalg.norm(a[keep], axis=1, keepdims=True)
    b = b[keep] / np.linalg.norm(b[keep], axis=1, keepdims=True)
    if len(a) == 0:
        return np.eye(3)
    u, s, vt = np.linalg.svd(a.T @ b)
    if s[1] < 1e-6 * s[0]:  # all directions parallel: only a swing is defined, no twist
        return _swing(a[0], b[0])
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def _mapped_below(skeleton: Skeleton, joint: int, bone_of: dict[int, int]) -> list[int]:
    """The nearest driven joints under joint (its children, or theirs where a child drives nothing)."""
    out: list[int] = []
    for child in skeleton.children[joint]:
        out.extend([child] if child in bone_of else _mapped_below(skeleton, child, bone_of))
    return out


def _rest_swings(skeleton: Skeleton, rig: RigRest, bone_of: dict[int, int]) -> dict[int, np.ndarray]:
    """S of each driven joint: model rest directions to its driven children -> the rig's; leaves take their parent's."""
    model_rest = positions_to_blender(skeleton.rest_positions())
    heads = rig.rest[:, :3, 3]
    swings: dict[int, np.ndarray] = {}
    for joint in range(skeleton.n_joints):  # parents come first, so an ancestor's swing is always ready
        if joint not in bone_of:
            continue
        below = _mapped_below(skeleton, joint, bone_of)
        if below:
            swings[joint] = _fit_rotation(model_rest[below] - model_rest[joint],
                                          heads[[bone_of[c] for c in below]] - heads[bone_of[joint]])
            continue
        # A leaf (hand, head, toe) has no direction of its own to compare; it turns with its parent's swing.
        up = int(skeleton.parents[joint])
        while up >= 0 and up not in swings:
            up = int(skeleton.parents[up])
        swings[joint] = swings[up] if up >= 0 else np.eye(3)
    return swings


def bind(skeleton: Skeleton, rig: RigRest, bone_map: dict[str, str]) -> Binding:
    """Bind a skeleton to a rig through bone_map (joint -> bone, "" for none); AddonError lists every problem."""
    problems = _problems(skeleton, rig, bone_map)
    if problems:
        raise AddonError(f"Bone map: {'; '.join(problems)}. Fix the table or press Auto-match.")
    index = {name: i for i, name in enumerate(rig.names)}
    bone_of = {j: index[bone_map[name]] for j, name in enumerate(skeleton.names) if bone_map.get(name)}
    joints = np.array(sorted(bone_of), dtype=np.int64)
    driven = np.array([bone_of[j] for j in joints], dtype=np.int64)
    swings = _rest_swings(skeleton, rig, bone_of)
    rest_align = np.stack([swings[j].T @ rig.rest[b, :3, :3] for j, b in zip(joints, driven)])
    has_parent = rig.parents >= 0
    relative = rig.rest.copy()
    relative[has_parent] = _affine_inverse(rig.rest[rig.parents[has_parent]]) @ rig.rest[has_parent]
    depth = np.zeros(len(rig.names), dtype=np.int64)
    for b in np.flatnonzero(has_parent):  # parents first, so each parent's depth is final
        depth[b] = depth[rig.parents[b]] + 1
    levels = tuple(np.flatnonzero(depth == d) for d in range(depth.max() + 1))
    return Binding(skeleton, rig, driven, joints, rest_align, relative, levels)


def pose(binding: Binding, root_positions: np.ndarray, local_rotations: np.ndarray,
         continuous: bool = True) -> RigPose:
    """Model poses (root positions (T, 3), local rotations (T, J, 4) x, y, z, w) -> the rig's pose-bone values.

    continuous keeps each quaternion track in one hemisphere over T (what keyframes need).
    """
    rig, skeleton = binding.rig, binding.skeleton
    world = skeleton.forward_kinematics_matrices(quat_to_matrix(np.asarray(local_rotations, np.float64)),
                                                 np.asarray(root_positions, np.float64))[1]
    want = rotations_to_blender(world[:, binding.joints]) @ binding.rest_align  # (T, M, 3, 3) armature space
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
            out[:, np.flatnonzero(level == root_bone)[0], :3, 3] = positions_to_blender(root_positions)
        frames[:, level], posed[:, level] = frame, out
    basis = _affine_inverse(frames[:, binding.driven]) @ posed[:, binding.driven]
    quats = matrix_to_quat(basis[..., :3, :3])
    if continuous:
        quats = quat_continuous(quats, axis=0)
    return RigPose(wxyz(quats), basis[:, 0, :3, 3])
