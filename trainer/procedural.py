"""A synthetic locomotion generator: licence-free BVH clips of a 22-joint humanoid walking and running.

The clips are built, not captured, so they carry no licence terms: they feed the tests and the shipped
default model. Each clip follows a random plan of segments (target speed and path curvature) that is
smoothed into a root trajectory with starts, stops, speed changes and turns both ways. A gait phase runs
at a cadence that grows with speed; each foot is planted on the path under where the pelvis will be partway
through that stance, rolls heel -> flat -> toe about fixed pivots (so a planted foot does not slide), and
swings to its next plant on an arc. Legs are solved with analytic two-bone IK, the pelvis lowered where a
leg could not otherwise reach; the pelvis bobs (twice per gait cycle), sways and rotates; the spine
counter-rotates, leans with speed, acceleration and turns; the head is stabilised; arms counter-swing with
more elbow bend at speed. Walk (duty factor above 0.5) blends into run (flight phase) between 1.85 and
2.2 m/s. Every clip also draws a style (cadence, arm swing, elbow bend, lean, step width, toe-out, foot
lift, bob, sway, posture), so a model trained on the data sees variety.

Everything is vectorised over frames and steps (Python loops run only over plan segments and the two
sides of the body). A clip is a deterministic function of its seed.

    python -m trainer.procedural data/procedural --clips 200 --seconds 60 --seed 0
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.bvh import write_bvh
from runtime.cli import UsageError, check_memory, fail, parse
from runtime.cli import progress as with_progress
from runtime.motion import Motion
from runtime.rotations import axis_matrix, matrix_to_quat, quat_continuous, quat_to_matrix
from runtime.skeleton import Skeleton

__all__ = ["Segment", "Style", "procedural_skeleton", "random_plan", "generate_clip", "generate_dataset",
           "clip_seed", "root_speed", "main"]

# ----------------------------------------------------------------------------------------------------
# The skeleton: metres, Y up, facing +Z, the character's left is +X. Rest pose: a T-pose standing on the
# ground with the hips at 0.95 m (the root's OFFSET is its rest position, as Mixamo files have it).

CLIP_BYTES_PER_FRAME = 64 << 10  # one clip is built whole: rotations, matrices, positions, gait state (generous)
_HIP_Y = 0.95
_UPLEG = (0.09, -0.04, 0.0)
_THIGH = 0.43
_SHIN = 0.41
_ANKLE_H = _HIP_Y + _UPLEG[1] - _THIGH - _SHIN  # 0.07: ankle height over the ground in the rest pose
_TOE = (0.0, -0.05, 0.13)  # ankle -> ball of the foot (toe joint, 2 cm over the ground when flat)
_TOE_END = (0.0, 0.0, 0.06)

_JOINTS: tuple[tuple[str, str | None, tuple[float, float, float], tuple[float, float, float] | None], ...] = (
    ("Hips", None, (0.0, _HIP_Y, 0.0), None),
    ("Spine", "Hips", (0.0, 0.10, 0.0), None),
    ("Spine1", "Spine", (0.0, 0.12, 0.0), None),
    ("Spine2", "Spine1", (0.0, 0.12, 0.0), None),
    ("Neck", "Spine2", (0.0, 0.19, 0.0), None),
    ("Head", "Neck", (0.0, 0.10, 0.0), (0.0, 0.17, 0.0)),
    ("LeftShoulder", "Spine2", (0.035, 0.13, 0.0), None),
    ("LeftArm", "LeftShoulder", (0.145, 0.0, 0.0), None),
    ("LeftForeArm", "LeftArm", (0.28, 0.0, 0.0), None),
    ("LeftHand", "LeftForeArm", (0.25, 0.0, 0.0), (0.18, 0.0, 0.0)),
    ("RightShoulder", "Spine2", (-0.035, 0.13, 0.0), None),
    ("RightArm", "RightShoulder", (-0.145, 0.0, 0.0), None),
    ("RightForeArm", "RightArm", (-0.28, 0.0, 0.0), None),
    ("RightHand", "RightForeArm", (-0.25, 0.0, 0.0), (-0.18, 0.0, 0.0)),
    ("LeftUpLeg", "Hips", _UPLEG, None),
    ("LeftLeg", "LeftUpLeg", (0.0, -_THIGH, 0.0), None),
    ("LeftFoot", "LeftLeg", (0.0, -_SHIN, 0.0), None),
    ("LeftToeBase", "LeftFoot", _TOE, _TOE_END),
    ("RightUpLeg", "Hips", (-_UPLEG[0], _UPLEG[1], _UPLEG[2]), None),
    ("RightLeg", "RightUpLeg", (0.0, -_THIGH, 0.0), None),
    ("RightFoot", "RightLeg", (0.0, -_SHIN, 0.0), None),
    ("RightToeBase", "RightFoot", _TOE, _TOE_END),
)
_J = {name: j for j, (name, *_rest) in enumerate(_JOINTS)}


def procedural_skeleton() -> Skeleton:
    """The 22-joint Mixamo-named humanoid the generator animates (1.75 m tall, hips at 0.95 m)."""
    names = [j[0] for j in _JOINTS]
    parents = [-1 if p is None else names.index(p) for _, p, _, _ in _JOINTS]
    offsets = np.array([o for _, _, o, _ in _JOINTS], dtype=np.float64)
    ends = np.array([[np.nan] * 3 if e is None else e for *_, e in _JOINTS], dtype=np.float64)
    return Skeleton(names, parents, offsets, ends)


# ----------------------------------------------------------------------------------------------------
# Plans and styles


@dataclass(frozen=True)
class Segment:
    """One leg of a plan: hold a target speed (m/s) and path curvature (1/m, positive turns left)."""

    duration: float
    speed: float
    curvature: float = 0.0


@dataclass(frozen=True)
class Style:
    """Per-clip variation of the gait; the defaults are an average person."""

    cadence: float = 1.0         # step-frequency multiplier (below 1: longer, slower strides)
    arm_swing: float = 1.0       # arm swing amplitude multiplier
    elbow: float = 0.0           # extra elbow flexion (radians)
    lean: float = 0.0            # extra forward trunk lean (radians)
    step_width: float = 0.065    # lateral distance of each foot from the path at walking speed (m)
    toe_out: float = 0.10        # foot yaw away from the path (radians)
    lift: float = 1.0            # swing-foot clearance multiplier
    bob: float = 1.0             # pelvis vertical bob multiplier
    sway: float = 1.0            # pelvis lateral sway multiplier
    pelvis_turn: float = 1.0     # pelvis / thorax counter-rotation multiplier
    arm_abduction: float = 0.14  # arms away from the body (radians)
    head_pitch: float = 0.04     # head down (radians)
    crouch: float = 0.0          # pelvis lowered (m)
    acceleration: float = 2.0    # how hard speed changes are taken (m/s^2)

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Style":
        """A plausible random style."""
        u = rng.uniform
        return cls(cadence=u(0.93, 1.09), arm_swing=u(0.55, 1.45), elbow=u(-0.12, 0.30), lean=u(-0.04, 0.09),
                   step_width=u(0.045, 0.085), toe_out=u(0.0, 0.2), lift=u(0.8, 1.3), bob=u(0.7, 1.3),
                   sway=u(0.6, 1.4), pelvis_turn=u(0.6, 1.4), arm_abduction=u(0.08, 0.24),
                   head_pitch=u(-0.06, 0.14), crouch=u(0.0, 0.025), acceleration=u(1.4, 2.6))


_MODES = (  # name, probability, speed range (m/s), duration range (s)
    ("stop", 0.14, (0.0, 0.0), (1.0, 3.5)),
    ("slow", 0.14, (0.35, 0.8), (2.0, 5.0)),
    ("walk", 0.24, (1.0, 1.6), (2.0, 6.0)),
    ("brisk", 0.08, (1.5, 1.9), (2.0, 4.0)),
    ("jog", 0.18, (2.1, 2.7), (2.0, 5.0)),
    ("run", 0.22, (2.8, 3.6), (1.5, 4.0)),
)


def random_plan(rng: np.random.Generator, seconds: float, start_speed: float | None = None) -> list[Segment]:
    """A random sequence of segments covering at least seconds; starts standing or moving."""
    probs = np.array([m[1] for m in _MODES])
    probs /= probs.sum()
    plan: list[Segment] = []
    total = 0.0
    last = None
    if start_speed is not None:
        dur = rng.uniform(1.0, 3.0)
        plan.append(Segment(dur, float(start_speed), _random_curvature(rng)))
        total, last = dur, ("stop" if start_speed == 0 else None)
    while total < seconds + 1.0:
        k = int(rng.choice(len(_MODES), p=probs))
        name, _, (v0, v1), (d0, d1) = _MODES[k]
        if name == "stop" and last == "stop":
            continue
        dur = rng.uniform(d0, d1)
        plan.append(Segment(dur, rng.uniform(v0, v1), _random_curvature(rng)))
        total += dur
        last = name
    return plan


def _random_curvature(rng: np.random.Generator) -> float:
    if rng.uniform() < 0.45:
        return float(rng.normal(0.0, 0.02))
    return float(rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.75))


# ----------------------------------------------------------------------------------------------------
# Small vectorised helpers


def _rx(a: np.ndarray) -> np.ndarray:
    return axis_matrix(0, a)


def _ry(a: np.ndarray) -> np.ndarray:
    return axis_matrix(1, a)


def _rz(a: np.ndarray) -> np.ndarray:
    return axis_matrix(2, a)


def _mv(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Matrices (..., 3, 3) times vectors (..., 3)."""
    return np.einsum("...ij,...j->...i", m, v)


def _smooth(x: np.ndarray) -> np.ndarray:
    """Smoothstep of x clipped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _hermite(p0: np.ndarray, p1: np.ndarray, m0: np.ndarray, m1: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Cubic Hermite between p0 and p1 with tangents m0, m1 (per unit u); u broadcasts on the last axis."""
    u2, u3 = u * u, u * u * u
    if p0.ndim > u.ndim:
        u2, u3, u = u2[..., None], u3[..., None], u[..., None]
    return (2 * u3 - 3 * u2 + 1) * p0 + (u3 - 2 * u2 + u) * m0 + (3 * u2 - 2 * u3) * p1 + (u3 - u2) * m1


def _bump(w: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """A bump on [0, 1], zero with zero slope at both ends, 1 at peak."""
    w = np.clip(w, 0.0, 1.0)
    b = 2.0 * (1.0 - peak) / peak
    return (w ** 2 * (1.0 - w) ** b) / (peak ** 2 * (1.0 - peak) ** b)


def _window(x: np.ndarray, half: int, how: str) -> np.ndarray:
    """Sliding min or mean over 2 * half + 1 samples, edges padded with the edge value."""
    if half <= 0:
        return x
    padded = np.pad(x, half, mode="edge")
    if how == "min":
        return np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1).min(axis=-1)
    c = np.cumsum(np.concatenate([[0.0], padded]))
    return (c[2 * half + 1:] - c[:-2 * half - 1]) / (2 * half + 1)


def _quat_pow(q: np.ndarray, t: float) -> np.ndarray:
    """Unit quaternions raised to a real power (the same axis, t times the angle)."""
    q = np.where(q[..., 3:4] < 0, -q, q)
    s = np.linalg.norm(q[..., :3], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., 3:4])
    axis = q[..., :3] / np.maximum(s, 1e-12)
    return np.concatenate([axis * np.sin(0.5 * t * angle), np.cos(0.5 * t * angle)], axis=-1)


# ----------------------------------------------------------------------------------------------------
# Gait as a function of speed


def _cadence(v: np.ndarray) -> np.ndarray:
    """Steps per second at speed v (m/s)."""
    return np.interp(v, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.5],
                     [1.30, 1.40, 1.70, 2.00, 2.40, 2.55, 2.65, 2.75, 2.95])


def _runness(v: np.ndarray) -> np.ndarray:
    """0 for a walk, 1 for a run, smooth in between."""
    return _smooth((np.asarray(v) - 1.85) / 0.35)


def _activity(v: np.ndarray) -> np.ndarray:
    """0 standing, 1 moving: scales every gait oscillation so a stop settles into a still stance."""
    return _smooth((np.asarray(v) - 0.04) / 0.4)


def _duty(v: np.ndarray) -> np.ndarray:
    """Fraction of the gait cycle a foot is on the ground: above 0.5 walking, below running (flight)."""
    r = _runness(v)
    walk = np.clip(0.68 - 0.055 * (v - 0.5), 0.57, 0.70)
    run = np.clip(0.40 - 0.06 * (v - 2.2), 0.30, 0.42)
    return (1.0 - r) * walk + r * run


def _plant_fraction(v: np.ndarray) -> np.ndarray:
    """How far through its stance (by distance) the pelvis passes over a planted foot."""
    # tuned so the reach of the leading leg at heel strike and of the trailing leg at toe-off balance
    return np.interp(v, [0.0, 1.0, 1.4, 1.9, 2.1, 2.6, 3.5], [0.40, 0.40, 0.43, 0.44, 0.40, 0.36, 0.35])


# Foot points in the foot frame (relative to the ankle when the foot is flat on the ground).
_HEEL = np.array([0.0, -_ANKLE_H, -0.05])
_BALL = np.array(_TOE)
_TIP = np.array(_TOE_END)


def _foot_rotation(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """World rotation of a foot with the given yaw and pitch (positive pitch: toes up)."""
    return _ry(yaw) @ _rx(-pitch)


def _ankle_on_plant(plant: np.ndarray, yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Ankle position of a foot planted (flat ankle position plant) rolled by pitch: toes up rolls about
    the heel, heel up rolls about the ball; the pivot does not move, so the contact does not slide."""
    pivot = np.where((pitch >= 0)[..., None], _HEEL, _BALL)
    flat = _ry(yaw)
    return plant + _mv(flat, pivot) - _mv(flat @ _rx(-pitch), pivot)


def _two_bone(hip: np.ndarray, target: np.ndarray, pole: np.ndarray, l1: float, l2: float):
    """Analytic two-bone IK: world rotations of the upper and lower bone (rest direction -Y, hinge X).

    The knee bends toward pole. Returns (upper (T,3,3), lower (T,3,3), knee (T,3), reached ankle (T,3)).
    """
    d = target - hip
    dist = np.linalg.norm(d, axis=-1, keepdims=True)
    dn = d / np.maximum(dist, 1e-9)
    dist = np.clip(dist, abs(l1 - l2) + 1e-4, (l1 + l2) * (1.0 - 1e-6))
    hinge = np.cross(pole, dn)
    hinge /= np.linalg.norm(hinge, axis=-1, keepdims=True)
    perp = np.cross(dn, hinge)
    cos_a = (l1 * l1 + dist * dist - l2 * l2) / (2.0 * l1 * dist)
    sin_a = np.sqrt(np.clip(1.0 - cos_a * cos_a, 0.0, None))
    knee = hip + l1 * (cos_a * dn + sin_a * perp)
    ankle = hip + dist * dn

    def frame(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        y = top - bottom
        y /= np.linalg.norm(y, axis=-1, keepdims=True)
        z = np.cross(hinge, y)
        return np.stack([hinge, y, z], axis=-1)

    return frame(hip, knee), frame(knee, ankle), knee, ankle


# ----------------------------------------------------------------------------------------------------
# The generator


def _plan_signal(t: np.ndarray, plan: list[Segment], attr: str, taus: np.ndarray) -> np.ndarray:
    """A piecewise-constant plan value, each change eased over its own transition time."""
    values = np.array([getattr(s, attr) for s in plan], dtype=np.float64)
    starts = np.concatenate([[0.0], np.cumsum([s.duration for s in plan])[:-1]])
    out = np.full_like(t, values[0])
    for k in range(1, len(plan)):  # a loop over segments, each step vectorised over frames
        out += (values[k] - values[k - 1]) * _smooth((t - starts[k]) / taus[k] + 0.5)
    return out


def _random_plan_for(rng: np.random.Generator, seconds: float) -> list[Segment]:
    start = None if rng.uniform() < 0.75 else 0.0
    return random_plan(rng, seconds, start_speed=start)


def generate_clip(seed: int, seconds: float, fps: float = 30.0, *, plan: list[Segment] | None = None,
                  style: Style | None = None, name: str | None = None) -> Motion:
    """One synthetic locomotion clip of the procedural skeleton.

    seed: the clip is a deterministic function of it (plan, style, start heading and phase).
    plan: segments to follow instead of a random plan (the last one is held past its end).
    style: gait style instead of a random one.
    """
    if not seconds > 0 or not fps > 0:
        raise ValueError(f"seconds and fps must be positive, got {seconds} and {fps}")
    rng = np.random.default_rng(seed)
    rng_plan, rng_style, rng_misc = (np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(3))
    if plan is None:
        plan = _random_plan_for(rng_plan, seconds)
    if not plan:
        raise ValueError("plan must have at least one segment")
    for seg in plan:
        if not (seg.duration > 0 and seg.speed >= 0 and np.isfinite([seg.speed, seg.curvature]).all()):
            raise ValueError(f"bad plan segment {seg}: duration must be positive, speed 0 or more, all finite")
    st = style if style is not None else Style.random(rng_style)
    skel = procedural_skeleton()

    # --- time grid: an internal rate that is a multiple of fps, with margins cut off at the end -------
    sub = max(1, int(round(120.0 / fps)))
    rate = fps * sub
    dt = 1.0 / rate
    n_out = max(1, int(round(seconds * fps)))
    pad = int(np.ceil(3.0 * rate))
    t = (np.arange(n_out * sub + 2 * pad) - pad) * dt

    # --- root trajectory ---------------------------------------------------------------------------
    v_targets = np.array([s.speed for s in plan])
    dv = np.abs(np.diff(np.concatenate([[v_targets[0]], v_targets])))
    v_taus = np.maximum(0.6, 1.5 * dv / st.acceleration)
    speed = np.clip(_plan_signal(t, plan, "speed", v_taus), 0.0, None)
    curv = _plan_signal(t, plan, "curvature", np.full(len(plan), 0.9))
    lat_max = 3.5  # m/s^2 of sideways acceleration a turn may ask for
    curv = np.sign(curv) * np.minimum(np.abs(curv), lat_max / np.maximum(speed, 0.5) ** 2)
    omega = np.clip(curv * speed, -2.2, 2.2)
    heading = np.cumsum(omega) * dt
    heading += rng_misc.uniform(-np.pi, np.pi) - heading[pad]
    fwd = np.stack([np.sin(heading), np.zeros_like(heading), np.cos(heading)], axis=-1)
    path = np.cumsum(speed[:, None] * fwd, axis=0) * dt
    dist = np.cumsum(speed) * dt + 1e-6 * t  # distance travelled (strictly increasing, for lookups)
    path += np.array([rng_misc.uniform(-2, 2), 0.0, rng_misc.uniform(-2, 2)]) - path[pad]
    accel = np.gradient(_window(speed, int(0.1 * rate), "mean"), dt)

    run = _runness(speed)
    act = _activity(speed)
    duty = _duty(speed)
    # cadence follows the speed but lingers after a slow-down, so the closing steps of a stop come quickly
    half = int(0.45 * rate)
    recent = -_window(-speed, half, "min")
    recent = _window(np.concatenate([np.full(half, recent[0]), recent[:-half]]), half, "mean")
    pace = np.maximum(speed, recent)
    phase = rng_misc.uniform(0.0, 1.0) + np.cumsum(0.5 * _cadence(pace) * st.cadence) * dt  # cycles

    # --- feet: plants, stance rolls and swings -----------------------------------------------------
    feet = {}
    step_rng = np.random.default_rng(rng_misc.integers(2 ** 63))
    for side, sign, offset in (("Left", 1.0, 0.0), ("Right", -1.0, 0.5)):
        ph = phase - offset
        ks = np.arange(int(np.floor(ph[0])) - 1, int(np.floor(ph[-1])) + 3)
        # each step's duty factor from its mean speed over the stance (speed may change within a step)
        t_hs = np.interp(ks, ph, t)
        beta = _duty(np.interp(t_hs, t, speed))
        for _ in range(2):
            t_to = np.interp(ks + beta, ph, t)
            v_stance = (np.interp(t_to, t, dist) - np.interp(t_hs, t, dist)) / np.maximum(t_to - t_hs, 1e-6)
            beta = _duty(v_stance)
        # plant where the pelvis is a given fraction of the way (in distance) through the stance
        t_to = np.interp(ks + beta, ph, t)
        frac = _plant_fraction(v_stance)
        d_mid = np.interp(t_hs, t, dist) + frac * (np.interp(t_to, t, dist) - np.interp(t_hs, t, dist))
        t_mid = np.interp(d_mid, dist, t)
        v_mid = np.interp(t_mid, t, speed)
        r_k, a_k = _runness(v_mid), _activity(v_mid)
        yaw_mid = np.interp(t_mid, t, heading)
        width = (st.step_width * (1.0 - r_k) + 0.03 * r_k + 0.035 * (1.0 - a_k))
        jitter = step_rng.normal(0.0, 1.0, (len(ks), 3)) * a_k[:, None]
        lateral = sign * (width + 0.008 * jitter[:, 0])
        plant = np.stack([np.interp(t_mid, t, path[:, i]) for i in range(3)], axis=-1)
        plant += lateral[:, None] * np.stack([np.cos(yaw_mid), np.zeros_like(yaw_mid), -np.sin(yaw_mid)], -1)
        plant[:, 1] = _ANKLE_H
        foot_yaw = yaw_mid + sign * (st.toe_out * (1.0 - 0.5 * r_k) + 0.03 * jitter[:, 1])
        th_hs = a_k * np.radians(16.0 * (1.0 - r_k) + 5.0 * r_k) * np.clip(v_mid / 1.0, 0.3, 1.0)
        ph_to = a_k * np.radians(42.0 * (1.0 - r_k) + 48.0 * r_k) * np.clip(0.5 + 0.5 * v_mid / 1.2, 0.0, 1.0)
        s_ff = 0.15 * (1.0 - r_k) + 0.10 * r_k
        s_ho = 0.56 * (1.0 - r_k) + 0.38 * r_k

        # toe-off and heel-strike poses of each step, and the ankle velocity leaving the ground
        to_ankle = _ankle_on_plant(plant, foot_yaw, -ph_to)
        d_ankle = (to_ankle - _ankle_on_plant(plant, foot_yaw, -ph_to + 1e-4)) / -1e-4
        dp_ds = -2.0 * ph_to / (1.0 - s_ho)
        hs_ankle = _ankle_on_plant(plant, foot_yaw, th_hs)

        k = np.floor(ph).astype(np.int64) - ks[0]
        u = ph - np.floor(ph)
        b = beta[k]
        stance = u < b
        s = np.clip(u / b, 0.0, 1.0)
        w = np.clip((u - b) / (1.0 - b), 0.0, 1.0)
        k1 = k + 1

        # stance: heel rocker, foot flat, heel rise about the ball
        p_st = (th_hs[k] * (1.0 - _smooth(s / s_ff[k]))
                - ph_to[k] * np.clip((s - s_ho[k]) / (1.0 - s_ho[k]), 0.0, 1.0) ** 2)
        ank_st = _ankle_on_plant(plant[k], foot_yaw[k], p_st)

        # swing: Hermite from toe-off to the next heel strike, plus clearance and (running) heel kick
        # the foot travels forward over the first 90% of the swing and drops onto the heel in the rest
        tangent = (d_ankle * (dp_ds * (1.0 - beta) / beta)[:, None])[k]
        early = (0.93 + 0.02 * run)[:, None]
        w_h = np.clip(w / early[:, 0], 0.0, 1.0)
        ank_sw = _hermite(to_ankle[k], hs_ankle[k1], early * tangent, np.zeros_like(tangent), w_h)
        ank_sw[:, 1] = _hermite(to_ankle[k, 1], hs_ankle[k1, 1], tangent[:, 1], 0.0, w)
        # clearance grows with speed; a foot that moves only a little (starts, stops) lifts only a little
        stride = np.linalg.norm((plant[1:] - plant[:-1])[:, [0, 2]], axis=-1)
        moved = np.clip(np.concatenate([stride, [0.0]]) / 0.4, 0.0, 1.0)[k]
        lift = st.lift * moved * (0.05 + 0.035 * speed + 0.045 * run * speed)
        ank_sw[:, 1] += lift * (0.85 * _bump(w, 0.33 + 0.05 * run) + 0.15 * _bump(w, np.full_like(w, 0.72)))
        yaw_sw = foot_yaw[k] + (foot_yaw[k1] - foot_yaw[k]) * _smooth(w)
        back = -run * 0.07 * speed * _bump(w, np.full_like(w, 0.3))
        ank_sw += back[:, None] * np.stack([np.sin(yaw_sw), np.zeros_like(w), np.cos(yaw_sw)], -1)
        wm = 0.45
        p_mid = -np.radians(4.0 + 10.0 * run) * act
        p_a = _hermite(-ph_to[k], p_mid, (dp_ds * (1.0 - beta) / beta)[k] * wm, 0.0, np.clip(w / wm, 0, 1))
        p_b = p_mid + (th_hs[k1] - p_mid) * _smooth((w - wm) / (1.0 - wm))
        p_sw = np.where(w < wm, p_a, p_b)

        pitch = np.where(stance, p_st, p_sw)
        yaw = np.where(stance, foot_yaw[k], yaw_sw)
        ankle = np.where(stance[:, None], ank_st, ank_sw)
        # toes stay flat on the ground while the heel is up, then relax in the air
        toe_pitch = np.where(stance, np.maximum(p_st, 0.0), p_sw + ph_to[k] * (1.0 - _smooth(w / 0.35)))
        r_foot = _foot_rotation(yaw, pitch)
        r_toe = _foot_rotation(yaw, toe_pitch)
        # in the air, keep heel, ball and toe tip over the ground
        heel_y = ankle[:, 1] + _mv(r_foot, _HEEL)[:, 1]
        ball = ankle + _mv(r_foot, _BALL)
        tip_y = ball[:, 1] + _mv(r_toe, _TIP)[:, 1]
        raise_by = np.maximum.reduce([np.zeros_like(heel_y), -heel_y, (_BALL[1] + _ANKLE_H) - ball[:, 1],
                                      0.015 - tip_y])
        ankle[:, 1] += np.where(stance, 0.0, raise_by)
        feet[side] = dict(ankle=ankle, r_foot=r_foot, r_toe=r_toe, yaw=yaw, stance=stance,
                          stepping=np.where(stance, 0.0, moved))

    # the body moves with the feet: closing steps after a stop still shift the weight
    stepping = _window(np.maximum(feet["Left"]["stepping"], feet["Right"]["stepping"]), int(0.3 * rate), "mean")
    act = np.maximum(act, np.clip(1.6 * stepping, 0.0, 1.0))

    # --- pelvis ------------------------------------------------------------------------------------
    cyc = 2.0 * np.pi * phase
    mid = cyc - np.pi * duty  # zero at the middle of the left stance
    yaw_osc = -st.pelvis_turn * act * np.radians(2.0 + 1.8 * speed) * np.cos(cyc - 0.2)
    tilt = np.radians(4.0 + 5.0 * run) + 0.5 * st.lean + 0.02 * np.clip(accel, -3, 3)
    list_ = st.sway * act * np.radians(3.0 - 1.5 * run) * np.cos(mid)
    r_pelvis = _ry(heading + yaw_osc) @ _rx(tilt) @ _rz(list_)
    t_abs = t - t[0]
    sway = st.sway * (act * (0.024 * (1.0 - run) + 0.008 * run) * np.cos(mid - 0.2)
                      + (1.0 - act) * 0.012 * np.sin(2.0 * np.pi * 0.23 * t_abs + 1.3))
    side_dir = np.stack([np.cos(heading), np.zeros_like(t), -np.sin(heading)], axis=-1)
    root = path + sway[:, None] * side_dir

    h_walk = 0.942 - 0.012 * speed
    h_run = 0.905 - 0.01 * np.clip(speed - 2.2, 0.0, None)
    base = (1.0 - run) * h_walk + run * h_run - st.crouch + (1.0 - act) * 0.003 * np.sin(2 * np.pi * 0.3 * t_abs)
    bob = st.bob * act * ((1.0 - run) * (0.012 + 0.006 * speed) - run * 0.03) * np.cos(2.0 * mid)
    y_nom = base + bob
    # keep the pelvis low enough for both legs to reach their ankle targets with a nearly straight knee
    # (a swing leg gets some slack: when it is short of its target it reaches straight toward it)
    y_max = np.full_like(t, np.inf)
    for side, sign in (("Left", 1.0), ("Right", -1.0)):
        reach = 0.998 * (_THIGH + _SHIN) + np.where(feet[side]["stance"], 0.0, 0.025)
        off = _mv(r_pelvis, np.array([sign * _UPLEG[0], _UPLEG[1], _UPLEG[2]]))
        flat = np.linalg.norm((root + off - feet[side]["ankle"])[:, [0, 2]], axis=-1)
        y_max = np.minimum(y_max, feet[side]["ankle"][:, 1] + np.sqrt(np.clip(reach ** 2 - flat ** 2, 0.0, None))
                           - off[:, 1])
    half = int(round(0.07 * rate))
    y_lim = _window(_window(y_max, half, "min"), half, "mean")
    soft = 0.006
    gap = (y_nom - y_lim) / soft
    root[:, 1] = y_nom - soft * np.where(gap > 30, gap, np.log1p(np.exp(np.minimum(gap, 30))))

    # --- legs ----------------------------------------------------------------------------------------
    world = np.zeros((len(t), skel.n_joints, 3, 3))
    world[:] = np.eye(3)
    world[:, _J["Hips"]] = r_pelvis
    for side, sign in (("Left", 1.0), ("Right", -1.0)):
        f = feet[side]
        hip = root + _mv(r_pelvis, np.array([sign * _UPLEG[0], _UPLEG[1], _UPLEG[2]]))
        pole = np.stack([np.sin(f["yaw"]), np.zeros_like(t), np.cos(f["yaw"])], -1)
        upper, lower, _, _ = _two_bone(hip, f["ankle"], pole, _THIGH, _SHIN)
        world[:, _J[side + "UpLeg"]] = upper
        world[:, _J[side + "Leg"]] = lower
        world[:, _J[side + "Foot"]] = f["r_foot"]
        world[:, _J[side + "ToeBase"]] = f["r_toe"]

    # --- spine, neck and head --------------------------------------------------------------------------
    lean = (np.radians(3.0 + 9.0 * run) + st.lean + 0.045 * np.clip(accel, -3.0, 3.0)
            + act * np.radians(1.0 + 1.0 * run) * np.cos(2.0 * mid))
    turn_roll = -0.6 * np.arctan(speed * omega / 9.81)
    thorax_yaw = st.pelvis_turn * act * np.radians(2.0 + 2.2 * speed) * np.cos(cyc - 0.25)
    r_thorax = _ry(heading + thorax_yaw) @ _rx(lean) @ _rz(turn_roll - 0.35 * list_)
    spine_q = _quat_pow(matrix_to_quat(np.swapaxes(r_pelvis, -1, -2) @ r_thorax), 1.0 / 3.0)
    spine_m = quat_to_matrix(spine_q)
    look = 0.35 * np.clip(omega, -1.5, 1.5)
    r_head = _ry(heading + look) @ _rx(st.head_pitch + 0.02 * np.clip(accel, -3, 3)) @ _rz(0.3 * turn_roll)
    r_chest = r_pelvis @ spine_m @ spine_m @ spine_m
    neck_q = _quat_pow(matrix_to_quat(np.swapaxes(r_chest, -1, -2) @ r_head), 0.4)
    neck_m = quat_to_matrix(neck_q)

    # --- arms -------------------------------------------------------------------------------------------
    local = np.zeros((len(t), skel.n_joints, 3, 3))
    local[:] = np.eye(3)
    for j in ("Spine", "Spine1", "Spine2"):
        local[:, _J[j]] = spine_m
    local[:, _J["Neck"]] = neck_m
    local[:, _J["Head"]] = np.swapaxes(r_chest @ neck_m, -1, -2) @ r_head
    swing_amp = st.arm_swing * act * np.radians(6.0 + 8.0 * speed)
    mean_swing = np.radians(3.0) - np.radians(10.0) * run
    elbow_base = (1.0 - run) * np.radians(14.0 + 9.0 * speed) + run * np.radians(78.0 + 6.0 * (speed - 2.2))
    for side, sign, offset in (("Left", 1.0, 0.0), ("Right", -1.0, 0.5)):
        osc = np.cos(cyc - 2.0 * np.pi * (offset + 0.05))
        theta = mean_swing + swing_amp * osc  # positive: the arm back
        down = np.pi / 2 - st.arm_abduction - np.radians(4.0) * run
        local[:, _J[side + "Shoulder"]] = _ry(sign * 0.12 * theta) @ _rz(sign * np.radians(2.0) * act * osc)
        local[:, _J[side + "Arm"]] = _ry(sign * 0.35 * run * (theta - mean_swing)) @ _rx(theta) @ _rz(-sign * down)
        elbow = elbow_base + st.elbow - 0.45 * (theta - mean_swing)
        local[:, _J[side + "ForeArm"]] = _ry(-sign * np.clip(elbow, 0.05, 2.2))
        local[:, _J[side + "Hand"]] = _ry(-sign * np.radians(8.0)) @ _rz(-sign * np.radians(6.0))

    # legs back to local rotations
    for side in ("Left", "Right"):
        up, leg, foot, toe = (_J[side + n] for n in ("UpLeg", "Leg", "Foot", "ToeBase"))
        local[:, up] = np.swapaxes(r_pelvis, -1, -2) @ world[:, up]
        local[:, leg] = np.swapaxes(world[:, up], -1, -2) @ world[:, leg]
        local[:, foot] = np.swapaxes(world[:, leg], -1, -2) @ world[:, foot]
        local[:, toe] = np.swapaxes(world[:, foot], -1, -2) @ world[:, toe]
    local[:, 0] = r_pelvis

    keep = slice(pad, pad + n_out * sub, sub)
    quats = quat_continuous(matrix_to_quat(local[keep]), axis=0)
    trans = np.broadcast_to(skel.offsets, (n_out, skel.n_joints, 3)).copy()
    trans[:, 0] = root[keep]
    return Motion(skel, quats, trans, float(fps), name if name is not None else f"procedural_{seed}")


# ----------------------------------------------------------------------------------------------------
# Datasets and the command line


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip index of a dataset drawn with seed."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]) >> 1


def generate_dataset(out_dir: str | Path, n_clips: int, seconds: float, seed: int = 0, fps: float = 30.0,
                     progress: bool = True) -> list[Path]:
    """Write n_clips procedural BVH clips of seconds each to out_dir (created if needed), atomically.

    Clip i is generate_clip(clip_seed(seed, i), seconds, fps), written as procedural_<seed>_<i>.bvh.
    """
    return _write_dataset(out_dir, n_clips, seconds, seed, fps, progress)[0]


def _write_dataset(out_dir: str | Path, n_clips: int, seconds: float, seed: int, fps: float,
                   progress: bool) -> tuple[list[Path], np.ndarray]:
    """generate_dataset, also returning the root speed of every frame written."""
    if n_clips < 1:
        raise ValueError(f"n_clips must be at least 1, got {n_clips}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, speeds = [], []
    for i in with_progress(range(n_clips), progress, desc="procedural clips", unit="clip"):
        name = f"procedural_{seed}_{i:04d}"
        motion = generate_clip(clip_seed(seed, i), seconds, fps, name=name)
        path = out / f"{name}.bvh"
        write_bvh(path, motion)
        paths.append(path)
        speeds.append(root_speed(motion))
    return paths, np.concatenate(speeds)


def root_speed(motion: Motion) -> np.ndarray:
    """Horizontal root speed per frame (m/s), smoothed over a quarter second to remove the gait sway."""
    xz = motion.root_positions[:, [0, 2]]
    half = max(1, int(round(0.125 * motion.fps)))
    xz = np.stack([_window(xz[:, i], half, "mean") for i in range(2)], axis=-1)
    return np.linalg.norm(np.gradient(xz, axis=0), axis=-1) * motion.fps


_EXAMPLES = """examples:
  python -m trainer.procedural data/procedural
  python -m trainer.procedural data/procedural --clips 200 --seconds 60 --seed 0
  python -m trainer.procedural /tmp/proc --clips 4 --seconds 10 --fps 60
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.procedural",
        description="Write synthetic, licence-free locomotion clips (walk, jog, run, turns, starts and "
                    "stops) of a 22-joint humanoid as BVH files.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write the .bvh files into (created if needed)")
    parser.add_argument("--clips", type=int, default=20, help="number of clips (default 20)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each clip in seconds (default 30)")
    parser.add_argument("--seed", type=int, default=0,
                        help="dataset seed; the same seed writes the same files (default %(default)s)")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second (default 30)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line: write a procedural BVH dataset and print a one-line summary."""
    parser = build_parser()
    args = parse(parser, argv)
    if args.clips < 1:
        parser.exit(2, f"error: --clips must be at least 1, got {args.clips}\n")
    if args.seed < 0:
        parser.exit(2, f"error: --seed must be 0 or more, got {args.seed}\n")
    if not (args.seconds > 0 and np.isfinite(args.seconds)):
        parser.exit(2, f"error: --seconds must be positive, got {args.seconds}\n")
    if not (0 < args.fps <= 1000):
        parser.exit(2, f"error: --fps must be in (0, 1000], got {args.fps}\n")
    try:
        check_memory(args.seconds * args.fps * CLIP_BYTES_PER_FRAME,
                     f"--seconds {args.seconds:g} at --fps {args.fps:g}")
    except UsageError as e:
        return fail(e)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        parser.exit(2, f"error: {out} exists and is not a folder\n")
    try:
        paths, speeds = _write_dataset(out, args.clips, args.seconds, args.seed, args.fps, not args.quiet)
    except OSError as e:
        parser.exit(2, f"error: cannot write to {out}: {e.strerror or e}\n")
    bands = {"still": speeds < 0.2, "walk": (speeds >= 0.2) & (speeds < 1.8),
             "jog": (speeds >= 1.8) & (speeds < 2.7), "run": speeds >= 2.7}
    share = ", ".join(f"{k} {100 * m.mean():.0f}%" for k, m in bands.items())
    print(f"wrote {len(paths)} clips, {len(paths) * args.seconds / 60:.1f} min at {args.fps:g} fps to {out}; "
          f"root speed p5/p50/p95 {np.percentile(speeds, 5):.2f}/{np.median(speeds):.2f}/"
          f"{np.percentile(speeds, 95):.2f} m/s ({share})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
