"""A .glb written by `python -m runtime.bake` imports into real Blender (bpy 5.0.1) with the right frames,
bones and timing, the character where the runtime put it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# The same throwaway user folder as test_blender_addon.py: whichever Blender test imports bpy first sets it.
os.environ["BLENDER_USER_RESOURCES"] = str(Path(tempfile.gettempdir()) / f"motionvae-blender-{os.getpid()}")
bpy = pytest.importorskip("bpy", reason="bpy is not installed: `pip install bpy==5.0.1` runs the Blender tests")

from runtime.bake import bake, main  # noqa: E402
from runtime.model import load_model  # noqa: E402

Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def test_runtime_glb_imports_with_its_frames_bones_and_fps(model_dir, tmp_path):
    frames, seed = 90, 4
    out = tmp_path / "clip.glb"
    assert main([str(out), "--model", str(model_dir), "--frames", str(frames), "--seed", str(seed), "-q"]) == 0
    model = load_model(model_dir)
    clip = bake(model, frames, seed)

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps = round(model.fps)  # glTF stores seconds; the importer turns them into frames at this rate
    bpy.ops.import_scene.gltf(filepath=str(out))
    armatures = [o for o in scene.objects if o.type == "ARMATURE"]
    assert len(armatures) == 1
    rig = armatures[0]
    assert sorted(b.name for b in rig.data.bones) == sorted(model.skeleton.names)

    action = rig.animation_data.action
    assert tuple(action.frame_range) == (0, frames - 1)
    from bpy_extras.anim_utils import action_get_channelbag_for_slot

    curves = action_get_channelbag_for_slot(action, rig.animation_data.action_slot).fcurves
    hips = curves.find('pose.bones["Hips"].rotation_quaternion', index=0)
    keys = np.array([k.co[0] for k in hips.keyframe_points])
    np.testing.assert_allclose(keys, np.arange(frames), atol=1e-3)  # one key per frame: the model's fps held

    for f in (0, frames // 2, frames - 1):
        scene.frame_set(f)
        world = np.array(rig.matrix_world) @ np.append(np.array(rig.pose.bones["Hips"].head), 1.0)
        want = clip.root_positions[f, 0] @ Y_UP_TO_Z_UP.T
        assert np.linalg.norm(world[:3] - want) < 0.01, f"frame {f}: hips at {world[:3]}, runtime says {want}"
