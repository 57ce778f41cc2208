"""The step graph with foot locking: runtime.footlock.lock_step exported inside decoder.onnx after the step.

One onnxruntime call then decodes the pose and locks its feet. The lock's state (per character and leg) is an
input and an output, bound by runtime.controller like origin and yaw; a per-character switch and the settings
vector are inputs too, so foot locking is turned on and off, and tuned, without re-exporting.

Inputs (after StepGraph's): foot_lock_state (B, L, S), foot_lock_enabled (B,) bool, foot_lock_settings (K,)
Outputs (after StepGraph's): shown_rotations (B, J, 4), shown_positions (B, J, 3) (their forward kinematics),
                             next_foot_lock_state (B, L, S)
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from runtime.contacts import foot_floor
from runtime.features import FeatureLayout
from runtime.footlock import PARAMS, STATE, STATE_WIDTH, VERSION, FootLockRig, contact_heights, find_legs, lock_step
from runtime.model import MotionModel, onnx_session
from runtime.skeleton import Skeleton

from .step_graph import INPUTS, OUTPUTS, StepGraph

LOCK_INPUTS = ["foot_lock_state", "foot_lock_enabled", "foot_lock_settings"]
LOCK_OUTPUTS = ["shown_rotations", "shown_positions", "next_foot_lock_state"]


class LockedStepGraph(nn.Module):
    """StepGraph followed by the foot lock of its raw pose; see the module docstring for the extra inputs."""

    def __init__(self, step: StepGraph, skeleton: Skeleton, layout: FeatureLayout) -> None:
        super().__init__()
        self.step = step
        rig = FootLockRig(skeleton, layout)
        self.n_legs, self._names = rig.n_legs, list(rig.arrays)
        for name, value in rig.arrays.items():
            value = np.asarray(value)
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.long if value.dtype.kind in "iu"
                                                       else torch.float32))
        # The raw pose's joint positions relative to the root from the step's frames in one matmul: each joint's
        # offset from its parent, turned by the parent's orientation, summed along its chain (character frame),
        # then turned by the yaw.
        j, parents = skeleton.n_joints, skeleton.parents
        fk = np.zeros((j, 3, 3, j, 3))  # [parent, row, column] of the frames -> [joint, axis]
        chain = np.eye(j)
        for joint in range(1, j):
            chain[joint] += chain[parents[joint]]
        for joint in range(1, j):
            for below in np.flatnonzero(chain[:, joint]):
                for axis in range(3):
                    fk[parents[joint], :, axis, below, axis] += skeleton.offsets[joint]
        self.register_buffer("fk", torch.as_tensor(fk.reshape(j * 9, j * 3), dtype=torch.float32))

    def forward(self, z, condition, origin, yaw, previous_rotations, foot_lock_state, foot_lock_enabled,
                foot_lock_settings):
        """One step and its foot lock: StepGraph's outputs, then LOCK_OUTPUTS."""
        out = self.step(z, condition, origin, yaw, previous_rotations, with_frames=True)
        frames, out = out[-1], out[:-1]
        positions, rotations, contacts = out[3], out[4], out[5]
        rig = SimpleNamespace(**{name: getattr(self, name) for name in self._names})
        turn, root = frames[:, 0], positions[:, 0]
        raw = (frames[:, 1:].reshape(-1, self.fk.shape[0]) @ self.fk).reshape(-1, self.fk.shape[1] // 3, 3)
        raw = raw @ turn.transpose(1, 2)  # relative to the root
        world = frames[:, 1 + self.frames] @ turn.transpose(1, 2)[:, None, None]  # (B, L, 3, 3, 3): W^T
        shown, shown_positions, state = lock_step(torch, rig, rotations, world, raw, root[:, None], contacts,
                                                  foot_lock_state, foot_lock_enabled, foot_lock_settings)
        return (*out, shown, shown_positions, state)

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Lock inputs of a batch at rest, for tracing the export."""
        return (torch.zeros(batch, self.n_legs, STATE_WIDTH), torch.zeros(batch, dtype=torch.bool),
                torch.zeros(self.n_legs * len(PARAMS)))


def planted_heights(layout: FeatureLayout, data_path: str | None, start_frames: np.ndarray) -> np.ndarray:
    """Each contact joint's planted height (runtime.contacts.foot_floor of its heights) in the training frames at
    data_path, or the lowest in the start frames when those frames are gone or were made for another layout."""
    try:
        with np.load(Path(data_path)) as d:
            data = d["data"]
        if data.ndim == 2 and data.shape[1] == layout.size:
            return foot_floor(contact_heights(data, layout))
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return contact_heights(start_frames, layout).min(0).astype(np.float64)


def foot_lock_meta(skeleton: Skeleton, layout: FeatureLayout, planted: np.ndarray) -> dict:
    """model.json's foot_lock entry: the lock's version and layout sizes, its legs and the planted heights."""
    names = skeleton.names
    return {"version": VERSION, "state_width": STATE_WIDTH, "parameters": list(PARAMS),
            "legs": [[names[g.hip], names[g.knee], names[g.ankle], names[g.pin]] for g in find_legs(skeleton, layout)],
            "planted_m": [round(float(h), 6) for h in planted]}


def skip_idle_lock(path: Path) -> None:
    """Rewrite the exported graph at path so its foot lock runs only when a character needs it (an ONNX If).

    onnxruntime runs every node of a graph on every call, and at one character the lock's nodes cost about as much
    as the rest of the step. When no character has its lock on and no lock is held or fading, the If takes the
    other branch instead: the raw rotations and the model's positions shown, and an empty lock state (as after a
    reset), so a lock switched on later starts afresh.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    g = model.graph
    producer = {out: node for node in g.node for out in node.output}
    step, stack = set(), list(OUTPUTS)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in step:
            step.add(id(node))
            stack.extend(node.input)
    lock = [node for node in g.node if id(node) not in step]
    kept = [node for node in g.node if id(node) in step]
    # The lock's own constants move into its branch (the step's stay outside, where the branch can read them).
    used_by_step = {name for node in kept for name in node.input}
    own = [init for init in g.initializer if init.name not in used_by_step
           and any(init.name in node.input for node in lock)]
    for init in own:
        g.initializer.remove(init)
    inner = [f"locked_{name}" for name in LOCK_OUTPUTS]
    then = helper.make_graph(
        lock + [helper.make_node("Identity", [name], [out]) for name, out in zip(LOCK_OUTPUTS, inner)], "lock", [],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None) for out in inner], own)
    skipped = [f"skipped_{name}" for name in LOCK_OUTPUTS]
    otherwise = helper.make_graph(
        [helper.make_node("Identity", ["rotations"], [skipped[0]]),
         helper.make_node("Identity", ["positions"], [skipped[1]]),
         helper.make_node("Shape", ["foot_lock_state"], ["lock_shape"]),
         helper.make_node("ConstantOfShape", ["lock_shape"], [skipped[2]],
                          value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))], "no_lock", [],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None) for out in skipped])
    # Run the lock when any character has it on, or a lock is held or still fading out (locked, left, weight).
    busy = helper.make_tensor("busy_columns", TensorProto.INT64, [3], [STATE["locked"], STATE["left"], STATE["weight"]])
    cond = [
        helper.make_node("Cast", ["foot_lock_enabled"], ["lock_on"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["lock_on"], ["any_on"], keepdims=0),
        helper.make_node("Constant", [], ["busy_columns"], value=busy),
        helper.make_node("Gather", ["foot_lock_state", "busy_columns"], ["lock_busy"], axis=2),
        helper.make_node("Abs", ["lock_busy"], ["lock_busy_abs"]),
        helper.make_node("ReduceMax", ["lock_busy_abs"], ["any_busy"], keepdims=0),
        helper.make_node("Add", ["any_on", "any_busy"], ["lock_need"]),
        helper.make_node("Constant", [], ["lock_zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Greater", ["lock_need", "lock_zero"], ["run_lock"]),
        helper.make_node("If", ["run_lock"], LOCK_OUTPUTS, then_branch=then, else_branch=otherwise),
    ]
    del g.node[:]
    g.node.extend(kept + cond)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def step_only(path: Path) -> bytes:
    """A decoder.onnx cut before its foot lock (the step as exported before the lock was in it), serialised."""
    import onnx

    return onnx.utils.Extractor(onnx.load(str(path))).extract_model(INPUTS, OUTPUTS).SerializeToString()


def step_session(model: MotionModel, threads: int = 1) -> object:
    """An onnxruntime session of the model's step without its foot lock (the model's own when it has none): for
    stepping characters nobody looks at, such as a policy's training environments."""
    if not model.foot_lock_in_graph:
        return model.decoder
    path = model.path / "decoder.onnx"
    return onnx_session(path, "cuda" if "CUDAExecutionProvider" in model.providers else "cpu", threads,
                        step_only(path))[0]
