"""Vector quantisers: an EMA codebook with dead-code reset, and the plain straight-through codebook."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class Codebook(nn.Module):
    """What every quantiser shares: a (K, D) codebook, nearest-code lookup and perplexity."""

    codebook: torch.Tensor

    @property
    def codes(self) -> int:
        """Number of codebook entries."""
        return self.codebook.shape[0]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of z (B, D)."""
        dist2 = (z.pow(2).sum(1, keepdim=True) - 2 * z @ self.codebook.t()
                 + self.codebook.pow(2).sum(1))
        return dist2.argmin(dim=1)

    def perplexity(self, codes: torch.Tensor) -> torch.Tensor:
        """exp(entropy) of the code usage in a batch: 1 when one code is used, K when all are equal."""
        p = torch.bincount(codes, minlength=self.codes).float() / codes.numel()
        return torch.exp(-(p * torch.log(p + 1e-10)).sum())


class EMAQuantizer(Codebook):
    """Nearest-code quantisation of (B, D) vectors with a straight-through gradient.

    The codebook is not trained by gradients: it follows exponential moving averages (decay) of the
    per-code counts and sums of the encoder outputs assigned to it. It starts from the first training
    batch, and a code whose EMA count falls below reset_threshold is moved onto a random vector of the
    current batch.
    """

    def __init__(self, codes: int, dim: int, decay: float = 0.99, reset_threshold: float = 1.0,
                 eps: float = 1e-5):
        super().__init__()
        self.decay, self.reset_threshold, self.eps = decay, reset_threshold, eps
        self.register_buffer("codebook", torch.zeros(codes, dim))
        self.register_buffer("ema_count", torch.zeros(codes))
        self.register_buffer("ema_sum", torch.zeros(codes, dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def _random_rows(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """n rows of z drawn at random (with replacement and a little noise when z has fewer rows)."""
        if len(z) >= n:
            return z[torch.randperm(len(z), device=z.device)[:n]]
        rows = z[torch.randint(len(z), (n,), device=z.device)]
        return rows + 0.01 * z.std() * torch.randn_like(rows)

    @torch.no_grad()
    def initialise(self, z: torch.Tensor) -> None:
        """Start the codebook from random rows of the first batch."""
        self.codebook.copy_(self._random_rows(z, self.codes))
        self.ema_sum.copy_(self.codebook)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step of counts and sums, then dead-code reset from the batch z."""
        counts = torch.bincount(codes, minlength=self.codes).to(z.dtype)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, z)
        if dist.is_available() and dist.is_initialized():
            # Sum the statistics of all ranks so every rank's codebook follows the whole batch.
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        dead = self.ema_count < self.reset_threshold
        fresh = self._random_rows(z, self.codes)
        centroid = self.ema_sum / self.ema_count.clamp(min=self.eps).unsqueeze(1)
        self.codebook.copy_(torch.where(dead.unsqueeze(1), fresh, centroid))
        # A reset code restarts its averages at the new vector with a count of one.
        self.ema_sum.copy_(torch.where(dead.unsqueeze(1), fresh, self.ema_sum))
        self.ema_count.copy_(torch.where(dead, torch.ones_like(self.ema_count), self.ema_count))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quantise z (B, D): straight-through z_q, code indices, commitment loss and perplexity."""
        if self.training and not bool(self.initialised):
            self.initialise(z.detach())
        codes = self.nearest(z.detach())
        z_q = self.codebook[codes]
        if self.training:
            self.update(z.detach(), codes)
        commit = F.mse_loss(z, z_q)
        return {"z_q": z + (z_q - z).detach(), "codes": codes, "commit": commit,
                "perplexity": self.perplexity(codes)}


class StraightThroughQuantizer(Codebook):
    """The original VQ-VAE bottleneck, kept as a baseline: a codebook learned by gradient, no EMA, no reset.

    The codebook starts as small uniform noise (+-1/K) and is pulled towards the encoder outputs by the
    codebook loss ||sg(z) - e||^2 (returned as "codebook", weight 1); codes that no output ever picks
    get no gradient and stay dead, which is the failure EMAQuantizer's reset exists to avoid.
    """

    def __init__(self, codes: int, dim: int):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(codes, dim).uniform_(-1.0 / codes, 1.0 / codes))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quantise z (B, D): straight-through z_q, codes, commitment and codebook losses, perplexity."""
        with torch.no_grad():
            codes = self.nearest(z)
        e = self.codebook[codes]
        return {"z_q": z + (e - z).detach(), "codes": codes, "commit": F.mse_loss(z, e.detach()),
                "codebook": F.mse_loss(z.detach(), e), "perplexity": self.perplexity(codes)}
