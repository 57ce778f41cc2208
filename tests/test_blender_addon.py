"""The Blender extension on real bpy 5.0.1: build, install, bake, retarget, live play, steering, a godot_bridge
server as the live source, bad input, render, export."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

# Blender reads its user folders once, when bpy is imported: point them at a throwaway folder first, so the
# extension installs there and never into the user's own Blender.
BLENDER_HOME = Path(tempfile.gettempdir()) / f"motionvae-blender-{os.getpid()}"
os.environ["BLENDER_USER_RESOURCES"] = str(BLENDER_HOME)
bpy = pytest.importorskip("bpy", reason="bpy is not installed: `pip install bpy==5.0.1` runs the Blender tests")

from websockets.sync.client import connect  # noqa: E402

from blender_addon import build  # noqa: E402
from godot_bridge import protocol as P  # noqa: E402
from godot_bridge.background import BackgroundServer  # noqa: E402
from godot_bridge.bridge import Bridge, BridgeConfig  # noqa: E402
from runtime.bake import bake as runtime_bake  # noqa: E402
from runtime.bvh import read_bvh  # noqa: E402
from runtime.contacts import foot_floor, planted_speed  # noqa: E402
from runtime.controller import Controller  # noqa: E402
from runtime.model import load_model  # noqa: E402
from runtime.rotations import quat_to_matrix  # noqa: E402
from tests.rigs import LEGS, RigSpec, angle_deg, rigs  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "default"
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
FRAMES = 1000
SEED = 3
WAIT_S = 10.0


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The extension zip, built and validated by blender_ext.py (onnxruntime and websockets wheels from PyPI)."""
    cache = build.WORK / "wheel-cache"
    wheels = [build.fetch_wheel("linux-x64", build.installed("onnxruntime"), cache),
              build.fetch_websockets(build.installed("websockets"), cache)]
    return build.build(tmp_path_factory.mktemp("dist"), wheels)


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


@pytest.fixture
def default_scene(scene):
    """An empty scene on the model shipped inside the extension (joystick, target and path policies)."""
    scene.motion_vae.model_dir = ""
    return scene


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
    assert "runtime/protocol.py" in names, "the wire format is bundled, not rewritten"
    assert any(n.startswith("wheels/onnxruntime-") and n.endswith(".whl") for n in names)
    assert any(n.startswith("wheels/websockets-") and n.endswith("-py3-none-any.whl") for n in names)
    build._run([sys.executable, str(build.blender_ext()), "validate", str(built)], "validate")
    site = Path(bpy.utils.user_resource("EXTENSIONS")) / ".local" / "lib"
    for package in ("onnxruntime", "websockets"):
        assert list(site.glob(f"python3.*/site-packages/{package}/__init__.py")), f"the bundled {package} is missing"
    for op in ("create_armature", "auto_map", "bake", "play", "stop", "reset", "export_animation", "steer"):
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
    # No preset names them, the hierarchy does: the hips are where legs and spine branch, the toe ends the leg.
    assert rows["Hips"].bone == "pelvis" and rows["RightToeBase"].bone == "toe.R"
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


def test_the_precision_switch_bakes_the_int8_graph_and_names_the_command_without_one(scene, int8_model_dir):
    settings = scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    obj, frames = settings.armature, 40
    settings.precision = "int8"
    before = _snapshot(scene)
    _refused(bpy.ops.motion_vae.bake, "no int8 step graph; add one with `python -m trainer.export --precision int8")
    assert _snapshot(scene) == before
    settings.model_dir, settings.frames = str(int8_model_dir), frames
    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    model = load_model(int8_model_dir, precision="int8")
    clip = runtime_bake(model, frames, SEED)
    want = model.skeleton.forward_kinematics(clip.rotations[:, 0].astype(np.float64),
                                             clip.root_positions[:, 0].astype(np.float64))[0] @ Y_UP_TO_Z_UP.T
    sample = np.arange(0, frames, 5)
    error = np.linalg.norm(_baked_heads(obj, model.skeleton.names, sample) - want[sample], axis=-1)
    assert error.max() < 0.01, f"the int8 bake is {error.max() * 100:.2f} cm off the runtime's int8 bake"


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
    for name in ("model_dir", "armature", "seed", "start", "frames", "foot_lock", "bone", "motion_vae.play",
                 "motion_vae.reset",
                 "motion_vae.bake", "motion_vae.export_animation", "motion_vae.create_armature",
                 "motion_vae.auto_map", "MOTION_VAE_UL_bone_map", "Steering needs a model with control policies"):
        assert name in drawn, name
    assert ("RANDOM", True) in drawn
    assert {("JOYSTICK", False), ("TARGET", False), ("CURVE", False)} <= set(drawn)


def test_panel_draws_the_settings_of_the_picked_mode_and_source(default_scene, ext):
    from types import SimpleNamespace

    ui = _sub(ext, "ui")
    settings = default_scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}

    def drawn_with(mode: str, source: str = "LOCAL") -> list:
        settings.mode, settings.source = mode, source
        drawn: list = []
        ui.MOTION_VAE_PT_main.draw(SimpleNamespace(layout=_Layout(drawn)), bpy.context)
        return drawn

    joystick = drawn_with("JOYSTICK")
    assert {"stick", "joystick_speed", "motion_vae.steer"} <= set(joystick)
    assert "target_object" not in joystick and "server_host" not in joystick
    assert {("JOYSTICK", True), ("TARGET", True), ("CURVE", True)} <= set(joystick), "every policy: every mode"
    assert "target_object" in drawn_with("TARGET") and "curve_object" in drawn_with("CURVE")
    server = drawn_with("RANDOM", "SERVER")
    assert {"server_host", "server_port", "server_token"} <= set(server) and "stick" not in server
    assert ("CURVE", True) in server and ("TARGET", True) in server, "the protocol carries every task"


def test_keys_push_the_stick_relative_to_the_view(ext):
    keys = _sub(ext, "joystick")
    assert keys.stick_from_keys(set(), (1.0, 0.0)) == (0.0, 0.0)
    assert keys.stick_from_keys({"W"}, (1.0, 0.0)) == pytest.approx((0.0, 1.0)), "front/top view: W is world +Y"
    assert keys.stick_from_keys({"W", "D"}, (1.0, 0.0)) == pytest.approx((0.5 ** 0.5, 0.5 ** 0.5))
    assert keys.stick_from_keys({"W", "S"}, (1.0, 0.0)) == (0.0, 0.0)
    assert keys.stick_from_keys({"UP_ARROW"}, (0.0, 2.0)) == pytest.approx((-1.0, 0.0)), "view turned: W follows it"


def _root(obj) -> tuple[np.ndarray, np.ndarray]:
    """The root bone's world position and the character's facing on the ground (unit x, y), in Blender world.

    The model's rest pose faces +Z, which is Blender's -Y; the root joint's world rotation turns that.
    """
    bpy.context.view_layer.update()
    root = obj.pose.bones[0]
    world = np.array(obj.matrix_world) @ np.array(root.matrix)
    joint = world[:3, :3] @ np.array(root.bone.matrix_local)[:3, :3].T  # the joint's world rotation
    facing = (joint @ np.array([0.0, -1.0, 0.0]))[:2]
    return world[:3, 3], facing / np.linalg.norm(facing)


def _play(live, ticks: int) -> list:
    """Tick a playing session ticks times; the root (position, facing) after each."""
    out = []
    for _ in range(ticks):
        assert live.tick() is not None, live.status()
        out.append(_root(bpy.context.scene.motion_vae.armature))
    return out


def test_joystick_turns_the_character_towards_the_stick_and_bakes_as_it_plays(default_scene, ext):
    live = _sub(ext, "live")
    settings = default_scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    obj = settings.armature
    bones = [b.name for b in obj.data.bones]
    settings.mode, settings.stick, settings.joystick_speed = "JOYSTICK", (1.0, 0.0), 1.5  # towards world +X
    assert bpy.ops.motion_vae.play() == {"FINISHED"}
    start_facing = _root(obj)[1]
    assert start_facing @ [0.0, -1.0] > 0.9, "a start frame faces -Y"
    ticks = 90
    heads = {}
    track = []
    for t in range(1, ticks + 1):
        track += _play(live, 1)
        if t % 15 == 0:
            heads[t] = _heads(obj, bones)
    facing = track[-1][1]
    travel = track[-1][0][:2] - track[ticks // 2][0][:2]
    assert facing @ [1.0, 0.0] > np.cos(np.radians(35)), f"faces {facing} after 3 s, not +X"
    assert travel[0] > 0.5 and abs(travel[1]) < travel[0], f"walked {travel} in the last 1.5 s, not towards +X"
    assert bpy.ops.motion_vae.stop() == {"FINISHED"}

    settings.frames = ticks
    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    baked = _baked_heads(obj, bones, np.array(sorted(heads)) - 1)
    error = np.linalg.norm(baked - np.array([heads[t] for t in sorted(heads)]), axis=-1)
    assert error.max() < 1e-4, f"live and baked joystick poses differ by {error.max() * 100:.3f} cm"


def test_target_mode_walks_to_the_target_object_of_a_moved_and_turned_armature(default_scene, ext):
    live = _sub(ext, "live")
    settings = default_scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    obj = settings.armature
    # The target is found in the armature's own space: turned a quarter about Z, moved off the origin.
    obj.location, obj.rotation_euler = (1.0, 2.0, 0.0), (0.0, 0.0, np.radians(90))
    goal = bpy.data.objects.new("Goal", None)
    default_scene.collection.objects.link(goal)
    goal.location = (4.0, 5.0, 0.0)
    settings.mode = "TARGET"
    _refused(bpy.ops.motion_vae.play, "needs a target object")
    settings.target_object = goal
    assert bpy.ops.motion_vae.play() == {"FINISHED"}
    before = np.linalg.norm(_root(obj)[0][:2] - [4.0, 5.0])
    track = _play(live, 150)
    after = np.linalg.norm(track[-1][0][:2] - [4.0, 5.0])
    assert after < before - 1.0, f"5 s towards the target took it from {before:.2f} m to {after:.2f} m"

    bpy.data.objects.remove(goal)  # what it walks to is gone: play stops with a status, not an exception
    assert live.tick() is None and not live.playing()
    assert live.status() == ("ERROR", "The target object 'Goal' is gone: steering stopped.")


def test_curve_mode_without_a_path_policy_is_refused_and_changes_nothing(scene):
    settings = scene.motion_vae  # the tiny test model: no policies
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    settings.curve_object = _curve("Route", [(0, 0, 0), (0, -4, 0), (4, -4, 0)])
    settings.mode = "CURVE"
    before = _snapshot(scene)
    for op in (bpy.ops.motion_vae.play, bpy.ops.motion_vae.bake, bpy.ops.motion_vae.reset):
        _refused(op, "Mode 'Follow curve' needs a 'path' control policy, which model 'tiny' does not have")
    assert _snapshot(scene) == before


def _curve(name: str, points: list, cyclic: bool = False) -> bpy.types.Object:
    """A Bezier curve object through points (automatic handles), linked to the scene."""
    data = bpy.data.curves.new(name, "CURVE")
    data.dimensions = "3D"
    spline = data.splines.new("BEZIER")
    spline.bezier_points.add(len(points) - 1)
    for knot, p in zip(spline.bezier_points, points):
        knot.co = p
        knot.handle_left_type = knot.handle_right_type = "AUTO"
    spline.use_cyclic_u = cyclic
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def test_curve_mode_sends_the_curve_in_model_space_and_bakes_as_it_plays(default_scene, ext):
    live, steering = _sub(ext, "live"), _sub(ext, "steering")
    settings = default_scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    obj = settings.armature
    obj.location, obj.rotation_euler = (0.5, -1.0, 0.0), (0.0, 0.0, np.radians(30))
    curve = _curve("Route", [(0, 0, 0), (1, -3, 0.5), (4, -4, 0)])
    curve.location = (1.0, 0.0, 0.0)
    settings.mode, settings.curve_object = "CURVE", curve

    # The curve's points as Blender evaluates them, taken to the armature's space, then Y up: (x, y, z) -> (x, -y).
    bpy.context.view_layer.update()
    mesh = curve.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    world = np.array([curve.matrix_world @ v.co for v in mesh.vertices])
    local = (np.linalg.inv(np.array(obj.matrix_world)) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
    points, closed = steering.curve_path(curve, obj)
    assert not closed and np.allclose(points, local[:, [0, 1]] * [1, -1], atol=1e-5)

    bones = [b.name for b in obj.data.bones]
    assert bpy.ops.motion_vae.play() == {"FINISHED"}
    for _ in range(45):
        assert live.tick() is not None
    played = _heads(obj, bones)
    assert bpy.ops.motion_vae.stop() == {"FINISHED"}
    settings.frames = 45
    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    assert np.abs(_baked_heads(obj, bones, np.array([44]))[0] - played).max() < 1e-4, "live and bake disagree"
    settings.mode = "RANDOM"
    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    assert np.abs(_baked_heads(obj, bones, np.array([44]))[0] - played).max() > 1e-3, "the path policy was not used"


def _reference_client(ws, seed: int) -> dict:
    """Make ws a plain Python client of the bridge, seeded, one character spawned as the extension spawns its own."""
    hello = json.loads(ws.recv(WAIT_S))
    for text in (P.encode_client_message("seed", seed=seed),
                 P.encode_client_message("spawn", start=0, position=[0.0, 0.0], yaw=0.0)):
        ws.send(text)
        assert json.loads(ws.recv(WAIT_S))["type"] == "ok"
    return hello


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _spawned(server: BackgroundServer) -> int:
    return server.call(lambda: sum(int(c.spawned.sum()) for c in server.bridge.clients.values()))


def test_server_source_shows_the_servers_frames_and_says_when_it_goes_away(default_scene, ext):
    live = _sub(ext, "live")
    model = load_model(None)
    settings = default_scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    obj = settings.armature
    # Lockstep: the server steps once both clients asked, so the same seed and start give both the same frames.
    server = BackgroundServer(Bridge(model, BridgeConfig(max_clients=2, characters_per_client=1, lockstep=True)))
    with server, connect(server.url) as ref:
        hello = _reference_client(ref, SEED)
        settings.source, settings.server_port, settings.start = "SERVER", server.port, 0
        assert bpy.ops.motion_vae.play() == {"FINISHED"} and live.playing()
        link = live.session().link
        _until(lambda: _spawned(server) == 2, "the extension's character to spawn")
        errors = []
        for _ in range(30):
            ref.send(P.encode_client_message("step"))
            frame = P.decode_frame(ref.recv(WAIT_S), len(hello["skeleton"]["names"]))
            _until(lambda: live.tick() is not None and live.session().frame == frame.frame, f"frame {frame.frame}")
            want = model.skeleton.forward_kinematics(frame.local_rotations.astype(np.float64),
                                                     frame.root_position.astype(np.float64))[0][0]
            shown = _heads(obj, list(model.skeleton.names))
            errors.append(np.linalg.norm(shown - want @ Y_UP_TO_Z_UP.T, axis=-1).max())
        assert max(errors) < 1e-3, f"the armature is {max(errors) * 100:.2f} cm off the server's frames"
        assert live.status()[0] == "INFO" and "frame" in live.status()[1]
    _until(lambda: live.tick() is None, "play to stop")
    assert not live.playing() and live.session() is None and not link.alive
    assert live.status() == ("ERROR", f"The godot_bridge server at ws://127.0.0.1:{server.port}/ closed the "
                                      "connection (the server shut down).")


def test_server_source_refusals_and_a_bounded_frame_queue(default_scene, ext):
    live = _sub(ext, "live")
    settings = default_scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    settings.source = "SERVER"
    with BackgroundServer(Bridge(load_model(None), BridgeConfig(max_clients=1)), token="s3cret") as server:
        settings.server_port = server.port
        before = _snapshot(default_scene)
        settings.server_token = "wrong"
        _refused(bpy.ops.motion_vae.play, r"refused the token \(HTTP 401\)")
        settings.server_token, settings.start = "s3cret", 999
        _refused(bpy.ops.motion_vae.play, "Start 999: the model has start frames 0 to")
        assert _snapshot(default_scene) == before and live.session() is None and _spawned(server) == 0

        settings.start, settings.mode, settings.stick = -1, "JOYSTICK", (0.0, 1.0)
        assert bpy.ops.motion_vae.play() == {"FINISHED"}
        link = live.session().link
        time.sleep(20 / server.bridge.model.fps)  # Blender busy: frames keep coming, the queue does not grow
        assert link.frames.qsize() <= 1 and link.dropped >= 5
        assert live.tick() is not None
        newest = live.session().frame
        assert newest is not None and server.call(lambda: server.bridge.ctrl.frame) - newest <= 5, "not the newest"
        _until(lambda: server.call(lambda: server.bridge._task[0]) == "joystick", "the joystick control to arrive")
        assert bpy.ops.motion_vae.stop() == {"FINISHED"} and live.session() is None and not link.alive
        _until(lambda: _spawned(server) == 0, "the server to free the character")
        assert bpy.ops.motion_vae.play() == {"FINISHED"}
        link = live.session().link
        ext.unregister()  # disabling the extension ends the network thread too
        try:
            assert not link.alive and live.session() is None
        finally:
            ext.register()
        _until(lambda: _spawned(server) == 0, "the server to free the character")
    port = server.port  # nothing listens there now
    _refused(bpy.ops.motion_vae.play, f"No godot_bridge server at ws://127.0.0.1:{port}/ \\(connection refused\\)")


def test_server_source_steers_along_a_curve(default_scene, ext):
    live = _sub(ext, "live")
    settings = default_scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    settings.curve_object = _curve("Route", [(0, 0, 0), (0, -4, 0), (4, -4, 0)])
    settings.source, settings.mode = "SERVER", "CURVE"
    with BackgroundServer(Bridge(load_model(None), BridgeConfig(max_clients=1))) as server:
        settings.server_port = server.port
        assert bpy.ops.motion_vae.play() == {"FINISHED"}
        _until(lambda: live.tick() is not None and server.call(lambda: server.bridge._task[0]) == "path",
               "the path control to arrive")
        sent = server.call(lambda: server.bridge._paths[0])
        assert bpy.ops.motion_vae.stop() == {"FINISHED"}
    assert len(sent) >= 3 and np.allclose(sent[0], [0.0, 0.0], atol=1e-6)  # model ground (x, z) of the curve


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 2) to a closed polyline (P, 2)."""
    a, b = line, np.roll(line, -1, axis=0)
    ab = b - a
    t = np.clip(np.einsum("npk,pk->np", points[:, None] - a, ab) / np.einsum("pk,pk->p", ab, ab), 0.0, 1.0)
    nearest = a + t[..., None] * ab
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)


def test_curve_mode_follows_a_closed_curve_with_the_shipped_path_policy(default_scene, ext):
    live = _sub(ext, "live")
    settings = default_scene.motion_vae
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    curve = _curve("Loop", [(0, 0, 0), (0, -4, 0), (4, -5, 0), (5, -1, 0)], cyclic=True)
    settings.mode, settings.curve_object = "CURVE", curve
    bpy.context.view_layer.update()
    mesh = curve.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    line = np.array([(curve.matrix_world @ v.co)[:2] for v in mesh.vertices])
    assert bpy.ops.motion_vae.play() == {"FINISHED"}
    track = np.array([root[:2] for root, _ in _play(live, 300)])  # 10 s
    off = _distance_to_polyline(track[30:], line)  # after the first second's turn onto the curve
    walked = np.linalg.norm(np.diff(track, axis=0), axis=1).sum()
    print(f"follow curve: {off.mean():.2f} m from the curve on average (max {off.max():.2f} m), {walked:.1f} m walked")
    assert off.mean() < 0.5 and walked > 5.0


def test_bake_carries_the_locked_feet_and_the_panel_turns_locking_off(default_scene, ext):
    settings = default_scene.motion_vae
    frames = 240
    settings.frames = frames
    assert settings.foot_lock, "foot locking is on by default"
    assert bpy.ops.motion_vae.create_armature() == {"FINISHED"}
    obj = settings.armature
    model = load_model(None)
    toes = ["LeftToeBase", "RightToeBase"]
    # The runtime's own run of the panel's seed: when each foot is locked and where it shows the toes.
    ctrl = Controller(model, 1, seed=SEED, foot_lock=True)
    ctrl.reset(start=None)
    locks, runtime_toes = [], []
    for _ in range(frames):
        p = ctrl.step()
        locks.append(ctrl.foot_lock.locked[0].copy())
        runtime_toes.append(p.positions[0, [model.skeleton.index(t) for t in toes]].astype(np.float64))
    locks, runtime_toes = np.array(locks), np.array(runtime_toes) @ Y_UP_TO_Z_UP.T

    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    every = np.arange(frames)
    locked = _baked_heads(obj, toes, every)
    assert np.abs(locked - runtime_toes).max() < 1e-3, "the baked toes are not where the runtime held them"
    settings.foot_lock = False
    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    raw = _baked_heads(obj, toes, every)

    held = 0
    for leg in range(2):
        pairs = locks[1:, leg] & locks[:-1, leg]
        pairs &= np.linalg.norm(np.diff(runtime_toes[:, leg, :2], axis=0), axis=-1) < 1e-4  # not at the reach limit
        moves = np.linalg.norm(np.diff(locked[:, leg, :2], axis=0), axis=-1)  # Blender's ground plane is x, y
        assert moves[pairs].max() < 1e-3, "a locked toe moved in the baked Action"
        raw_moves = np.linalg.norm(np.diff(raw[:, leg, :2], axis=0), axis=-1)
        assert np.median(raw_moves[pairs]) > 1e-3, "with Foot Lock off the same toe slides"
        held += int(pairs.sum())
    assert held > 100


RIG_FRAMES = 300
SPECS = {spec.name: spec for spec in rigs(load_model(DEFAULT_MODEL).skeleton)}
CMU_131 = Path(__file__).resolve().parents[2] / "shared" / "mocap" / "cmu_permissive_extra" / "131_01.bvh"


def _spec_armature(spec: RigSpec) -> bpy.types.Object:
    """An armature built from a RigSpec: each bone's tail towards its first child (or a stub up), the spec's rolls."""
    heads = spec.head_array @ Y_UP_TO_Z_UP.T
    arm = bpy.data.armatures.new(spec.name)
    obj = bpy.data.objects.new(spec.name, arm)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    kids = {i: [k for k, p in enumerate(spec.parents) if p == i] for i in range(len(spec.names))}
    for i, (name, parent, roll) in enumerate(zip(spec.names, spec.parents, spec.rolls())):
        bone = arm.edit_bones.new(name)
        ahead = [heads[k] for k in kids[i] if np.linalg.norm(heads[k] - heads[i]) > 0.02]
        bone.head, bone.tail = heads[i].tolist(), (ahead[0] if ahead else heads[i] + [0, 0, 0.05]).tolist()
        bone.roll = roll
        if parent >= 0:
            bone.parent = arm.edit_bones[spec.names[parent]]
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def _bake_rig(scene, obj) -> dict:
    """Auto-match and bake RIG_FRAMES frames onto obj; each bone's head (model axes) and turn away from rest per
    frame, read back from Blender."""
    settings = scene.motion_vae
    settings.armature, settings.frames = obj, RIG_FRAMES
    assert bpy.ops.motion_vae.auto_map() == {"FINISHED"}
    assert bpy.ops.motion_vae.bake() == {"FINISHED"}
    names = [b.name for b in obj.data.bones]
    bag = _channelbag(obj)
    rest = np.array([np.array(b.matrix_local)[:3, :3] for b in obj.data.bones])
    heads, turns = [], []
    for f in range(RIG_FRAMES):
        scene.frame_set(scene.frame_start + f)
        heads.append([tuple(obj.pose.bones[n].head) for n in names])  # copies: the Vectors follow the pose
        turns.append([np.array(obj.pose.bones[n].matrix)[:3, :3] for n in names])
    turn = Y_UP_TO_Z_UP.T @ (np.array(turns) @ np.swapaxes(rest, -1, -2)) @ Y_UP_TO_Z_UP
    return {"names": names, "map": {r.joint: r.bone for r in obj.motion_vae.bone_map},
            "heads": np.array(heads) @ Y_UP_TO_Z_UP, "turn": turn}


@pytest.fixture(scope="module")
def shipped_clip():
    """The shipped model's bake with the panel's defaults, its world rotations and joint positions."""
    model = load_model(DEFAULT_MODEL)
    clip = runtime_bake(model, RIG_FRAMES, SEED)
    rot = quat_to_matrix(clip.rotations[:, 0].astype(np.float64))
    positions, world = model.skeleton.forward_kinematics_matrices(rot, clip.root_positions[:, 0].astype(np.float64))
    return model, positions, world


def _feet_ok(model, positions, baked, toes: list[str], scale: float) -> tuple[float, float, float]:
    """Lowest rig toe (m), the model's and the rig's planted sliding (m/s, the rig's at the model's size)."""
    sk = model.skeleton
    rig_toes = baked["heads"][:, [baked["names"].index(t) for t in toes]]
    model_toes = positions[:, [sk.index("LeftToeBase"), sk.index("RightToeBase")]]
    slides = []
    for toes_xyz in (model_toes, rig_toes / scale):
        speed, planted = planted_speed(toes_xyz, model.fps, foot_floor(toes_xyz[..., 1]))
        slides.append(speed[planted].mean())
    return rig_toes[..., 1].min(), slides[0], slides[1]


@pytest.mark.parametrize("name", list(SPECS))
def test_rigs_of_every_convention_turn_as_the_model_and_keep_their_feet(default_scene, shipped_clip, name):
    spec = SPECS[name]
    model, positions, world = shipped_clip
    sk = model.skeleton
    baked = _bake_rig(default_scene, _spec_armature(spec))
    assert {j: b for j, b in baked["map"].items() if b} == spec.expected
    check = [j for j in spec.expected if spec.leg_scale == 1.0 or j not in LEGS]
    bones = [baked["names"].index(spec.expected[j]) for j in check]
    joints = [sk.index(j) for j in check]
    error = angle_deg(baked["turn"][:, bones] @ spec.align_array(sk, np.array(joints)), world[:, joints])
    assert error.max() < 0.01, f"{check[error.max(0).argmax()]} turns {error.max():.4f} deg off the model's"
    hips = baked["names"].index(spec.expected["Hips"])
    scale = baked["heads"][0, hips, 1] / positions[0, 0, 1]
    low, model_slide, rig_slide = _feet_ok(model, positions, baked,
                                           [spec.expected["LeftToeBase"], spec.expected["RightToeBase"]], scale)
    assert low > -0.005, f"toes {-low * 1000:.1f} mm under the ground"
    assert rig_slide <= 1.1 * model_slide, f"planted toes slide {rig_slide:.4f} m/s against {model_slide:.4f}"


def test_cmu_131_skeleton_is_matched_and_keeps_its_feet(default_scene, shipped_clip):
    if not CMU_131.exists():
        pytest.skip(f"{CMU_131} is not here (the CMU mocap in ../shared)")
    skeleton = read_bvh(CMU_131).skeleton
    heads = skeleton.rest_positions() + skeleton.offsets[0]
    spec = RigSpec("cmu131", "cmu-asf", list(skeleton.names), skeleton.parents.tolist(), list(heads))
    model, positions, world = shipped_clip
    baked = _bake_rig(default_scene, _spec_armature(spec))
    assert all(baked["map"].values()), baked["map"]
    assert baked["map"]["LeftShoulder"] == "LeftCollar" and baked["map"]["LeftArm"] == "LeftShoulder"
    # Arms, spine and neck point where the model's do (the legs are turned to keep the feet on the footprints).
    sk = model.skeleton
    for joint, child in (("LeftShoulder", "LeftArm"), ("LeftArm", "LeftForeArm"), ("RightForeArm", "RightHand"),
                         ("Spine1", "Spine2"), ("Neck", "Head")):
        a, b = (baked["names"].index(baked["map"][n]) for n in (joint, child))
        rig_dir = baked["heads"][:, b] - baked["heads"][:, a]
        model_dir = positions[:, sk.index(child)] - positions[:, sk.index(joint)]
        cos = np.sum(rig_dir * model_dir, -1) / np.linalg.norm(rig_dir, axis=-1) / np.linalg.norm(model_dir, axis=-1)
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 0.01, joint
    hips = baked["names"].index("Hips")
    scale = baked["heads"][0, hips, 1] / positions[0, 0, 1]
    low, model_slide, rig_slide = _feet_ok(model, positions, baked, ["LeftToe", "RightToe"], scale)
    assert low > -0.005, f"toes {-low * 1000:.1f} mm under the ground"
    assert rig_slide <= 1.1 * model_slide, f"planted toes slide {rig_slide:.4f} m/s against {model_slide:.4f}"
