import json
import shutil

import numpy as np
import pytest
import torch

from runtime.controller import Controller
from runtime.features import FeatureLayout, frame_to_pose, integrate_root
from runtime.model import ModelError, load_model
from trainer.config import TrainConfig
from trainer.data import load_frames
from trainer.export import export_run, untrained_run


def test_model_loads_and_reports_providers(model_dir):
    model = load_model(model_dir)
    assert model.providers == ["CPUExecutionProvider"]
    assert model.name == "tiny" and model.fps == 30.0 and model.latent_size == 32
    assert model.layout.joint_names == model.skeleton.names
    assert model.meta["data"]["licence"] == "test data"
    assert load_model(model_dir, providers="auto").providers[-1] == "CPUExecutionProvider"


def test_cuda_request_without_cuda_is_a_clear_error(model_dir):
    # This machine's onnxruntime is the CPU build: asking for CUDA must say so, not fall back silently.
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ModelError, match="CUDA was requested but this onnxruntime has no CUDA provider"):
        load_model(model_dir, providers="cuda")


def broken_copy(model_dir, tmp_path, edit):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    edit(bad)
    return bad


def edit_json(change):
    def edit(folder):
        meta = json.loads((folder / "model.json").read_text())
        change(meta)
        (folder / "model.json").write_text(json.dumps(meta))
    return edit


@pytest.mark.parametrize("edit,message", [
    (lambda d: (d / "model.json").unlink(), "not a model directory (no model.json)"),
    (lambda d: (d / "decoder.onnx").unlink(), "decoder.onnx: missing from the model directory"),
    (lambda d: (d / "model.json").write_text("{\"schema_version\": 1,"), "invalid JSON at line 1"),
    (edit_json(lambda m: m.update(schema_version=99)), "schema version 99 is newer than this runtime"),
    (edit_json(lambda m: m.pop("layout")), "missing field 'layout'"),
    (edit_json(lambda m: m["layout"]["joint_names"].reverse()), "block table|do not match the skeleton"),
    (edit_json(lambda m: m["normalisation"]["scale"].pop()), "'normalisation.scale' must be 271 numbers"),
    (lambda d: (d / "decoder.onnx").write_bytes(b"\x00corrupt" * 100), "sha256 does not match"),
])
def test_bad_model_directories_fail_in_one_sentence(model_dir, tmp_path, edit, message):
    bad = broken_copy(model_dir, tmp_path, edit)
    with pytest.raises(ModelError) as info:
        load_model(bad)
    assert any(m in str(info.value) for m in message.split("|")), info.value
    assert "\n" not in str(info.value)


def test_swapped_onnx_with_matching_hash_is_caught_by_shape(model_dir, tmp_path, frames_path):
    other = tmp_path / "other"
    export_run(untrained_run(load_frames(frames_path), TrainConfig(hidden=32, latent=16)), other)

    def swap(folder):
        shutil.copy(other / "decoder.onnx", folder / "decoder.onnx")
        meta = json.loads((folder / "model.json").read_text())
        meta["files"]["decoder.onnx"]["sha256"] = json.loads((other / "model.json").read_text())["files"][
            "decoder.onnx"]["sha256"]
        (folder / "model.json").write_text(json.dumps(meta))

    with pytest.raises(ModelError, match="input 'z' has 16 columns but model.json implies 32"):
        load_model(broken_copy(model_dir, tmp_path, swap))


def torch_rollout(model_dir, frames_path, latents, start):
    """The trainer's own rollout: torch decoder fed back on itself, decoded with the numpy reference."""
    run = untrained_run(load_frames(frames_path), TrainConfig(hidden=64), seed=1)
    model = load_model(model_dir)
    cond = torch.from_numpy(model.normalise(model.start_frames[start]).reshape(1, -1))
    raw = []
    with torch.no_grad():
        for z in latents:
            nxt = run.decoder(torch.from_numpy(z[None]), cond)
            cond = torch.cat([cond[:, model.frame_size:], nxt], dim=1)
            raw.append(model.denormalise(nxt.numpy()[0].astype(np.float64)))
    raw = np.array(raw)
    origin, yaw = integrate_root(np.concatenate([np.zeros((1, 3)), raw[:, model.layout.slice("root")]]))
    pose = frame_to_pose(raw, model.layout, model.skeleton, origin[1:], yaw[1:])
    return model, pose


def test_runtime_matches_trainer_rollout_for_1000_steps(model_dir, frames_path):
    latents = np.random.default_rng(0).standard_normal((1000, 32)).astype(np.float32)
    model, ref = torch_rollout(model_dir, frames_path, latents, start=0)
    ctrl = Controller(model, 1, seed=0)
    ctrl.reset(start=0, origin=np.zeros(3))
    pos, rot = [], []
    for z in latents:
        p = ctrl.step(latents=z[None])
        pos.append(p.positions[0].copy())
        rot.append(p.local_rotations[0].copy())
    pos, rot = np.array(pos), np.array(rot)
    assert np.abs(pos - ref.positions).max() < 1e-4
    # Same rotation up to the quaternion sign the runtime keeps continuous.
    dots = np.abs(np.sum(rot * ref.local_rotations, axis=-1))
    assert (1 - dots).max() < 1e-6
    assert np.all(np.sum(rot[1:] * rot[:-1], axis=-1) >= 0)  # hemisphere continuity


def test_controller_batches_are_independent_and_seeded(model_dir):
    model = load_model(model_dir)
    a = Controller(model, 4, seed=3)
    b = Controller(model, 4, seed=3)
    for _ in range(20):
        pa, pb = a.step().copy(), b.step().copy()
    assert np.array_equal(pa.local_rotations, pb.local_rotations)
    z = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    one = Controller(model, 1, seed=0)
    many = Controller(model, 4, seed=0)
    one.reset(start=1, origin=many.home[2])
    many.reset(start=1)
    for _ in range(30):
        zz = np.random.default_rng(_).standard_normal((4, 32)).astype(np.float32)
        p1 = one.step(latents=zz[2:3])
        p4 = many.step(latents=zz)
    assert np.abs(p1.positions[0] - p4.positions[2]).max() < 1e-4


def test_diverging_characters_are_reset_not_emitted(model_dir):
    model = load_model(model_dir)
    ctrl = Controller(model, 3, seed=0)
    z = np.zeros((3, 32), np.float32)
    z[1] = 1e6  # only character 1 explodes
    p = ctrl.step(latents=z)
    assert p.reset.tolist() == [False, True, False]
    assert np.all(np.isfinite(p.positions)) and np.all(np.isfinite(p.local_rotations))
    assert np.abs(p.positions[1, :, 1]).max() < 3.0  # back on a real start pose, standing
    assert not ctrl.step(latents=np.zeros((3, 32), np.float32)).reset.any()


def test_local_rotations_drive_the_skeleton_to_the_predicted_positions(model_dir):
    model = load_model(model_dir)
    ctrl = Controller(model, 2, seed=0)
    for _ in range(5):
        p = ctrl.step()
    fk, _ = model.skeleton.forward_kinematics(p.local_rotations.astype(np.float64),
                                              p.root_position.astype(np.float64))
    # An untrained network's positions and orientations disagree; only the root must coincide exactly.
    assert np.abs(fk[:, 0] - p.positions[:, 0]).max() < 1e-5
    assert np.allclose(np.linalg.norm(p.local_rotations, axis=-1), 1.0, atol=1e-5)
