"""Export a trained policy into its model directory: policy-<task>.onnx plus its entry in model.json; and read
an exported policy back into a network, to train it further.

The ONNX file is written beside its destination and renamed into place, then model.json (its sha256 under
"files", the observation layout and action scale under "policies") is replaced atomically, so a reader sees
either the old model or the new one. The graph is checked against torch before anything is replaced.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from runtime.atomic import atomic_path, atomic_write_text, folder_lock
from runtime.model import load_model, sha256_file

from .ppo import ActorCritic, PolicyGraph
from .stepper import PolicyError

OPSET = 17
VERIFY_TOLERANCE = 1e-4


def policy_file(task: str) -> str:
    """The file name of a task's policy in a model directory."""
    return f"policy-{task}.onnx"


def _check(path: Path, graph: PolicyGraph, obs_size: int, seed: int = 0) -> float:
    """Max |onnxruntime - torch| over random observations."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    obs = (rng.standard_normal((257, obs_size)) * np.sqrt(graph.norm.var.cpu().numpy() + 1e-8)
           + graph.norm.mean.cpu().numpy()).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"observation": obs})[0]
    with torch.no_grad():
        want = graph(torch.from_numpy(obs)).numpy()
    return float(np.abs(got - want).max())


def export_policy(net: ActorCritic, model_dir: str | Path, task: str, blocks: list[list], task_config: dict,
                  training: dict) -> float:
    """Write the policy into model_dir and register it in model.json; returns the ONNX-vs-torch difference."""
    folder = Path(model_dir)
    # Two policies finishing at once must not each write model.json from the same old copy.
    with folder_lock(folder):
        return _export_locked(net, folder, task, blocks, task_config, training)


def _export_locked(net: ActorCritic, folder: Path, task: str, blocks: list[list], task_config: dict,
                   training: dict) -> float:
    meta_path = folder / "model.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    graph = PolicyGraph(net).cpu().eval()
    obs_size = blocks[-1][2]
    name = policy_file(task)
    with atomic_path(folder / name, suffix=".onnx") as tmp:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated but exact for an MLP
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (torch.zeros(2, obs_size),), str(tmp), input_names=["observation"],
                              output_names=["latent"], dynamic_axes={"observation": {0: "batch"}, "latent": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        diff = _check(tmp, graph, obs_size)
        if not diff < VERIFY_TOLERANCE:
            raise PolicyError(f"{folder / name}: onnxruntime and torch differ by {diff:.2e}; nothing was written")
        digest = sha256_file(tmp)
    meta["files"][name] = {"sha256": digest, "graph": "control policy (trainer/policy)", "inputs": ["observation"],
                           "outputs": ["latent"]}
    meta.setdefault("policies", {})[task] = {
        "file": name,
        "observation": {"size": obs_size, "blocks": blocks,
                        "frame": "the current frame, normalised (the last frame of the decoder's condition)",
                        "features": "task features in the character frame (x right, z forward), metres, m/s"},
        "action": {"size": int(net.log_std.numel()), "scale": net.action_scale,
                   "meaning": "the decoder's latent z = scale * tanh(actor mean)"},
        "task": task_config,
        "training": training,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    load_model(folder)  # every file still validates (raises ModelError otherwise)
    return diff


def provenance(path: str | Path, task: str) -> dict:
    """What a run started from an exported policy records of it: the file, its sha256 and its training record."""
    path = Path(path)
    record = None
    try:
        entry = json.loads((path.parent / "model.json").read_text(encoding="utf-8"))["policies"][task]
        if entry["file"] == path.name:
            record = entry.get("training")
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a policy file outside its model directory: only its hash is known
    return {"file": str(path), "sha256": sha256_file(path), "training": record}


def load_exported(net: ActorCritic, path: str | Path) -> None:
    """Copy an exported policy's observation statistics and actor weights into net (its critic stays fresh).

    PolicyError when the file is not a policy graph of net's shape and action scale.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"{path}: no such policy file")
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # onnx raises DecodeError and friends for anything that is not a model
        raise PolicyError(f"{path}: not an ONNX file ({e.__class__.__name__})") from None
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = {o: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
              for o in n.output}
    divide = next((n for n in graph.node if n.op_type == "Div"), None)
    scale = next((n for n in graph.node if n.op_type == "Mul"), None)
    own = {f"actor.{k}": v for k, v in net.actor.state_dict().items()}
    try:
        mean, std = weights["norm.mean"], weights[divide.input[1]]  # std = sqrt(var + 1e-8), folded by the exporter
        tensors = {name: torch.from_numpy(weights[name].copy()) for name in own}
        action_scale = float(next(consts[i] for i in scale.input if i in consts))
    except (AttributeError, KeyError, StopIteration):
        raise PolicyError(f"{path}: not a policy exported by trainer.policy") from None
    shapes_fit = all(tensors[k].shape == v.shape for k, v in own.items()) and std.shape == net.norm.mean.shape
    if not shapes_fit:
        raise PolicyError(f"{path}: this policy's layers do not fit the task's observation, latent and hidden sizes")
    if abs(action_scale - net.action_scale) > 1e-6:
        raise PolicyError(f"{path}: action scale {action_scale:g} differs from this run's {net.action_scale:g}")
    with torch.no_grad():
        net.actor.load_state_dict({k[len("actor."):]: v for k, v in tensors.items()})
        net.norm.mean.copy_(torch.from_numpy(mean.copy()))
        net.norm.var.copy_(torch.as_tensor(std.astype(np.float64) ** 2 - 1e-8, dtype=torch.float32))
        # Statistics worth many rollouts: a warm start's first rollouts must not shift the actor's inputs.
        net.norm.count.fill_(1e6)
