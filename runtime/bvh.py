"""BVH read and write.

The reader takes any hierarchy with one ROOT, any rotation channel order per joint, position channels on
any joint, End Sites, CRLF or LF files, and returns a Motion in metres with Y up. Units and the up axis
are detected from the body's size and shape unless given.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .motion import Motion
from .rotations import axis_matrix, euler_to_matrix, matrix_to_euler, matrix_to_quat, quat_to_matrix
from .skeleton import Skeleton

# Unit name -> metres per file unit. "cmu" is the ASF unit of the CMU database (45 units per 100 inches).
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001, "inch": 0.0254, "cmu": 0.0254 * 100 / 45}
# The up-axis extent of a standing adult from feet joints to head joint, used to guess units.
_TYPICAL_HEIGHT_M = 1.5
_CHANNELS = {"xposition": ("p", 0), "yposition": ("p", 1), "zposition": ("p", 2),
             "xrotation": ("r", "X"), "yrotation": ("r", "Y"), "zrotation": ("r", "Z")}
# Z-up -> Y-up: a -90 degree turn about X maps (x, y, z) to (x, z, -y).
_Z_TO_Y = axis_matrix(0, -np.pi / 2)
# Limits of what a motion-capture file can sensibly hold; beyond them the numbers overflow downstream.
MAX_JOINTS = 1024
MAX_DEPTH = 256  # joints nested deeper than any body (and than Python's recursion allows)
MAX_ABS_VALUE = 1e6  # offsets and channel values, in file units or degrees
MIN_FRAME_TIME_S, MAX_FRAME_TIME_S = 1e-3, 10.0  # 1000 fps down to one frame in 10 s


class MocapError(ValueError):
    """Bad motion-capture input; the message names the file, line and what was expected."""


@dataclass
class _Joint:
    name: str
    parent: int
    offset: list[float]
    line: int
    channels: list[str] = field(default_factory=list)
    end_offset: list[float] | None = None


class _Lines:
    """Hierarchy lines as (line number, tokens), consumed in order, with error helpers."""

    def __init__(self, path: str, lines: list[str], stop: int) -> None:
        self.path = path
        self.items = [(i + 1, ln.split()) for i, ln in enumerate(lines[:stop]) if ln.strip()]
        self.pos = 0
        self.last_line = stop
        self.joint_lines: dict[str, int] = {}  # joint name -> line it was declared on

    def error(self, line: int, msg: str) -> MocapError:
        return MocapError(f"{self.path}:{line}: {msg}")

    def next(self, what: str) -> tuple[int, list[str]]:
        if self.pos >= len(self.items):
            raise self.error(self.last_line, f"expected {what}, found the end of the HIERARCHY section")
        item = self.items[self.pos]
        self.pos += 1
        return item

    def expect(self, keyword: str, n_args: int | None = None) -> tuple[int, list[str]]:
        line, toks = self.next(keyword)
        if toks[0].upper() != keyword.upper():
            raise self.error(line, f"expected {keyword}, found {' '.join(toks)[:60]!r}")
        if n_args is not None and len(toks) != n_args + 1:
            raise self.error(line, f"expected {keyword} with {n_args} values, found {len(toks) - 1}")
        return line, toks

    def floats(self, line: int, toks: list[str], what: str) -> list[float]:
        try:
            values = [float(t) for t in toks]
        except ValueError:
            values = [np.nan]
        if not np.all(np.isfinite(values)):
            raise self.error(line, f"expected numbers for {what}, found {' '.join(toks)[:60]!r}")
        if np.abs(values).max() > MAX_ABS_VALUE:
            raise self.error(line, f"expected {what} values within +-{MAX_ABS_VALUE:g}, found "
                                   f"{' '.join(toks)[:60]!r}")
        return values


def _parse_hierarchy(src: _Lines) -> list[_Joint]:
    src.expect("HIERARCHY")
    joints: list[_Joint] = []
    line, toks = src.next("ROOT")
    if toks[0].upper() != "ROOT" or len(toks) < 2:
        raise src.error(line, f"expected ROOT <name>, found {' '.join(toks)[:60]!r}")
    _parse_joint(src, joints, " ".join(toks[1:]), -1, line, 0)
    if src.pos < len(src.items):
        line, toks = src.items[src.pos]
        what = "a second ROOT (only one skeleton per file is supported)" if toks[0].upper() == "ROOT" \
            else repr(" ".join(toks)[:60])
        raise src.error(line, f"expected MOTION after the hierarchy, found {what}")
    return joints


def _parse_joint(src: _Lines, joints: list[_Joint], name: str, parent: int, line: int, depth: int) -> None:
    if name in src.joint_lines:
        raise src.error(line, f"expected a new joint name, found {name[:60]!r} again (first on line "
                              f"{src.joint_lines[name]}); joint names must be unique")
    src.joint_lines[name] = line
    if len(joints) >= MAX_JOINTS:
        raise src.error(line, f"expected at most {MAX_JOINTS} joints, found more")
    if depth >= MAX_DEPTH:
        raise src.error(line, f"expected joints nested at most {MAX_DEPTH} levels deep, found deeper")
    src.expect("{")
    oline, toks = src.expect("OFFSET", 3)
    joint = _Joint(name, parent, src.floats(oline, toks[1:], "OFFSET"), line)
    index = len(joints)
    joints.append(joint)
    cline, toks = src.next("CHANNELS")
    if toks[0].upper() == "CHANNELS":
        try:
            n = int(toks[1])
        except (IndexError, ValueError):
            raise src.error(cline, "expected CHANNELS <count> <names...>") from None
        names = toks[2:]
        if n != len(names):
            raise src.error(cline, f"CHANNELS says {n} channels but names {len(names)}")
        for ch in names:
            if ch.lower() not in _CHANNELS:
                raise src.error(cline, f"unknown channel {ch!r} (expected X/Y/Z position or rotation)")
        rot_axes = [_CHANNELS[c.lower()][1] for c in names if _CHANNELS[c.lower()][0] == "r"]
        if len(rot_axes) not in (0, 3) or len(set(rot_axes)) != len(rot_axes):
            raise src.error(cline, f"expected 0 or 3 distinct rotation channels, found {' '.join(names)}")
        if len({c.lower() for c in names}) != len(names):
            raise src.error(cline, "a channel is listed twice")
        joint.channels = names
    else:
        src.pos -= 1
    while True:
        kline, toks = src.next("JOINT, End Site or }")
        key = toks[0].upper()
        if key == "}":
            return
        if key == "JOINT" and len(toks) >= 2:
            _parse_joint(src, joints, " ".join(toks[1:]), index, kline, depth + 1)
        elif key == "END":
            src.expect("{")
            eline, etoks = src.expect("OFFSET", 3)
            joint.end_offset = src.floats(eline, etoks[1:], "End Site OFFSET")
            src.expect("}")
        else:
            want = "JOINT, End Site or }" if joint.channels else "CHANNELS, JOINT, End Site or }"
            raise src.error(kline, f"expected {want}, found {' '.join(toks)[:60]!r}")


def _header_value(path: str, lines: list[str], i: int, key: str) -> str:
    if i >= len(lines) or not lines[i].strip().lower().startswith(key.lower()):
        found = repr(lines[i].strip()[:60]) if i < len(lines) else "the end of the file"
        raise MocapError(f"{path}:{i + 1}: expected '{key} ...', found {found}")
    return lines[i].split(":", 1)[1].strip()


def _parse_motion(path: str, lines: list[str], start: int, n_channels: int) -> tuple[np.ndarray, float]:
    i = start + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    try:
        n_frames = int(_header_value(path, lines, i, "Frames:"))
    except ValueError:
        raise MocapError(f"{path}:{i + 1}: expected 'Frames: <count>'") from None
    try:
        frame_time = float(_header_value(path, lines, i + 1, "Frame Time:"))
    except ValueError:
        raise MocapError(f"{path}:{i + 2}: expected 'Frame Time: <seconds>'") from None
    if n_frames <= 0:
        raise MocapError(f"{path}:{i + 1}: the MOTION section is empty (Frames: {n_frames})")
    if not MIN_FRAME_TIME_S <= frame_time <= MAX_FRAME_TIME_S:  # NaN fails too
        raise MocapError(f"{path}:{i + 2}: expected a Frame Time from {MIN_FRAME_TIME_S:g} to {MAX_FRAME_TIME_S:g} "
                         f"seconds ({1 / MAX_FRAME_TIME_S:g} to {1 / MIN_FRAME_TIME_S:g} fps), found {frame_time:g}")
    first = i + 2
    rows = [(k, ln) for k, ln in enumerate(lines[first:], start=first) if ln.strip()]
    if len(rows) < n_frames:
        raise MocapError(f"{path}:{len(lines) + 1}: truncated file: expected {n_frames} frames, found {len(rows)}")
    if len(rows) > n_frames:
        raise MocapError(f"{path}:{rows[n_frames][0] + 1}: expected {n_frames} frames (Frames:), "
                         f"found {len(rows)} lines of data")
    try:
        values = np.array(" ".join(ln for _, ln in rows).split(), dtype=np.float64)
    except ValueError:
        values = None
    if values is None or values.size != n_frames * n_channels or not np.all(np.isfinite(values)):
        for k, ln in rows:  # slow path, only to say where the damage is
            toks = ln.split()
            if len(toks) != n_channels:
                raise MocapError(f"{path}:{k + 1}: expected {n_channels} channel values, found {len(toks)}")
            try:
                vals = [float(t) for t in toks]
            except ValueError:
                bad = next(t for t in toks if not _is_float(t))
                raise MocapError(f"{path}:{k + 1}: expected a number, found {bad[:40]!r}") from None
            if not np.all(np.isfinite(vals)):
                raise MocapError(f"{path}:{k + 1}: expected finite numbers, found nan or inf")
    too_big = np.abs(values) > MAX_ABS_VALUE
    if too_big.any():
        k = rows[int(np.argmax(too_big)) // max(n_channels, 1)][0]
        raise MocapError(f"{path}:{k + 1}: expected channel values within +-{MAX_ABS_VALUE:g}, found "
                         f"{values[np.argmax(too_big)]:g}")
    return values.reshape(n_frames, n_channels), frame_time


def _is_float(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True


def _build(joints: list[_Joint], data: np.ndarray) -> tuple[Skeleton, np.ndarray, np.ndarray]:
    """Skeleton (file units), local rotation matrices (T, J, 3, 3) and translations (T, J, 3)."""
    n_frames, n_j = data.shape[0], len(joints)
    offsets = np.array([j.offset for j in joints])
    ends = np.array([j.end_offset if j.end_offset is not None else [np.nan] * 3 for j in joints])
    skel = Skeleton([j.name for j in joints], [j.parent for j in joints], offsets, ends)
    trans = np.broadcast_to(offsets, (n_frames, n_j, 3)).copy()
    rots = np.broadcast_to(np.eye(3), (n_frames, n_j, 3, 3)).copy()
    by_order: dict[str, tuple[list[int], list[list[int]]]] = {}
    col = 0
    for j, joint in enumerate(joints):
        order, cols = "", []
        for ch in joint.channels:
            kind, axis = _CHANNELS[ch.lower()]
            if kind == "p":
                trans[:, j, axis] = data[:, col]
            else:
                order += axis
                cols.append(col)
            col += 1
        if order:
            idx, cl = by_order.setdefault(order, ([], []))
            idx.append(j)
            cl.append(cols)
    for order, (idx, cl) in by_order.items():
        angles = np.radians(data[:, np.array(cl)])  # (T, joints, 3)
        rots[:, idx] = euler_to_matrix(angles, order)
    return skel, rots, trans


def _static_root_depth(skel: Skeleton, rots: np.ndarray, trans: np.ndarray) -> int:
    """How many joints from the root down are motionless single-child dummies."""
    k = 0
    while (k < skel.n_joints - 1 and len(skel.children[k]) == 1 and skel.children[k][0] == k + 1
           and np.ptp(rots[:, k], axis=0).max() < 1e-9 and np.ptp(trans[:, k], axis=0).max() < 1e-9):
        k += 1
    return k


def _scaled(skel: Skeleton, scale: float) -> Skeleton:
    return Skeleton(skel.names, skel.parents, skel.offsets * scale, skel.end_offsets * scale)


def detect_up_axis(positions: np.ndarray) -> str:
    """'y' or 'z': the axis along which the body is tallest, from world positions (T, J, 3)."""
    extent = positions.max(axis=1) - positions.min(axis=1)
    return "z" if np.median(extent[:, 2]) > np.median(extent[:, 1]) else "y"


def detect_unit(height: float) -> str:
    """The unit in UNITS that makes a feet-to-head height closest to an adult's."""
    if not np.isfinite(height) or height <= 0:
        return "m"
    return min(UNITS, key=lambda u: abs(np.log(height * UNITS[u] / _TYPICAL_HEIGHT_M)))


def read_bvh(path: str | os.PathLike, scale: float | str = "auto", up: str = "auto",
             name: str | None = None, expect_joints: int | None = None) -> Motion:
    """Read a BVH file into a Motion in metres, Y up.

    scale: metres per file unit, a unit name from UNITS, or "auto" (from the body's height).
    up: "y", "z" or "auto" (from the body's shape).
    expect_joints: fail unless the hierarchy has this many joints (End Sites not counted).
    """
    path = str(path)
    if Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir():
        raise MocapError(f"{path}: expected a regular file, found a special file (a FIFO, socket or device)")
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise MocapError(f"{path}: cannot read: {e.strerror or e}") from None
    lines = raw.decode("utf-8-sig", errors="replace").splitlines()  # -sig: a byte-order mark is no text
    motion_at = next((i for i, ln in enumerate(lines) if ln.strip().upper() == "MOTION"), None)
    if motion_at is None:
        raise MocapError(f"{path}:{len(lines)}: expected a MOTION section, found none (truncated file?)")
    src = _Lines(path, lines, motion_at)
    if not src.items:
        raise MocapError(f"{path}:1: expected HIERARCHY, found an empty hierarchy")
    joints = _parse_hierarchy(src)
    if expect_joints is not None and len(joints) != expect_joints:
        raise MocapError(f"{path}:{motion_at + 1}: expected {expect_joints} joints (--joints), "
                         f"found {len(joints)} in the hierarchy")
    n_channels = sum(len(j.channels) for j in joints)
    data, frame_time = _parse_motion(path, lines, motion_at, n_channels)
    skel, rots, trans = _build(joints, data)

    stride = max(1, data.shape[0] // 64)
    sample_pos = skel.forward_kinematics_matrices(rots[::stride], trans[::stride, 0], trans[::stride])[0]
    sample_pos = sample_pos[:, _static_root_depth(skel, rots, trans):]  # a fixed dummy root is no body part
    if up == "auto":
        up = detect_up_axis(sample_pos)
    if up not in ("y", "z"):
        raise MocapError(f"{path}: unknown up axis {up!r} (expected y, z or auto)")
    if up == "z":
        rots[:, 0] = _Z_TO_Y @ rots[:, 0]
        trans[:, 0] = trans[:, 0] @ _Z_TO_Y.T
        sample_pos = sample_pos @ _Z_TO_Y.T
    if isinstance(scale, str):
        if scale == "auto":
            scale = detect_unit(float(np.median(np.ptp(sample_pos[..., 1], axis=1))))
        if scale not in UNITS:
            raise MocapError(f"{path}: unknown unit {scale!r} (expected a number or one of {', '.join(UNITS)})")
        scale = UNITS[scale]
    fps = 1.0 / frame_time
    # Frame times like 0.0333333 mean 30 fps: snap to a nearby whole rate.
    if abs(fps - round(fps)) < 1e-3 * fps:
        fps = float(round(fps))
    return Motion(_scaled(skel, scale), matrix_to_quat(rots), trans * scale, fps,
                  name if name is not None else Path(path).stem)


def _format_rows(values: np.ndarray) -> str:
    buf = io.StringIO()
    np.savetxt(buf, values, fmt="%.6f", delimiter=" ")
    return buf.getvalue()


def write_bvh(path: str | os.PathLike, motion: Motion, order: str = "ZXY", scale: float = 1.0,
              up: str = "y", position_joints: str = "auto") -> None:
    """Write a Motion as BVH, atomically.

    order: rotation channel order for every joint; scale: file units per metre (100 writes cm);
    up: "y" or "z"; position_joints: "root", "all", or "auto" (the root and any joint whose translation
    differs from its offset).
    """
    skel = motion.skeleton
    order = order.upper()
    if sorted(order) != ["X", "Y", "Z"]:
        raise ValueError(f"rotation order must be a permutation of XYZ, got {order!r}")
    rots = quat_to_matrix(motion.rotations)
    trans = np.array(motion.translations, dtype=np.float64, copy=True)
    if up == "z":
        rots[:, 0] = _Z_TO_Y.T @ rots[:, 0]
        trans[:, 0] = trans[:, 0] @ _Z_TO_Y
    elif up != "y":
        raise ValueError(f"up must be 'y' or 'z', got {up!r}")
    if position_joints == "all":
        has_pos = np.ones(skel.n_joints, dtype=bool)
    else:
        has_pos = np.zeros(skel.n_joints, dtype=bool)
        if position_joints == "auto":
            has_pos = np.abs(trans - skel.offsets).max(axis=0).max(axis=-1) > 1e-9
    has_pos[0] = True

    out = ["HIERARCHY"]
    rot_names = " ".join(f"{a}rotation" for a in order)

    def emit(j: int, indent: str) -> None:
        kind = "ROOT" if j == 0 else "JOINT"
        off = skel.offsets[j] * scale
        chans = (["Xposition", "Yposition", "Zposition"] if has_pos[j] else []) + rot_names.split()
        out.extend([f"{indent}{kind} {skel.names[j]}", f"{indent}{{",
                    f"{indent}\tOFFSET {off[0]:.6f} {off[1]:.6f} {off[2]:.6f}",
                    f"{indent}\tCHANNELS {len(chans)} {' '.join(chans)}"])
        for c in skel.children[j]:
            emit(c, indent + "\t")
        end = skel.end_offsets[j]
        if not skel.children[j] or not np.isnan(end[0]):
            e = np.nan_to_num(end) * scale
            out.extend([f"{indent}\tEnd Site", f"{indent}\t{{",
                        f"{indent}\t\tOFFSET {e[0]:.6f} {e[1]:.6f} {e[2]:.6f}", f"{indent}\t}}"])
        out.append(f"{indent}}}")

    emit(0, "")
    angles = np.degrees(matrix_to_euler(rots, order))  # (T, J, 3)
    cols = []
    for j in range(skel.n_joints):
        if has_pos[j]:
            cols.append(trans[:, j] * scale)
        cols.append(angles[:, j])
    out += ["MOTION", f"Frames: {motion.n_frames}", f"Frame Time: {1.0 / motion.fps:.8f}"]
    text = "\n".join(out) + "\n" + _format_rows(np.concatenate(cols, axis=1))
    atomic_write_text(path, text)

