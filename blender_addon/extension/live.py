"""Live play: one armature stepped by a controller at the model's fps.

tick() is the whole per-frame body. bpy.app.timers calls it in the UI; timers never fire in background
mode, so tests call it directly. Only the armature's name is kept between ticks: an undo or a file load
replaces every Blender object, and a stale reference would crash where a name lookup just fails.
"""
from __future__ import annotations

import bpy

from .motion import start_controller
from .retarget import Binding, pose
from .rig import PoseWriter
from .runtime.controller import Poses
from .runtime.model import MotionModel


class LiveSession:
    """A controller driving one armature, a frame per tick."""

    def __init__(self, model: MotionModel, binding: Binding, armature: bpy.types.Object, seed: int,
                 start: int | None, key: tuple = ()) -> None:
        self.model, self.binding, self.seed, self.start = model, binding, seed, start
        self.key = key  # what the session was made from: Play resumes it only while that is unchanged
        self.armature = armature.name
        self.writer = PoseWriter(armature, binding)
        self.reset()

    def reset(self) -> None:
        """Back to the start frame of the seed, shown on the armature."""
        self.controller = start_controller(self.model, self.seed, self.start)
        self._show(self.controller.poses())

    def _show(self, poses: Poses) -> bool:
        """Pose the armature as poses says; False when the armature is gone."""
        obj = bpy.data.objects.get(self.armature)
        if obj is None or obj.type != "ARMATURE":
            return False
        # One pose at a time has no interpolation, so the quaternions' hemisphere does not matter here.
        self.writer.show(obj, pose(self.binding, poses.root_position, poses.local_rotations, continuous=False))
        return True

    def step(self) -> bool:
        """Advance one frame and show it; False when the armature is gone."""
        return self._show(self.controller.step())


_session: LiveSession | None = None
_playing = False


def session() -> LiveSession | None:
    """The current live session, if any."""
    return _session


def playing() -> bool:
    """Whether the timer is stepping the session."""
    return _playing


def begin(new: LiveSession) -> None:
    """Make new the live session (not yet playing)."""
    global _session
    stop()
    _session = new


def play() -> None:
    """Step the session on a timer at the model's fps."""
    global _playing
    if _session is not None and not _playing:
        _playing = True
        bpy.app.timers.register(tick, first_interval=0.0)


def stop() -> None:
    """Stop the timer; the session stays, so play resumes where it stopped."""
    global _playing
    _playing = False
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)


def end() -> None:
    """Stop and forget the session."""
    global _session
    stop()
    _session = None


def _redraw() -> None:
    """Ask every 3D view to redraw (a timer changing the pose does not by itself)."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def tick() -> float | None:
    """One live frame: step, pose the armature, redraw; the next interval for bpy.app.timers (None ends)."""
    global _playing
    if _session is None or not _playing:
        return None
    if not _session.step():
        _playing = False
        return None
    _redraw()
    return 1.0 / _session.model.fps
