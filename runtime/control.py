"""Steering characters with control policies: commands, task observations and policy latents.

`Controller.step(control=...)` takes a dict (the format godot_bridge/bridge.py sends). Each value is either
one entry per character (leading axis N) or a single value that applies to every character:

    task       str per character: "joystick", "target", "path", or "" / "none" to walk freely
    direction  (N, 2) world x, z of the desired heading (any non-zero length), for joystick characters
    speed      (N,) desired speed in m/s, for joystick characters
    target     (N, 2) world x, z of the point to walk to, for target characters
    path       one (P, 2) array of world x, z points shared by every path character, or a list of N
               entries, each a (P, 2) array or None
    closed     bool or (N,) bools: whether a path loops back to its first point (default True)

Fields a character's task does not use are ignored. Characters with no task get the latents given to
step (random ones when none are). Units are metres, Y up, and the character frame faces +Z at yaw 0.

The observation layout of every policy is data (model.json "policies" -> task -> "observation"): the
current normalised frame, then task features in the character frame, built here by name so that the
trainer (trainer/policy) and the runtime share one implementation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .model import MotionModel
from .protocol import MAX_COORDINATE_M, MAX_SPEED_M_S

TASKS = ("joystick", "target", "path")
FREE = ("", "none")
PATH_SPACING_M = 0.05  # paths are resampled this densely, so a point at arc length s is one lookup
PATH_WINDOW_M = (-0.5, 1.5)  # where the next nearest path point is searched, around the last one
TELEPORT_M = 1.0  # a character that moved further in one frame was reset: find its path point anew
LOOKAHEAD_POINTS = 4
MAX_PATH_M = 1.0e4  # a path's length; it is stored resampled every PATH_SPACING_M for each character on it
MAX_TARGET_RADIUS_M = 100.0


def to_character(vectors: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """World (x, z) vectors (N, ..., 2) seen from character frames with heading yaw (N,)."""
    c = np.cos(yaw).reshape(yaw.shape + (1,) * (vectors.ndim - 2))
    s = np.sin(yaw).reshape(c.shape)
    x, z = vectors[..., 0], vectors[..., 1]
    # Inverse of runtime.features.advance_root's turn: world = (c x + s z, -s x + c z).
    return np.stack([c * x - s * z, s * x + c * z], axis=-1)


def joystick_features(direction: np.ndarray, speed: np.ndarray, yaw: np.ndarray) -> dict[str, np.ndarray]:
    """The joystick's desired heading as a unit vector in the character frame, and its speed."""
    unit = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    return {"direction": to_character(unit, yaw), "speed": speed.reshape(-1, 1)}


def target_features(target: np.ndarray, origin: np.ndarray, yaw: np.ndarray) -> dict[str, np.ndarray]:
    """The target's offset from the character in its own frame (metres)."""
    return {"target": to_character(target - origin[:, [0, 2]], yaw)}


def resample_path(points: np.ndarray, closed: bool, spacing: float = PATH_SPACING_M) -> np.ndarray:
    """A polyline (P, 2) resampled at equal arc lengths about spacing apart; raises ValueError if unusable."""
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise ValueError(f"a path must be at least 2 points of (x, z), got an array of shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("a path has non-finite coordinates")
    if closed:
        pts = np.concatenate([pts, pts[:1]])
    if np.abs(pts).max() > MAX_COORDINATE_M:
        raise ValueError(f"a path's coordinates must be within +-{MAX_COORDINATE_M:g} m, got {np.abs(pts).max():g}")
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    if arc[-1] < 4 * spacing:
        raise ValueError(f"a path must be at least {4 * spacing:g} m long, got {arc[-1]:.3f} m")
    if arc[-1] > MAX_PATH_M:
        raise ValueError(f"a path must be at most {MAX_PATH_M:g} m long, got {arc[-1]:.6g} m")
    count = int(round(arc[-1] / spacing))
    s = np.arange(count) * (arc[-1] / count) if closed else np.linspace(0.0, arc[-1], count + 1)
    return np.stack([np.interp(s, arc, pts[:, 0]), np.interp(s, arc, pts[:, 1])], axis=-1)


class Paths:
    """Per-character resampled paths and how far along each character is (arc length), vectorised."""

    def __init__(self, n: int) -> None:
        self.points = np.zeros((n, 2, 2))  # padded to the longest path
        self.count = np.zeros(n, np.int64)  # resampled points per path (0: none)
        self.step = np.ones(n)  # arc length between resampled points
        self.closed = np.ones(n, bool)
        self.s = np.zeros(n)  # arc length of each character's nearest path point

    def set(self, idx: np.ndarray, paths: list[np.ndarray], closed: np.ndarray, xz: np.ndarray) -> np.ndarray:
        """Give characters idx new paths (already resampled); returns how far from them they stand (see locate)."""
        longest = max(len(p) for p in paths)
        if longest > self.points.shape[1]:
            grown = np.zeros((len(self.points), longest, 2))
            grown[:, :self.points.shape[1]] = self.points
            self.points = grown
        for i, pts, c in zip(idx, paths, closed):  # once per new path, not per frame
            self.points[i, :len(pts)] = pts
            self.count[i] = len(pts)
            self.closed[i] = c
            length = np.linalg.norm(np.diff(pts, axis=0), axis=1).sum()
            self.step[i] = (length + np.linalg.norm(pts[-1] - pts[0])) / len(pts) if c else length / (len(pts) - 1)
        return self.locate(idx, xz)

    def length(self, idx: np.ndarray) -> np.ndarray:
        """Arc length of each path (a closed one including its closing segment)."""
        return self.step[idx] * np.where(self.closed[idx], self.count[idx], self.count[idx] - 1)

    def at(self, idx: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Points (len(idx), ..., 2) at arc lengths s (len(idx), ...) along each character's path."""
        shape = (-1,) + (1,) * (s.ndim - 1)
        n, step, closed = self.count[idx].reshape(shape), self.step[idx].reshape(shape), self.closed[idx].reshape(shape)
        u = s / step
        u = np.where(closed, np.mod(u, n), np.clip(u, 0, n - 1))
        i0 = np.floor(u).astype(np.int64)
        i1 = np.where(closed, (i0 + 1) % n, np.minimum(i0 + 1, n - 1))
        frac = (u - i0)[..., None]
        rows = np.asarray(idx).reshape(shape)
        return self.points[rows, np.minimum(i0, n - 1)] * (1 - frac) + self.points[rows, i1] * frac

    def locate(self, idx: np.ndarray, xz: np.ndarray) -> np.ndarray:
        """Set the progress of characters idx to the nearest point of their whole path; returns its distance."""
        dist = np.zeros(len(idx))
        for k, (i, p) in enumerate(zip(idx, xz)):  # only when a path is given or a character was reset
            d = np.linalg.norm(self.points[i, :self.count[i]] - p, axis=1)
            self.s[i] = np.argmin(d) * self.step[i]
            dist[k] = d.min()
        return dist

    def track(self, idx: np.ndarray, xz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move progress to the nearest path point near the last one; returns (arc advanced, distance)."""
        offsets = np.arange(PATH_WINDOW_M[0], PATH_WINDOW_M[1] + 1e-9, PATH_SPACING_M)
        s = self.s[idx, None] + offsets
        d = np.linalg.norm(self.at(idx, s) - xz[:, None], axis=-1)
        pick = np.argmin(d, axis=1)
        rows = np.arange(len(idx))
        new = s[rows, pick]
        length = self.length(idx)
        new = np.where(self.closed[idx], np.mod(new, length), np.clip(new, 0, length))
        advanced = new - self.s[idx]
        # Crossing the start of a closed path is a small step forward, not a lap backwards.
        advanced = np.where(self.closed[idx], (advanced + length / 2) % length - length / 2, advanced)
        self.s[idx] = new
        return advanced, d[rows, pick]

    def features(self, idx: np.ndarray, yaw: np.ndarray, xz: np.ndarray, spacing: float) -> dict[str, np.ndarray]:
        """LOOKAHEAD_POINTS points ahead on the path, spacing apart, in the character frame (flattened)."""
        ahead = self.s[idx, None] + spacing * np.arange(1, LOOKAHEAD_POINTS + 1)
        offsets = to_character(self.at(idx, ahead) - xz[:, None], yaw)
        return {"lookahead": offsets.reshape(len(idx), -1)}


def assemble(blocks: list[list], features: dict[str, np.ndarray], frame: np.ndarray) -> np.ndarray:
    """An observation (N, size) from a policy's block table [[name, start, stop], ...]."""
    columns = []
    for name, start, stop in blocks:
        value = frame if name == "frame" else features.get(name)
        if value is None:
            raise ValueError(f"unknown observation block {name!r} in the policy's layout")
        if value.shape[1] != stop - start:
            raise ValueError(f"observation block {name!r} has {value.shape[1]} columns, the policy expects "
                             f"{stop - start}")
        columns.append(value)
    return np.concatenate(columns, axis=1).astype(np.float32)


@dataclass
class Command:
    """Validated per-character control: tasks and their parameters (rows of unused fields are zero)."""

    task: np.ndarray  # (N,) str, "" for free characters
    direction: np.ndarray  # (N, 2)
    speed: np.ndarray  # (N,)
    target: np.ndarray  # (N, 2)
    paths: list[np.ndarray | None]  # resampled, per character
    closed: np.ndarray  # (N,) bool


def _per_character(value: Any, n: int, name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"control {name!r} must be numbers of shape {shape} or ({n}, {', '.join(map(str, shape))})"
                         if shape else f"control {name!r} must be a number or {n} numbers") from None
    if arr.shape == shape:
        arr = np.broadcast_to(arr, (n,) + shape)
    if arr.shape != (n,) + shape:
        raise ValueError(f"control {name!r} must have shape {shape or '()'} or {(n,) + shape}, got {arr.shape}")
    return arr


def _resampled_paths(value: Any, rows: np.ndarray, n: int, closed: np.ndarray) -> list[np.ndarray | None]:
    shared = _shared(value)
    if not shared and len(value) != n:
        raise ValueError(f"control 'path' must be one (P, 2) array or a list of {n} entries, got {len(value)}")
    out: list[np.ndarray | None] = [None] * n
    cache: dict[bool, np.ndarray] = {}
    for i in rows:  # once per changed path (see ControlState), not per frame
        try:
            if shared:
                if bool(closed[i]) not in cache:
                    cache[bool(closed[i])] = resample_path(value, bool(closed[i]))
                out[i] = cache[bool(closed[i])]
            elif value[i] is None:
                raise ValueError("no path given")
            else:
                out[i] = resample_path(value[i], bool(closed[i]))
        except ValueError as e:
            raise ValueError(f"control 'path' of character {i}: {e}") from None
    return out


def parse_control(control: Any, n: int, policies: dict | None = None, path_rows: np.ndarray | None = None) -> Command:
    """Validate a control dict for n characters; raises ValueError naming the field and what is wrong.

    Paths are resampled for the characters path_rows only (default: every path character).
    """
    if not isinstance(control, dict):
        raise ValueError(f"control must be a dict of per-character fields, got {type(control).__name__}")
    unknown = set(control) - {"task", "direction", "speed", "target", "path", "closed"}
    if unknown:
        raise ValueError(f"unknown control field(s) {', '.join(sorted(unknown))} (expected task, direction, speed, "
                         "target, path, closed)")
    if "task" not in control:
        raise ValueError("control needs a 'task' (joystick, target, path or none) per character")
    task = control["task"]
    task = np.full(n, task, dtype=object) if isinstance(task, str) else np.array(list(task), dtype=object)
    if task.shape != (n,):
        raise ValueError(f"control 'task' must be one task or {n} of them, got {task.shape[0]}")
    try:
        kinds = set(task.tolist())  # a handful of distinct values, whatever n is
    except TypeError:
        raise ValueError("control 'task' must be task names (joystick, target, path or none)") from None
    bad = sorted(str(t) for t in kinds if t not in FREE and t not in TASKS)
    if bad:
        raise ValueError(f"unknown control task {bad[0]!r} (expected {', '.join(TASKS)} or none)")
    if "none" in kinds:
        task[task == "none"] = ""
    if policies is not None:
        missing = sorted(t for t in kinds if t in TASKS and t not in policies)
        if missing:
            have = ", ".join(sorted(policies)) or "none"
            raise ValueError(f"the model has no {missing[0]} policy (it has: {have}); train one with "
                             f"`python -m trainer.policy {missing[0]}`")
    zeros2 = np.zeros((n, 2))
    direction, speed, target = zeros2, np.zeros(n), zeros2
    joy, tgt, pth = (np.flatnonzero(task == t) for t in TASKS)
    if joy.size:
        for key in ("direction", "speed"):
            if key not in control:
                raise ValueError(f"control has joystick characters but no {key!r}")
        direction = _per_character(control["direction"], n, "direction", (2,))
        speed = _per_character(control["speed"], n, "speed", ())
        if not np.isfinite(direction[joy]).all() or np.any(np.linalg.norm(direction[joy], axis=1) < 1e-6):
            raise ValueError("control 'direction' must be finite and non-zero for joystick characters "
                             "(send speed 0 to stand still)")
        if not np.isfinite(speed[joy]).all() or np.any(speed[joy] < 0):
            raise ValueError("control 'speed' must be finite and at least 0 m/s")
    if tgt.size:
        if "target" not in control:
            raise ValueError("control has target characters but no 'target'")
        target = _per_character(control["target"], n, "target", (2,))
        if not np.isfinite(target[tgt]).all():
            raise ValueError("control 'target' must be finite")
    closed = _per_character(control.get("closed", True), n, "closed", (), dtype=bool)
    if pth.size and control.get("path") is None:
        raise ValueError("control has path characters but no 'path'")
    rows = pth if path_rows is None else np.intersect1d(pth, path_rows)
    paths = _resampled_paths(control.get("path"), rows, n, closed) if rows.size else [None] * n
    return Command(task, direction, speed, target, paths, np.array(closed))


class ControlState:
    """What a Controller remembers between steps for its controlled characters: paths and progress."""

    def __init__(self, n: int) -> None:
        self.paths = Paths(n)
        self._given: list[tuple[np.ndarray, bool] | None] = [None] * n  # (points, closed) last given
        self._last_xz = np.zeros((n, 2))

    def _changed_paths(self, value: Any, cmd: Command) -> np.ndarray:
        """Path characters whose path or closedness differs from what they last had."""
        rows = np.flatnonzero(cmd.task == "path")
        if not _shared(value) and len(value) != len(cmd.task):
            raise ValueError(f"control 'path' must be one (P, 2) array or a list of {len(cmd.task)} entries, "
                             f"got {len(value)}")
        return np.asarray([i for i in rows if not _same(self._given[i], value if _shared(value) else value[i],
                                                        bool(cmd.closed[i]))], np.int64)

    def latents(self, model: MotionModel, state: Any, control: Any, latents: np.ndarray) -> np.ndarray:
        """Fill latents (N, latent) in place for controlled characters from their task's policy.

        state is the Controller's latest state (condition, origin, yaw).
        """
        n = len(latents)
        cmd = parse_control(control, n, model.policies, path_rows=np.zeros(0, np.int64))
        changed = np.zeros(0, np.int64)
        if np.any(cmd.task == "path"):
            changed = self._changed_paths(control["path"], cmd)
            cmd.paths = _resampled_paths(control["path"], changed, n, cmd.closed)
        origin = state.origin.astype(np.float64)
        yaw = state.yaw[:, 0].astype(np.float64)
        xz = origin[:, [0, 2]]
        frame = state.condition[:, -model.frame_size:]
        for task in TASKS:
            idx = np.flatnonzero(cmd.task == task)
            if idx.size == 0:
                continue
            spec = model.policies[task].spec
            if task == "joystick":
                feats = joystick_features(cmd.direction[idx], cmd.speed[idx], yaw[idx])
            elif task == "target":
                feats = target_features(cmd.target[idx], origin[idx], yaw[idx])
            else:
                feats = self._path_features(control, cmd, changed, idx, xz, yaw, spec)
            obs = assemble(spec["observation"]["blocks"], feats, frame[idx])
            latents[idx] = model.policies[task].session.run(None, {"observation": obs})[0]
        self._last_xz = xz.copy()
        return latents

    def _path_features(self, control: dict, cmd: Command, new: np.ndarray, idx: np.ndarray, xz: np.ndarray,
                       yaw: np.ndarray, spec: dict) -> dict[str, np.ndarray]:
        if new.size:
            self.paths.set(new, [cmd.paths[i] for i in new], cmd.closed[new], xz[new])
            value = control["path"]
            for i in new:
                self._given[i] = (np.array(value if _shared(value) else value[i], np.float64), bool(cmd.closed[i]))
        jumped = idx[np.linalg.norm(xz[idx] - self._last_xz[idx], axis=1) > TELEPORT_M]
        self.paths.locate(jumped, xz[jumped])
        self.paths.track(idx, xz[idx])
        return self.paths.features(idx, yaw[idx], xz[idx], float(spec["task"]["lookahead_m"]))


def _shared(value: Any) -> bool:
    """Whether a control 'path' is one path for every character rather than a per-character list."""
    return not isinstance(value, (list, tuple)) or (len(value) > 0 and np.ndim(value[0]) == 1)


def _same(given: tuple[np.ndarray, bool] | None, path: Any, closed: bool) -> bool:
    """Whether a stored path equals a newly given one (an array comparison: paths are small)."""
    if given is None or path is None:
        return False
    try:
        b = np.asarray(path, np.float64)
    except (TypeError, ValueError):
        return False  # parse_control reports it
    return given[1] == closed and given[0].shape == b.shape and bool(np.array_equal(given[0], b))


SCRIPT_ROWS = {"joystick": ("script", 4), "path": ("points", 2), "target": ("targets", 2)}  # task -> rows, width
MAX_SCRIPT_ROWS = 100_000


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(
        type(value), "a number")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _rows(value: Any, where: str, width: int) -> np.ndarray:
    """value checked to be 1 to MAX_SCRIPT_ROWS rows of width JSON numbers; (rows, width) float64."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SCRIPT_ROWS:
        raise ValueError(f"{where} must be a list of 1 to {MAX_SCRIPT_ROWS} rows of {width} numbers, got "
                         f"{_json_type(value) if not isinstance(value, list) else f'{len(value)} rows'}")
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != width or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
            raise ValueError(f"{where} row {i} must be {width} numbers, got {_shown(row)}")
    rows = np.array(value, np.float64)
    if not np.isfinite(rows).all():
        raise ValueError(f"{where} row {int(np.argwhere(~np.isfinite(rows))[0, 0])} holds a non-finite number")
    return rows


def _within(values: np.ndarray, low: float, high: float, where: str, what: str) -> None:
    bad = (values < low) | (values > high)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        span = f"from {low:g} to {high:g}" if np.isfinite(high) else f"at least {low:g}"
        raise ValueError(f"{where} row {row}: {what} must be {span}, got {values[tuple(np.argwhere(bad)[0])]:g}")


class ControlScript:
    """A control file for `python -m runtime.bake --control`: the same command for every character over time.

    JSON, one of:
      [[t, dir_x, dir_z, speed], ...]                 joystick: each row applies from t seconds on
      [[x, z], ...]                                   an open path to follow
      {"task": "joystick", "script": [[t, dir_x, dir_z, speed], ...]}
      {"task": "path", "points": [[x, z], ...], "closed": false}
      {"task": "target", "targets": [[x, z], ...]}    visited in turn (next one once within radius_m)

    Rows are plain JSON numbers (1 to MAX_SCRIPT_ROWS of them): coordinates within +-1e4 m, times from 0 s
    and never decreasing, speeds 0-20 m/s, a path 0.2 m to 10 km long, radius_m in (0, 100], closed true or
    false; other keys are refused (a misspelt key would otherwise be ignored).
    """

    def __init__(self, task: str, rows: np.ndarray, closed: bool = False, radius_m: float = 0.5) -> None:
        self.task, self.rows, self.closed, self.radius = task, rows, closed, radius_m
        self._next_target: np.ndarray | None = None

    @classmethod
    def from_json(cls, data: Any, where: str = "control") -> "ControlScript":
        """Parse the JSON content of a control file; ValueError naming where, the field and what is wrong."""
        if isinstance(data, list):
            width = {len(r) if isinstance(r, list) else -1 for r in data}
            if width == {4}:
                data = {"task": "joystick", "script": data}
            elif width == {2}:
                data = {"task": "path", "points": data, "closed": False}
            else:
                raise ValueError(f"{where}: a list must hold rows of [t, dir_x, dir_z, speed] or of [x, z]")
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON list of rows or an object with 'task', got "
                             f"{_json_type(data)}")
        if data.get("task") not in TASKS:
            raise ValueError(f"{where}: field 'task' must be one of {', '.join(TASKS)}, got {_shown(data.get('task'))}")
        task = data["task"]
        key, width = SCRIPT_ROWS[task]
        allowed = {"task", key} | {"path": {"closed"}, "target": {"radius_m"}}.get(task, set())
        unknown = sorted(map(str, set(data) - allowed))
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r} for a {task} control (expected "
                             f"{', '.join(sorted(allowed))})")
        if key not in data:
            raise ValueError(f"{where}: a {task} control needs {key!r}")
        rows = _rows(data[key], f"{where}: {key!r}", width)
        closed, radius = False, 0.5
        if task == "joystick":
            t, direction, speed = rows[:, 0], rows[:, 1:3], rows[:, 3]
            _within(t, 0.0, np.inf, f"{where}: {key!r}", "times t (seconds)")
            if np.any(np.diff(t) < 0):
                raise ValueError(f"{where}: {key!r} row {int(np.argmax(np.diff(t) < 0)) + 1}: times must not decrease")
            _within(speed, 0.0, MAX_SPEED_M_S, f"{where}: {key!r}", "speeds (m/s)")
            _within(direction, -MAX_COORDINATE_M, MAX_COORDINATE_M, f"{where}: {key!r}", "directions")
            if np.any(np.hypot(direction[:, 0], direction[:, 1]) < 1e-6):
                raise ValueError(f"{where}: a joystick direction must not be [0, 0]")
        else:
            _within(rows, -MAX_COORDINATE_M, MAX_COORDINATE_M, f"{where}: {key!r}", "coordinates (m)")
        if task == "path":
            closed = data.get("closed", False)
            if not isinstance(closed, bool):
                raise ValueError(f"{where}: field 'closed' must be true or false, got {_shown(closed)}")
            try:
                resample_path(rows, closed)  # raises if unusable
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if task == "target":
            radius = data.get("radius_m", 0.5)
            number = isinstance(radius, (int, float)) and not isinstance(radius, bool)
            if not number or not 0 < radius <= MAX_TARGET_RADIUS_M:
                raise ValueError(f"{where}: field 'radius_m' must be a number in (0, {MAX_TARGET_RADIUS_M:g}] m, got "
                                 f"{_shown(radius)}")
        return cls(task, rows, closed, float(radius))

    def at(self, seconds: float, origin: np.ndarray) -> dict:
        """The control dict at a time for characters at origin (N, 3)."""
        if self.task == "joystick":
            row = self.rows[max(int(np.searchsorted(self.rows[:, 0], seconds, side="right")) - 1, 0)]
            return {"task": "joystick", "direction": row[1:3], "speed": row[3]}
        if self.task == "path":
            return {"task": "path", "path": self.rows, "closed": self.closed}
        if self._next_target is None:
            self._next_target = np.zeros(len(origin), np.int64)
        last = len(self.rows) - 1
        near = np.linalg.norm(self.rows[self._next_target] - origin[:, [0, 2]], axis=1) < self.radius
        self._next_target = np.minimum(self._next_target + near, last)
        return {"task": "target", "target": self.rows[self._next_target]}
