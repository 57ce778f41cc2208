"""Shared fixtures and helpers: paths to the shared mocap, small synthetic clips built in code, CLI runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.motion import Motion
from runtime.rotations import quat_from_axis_angle, quat_mul
from runtime.skeleton import Skeleton

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "mocap"
BANDAI = SHARED / "bandai2_locomotion"
CMU = SHARED / "cmu_permissive_extra"


def needs(path: Path) -> Path:
    """Skip the calling test when a shared dataset is absent."""
    if not path.exists() or not any(path.glob("*.bvh")):
        pytest.skip(f"{path} is not present")
    return path


def small_skeleton() -> Skeleton:
    """A 9-joint biped with left/right names and End Sites, metres, Y up, facing +Z."""
    names = ["Hips", "Spine", "Head", "LeftUpLeg", "LeftLeg", "LeftFoot", "RightUpLeg", "RightLeg", "RightFoot"]
    parents = [-1, 0, 1, 0, 3, 4, 0, 6, 7]
    offsets = [[0, 0, 0], [0, 0.25, 0], [0, 0.45, 0.02], [0.1, -0.05, 0], [0, -0.42, 0], [0, -0.42, 0],
               [-0.1, -0.05, 0], [0, -0.42, 0], [0, -0.42, 0]]
    ends = np.full((9, 3), np.nan)
    ends[2] = [0, 0.15, 0]
    ends[5] = [0, -0.05, 0.15]
    ends[8] = [0, -0.05, 0.15]
    return Skeleton(names, parents, offsets, ends)


def random_motion(skeleton: Skeleton, n_frames: int = 120, fps: float = 30.0, seed: int = 0,
                  speed: float = 1.2) -> Motion:
    """Smooth random rotations and a wandering root: enough to exercise every code path."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)[:, None] / fps
    freqs = rng.uniform(0.3, 2.0, (1, skeleton.n_joints))
    axes = rng.normal(size=(skeleton.n_joints, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    angles = rng.uniform(0.2, 1.2, skeleton.n_joints) * np.sin(2 * np.pi * freqs * t + rng.uniform(0, 6, skeleton.n_joints))
    rot = quat_from_axis_angle(np.broadcast_to(axes, (n_frames, skeleton.n_joints, 3)), angles)
    heading = quat_from_axis_angle(np.array([0.0, 1.0, 0.0]), 0.8 * np.sin(0.5 * t[:, 0]) + rng.uniform(-3, 3))
    rot[:, 0] = quat_mul(heading, rot[:, 0])
    trans = np.broadcast_to(skeleton.offsets, (n_frames, skeleton.n_joints, 3)).copy()
    trans[:, 0] = np.stack([np.cumsum(rng.normal(0, 0.02, n_frames)), 0.9 + 0.03 * np.sin(6 * t[:, 0]),
                            speed * t[:, 0]], axis=-1)
    return Motion(skeleton, rot, trans, fps, "random")


def run_module(module: str, *args: str, env: dict | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repository root in a fresh process; env is added to os.environ."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def one_error_line(err: str) -> str:
    """err, after checking it is what a CLI prints for bad input: one line, no traceback."""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def torch_one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads can be 100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def frames_path(tmp_path_factory) -> Path:
    """A small frames.npz prepared from procedural locomotion (licence-free, made on the fly)."""
    from trainer.prepare import prepare, save_frames
    from trainer.procedural import generate_dataset

    folder = tmp_path_factory.mktemp("frames")
    files = generate_dataset(folder / "bvh", n_clips=3, seconds=12, seed=5, progress=False)
    path = folder / "frames.npz"
    save_frames(path, prepare(files, mirror=True, progress=False))
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, frames_path) -> Path:
    """A real model directory (ONNX + model.json) exported from an untrained, small network."""
    from trainer.config import TrainConfig
    from trainer.data import load_frames
    from trainer.export import export_run, untrained_run

    out = tmp_path_factory.mktemp("models") / "tiny"
    run = untrained_run(load_frames(frames_path), TrainConfig(hidden=64), seed=1)
    export_run(run, out, name="tiny", licence="test data")
    return out


@pytest.fixture(scope="session")
def int8_model_dir(tmp_path_factory, model_dir) -> Path:
    """model_dir with its int8 step graph added (`trainer.export --precision int8`), in a folder of its own."""
    import shutil

    from trainer.quantize import add_int8

    out = tmp_path_factory.mktemp("models") / "tiny8"
    shutil.copytree(model_dir, out)
    add_int8(out)
    return out


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the fuzz tallies (tests/contract.py) when fuzz tests ran."""
    from tests.contract import summary

    lines = summary()
    if lines:
        terminalreporter.section("fuzz tallies")
        for line in lines:
            terminalreporter.write_line(line)
