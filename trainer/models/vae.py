"""The Motion VAE: encoder, decoder and (optionally) a VQ bottleneck, built from a ModelSpec."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .decoders import MixtureDecoder, PoseDecoder
from .encoder import PoseEncoder
from .quantizer import EMAQuantizer


@dataclass(frozen=True)
class ModelSpec:
    """Shapes and kinds that rebuild a MotionVAE (stored in checkpoints)."""

    frame_size: int
    latent: int = 32
    hidden: int = 256
    n_cond: int = 1
    n_future: int = 1
    decoder: str = "mixture"        # mixture | single
    experts: int = 6
    gate_hidden: int = 64
    expert_init: str = "reference"
    quantize: bool = False
    vq_codes: int = 512
    vq_decay: float = 0.99
    vq_reset_threshold: float = 1.0
    prior: str = "standard"         # standard: N(0, I) | learned: N(mu(c), sigma(c)) from the condition

    @property
    def cond_size(self) -> int:
        """Columns of the flattened condition."""
        return self.n_cond * self.frame_size

    @property
    def target_size(self) -> int:
        """Columns of the flattened future frames."""
        return self.n_future * self.frame_size

    def state(self) -> dict:
        """Plain-data form."""
        return asdict(self)


class ConditionalPrior(nn.Module):
    """p(z | condition): a diagonal Gaussian whose mean and log-variance an MLP reads off the condition.

    Random walking samples z from here instead of N(0, I), so the latents the decoder gets at run time are
    the kind it was trained on for that pose: with a fixed standard-normal prior the posteriors a
    capacity-limited KL leaves behind do not cover N(0, I), and off-distribution latents lead to poses
    (standing, circling) the data seldom holds.
    """

    def __init__(self, cond_size: int, latent: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cond_size, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, 2 * latent))
        with torch.no_grad():  # start as N(0, I)
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()

    def forward(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (B, latent) of z given the condition (B, n_cond*F)."""
        mu, logvar = self.net(condition).chunk(2, dim=-1)
        return mu, logvar

    def sample(self, noise: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """z for standard-normal noise (B, latent): mu(c) + sigma(c) * noise."""
        mu, logvar = self(condition)
        return mu + torch.exp(0.5 * logvar) * noise


class MotionVAE(nn.Module):
    """Encoder + decoder; forward(x, c) returns the prediction and the bottleneck's loss inputs."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = PoseEncoder(spec.target_size, spec.cond_size, spec.latent, spec.hidden,
                                   variational=not spec.quantize)
        if spec.decoder == "mixture":
            self.decoder = MixtureDecoder(spec.latent, spec.cond_size, spec.target_size, spec.hidden,
                                          spec.experts, spec.gate_hidden, spec.expert_init)
        elif spec.decoder == "single":
            self.decoder = PoseDecoder(spec.latent, spec.cond_size, spec.target_size, spec.hidden)
        else:
            raise ValueError(f"unknown decoder {spec.decoder!r}")
        self.quantizer = (EMAQuantizer(spec.vq_codes, spec.latent, spec.vq_decay, spec.vq_reset_threshold)
                          if spec.quantize else None)
        if spec.prior not in ("standard", "learned"):
            raise ValueError(f"unknown prior {spec.prior!r}")
        self.prior = (ConditionalPrior(spec.cond_size, spec.latent, spec.hidden)
                      if spec.prior == "learned" and not spec.quantize else None)

    def encode(self, x: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior of the target frames: {'mu', 'logvar'}, or {'z_e'} for a VQ model."""
        stats = self.encoder(x, condition)
        if self.quantizer is not None:
            return {"z_e": stats}
        mu, logvar = stats.chunk(2, dim=-1)
        return {"mu": mu, "logvar": logvar}

    def posterior_mean(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The latent that best explains x: the posterior mean, or the nearest code."""
        stats = self.encode(x, condition)
        if self.quantizer is not None:
            return self.quantizer.codebook[self.quantizer.nearest(stats["z_e"])]
        return stats["mu"]

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruct x (B, n_future*F) from condition (B, n_cond*F) through a sampled/quantised z."""
        out = self.encode(x, condition)
        if self.quantizer is not None:
            out.update(self.quantizer(out["z_e"]))
            z = out["z_q"]
        else:
            z = out["mu"] + torch.randn_like(out["mu"]) * torch.exp(0.5 * out["logvar"])
            if self.prior is not None:
                out["prior_mu"], out["prior_logvar"] = self.prior(condition)
        out["prediction"] = self.decoder(z, condition)
        return out

    def sample_prior(self, n: int, generator: torch.Generator | None = None,
                     condition: torch.Tensor | None = None) -> torch.Tensor:
        """n latents from the prior: standard normal, uniformly chosen codes, or p(z | condition) if learned."""
        # Drawn on the CPU so that a CPU generator gives the same latents on any device.
        device = next(self.parameters()).device
        if self.quantizer is not None:
            idx = torch.randint(self.quantizer.codes, (n,), generator=generator)
            return self.quantizer.codebook[idx.to(device)]
        noise = torch.randn(n, self.spec.latent, generator=generator).to(device)
        if self.prior is None:
            return noise
        if condition is None:
            raise ValueError("a learned prior needs the condition to sample from")
        return self.prior.sample(noise, condition)


class NextFrameDecoder(nn.Module):
    """The decoder reduced to its first predicted frame: forward(latent, condition) -> (B, F), for export.

    With a learned prior the latent input is standard-normal noise that the prior maps to z for the
    condition, so everything outside the graph (random walking, policies) keeps drawing from N(0, I).
    """

    def __init__(self, decoder: nn.Module, frame_size: int, prior: ConditionalPrior | None = None):
        super().__init__()
        self.decoder = decoder
        self.frame_size = frame_size
        self.prior = prior

    def forward(self, latent: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Next frame (normalised) from the latent (B, latent) and condition (B, n_cond*F)."""
        z = latent if self.prior is None else self.prior.sample(latent, condition)
        return self.decoder(z, condition)[:, : self.frame_size]


def next_frame_decoder(model: MotionVAE) -> NextFrameDecoder:
    """The export-ready decoder of a model (only the next frame, whatever n_future)."""
    return NextFrameDecoder(model.decoder, model.spec.frame_size, model.prior)
