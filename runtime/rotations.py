"""Rotation conversions, vectorised over any leading shape.

Quaternions are (x, y, z, w). Matrices act on column vectors (v' = R @ v). The 6D representation is the
first two columns of the matrix, stored as (c0x, c0y, c0z, c1x, c1y, c1z).
"""
from __future__ import annotations

import numpy as np

_AXES = {"X": 0, "Y": 1, "Z": 2}


def quat_identity(shape: tuple[int, ...] = ()) -> np.ndarray:
    """Identity quaternions of the given leading shape."""
    q = np.zeros(tuple(shape) + (4,))
    q[..., 3] = 1.0
    return q


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """Unit-length quaternions."""
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quat_conj(q: np.ndarray) -> np.ndarray:
    """Conjugate (the inverse of a unit quaternion)."""
    return q * np.array([-1.0, -1.0, -1.0, 1.0], dtype=q.dtype)


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (apply b first, then a)."""
    ax, ay, az, aw = np.moveaxis(a, -1, 0)
    bx, by, bz, bw = np.moveaxis(b, -1, 0)
    return np.stack([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ], axis=-1)


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v by unit quaternions q."""
    u = q[..., :3]
    t = 2.0 * np.cross(u, v)
    return v + q[..., 3:4] * t + np.cross(u, t)


def quat_from_axis_angle(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Quaternions rotating by angle (radians) about unit axis."""
    half = 0.5 * np.asarray(angle)[..., None]
    return np.concatenate([np.asarray(axis) * np.sin(half), np.cos(half)], axis=-1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions -> 3x3 rotation matrices."""
    x, y, z, w = np.moveaxis(q, -1, 0)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    m = np.stack([
        1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
    ], axis=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def _quat_candidate_map() -> np.ndarray:
    """(10, 16): [flattened matrix, 1] @ map = four candidate quaternions, candidate k = 4 q_k * q."""
    e = {f"m{i}{j}": 3 * i + j for i in range(3) for j in range(3)}
    one = 9
    rows = [  # (x, y, z, w) of each candidate as signed sums of matrix entries
        [[one, "m00", "-m11", "-m22"], ["m01", "m10"], ["m02", "m20"], ["m21", "-m12"]],
        [["m01", "m10"], [one, "-m00", "m11", "-m22"], ["m12", "m21"], ["m02", "-m20"]],
        [["m02", "m20"], ["m12", "m21"], [one, "-m00", "-m11", "m22"], ["m10", "-m01"]],
        [["m21", "-m12"], ["m02", "-m20"], ["m10", "-m01"], [one, "m00", "m11", "m22"]],
    ]
    out = np.zeros((10, 16))
    for k, cand in enumerate(rows):
        for c, terms in enumerate(cand):
            for t in terms:
                if t == one:
                    out[one, 4 * k + c] = 1.0
                else:
                    out[e[t.lstrip("-")], 4 * k + c] = -1.0 if t.startswith("-") else 1.0
    return out


QUAT_CANDIDATES = _quat_candidate_map()


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrices -> unit quaternions with w >= 0.

    Four candidates are linear in the matrix entries; the one with the largest own component is exact
    to rounding (the same scheme the exported step graph uses).
    """
    cands = (m.reshape(m.shape[:-2] + (9,)) @ QUAT_CANDIDATES[:9] + QUAT_CANDIDATES[9])
    cands = cands.reshape(m.shape[:-2] + (4, 4))
    best = np.argmax(np.einsum("...ii->...i", cands), axis=-1)
    q = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def matrix_to_sixd(m: np.ndarray) -> np.ndarray:
    """Rotation matrices -> 6D (first two columns)."""
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def sixd_to_matrix(d: np.ndarray) -> np.ndarray:
    """6D -> rotation matrices by Gram-Schmidt (accepts unnormalised network output)."""
    a, b = d[..., :3], d[..., 3:6]
    c0 = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b - np.sum(c0 * b, axis=-1, keepdims=True) * c0
    c1 = b / np.linalg.norm(b, axis=-1, keepdims=True)
    c2 = np.cross(c0, c1)
    return np.stack([c0, c1, c2], axis=-1)


def quat_to_sixd(q: np.ndarray) -> np.ndarray:
    """Unit quaternions -> 6D."""
    return matrix_to_sixd(quat_to_matrix(q))


def sixd_to_quat(d: np.ndarray) -> np.ndarray:
    """6D -> unit quaternions."""
    return matrix_to_quat(sixd_to_matrix(d))


def axis_matrix(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotation matrices about a principal axis (0=X, 1=Y, 2=Z) by angle radians."""
    angle = np.asarray(angle, dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    m = np.zeros(angle.shape + (3, 3))
    i, j = (axis + 1) % 3, (axis + 2) % 3
    m[..., axis, axis] = 1.0
    m[..., i, i] = c
    m[..., j, j] = c
    m[..., j, i] = s
    m[..., i, j] = -s
    return m


def euler_to_matrix(angles: np.ndarray, order: str) -> np.ndarray:
    """Intrinsic Euler angles (radians, one column per letter of order, e.g. "ZXY") -> matrices.

    The BVH convention: R = R_order[0] @ R_order[1] @ R_order[2].
    """
    order = order.upper()
    m = axis_matrix(_AXES[order[0]], angles[..., 0])
    for k in (1, 2):
        m = m @ axis_matrix(_AXES[order[k]], angles[..., k])
    return m


def matrix_to_euler(m: np.ndarray, order: str) -> np.ndarray:
    """Rotation matrices -> intrinsic Euler angles (radians) in the given order; inverse of euler_to_matrix."""
    i, j, k = (_AXES[a] for a in order.upper())
    s = 1.0 if (j - i) % 3 == 1 else -1.0  # +1 for the cyclic orders XYZ, YZX, ZXY
    sin_b = np.clip(s * m[..., i, k], -1.0, 1.0)
    b = np.arcsin(sin_b)
    a = np.arctan2(-s * m[..., j, k], m[..., k, k])
    c = np.arctan2(-s * m[..., i, j], m[..., i, i])
    # At gimbal lock only a +/- c is defined: put it all in a.
    locked = np.abs(sin_b) > 1.0 - 1e-12
    if np.any(locked):
        a = np.where(locked, np.arctan2(s * m[..., k, j], m[..., j, j]), a)
        c = np.where(locked, 0.0, c)
    return np.stack([a, b, c], axis=-1)


def quat_from_euler(angles: np.ndarray, order: str) -> np.ndarray:
    """Intrinsic Euler angles (radians) -> unit quaternions."""
    return matrix_to_quat(euler_to_matrix(angles, order))


def quat_to_euler(q: np.ndarray, order: str) -> np.ndarray:
    """Unit quaternions -> intrinsic Euler angles (radians)."""
    return matrix_to_euler(quat_to_matrix(q), order)


def quat_continuous(q: np.ndarray, axis: int = 0) -> np.ndarray:
    """Flip signs along a time axis so consecutive quaternions share a hemisphere."""
    q = np.moveaxis(np.array(q, copy=True), axis, 0)
    dots = np.sum(q[1:] * q[:-1], axis=-1)
    flips = np.cumsum(dots < 0, axis=0) % 2
    q[1:] *= np.where(flips[..., None] == 1, -1.0, 1.0)
    return np.moveaxis(q, 0, axis)


def quat_slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation from a to b at fraction t (broadcast over leading dims), shortest path."""
    t = np.asarray(t, dtype=np.float64)[..., None]
    dot = np.sum(a * b, axis=-1, keepdims=True)
    b = np.where(dot < 0, -b, b)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    near = sin_theta < 1e-6
    safe = np.where(near, 1.0, sin_theta)
    wa = np.where(near, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
    wb = np.where(near, t, np.sin(t * theta) / safe)
    return quat_normalize(wa * a + wb * b)


def yaw_matrix(yaw: np.ndarray) -> np.ndarray:
    """Rotations about +Y (up) by yaw radians; yaw 0 faces +Z."""
    return axis_matrix(1, yaw)


def yaw_quat(yaw: np.ndarray) -> np.ndarray:
    """Quaternions about +Y by yaw radians."""
    yaw = np.asarray(yaw, dtype=np.float64)
    half = 0.5 * yaw
    z = np.zeros_like(half)
    return np.stack([z, np.sin(half), z, np.cos(half)], axis=-1)


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi
