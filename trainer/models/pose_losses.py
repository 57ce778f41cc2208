"""Pose losses on predicted frames in raw units: the rotations' agreement with the positions, and planted feet.

Engines show the local rotations, not the predicted positions, so a model whose two heads disagree shows
limbs away from where it predicted them; and a foot the data plants must stay put in the world, which the
per-column reconstruction loss only asks of each column apart (root step, turn and foot position).
Both losses are in square centimetres, so their weights read the same on any data.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.features import FeatureLayout
from runtime.skeleton import Skeleton

CM = 100.0
CONTACT_ON = 0.5


def sixd_to_matrix(sixd: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from 6D (..., 6): the first two columns, orthonormalised."""
    c0 = F.normalize(sixd[..., 0:3], dim=-1)
    b = sixd[..., 3:6]
    c1 = F.normalize(b - (c0 * b).sum(-1, keepdim=True) * c0, dim=-1)
    return torch.stack([c0, c1, torch.cross(c0, c1, dim=-1)], dim=-1)


class PoseLosses:
    """Losses that read a raw (denormalised) frame through its layout and the skeleton."""

    def __init__(self, layout: FeatureLayout, skeleton: Skeleton, shift, scale, device: torch.device):
        self.layout = layout
        self.shift = torch.as_tensor(shift, dtype=torch.float32, device=device)
        self.scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
        self.parents = torch.as_tensor(skeleton.parents[1:], device=device)
        self.offsets = torch.as_tensor(skeleton.offsets[1:], dtype=torch.float32, device=device)
        self.feet = torch.as_tensor([layout.joint_names.index(n) for n in layout.contact_joints], device=device,
                                    dtype=torch.long)
        self.n = layout.n_joints

    def raw(self, frame: torch.Tensor) -> torch.Tensor:
        """Normalised frames (B, F) in raw units."""
        return frame * self.scale + self.shift

    def _positions(self, raw: torch.Tensor) -> torch.Tensor:
        return raw[:, self.layout.slice("positions")].view(-1, self.n, 3)

    def rotation_gap(self, raw: torch.Tensor) -> torch.Tensor:
        """Mean squared gap (cm^2) between each predicted bone and its parent's rotation applied to the rest offset."""
        p = self._positions(raw)
        rot = sixd_to_matrix(raw[:, self.layout.slice("orientations")].view(-1, self.n, 6))
        bones = p[:, 1:] - p[:, self.parents]
        rested = (rot[:, self.parents] @ self.offsets.unsqueeze(-1)).squeeze(-1)
        return ((bones - rested) * CM).pow(2).sum(-1).mean()

    def foot_steps(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Horizontal world displacement (B, C, 2) of each contact joint from raw frame before to after."""
        root = after[:, self.layout.slice("root")]
        feet = self._positions(after)[:, self.feet]
        c, s = torch.cos(root[:, 2:3]), torch.sin(root[:, 2:3])
        # after's feet seen from before's character frame: turn by dyaw, then step by (dx, dz).
        x = c * feet[..., 0] + s * feet[..., 2] + root[:, 0:1]
        z = -s * feet[..., 0] + c * feet[..., 2] + root[:, 1:2]
        prev = self._positions(before)[:, self.feet]
        return torch.stack([x - prev[..., 0], z - prev[..., 2]], dim=-1)

    def foot_slide(self, seen: torch.Tensor, predicted: torch.Tensor, true_before: torch.Tensor,
                   true_after: torch.Tensor) -> torch.Tensor:
        """Mean squared error (cm^2) of planted feet's world steps: predicted from seen against the data's."""
        planted = (true_after[:, self.layout.slice("contacts")] > CONTACT_ON).float()
        error = (self.foot_steps(seen, predicted) - self.foot_steps(true_before, true_after)) * CM
        return (error.pow(2).sum(-1) * planted).mean()
