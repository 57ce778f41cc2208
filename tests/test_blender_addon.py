"""The Blender extension on real bpy 5.0.1: build, install, bake, retarget, live play, bad input, render, export."""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Blender reads its user folders once, when bpy is imported: point them at a throwaway folder first, so the
# extension installs there and never into the user's own Blender.
BLENDER_HOME = Path(tempfile.gettempdir()) / f"motionvae-blender-{os.getpid()}"
os.environ["BLENDER_USER_RESOURCES"] = str(BLENDER_HOME)
bpy = pytest.importorskip("bpy", reason="bpy is not installed: `pip install bpy==5.0.1` runs the Blender tests")

from blender_addon import build  # noqa: E402
from runtime.bake import bake as runtime_bake  # noqa: E402
from runtime.model import load_model  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
FRAMES = 1000
SEED = 3


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The extension zip, built and validated by blender_ext.py (the onnxruntime wheel comes from PyPI)."""
    cache = build.WORK / "wheel-cache"
    wheel = build.fetch_wheel("linux-x64", build._installed_onnxruntime(), cache)
    return build.build(tmp_path_factory.mktemp("dist"), [wheel])


@pytest.fixture(scope="module")
def ext(built):
    """The installed, enabled extension's package (bl_ext.user_default.motion_vae)."""
    assert Path(bpy.utils.user_resource("EXTENSIONS")).is_relative_to(BLENDER_HOME), "bpy was imported too early"
    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert bpy.ops.extensions.package_install_files(filepath=str(built), repo="user_default") == {"FINISHED"}
    package = sys.modules["bl_ext.user_default.motion_vae"]
    yield package
    bpy.ops.extensions.package_uninstall(repo_index=_repo_index("user_default"), pkg_id="motion_vae")
    shutil.rmtree(BLENDER_HOME, ignore_errors=True)


def _repo_index(module: str) -> int:
    return [r.module for r in bpy.context.preferences.extensions.repos].index(module)


def _sub(ext, name: str):
    return importlib.import_module(f"{ext.__name__}.{name}")


@pytest.fixture
def scene(ext, model_dir):
    """An empty scene whose Motion VAE panel points at the test model."""
    bpy.ops.wm.read_homefile(use_empty=True)
    settings = bpy.context.scene.motion_vae
    settings.model_dir = str(model_dir)
    settings.seed = SEED
    return bpy.context.scene


@pytest.fixture(scope="module")
def expected(model_dir):
    """World joint positions (Blender space) of the runtime's bake: FK of its local rotations, what a rig shows."""
    model = load_model(model_dir)
    clip = runtime_bake(model, FRAMES, SEED)
    positions = model.skeleton.forward_kinematics(clip.rotations[:, 0].astype(np.float64),
                                                  clip.root_positions[:, 0].astype(np.float64))[0]
    return model.skeleton.names, positions @ Y_UP_TO_Z_UP.T


def _heads(obj, bones: list[str]) -> np.ndarray:
    """World positions of pose-bone heads as Blender evaluated them."""
    bpy.context.view_layer.update()
    heads = np.array([obj.pose.bones[b].head for b in bones])
    return heads @ np.array(obj.matrix_world)[:3, :3].T + np.array(obj.matrix_world)[:3, 3]


def _baked_heads(obj, bones: list[str], frames: np.ndarray) -> np.ndarray:
    scene = bpy.context.scene
    out = []
    for f in frames:
        scene.frame_set(int(scene.frame_start + f))
        out.append(_heads(obj, bones))
    return np.array(out)


def _channelbag(obj):
    from bpy_extras.anim_utils import action_get_channelbag_for_slot

    data = obj.animation_data
    return action_get_channelbag_for_slot(data.action, data.action_slot)


def test_built_zip_validates_installs_and_bundles_runtime_and_wheel(built, ext):
    import zipfile

    names = zipfile.ZipFile(built).namelist()
    assert "blender_manifest.toml" in names and "runtime/controller.py" in names
    assert any(n.startswith("wheels/onnxruntime-") and n.endswith(".whl") for n in names)
    build._run([sys.executable, str(build.blender_ext()), "validate", str(built)], "validate")
    site = Path(bpy.utils.user_resource("EXTENSIONS")) / ".local" / "lib"
    assert list(site.glob("python3.*/site-packages/onnxruntime/__init__.py")), "the bundled wheel was not installed"
    for op in ("create_armature", "auto_map", "bake", "play", "stop", "reset", "export_animation"):
        assert hasattr(bpy.ops.motion_vae, op)
    assert ext.__name__ == "bl_ext.user_default.motion_vae"


def test_bake_on_created_armature_matches_runtime(scene, expected):
    settings = scene.motion_vae
    settings.frames = FRAMES
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    obj = settings.armature
    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    first = obj.animation_data.action
    names, positions = expected
    sample = np.linspace(0, FRAMES - 1, 12).astype(int)
    error = np.linalg.norm(_baked_heads(obj, list(names), sample) - positions[sample], axis=-1)
    assert error.max() < 0.01, f"baked joints are {error.max() * 100:.2f} cm off the runtime's"

    bag = _channelbag(obj)
    assert len(bag.fcurves) == 4 * len(names) + 3 and len(bag.groups) == len(names)
    assert all(len(c.keyframe_points) == FRAMES for c in bag.fcurves)
    assert {c.group.name for c in bag.fcurves if "Hips" in c.data_path} == {"Hips"}
    assert scene.render.fps / scene.render.fps_base == pytest.approx(30.0)
    assert scene.frame_end == scene.frame_start + FRAMES - 1
    quats = np.array([[[c.keyframe_points[i].co[1] for c in bag.fcurves
                        if c.data_path == f'pose.bones["{b}"].rotation_quaternion']
                       for i in range(0, FRAMES, 7)] for b in names[:6]])
    assert np.all(np.sum(quats[:, 1:] * quats[:, :-1], axis=-1) > 0), "a quaternion track flips hemisphere"

    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    assert obj.animation_data.action != first and first.name in bpy.data.actions and first.use_fake_user


def _a_pose_rig(model_dir) -> tuple[bpy.types.Object, dict[str, str]]:
    """The model's skeleton re-rigged: A-pose arms, bent knees, other names, random bone directions and rolls,
    two extra bones (a root at the origin and a twist bone), the object moved and turned."""
    skeleton = load_model(model_dir).skeleton
    rest = (skeleton.rest_positions() + skeleton.offsets[0]) @ Y_UP_TO_Z_UP.T
    heads = rest.copy()
    rng = np.random.default_rng(7)

    def turn(joint: str, axis: np.ndarray, angle: float) -> None:
        j = skeleton.index(joint)
        below = [k for k in range(skeleton.n_joints) if _under(skeleton, k, j)]
        c, s = np.cos(angle), np.sin(angle)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        r = np.eye(3) + s * k + (1 - c) * k @ k
        heads[below] = (heads[below] - heads[j]) @ r.T + heads[j]

    turn("LeftArm", np.array([0.0, 1.0, 0.0]), np.radians(45))
    turn("RightArm", np.array([0.0, 1.0, 0.0]), np.radians(-45))
    turn("LeftLeg", np.array([1.0, 0.0, 0.0]), np.radians(-15))
    renamed = {"Hips": "pelvis", "Spine1": "spine_01", "LeftForeArm": "forearm.L", "RightToeBase": "toe.R"}
    bone_of = {n: renamed.get(n, f"mixamorig:{n}") for n in skeleton.names}

    arm = bpy.data.armatures.new("Rig")
    obj = bpy.data.objects.new("Rig", arm)
    bpy.context.scene.collection.objects.link(obj)
    obj.location, obj.rotation_euler = (2.0, 1.0, 0.0), (0.0, 0.0, np.radians(90))
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    root = arm.edit_bones.new("root")
    root.head, root.tail = (0, 0, 0), (0, 0.3, 0)
    for j, name in enumerate(skeleton.names):
        bone = arm.edit_bones.new(bone_of[name])
        direction = rng.normal(size=3)
        bone.head = heads[j].tolist()
        bone.tail = (heads[j] + 0.08 * direction / np.linalg.norm(direction)).tolist()
        bone.roll = rng.uniform(-3, 3)
        bone.parent = arm.edit_bones[bone_of[skeleton.names[skeleton.parents[j]]]] if j else root
    twist = arm.edit_bones.new("forearm_twist.L")
    twist.head, twist.tail = heads[skeleton.index("LeftForeArm")].tolist(), heads[skeleton.index("LeftHand")].tolist()
    twist.parent = arm.edit_bones["forearm.L"]
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj, bone_of


def _under(skeleton, k: int, j: int) -> bool:
    """Whether joint k is j's descendant (excluding j itself)."""
    while k > 0:
        k = int(skeleton.parents[k])
        if k == j:
            return True
    return False


def test_bake_on_a_rig_with_other_rest_pose_and_names(scene, model_dir, expected, tmp_path):
    obj, bone_of = _a_pose_rig(model_dir)
    settings = scene.motion_vae
    settings.armature, settings.frames = obj, FRAMES
    assert bpy.ops.motion_vae.auto_map() == {"FINISHED"}
    rows = {row.joint: row for row in obj.motion_vae.bone_map}
    assert rows["Spine1"].bone == "spine_01" and rows["LeftForeArm"].bone == "forearm.L"
    assert rows["Hips"].bone == "" and rows["RightToeBase"].bone == ""  # no name match: the user picks them
    rows["Hips"].bone, rows["RightToeBase"].bone = "pelvis", "toe.R"
    assert bpy.ops.motion_vae.bake() == {"FINISHED"}

    names, positions = expected
    sample = np.linspace(0, FRAMES - 1, 12).astype(int)
    want = positions[sample] @ np.array(obj.matrix_world)[:3, :3].T + np.array(obj.matrix_world)[:3, 3]
    error = np.linalg.norm(_baked_heads(obj, [bone_of[n] for n in names], sample) - want, axis=-1)
    assert error.max() < 0.01, f"retargeted joints are {error.max() * 100:.2f} cm off the runtime's"

    # The edited table is saved in the .blend.
    path = tmp_path / "rig.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    saved = {row.joint: row.bone for row in bpy.data.objects["Rig"].motion_vae.bone_map}
    assert saved == bone_of


def test_live_ticks_move_the_armature_as_a_bake_of_the_same_seed(scene, ext):
    live = _sub(ext, "live")
    settings = scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    obj = settings.armature
    bones = [b.name for b in obj.data.bones]
    assert bpy.ops.motion_vae.play() == {"FINISHED"} and live.playing()
    ticks = 300
    seen = {}
    for t in range(1, ticks + 1):
        assert live.tick() == pytest.approx(1 / live.session().model.fps)
        if t % 25 == 0:
            seen[t] = _heads(obj, bones)
    assert bpy.ops.motion_vae.stop() == {"FINISHED"} and not live.playing()

    settings.frames = ticks
    assert bpy.ops.motion_vae.bake() == {"FINISHED"} and live.session() is None
    baked = _baked_heads(obj, bones, np.array(sorted(seen)) - 1)
    error = np.linalg.norm(baked - np.array([seen[t] for t in sorted(seen)]), axis=-1)
    assert error.max() < 1e-4, f"live and baked poses differ by {error.max() * 100:.3f} cm"

    # A live session only names its armature, so one that vanished (deleted, undone) just stops the ticks.
    settings.armature = None
    assert bpy.ops.motion_vae.play() == {"FINISHED"}
    bpy.data.objects.remove(obj)
    assert live.tick() is None and not live.playing()


def _snapshot(scene) -> tuple:
    """What a failed operator must leave alone: objects, actions, poses, bone maps, fps and frame range."""
    poses = {o.name: np.round([list(pb.matrix_basis.col[3]) + list(pb.rotation_quaternion) for pb in o.pose.bones], 6)
             .tolist() for o in scene.objects if o.type == "ARMATURE"}
    maps = {o.name: [(r.joint, r.bone) for r in o.motion_vae.bone_map] for o in scene.objects}
    return (sorted(o.name for o in bpy.data.objects), sorted(a.name for a in bpy.data.actions), poses, maps,
            scene.render.fps, scene.frame_end,
            [pb.rotation_mode for o in scene.objects if o.type == "ARMATURE" for pb in o.pose.bones])


def _refused(op, match: str) -> None:
    with pytest.raises(RuntimeError, match=match) as caught:
        op()
    assert "Traceback" not in str(caught.value), "a Python exception reached the user"


def test_bad_input_is_reported_and_changes_nothing(scene, model_dir, tmp_path):
    settings = scene.motion_vae
    before = _snapshot(scene)
    for op in (bpy.ops.motion_vae.bake, bpy.ops.motion_vae.play, bpy.ops.motion_vae.auto_map):
        _refused(op, "No armature")
    assert _snapshot(scene) == before

    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    obj = settings.armature
    before = _snapshot(scene)
    settings.model_dir = str(tmp_path)
    _refused(bpy.ops.motion_vae.bake, "not a model directory")
    _refused(bpy.ops.motion_vae.create_armature, "not a model directory")
    assert _snapshot(scene) == before

    settings.model_dir = str(model_dir)
    rows = {row.joint: row for row in obj.motion_vae.bone_map}
    rows["LeftArm"].bone = "upperarm_l"
    before = _snapshot(scene)
    for op in (bpy.ops.motion_vae.bake, bpy.ops.motion_vae.play, bpy.ops.motion_vae.reset):
        _refused(op, "LeftArm -> 'upperarm_l' is not a bone")
    assert _snapshot(scene) == before

    rows["LeftArm"].bone = "LeftArm"
    before = _snapshot(scene)
    settings.mode = "JOYSTICK"
    _refused(bpy.ops.motion_vae.bake, "needs a 'joystick' control policy")
    settings.mode, settings.start = "RANDOM", 10_000
    _refused(bpy.ops.motion_vae.bake, "start frames 0 to")
    _refused(lambda: bpy.ops.motion_vae.export_animation(filepath=str(tmp_path / "x.glb")), "press Bake first")
    assert _snapshot(scene) == before


def test_render_and_export_the_baked_character(scene, tmp_path):
    settings = scene.motion_vae
    settings.frames = 60
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    obj = settings.armature
    scene.frame_set(45)
    hips = _heads(obj, ["Hips"])[0]
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    bpy.ops.mesh.primitive_plane_add(size=40.0, location=(hips[0], hips[1], 0.0))
    bpy.context.object.color = (0.55, 0.6, 0.65, 1.0)
    for child in obj.children:
        child.color = (0.95, 0.45, 0.15, 1.0)
    scene.display.shading.color_type = "OBJECT"
    scene.display.shading.show_shadows = True
    camera.location = hips + np.array([2.3, -2.3, 0.2])
    camera.rotation_euler = (np.radians(88), 0.0, np.radians(45))
    scene.camera = camera
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y = 480, 480
    ARTIFACTS.mkdir(exist_ok=True)
    scene.render.filepath = str(ARTIFACTS / "blender_baked_character.png")
    bpy.ops.render.render(write_still=True)
    assert (ARTIFACTS / "blender_baked_character.png").stat().st_size > 1000

    for suffix in (".glb", ".fbx"):
        assert bpy.ops.motion_vae.export_animation(filepath=str(tmp_path / f"walk{suffix}")) == {"FINISHED"}
        assert (tmp_path / f"walk{suffix}").stat().st_size > 1000
    _refused(lambda: bpy.ops.motion_vae.export_animation(filepath=str(tmp_path / "walk.abc")), "ending in .glb or .fbx")
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.context.scene.render.fps = 30  # glTF stores seconds; the importer turns them into frames at the scene's fps
    bpy.ops.import_scene.gltf(filepath=str(tmp_path / "walk.glb"))
    imported = [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]
    assert len(imported) == 1 and len(imported[0].data.bones) == 22
    assert tuple(imported[0].animation_data.action.frame_range) == (0, 59)


class _Layout:
    """Stands in for bpy's UILayout (panels cannot draw headless): checks every property and operator named."""

    def __init__(self, drawn: list) -> None:
        self.drawn, self.enabled, self.alert = drawn, True, False

    def row(self, **_) -> "_Layout":
        return _Layout(self.drawn)

    column = box = row

    def prop(self, data, name: str, **_) -> None:
        assert name in data.bl_rna.properties, name
        self.drawn.append(name)

    def prop_enum(self, data, name: str, value: str, **_) -> None:
        assert value in data.bl_rna.properties[name].enum_items.keys(), value
        self.drawn.append((value, self.enabled))

    def prop_search(self, data, name: str, search_data, search_name: str, **_) -> None:
        assert name in data.bl_rna.properties and search_name in search_data.bl_rna.properties
        self.drawn.append(name)

    def operator(self, idname: str, **_) -> None:
        category, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, category), name), idname
        self.drawn.append(idname)

    def label(self, text: str = "", **_) -> None:
        self.drawn.append(text)

    def template_list(self, list_type: str, _id: str, data, name: str, active_data, active_name: str, **_) -> None:
        assert hasattr(bpy.types, list_type) and name in data.bl_rna.properties
        assert active_name in active_data.bl_rna.properties
        self.drawn.append(list_type)


def test_panel_draws_settings_buttons_and_greys_steering_without_policies(scene, ext):
    from types import SimpleNamespace

    ui = _sub(ext, "ui")
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}  # loads the model the panel peeks at
    drawn: list = []
    for panel in (ui.MOTION_VAE_PT_main, ui.MOTION_VAE_PT_bone_map):
        panel.draw(SimpleNamespace(layout=_Layout(drawn)), bpy.context)
    rig = scene.motion_vae.armature.motion_vae
    ui.MOTION_VAE_UL_bone_map.draw_item(None, bpy.context, _Layout(drawn), rig, rig.bone_map[0], 0, rig, "active_row")
    for name in ("model_dir", "armature", "seed", "start", "frames", "bone", "motion_vae.play", "motion_vae.reset",
                 "motion_vae.bake", "motion_vae.export_animation", "motion_vae.create_armature",
                 "motion_vae.auto_map", "MOTION_VAE_UL_bone_map", "Steering needs a model with control policies"):
        assert name in drawn, name
    assert ("RANDOM", True) in drawn
    assert {("JOYSTICK", False), ("TARGET", False), ("CURVE", False)} <= set(drawn)
