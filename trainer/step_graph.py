"""The exported runtime step: decoder + denormalisation + root integration + engine-ready pose, in one graph.

Putting the pose decoding inside the ONNX graph makes one onnxruntime call per step do all the work, with
no Python-level array math in the runtime's hot path (and everything stays on the GPU under CUDA).
It computes what runtime.features.frame_to_pose and advance_root compute, which the tests check, except
that each joint's predicted orientation is turned so that its bones point at the predicted positions of
its children (see aligned_rows): engines show the rotations, and this way the rotations land the joints
where the model predicted them instead of where two separately predicted heads happen to disagree.

Inputs:  z (B, latent), condition (B, n_cond*F) normalised, origin (B, 3), yaw (B, 1),
         previous_rotations (B, J, 4)  (the last step's output, for quaternion hemisphere continuity)
Outputs: next_condition (B, n_cond*F), next_origin (B, 3), next_yaw (B, 1), positions (B, J, 3),
         rotations (B, J, 4) local (x, y, z, w), the root's entry in world space, contacts (B, C),
         diverged (B,) bool, next_frame (B, F) normalised
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from runtime.features import FeatureLayout
from runtime.bone_alignment import bone_targets
from runtime.rotations import QUAT_CANDIDATES
from runtime.skeleton import Skeleton

TWO_PI = 2.0 * np.pi
INPUTS = ["z", "condition", "origin", "yaw", "previous_rotations"]
OUTPUTS = ["next_condition", "next_origin", "next_yaw", "positions", "rotations", "contacts", "diverged",
           "next_frame"]


def _levi_civita() -> np.ndarray:
    """(9, 3): the outer product a b^T, flattened, times this matrix is the cross product a x b."""
    e = np.zeros((3, 3, 3))
    for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        e[i, j, k], e[j, i, k] = 1.0, -1.0
    return e.reshape(9, 3)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


class StepGraph(nn.Module):
    """One runtime step for a batch of characters; see the module docstring for inputs and outputs.

    Written for a small ONNX graph: at one character the step costs about one microsecond per node, so
    rotations are built with matmuls against constant matrices rather than element by element.
    """

    def __init__(self, decoder: nn.Module, shift: np.ndarray, scale: np.ndarray, bounds: np.ndarray,
                 layout: FeatureLayout, skeleton: Skeleton):
        super().__init__()
        self.decoder = decoder
        self.frame = layout.size
        self.joints = layout.n_joints
        # One Split of the denormalised frame into its blocks; the root block comes as (dx, dz) and dyaw.
        self.blocks = ["step", "turn"] + [name for name, _, _ in layout.blocks[1:]]
        self.sizes = [2, 1] + [stop - start for _, start, stop in layout.blocks[1:]]
        f32 = torch.float32
        bounds = np.nan_to_num(np.asarray(bounds, np.float64), posinf=1e30, neginf=-1e30)
        self.register_buffer("shift", torch.as_tensor(shift, dtype=f32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=f32))
        self.register_buffer("centre", torch.as_tensor((bounds[0] + bounds[1]) / 2, dtype=f32))
        self.register_buffer("radius", torch.as_tensor((bounds[1] - bounds[0]) / 2, dtype=f32))
        # Joint 0 of the gathered set is the character frame's yaw, the root's parent in world space.
        self.register_buffer("parents", torch.as_tensor(np.concatenate([[0], skeleton.parents[1:] + 1]),
                                                        dtype=torch.long))
        self.register_buffer("quat_map", torch.as_tensor(QUAT_CANDIDATES[:9], dtype=f32))
        self.register_buffer("quat_bias", torch.as_tensor(QUAT_CANDIDATES[9], dtype=f32))
        self.register_buffer("cross", torch.as_tensor(_levi_civita(), dtype=f32))
        self.register_buffer("ground", torch.tensor([[1.0, 0, 0], [0, 0, 1]]))  # (dx, dz) -> (dx, 0, dz)
        self.register_buffer("diag", torch.tensor([0, 5, 10, 15], dtype=torch.long))
        self.register_buffer("eye4", torch.eye(4, dtype=f32))
        # turn(yaw) = I + sin K + (1 - cos) K @ K for the +Y axis, linear in (sin, cos) = sin(yaw + phase).
        k = np.array([[0.0, 0, 1], [0, 0, 0], [-1, 0, 0]])
        self.register_buffer("phase", torch.tensor([0.0, np.pi / 2], dtype=f32))
        self.register_buffer("turn_sc", torch.as_tensor(np.stack([k.ravel(), -(k @ k).ravel()]), dtype=f32))
        self.register_buffer("turn_one", torch.as_tensor((np.eye(3) + k @ k).ravel(), dtype=f32))
        targets = bone_targets(skeleton)
        for name in ("primary", "second_a", "second_b"):
            self.register_buffer(name, torch.as_tensor(targets[name], dtype=torch.long))
        for name in ("leaf", "own_axis"):
            self.register_buffer(name, torch.as_tensor(targets[name][:, None], dtype=f32))
        for name in ("rest_primary", "rest_second"):
            self.register_buffer(name, torch.as_tensor(targets[name][:, None, :], dtype=f32))

    def _frame_rows(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Orthonormal frames (B, J, 3, 3), as rows, from a primary and a secondary direction (B, J, 3)."""
        u1 = _unit(first)
        u2 = _unit(second - (u1 * second).sum(dim=-1, keepdim=True) * u1)
        u3 = (u1.unsqueeze(-1) * u2.unsqueeze(-2)).view(-1, self.joints, 9) @ self.cross
        return torch.stack([u1, u2, u3], dim=-2)

    def aligned_rows(self, rows: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Orientations (as transposed matrices, B, J, 3, 3) turned so their bones point at the positions p.

        Each joint's rotation M becomes D M, where D takes the rest bone vectors as M carries them onto the
        predicted ones (primary bone exactly, the secondary vector as near as the primary allows).
        """
        have_primary = (self.rest_primary @ rows).squeeze(-2)   # M @ rest, with rows = M^T
        have_second = (self.rest_second @ rows).squeeze(-2)
        want_primary = self.leaf * have_primary + (1 - self.leaf) * (p[:, self.primary] - p)
        want_second = (self.own_axis * have_second
                       + (1 - self.own_axis) * (p[:, self.second_a] - p[:, self.second_b]))
        # rows' = (D M)^T = rows @ Fa @ Fb^T, with Fa = have^T and Fb = want^T as row frames.
        return rows @ self._frame_rows(have_primary, have_second).transpose(-1, -2) @ self._frame_rows(
            want_primary, want_second)

    def _turn(self, yaw: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) rotations about +Y by yaw (B, 1)."""
        return torch.addmm(self.turn_one, torch.sin(yaw + self.phase), self.turn_sc).view(-1, 3, 3)

    def forward(self, z, condition, origin, yaw, previous_rotations, with_frames: bool = False):
        """One step; see the module docstring. with_frames: also the world frames (B, 1+J, 3, 3) the pose came from
        (the yaw's turn, then each joint's orientation transposed), for stages appended to the step."""
        nxt = self.decoder(z, condition)
        raw = dict(zip(self.blocks, torch.split(nxt * self.scale + self.shift, self.sizes, dim=1)))
        if condition.shape[1] == self.frame:
            next_condition = nxt
        else:
            next_condition = torch.cat([condition[:, self.frame:], nxt], dim=1)
        # Root: move in the previous character frame, then turn.
        step = (raw["step"] @ self.ground).unsqueeze(-1)
        next_origin = origin + (self._turn(yaw) @ step).squeeze(-1)
        turned = yaw + raw["turn"]
        next_yaw = turned - TWO_PI * torch.round(turned / TWO_PI)  # wrapped to [-pi, pi]
        turn = self._turn(next_yaw)

        p = raw["positions"].view(-1, self.joints, 3)
        positions = p @ turn.transpose(1, 2) + next_origin.unsqueeze(1)

        o = raw["orientations"].view(-1, self.joints, 6)
        c0 = _unit(o[..., 0:3])
        b = o[..., 3:6]
        c1 = _unit(b - (c0 * b).sum(dim=-1, keepdim=True) * c0)
        c2 = (c0.unsqueeze(-1) * c1.unsqueeze(-2)).view(-1, self.joints, 9) @ self.cross
        rows = torch.cat([c0, c1, c2], dim=-1).view(-1, self.joints, 3, 3)  # rows = columns of M
        rows = self.aligned_rows(rows, p)
        # Transposed frames; the root's parent is the yaw, so its local rotation comes out in world space.
        frames = torch.cat([turn.unsqueeze(1), rows], dim=1)  # (B, 1+J, 3, 3)
        local = frames[:, self.parents] @ rows.transpose(-1, -2)  # parent^T @ M

        cands = torch.addmm(self.quat_bias, local.reshape(-1, 9), self.quat_map)  # (B*J, 16)
        pick = self.eye4[torch.index_select(cands, 1, self.diag).argmax(dim=-1)]  # one-hot (B*J, 4)
        q = (pick.unsqueeze(1) @ cands.view(-1, 4, 4)).view(-1, self.joints, 4)
        # Unit length, in the hemisphere of the previous step's rotation: one division does both.
        norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
        flip = (q * previous_rotations).sum(dim=-1, keepdim=True) < 0
        q = q / torch.where(flip, -norm, norm)

        # NaN fails the comparison too, so this also catches non-finite frames.
        inside = (torch.abs(nxt - self.centre) <= self.radius).to(torch.float32).amin(dim=1)
        contacts = raw.get("contacts", nxt[:, :0])
        out = next_condition, next_origin, next_yaw, positions, q, contacts, inside < 0.5, nxt
        return out + (frames,) if with_frames else out
