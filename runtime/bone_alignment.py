"""Orientations turned to point each bone at the predicted position of its child.

A Motion VAE frame predicts joint positions and joint orientations separately. Engines animate bones by
rotation, so where the two disagree the rotations put hands and feet away from where the model predicted them,
and a foot planted in the positions slides in the rotations. Aligning each orientation with the predicted bone
directions makes the rotations follow the positions; only bone length is left to the skeleton's rest offsets.
The exported step graph (trainer/step_graph.py) computes the same in ONNX.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .skeleton import Skeleton


def _subtree_sizes(skeleton: Skeleton) -> np.ndarray:
    sizes = np.ones(skeleton.n_joints, dtype=np.int64)
    for j in range(skeleton.n_joints - 1, 0, -1):  # parents come before children
        sizes[skeleton.parents[j]] += sizes[j]
    return sizes


@lru_cache(maxsize=32)  # skeletons hash by identity; a model keeps one for its lifetime
def bone_targets(skeleton: Skeleton) -> dict[str, np.ndarray]:
    """Per joint, which predicted positions its orientation is aligned to, and the rest vectors they match.

    The primary bone goes to the child on the body's centre line with the largest subtree (else the largest
    subtree): the spine for the hips, the neck for the chest. The secondary vector fixes the roll: the span
    between a left/right pair of children (the hips' legs, the chest's shoulders), else a second child, else
    the joint's own predicted axis (a chain joint keeps its predicted twist). A leaf keeps its prediction.
    """
    n = skeleton.n_joints
    sizes, mirror, left = _subtree_sizes(skeleton), skeleton.mirror_map, skeleton.left_mask
    lengths = np.linalg.norm(skeleton.offsets, axis=-1)
    out = {"primary": np.arange(n), "second_a": np.arange(n), "second_b": np.arange(n),
           "leaf": np.zeros(n), "own_axis": np.zeros(n),
           "rest_primary": np.tile([1.0, 0.0, 0.0], (n, 1)), "rest_second": np.tile([0.0, 1.0, 0.0], (n, 1))}
    for j in range(n):
        kids = [c for c in skeleton.children[j] if lengths[c] > 1e-6]
        if not kids:
            out["leaf"][j] = out["own_axis"][j] = 1.0
            continue
        centre = [c for c in kids if mirror[c] == c]
        first = max(centre or kids, key=lambda c: (sizes[c], -c))
        out["primary"][j], out["rest_primary"][j] = first, skeleton.offsets[first]
        pairs = [c for c in kids if c != first and left[c] and mirror[c] in kids]
        others = [c for c in kids if c != first]
        if pairs:
            a, b = pairs[0], mirror[pairs[0]]
            out["second_a"][j], out["second_b"][j] = a, b
            out["rest_second"][j] = skeleton.offsets[a] - skeleton.offsets[b]
        elif others:
            out["second_a"][j] = others[0]
            out["rest_second"][j] = skeleton.offsets[others[0]]
        else:
            out["own_axis"][j] = 1.0
            axis = np.zeros(3)
            axis[np.argmin(np.abs(skeleton.offsets[first]))] = 1.0  # the rest axis furthest from the bone
            out["rest_second"][j] = axis
    return out


def orthonormal_frames(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Orthonormal frames (..., 3, 3) whose columns are the primary direction, then the secondary made orthogonal."""
    u1 = first / np.linalg.norm(first, axis=-1, keepdims=True)
    u2 = second - np.sum(u1 * second, axis=-1, keepdims=True) * u1
    u2 = u2 / np.linalg.norm(u2, axis=-1, keepdims=True)
    return np.stack([u1, u2, np.cross(u1, u2)], axis=-1)


def align_orientations(world_rot: np.ndarray, positions: np.ndarray, targets: dict[str, np.ndarray]) -> np.ndarray:
    """World rotations (..., J, 3, 3) turned so their rest bones point at positions (..., J, 3) (see bone_targets)."""
    have_primary = world_rot @ targets["rest_primary"][:, :, None]
    have_second = world_rot @ targets["rest_second"][:, :, None]
    have_primary, have_second = have_primary[..., 0], have_second[..., 0]
    leaf, own = targets["leaf"][:, None], targets["own_axis"][:, None]
    want_primary = leaf * have_primary + (1 - leaf) * (positions[..., targets["primary"], :] - positions)
    want_second = own * have_second + (1 - own) * (positions[..., targets["second_a"], :]
                                                   - positions[..., targets["second_b"], :])
    turn = orthonormal_frames(want_primary, want_second) @ np.swapaxes(orthonormal_frames(have_primary, have_second),
                                                                     -1, -2)
    return turn @ world_rot
