"""Skeleton: joint names, parents and rest offsets; forward kinematics; the left/right mirror map."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .rotations import matrix_to_quat, quat_to_matrix

# Name rewrites that turn a left joint into its right twin (and back); tried in order, the first
# rewrite whose result names another joint of the skeleton wins.
_MIRROR_RULES: tuple[tuple[re.Pattern[str], dict[str, str]], ...] = (
    (re.compile(r"(Left|Right|left|right|LEFT|RIGHT)"),
     {"Left": "Right", "Right": "Left", "left": "right", "right": "left", "LEFT": "RIGHT", "RIGHT": "LEFT"}),
    (re.compile(r"(?<=[._\- ])([LlRr])$"), {"L": "R", "R": "L", "l": "r", "r": "l"}),
    (re.compile(r"^([LlRr])(?=[._\- ])"), {"L": "R", "R": "L", "l": "r", "r": "l"}),
    (re.compile(r"^([LR])(?=[A-Z])"), {"L": "R", "R": "L"}),
    (re.compile(r"([LR])$"), {"L": "R", "R": "L"}),
    (re.compile(r"^([lr])(?=[a-z])"), {"l": "r", "r": "l"}),
)



def _swap_name(name: str, names: set[str]) -> tuple[str, bool] | None:
    """The twin of a joint name among names, and whether name is the left one."""
    for pattern, table in _MIRROR_RULES:
        m = pattern.search(name)
        if m is None:
            continue
        twin = name[:m.start(1)] + table[m.group(1)] + name[m.end(1):]
        if twin != name and twin in names:
            return twin, m.group(1).lower().startswith("l")
    return None


@dataclass(frozen=True, eq=False)
class Skeleton:
    """Joint hierarchy with rest offsets (metres) of each joint from its parent, in the parent's frame.

    Joints are ordered so that every parent comes before its children; joint 0 is the root.
    end_offsets holds the End Site offset of each joint (NaN where a joint has none), kept for BVH output.
    """

    names: tuple[str, ...]
    parents: np.ndarray
    offsets: np.ndarray
    end_offsets: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        parents = np.asarray(self.parents, dtype=np.int64)
        offsets = np.asarray(self.offsets, dtype=np.float64).reshape(-1, 3)
        n = len(self.names)
        if parents.shape != (n,) or offsets.shape != (n, 3):
            raise ValueError(f"skeleton has {n} names but parents {parents.shape} and offsets {offsets.shape}")
        if n == 0 or parents[0] != -1 or np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, n)):
            raise ValueError("skeleton joints must be ordered parents first, with a single root at index 0")
        if len(set(self.names)) != n:
            raise ValueError("skeleton joint names must be unique")
        ends = np.full((n, 3), np.nan) if self.end_offsets is None else np.asarray(self.end_offsets, float)
        object.__setattr__(self, "parents", parents)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "end_offsets", ends.reshape(n, 3))

    @property
    def n_joints(self) -> int:
        """Number of joints."""
        return len(self.names)

    def index(self, name: str) -> int:
        """Index of a joint by name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no joint named {name!r} in the skeleton") from None

    @cached_property
    def depth_levels(self) -> tuple[np.ndarray, ...]:
        """Joint indices grouped by depth, root level first (FK runs level by level)."""
        depth = np.zeros(self.n_joints, dtype=np.int64)
        for j in range(1, self.n_joints):
            depth[j] = depth[self.parents[j]] + 1
        return tuple(np.flatnonzero(depth == d) for d in range(depth.max() + 1))

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """Children of each joint."""
        return tuple(tuple(np.flatnonzero(self.parents == j).tolist()) for j in range(self.n_joints))

    @cached_property
    def mirror_map(self) -> np.ndarray:
        """Index of each joint's left/right twin (itself for centre joints), found from the names."""
        return self._sides[0]

    @cached_property
    def left_mask(self) -> np.ndarray:
        """True for joints named as the character's left side."""
        return self._sides[1]

    @cached_property
    def _sides(self) -> tuple[np.ndarray, np.ndarray]:
        names = set(self.names)
        twin = np.arange(self.n_joints)
        left = np.zeros(self.n_joints, dtype=bool)
        for j, name in enumerate(self.names):
            found = _swap_name(name, names)
            if found is not None and (back := _swap_name(found[0], names)) is not None and back[0] == name:
                twin[j] = self.names.index(found[0])
                left[j] = found[1]
        return twin, left

    def forward_kinematics_matrices(self, rot: np.ndarray, root_pos: np.ndarray,
                                    translations: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Local rotation matrices (..., J, 3, 3) and root positions (..., 3) -> world positions and rotations.

        translations (..., J, 3) overrides the rest offsets per frame (BVH position channels on any joint).
        """
        world_r = np.empty_like(rot)
        world_p = np.empty(rot.shape[:-1], dtype=rot.dtype)
        world_r[..., 0, :, :] = rot[..., 0, :, :]
        world_p[..., 0, :] = root_pos
        for level in self.depth_levels[1:]:
            par = self.parents[level]
            local_t = self.offsets[level] if translations is None else translations[..., level, :]
            parent_r = world_r[..., par, :, :]
            world_r[..., level, :, :] = parent_r @ rot[..., level, :, :]
            world_p[..., level, :] = world_p[..., par, :] + np.einsum("...ij,...j->...i", parent_r, local_t)
        return world_p, world_r

    def forward_kinematics(self, quats: np.ndarray, root_pos: np.ndarray,
                           translations: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Local quaternions (..., J, 4) and root positions (..., 3) -> world positions and world quaternions."""
        pos, rot = self.forward_kinematics_matrices(quat_to_matrix(quats), root_pos, translations)
        return pos, matrix_to_quat(rot)

    def local_from_world(self, world_rot: np.ndarray) -> np.ndarray:
        """World rotation matrices (..., J, 3, 3) -> local rotation matrices relative to each parent."""
        parent_r = world_rot[..., np.maximum(self.parents, 0), :, :]
        local = np.swapaxes(parent_r, -1, -2) @ world_rot
        local[..., 0, :, :] = world_rot[..., 0, :, :]
        return local

    def rest_positions(self) -> np.ndarray:
        """World joint positions (J, 3) of the rest pose (all local rotations identity, root at origin)."""
        eye = np.broadcast_to(np.eye(3), (self.n_joints, 3, 3)).copy()
        return self.forward_kinematics_matrices(eye, np.zeros(3))[0]

    def subset(self, keep: list[int]) -> "Skeleton":
        """The skeleton restricted to joints keep; a joint whose parent is dropped becomes a root."""
        keep = sorted(keep)
        where = {j: k for k, j in enumerate(keep)}
        parents = [where.get(int(self.parents[j]), -1) for j in keep]
        ends = self.end_offsets[keep].copy()
        # A kept joint that lost all its children keeps a tip for display and BVH output.
        for k, j in enumerate(keep):
            kids = [c for c in self.children[j] if c not in where]
            if kids and not any(c in where for c in self.children[j]) and np.isnan(ends[k, 0]):
                ends[k] = self.offsets[kids[0]]
        return Skeleton([self.names[j] for j in keep], parents, self.offsets[keep], ends)

    def bone_lengths(self) -> np.ndarray:
        """Length of each joint's offset from its parent."""
        return np.linalg.norm(self.offsets, axis=-1)

    def to_dict(self) -> dict:
        """JSON-ready description."""
        ends = [None if np.isnan(e[0]) else [float(v) for v in e] for e in self.end_offsets]
        return {"names": list(self.names), "parents": self.parents.tolist(),
                "offsets": self.offsets.round(9).tolist(), "end_offsets": ends}

    @classmethod
    def from_dict(cls, d: dict) -> "Skeleton":
        """Inverse of to_dict."""
        ends = d.get("end_offsets")
        end_arr = None
        if ends is not None:
            end_arr = np.array([[np.nan] * 3 if e is None else e for e in ends], dtype=np.float64)
        return cls(d["names"], d["parents"], d["offsets"], end_arr)

    def to_json(self) -> str:
        """JSON text of to_dict."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "Skeleton":
        """Inverse of to_json."""
        return cls.from_dict(json.loads(text))

    def same_as(self, other: "Skeleton", tol: float = 1e-6) -> bool:
        """Same names, parents and offsets (within tol metres)."""
        return (self.names == other.names and np.array_equal(self.parents, other.parents)
                and bool(np.allclose(self.offsets, other.offsets, atol=tol)))

