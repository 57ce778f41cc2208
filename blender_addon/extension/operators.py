"""The panel's buttons. Each checks everything first and changes the scene only once nothing can fail."""
# No `from __future__ import annotations` here: Blender reads operator annotations as property definitions.
import functools
import time
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper

from . import live, models
from .action import bone_channel, write_action
from .bridge_client import STREAMED_TASKS, BridgeLink
from .runtime.protocol import is_loopback
from .errors import AddonError
from .export import export_animation
from .motion import run
from .retarget import Binding, auto_map, bind, pose
from .rig import create_armature, read_rest, use_quaternions
from .runtime.model import ModelError, MotionModel
from .runtime.skeleton import Skeleton
from .steering import Steering, check_policy, mode_label


def reports_errors(execute):
    """Turn the user's mistakes (AddonError, ModelError) into an error report and a cancelled operator."""
    @functools.wraps(execute)
    def guarded(self, context):
        try:
            return execute(self, context)
        except (AddonError, ModelError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
    return guarded


def _armature(context: bpy.types.Context) -> bpy.types.Object:
    """The target armature: the panel's, else the active object; AddonError when there is none."""
    obj = context.scene.motion_vae.armature or context.active_object
    if obj is None or obj.type != "ARMATURE":
        raise AddonError("No armature: pick one as the target in the Motion VAE panel, select one, "
                         "or press Create Armature.")
    if obj.mode == "EDIT":
        raise AddonError(f"'{obj.name}' is in Edit Mode: leave it first.")
    return obj


def _stored_map(obj: bpy.types.Object) -> dict[str, str]:
    """The bone map saved on an armature object (empty if never made)."""
    return {row.joint: row.bone for row in obj.motion_vae.bone_map}


def _store_map(obj: bpy.types.Object, mapping: dict[str, str]) -> None:
    """Save a bone map on an armature object, replacing its table."""
    rows = obj.motion_vae.bone_map
    rows.clear()
    for joint, bone in mapping.items():
        row = rows.add()
        row.joint, row.bone = joint, bone


def _mapping(obj: bpy.types.Object, skeleton: Skeleton) -> tuple[dict[str, str], Binding]:
    """The armature's bone map for a skeleton and its binding; a rig never mapped (empty table) is auto-matched."""
    rest = read_rest(obj)
    mapping = _stored_map(obj) or auto_map(skeleton, rest).bone_map
    return mapping, bind(skeleton, rest, mapping)


def _commit(obj: bpy.types.Object, mapping: dict[str, str], binding: Binding) -> None:
    """The changes every driving operator makes: the bone map saved, quaternion rotation on driven bones."""
    if _stored_map(obj) != mapping:
        _store_map(obj, mapping)
    use_quaternions(obj, binding.bone_names)


def _start(context: bpy.types.Context, frames: int) -> int | None:
    """The panel's start frame (None: the seed picks), checked against a count of start frames."""
    start = context.scene.motion_vae.start
    if start >= frames:
        raise AddonError(f"Start {start}: the model has start frames 0 to {frames - 1} (-1 lets the seed pick).")
    return None if start < 0 else start


@dataclass
class _Target:
    """Everything a bake or a local live session needs, checked."""

    model: MotionModel
    obj: bpy.types.Object
    mapping: dict[str, str]
    binding: Binding
    steering: Steering
    seed: int
    start: int | None
    foot_lock: bool

    @property
    def key(self) -> tuple:
        """What a live session made from this target depends on (its steering can change between plays)."""
        return self.obj.name, self.model.path, self.model.precision, self.seed, self.start, tuple(self.mapping.items()), self.foot_lock

    def session(self) -> live.LiveSession:
        """A live session on this target."""
        return live.LiveSession(self.model, live.Display(self.binding, self.obj), self.steering, self.seed,
                                self.start, self.key, self.foot_lock)

    def commit(self) -> None:
        """Save the bone map and switch the driven bones to quaternions."""
        _commit(self.obj, self.mapping, self.binding)


def _target(context: bpy.types.Context) -> _Target:
    """The model, armature, bone map and steering of the panel, checked; nothing in the scene changes."""
    settings = context.scene.motion_vae
    obj = _armature(context)
    model = models.load(settings.model_dir, settings.precision)
    check_policy(settings.mode, model.policies, f"model '{model.name}'")
    start = _start(context, len(model.start_frames))
    mapping, binding = _mapping(obj, model.skeleton)
    return _Target(model, obj, mapping, binding, Steering(context.scene, obj, settings.mode), settings.seed, start,
                   settings.foot_lock)


_Bound = tuple[bpy.types.Object, dict[str, str], Binding]  # what _commit takes


def _remote_session(context: bpy.types.Context) -> tuple[live.RemoteSession, _Bound]:
    """A session on the panel's server, connected and checked but not spawned yet; nothing in the scene changes."""
    settings = context.scene.motion_vae
    obj = _armature(context)
    steering = Steering(context.scene, obj, settings.mode)
    if steering.task is not None and steering.task not in STREAMED_TASKS:
        raise AddonError(f"Mode '{mode_label(settings.mode)}' cannot steer a server's character: the godot_bridge "
                         f"protocol carries {' and '.join(STREAMED_TASKS)} control only. Use the Local source.")
    host = settings.server_host.strip()
    if not is_loopback(host) and not bpy.app.online_access:
        raise AddonError(f"A server on {host} needs Blender's online access (Preferences > System > Network > "
                         "Allow Online Access); a server on this machine (127.0.0.1) does not.")
    link = BridgeLink.open(host, settings.server_port, settings.server_token)
    try:
        hello = link.hello
        check_policy(settings.mode, hello.get("tasks") or [], f"the server's model '{hello.get('model')}'")
        start = _start(context, int(hello.get("start_frames", 0)))
        try:
            skeleton = Skeleton.from_dict(hello["skeleton"])
        except (KeyError, TypeError, ValueError) as e:
            raise AddonError(f"The server at {link.where} sent a skeleton this extension cannot read ({e}).") from None
        mapping, binding = _mapping(obj, skeleton)
        session = live.RemoteSession(link, live.Display(binding, obj), steering, settings.seed, start,
                                     settings.foot_lock)
    except BaseException:
        link.close()
        raise
    return session, (obj, mapping, binding)


def _set_scene_fps(scene: bpy.types.Scene, fps: float) -> None:
    """Scene fps = the model's (24 would stretch the clip); fps_base carries fractional rates like 29.97."""
    scene.render.fps = max(1, round(fps))
    scene.render.fps_base = scene.render.fps / fps


class MOTION_VAE_OT_create_armature(bpy.types.Operator):
    """Create an armature (with a simple body mesh) from the model's skeleton and make it the target"""

    bl_idname = "motion_vae.create_armature"
    bl_label = "Create Armature"
    bl_options = {"REGISTER", "UNDO"}

    @reports_errors
    def execute(self, context):
        model = models.load(context.scene.motion_vae.model_dir, context.scene.motion_vae.precision)
        obj = create_armature(context, model.skeleton, model.name)
        _store_map(obj, {name: name for name in model.skeleton.names})
        context.scene.motion_vae.armature = obj
        self.report({"INFO"}, f"Created '{obj.name}' with {model.skeleton.n_joints} bones from '{model.name}'.")
        return {"FINISHED"}


class MOTION_VAE_OT_auto_map(bpy.types.Operator):
    """Fill the bone map from the armature's bone names (Mixamo, Rigify, Unreal, Godot, CMU presets), hierarchy and rest pose"""

    bl_idname = "motion_vae.auto_map"
    bl_label = "Auto-match Bones"
    bl_options = {"REGISTER", "UNDO"}

    @reports_errors
    def execute(self, context):
        obj = _armature(context)
        model = models.load(context.scene.motion_vae.model_dir, context.scene.motion_vae.precision)
        found = auto_map(model.skeleton, read_rest(obj))
        _store_map(obj, found.bone_map)
        missing = found.unmatched_joints
        self.report({"WARNING"} if missing else {"INFO"},
                    f"Matched {len(found.bone_map) - len(missing)} of {len(found.bone_map)} joints ({found.preset} "
                    f"names)" + (f"; pick bones for: {', '.join(missing)}" if missing else "")
                    + (f"; bones left undriven: {', '.join(found.unmatched_bones)}." if found.unmatched_bones else "."))
        return {"FINISHED"}


class MOTION_VAE_OT_bake(bpy.types.Operator):
    """Bake the model's motion onto the armature as a new Action (the current one is kept)"""

    bl_idname = "motion_vae.bake"
    bl_label = "Bake"
    bl_options = {"REGISTER", "UNDO"}

    @reports_errors
    def execute(self, context):
        settings, scene = context.scene.motion_vae, context.scene
        target = _target(context)
        began = time.perf_counter()
        roots, rotations = run(target.model, settings.frames, target.seed, target.start, target.steering.script(),
                               target.foot_lock)
        rig_pose = pose(target.binding, roots, rotations)
        live.end()  # a live session would keep overwriting the pose the new Action sets
        target.commit()
        channels = [bone_channel(bone, "rotation_quaternion", rig_pose.quaternions[:, m])
                    for m, bone in enumerate(target.binding.bone_names)]
        channels.append(bone_channel(target.binding.root_bone, "location", rig_pose.root_location))
        frames = scene.frame_start + np.arange(settings.frames)
        action = write_action(target.obj, f"{target.model.name} seed {target.seed}", frames, channels)
        _set_scene_fps(scene, target.model.fps)
        scene.frame_end = int(frames[-1])
        scene.frame_set(scene.frame_current)
        self.report({"INFO"}, f"Baked {settings.frames} frames onto '{target.obj.name}' as Action '{action.name}' "
                              f"in {time.perf_counter() - began:.2f} s.")
        return {"FINISHED"}


class MOTION_VAE_OT_play(bpy.types.Operator):
    """Drive the armature live from the panel's model or a godot_bridge server (local play resumes after Stop)"""

    bl_idname = "motion_vae.play"
    bl_label = "Play"

    @reports_errors
    def execute(self, context):
        if context.scene.motion_vae.source == "SERVER":
            session, bound = _remote_session(context)
            _commit(*bound)
            live.begin(session)
            session.spawn()
        else:
            target = _target(context)
            current = live.session()
            if not isinstance(current, live.LiveSession) or current.key != target.key:
                target.commit()
                live.begin(target.session())
            elif current.steering.key != target.steering.key:
                current.steering = target.steering  # the same steering keeps its path progress
        live.play()
        return {"FINISHED"}


class MOTION_VAE_OT_stop(bpy.types.Operator):
    """Stop live play (the armature keeps its last pose; a server connection is closed)"""

    bl_idname = "motion_vae.stop"
    bl_label = "Stop"

    def execute(self, context):
        live.stop()
        return {"FINISHED"}


class MOTION_VAE_OT_reset(bpy.types.Operator):
    """Put the live character back on the start frame of the seed"""

    bl_idname = "motion_vae.reset"
    bl_label = "Reset"

    @reports_errors
    def execute(self, context):
        current = live.session()
        if isinstance(current, live.RemoteSession):
            current.reset()
            return {"FINISHED"}
        if context.scene.motion_vae.source == "SERVER":
            raise AddonError("Not connected to a server: press Play first.")
        target = _target(context)
        was_playing = live.playing()
        target.commit()
        live.begin(target.session())
        if was_playing:
            live.play()
        return {"FINISHED"}


class MOTION_VAE_OT_export_animation(bpy.types.Operator, ExportHelper):
    """Export the armature and its baked Action to .glb (Godot, engines) or .fbx"""

    bl_idname = "motion_vae.export_animation"
    bl_label = "Export Animation"
    filename_ext = ".glb"
    check_extension = None  # the suffix the user types (.glb or .fbx) picks the format
    filter_glob: StringProperty(default="*.glb;*.fbx", options={"HIDDEN"})

    @reports_errors
    def execute(self, context):
        obj = _armature(context)
        path = Path(bpy.path.abspath(self.filepath))
        export_animation(context, obj, path)
        self.report({"INFO"}, f"Exported '{obj.name}' to {path}.")
        return {"FINISHED"}


CLASSES = (MOTION_VAE_OT_create_armature, MOTION_VAE_OT_auto_map, MOTION_VAE_OT_bake, MOTION_VAE_OT_play,
           MOTION_VAE_OT_stop, MOTION_VAE_OT_reset, MOTION_VAE_OT_export_animation)
