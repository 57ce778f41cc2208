"""The feature frame: one pose <-> root delta, positions, velocities, 6D orientations and foot contacts.

A frame, per block, joints in skeleton order inside each block (see docs/design.md):
    root          dx, dz (metres, in the previous frame's character frame), dyaw (radians)
    positions     joint positions in the character frame (metres)
    velocities    joint velocities in the character frame (metres per second)
    orientations  joint world rotations in the character frame, 6D (first two matrix columns)
    contacts      1.0 where a foot joint touches the ground (optional)
The character frame is the root projected on the ground, turned by the heading yaw (0 faces +Z).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .bone_alignment import align_orientations, bone_targets
from .motion import Motion
from .rotations import matrix_to_quat, matrix_to_sixd, sixd_to_matrix, wrap_angle, yaw_matrix
from .skeleton import Skeleton

LAYOUT_VERSION = 1
_FOOT_NAME = re.compile(r"foot|ankle|toe|heel", re.IGNORECASE)
# Contact: the joint is near its lowest height in the clip and nearly still.
CONTACT_HEIGHT_M = 0.05
CONTACT_SPEED_MPS = 0.6


@dataclass(frozen=True)
class FeatureLayout:
    """Where each block of a feature frame lives; stored as JSON in every frames.npz and model.json."""

    joint_names: tuple[str, ...]
    fps: float
    contact_joints: tuple[str, ...] = ()
    heading_joints: tuple[str, ...] = ()  # (left, right) whose span gives the heading; () = root's +Z
    version: int = LAYOUT_VERSION

    @cached_property
    def blocks(self) -> tuple[tuple[str, int, int], ...]:
        """(name, start, stop) of each block, in order."""
        n = len(self.joint_names)
        sizes = [("root", 3), ("positions", 3 * n), ("velocities", 3 * n), ("orientations", 6 * n)]
        if self.contact_joints:
            sizes.append(("contacts", len(self.contact_joints)))
        out, start = [], 0
        for name, size in sizes:
            out.append((name, start, start + size))
            start += size
        return tuple(out)

    @property
    def size(self) -> int:
        """Number of floats in one frame."""
        return self.blocks[-1][2]

    @property
    def n_joints(self) -> int:
        """Number of joints in the frame."""
        return len(self.joint_names)

    def slice(self, name: str) -> slice:
        """Columns of a block by name."""
        for block, start, stop in self.blocks:
            if block == name:
                return slice(start, stop)
        raise KeyError(f"the layout has no {name!r} block (blocks: {', '.join(b[0] for b in self.blocks)})")

    def has(self, name: str) -> bool:
        """Whether the layout has a block."""
        return any(b[0] == name for b in self.blocks)

    def to_dict(self) -> dict:
        """JSON-ready description, with the block table for readers in other languages."""
        return {"version": self.version, "fps": self.fps, "joint_names": list(self.joint_names),
                "contact_joints": list(self.contact_joints), "heading_joints": list(self.heading_joints),
                "blocks": [list(b) for b in self.blocks], "size": self.size}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureLayout":
        """Inverse of to_dict; checks the stored block table against the derived one."""
        if int(d.get("version", 1)) > LAYOUT_VERSION:
            raise ValueError(f"feature layout version {d['version']} is newer than this code "
                             f"({LAYOUT_VERSION}); update the toolkit")
        layout = cls(tuple(d["joint_names"]), float(d["fps"]), tuple(d.get("contact_joints", ())),
                     tuple(d.get("heading_joints", ())), int(d.get("version", 1)))
        if "blocks" in d and [list(b) for b in layout.blocks] != [list(b) for b in d["blocks"]]:
            raise ValueError("the feature layout's block table does not match its joints and contacts")
        return layout

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "FeatureLayout":
        """Inverse of to_json."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def for_skeleton(cls, skeleton: Skeleton, fps: float, contacts: bool = True) -> "FeatureLayout":
        """The default layout of a skeleton: all joints, feet contacts found by name, heading from the hips."""
        names = skeleton.names
        feet = tuple(n for j, n in enumerate(names) if _FOOT_NAME.search(n) and skeleton.mirror_map[j] != j)
        return cls(names, float(fps), feet if contacts else (), heading_pair(skeleton))


def heading_pair(skeleton: Skeleton) -> tuple[str, ...]:
    """The left/right joint pair nearest the root whose rest positions differ: their span sets the heading."""
    rest = skeleton.rest_positions()
    depth = np.zeros(skeleton.n_joints, dtype=np.int64)
    for d, level in enumerate(skeleton.depth_levels):
        depth[level] = d
    span = max(float(np.ptp(rest, axis=0).max()), 1e-9)
    lefts = [j for j in np.flatnonzero(skeleton.left_mask)
             if np.linalg.norm(rest[j] - rest[skeleton.mirror_map[j]]) > 1e-3 * span]
    if not lefts:
        return ()
    j = min(lefts, key=lambda k: (depth[k], k))
    return skeleton.names[j], skeleton.names[skeleton.mirror_map[j]]


def character_frames(positions: np.ndarray, world_rot: np.ndarray, layout: FeatureLayout) -> tuple[np.ndarray, np.ndarray]:
    """Ground origin (..., 3) and heading yaw (...) from world positions (..., J, 3) and rotations."""
    if layout.heading_joints:
        left, right = (layout.joint_names.index(n) for n in layout.heading_joints)
        across = positions[..., left, :] - positions[..., right, :]
        forward_x, forward_z = -across[..., 2], across[..., 0]  # across x up
    else:
        forward_x, forward_z = world_rot[..., 0, 0, 2], world_rot[..., 0, 2, 2]
    origin = positions[..., 0, :] * np.array([1.0, 0.0, 1.0])
    return origin, np.arctan2(forward_x, forward_z)


def detect_contacts(positions: np.ndarray, fps: float, layout: FeatureLayout) -> np.ndarray:
    """Foot contacts (T, C) in {0, 1}: a foot joint near its lowest height in the clip and nearly still."""
    if not layout.contact_joints:
        return np.zeros(positions.shape[:1] + (0,))
    idx = [layout.joint_names.index(n) for n in layout.contact_joints]
    feet = positions[:, idx]
    floor = np.percentile(feet[..., 1], 2, axis=0)
    speed = np.zeros(feet.shape[:2])
    if len(feet) > 1:
        speed[1:] = np.linalg.norm(np.diff(feet, axis=0), axis=-1) * fps
        speed[0] = speed[1]
    return ((feet[..., 1] - floor < CONTACT_HEIGHT_M) & (speed < CONTACT_SPEED_MPS)).astype(np.float64)


@dataclass
class Encoded:
    """Features of one clip and the character frame it starts in."""

    features: np.ndarray  # (T, F) float64
    start: np.ndarray  # (3,) x, z, yaw of the first character frame


def encode(motion: Motion, layout: FeatureLayout) -> Encoded:
    """A clip -> feature frames (T, F)."""
    if tuple(motion.skeleton.names) != layout.joint_names:
        raise ValueError("the motion's joints do not match the feature layout's")
    pos, rot = motion.world()
    t = motion.n_frames
    origin, yaw = character_frames(pos, rot, layout)
    to_cf = yaw_matrix(-yaw)  # world -> character frame, per frame
    p_cf = np.einsum("tik,tjk->tji", to_cf, pos - origin[:, None])
    vel = np.zeros_like(pos)
    if t > 1:
        vel[1:] = np.diff(pos, axis=0) * motion.fps
        vel[0] = vel[1]
    v_cf = np.einsum("tik,tjk->tji", to_cf, vel)
    o_cf = matrix_to_sixd(to_cf[:, None] @ rot)
    root = np.zeros((t, 3))
    if t > 1:
        step = np.einsum("tik,tk->ti", to_cf[:-1], np.diff(origin, axis=0))
        root[1:] = np.stack([step[:, 0], step[:, 2], wrap_angle(np.diff(yaw))], axis=-1)
        root[0] = root[1]
    blocks = [root, p_cf.reshape(t, -1), v_cf.reshape(t, -1), o_cf.reshape(t, -1)]
    if layout.contact_joints:
        blocks.append(detect_contacts(pos, motion.fps, layout))
    return Encoded(np.concatenate(blocks, axis=1), np.array([origin[0, 0], origin[0, 2], yaw[0]]))


def advance_root(origin: np.ndarray, yaw: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply root deltas (..., 3) to character frames: origin (..., 3) and yaw (...) -> the next ones."""
    c, s = np.cos(yaw), np.sin(yaw)
    dx, dz = root[..., 0], root[..., 1]
    step = np.stack([c * dx + s * dz, np.zeros_like(dx), -s * dx + c * dz], axis=-1)
    return origin + step, yaw + root[..., 2]


def integrate_root(root: np.ndarray, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Root deltas (T, 3) -> ground origins (T, 3) and yaws (T,); frame 0 sits at start (x, z, yaw)."""
    x0, z0, yaw0 = (0.0, 0.0, 0.0) if start is None else (float(v) for v in start)
    yaw = yaw0 + np.concatenate([[0.0], np.cumsum(root[1:, 2])])
    steps = advance_root(np.zeros((len(root) - 1, 3)), yaw[:-1], root[1:])[0]
    origin = np.array([x0, 0.0, z0]) + np.concatenate([np.zeros((1, 3)), np.cumsum(steps, axis=0)])
    return origin, yaw


@dataclass
class Pose:
    """World-space pose(s) decoded from feature frames; leading shape (...) of the frames."""

    positions: np.ndarray  # (..., J, 3) world joint positions
    world_rotations: np.ndarray  # (..., J, 3, 3)
    local_rotations: np.ndarray  # (..., J, 4) quaternions relative to each parent (root: world)
    root_position: np.ndarray  # (..., 3) world position of the root joint
    contacts: np.ndarray  # (..., C)


def frame_to_pose(frames: np.ndarray, layout: FeatureLayout, skeleton: Skeleton,
                  origin: np.ndarray, yaw: np.ndarray) -> Pose:
    """Feature frames (..., F) placed in character frames (origin (..., 3), yaw (...)) -> world poses."""
    lead = frames.shape[:-1]
    n = layout.n_joints
    to_world = yaw_matrix(yaw)  # (..., 3, 3)
    p_cf = frames[..., layout.slice("positions")].reshape(lead + (n, 3))
    pos = np.einsum("...ik,...jk->...ji", to_world, p_cf) + origin[..., None, :]
    o = sixd_to_matrix(frames[..., layout.slice("orientations")].reshape(lead + (n, 6)))
    world_rot = align_orientations(to_world[..., None, :, :] @ o, pos, bone_targets(skeleton))
    local = matrix_to_quat(skeleton.local_from_world(world_rot))
    contacts = frames[..., layout.slice("contacts")] if layout.has("contacts") else np.zeros(lead + (0,))
    return Pose(pos, world_rot, local, pos[..., 0, :], contacts)


def decode(features: np.ndarray, layout: FeatureLayout, skeleton: Skeleton,
           start: np.ndarray | None = None) -> tuple[Pose, np.ndarray, np.ndarray]:
    """A clip's feature frames (T, F) -> world poses, and the character frames' origins and yaws."""
    origin, yaw = integrate_root(features[:, layout.slice("root")], start)
    return frame_to_pose(features, layout, skeleton, origin, yaw), origin, yaw
