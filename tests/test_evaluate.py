"""Evaluation: the JSON of a tiny run, flags on broken models, and the measures themselves."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.features import FeatureLayout, decode
from runtime.rotations import yaw_matrix
from runtime.skeleton import Skeleton
from tests.test_train import TINY, write_frames
from trainer.checkpoint import read_checkpoint, save_checkpoint
from trainer.data import load_frames
from trainer.evaluate import (TorchModel, data_reference, evaluate, frame_quantities, frechet_distance, main,
                              open_model)
from trainer.train import main as train_main

SECTIONS = ("reconstruction", "latent", "stability", "freezing", "sinking", "foot_skating", "frechet", "flags")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    write_frames(folder / "frames.npz", n_clips=6, length=70)
    (folder / "tiny.toml").write_text(TINY)
    assert train_main([str(folder / "frames.npz"), "--out", str(folder / "run"), "--config",
                       str(folder / "tiny.toml"), "--holdout-every", "3", "--no-progress"]) == 0
    return folder / "run"


def test_evaluate_writes_every_metric(run, capsys):
    frames = run.parent / "frames.npz"
    assert main([str(run), str(frames), "--rollouts", "4", "--frames", "300"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    for section in SECTIONS:
        assert section in result and section in printed
    assert result["evaluated_clips"]["count"] == 2  # clips 2 and 5 of 6
    assert result["evaluated_clips"]["which"] == "1 in 3 source clips, held out in training"
    assert result["reconstruction"]["mse_normalised"] > 0
    assert set(result["reconstruction"]["rmse_by_block"]) == {"root", "positions", "velocities", "orientations",
                                                             "contacts"}
    assert len(result["latent"]["kl_per_dim"]) == 4
    assert result["stability"] == {**result["stability"], "rollouts": 4, "frames": 300}
    assert result["frechet"]["distance"] >= 0 and result["frechet"]["frames"] > 0
    assert result["foot_skating"]["data_mean_speed_mps"] is not None
    assert set(result["flags"]) == {"nan", "explosion", "freezing", "sinking"}
    assert isinstance(result["stable"], bool)


def test_exploding_model_is_flagged(run, tmp_path, capsys):
    state = read_checkpoint(run)
    for name in state["model"]:
        if name.startswith("decoder.weights") or name.startswith("decoder.biases"):
            state["model"][name] = state["model"][name] * 40.0
    (tmp_path / "broken").mkdir()
    save_checkpoint(state, tmp_path / "broken" / "checkpoint.pt")
    out = tmp_path / "broken.json"
    code = main([str(tmp_path / "broken"), str(run.parent / "frames.npz"), "--rollouts", "4", "--frames", "300",
                 "--json", str(out), "--strict"])
    assert code == 1
    result = json.loads(out.read_text())
    assert result["flags"]["explosion"] or result["flags"]["nan"]
    assert result["stability"]["exploded_rollouts"] + result["stability"]["nan_rollouts"] == 4
    assert result["stable"] is False


class Frozen(TorchModel):
    """Repeats its condition's last pose with the root standing still: a frozen character."""

    drop = 0.0

    def next_frame(self, z, condition):
        raw = self.normaliser.denormalise(condition[:, -self.layout.size:])
        raw[:, self.layout.slice("root")] = 0.0
        raw[:, self.layout.slice("positions")][:, 1::3] -= self.drop
        return self.normaliser.normalise(raw)


class Sinking(Frozen):
    """A frozen character whose whole body drops 5 mm per frame."""

    drop = 0.005


@pytest.mark.parametrize("kind,flag", [(Frozen, "freezing"), (Sinking, "sinking")])
def test_frozen_and_sinking_models_are_flagged(run, kind, flag):
    frames = load_frames(run.parent / "frames.npz")
    model = kind(open_model(run).run, torch.device("cpu"))
    result = evaluate(model, frames, holdout_every=3, n_rollouts=3, length=240)
    assert result["flags"][flag], result[flag]
    assert not result["flags"]["explosion"] and not result["flags"]["nan"]


def test_layout_mismatch_and_missing_model_exit_2(run, tmp_path, capsys):
    skeleton = Skeleton.from_json(load_frames(run.parent / "frames.npz").skeleton.to_json())
    other = write_frames(tmp_path / "other.npz", skeleton=skeleton.subset([0, 1, 2, 3, 4, 5]))
    for argv in ([str(run), str(other)], [str(tmp_path / "nothing"), str(other)]):
        assert main(argv + ["--frames", "10"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_foot_skating_uses_the_runtime_root_convention():
    """A foot planted in the world while the character walks and turns does not skate."""
    layout = FeatureLayout(("Foot",), 30.0, contact_joints=("Foot",))
    t = np.arange(40)
    yaw = 0.05 * t + 0.3 * np.sin(t / 5)
    origin = np.stack([0.02 * t + 0.1 * np.sin(t / 7), np.zeros_like(yaw), 0.04 * t], axis=-1)
    foot = np.array([0.4, 0.05, 1.1])
    frames = np.zeros((len(t), layout.size))
    frames[:, layout.slice("positions")] = np.einsum("tji,tj->ti", yaw_matrix(yaw), foot - origin)  # R^T (f - o)
    step = np.einsum("tji,tj->ti", yaw_matrix(yaw[:-1]), np.diff(origin, axis=0))
    frames[1:, layout.slice("root")] = np.stack([step[:, 0], step[:, 2], np.diff(yaw)], axis=-1)
    frames[:, layout.slice("orientations")] = [1, 0, 0, 0, 1, 0]
    frames[:, layout.slice("contacts")] = 1.0
    skeleton = Skeleton(("Foot",), [-1], [[0, 0, 0]])
    pose, _, _ = decode(frames, layout, skeleton, np.array([origin[0, 0], origin[0, 2], yaw[0]]))
    np.testing.assert_allclose(pose.positions[:, 0], np.broadcast_to(foot, (len(t), 3)), atol=1e-9)
    q = frame_quantities(frames[:-1], frames[1:], layout, 30.0)
    assert q["skate"].max() < 1e-9 and q["contact"].all()
    # The same frames with the foot sliding 1 cm per frame forward in the world: 0.3 m/s.
    slide = foot + np.outer(t, [0, 0, 0.01])
    frames[:, layout.slice("positions")] = np.einsum("tji,tj->ti", yaw_matrix(yaw), slide - origin)
    q = frame_quantities(frames[:-1], frames[1:], layout, 30.0)
    np.testing.assert_allclose(q["skate"], 0.3, rtol=1e-9)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    mean = rng.normal(size=5)
    assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mean, cov, mean + 2.0, cov) == pytest.approx(20.0, abs=1e-8)
    one = frechet_distance(np.zeros(1), np.eye(1) * 4.0, np.ones(1), np.eye(1) * 9.0)
    assert one == pytest.approx(1.0 + (2.0 - 3.0) ** 2)


def test_data_reference_scores_the_data_as_healthy(run):
    ref = data_reference(load_frames(run.parent / "frames.npz"))
    assert ref.height_low <= ref.height_mean <= ref.height_high
    assert 0.0 <= ref.frozen_fraction <= 1.0 and ref.window == 60
    assert np.all(ref.low <= ref.mean) and np.all(ref.mean <= ref.high) and np.all(ref.slack > 0)
