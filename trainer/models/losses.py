"""Loss terms: weighted multi-frame reconstruction, KL (beta or capacity), and their schedule."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                        columns: torch.Tensor | None = None) -> torch.Tensor:
    """sum_k w_k * MSE of future frame k; prediction/target (B, n_future, F), weights (n_future,).

    columns (F,), when given, weighs each feature column's squared error before the mean.
    """
    error = (prediction - target).pow(2)
    if columns is not None:
        error = error * columns
    return (error.mean(dim=(0, 2)) * weights).sum()


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
                     prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q(z|x) || p(z)) of each latent dimension, averaged over the batch: (latent,) nats.

    p is N(0, I), or the diagonal Gaussian N(prior_mu, exp(prior_logvar)) when given.
    """
    if prior_mu is None:
        return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(dim=0)
    ratio = (logvar - prior_logvar).exp()
    return (0.5 * (ratio + (mu - prior_mu).pow(2) * (-prior_logvar).exp() - 1 - (logvar - prior_logvar))).mean(dim=0)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
                  prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """KL averaged over batch and latent dimensions (the reference's mean reduction)."""
    return kl_per_dimension(mu, logvar, prior_mu, prior_logvar).mean()


@dataclass(frozen=True)
class KLSchedule:
    """beta mode: beta * KL.  capacity mode: gamma * |KL_frame - C(step)|, C rising linearly to C_max.

    In capacity mode KL_frame is summed over latent dimensions (nats per frame), so C is readable as
    the information the latent may carry per frame; beta mode keeps the reference's mean reduction.
    """

    mode: str = "beta"
    beta: float = 1.0
    gamma: float = 10.0
    capacity_max: float = 10.0
    capacity_steps: int = 100_000

    def capacity(self, step: int) -> float:
        """C at optimiser step (0 in beta mode)."""
        if self.mode != "capacity":
            return 0.0
        if self.capacity_steps == 0:
            return self.capacity_max
        return self.capacity_max * min(step / self.capacity_steps, 1.0)

    def loss(self, kl_mean: torch.Tensor, latent: int, step: int) -> torch.Tensor:
        """The weighted KL term for a mean-reduced KL over `latent` dimensions."""
        if self.mode == "beta":
            return self.beta * kl_mean
        return self.gamma * (kl_mean * latent - self.capacity(step)).abs()
