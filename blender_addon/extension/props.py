"""Settings the panel edits, saved in the .blend: per scene, and a bone map per armature object."""
# No `from __future__ import annotations` here: Blender reads these annotations as property definitions.
import bpy
from bpy.props import CollectionProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

# Steering modes and the control policy (model.policies key) each needs; random walk needs none.
POLICY_OF_MODE = {"JOYSTICK": "joystick", "TARGET": "target", "CURVE": "curve"}
MODES = [
    ("RANDOM", "Random walk", "Latents drawn at random: the model wanders as its data did"),
    ("JOYSTICK", "Joystick", "Steer with keyboard or gamepad keys (needs a model with a 'joystick' policy)"),
    ("TARGET", "Walk to target", "Walk to a target object (needs a model with a 'target' policy)"),
    ("CURVE", "Follow curve", "Follow a curve object (needs a model with a 'curve' policy)"),
]


def _is_armature(_settings: bpy.types.PropertyGroup, obj: bpy.types.Object) -> bool:
    return obj.type == "ARMATURE"


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
    armature: PointerProperty(name="Armature", type=bpy.types.Object, poll=_is_armature,
                              description="Armature to drive (empty: the active object)")
    mode: EnumProperty(name="Mode", items=MODES, default="RANDOM")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed: the same seed gives the same motion")
    start: IntProperty(name="Start", default=-1, min=-1,
                       description="Start frame from the model's start frames (-1: picked by the seed)")
    frames: IntProperty(name="Frames", default=300, min=1, max=1_000_000, description="Frames to bake")


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
