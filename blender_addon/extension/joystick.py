"""Steer with keys: a modal operator that turns held W A S D / arrow keys into the scene's stick vector.

The stick is in Blender world X, Y and relative to the view when the keys are pressed, so W walks away from
the viewer whatever way the view looks. Live play reads the stick every frame (steering.py); headless
tests set it directly, since modal operators never run in background mode.
"""
# No `from __future__ import annotations` here: Blender reads operator annotations as property definitions.
from typing import Iterable

import bpy
import numpy as np
from mathutils import Vector

# Key -> (right, forward) in the view's ground frame.
KEYS = {
    "W": (0.0, 1.0), "UP_ARROW": (0.0, 1.0),
    "S": (0.0, -1.0), "DOWN_ARROW": (0.0, -1.0),
    "A": (-1.0, 0.0), "LEFT_ARROW": (-1.0, 0.0),
    "D": (1.0, 0.0), "RIGHT_ARROW": (1.0, 0.0),
}
HINT = "Steering: W A S D or arrow keys (relative to the view); Esc or right-click ends"


def stick_from_keys(held: Iterable[str], view_right: tuple[float, float]) -> tuple[float, float]:
    """The stick (world X, Y; length 0 or 1) for held keys, with view_right the view's right edge on the ground."""
    push = np.sum([KEYS[k] for k in held if k in KEYS] or [(0.0, 0.0)], axis=0)
    length = float(np.linalg.norm(push))
    if length < 1e-9:
        return 0.0, 0.0
    right = np.asarray(view_right, dtype=np.float64)
    right = right / np.linalg.norm(right) if np.linalg.norm(right) > 1e-9 else np.array([1.0, 0.0])
    forward = np.array([-right[1], right[0]])  # a quarter turn left of right about +Z: away from the viewer
    stick = (push[0] * right + push[1] * forward) / length
    return float(stick[0]), float(stick[1])


class MOTION_VAE_OT_steer(bpy.types.Operator):
    """Steer the Joystick mode with W A S D or the arrow keys in this 3D view (Esc or right-click ends)"""

    bl_idname = "motion_vae.steer"
    bl_label = "Steer with Keys"

    def invoke(self, context, event):
        if context.area is None or context.area.type != "VIEW_3D":
            self.report({"ERROR"}, "Steer with Keys works in a 3D view: use the button in its sidebar.")
            return {"CANCELLED"}
        self.held: set[str] = set()
        context.area.header_text_set(HINT)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        settings = context.scene.motion_vae
        if event.type in {"ESC", "RIGHTMOUSE"} and event.value == "PRESS":
            settings.stick = (0.0, 0.0)
            if context.area is not None:
                context.area.header_text_set(None)
            return {"FINISHED"}
        if event.type not in KEYS:
            return {"PASS_THROUGH"}  # the view still orbits, zooms and selects
        if event.value == "PRESS":
            self.held.add(event.type)
        elif event.value == "RELEASE":
            self.held.discard(event.type)
        # The view's own region (space_data.region_3d), also when the button sits in the sidebar.
        view = getattr(context.space_data, "region_3d", None)
        right = view.view_rotation @ Vector((1.0, 0.0, 0.0)) if view is not None else Vector((1.0, 0.0, 0.0))
        settings.stick = stick_from_keys(self.held, (right.x, right.y))
        return {"RUNNING_MODAL"}


CLASSES = (MOTION_VAE_OT_steer,)
