"""The motion tokenizer: a 1D-convolutional VQ-VAE over clips (the T2M-GPT recipe, ../shared/NOTES.md s.2).

Frames (B, T, F) -> encoder (conv, then per level a stride-2 conv and a dilated residual stack) -> one
code_dim vector per 2**levels frames -> nearest codebook entry -> decoder (mirror image, nearest-neighbour
x2 upsampling) -> frames (B, T, F). T must be a multiple of frames_per_token; the runtime pads clips.
The network is fully convolutional, so it trains on short windows and encodes whole clips.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import EMAQuantizer, StraightThroughQuantizer

QUANTIZERS = ("ema_reset", "straight_through")


@dataclass(frozen=True)
class TokenizerSpec:
    """Shapes and kinds that rebuild a MotionTokenizer (stored in checkpoints and model.json)."""

    frame_size: int
    width: int = 512
    codes: int = 512
    code_dim: int = 512
    levels: int = 2                        # x2 temporal downsamplings: 2**levels frames per token
    dilations: tuple[int, ...] = (9, 3, 1)  # one pre-activation residual block per dilation, per level
    quantizer: str = "ema_reset"           # ema_reset | straight_through
    decay: float = 0.99
    reset_threshold: float = 1.0

    @property
    def frames_per_token(self) -> int:
        """Frames one code stands for."""
        return 2 ** self.levels

    def state(self) -> dict:
        """Plain-data form (tuples become lists)."""
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_state(cls, state: dict) -> "TokenizerSpec":
        """Inverse of state()."""
        return cls(**{**state, "dilations": tuple(state["dilations"])})


class ResidualBlock(nn.Module):
    """Pre-activation block: x + conv1x1(relu(dilated conv3(relu(x)))); the length is kept."""

    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.dilated = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv1d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, W, T) -> (B, W, T)."""
        return x + self.mix(F.relu(self.dilated(F.relu(x))))


def residual_stack(width: int, dilations: tuple[int, ...]) -> nn.Sequential:
    """One residual block per dilation (9, 3, 1: the receptive field grows, then detail comes back)."""
    return nn.Sequential(*(ResidualBlock(width, d) for d in dilations))


class Upsample(nn.Module):
    """Nearest-neighbour x2 along time (exports to one ONNX Resize with a dynamic length)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, W, T) -> (B, W, 2T)."""
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


def conv_encoder(spec: TokenizerSpec) -> nn.Sequential:
    """(B, F, T) -> (B, code_dim, T / frames_per_token)."""
    layers: list[nn.Module] = [nn.Conv1d(spec.frame_size, spec.width, 3, padding=1), nn.ReLU()]
    for _ in range(spec.levels):
        # kernel 4, stride 2, padding 1 halves any even length exactly.
        layers += [nn.Conv1d(spec.width, spec.width, 4, stride=2, padding=1),
                   residual_stack(spec.width, spec.dilations)]
    layers.append(nn.Conv1d(spec.width, spec.code_dim, 3, padding=1))
    return nn.Sequential(*layers)


def conv_decoder(spec: TokenizerSpec) -> nn.Sequential:
    """(B, code_dim, N) -> (B, F, N * frames_per_token)."""
    layers: list[nn.Module] = [nn.Conv1d(spec.code_dim, spec.width, 3, padding=1), nn.ReLU()]
    for _ in range(spec.levels):
        layers += [residual_stack(spec.width, spec.dilations), Upsample(),
                   nn.Conv1d(spec.width, spec.width, 3, padding=1)]
    layers += [nn.Conv1d(spec.width, spec.width, 3, padding=1), nn.ReLU(),
               nn.Conv1d(spec.width, spec.frame_size, 3, padding=1)]
    return nn.Sequential(*layers)


class MotionTokenizer(nn.Module):
    """Encoder, quantiser and decoder over normalised feature frames (B, T, F)."""

    def __init__(self, spec: TokenizerSpec):
        super().__init__()
        if spec.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer {spec.quantizer!r}: expected one of {', '.join(QUANTIZERS)}")
        self.spec = spec
        self.encoder = conv_encoder(spec)
        self.decoder = conv_decoder(spec)
        self.quantizer: EMAQuantizer | StraightThroughQuantizer = (
            EMAQuantizer(spec.codes, spec.code_dim, spec.decay, spec.reset_threshold)
            if spec.quantizer == "ema_reset" else StraightThroughQuantizer(spec.codes, spec.code_dim))

    def latents(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder outputs before quantisation: (B, T, F) -> (B, N, code_dim)."""
        return self.encoder(frames.transpose(1, 2)).transpose(1, 2)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Codes (B, N) int64 of normalised frames (B, T, F), T a multiple of frames_per_token."""
        z = self.latents(frames)
        return self.quantizer.nearest(z.reshape(-1, z.shape[-1])).view(z.shape[:2])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Normalised frames (B, N * frames_per_token, F) from codes (B, N)."""
        return self.decoder(self.quantizer.codebook[codes].transpose(1, 2)).transpose(1, 2)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruct frames (B, T, F): recon, codes (B, N), commit (and codebook) losses, perplexity."""
        z = self.latents(frames)
        q = self.quantizer(z.reshape(-1, z.shape[-1]))
        z_q = q["z_q"].view(z.shape)
        out = dict(q, codes=q["codes"].view(z.shape[:2]))
        out["recon"] = self.decoder(z_q.transpose(1, 2)).transpose(1, 2)
        del out["z_q"]
        return out
