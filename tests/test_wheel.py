"""The built wheel, installed into a clean virtualenv with only its required dependencies (numpy 2 and
onnxruntime), bakes from a folder outside the checkout, carries its data files, and names missing extras.

The virtualenv is cached outside the checkout (${MOTIONVAE_CACHE:-~/.cache/motionvae}/wheel-venv-*), keyed by
the Python version and the wheel's dependency list; each run only reinstalls the freshly built wheel.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from runtime.bvh import write_bvh
from tests.conftest import ROOT, one_error_line, random_motion, small_skeleton

CACHE = Path(os.environ.get("MOTIONVAE_CACHE", Path.home() / ".cache" / "motionvae"))
DEPENDENCIES = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
# numpy 2 is the point of the check: the bpy-pinned development environment runs numpy 1.26.
PINS = ["numpy>=2"]


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"pip {' '.join(args[:3])} failed: {(done.stdout + done.stderr)[-2000:]}")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout (with the running environment's setuptools, offline)."""
    out = tmp_path_factory.mktemp("wheel")
    _pip(Path(sys.executable), "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(ROOT))
    (found,) = out.glob("motionvae_toolkit-*.whl")
    return found


@pytest.fixture(scope="module")
def clean_python(wheel) -> Path:
    """A cached virtualenv holding the wheel and only its required dependencies."""
    key = hashlib.sha256(json.dumps([sys.version_info[:2], DEPENDENCIES, PINS]).encode()).hexdigest()[:12]
    env = CACHE / f"wheel-venv-py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    python = env / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "wheel-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs share the cache
        if not (env / ".ready").is_file():
            venv.EnvBuilder(clear=True, with_pip=True).create(env)
            _pip(python, "install", "--quiet", str(wheel), *PINS)
            (env / ".ready").touch()
        _pip(python, "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel))
    return python


def run_clean(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python ARGS` in the clean environment, from cwd, with nothing of the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_wheel_carries_the_model_the_addons_and_the_manifest(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("runtime/assets/default/decoder.onnx", "runtime/assets/default/model.json",
                 "runtime/assets/default/policy-joystick.onnx", "runtime/assets/default/policy-target.onnx",
                 "runtime/assets/default/policy-path.onnx", "godot_bridge/addons/motion_vae/plugin.cfg",
                 "godot_bridge/addons/motion_vae/client.gd", "godot_bridge/demo/project.godot",
                 "godot_bridge/demo/addons/motion_vae/plugin.gd", "godot_bridge/PROTOCOL.md",
                 "blender_addon/extension/blender_manifest.toml", "blender_addon/extension/__init__.py"):
        assert name in names, name
    assert not [n for n in names if n.startswith("tests/") or "/.godot/" in n or n.endswith(".pyc")]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    required = [ln.split(":", 1)[1].strip() for ln in meta.splitlines()
                if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert sorted(r.split(">")[0].split("=")[0] for r in required) == ["numpy", "onnxruntime"], required
    assert "Requires-Python: >=3.11" in meta


def test_clean_venv_bakes_from_another_folder_on_numpy_2(clean_python, tmp_path):
    where = run_clean(clean_python, tmp_path, "-c", "import numpy, runtime; print(numpy.__version__, runtime.__file__)")
    assert where.returncode == 0, where.stderr
    version, location = where.stdout.split()
    assert int(version.split(".")[0]) >= 2, version
    assert not Path(location).is_relative_to(ROOT), location  # the installed copy, not the checkout
    missing = run_clean(clean_python, tmp_path, "-c", "import tqdm")
    assert missing.returncode != 0  # so the bake below runs without a progress bar library
    done = run_clean(clean_python, tmp_path, "-m", "runtime.bake", "clip.npz", "--frames", "40")
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "clip.npz") as clip:
        assert clip["local_rotations"].shape[:2] == (40, 1) and np.isfinite(clip["world_positions"]).all()
    steer = tmp_path / "steer.json"
    steer.write_text("[[0, 1, 0, 1.5], [1, 0, 1, 2.0]]")
    done = run_clean(clean_python, tmp_path, "-m", "runtime.bake", "steer.npz", "--frames", "40", "-q",
                     "--control", "steer.json")
    assert done.returncode == 0, done.stderr


def test_clean_venv_names_the_missing_extra_before_any_work(clean_python, tmp_path):
    cases = [(("-m", "runtime.bake", "clip.glb"), "needs pygltflib", "[gltf]", "clip.glb"),
             (("-m", "runtime.bake", "clip.npz", "--preview", "clip.gif"), "needs matplotlib", "[preview]",
              "clip.npz"),
             (("-m", "trainer.train", "frames.npz", "--out", "run"), "needs torch", "[train]", "run"),
             (("-m", "godot_bridge.serve", "--port", "0"), "needs websockets", "[bridge]", None)]
    for args, says, extra, output in cases:
        done = run_clean(clean_python, tmp_path, *args)
        assert done.returncode == 2 and says in done.stderr and extra in done.stderr, (args, done.stderr)
        one_error_line(done.stderr)
        assert output is None or not (tmp_path / output).exists(), args
    assert not list(tmp_path.iterdir())


def test_clean_venv_prepares_bvh_without_the_training_extra(clean_python, tmp_path):
    write_bvh(tmp_path / "walk.bvh", random_motion(small_skeleton(), 90))
    done = run_clean(clean_python, tmp_path, "-m", "trainer.prepare", "walk.bvh", "-o", "frames.npz", "--mirror")
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "frames.npz") as frames:
        assert frames["data"].shape[0] == 2 * 90 and np.isfinite(frames["data"]).all()
