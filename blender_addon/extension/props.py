"""Settings the panel edits, saved in the .blend: per scene, and a bone map per armature object."""
# No `from __future__ import annotations` here: Blender reads these annotations as property definitions.
import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, FloatVectorProperty,
                       IntProperty, PointerProperty, StringProperty)

# Steering modes and the runtime control task (model.policies key) each needs; random walk needs none.
POLICY_OF_MODE = {"JOYSTICK": "joystick", "TARGET": "target", "CURVE": "path"}
MODES = [
    ("RANDOM", "Random walk", "Latents drawn at random: the model wanders as its data did"),
    ("JOYSTICK", "Joystick", "Steer with the Stick, or with W A S D / arrow keys in the 3D view "
                             "(needs a model with a 'joystick' policy)"),
    ("TARGET", "Walk to target", "Walk to a target object, following it when it moves "
                                 "(needs a model with a 'target' policy)"),
    ("CURVE", "Follow curve", "Follow the first spline of a curve object, read when play starts "
                              "(needs a model with a 'path' policy)"),
]
PRECISIONS = [
    ("float32", "float32", "The model's float32 step graph (decoder.onnx)"),
    ("int8", "int8", "The int8 step graph (decoder-int8.onnx): faster, made by "
                     "`python -m trainer.export --precision int8 MODEL_DIR`"),
]
SOURCES = [
    ("LOCAL", "Local", "Step the panel's model inside Blender"),
    ("SERVER", "godot_bridge server", "Show the frames a running `python -m godot_bridge.serve` streams"),
]


def _is_armature(_settings: bpy.types.PropertyGroup, obj: bpy.types.Object) -> bool:
    return obj.type == "ARMATURE"


def _is_curve(_settings: bpy.types.PropertyGroup, obj: bpy.types.Object) -> bool:
    return obj.type == "CURVE"


class MotionVAEBoneMapItem(bpy.types.PropertyGroup):
    """One row of a bone map: the rig bone a model joint drives ("" for none)."""

    joint: StringProperty(name="Joint", description="Joint of the model's skeleton")
    bone: StringProperty(name="Bone", description="Bone of this armature the joint drives (empty: none)")


class MotionVAERigSettings(bpy.types.PropertyGroup):
    """An armature's bone map, kept on the object so it travels with the rig."""

    bone_map: CollectionProperty(type=MotionVAEBoneMapItem)
    active_row: IntProperty()


class MotionVAESceneSettings(bpy.types.PropertyGroup):
    """The panel's settings for a scene."""

    model_dir: StringProperty(name="Model", subtype="DIR_PATH",
                              description="Model directory (model.json + decoder.onnx); empty: the shipped model")
    precision: EnumProperty(name="Precision", items=PRECISIONS, default="float32",
                            description="Which of the model's step graphs runs (Local play and Bake)")
    armature: PointerProperty(name="Armature", type=bpy.types.Object, poll=_is_armature,
                              description="Armature to drive (empty: the active object)")
    mode: EnumProperty(name="Mode", items=MODES, default="RANDOM")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed: the same seed gives the same motion")
    start: IntProperty(name="Start", default=-1, min=-1,
                       description="Start frame from the model's start frames (-1: picked by the seed)")
    frames: IntProperty(name="Frames", default=300, min=1, max=1_000_000, description="Frames to bake")
    foot_lock: BoolProperty(name="Foot Lock", default=True,
                            description="Pin planted feet to the ground (two-bone leg IK) in live play and bakes; "
                                        "off shows the model's raw poses")
    target_object: PointerProperty(name="Target", type=bpy.types.Object,
                                   description="Object to walk to (its origin, read every frame)")
    curve_object: PointerProperty(name="Curve", type=bpy.types.Object, poll=_is_curve,
                                  description="Curve to follow (its first spline; cyclic splines loop)")
    joystick_speed: FloatProperty(name="Speed", default=1.5, min=0.0, max=20.0, soft_max=3.0, unit="VELOCITY",
                                  description="Walking speed with the stick pushed all the way (m/s)")
    # Blender world X, Y: Steer with Keys writes it relative to the view; its length (up to 1) scales the speed.
    stick: FloatVectorProperty(name="Stick", size=2, default=(0.0, 0.0), min=-1.0, max=1.0, subtype="XYZ",
                               description="Joystick: direction on the ground (world X, Y); length 0 stands still, "
                                           "1 walks at full speed")
    source: EnumProperty(name="Source", items=SOURCES, default="LOCAL",
                         description="Where live frames come from (Bake always steps the panel's model)")
    server_host: StringProperty(name="Host", default="127.0.0.1", description="Address of the godot_bridge server")
    server_port: IntProperty(name="Port", default=8765, min=1, max=65535, description="Port of the server")
    server_token: StringProperty(name="Token", subtype="PASSWORD",
                                 description="The server's --token (empty when it has none); saved in the .blend")


CLASSES = (MotionVAEBoneMapItem, MotionVAERigSettings, MotionVAESceneSettings)


def register() -> None:
    """Register the property groups and attach them to scenes and objects."""
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.motion_vae = PointerProperty(type=MotionVAESceneSettings)
    bpy.types.Object.motion_vae = PointerProperty(type=MotionVAERigSettings)


def unregister() -> None:
    """Detach and unregister the property groups."""
    del bpy.types.Object.motion_vae
    del bpy.types.Scene.motion_vae
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
