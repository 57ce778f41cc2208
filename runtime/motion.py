"""Motion: a skeleton animated by local rotations and translations, with resampling and mirroring."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .rotations import matrix_to_quat, quat_mul, quat_rotate, quat_slerp, quat_to_matrix
from .skeleton import Skeleton

MIRROR = np.diag([-1.0, 1.0, 1.0])  # reflection through the character's sagittal plane (x = 0)


@dataclass(frozen=True, eq=False)
class Motion:
    """A clip: local rotations (T, J, 4) and local translations (T, J, 3) of a skeleton at fps.

    translations[:, 0] is the root's world position; other joints carry their rest offset unless the
    source animates their position.
    """

    skeleton: Skeleton
    rotations: np.ndarray
    translations: np.ndarray
    fps: float
    name: str = ""

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return self.rotations.shape[0]

    @property
    def root_positions(self) -> np.ndarray:
        """World position of the root in each frame, (T, 3)."""
        return self.translations[:, 0]

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.n_frames / self.fps

    def world(self) -> tuple[np.ndarray, np.ndarray]:
        """World joint positions (T, J, 3) and world rotation matrices (T, J, 3, 3)."""
        return self.skeleton.forward_kinematics_matrices(
            quat_to_matrix(self.rotations), self.root_positions, self.translations)

    def rigid(self) -> "Motion":
        """This motion with every non-root joint translation fixed to its mean (skeleton offsets updated)."""
        mean = self.translations[:, 1:].mean(axis=0)
        offsets = self.skeleton.offsets.copy()
        offsets[1:] = mean
        skel = Skeleton(self.skeleton.names, self.skeleton.parents, offsets, self.skeleton.end_offsets)
        trans = self.translations.copy()
        trans[:, 1:] = mean
        return replace(self, skeleton=skel, translations=trans)

    def without_static_root(self) -> "Motion":
        """Fold away root joints that never move and have one child (e.g. a 'joint_Root' above the hips)."""
        motion = self
        while motion.skeleton.n_joints > 1 and len(motion.skeleton.children[0]) == 1:
            rot, trans = motion.rotations[:, 0], motion.translations[:, 0]
            if np.ptp(rot, axis=0).max() > 1e-9 or np.ptp(trans, axis=0).max() > 1e-9:
                break
            skel = motion.skeleton
            keep = list(range(1, skel.n_joints))
            q0, t0 = rot[:1], trans[:1]
            rotations = motion.rotations[:, 1:].copy()
            translations = motion.translations[:, 1:].copy()
            rotations[:, 0] = quat_mul(q0, rotations[:, 0])
            translations[:, 0] = t0 + quat_rotate(q0, translations[:, 0])
            sub = skel.subset(keep)
            offsets = sub.offsets.copy()
            offsets[0] = translations[0, 0]
            sub = Skeleton(sub.names, sub.parents, offsets, sub.end_offsets)
            motion = replace(motion, skeleton=sub, rotations=rotations, translations=translations)
        return motion

    def subset(self, names: list[str]) -> "Motion":
        """Keep only the named joints (whole subtrees may be dropped; a kept joint needs its parent)."""
        skel = self.skeleton
        keep = [skel.index(n) for n in names]
        kept = set(keep)
        for j in keep:
            p = skel.parents[j]
            if p >= 0 and p not in kept:
                raise ValueError(f"joint {skel.names[j]!r} is kept but its parent {skel.names[p]!r} is not")
        if 0 not in kept:
            raise ValueError(f"the root joint {skel.names[0]!r} must be kept")
        keep = sorted(keep)
        return replace(self, skeleton=skel.subset(keep), rotations=self.rotations[:, keep],
                       translations=self.translations[:, keep])

    def resample(self, fps: float) -> "Motion":
        """The motion at another frame rate: slerp for rotations, linear for translations."""
        if abs(fps - self.fps) < 1e-9 * fps:
            return self
        t_new = np.arange(int(np.floor((self.n_frames - 1) * fps / self.fps + 1e-9)) + 1) / fps
        src = np.clip(t_new * self.fps, 0, self.n_frames - 1)
        i0 = np.minimum(np.floor(src + 1e-9).astype(np.int64), self.n_frames - 1)
        i1 = np.minimum(i0 + 1, self.n_frames - 1)
        w = np.clip(src - i0, 0.0, 1.0)
        rot = quat_slerp(self.rotations[i0], self.rotations[i1], w[:, None])
        trans = self.translations[i0] + (self.translations[i1] - self.translations[i0]) * w[:, None, None]
        return replace(self, rotations=rot, translations=trans, fps=float(fps))

    def mirrored(self) -> "Motion":
        """The motion reflected left/right (x -> -x in the world, left and right joints swapped)."""
        skel = self.skeleton
        twin = skel.mirror_map
        pos, rot = self.world()
        pos_m = pos[:, twin] * np.array([-1.0, 1.0, 1.0])
        rot_m = MIRROR @ rot[:, twin] @ MIRROR @ mirror_corrections(skel)
        local = skel.local_from_world(rot_m)
        parent = np.maximum(skel.parents, 0)
        trans = np.einsum("tjik,tji->tjk", rot_m[:, parent], pos_m - pos_m[:, parent])
        trans[:, 0] = pos_m[:, 0]
        return replace(self, rotations=matrix_to_quat(local), translations=trans)


def _min_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking direction a onto direction b."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(a @ b)
    if c < -1.0 + 1e-12:
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def mirror_corrections(skel: Skeleton) -> np.ndarray:
    """Per-joint rotations C_j (J, 3, 3) so that M R_twin M C_j is a valid mirrored world rotation.

    C_j maps each child's offset onto the reflected offset of its twin's matching child, so mirrored
    poses keep the skeleton's bone directions whatever the rig's joint frames are (Kabsch over the
    children; the smallest rotation for one child; the parent's correction for tips).
    """
    twin = skel.mirror_map
    out = np.broadcast_to(np.eye(3), (skel.n_joints, 3, 3)).copy()
    for j in range(skel.n_joints):
        kids = [c for c in skel.children[j] if np.linalg.norm(skel.offsets[c]) > 1e-9]
        twin_kids = [twin[c] for c in kids]
        if not kids or any(skel.parents[t] != twin[j] for t in twin_kids):
            out[j] = out[skel.parents[j]] if j > 0 else np.eye(3)
            continue
        a = skel.offsets[kids]
        b = skel.offsets[twin_kids] @ MIRROR
        if np.linalg.matrix_rank(a, tol=1e-6 * np.abs(a).max()) < 2:
            out[j] = _min_rotation(a.sum(0), b.sum(0))
            continue
        u, _, vt = np.linalg.svd(a.T @ b)
        d = np.sign(np.linalg.det(vt.T @ u.T))
        out[j] = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return out
