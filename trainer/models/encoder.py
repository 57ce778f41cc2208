"""The conditional pose encoder of the Motion VAE."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PoseEncoder(nn.Module):
    """[x, c] -> latent statistics; x (the frames to explain) is fed again to every later layer.

    Returns (B, 2 * latent) for a Gaussian posterior (mu, logvar) or (B, latent) for a VQ encoder.
    """

    def __init__(self, target_size: int, cond_size: int, latent: int, hidden: int = 256,
                 variational: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(target_size + cond_size, hidden)
        self.fc2 = nn.Linear(target_size + hidden, hidden)
        self.head = nn.Linear(target_size + hidden, latent * (2 if variational else 1))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Latent statistics for target frames x (B, n_future*F) given condition (B, n_cond*F)."""
        h = F.elu(self.fc1(torch.cat((x, condition), dim=-1)))
        h = F.elu(self.fc2(torch.cat((x, h), dim=-1)))
        return self.head(torch.cat((x, h), dim=-1))
