"""Decoders: (z, condition) -> predicted frames, normalised. Both stay ONNX-exportable (static graphs)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

N_LAYERS = 3  # in -> hidden -> hidden -> out, as in the reference


def _layer_sizes(latent: int, cond_size: int, hidden: int, out_size: int) -> list[tuple[int, int]]:
    """(in, out) of each layer; z is concatenated onto every layer's input against posterior collapse."""
    ins = [latent + cond_size] + [latent + hidden] * (N_LAYERS - 1)
    outs = [hidden] * (N_LAYERS - 1) + [out_size]
    return list(zip(ins, outs))


class PoseDecoder(nn.Module):
    """A single MLP decoder (the reference's PoseVAE): z at every layer, condition at layer 0."""

    def __init__(self, latent: int, cond_size: int, out_size: int, hidden: int = 256):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in _layer_sizes(latent, cond_size, hidden, out_size))

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Predicted frames (B, n_future*F) from z (B, latent) and condition (B, n_cond*F)."""
        h = condition
        for i, layer in enumerate(self.layers):
            h = layer(torch.cat((z, h), dim=-1))
            if i < len(self.layers) - 1:
                h = F.elu(h)
        return h


class MixtureDecoder(nn.Module):
    """The mixture-of-experts decoder, computed by blending expert outputs.

    Each layer is linear before its activation, so blending the experts' outputs with the gate's
    coefficients, sum_e c_e (h W_e + b_e), is the same function as the reference's per-sample weight
    blend (h (sum_e c_e W_e) + sum_e c_e b_e) but needs one dense (B, in) x (in, E*out) matmul per layer
    instead of building a (B, in, out) weight tensor.
    """

    def __init__(self, latent: int, cond_size: int, out_size: int, hidden: int = 256,
                 experts: int = 6, gate_hidden: int = 64, init: str = "reference"):
        super().__init__()
        self.experts = experts
        sizes = _layer_sizes(latent, cond_size, hidden, out_size)
        # Stored (in, E, out) so that flatten(1) is a free (in, E*out) view for the dense matmul.
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(i, experts, o)) for i, o in sizes)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(experts, o)) for _, o in sizes)
        self.gate = nn.Sequential(
            nn.Linear(latent + cond_size, gate_hidden), nn.ELU(),
            nn.Linear(gate_hidden, gate_hidden), nn.ELU(),
            nn.Linear(gate_hidden, experts))
        self.reset_experts(init)

    @torch.no_grad()
    def reset_experts(self, init: str = "reference") -> None:
        """Initialise expert weights: 'reference' (bound 1/sqrt(in*out), biases 0.01) or 'linear'."""
        for weight, bias in zip(self.weights, self.biases):
            fan_in, fan_out = weight.shape[0], weight.shape[2]
            if init == "reference":
                # The reference computes the fan-in over an (E, in, out) tensor, i.e. in*out: its
                # experts start about sqrt(out) = 16x smaller than an nn.Linear would.
                bound = 1.0 / math.sqrt(fan_in * fan_out)
                bias.fill_(0.01)
            elif init == "linear":
                bound = 1.0 / math.sqrt(fan_in)
                bias.uniform_(-bound, bound)
            else:
                raise ValueError(f"unknown expert init {init!r}")
            weight.uniform_(-bound, bound)

    def expert_parameters(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the expert weights (E, in, out) and biases (E, out) as views."""
        return [(w.permute(1, 0, 2), b) for w, b in zip(self.weights, self.biases)]

    def coefficients(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Gate coefficients (B, E), shared by all layers."""
        return torch.softmax(self.gate(torch.cat((z, condition), dim=-1)), dim=-1)

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Predicted frames (B, n_future*F) from z (B, latent) and condition (B, n_cond*F)."""
        blend = self.coefficients(z, condition).unsqueeze(1)  # (B, 1, E)
        h = condition
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.cat((z, h), dim=-1)
            # Each expert's bias rides along in its output: sum_e c_e (x W_e + b_e), one Gemm in ONNX.
            out = torch.addmm(bias.flatten(), x, weight.flatten(1)).view(-1, self.experts, weight.shape[2])
            h = torch.bmm(blend, out).squeeze(1)
            if i < len(self.weights) - 1:
                h = F.elu(h)
        return h
