"""Foot locking: planted feet held still in the world, each leg solved with analytic two-bone IK.

One function, lock_step, does a frame for a batch of characters. It is written against an array namespace
`xp` (numpy or torch: the calls both share) and constant arrays from a FootLockRig, so it runs in two places:
trainer/foot_lock_graph.py exports it into the model's step graph (decoder.onnx), where one onnxruntime call
per step decodes the pose and locks its feet, and runtime.controller runs it in numpy for characters put on a
start frame and for model directories exported before the lock was part of the graph. It reads only the raw
pose (local rotations, root position, contacts) and changes what is shown, never what the model is fed next.

Per leg (found from the layout's contact joints: the topmost contact joint of a chain is the ankle, its
parent the knee, the knee's parent the hip; the lowest one, the toe when there is one, is the held joint, the
pin), with state per character and leg:

- Lock: when the leg's contact (the largest of its contact joints' values) rises to `contact_on`, or when the
  pin is planted by the rule runtime.contacts measures with (within CONTACT_HEIGHT_M of its planted height,
  moving vertically slower than CONTACT_VERTICAL_MPS), so a foot the model lands before its contact turns on
  is held from its first still frame. The foot is held where it was shown the frame before, so the frame a
  lock starts does not slide either. Release when the contact falls below `contact_off` (hysteresis), or
  when the model lifts the pin RELEASE_RISE_M above where it was planted (the model's contacts lag behind
  toe-off).
- Hold: while locked the pin stays where it was on the ground plane and the foot keeps its heading; its
  height follows the model's. The foot's pitch about the pin follows the model's too, except near the flat
  foot: there the model's heel wobbles, and a held toe would turn that into heel sliding, so within
  `heel_band` of flat (the ankle's planted height over the pin's) the shown heel eases from flat onto the
  model's (at most 0.26 x heel_band apart).
- Solve: hip and knee are turned by analytic two-bone IK so the ankle reaches its held place, in the bend
  plane of the model's own knee (the foot's direction decides only for a leg straight to within STRAIGHT_M),
  so the knee never flips; the ankle's local rotation is rewritten so the foot keeps its world orientation.
- Release: the foot eases onto the model's over `blend_frames`: a cubic in the held offset and turn, from
  where it was last held to the model's foot, arriving at rest relative to it, lifted along a step's arc
  (`step_lift` x the distance it catches up, and at least `step_height` or that distance, whichever is
  less), so a foot the model slid far is re-planted by a step instead of gliding over the ground.
- Reach: past `reach` x (thigh + shin) the hip-to-ankle distance a lock asks for is softly limited (never
  below the model's own), so the leg neither stretches nor snaps straight; a lock that the limit would keep
  more than RELEASE_SLIP_M off its place (over-extension) is released early, easing out the same way.
  A lock released early or by a lift is not taken again until its contact drops or its fade has ended.
- Floor: no contact joint of a leg is shown below `floor_m` (the world ground, y = 0 by default).

The output's positions are the forward kinematics of its local rotations, and bone lengths are the skeleton's.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from types import SimpleNamespace

import numpy as np

from .contacts import CONTACT_HEIGHT_M, CONTACT_VERTICAL_MPS
from .features import FeatureLayout
from .posefk import Kinematics, forward_kinematics, kinematic_constants, quat_matrices
from .skeleton import Skeleton

_DEBUG = None  # DEBUG-REMOVE
VERSION = 1  # of lock_step's state and settings layout; model.json's foot_lock.version must match it
RELEASE_SLIP_M = 0.01  # a lock whose foot the reach limit would move further than this is released
RELEASE_RISE_M = 0.03  # a lock whose held joint the model lifts this far above where it was planted is released
STRAIGHT_M = 0.01  # a knee closer than this to its hip-ankle line bends toward the foot rather than its own offset
_TOE_NAMES = ("toe", "ball")

# Per character and leg, the lock's state: named slices of its last axis. All zeros is a leg that holds nothing.
STATE = {"locked": 0, "disarmed": 1, "left": 2, "weight": 3, "ground": 4, "stride": 5, "held": slice(6, 9),
         "fade_from": slice(9, 12), "fade_speed": slice(12, 15), "was_pin": slice(15, 18),
         "was_heading": slice(18, 20), "valid": 20}
STATE_WIDTH = 21
# held, fade_from and fade_speed: the foot moved by (x, z) metres and turned by an angle about the vertical
# through the pin, relative to the model's foot. left: the share of a release's fade still to go (1 -> 0).


@dataclass(frozen=True)
class FootLockSettings:
    """The foot lock's thresholds (see the module docstring for what each does)."""

    contact_on: float = 0.5  # a leg locks when its contact rises to this
    contact_off: float = 0.3  # and releases when it falls below this
    blend_frames: int = 6  # frames over which a released lock's correction fades out
    reach: float = 0.97  # fraction of thigh + shin past which a lock's target is softly limited
    step_lift: float = 0.25  # a release lifts the foot by this times the distance it catches up, at mid-fade
    step_height: float = 0.03  # and by at least this much (metres), or that distance when it is shorter
    heel_band: float = 0.03  # metres of heel rise or drop from flat within which the shown heel eases to flat
    floor_m: float = 0.0  # height below which no contact joint is shown
    planted_m: tuple[float, ...] | None = None  # each contact joint's height over floor_m when planted (None: the model's)

    def __post_init__(self) -> None:
        if not self.contact_off < self.contact_on:
            raise ValueError(f"foot lock: contact_off ({self.contact_off}) must be below contact_on ({self.contact_on})")
        if int(self.blend_frames) != self.blend_frames or self.blend_frames < 1:
            raise ValueError(f"foot lock: blend_frames must be a whole number of at least 1, got {self.blend_frames}")
        if not 0.5 <= self.reach < 1.0:
            raise ValueError(f"foot lock: reach must be in [0.5, 1), got {self.reach}")
        if not 0.0 <= self.step_lift <= 1.0:
            raise ValueError(f"foot lock: step_lift must be in [0, 1], got {self.step_lift}")
        for name in ("step_height", "heel_band"):
            if not 0.0 <= getattr(self, name) <= 0.2:
                raise ValueError(f"foot lock: {name} must be in [0, 0.2] metres, got {getattr(self, name)}")
        if not np.isfinite(self.floor_m):
            raise ValueError("foot lock: floor_m must be finite")
        if self.planted_m is not None and not np.all(np.isfinite(self.planted_m)):
            raise ValueError("foot lock: planted_m must be finite heights")


# The settings as lock_step reads them: one float vector, a graph input, so settings change without re-export.
_SCALARS = ("contact_on", "contact_off", "per_frame", "blend_frames", "reach", "step_lift", "step_height",
            "heel_band", "floor_m", "near_m", "slow_m", "slip_m", "rise_m", "straight_m")
SETTING = {name: k for k, name in enumerate(_SCALARS)}  # then one planted height per contact joint


@dataclass(frozen=True)
class Leg:
    """One leg: hip, knee and ankle joints, the joint held still (the toe when there is one), and the leg's
    contact joints (the ankle first) with their columns in the contacts block."""

    hip: int
    knee: int
    ankle: int
    pin: int
    feet: tuple[int, ...]
    columns: tuple[int, ...]


def find_legs(skeleton: Skeleton, layout: FeatureLayout) -> list[Leg]:
    """The legs of a skeleton: each chain of the layout's contact joints, with the two joints above it."""
    contact = [skeleton.index(n) for n in layout.contact_joints]
    groups: dict[int, list[int]] = {}
    for col, j in enumerate(contact):
        top, k = j, j
        while k > 0:
            k = int(skeleton.parents[k])
            if k in contact:
                top = k
        groups.setdefault(top, []).append(col)
    legs = []
    for ankle, cols in sorted(groups.items()):
        knee = int(skeleton.parents[ankle])
        hip = int(skeleton.parents[knee]) if knee > 0 else 0
        if knee <= 0 or hip <= 0:
            continue  # no thigh and shin above this contact joint: nothing to solve
        cols.sort(key=lambda c: contact[c] != ankle)
        feet = tuple(contact[c] for c in cols)
        toes = [j for j in feet[1:] if any(t in skeleton.names[j].lower() for t in _TOE_NAMES)]
        legs.append(Leg(hip, knee, ankle, (toes or list(feet[1:]) or [ankle])[0], feet, tuple(cols)))
    return legs


def settings_vector(settings: FootLockSettings, planted: np.ndarray, fps: float) -> np.ndarray:
    """lock_step's settings input (float32) from settings, the contact joints' planted heights and the fps."""
    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    values.update(per_frame=1.0 / settings.blend_frames, near_m=CONTACT_HEIGHT_M, slow_m=CONTACT_VERTICAL_MPS / fps,
                  slip_m=RELEASE_SLIP_M, rise_m=RELEASE_RISE_M, straight_m=STRAIGHT_M)
    heights = np.asarray(planted if settings.planted_m is None else settings.planted_m, np.float64).reshape(-1)
    if heights.shape != np.shape(planted):
        raise ValueError(f"foot lock: planted_m must hold {len(planted)} heights (one per contact joint), "
                         f"got {heights.size}")
    return np.concatenate([[values[name] for name in _SCALARS], heights]).astype(np.float32)


def contact_heights(frames: np.ndarray, layout: FeatureLayout) -> np.ndarray:
    """Heights (N, C) of the contact joints in raw feature frames (..., F)."""
    start = layout.slice("positions").start
    columns = [start + 3 * layout.joint_names.index(n) + 1 for n in layout.contact_joints]
    return np.asarray(frames)[..., columns].reshape(-1, len(columns))


def planted_heights(meta: dict, layout: FeatureLayout, start_frames: np.ndarray) -> np.ndarray:
    """Each contact joint's height when planted: model.json's foot_lock.planted_m (the training data's, as
    runtime.contacts.foot_floor finds it) or, for models exported without it, the lowest in the start frames."""
    stored = (meta.get("foot_lock") or {}).get("planted_m")
    if stored is not None:
        return np.asarray(stored, np.float64)
    return contact_heights(start_frames, layout).min(0).astype(np.float64)


def idle_lock_inputs(model, n: int) -> dict[str, np.ndarray]:
    """The foot-lock inputs of a MotionModel's decoder for n characters that lock nothing ({} when it has none)."""
    if not model.foot_lock_in_graph:
        return {}
    vector = settings_vector(FootLockSettings(), planted_heights(model.meta, model.layout, model.start_frames),
                             model.fps)
    legs = len(find_legs(model.skeleton, model.layout))
    return {"foot_lock_state": np.zeros((n, legs, STATE_WIDTH), np.float32),
            "foot_lock_enabled": np.zeros(n, bool), "foot_lock_settings": vector}


# [cos a, sin a, 1] @ _TURN = a turn about +Y by a, flattened; cos(a * _COS_SIN_ONE[0] - _COS_SIN_ONE[1]) makes it.
_COS_SIN_ONE = np.array([[1.0, 1.0, 0.0], [0.0, np.pi / 2, 0.0]])
_TURN = np.zeros((3, 9))
_TURN[0, [0, 8]], _TURN[1, 2], _TURN[1, 6], _TURN[2, 4] = 1.0, 1.0, -1.0, 1.0
# The IK's quaternion factors, five per joint (hip, knee, ankle), applied last to first. Their axes: rows of
# [m, n, line, model's n] seen from hip's parent (0-3), hip (4-7) and knee (8-11), then the knee's view of
# +Y (12) and of the heel's pitch axis (13); their angles from [swing, hip bend, knee bend, held turn, swivel,
# heel pitch], halved for quaternions.
_FACTOR_AXES = np.array([0, 1, 2, 0, 0, 7, 0, 0, 0, 0, 10, 9, 8, 13, 12])
_FACTOR_SPINS = np.zeros((6, 15))
for _col, _terms in {0: [(0, 1)], 1: [(1, 1)], 2: [(4, 1)], 5: [(2, 1)], 10: [(4, -1)], 11: [(1, -1), (2, -1)],
                     12: [(0, -1)], 13: [(5, 1)], 14: [(3, 1)]}.items():
    for _row, _sign in _terms:
        _FACTOR_SPINS[_row, _col] = 0.5 * _sign
# a @ _LEFT_PRODUCT, reshaped (4, 4), is the matrix L(a) with L(a) @ b = a (x) b, the Hamilton product (x, y, z, w).
_LEFT_PRODUCT = np.zeros((4, 16))
for _r, _row in enumerate([[(3, 0, 1), (0, 3, 1), (1, 2, 1), (2, 1, -1)], [(3, 1, 1), (1, 3, 1), (2, 0, 1), (0, 2, -1)],
                           [(3, 2, 1), (2, 3, 1), (0, 1, 1), (1, 0, -1)], [(3, 3, 1), (0, 0, -1), (1, 1, -1), (2, 2, -1)]]):
    for _i, _j, _v in _row:
        _LEFT_PRODUCT[_i, 4 * _r + _j] = _v
# axis @ _SKEW = the cross-product matrix of axis, flattened (the rig holds its negative: v @ it @ w = v x w).
_SKEW = np.zeros((3, 9))
_SKEW[2, 1], _SKEW[1, 2], _SKEW[2, 3], _SKEW[0, 5], _SKEW[1, 6], _SKEW[0, 7] = -1, 1, 1, -1, -1, 1


class FootLockRig:
    """The constant arrays lock_step needs for one skeleton and layout (numpy; `namespace` converts them)."""

    def __init__(self, skeleton: Skeleton, layout: FeatureLayout) -> None:
        self.legs = legs = find_legs(skeleton, layout)
        self.n_legs, self.n_joints, self.n_contacts = len(legs), skeleton.n_joints, len(layout.contact_joints)
        count, j = len(legs), skeleton.n_joints
        width = max([len(leg.feet) for leg in legs], default=1)
        # The raw pose's FK is needed only for the legs' joints and what they hang from.
        points = [[g.hip, g.knee, g.ankle, g.pin] + list(g.feet) for g in legs]
        needed = {0}
        for row in points:
            for joint in row:
                while joint > 0 and joint not in needed:
                    needed.add(joint)
                    joint = int(skeleton.parents[joint])
        chain = np.array(sorted(needed), np.int64)
        at = {int(joint): k for k, joint in enumerate(chain)}
        legs_fk, full_fk = Kinematics(skeleton.subset(chain.tolist()), "legs_"), Kinematics(skeleton, "full_")
        self.doubling = {"legs_doubling": legs_fk.doubling, "full_doubling": full_fk.doubling}
        a: dict[str, np.ndarray] = {**legs_fk.arrays, **full_fk.arrays, **kinematic_constants(), "chain": chain}
        # Legs with fewer contact joints repeat their ankle: a copy changes neither the contact's max nor the floor.
        a["points"] = np.array([[at[p] for p in row + [row[2]] * (width - len(row) + 4)] for row in points],
                               np.int64).reshape(count, 4 + width)
        a["columns"] = np.array([list(g.columns) + [g.columns[0]] * (width - len(g.columns)) for g in legs],
                                np.int64).reshape(count, width)
        contact = [skeleton.index(n) for n in layout.contact_joints]
        # Settings rows of each leg's planted heights: its pin's and its ankle's.
        a["planted_rows"] = len(_SCALARS) + np.array(
            [[contact.index(g.pin) if g.pin in contact else contact.index(g.ankle), contact.index(g.ankle)]
             for g in legs], np.int64).reshape(count, 2)
        parent = legs_fk.arrays["legs_parent"]
        a["frames"] = np.array([[parent[at[g.hip]], at[g.hip], at[g.knee], at[g.ankle]] for g in legs],
                               np.int64).reshape(count, 4)
        solved = np.array([[g.hip, g.knee, g.ankle] for g in legs], np.int64).reshape(-1)
        a["solved"] = solved
        # shown = raw * keep + place @ solved quaternions, so that no element is assigned in place.
        a["keep"] = np.ones((j, 1))
        a["keep"][solved] = 0.0
        a["place"] = np.zeros((j, len(solved)))
        a["place"][solved, np.arange(len(solved))] = 1.0
        lengths, rest = skeleton.bone_lengths(), skeleton.rest_positions()
        thigh, shin = lengths[[g.knee for g in legs]], lengths[[g.ankle for g in legs]]
        a["thigh"], a["span"] = thigh, thigh + shin
        a["shortest"], a["longest"] = (np.abs(thigh - shin) + 1e-9)[:, None], (thigh + shin - 1e-9)[:, None]
        # Law of cosines, (n, L, now/wanted, hip/knee): (d^2 * sign + top) / (d * bottom + bottom_add); at the hip
        # (d^2 + t^2 - s^2) / (2 t d), at the knee (t^2 + s^2 - d^2) / (2 t s).
        a["cos_sign"] = np.array([1.0, -1.0])
        a["cos_top"] = np.stack([thigh * thigh - shin * shin, thigh * thigh + shin * shin], -1)[:, None, :]
        a["cos_bottom"] = np.stack([2.0 * thigh, 0.0 * thigh], -1)[:, None, :]
        a["cos_bottom_add"] = np.stack([0.0 * thigh, 2.0 * thigh * shin], -1)[:, None, :]
        # The foot's direction in the ankle's frame (at rest all local rotations are identity) and its length.
        foot, foot_length = np.zeros((count, 3, 1)), np.zeros(count)
        for i, g in enumerate(legs):
            kids = skeleton.children[g.ankle]
            rel = rest[g.pin] - rest[g.ankle] if g.pin != g.ankle else (
                skeleton.offsets[kids[0]] if kids else np.nan_to_num(skeleton.end_offsets[g.ankle]))
            foot_length[i] = np.linalg.norm(rel)
            foot[i, :, 0] = rel / max(foot_length[i], 1e-9)
        a["foot"] = foot
        # stride = sqrt(held^2 @ this): the offset, and the turn times the foot's length.
        a["stride_weights"] = np.stack([np.ones(count), np.ones(count), foot_length ** 2], -1)
        a.update(cos_sin_one=_COS_SIN_ONE, turn=_TURN, factor_axes=_FACTOR_AXES, factor_spins=_FACTOR_SPINS,
                 left_product=_LEFT_PRODUCT, skew=-_SKEW, ground3=np.array([[1.0, 0, 0], [0, 0, 1]]), sin_cos=np.array([np.pi / 2, 0.0]), up=np.array([0.0, 1.0, 0.0]))
        self.arrays = a

    def namespace(self, convert=lambda x: x) -> SimpleNamespace:
        """The arrays as attributes, each passed through convert (e.g. to torch tensors), and the doubling names."""
        return SimpleNamespace(**{k: convert(v) for k, v in self.arrays.items()}, **self.doubling)


def _dot(a, b):
    return (a * b).sum(-1)


def _norm(a):
    return ((a * a).sum(-1)) ** 0.5


def _atan2(xp, y, x, r):
    """The angle of (x, y) with r = |(x, y)|, for angles away from +-pi (the half-angle form: exact near 0)."""
    return 2.0 * xp.arctan(y / xp.clip(r + x, 1e-12, None))


def lock_step(xp, k, rotations, root, contacts, state, enabled, settings):
    """One frame of characters through their foot locks.

    rotations (B, J, 4) the raw local rotations, root (B, 3) the root positions, contacts (B, C), state (B, L,
    STATE_WIDTH) the locks' state, enabled (B,) bool, settings (K,) from settings_vector; k: a FootLockRig's
    namespace in xp's arrays. Returns the shown local rotations (B, J, 4), their world positions (B, J, 3) and the
    next state (B, L, STATE_WIDTH). Every step is an array operation on the whole batch: it exports to ONNX.
    """
    n_legs = k.points.shape[0]
    st = {name: state[..., at] for name, at in STATE.items()}
    s = {name: settings[at] for name, at in SETTING.items()}
    on = enabled[:, None]  # (B, 1)

    # The raw pose's legs: world rotations (hip's parent, hip, knee, ankle) and positions.
    world, pos = forward_kinematics(xp, k, "legs_", quat_matrices(xp, rotations[:, k.chain], k.pair_a, k.pair_b,
                                                                  k.quat_products), root)
    frames = world[:, k.frames]  # (B, L, 4, 3, 3)
    points = pos[:, k.points]  # (B, L, 4 + F, 3): hip, knee, ankle, pin, contact joints
    hip, knee, ankle, pin = points[:, :, 0], points[:, :, 1], points[:, :, 2], points[:, :, 3]
    pin_y = pin[..., 1]
    direction = (frames[:, :, 3] @ k.foot)[..., 0]
    heading = direction[..., 0::2] / xp.clip(_norm(direction[..., 0::2]), 1e-12, None)[..., None]  # (x, z)

    # What the model's foot did since the last frame: its pin moved, its heading turned (none after a reset).
    valid = st["valid"] > 0.5
    was_pin, was_heading = st["was_pin"], st["was_heading"]
    sin_turn = heading[..., 0] * was_heading[..., 1] - heading[..., 1] * was_heading[..., 0]
    cos_turn = _dot(heading, was_heading)
    moved = xp.concatenate([(pin - was_pin)[..., 0::2], _atan2(xp, sin_turn, cos_turn, 1.0)[..., None]], -1) \
        * valid[..., None]

    # Locks, with hysteresis. A foot the rule planted locks too; a lock ends when the model clearly lifts its pin
    # (its contacts lag behind toe-off); such a release, like an early one, re-arms once the contact drops or
    # the fade ends.
    planted = settings[k.planted_rows]  # (L, 2): the pin's and the ankle's planted heights
    contact = xp.amax(contacts[:, k.columns], -1)
    was = st["locked"] > 0.5
    left = xp.clip(st["left"] - s["per_frame"], 0.0, None)
    armed = (st["disarmed"] < 0.5) | (contact < s["contact_off"]) | (left <= 0.0)
    near = (pin_y - s["floor_m"] - planted[:, 0] < s["near_m"]) & (xp.abs(pin_y - was_pin[..., 1]) < s["slow_m"]) & valid
    locked = (contact >= s["contact_off"]) & (was | (armed & ((contact >= s["contact_on"]) | near))) & on
    ground = xp.where(locked & ~was, pin_y, st["ground"])
    lifted = locked & (pin_y - ground > s["rise_m"])
    locked = locked & ~lifted
    disarmed = ~armed | lifted
    released = was & ~locked

    # A held foot stays where it was shown (a lock taken now: where it was shown last frame). A released one
    # eases onto the model's foot over blend_frames from where it was last held: a cubic Hermite in the held
    # offset, arriving at rest relative to the model (h00 and h10 of the fade, from the share left).
    fade_from = xp.where(released[..., None], st["held"], st["fade_from"])
    fade_speed = xp.where(released[..., None], 0.0 * moved, st["fade_speed"])
    left = xp.where(released, 1.0 - s["per_frame"], left)
    done = 1.0 - left
    ease = 1.0 - done * done * (1.0 + 2.0 * left)
    held = xp.where(locked[..., None], st["held"] - moved,
                    fade_from * ease[..., None] + fade_speed * (s["blend_frames"] * done * left * left)[..., None])
    weight = xp.where(locked, 1.0, ease)
    stride_now = ((fade_from * fade_from * k.stride_weights).sum(-1)) ** 0.5
    stride = xp.where(released, stride_now, st["stride"])

    # The ankle's target: the model's foot turned about the pin as held, pitched near flat (heel band), moved as
    # held, lifted over the floor and, while a release eases, along a step's arc.
    turn = (xp.cos(held[..., 2:] * k.cos_sin_one[0] - k.cos_sin_one[1]) @ k.turn).reshape(-1, n_legs, 3, 3)
    d = ankle - pin
    v = (turn @ d[..., None])[..., 0]
    e, flat = v[..., 1], _norm(v[..., 0::2])
    rise = e - (planted[:, 1] - planted[:, 0])
    u = xp.clip(xp.abs(rise) / xp.clip(s["heel_band"], 1e-6, None), 0.0, 1.0)
    e2 = e - (weight * on) * rise * (1.0 - u * u * (3.0 - 2.0 * u))
    size = _norm(v)
    e2 = xp.clip(e2, -0.99 * size, 0.99 * size)
    flat = xp.clip(flat, 1e-9, None)
    flat2 = (size * size - e2 * e2) ** 0.5
    pitch = xp.arctan(e / flat) - xp.arctan(e2 / flat2)  # about k = up x v: a positive pitch lowers the heel
    scale = flat2 / flat
    target = pin + xp.stack([v[..., 0] * scale, e2, v[..., 2] * scale], -1)
    # Contact joints' shown heights: their offsets from the pin pitched about k (a turn about +Y keeps heights).
    w = points[:, :, 4:] - pin[:, :, None]
    along = _dot(w[..., 0::2], d[..., None, 0::2]) / flat[..., None]
    heights = pin_y[..., None] + w[..., 1] * xp.cos(pitch)[..., None] - along * xp.sin(pitch)[..., None]
    floor = xp.clip(s["floor_m"] - xp.amin(heights, -1), 0.0, None) * on
    arc = done * left * ~locked
    lift = xp.maximum(s["step_lift"] * stride, xp.clip(stride, None, s["step_height"])) * (4.0 * arc) ** 2
    target = target + (held[..., :2] @ k.ground3) + (floor + lift)[..., None] * k.up

    # Reach: past reach x span the distance asked of the leg is softly limited, never below the model's own; a
    # lock the limit would keep more than RELEASE_SLIP_M off its place lets go and eases out from there.
    legs = xp.stack([ankle - hip, target - hip], -2)  # now, wanted
    have_need = _norm(legs)
    have, need = have_need[..., 0], have_need[..., 1]
    soft, room = s["reach"] * k.span, (1.0 - s["reach"]) * k.span
    limit = soft + room * (1.0 - xp.exp(-xp.clip(need - soft, 0.0, None) / room))
    reach = xp.minimum(need, xp.maximum(limit, have))
    early = locked & (need - reach > s["slip_m"])
    locked = locked & ~early
    disarmed = disarmed | early
    held = held + xp.concatenate([((reach / need - 1.0)[..., None] * legs[..., 1, 0::2]), 0.0 * held[..., 2:]], -1) \
        * early[..., None]
    fade_from = xp.where(early[..., None], held, fade_from)
    fade_speed = xp.where(early[..., None], -moved, fade_speed)
    left = xp.where(early, 1.0, left)
    stride = xp.where(early, ((held * held * k.stride_weights).sum(-1)) ** 0.5, stride)

    if _DEBUG is not None:  # DEBUG-REMOVE
        _DEBUG.update(locals())  # DEBUG-REMOVE
    # Two-bone IK in the plane of the model's knee: hip and knee turn about its normal n to give the leg the
    # length asked for, then both swing about m, from the ankle's direction to the target's.
    lengths = xp.minimum(xp.maximum(xp.stack([have, reach], -1), k.shortest), k.longest)
    cosines = ((lengths * lengths)[..., None] * k.cos_sign + k.cos_top) / (lengths[..., None] * k.cos_bottom
                                                                       + k.cos_bottom_add)
    angles = xp.arccos(xp.clip(cosines, -1.0, 1.0))  # (B, L, now/wanted, hip/knee)
    # Planes, as normals: of the model's knee (line x knee), of the pole, of the swing (line x target). The pole
    # is the model's knee; where the leg must bend further out than the model's knee is (a nearly straight leg,
    # whose bend direction is noise), the foot's direction makes up the difference. The leg first swivels about
    # the hip-ankle line from the model's plane into the pole's (the ankle stays, the solve stays exact), then
    # bends in it and swings. A leg asked for no change keeps the model's pose.
    crosses = xp.stack([knee - hip, direction, legs[..., 1, :]], -2) \
        @ (legs[..., 0, :] @ k.skew).reshape(-1, n_legs, 3, 3)  # line x knee, line x foot, line x target
    bent = _norm(crosses[..., 0, :]) / have  # the knee's distance to the line
    out = xp.clip(k.thigh * xp.sin(angles[..., 1, 0]), s["straight_m"], None)  # how far out the knee must go
    pole = crosses[..., 0, :] + xp.clip(out - bent, 0.0, None)[..., None] * crosses[..., 1, :]
    crosses = xp.stack([crosses[..., 0, :], pole, crosses[..., 2, :]], -2)
    sizes = _norm(crosses)
    normals = crosses / xp.clip(sizes, 1e-12, None)[..., None]
    model_n = xp.where((sizes[..., :1] > 1e-12), normals[..., 0, :], normals[..., 1, :])
    pole_n, line = normals[..., 1, :], legs[..., 0, :] / have[..., None]
    across = (pole_n[..., None, :] @ (model_n @ k.skew).reshape(-1, n_legs, 3, 3))[..., 0, :]  # model_n x pole_n
    asked = xp.clip(_norm(target - ankle) / 1e-3, None, 1.0)
    swivel = _atan2(xp, _dot(across, line), _dot(model_n, pole_n), 1.0) * asked
    swing = _atan2(xp, sizes[..., 2], _dot(legs[..., 0, :], legs[..., 1, :]), have * need)
    # The new local rotations are the old ones turned by these factors, about axes seen from the joint's parent
    # (hip's parent, hip, knee): the hip by the swing, its bend and the swivel; the knee by its bend about the
    # model's knee axis; the ankle back by all of the leg's turn, then by the heel's pitch and the held turn.
    axis = xp.stack([v[..., 2], 0.0 * e, -v[..., 0]], -1) / flat[..., None]  # up x v, the heel's pitch axis
    vectors = xp.stack([normals[..., 2, :], normals[..., 1, :], line, model_n], -2)
    axes = (vectors[:, :, None] @ frames[:, :, :3]).reshape(-1, n_legs, 12, 3)
    axes = xp.concatenate([axes, frames[:, :, 2, 1:2], axis[:, :, None] @ frames[:, :, 2]], 2)[:, :, k.factor_axes]
    spins = xp.stack([swing, angles[..., 1, 0] - angles[..., 0, 0], angles[..., 1, 1] - angles[..., 0, 1],
                      held[..., 2], swivel, pitch], -1) @ k.factor_spins
    half = xp.cos(spins[..., None] - k.sin_cos)  # sin, cos of half the angle
    factors = (xp.concatenate([axes * half[..., :1], half[..., 1:]], -1) @ k.left_product).reshape(-1, n_legs, 3, 5, 4, 4)
    turned = factors[..., 0, :, :] @ factors[..., 1, :, :] @ factors[..., 2, :, :] @ factors[..., 3, :, :] \
        @ factors[..., 4, :, :] @ rotations[:, k.solved].reshape(-1, n_legs, 3, 4, 1)
    shown = rotations * k.keep + k.place @ turned.reshape(-1, 3 * n_legs, 4)
    positions = forward_kinematics(xp, k, "full_", quat_matrices(xp, shown, k.pair_a, k.pair_b, k.quat_products),
                                   root)[1]

    flags = xp.where(xp.stack([locked, disarmed], -1), 1.0, 0.0)
    state = xp.concatenate([flags, xp.stack([left, weight, ground, stride], -1), held, fade_from, fade_speed, pin,
                            heading, 0.0 * left[..., None] + 1.0], -1)
    return shown, positions, state
