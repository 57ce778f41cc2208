"""Live play: one armature posed at the model's fps, from a local controller or a godot_bridge server.

tick() is the whole per-frame body. bpy.app.timers calls it in the UI; timers never fire in background
mode, so tests call it directly. Sessions keep only names: an undo or a file load replaces every Blender
object, and a stale reference would crash where a name lookup just fails.
"""
from __future__ import annotations

import bpy
import numpy as np

from .bridge_client import BridgeLink
from .errors import AddonError
from .motion import start_controller
from .retarget import Binding, pose
from .rig import PoseWriter
from .runtime.model import MotionModel
from .steering import Steering


class Display:
    """An armature, found by name, shown model poses through a binding (one retarget path for every source)."""

    def __init__(self, binding: Binding, armature: bpy.types.Object) -> None:
        self.binding = binding
        self.armature = armature.name
        self.writer = PoseWriter(armature, binding)

    def show(self, root_position: np.ndarray, local_rotations: np.ndarray) -> bool:
        """Pose the armature (root positions (1, 3), local rotations (1, J, 4) x, y, z, w); False when it is gone."""
        obj = bpy.data.objects.get(self.armature)
        if obj is None or obj.type != "ARMATURE":
            return False
        # One pose at a time has no interpolation, so the quaternions' hemisphere does not matter here.
        self.writer.show(obj, pose(self.binding, root_position, local_rotations, continuous=False))
        return True


class LiveSession:
    """A local controller driving one armature, a frame per tick, steered as the panel's mode says."""

    resumable = True  # Stop keeps it: Play goes on from the same frame

    def __init__(self, model: MotionModel, display: Display, steering: Steering, seed: int, start: int | None,
                 key: tuple = (), foot_lock: bool = True) -> None:
        self.model, self.display, self.steering, self.seed, self.start = model, display, steering, seed, start
        self.foot_lock = foot_lock
        self.key = key  # what the session was made from: Play resumes it only while that is unchanged
        self.reset()

    @property
    def fps(self) -> float:
        """Frames per second the session plays at."""
        return self.model.fps

    def reset(self) -> None:
        """Back to the start frame of the seed, shown on the armature."""
        self.controller = start_controller(self.model, self.seed, self.start, self.foot_lock)
        poses = self.controller.poses()
        self.display.show(poses.root_position, poses.local_rotations)

    def step(self) -> bool:
        """Advance one frame and show it; False when the armature is gone, AddonError when steering cannot go on."""
        script = self.steering.script()
        ctrl = self.controller
        # The call runtime.bake makes every frame, so a bake of the same settings sends the same control.
        control = None if script is None else script.at(ctrl.frame / self.model.fps, ctrl.state.origin)
        poses = ctrl.step(control=control)
        return self.display.show(poses.root_position, poses.local_rotations)

    def status(self) -> tuple[str, str] | None:
        """A line for the panel, or None."""
        return None

    def close(self) -> None:
        """Nothing to release: the controller goes with the session."""


class RemoteSession:
    """One character streamed by a godot_bridge server, shown on an armature as frames arrive."""

    resumable = False  # Stop closes the connection, which frees the server's character

    def __init__(self, link: BridgeLink, display: Display, steering: Steering, seed: int, start: int | None,
                 foot_lock: bool = True) -> None:
        self.link, self.display, self.steering, self.seed, self.start = link, display, steering, seed, start
        self.foot_lock = foot_lock
        self.fps = float(link.hello["fps"])
        self.frame: int | None = None  # the server's number of the frame shown last

    def spawn(self) -> None:
        """Spawn the character on the server; frames follow."""
        self.link.spawn(self.seed, self.start, self.foot_lock)
        if self.link.lockstep:
            self.link.send("step")  # a lockstep server steps on request: one frame asked for at a time

    def reset(self) -> None:
        """Back to the start frame and the seed's random stream, as a new local session starts."""
        self.link.send("seed", seed=self.seed)
        self.link.send("reset", position=[0.0, 0.0], yaw=0.0, **({} if self.start is None else {"start": self.start}))

    def step(self) -> bool:
        """Show the newest frame, if one came, and send the control for it; AddonError when the connection ended."""
        frame = self.link.latest()
        if frame is None:
            if not self.link.alive:
                raise AddonError(self.link.error or f"The connection to {self.link.where} ended.")
            return bpy.data.objects.get(self.display.armature) is not None
        self.frame = frame.frame
        if len(frame.ids):  # the protocol allows frames without characters (lockstep): nothing to show
            if not self.display.show(frame.root_position[:1], frame.local_rotations[:1]):
                return False
            script = self.steering.script()
            self.link.steer(None if script is None else script.at(frame.frame / self.fps, frame.root_position[:1]))
        if self.link.lockstep:
            self.link.send("step")
        return True

    def status(self) -> tuple[str, str] | None:
        """The server and the frame shown, or the server's latest refusal."""
        if self.link.warning:
            return "ERROR", self.link.warning
        shown = "waiting for frames" if self.frame is None else f"frame {self.frame}"
        return "INFO", f"'{self.link.hello.get('model')}' from {self.link.where}: {shown}"

    def close(self) -> None:
        """End the network thread and the connection."""
        self.link.close()


Session = LiveSession | RemoteSession
_session: Session | None = None
_playing = False
_ended: str | None = None  # why play last stopped by itself (the panel's status line)


def session() -> Session | None:
    """The current live session, if any."""
    return _session


def playing() -> bool:
    """Whether the timer is stepping the session."""
    return _playing


def status() -> tuple[str, str] | None:
    """The panel's status line as (icon, text): why play stopped, or what the session is doing; None: nothing."""
    if _ended is not None:
        return "ERROR", _ended
    return None if _session is None else _session.status()


def begin(new: Session) -> None:
    """Make new the live session (not yet playing)."""
    global _session, _ended
    end()
    _session, _ended = new, None


def play() -> None:
    """Step the session on a timer at its fps."""
    global _playing, _ended
    if _session is not None and not _playing:
        _playing, _ended = True, None
        bpy.app.timers.register(tick, first_interval=0.0)


def _halt() -> None:
    """Stop stepping; a session that cannot resume is closed and forgotten."""
    global _playing, _session
    _playing = False
    if _session is not None and not _session.resumable:
        _session.close()
        _session = None


def stop() -> None:
    """Stop the timer; a local session stays, so play resumes where it stopped."""
    _halt()
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)


def end() -> None:
    """Stop and forget the session (closing a server connection)."""
    global _session
    stop()
    if _session is not None:
        _session.close()
    _session = None


def _redraw() -> None:
    """Ask every 3D view to redraw (a timer changing the pose does not by itself)."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def tick() -> float | None:
    """One live frame: step, pose the armature, redraw; the next interval for bpy.app.timers (None ends)."""
    global _ended
    if _session is None or not _playing:
        return None
    try:
        shown = _session.step()
    except AddonError as e:  # a timer has no operator to report through: the panel shows it instead
        _ended = str(e)
        shown = False
    if not shown:
        _halt()
        _redraw()
        return None
    _redraw()
    return 1.0 / _session.fps
