"""Writing keyframes fast: a new Action filled curve by curve with keyframe_points.foreach_set."""
from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np


@dataclass(frozen=True)
class Channel:
    """One animated property of a bone: values (T, k) become k F-curves (array indices 0..k-1) in the bone's group."""

    data_path: str
    group: str
    values: np.ndarray


def bone_channel(bone: str, prop: str, values: np.ndarray) -> Channel:
    """The channel of a pose-bone property (rotation_quaternion, location) for bone."""
    return Channel(f'pose.bones["{bpy.utils.escape_identifier(bone)}"].{prop}', bone, values)


def _curve_container(obj: bpy.types.Object, action: bpy.types.Action):
    """Where obj's F-curves live in action: the channelbag of a new slot (4.4+), or the Action itself (4.2, 4.3)."""
    if not hasattr(action, "slots"):
        return action
    from bpy_extras.anim_utils import action_ensure_channelbag_for_slot

    slot = action.slots.new(id_type="OBJECT", name=obj.name)
    obj.animation_data.action_slot = slot
    return action_ensure_channelbag_for_slot(action, slot)


def _new_curve(container, channel: Channel, index: int) -> bpy.types.FCurve:
    """An F-curve for one array index of a channel, in the bone's group."""
    if isinstance(container, bpy.types.Action):
        return container.fcurves.new(channel.data_path, index=index, action_group=channel.group)
    return container.fcurves.new(channel.data_path, index=index, group_name=channel.group)


def write_action(obj: bpy.types.Object, name: str, frames: np.ndarray, channels: list[Channel]) -> bpy.types.Action:
    """A new Action on obj keyed at frames (T,) with every channel; the Action it replaces is kept (fake user)."""
    action = bpy.data.actions.new(name)
    data = obj.animation_data or obj.animation_data_create()
    if data.action is not None:
        data.action.use_fake_user = True  # never lose the user's own animation when ours takes its place
    data.action = action
    container = _curve_container(obj, action)
    linear = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
    n = len(frames)
    co = np.empty(2 * n, np.float32)
    co[0::2] = frames
    interpolation = np.full(n, linear, np.int32)
    for channel in channels:
        for i in range(channel.values.shape[1]):
            curve = _new_curve(container, channel, i)
            curve.keyframe_points.add(n)
            co[1::2] = channel.values[:, i]
            curve.keyframe_points.foreach_set("co", co)
            curve.keyframe_points.foreach_set("interpolation", interpolation)
            curve.update()
    return action
