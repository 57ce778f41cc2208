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

- Lock: when the leg's contact (the largest of its contact joints' values) rises to `contact_on`, or, once it
  is past `contact_off`, when the pin is planted by the rule runtime.contacts measures with (within
  CONTACT_HEIGHT_M of its planted height, moving vertically slower than CONTACT_VERTICAL_MPS), so a foot the
  model lands before its contact is on is held from its first still frame. The foot is held where it was shown
  the frame before, so the frame a lock starts does not slide either. Release when the contact falls below
  `contact_off` (hysteresis), or when the model lifts the pin RELEASE_RISE_M above where it was planted (the
  model's contacts lag behind toe-off).
- Hold: while locked the pin stays where it was on the ground plane and the foot keeps its heading; its
  height follows the model's. The foot's pitch about the pin follows the model's too, except near the flat
  foot: there the model's heel wobbles, and a held toe would turn that into heel sliding, so within
  `heel_band` of flat (the ankle's planted height over the pin's) the shown heel eases from flat onto the
  model's (at most 0.26 x heel_band apart).
- Solve: hip and knee are turned by analytic two-bone IK so the ankle reaches its held place, in the bend
  plane of the model's own knee (tilted towards the foot's where a nearly straight leg must bend further out
  than its knee is, by STRAIGHT_M at least), never twisting the leg about its hip-ankle line; the ankle's local
  rotation is rewritten so the foot keeps its world orientation.
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
from .posefk import PoseKinematics, quat_matrices
from .skeleton import Skeleton

VERSION = 1  # of lock_step's state and settings layout; model.json's foot_lock.version must match it
RELEASE_SLIP_M = 0.01  # a lock whose foot the reach limit would move further than this is released
RELEASE_RISE_M = 0.03  # a lock whose held joint the model lifts this far above where it was planted is released
STRAIGHT_M = 0.01  # a knee closer than this to its hip-ankle line bends toward the foot rather than its own offset
_TOE_NAMES = ("toe", "ball")

# Per character and leg, the lock's state: named slices of its last axis. All zeros is a leg that holds nothing.
STATE = {"locked": 0, "disarmed": 1, "left": 2, "weight": 3, "ground": 4, "stride": 5, "held": slice(6, 9),
         "fades": slice(9, 15), "was_pin": slice(15, 18), "was_heading": slice(18, 20), "valid": 20}
STATE_WIDTH = 21
# held: the foot moved by (x, z) metres and turned by an angle about the vertical through the pin, relative to the
# model's foot; fades: where a release started from and its speed, alike. left: the share of a release's fade still
# to go (1 -> 0). was_pin, was_heading: the model's pin and foot heading (turned -90 degrees) last frame.


@dataclass(frozen=True)
class FootLockSettings:
    """The foot lock's thresholds (see the module docstring for what each does)."""

    contact_on: float = 0.5  # a leg locks when its contact rises to this
    contact_off: float = 0.3  # and releases when it falls below this
    blend_frames: int = 6  # frames over which a released lock's correction fades out
    reach: float = 0.97  # fraction of thigh + shin past which a lock's target is softly limited
    step_lift: float = 0.25  # a release lifts the foot by this times the distance it catches up, at mid-fade
    step_height: float = 0.05  # and by at least this much (metres), or that distance when it is shorter
    heel_band: float = 0.03  # metres of heel rise or drop from flat within which the shown heel eases to flat
    floor_m: float = 0.0  # height below which no contact joint is shown
    planted_m: tuple[float, ...] | None = None  # contact joints' heights over floor_m when planted (None: the model's)

    def __post_init__(self) -> None:
        if not self.contact_off < self.contact_on:
            raise ValueError(f"foot lock: contact_off ({self.contact_off}) must be below contact_on "
                             f"({self.contact_on})")
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


# lock_step's parameters, one row per leg (the settings and what they make with the leg's own sizes): a graph input,
# so settings change without re-exporting. near_level: the pin's height under which the contact rule may call it
# planted; flat_rise: the ankle's height over the pin on a flat foot; soft, room: the reach limit's start and span;
# pole: minus one over the foot's length (the foot's direction, ankle -> pin, from pin -> ankle).
PARAMS = ("contact_on", "contact_off", "per_frame", "blend_frames", "step_lift", "step_height", "inv_band",
          "floor_m", "slow_m", "slip_m", "rise_m", "near_level", "flat_rise", "soft", "room", "pole")


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


def settings_vector(settings: FootLockSettings, rig: "FootLockRig", planted: np.ndarray, fps: float) -> np.ndarray:
    """lock_step's parameters (float32, PARAMS x legs flattened) from settings, the contact joints' planted
    heights and the frame rate."""
    heights = np.asarray(planted if settings.planted_m is None else settings.planted_m, np.float64).reshape(-1)
    if heights.shape != np.shape(planted):
        raise ValueError(f"foot lock: planted_m must hold {len(planted)} heights (one per contact joint), "
                         f"got {heights.size}")
    pin, ankle = heights[rig.planted_columns[:, 0]], heights[rig.planted_columns[:, 1]]
    values = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name != "planted_m"}
    values.update(per_frame=1.0 / settings.blend_frames, inv_band=1.0 / max(settings.heel_band, 1e-6),
                  slow_m=CONTACT_VERTICAL_MPS / fps, slip_m=RELEASE_SLIP_M, rise_m=RELEASE_RISE_M,
                  near_level=settings.floor_m + pin + CONTACT_HEIGHT_M, flat_rise=ankle - pin,
                  soft=settings.reach * rig.span, room=(1.0 - settings.reach) * rig.span,
                  pole=-rig.inv_foot)
    rows = np.stack([np.broadcast_to(np.asarray(values[name], np.float64), (rig.n_legs,)) for name in PARAMS])
    return rows.astype(np.float32).reshape(-1)


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
    rig = FootLockRig(model.skeleton, model.layout)
    vector = settings_vector(FootLockSettings(), rig, planted_heights(model.meta, model.layout, model.start_frames),
                             model.fps)
    return {"foot_lock_state": np.zeros((n, rig.n_legs, STATE_WIDTH), np.float32),
            "foot_lock_enabled": np.zeros(n, bool), "foot_lock_settings": vector}


# [cos a, sin a, 1] @ _TURN = a turn about +Y by a, flattened; cos(a * _COS_SIN_ONE[0] - _COS_SIN_ONE[1]) makes it.
_COS_SIN_ONE = np.array([[1.0, 1.0, 0.0], [0.0, np.pi / 2, 0.0]])
_TURN = np.zeros((3, 9))
_TURN[0, [0, 8]], _TURN[1, 2], _TURN[1, 6], _TURN[2, 4] = 1.0, 1.0, -1.0, 1.0
# (a outer b), flattened, @ _LEVI_CIVITA = a x b.
_LEVI_CIVITA = np.zeros((3, 3, 3))
for _i, _j, _k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
    _LEVI_CIVITA[_i, _j, _k], _LEVI_CIVITA[_j, _i, _k] = 1.0, -1.0
# [cos a, sin a] @ _IN_PLANE + _IN_PLANE_ONE = the turn by a in a leg's frame (line, toward the knee, normal).
_IN_PLANE = np.zeros((2, 9))
_IN_PLANE[0, [0, 4]], _IN_PLANE[1, 1], _IN_PLANE[1, 3] = 1.0, -1.0, 1.0
_IN_PLANE_ONE = np.zeros(9)
_IN_PLANE_ONE[8] = 1.0
# A rotation matrix, flattened, @ _QUAT_W + _QUAT_W_ONE = 4 w q, its quaternion (x, y, z, w) times 4w: exact for turns
# below a half turn, which the IK's corrections are.
_QUAT_W = np.zeros((9, 4))
_QUAT_W[[7, 2, 3], [0, 1, 2]], _QUAT_W[[5, 6, 1], [0, 1, 2]], _QUAT_W[[0, 4, 8], 3] = 1.0, -1.0, 1.0
_QUAT_W_ONE = np.array([0.0, 0.0, 0.0, 1.0])
# (a outer b), flattened, @ _PRODUCT = a (x) b, the Hamilton product of quaternions (x, y, z, w).
_PRODUCT = np.zeros((16, 4))
for _r, _row in enumerate([[(3, 0, 1), (0, 3, 1), (1, 2, 1), (2, 1, -1)], [(3, 1, 1), (1, 3, 1), (2, 0, 1), (0, 2, -1)],
                           [(3, 2, 1), (2, 3, 1), (0, 1, 1), (1, 0, -1)],
                           [(3, 3, 1), (0, 0, -1), (1, 1, -1), (2, 2, -1)]]):
    for _i, _j, _v in _row:
        _PRODUCT[4 * _i + _j, _r] = _v
# up x v = v @ _UP_CROSS; [x, z, turn] @ _SPREAD = (x, 0, z).
_UP_CROSS = np.array([[0.0, 0, -1], [0, 0, 0], [1, 0, 0]])
_SPREAD = np.array([[1.0, 0, 0], [0, 0, 1], [0, 0, 0]])


class FootLockRig:
    """The constant arrays lock_step needs for one skeleton and layout (numpy; `namespace` converts them)."""

    def __init__(self, skeleton: Skeleton, layout: FeatureLayout) -> None:
        self.legs = legs = find_legs(skeleton, layout)
        self.n_legs = len(legs)
        count, j = len(legs), skeleton.n_joints
        contact = [skeleton.index(n) for n in layout.contact_joints]
        width = max([len(leg.feet) for leg in legs], default=1)
        below = [self._below(skeleton, g.ankle) for g in legs]
        deep = max([len(b) for b in below], default=1)
        a: dict[str, np.ndarray] = {}
        for name in ("hip", "knee", "ankle", "pin"):
            a[name] = np.array([getattr(g, name) for g in legs], np.int64)
        # The raw pose's world rotations the lock reads: the hip's parent's, the hip's and the knee's.
        a["frames"] = np.array([[skeleton.parents[g.hip], g.hip, g.knee] for g in legs], np.int64).reshape(count, 3)
        # Legs with fewer contact joints repeat their ankle: a copy changes neither the contact's max nor the floor.
        a["feet"] = np.array([list(g.feet) + [g.ankle] * (width - len(g.feet)) for g in legs],
                             np.int64).reshape(count, width)
        a["columns"] = np.array([list(g.columns) + [g.columns[0]] * (width - len(g.columns)) for g in legs],
                                np.int64).reshape(count, width)
        # The joints that turn with the foot (below the ankle), padded with the pin; their weight 0 marks padding.
        a["below"] = np.array([b + [g.pin] * (deep - len(b)) for g, b in zip(legs, below)],
                              np.int64).reshape(count, deep)
        # shown = raw * keep + place @ [hip, knee, ankle] per leg; positions += moved @ [knee, ankle, below...] per leg.
        solved = np.array([[g.hip, g.knee, g.ankle] for g in legs], np.int64).reshape(-1)
        a["solved"], a["keep"], a["place"] = solved, np.ones((j, 1)), np.zeros((j, len(solved)))
        a["keep"][solved], a["place"][solved, np.arange(len(solved))] = 0.0, 1.0
        a["moved"] = np.zeros((j, count * (2 + deep)))
        for i, (g, b) in enumerate(zip(legs, below)):
            for c, joint in enumerate([g.knee, g.ankle] + b):
                a["moved"][joint, i * (2 + deep) + c] = 1.0
        lengths = skeleton.bone_lengths()
        thigh, shin = lengths[a["knee"]], lengths[a["ankle"]]
        self.span = thigh + shin
        # Law of cosines for a hip-to-ankle distance l and thigh and shin lengths t, s in the plane: at the hip (between
        # the line and the thigh) cos = (l^2 + t^2 - s^2) / (2 l t), at the ankle (l^2 + s^2 - t^2) / (2 l s).
        a["thigh_squared"], a["thigh_minus_shin"] = (thigh ** 2)[:, None], (thigh ** 2 - shin ** 2)[:, None]
        a["cos_top"] = np.stack([thigh ** 2 - shin ** 2, shin ** 2 - thigh ** 2], -1)
        # The foot, pin -> ankle: its length (squared, and inverted: 0 for a leg that holds its ankle).
        rest = skeleton.rest_positions()
        foot = np.linalg.norm(rest[a["ankle"]] - rest[a["pin"]], axis=-1)
        a["foot_squared"] = (foot ** 2)[:, None]
        self.inv_foot = np.where(foot > 1e-9, 1.0 / np.maximum(foot, 1e-9), 0.0)
        # stride = |held * this|: the offset, and the turn times the foot's length.
        a["stride_scale"] = np.stack([np.ones(count), np.ones(count), foot], -1)
        self.planted_columns = np.array([[contact.index(g.pin) if g.pin in contact else contact.index(g.ankle),
                                          contact.index(g.ankle)] for g in legs], np.int64).reshape(count, 2)
        a.update(cos_sin_one=_COS_SIN_ONE, turn=_TURN, levi=_LEVI_CIVITA.reshape(9, 3), in_plane=_IN_PLANE,
                 in_plane_one=_IN_PLANE_ONE, quat_w=_QUAT_W, quat_w_one=_QUAT_W_ONE, product=_PRODUCT,
                 up_cross=_UP_CROSS, spread=_SPREAD, up=np.array([0.0, 1.0, 0.0]), xz=np.array([1.0, 0.0, 1.0]),
                 perpendicular=np.array([[0.0, -1.0], [1.0, 0.0]]), phase=np.array([0.0, np.pi / 2]),
                 to_xz=_SPREAD.T, skew=_LEVI_CIVITA.transpose(1, 0, 2).reshape(3, 9), eye3=np.eye(3),
                 bend_sign=np.array([1.0, -1.0]))
        self.arrays = a

    @staticmethod
    def _below(skeleton: Skeleton, ankle: int) -> list[int]:
        """The joints below ankle, in skeleton order."""
        out, inside = [], {ankle}
        for joint in range(ankle + 1, skeleton.n_joints):
            if int(skeleton.parents[joint]) in inside:
                inside.add(joint)
                out.append(joint)
        return out

    def namespace(self, convert=lambda x: x) -> SimpleNamespace:
        """The arrays as attributes, each passed through convert (e.g. to torch tensors)."""
        return SimpleNamespace(**{k: convert(v) for k, v in self.arrays.items()})


def raw_kinematics(kinematics: PoseKinematics, k: SimpleNamespace, rotations: np.ndarray,
                   root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The raw pose's world rotations lock_step reads (B, L, 3, 3, 3, transposed) and its joints' positions relative
    to the root (B, J, 3), in numpy from local rotations (B, J, 4) and root positions (B, 3) (the step graph hands
    over its own)."""
    world, positions = kinematics(quat_matrices(rotations.astype(np.float64)), np.zeros((len(root), 3)))
    return world[:, k.frames].swapaxes(-1, -2), positions


def lock_step(xp, k, rotations, world, positions, root, contacts, state, enabled, settings):
    """One frame of characters through their foot locks.

    rotations (B, J, 4): the raw local rotations; world (B, L, 3, 3, 3): their world rotations of each leg's hip's
    parent, hip and knee, transposed; positions (B, J, 3): their joints' world positions less root (B, 1, 3), the
    root's (so that float32 keeps its precision tens of metres from the origin); contacts (B, C); state (B, L,
    STATE_WIDTH); enabled (B,) bool; settings: settings_vector's. k: a FootLockRig's namespace in xp's arrays.
    Returns the shown local rotations (B, J, 4), their world positions (B, J, 3) and the next state. Every step
    is an array operation on the whole batch (it exports to ONNX), written for few of them: at one character
    each costs about as much as its arithmetic on a thousand.
    """
    legs = k.hip.shape[0]
    if legs == 0:
        return rotations, positions + root, state
    kd = {"keepdims": True} if xp is np else {"keepdim": True}

    def norm(a):
        return np.linalg.norm(a, axis=-1, keepdims=True) if xp is np else xp.linalg.vector_norm(a, dim=-1, keepdim=True)

    def cross(a, b, m):  # a (B, L, 1, 3) x b (B, L, m, 3)
        return (a[..., :, None] * b[..., None, :]).reshape(-1, legs, m, 9) @ k.levi

    rows = settings.reshape(len(PARAMS), legs, 1)

    def par(name):  # (L, 1)
        return rows[PARAMS.index(name)]

    st = {name: state[..., at:at + 1] if isinstance(at, int) else state[..., at] for name, at in STATE.items()}
    on = enabled.reshape(-1, 1, 1)

    hip, knee, ankle, pin = (positions[..., getattr(k, name), :] for name in ("hip", "knee", "ankle", "pin"))
    pin_y = pin[..., 1:2] + root[..., 1:2]  # heights are the world's
    d = ankle - pin  # the foot, pin -> ankle
    flat = xp.clip(norm(d * k.xz), 1e-9, None)
    heading = d[..., 0::2] / flat  # its direction on the ground, (x, z)

    # What the model's foot did since the last frame: its pin moved, its heading turned (nothing after a reset).
    valid = st["valid"]
    step = pin + root - st["was_pin"]
    turned = xp.arcsin((heading * st["was_heading"]).sum(-1, **kd))  # was_heading: the last heading turned by -90 deg
    moved = xp.concatenate([step[..., 0::2], turned], -1) * valid  # (B, L, 3): x, z, turn

    # Locks, with hysteresis. A foot the contact rule plants locks too; a lock ends when the model clearly lifts its
    # pin (its contacts lag behind toe-off); such a release, like an early one, re-arms once the contact drops or
    # the fade ends.
    contact = xp.amax(contacts[..., k.columns], -1, **kd)
    was = st["locked"] > 0.5
    left = xp.clip(st["left"] - par("per_frame"), 0.0, None)
    hold = contact >= par("contact_off")
    armed = (st["disarmed"] < 0.5) | ~hold | (left <= 0.0)
    near = (pin_y < par("near_level")) & (xp.abs(step[..., 1:2]) < par("slow_m")) & (valid > 0.5)
    locked = hold & on & (was | (armed & ((contact >= par("contact_on")) | near)))
    ground = xp.where(locked & ~was, pin_y, st["ground"])
    lifted = locked & (pin_y - ground > par("rise_m"))
    locked = locked & ~lifted
    disarmed = ~armed | lifted
    released = was & ~locked

    # A held foot stays where it was shown (a lock taken now: where it was shown last frame). A released one eases
    # onto the model's foot over blend_frames from where it was last held: a cubic Hermite in the held offset and
    # turn (h00 and h10 of the fade, from the share left), arriving at rest relative to the model.
    held = st["held"]
    fades = xp.where(released, xp.concatenate([held, 0.0 * held], -1), st["fades"])  # (B, L, 6): from, speed
    left = xp.where(released, 1.0 - par("per_frame"), left)
    done = 1.0 - left
    ease = 1.0 - done * done * (1.0 + 2.0 * left)
    push = par("blend_frames") * done * left * left
    held = xp.where(locked, held - moved, fades[..., :3] * ease + fades[..., 3:] * push)
    weight = xp.where(locked, 1.0, ease)
    stride = xp.where(released, norm(fades[..., :3] * k.stride_scale), st["stride"])

    # The ankle's target: the model's foot turned about the pin as held, its pitch eased towards flat within the
    # heel band, moved as held, lifted over the floor and, while a release eases, along a step's arc.
    turn = (xp.cos(held[..., 2:] * k.cos_sin_one[0] - k.cos_sin_one[1]) @ k.turn).reshape(-1, legs, 3, 3)
    v = (turn * d[..., None, :]).sum(-1)  # (elementwise: faster than a batch of tiny matmuls)
    rise = d[..., 1:2] - par("flat_rise")
    band = xp.clip(xp.abs(rise) * par("inv_band"), None, 1.0)
    lowered = d[..., 1:2] - (weight * on) * rise * (1.0 - band * band * (3.0 - 2.0 * band))
    flat2 = xp.clip(k.foot_squared - lowered * lowered, 1e-12, None) ** 0.5
    v2 = v * (flat2 / flat) * k.xz + lowered * k.up  # the shown foot, pin -> ankle
    lowest = xp.minimum(xp.amin(positions[..., k.feet, 1], -1, **kd) + root[..., 1:2], pin_y + lowered)
    floor = xp.clip(par("floor_m") - lowest, 0.0, None) * on
    arc = 4.0 * done * left * ~locked
    lift = xp.maximum(par("step_lift") * stride, xp.minimum(stride, par("step_height"))) * arc * arc
    target = pin + v2 + held @ k.spread + (floor + lift) * k.up

    # Reach: past reach x span the distance asked of the leg is softly limited, never below the model's own; a lock
    # the limit would keep more than RELEASE_SLIP_M off its place lets go and eases out from there.
    wanted = target - hip
    have, need = xp.clip(norm(ankle - hip), 1e-9, None), xp.clip(norm(wanted), 1e-9, None)
    limit = par("soft") + par("room") * (1.0 - xp.clip(xp.exp((par("soft") - need) / par("room")), None, 1.0))
    reach = xp.minimum(need, xp.maximum(limit, have))
    early = locked & (need - reach > par("slip_m"))
    locked = locked & ~early
    disarmed = disarmed | early
    held = held + (wanted * (reach / need - 1.0)) @ k.to_xz * early
    fades = xp.where(early, xp.concatenate([held, -moved], -1), fades)
    left = xp.where(early, 1.0, left)
    stride = xp.where(early, norm(held * k.stride_scale), stride)

    # Two-bone IK in the leg's plane: the hip-to-ankle line and the plane's normal make a frame (line, toward the
    # knee, normal) before and after; thigh and shin keep their place in it but for their angles to the line: as
    # the raw leg has them, then as the law of cosines gives them for the new length (of their parts in the plane:
    # a knee off the plane stays off it as far, on both sides, so the ankle stays on the line). The plane is the
    # model's knee's, but where the leg must bend further out than the model's knee is (a nearly straight leg,
    # whose own plane is noise) the foot's plane makes up the difference; the leg is never twisted about its line.
    limbs = xp.stack([knee - hip, ankle - knee], -2)  # thigh, shin
    line, line2 = (ankle - hip) / have, wanted / need
    planes = cross(line[..., None, :], xp.stack([limbs[..., 0, :], d], -2), 2)  # line x thigh, line x foot
    along = (reach * reach + k.thigh_minus_shin) / (2.0 * reach)  # the knee's place along the new line
    out = xp.clip(k.thigh_squared - along * along, STRAIGHT_M * STRAIGHT_M, None) ** 0.5  # and off it
    normal = planes[..., 0, :] + (xp.clip(out - norm(planes[..., 0, :]), 0.0, None) * par("pole")) * planes[..., 1, :]
    normal = normal / xp.clip(norm(normal), 1e-12, None)
    normal2 = normal - (normal * line2).sum(-1, **kd) * line2
    normals = xp.stack([normal, normal2 / xp.clip(norm(normal2), 1e-12, None)], -2)
    lines = xp.stack([line, line2], -2)
    frames = xp.stack([lines, cross(normals, lines, 2), normals], -2)  # (B, L, 2, 3, 3): rows, before and after
    inplane = (limbs[..., None, :] * frames[:, :, :1, :2]).sum(-1)  # (B, L, 2, 2): limbs' (line, side) coordinates
    size = norm(inplane)  # (B, L, 2, 1): their lengths in the plane
    spins = (xp.arccos(xp.clip((reach * reach + k.cos_top) / (2.0 * reach * size[..., 0]), -1.0, 1.0)) * k.bend_sign
             - 2.0 * xp.arctan(inplane[..., 1] / xp.clip(size[..., 0] + inplane[..., 0], 1e-12, None)))
    spins = (xp.cos(spins[..., None] - k.phase) @ k.in_plane + k.in_plane_one).reshape(-1, legs, 2, 3, 3)
    bends = frames[:, :, 1:2].swapaxes(-1, -2) @ spins @ frames[:, :, 0:1]  # their turns in the world

    # The foot's turn in the world: about the vertical as held, then pitched about the horizontal through the pin
    # (Rodrigues: I + sin a [axis]x + (1 - cos a) [axis]x^2).
    pitch = xp.arctan(d[..., 1:2] / flat) - xp.arctan(lowered / flat2)  # > 0 lowers the heel
    cos_sin = xp.cos(pitch - k.phase)[..., None]  # (B, L, 2, 1)
    skew = (v @ k.up_cross / flat @ k.skew).reshape(-1, legs, 3, 3)  # of up x v, a unit horizontal axis
    foot = (k.eye3 + cos_sin[:, :, 1:2] * skew + (1.0 - cos_sin[:, :, 0:1]) * (skew @ skew)) @ turn

    # As changes of the local rotations (seen from each joint's parent): the hip turns as the thigh, the knee as the
    # shin relative to the thigh, the ankle as the foot relative to the shin; quaternions that turn the raw ones.
    # A change R in the world is W^T R W seen from a parent whose world rotation is W: as a quaternion, R's with its
    # axis turned by W^T (world holds the W^T).
    change = xp.concatenate([0.0 * bends[:, :, 0:1] + k.eye3, bends], 2).swapaxes(-1, -2) @ xp.concatenate(
        [bends, foot[:, :, None]], 2)
    quat = change.reshape(-1, legs, 3, 9) @ k.quat_w + k.quat_w_one
    quat = quat / norm(quat)
    quat = xp.concatenate([(world * quat[..., None, :3]).sum(-1), quat[..., 3:]], -1)
    quat = quat[..., :, None] * rotations[..., k.solved, :].reshape(-1, legs, 3, 1, 4)
    shown = rotations * k.keep + k.place @ (quat.reshape(-1, 3 * legs, 16) @ k.product)

    # Their world positions: the legs' joints moved (knee, ankle and the joints below it), the others as they were.
    limbs = (bends * limbs[..., None, :]).sum(-1)
    knee2 = hip + limbs[:, :, 0]
    ankle2 = knee2 + limbs[:, :, 1]
    below = positions[..., k.below, :]
    below2 = ankle2[:, :, None] + ((below - ankle[:, :, None])[..., None, :] * foot[:, :, None]).sum(-1)
    moved_to = xp.concatenate([(knee2 - knee)[:, :, None], (ankle2 - ankle)[:, :, None], below2 - below], 2)
    positions = positions + k.moved @ moved_to.reshape(-1, legs * moved_to.shape[2], 3) + root

    flags = xp.where(xp.concatenate([locked, disarmed], -1), 1.0, 0.0)
    state = xp.concatenate([flags, left, weight, ground, stride, held, fades, pin + root, heading @ k.perpendicular,
                            0.0 * left + 1.0], -1)
    return shown, positions, state
