"""Forward kinematics in few array operations, for stages run on every step, in numpy or in the exported graph.

At one character every array call (or ONNX node) costs about a microsecond whatever its size, so world
rotations are composed by pointer doubling (log2(depth) batched matmuls) and quaternions become matrices in
one matmul. The functions take the array namespace `xp` (numpy, or trainer/foot_lock_graph.py's torch one) and
their constant arrays from a `Kinematics` converted to it, so the runtime and the exported graph run one code.
"""
from __future__ import annotations

import numpy as np

from .skeleton import Skeleton

# [q_i q_j for the ten pairs i <= j] @ QUAT_PRODUCTS = the rotation matrix of a unit quaternion q = (x, y, z, w).
_OUTER = np.zeros((16, 9))
for _row, _terms in enumerate([
        [(3, 3, 1), (0, 0, 1), (1, 1, -1), (2, 2, -1)], [(0, 1, 2), (3, 2, -2)], [(0, 2, 2), (3, 1, 2)],
        [(0, 1, 2), (3, 2, 2)], [(3, 3, 1), (0, 0, -1), (1, 1, 1), (2, 2, -1)], [(1, 2, 2), (3, 0, -2)],
        [(0, 2, 2), (3, 1, -2)], [(1, 2, 2), (3, 0, 2)], [(3, 3, 1), (0, 0, -1), (1, 1, -1), (2, 2, 1)]]):
    for _i, _j, _v in _terms:
        _OUTER[4 * _i + _j, _row] += _v
PAIRS = np.array([(i, j) for i in range(4) for j in range(i, 4)]).T
QUAT_PRODUCTS = _OUTER[4 * PAIRS[0] + PAIRS[1]] + np.where(PAIRS[0] != PAIRS[1], 1.0, 0.0)[:, None] \
    * _OUTER[4 * PAIRS[1] + PAIRS[0]]


class Kinematics:
    """The arrays pointer-doubling FK of one skeleton needs (`arrays`, `doubling`), in numpy."""

    def __init__(self, skeleton: Skeleton, prefix: str = "") -> None:
        j = skeleton.n_joints
        parents = np.where(skeleton.parents < 0, j, skeleton.parents)  # the root's parent: an identity at j
        doubling, ancestor, covered = [], np.append(parents, j), 1
        # Positions need the world rotations of parents only: leaves' own levels are not composed.
        depth = max(d for d, level in enumerate(skeleton.depth_levels)
                    if any(skeleton.children[k] for k in level)) + 1 if j > 1 else 1
        while covered < depth:
            doubling.append(ancestor)
            ancestor, covered = ancestor[ancestor], 2 * covered
        offsets = skeleton.offsets.copy()
        offsets[0] = 0.0  # the root's place is its own position
        chain = np.eye(j)  # chain[a, b] = 1: b is a or one of a's ancestors
        for a in range(1, j):
            chain[a] += chain[parents[a]]
        self.prefix = prefix
        self.arrays = {prefix + "parent": parents, prefix + "offsets": offsets[:, :, None], prefix + "chain": chain}
        self.doubling = [prefix + f"doubling{k}" for k in range(len(doubling))]
        self.arrays.update(zip(self.doubling, doubling))


def quat_matrices(xp, q, pair_a, pair_b, products):
    """Unit quaternions (..., 4) (x, y, z, w) -> rotation matrices (..., 3, 3); constants from `kinematic_constants`."""
    return ((q[..., pair_a] * q[..., pair_b]) @ products).reshape(q.shape[:-1] + (3, 3))


def forward_kinematics(xp, k, prefix: str, local, root):
    """Local rotation matrices (n, J, 3, 3), root positions (n, 3) -> world rotations (n, J + 1, 3, 3) (an identity
    appended: the root's parent; a leaf joint's may be left partial) and world positions (n, J, 3).

    k holds a Kinematics' arrays (named with its prefix) and `eye3`, converted to xp.
    """
    world = xp.concatenate([local, local[:, :1] * 0.0 + k.eye3], 1)
    for name in getattr(k, prefix + "doubling"):
        world = world[:, getattr(k, name)] @ world
    bones = (world[:, getattr(k, prefix + "parent")] @ getattr(k, prefix + "offsets"))[..., 0]
    return world, root[:, None] + getattr(k, prefix + "chain") @ bones


def kinematic_constants() -> dict[str, np.ndarray]:
    """The constant arrays quat_matrices and forward_kinematics use besides a Kinematics'."""
    return {"pair_a": PAIRS[0], "pair_b": PAIRS[1], "quat_products": QUAT_PRODUCTS, "eye3": np.eye(3)}
