"""Steering modes: the panel's stick, target object or curve as runtime control scripts, in model space.

Live play and bake both step with `ControlScript.at(seconds, origin)`, the call runtime.bake makes, so a live
session and a bake of the same settings send the controller the same control. Only object names are kept, as
in live.py: the scene is read again each time a script is asked for.
"""
from __future__ import annotations

from typing import Iterable

import bpy
import numpy as np
from mathutils import geometry

from .convert import ground_to_model
from .errors import AddonError
from .props import MODES, POLICY_OF_MODE
from .runtime.control import ControlScript, resample_path

REST_FACING = np.array([0.0, 1.0])  # model x, z: where a character faces on a start frame (yaw 0)
MIN_PUSH = 1e-3  # a stick pushed less than this is centred: stand still, facing the last direction


def mode_label(mode: str) -> str:
    """The panel's name of a mode."""
    return next(label for key, label, _ in MODES if key == mode)


def check_policy(mode: str, tasks: Iterable[str], owner: str) -> None:
    """AddonError unless tasks (the policies of owner, a model or server) include the task the mode needs."""
    task = POLICY_OF_MODE.get(mode)
    if task is not None and task not in set(tasks):
        raise AddonError(f"Mode '{mode_label(mode)}' needs a '{task}' control policy, which {owner} does not have; "
                         "use Random walk.")


def _to_armature(armature: bpy.types.Object) -> np.ndarray:
    """World -> the armature object's space (the model's world, Z up) as a 4x4 matrix."""
    return np.linalg.inv(np.array(armature.matrix_world, dtype=np.float64))


def _spline_points(spline: bpy.types.Spline) -> np.ndarray:
    """A spline's evaluated points (P, 3) in its object's space; NURBS give their control points."""
    if spline.type != "BEZIER":
        return np.array([p.co[:3] for p in spline.points], dtype=np.float64)
    knots = list(spline.bezier_points)
    pairs = list(zip(knots, knots[1:])) + ([(knots[-1], knots[0])] if spline.use_cyclic_u else [])
    points = []
    for a, b in pairs:
        # Each segment without its end point: the next segment starts there.
        points += geometry.interpolate_bezier(a.co, a.handle_right, b.handle_left, b.co, spline.resolution_u + 1)[:-1]
    if not spline.use_cyclic_u:
        points.append(knots[-1].co)
    return np.array([p[:] for p in points], dtype=np.float64)


def curve_path(curve: bpy.types.Object, armature: bpy.types.Object) -> tuple[np.ndarray, bool]:
    """The first spline of a curve object as model ground points (P, 2) in armature space, and whether it loops."""
    if curve.type != "CURVE" or not curve.data.splines:
        raise AddonError(f"'{curve.name}' is not a curve with a spline: pick a curve object to follow.")
    spline = curve.data.splines[0]
    local = _spline_points(spline)
    world = local @ np.array(curve.matrix_world)[:3, :3].T + np.array(curve.matrix_world)[:3, 3]
    m = _to_armature(armature)
    points = ground_to_model(world @ m[:3, :3].T + m[:3, 3])
    try:
        resample_path(points, spline.use_cyclic_u)  # raises if the controller could not use it
    except ValueError as e:
        raise AddonError(f"Curve '{curve.name}': {e}.") from None
    return points, bool(spline.use_cyclic_u)


class Steering:
    """A steering mode for one armature in one scene; checked when made, read from the scene per script."""

    def __init__(self, scene: bpy.types.Scene, armature: bpy.types.Object, mode: str) -> None:
        settings = scene.motion_vae
        self.mode, self.task = mode, POLICY_OF_MODE.get(mode)
        self.scene, self.armature = scene.name, armature.name
        self.target = ""
        self.path: ControlScript | None = None
        self.facing = REST_FACING  # the last direction the stick pointed (model x, z)
        if self.task == "target":
            if settings.target_object is None:
                raise AddonError("Walk to target needs a target object: pick one in the Motion VAE panel.")
            if settings.target_object == armature:
                raise AddonError("The target object must not be the armature it steers.")
            self.target = settings.target_object.name
        elif self.task == "path":
            if settings.curve_object is None:
                raise AddonError("Follow curve needs a curve object: pick one in the Motion VAE panel.")
            points, closed = curve_path(settings.curve_object, armature)
            self.path = ControlScript("path", points, closed)

    @property
    def key(self) -> tuple:
        """What the steering was made from: a live session keeps its steering (and path progress) while it holds."""
        path = () if self.path is None else (self.path.rows.tobytes(), self.path.closed)
        return self.mode, self.scene, self.armature, self.target, path

    def _objects(self) -> tuple[bpy.types.Scene, bpy.types.Object]:
        scene, armature = bpy.data.scenes.get(self.scene), bpy.data.objects.get(self.armature)
        if scene is None or armature is None:
            raise AddonError(f"Scene '{self.scene}' or armature '{self.armature}' is gone: steering stopped.")
        return scene, armature

    def _joystick(self) -> ControlScript:
        scene, armature = self._objects()
        settings = scene.motion_vae
        stick = np.array([settings.stick[0], settings.stick[1], 0.0])
        push = min(float(np.linalg.norm(stick)), 1.0)
        if push > MIN_PUSH:
            # A direction: only the rotation of the armature's inverse world matrix applies.
            direction = ground_to_model(_to_armature(armature)[:3, :3] @ stick)
            if np.linalg.norm(direction) > 1e-9:
                self.facing = direction / np.linalg.norm(direction)
        speed = settings.joystick_speed * push if push > MIN_PUSH else 0.0
        return ControlScript("joystick", np.array([[0.0, self.facing[0], self.facing[1], speed]]))

    def _target(self) -> ControlScript:
        _, armature = self._objects()
        target = bpy.data.objects.get(self.target)
        if target is None:
            raise AddonError(f"The target object '{self.target}' is gone: steering stopped.")
        m = _to_armature(armature)
        where = m[:3, :3] @ np.array(target.matrix_world.translation) + m[:3, 3]
        return ControlScript("target", ground_to_model(where)[None])

    def script(self) -> ControlScript | None:
        """The control for the scene as it is now (None: random walk); AddonError when what it follows is gone."""
        if self.task == "joystick":
            return self._joystick()
        if self.task == "target":
            return self._target()
        return self.path
