"""Forward kinematics of many poses per call, in few array operations: for stages run on every step.

Skeleton.forward_kinematics walks the hierarchy level by level; a per-step stage at one character pays for
every numpy call, so here world rotations are composed by pointer doubling (log2(depth) batched matmuls)
while there are few poses, and level by level (less arithmetic) when there are many.
"""
from __future__ import annotations

import numpy as np

from .skeleton import Skeleton

LEVELS_FROM = 48  # poses per call from which level-by-level composition is faster than doubling

# [q q^T flattened] @ QUAT_OUTER = the rotation matrix of a unit quaternion q = (x, y, z, w), flattened.
QUAT_OUTER = np.zeros((16, 9))
for _row, _terms in enumerate([
        [(3, 3, 1), (0, 0, 1), (1, 1, -1), (2, 2, -1)], [(0, 1, 2), (3, 2, -2)], [(0, 2, 2), (3, 1, 2)],
        [(0, 1, 2), (3, 2, 2)], [(3, 3, 1), (0, 0, -1), (1, 1, 1), (2, 2, -1)], [(1, 2, 2), (3, 0, -2)],
        [(0, 2, 2), (3, 1, -2)], [(1, 2, 2), (3, 0, 2)], [(3, 3, 1), (0, 0, -1), (1, 1, -1), (2, 2, 1)]]):
    for _i, _j, _v in _terms:
        QUAT_OUTER[4 * _i + _j, _row] += _v
# The ten distinct products q_i q_j (i <= j) and the matrix they make.
_PAIRS = np.array([(i, j) for i in range(4) for j in range(i, 4)]).T
QUAT_PRODUCTS = QUAT_OUTER[4 * _PAIRS[0] + _PAIRS[1]] + np.where(_PAIRS[0] != _PAIRS[1], 1.0, 0.0)[:, None] \
    * QUAT_OUTER[4 * _PAIRS[1] + _PAIRS[0]]


def quat_matrices(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) (x, y, z, w) -> rotation matrices (..., 3, 3)."""
    flat = q.reshape(-1, 4)
    return ((flat[:, _PAIRS[0]] * flat[:, _PAIRS[1]]) @ QUAT_PRODUCTS).reshape(q.shape[:-1] + (3, 3))


class PoseKinematics:
    """World rotations and joint positions of a skeleton's poses, from local rotation matrices."""

    def __init__(self, skeleton: Skeleton) -> None:
        j = skeleton.n_joints
        parents = np.where(skeleton.parents < 0, j, skeleton.parents)  # the root's parent: an identity at j
        self.j = j
        self.parent = parents
        self.doubling = []
        ancestor, covered = np.append(parents, j), 1
        # Positions need the world rotations of parents only: leaves' own levels are not composed.
        depth = max(d for d, level in enumerate(skeleton.depth_levels)
                    if any(skeleton.children[k] for k in level)) + 1 if j > 1 else 1
        while covered < depth:
            self.doubling.append(ancestor)
            ancestor, covered = ancestor[ancestor], 2 * covered
        self.levels = [(level, parents[level]) for level in skeleton.depth_levels[1:]]
        offsets = skeleton.offsets.copy()
        offsets[0] = 0.0  # the root's place is its own position
        self.offsets = offsets[:, :, None]
        chain = np.eye(j)  # chain[a, b] = 1: b is a or one of a's ancestors
        for a in range(1, j):
            chain[a] += chain[parents[a]]
        self.chain = chain
        self._eye = np.zeros((0, 1, 3, 3))

    def _identity(self, n: int) -> np.ndarray:
        """(n, 1, 3, 3) identities (the root's parent), kept per n: the call is made every step."""
        if self._eye.shape[0] != n:
            self._eye = np.broadcast_to(np.eye(3), (n, 1, 3, 3))
        return self._eye

    def __call__(self, local: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local rotation matrices (n, J, 3, 3), root positions (n, 3) -> world rotations (n, J + 1, 3, 3)
        (an identity appended: the root's parent; a leaf joint's may be left partial) and world positions (n, J, 3)."""
        n, j = local.shape[0], self.j
        if n < LEVELS_FROM:
            world = np.concatenate([local, self._identity(n)], 1)
            for ancestor in self.doubling:
                world = world[:, ancestor] @ world
            bones = (world[:, self.parent] @ self.offsets)[..., 0]
            return world, root[:, None] + self.chain @ bones
        world = np.concatenate([local, self._identity(n)], 1)
        pos = np.empty((n, j, 3))
        pos[:, 0] = root
        for level, parent in self.levels:
            above = world[:, parent]
            world[:, level] = above @ local[:, level]
            pos[:, level] = pos[:, parent] + (above @ self.offsets[level])[..., 0]
        return world, pos
