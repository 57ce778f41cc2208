"""The frozen decoder step a control environment runs: the model directory's own ONNX graph, or its torch twin.

Both compute the runtime step of trainer/step_graph.py (decoder + root integration + pose), so characters in
training move exactly as they will in runtime.Controller. The ONNX one needs only the model directory; the
torch one (from the training run) keeps everything on the GPU when there is one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from runtime.model import MotionModel, load_model

from ..checkpoint import LoadedRun, load_run
from ..foot_lock_graph import step_session
from ..step_graph import OUTPUTS, StepGraph


class PolicyError(ValueError):
    """Bad policy-training input (model, run, task or arguments); the message says what and where."""


class Stepper:
    """step(z, condition, origin, yaw, previous_rotations) -> dict of the step graph's outputs (torch)."""

    def __init__(self, model: MotionModel, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.shift = torch.as_tensor(model.shift, device=device)
        self.scale = torch.as_tensor(model.scale, device=device)

    def __call__(self, z: torch.Tensor, condition: torch.Tensor, origin: torch.Tensor, yaw: torch.Tensor,
                 rotations: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class OnnxStepper(Stepper):
    """The model directory's decoder.onnx through onnxruntime (CPU): bit-for-bit the runtime's step (without the
    foot lock, which changes only what is shown)."""

    def __init__(self, model: MotionModel, device: torch.device) -> None:
        super().__init__(model, device)
        self.session = step_session(model)

    def __call__(self, z, condition, origin, yaw, rotations):
        feed = {"z": z, "condition": condition, "origin": origin, "yaw": yaw, "previous_rotations": rotations}
        out = self.session.run(OUTPUTS, {k: v.detach().cpu().numpy() for k, v in feed.items()})
        return {k: torch.from_numpy(v).to(self.device) for k, v in zip(OUTPUTS, out)}


class TorchStepper(Stepper):
    """A step graph in torch: the training run's decoder rebuilt (see from_run), or any decoder for tests."""

    def __init__(self, model: MotionModel, device: torch.device, graph: StepGraph) -> None:
        super().__init__(model, device)
        self.graph = graph.to(device).eval()
        for p in self.graph.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_run(cls, model: MotionModel, device: torch.device, run: LoadedRun) -> "TorchStepper":
        """The step of the run that was exported to model; PolicyError when they differ."""
        norm = run.normaliser
        same = (run.layout.size == model.frame_size and run.spec.latent == model.latent_size
                and run.spec.n_cond == model.n_cond and np.allclose(norm.shift, model.shift, atol=1e-5)
                and np.allclose(norm.scale, model.scale, atol=1e-5))
        if not same:
            raise PolicyError(f"{run.path}: this training run is not the one exported to {model.path} "
                              "(frame size, latent, condition frames or normalisation differ)")
        return cls(model, device, StepGraph(run.decoder.eval(), norm.shift, norm.scale, model.bounds, run.layout,
                                            run.skeleton))

    def __call__(self, z, condition, origin, yaw, rotations):
        with torch.no_grad():
            return dict(zip(OUTPUTS, self.graph(z, condition, origin, yaw, rotations)))


def make_stepper(model_dir: str | Path, vae_run: str | Path | None, device: torch.device) -> Stepper:
    """The torch step of vae_run when given (checked against the model directory), else the model's ONNX step."""
    model = load_model(model_dir)
    if vae_run is None:
        return OnnxStepper(model, device)
    return TorchStepper.from_run(model, device, load_run(vae_run, device))
