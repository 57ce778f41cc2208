import json
import shutil

import numpy as np
import pytest

from runtime.bvh import read_bvh
from tests.conftest import run_module


def run_bake(*args):
    return run_module("runtime.bake", *map(str, args), "-q", timeout=300)


def test_bake_npz_bvh_glb_agree(model_dir, tmp_path):
    for suffix in ("npz", "bvh", "glb"):
        res = run_bake(tmp_path / f"clip.{suffix}", "--model", model_dir, "--frames", 120, "--seed", 4, "--start", 1)
        assert res.returncode == 0, res.stderr
    with np.load(tmp_path / "clip.npz") as f:
        assert float(f["fps"]) == 30.0
        rot, root, pos = f["local_rotations"][:, 0], f["root_positions"][:, 0], f["world_positions"][:, 0]
        assert rot.shape[0] == 120 and f["features"].shape[:2] == (120, 1)
    bvh = read_bvh(tmp_path / "clip.bvh", scale=1.0, up="y")
    assert bvh.n_frames == 120 and bvh.fps == 30.0
    assert np.abs(bvh.root_positions - root).max() < 1e-5
    dots = np.abs(np.sum(bvh.rotations * rot, axis=-1))
    assert (1 - dots).max() < 1e-6

    import pygltflib

    gltf = pygltflib.GLTF2.load(str(tmp_path / "clip.glb"))
    anim = gltf.animations[0]
    times = gltf.accessors[anim.samplers[0].input]
    assert times.count == 120 and abs(times.max[0] - 119 / 30) < 1e-5
    assert len(gltf.skins[0].joints) == rot.shape[1]
    assert len(anim.channels) == rot.shape[1] + 1  # every joint's rotation and the root's translation


def test_several_characters_and_preview(model_dir, tmp_path):
    res = run_bake(tmp_path / "crowd.glb", "--model", model_dir, "--frames", 30, "--characters", 3,
                   "--preview", tmp_path / "crowd.gif")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.glob("crowd_*.glb")) == ["crowd_0.glb", "crowd_1.glb", "crowd_2.glb"]
    assert (tmp_path / "crowd.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")


def corrupt(folder):
    data = bytearray((folder / "decoder.onnx").read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
    (folder / "decoder.onnx").write_bytes(bytes(data))


def missing_field(folder):
    meta = json.loads((folder / "model.json").read_text())
    del meta["start_frames"]
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit,message", [(corrupt, "sha256 does not match"),
                                          (missing_field, "missing field 'start_frames'")])
def test_bad_model_exit_2_and_nothing_written(model_dir, tmp_path, edit, message):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    edit(bad)
    out = tmp_path / "clip.npz"
    res = run_bake(out, "--model", bad)
    assert res.returncode == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not out.exists() and not list(tmp_path.glob(".clip*"))


def test_bad_output_paths(model_dir, tmp_path):
    res = run_bake(tmp_path / "nowhere" / "clip.npz", "--model", model_dir)
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run_bake(tmp_path / "clip.fbx", "--model", model_dir)
    assert res.returncode == 2 and "unknown output format '.fbx'" in res.stderr
    res = run_bake(tmp_path / "clip.npz", "--model", model_dir, "--start", 999)
    assert res.returncode == 2 and "--start 999" in res.stderr
