"""Foot locking: planted feet held still in the world, each leg solved with analytic two-bone IK.

A stage applied to every step's pose (runtime.controller.Controller(foot_lock=True) runs it), vectorised over
characters and legs, with state per character. It reads only what the Controller returns (local rotations,
root position, contacts) and the skeleton and feature layout, and it changes what is shown, never what the
model is fed next.

Per leg (found from the layout's contact joints: the topmost contact joint of a chain is the ankle, its
parent the knee, the knee's parent the hip; the lowest one, the toe when there is one, is the held joint):

- Lock: when the leg's contact (the largest of its contact joints' values) rises to `contact_on`; release
  when it falls below `contact_off` (hysteresis, so a flickering contact does not chatter), or when the model
  lifts the held joint RELEASE_RISE_M above where it was planted (the model's contacts lag behind toe-off).
- Hold: while locked, the held joint (the ball of the foot) stays where it was on the ground plane, and the
  foot keeps the heading it had; its heights and its pitch and roll follow the model's, so the heel rolls
  about the ball and a contact that comes a frame before the foot lands does not hold it in the air.
- Solve: hip and knee are turned by analytic two-bone IK so the ankle reaches its held place, in the bend
  plane of the model's own knee (the foot's direction decides only for a leg straight to within microns), so
  the knee never flips; the ankle's local rotation is rewritten so the foot keeps its world orientation.
- Release: the foot eases onto the model's over `blend_frames`: a cubic in the held offset and turn, from
  where it was last held to the model's foot, arriving at rest relative to it.
- Reach: past `reach` x (thigh + shin) the hip-to-ankle distance a lock asks for is softly limited (never
  below the model's own), so the leg neither stretches nor snaps straight; a lock that the limit would keep
  more than RELEASE_SLIP_M off its place (over-extension) is released early, easing out the same way.
  A lock released early or by a lift is not taken again until its contact drops or its fade has ended.
- Step: while a release eases, the foot is lifted along an arc peaking at `step_lift` x the distance it
  catches up, so a foot the model slid far (a standing character that drifts) is re-planted by a small
  step instead of gliding over the ground.
- Floor: no contact joint of a leg is shown below `floor_m` (the world ground, y = 0 by default).

The output's local rotations and world positions agree through forward kinematics (the Controller computes
positions from the shown rotations), and bone lengths are the skeleton's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import FeatureLayout
from .posefk import PoseKinematics, matrix_quats, quat_matrices
from .skeleton import Skeleton

RELEASE_SLIP_M = 0.01  # a lock whose foot the reach limit would move further than this is released
RELEASE_RISE_M = 0.03  # a lock whose held joint the model lifts this far above where it was planted is released
STRAIGHT_M = 0.01  # a knee closer than this to its hip-ankle line bends toward the foot rather than its own offset
_TOE_NAMES = ("toe", "ball")
_HORIZONTAL = np.array([1.0, 0.0, 1.0, 1.0])  # held: offset x, (y), offset z, turn
# [cos a, sin a, 1] @ _TURN = a turn about +Y by a, flattened; cos(a * _COS_SIN_ONE[0] - _COS_SIN_ONE[1]) makes it.
_COS_SIN_ONE = np.array([[1.0, 1.0, 0.0], [0.0, np.pi / 2, 0.0]])
_TURN = np.zeros((3, 9))
_TURN[0, [0, 8]], _TURN[1, 2], _TURN[1, 6], _TURN[2, 4] = 1.0, 1.0, -1.0, 1.0
_SIN_COS = np.array([np.pi / 2, 0.0])
# The IK's quaternion factors, four per joint (hip, knee, ankle), applied last to first. Their axes: rows of
# [m, n, line, model's n] seen from hip's parent (0-3), hip (4-7) and knee (8-11), then the knee's view of
# +Y (12); their angles from [swing, hip bend, knee bend, held turn, swivel], halved for quaternions.
_FACTOR_AXES = np.array([0, 1, 2, 0, 7, 0, 0, 0, 10, 9, 8, 12])
_FACTOR_SPINS = np.zeros((5, 12))
for _col, _terms in {0: [(0, 1)], 1: [(1, 1)], 2: [(4, 1)], 4: [(2, 1)], 8: [(4, -1)], 9: [(1, -1), (2, -1)],
                     10: [(0, -1)], 11: [(3, 1)]}.items():
    for _row, _sign in _terms:
        _FACTOR_SPINS[_row, _col] = 0.5 * _sign
# The Hamilton product as a bilinear map: [a_i b_j for i, j] @ _QUAT_PRODUCT = a (x) b, (x, y, z, w) order.
_QUAT_PRODUCT = np.zeros((16, 4))
for _r, _row in enumerate([[(3, 0, 1), (0, 3, 1), (1, 2, 1), (2, 1, -1)], [(3, 1, 1), (1, 3, 1), (2, 0, 1), (0, 2, -1)],
                           [(3, 2, 1), (2, 3, 1), (0, 1, 1), (1, 0, -1)], [(3, 3, 1), (0, 0, -1), (1, 1, -1), (2, 2, -1)]]):
    for _i, _j, _v in _row:
        _QUAT_PRODUCT[4 * _i + _j, _r] = _v
# Law of cosines, (n, L, now/wanted, hip/knee): (d^2 * sign + top) / (d * bottom[0] + bottom[1]).
_COSINE_SIGN = np.array([1.0, -1.0])
# axis @ _SKEW = the cross-product matrix of axis, flattened.
_SKEW = np.zeros((3, 9))
_SKEW[2, 1], _SKEW[1, 2], _SKEW[2, 3], _SKEW[0, 5], _SKEW[1, 6], _SKEW[0, 7] = -1, 1, 1, -1, -1, 1


@dataclass(frozen=True)
class FootLockSettings:
    """The foot lock's thresholds (see the module docstring for what each does)."""

    contact_on: float = 0.5  # a leg locks when its contact rises to this
    contact_off: float = 0.3  # and releases when it falls below this
    blend_frames: int = 6  # frames over which a released lock's correction fades out
    reach: float = 0.97  # fraction of thigh + shin past which a lock's target is softly limited
    step_lift: float = 0.25  # a release lifts the foot by this times the distance it catches up, at mid-fade
    floor_m: float = 0.0  # height below which no contact joint is shown

    def __post_init__(self) -> None:
        if not self.contact_off < self.contact_on:
            raise ValueError(f"foot lock: contact_off ({self.contact_off}) must be below contact_on ({self.contact_on})")
        if int(self.blend_frames) != self.blend_frames or self.blend_frames < 1:
            raise ValueError(f"foot lock: blend_frames must be a whole number of at least 1, got {self.blend_frames}")
        if not 0.5 <= self.reach < 1.0:
            raise ValueError(f"foot lock: reach must be in [0.5, 1), got {self.reach}")
        if not 0.0 <= self.step_lift <= 1.0:
            raise ValueError(f"foot lock: step_lift must be in [0, 1], got {self.step_lift}")
        if not np.isfinite(self.floor_m):
            raise ValueError("foot lock: floor_m must be finite")


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


class FootLock:
    """Per-character foot locks over the legs of a skeleton; apply() turns raw poses into locked ones.

    State per character and leg: locked, weight (the share of the held correction shown), and what a lock
    holds, `held`: the foot moved by (x, z) metres and turned by an angle about the vertical through its
    pin joint, relative to the model's foot. `enabled` (per character) turns locking on and off.
    """

    def __init__(self, skeleton: Skeleton, layout: FeatureLayout, n_characters: int,
                 settings: FootLockSettings | None = None) -> None:
        self.settings = s = settings or FootLockSettings()
        self.legs = legs = find_legs(skeleton, layout)
        self.kinematics = PoseKinematics(skeleton)
        n, count = n_characters, len(legs)
        width = max([len(leg.feet) for leg in legs], default=1)
        # The solve needs only the legs' joints and what they hang from: forward kinematics of that part.
        points = [[g.hip, g.knee, g.ankle, g.pin] + list(g.feet) for g in legs]
        needed = {0}
        for row in points:
            for j in row:
                while j > 0 and j not in needed:
                    needed.add(j)
                    j = int(skeleton.parents[j])
        self._chain = np.array(sorted(needed), np.int64)
        at = {int(j): k for k, j in enumerate(self._chain)}
        self._chain_fk = PoseKinematics(skeleton.subset(self._chain.tolist()))
        # Legs with fewer contact joints repeat their ankle: a copy changes neither the contact's max nor the floor.
        self._points = np.array([[at[j] for j in row + [row[2]] * (width - len(row) + 4)] for row in points],
                                np.int64).reshape(count, 4 + width)
        self._columns = np.array([list(g.columns) + [g.columns[0]] * (width - len(g.columns)) for g in legs],
                                 np.int64).reshape(count, width)
        chain_parent = self._chain_fk.parent
        self._frames = np.array([[chain_parent[at[g.hip]], at[g.hip], at[g.knee], at[g.ankle]] for g in legs],
                                np.int64).reshape(count, 4)
        self._solved = np.array([[g.hip, g.knee, g.ankle] for g in legs], np.int64).reshape(-1)
        lengths, rest = skeleton.bone_lengths(), skeleton.rest_positions()
        thigh = lengths[[g.knee for g in legs]][:, None]
        self._thigh = thigh[:, 0]
        shin = lengths[[g.ankle for g in legs]][:, None]
        span = (thigh + shin)[:, 0]
        self._soft, self._room = s.reach * span, (1.0 - s.reach) * span
        self._short, self._long = np.abs(thigh - shin) + 1e-9, thigh + shin - 1e-9
        # Law of cosines: cos at the hip = (d^2 + t^2 - s^2) / (2 t d), at the knee = (t^2 + s^2 - d^2) / (2 t s).
        self._cos_top = np.stack([thigh * thigh - shin * shin, thigh * thigh + shin * shin], -1)  # (L, 1, 2)
        self._cos_bottom = (np.stack([2.0 * thigh, 0.0 * thigh], -1), np.stack([0.0 * thigh, 2.0 * thigh * shin], -1))
        # The foot's direction in the ankle's frame (at rest all local rotations are identity).
        foot = np.zeros((count, 3, 1))
        self._foot_length = np.zeros(count)
        for i, g in enumerate(legs):
            kids = skeleton.children[g.ankle]
            rel = rest[g.pin] - rest[g.ankle] if g.pin != g.ankle else (
                skeleton.offsets[kids[0]] if kids else np.nan_to_num(skeleton.end_offsets[g.ankle]))
            self._foot_length[i] = np.linalg.norm(rel)
            foot[i, :, 0] = rel / max(self._foot_length[i], 1e-9)
        self._foot = foot
        # stride = sqrt(held * held @ this): the offset, and the turn times the foot's length.
        self._stride = np.stack([np.ones(count), np.zeros(count), np.ones(count), self._foot_length ** 2], -1)
        self.enabled = np.ones(n, bool)
        self.locked = np.zeros((n, count), bool)
        self.armed = np.ones((n, count), bool)  # False after an early release, until the contact drops
        self.since = np.full((n, count), float(s.blend_frames))  # frames since the last release
        self.weight = np.zeros((n, count))
        self.held = np.zeros((n, count, 4))  # offset x, 0, offset z, turn (radians)
        self.stride = np.zeros((n, count))  # how far the last released lock held the foot from the model's
        self._ground = np.zeros((n, count))  # height of the held joint when its lock was taken
        self._fade_from = np.zeros((n, count, 4))  # held and its speed when the last lock was released
        self._fade_speed = np.zeros((n, count, 4))
        self._was = np.zeros((n, count, 4))  # the model's pin joint and foot heading in the last frame

    @property
    def n_legs(self) -> int:
        """Number of legs the stage solves."""
        return len(self.legs)

    def reset(self, characters: np.ndarray | slice) -> None:
        """Forget the locks of characters (they were put back on a start frame)."""
        self.locked[characters] = False
        self.armed[characters] = True
        self.since[characters] = float(self.settings.blend_frames)
        for state in (self.weight, self.held, self.stride, self._fade_from, self._fade_speed):
            state[characters] = 0.0

    def save(self, characters: np.ndarray) -> list[np.ndarray]:
        """A copy of characters' lock state, for restore() (a paused character keeps its locks)."""
        return [state[characters].copy() for state in self._state()]

    def restore(self, characters: np.ndarray, saved: list[np.ndarray]) -> None:
        """Put back the lock state save() took."""
        for state, kept in zip(self._state(), saved):
            state[characters] = kept

    def _state(self) -> tuple[np.ndarray, ...]:
        return (self.locked, self.armed, self.since, self.weight, self.held, self.stride, self._ground,
                self._fade_from, self._fade_speed, self._was)

    def apply(self, rotations: np.ndarray, root: np.ndarray, contacts: np.ndarray,
              characters: np.ndarray | slice = slice(None)) -> np.ndarray:
        """One frame of characters: raw local rotations (n, J, 4), root positions (n, 3), contacts (n, C)
        -> shown local rotations (n, J, 4) float32 (see positions() for their joints); advances their locks.
        """
        shown = rotations.astype(np.float32)
        if not self.legs:
            return shown
        s, sel = self.settings, characters
        world, pos = self._chain_fk(quat_matrices(rotations[:, self._chain].astype(np.float64)), root)
        frames = world[:, self._frames]  # (n, L, 4, 3, 3): hip's parent, hip, knee, ankle
        points = pos[:, self._points]  # (n, L, 4 + F, 3): hip, knee, ankle, pin, contact joints
        hip, knee, ankle, pin = points[:, :, 0], points[:, :, 1], points[:, :, 2], points[:, :, 3]
        direction = (frames[:, :, 3] @ self._foot)[..., 0]

        # Hold the foot where it was: undo the model's move of the pin joint and turn of the foot's heading.
        now = np.concatenate([pin, np.arctan2(direction[..., :1], direction[..., 2:])], -1)
        moved = (now - self._was[sel]) * _HORIZONTAL
        self._was[sel] = now
        moved[..., 3] = (moved[..., 3] + np.pi) % (2.0 * np.pi) - np.pi

        # Locks, with hysteresis. A lock also ends when the model clearly lifts the held joint (its contacts lag
        # behind toe-off); such a release, like an early one, re-arms once the contact drops or the fade ends.
        contact = contacts[:, self._columns].max(-1)
        was, since, enabled = self.locked[sel], self.since[sel] + 1.0, self.enabled[sel][:, None]
        armed = self.armed[sel] | (contact < s.contact_off) | (since > s.blend_frames)
        locked = (contact >= s.contact_off) & (was | (armed & (contact >= s.contact_on))) & enabled
        ground = np.where(locked & ~was, pin[..., 1], self._ground[sel])
        self._ground[sel] = ground
        lifted = locked & (pin[..., 1] - ground > RELEASE_RISE_M)
        locked &= ~lifted
        armed &= ~lifted
        # A held foot stays where it is. A released one eases onto the model's foot over blend_frames, from where
        # it was last held (the model's foot already moves on this frame, as it does in the raw output): a
        # cubic in the held offset, arriving at rest relative to the model. A lock taken now holds the foot
        # where it is shown now.
        released = was & ~locked
        if released.any():
            self._fade_from[sel] = np.where(released[..., None], self.held[sel], self._fade_from[sel])
            self._fade_speed[sel] = np.where(released[..., None], 0.0, self._fade_speed[sel])
            since = np.where(released, 1.0, since)
        fade = np.minimum(since * (1.0 / s.blend_frames), 1.0)[..., None]
        ease = 1.0 + fade * fade * (2.0 * fade - 3.0)  # cubic Hermite bases h00 and h10 of the fade
        held = np.where((was & locked)[..., None], self.held[sel] - moved,
                        self._fade_from[sel] * ease + self._fade_speed[sel] * (s.blend_frames * fade * (1.0 - fade) ** 2))
        weight = np.where(locked, 1.0, ease[..., 0])

        # The ankle's target: the model's foot turned about the pin and moved as held, lifted over the floor
        # and, while a release eases, along a step's arc.
        turn = (np.cos(held[..., 3:] * _COS_SIN_ONE[0] - _COS_SIN_ONE[1]) @ _TURN).reshape(held.shape[:-1] + (3, 3))
        target = pin + (turn @ (ankle - pin)[..., None])[..., 0] + held[..., :3]
        # Floor: the foot is lifted so that none of its contact joints is below it.
        arc = fade[..., 0] * (1.0 - fade[..., 0]) * ~locked
        target[..., 1] += np.maximum(s.floor_m - points[:, :, 4:, 1].min(-1), 0.0) * enabled \
            + (16.0 * s.step_lift) * self.stride[sel] * arc * arc

        # Reach: past reach x span the distance asked of the leg is softly limited, never below the model's
        # own; a lock the limit would keep more than RELEASE_SLIP_M off its place lets go.
        legs = np.concatenate([(ankle - hip)[..., None, :], (target - hip)[..., None, :]], -2)  # now, wanted
        have, need = np.sqrt((legs * legs).sum(-1)).transpose(2, 0, 1)
        past = np.maximum(need - self._soft, 0.0)
        reach = np.minimum(need, np.maximum(self._soft + self._room * (1.0 - np.exp(-past / self._room)), have))
        early = locked & (need - reach > RELEASE_SLIP_M)
        if early.any():
            # Shown where the limit puts the foot this frame, then eased from there at the speed it had.
            locked &= ~early
            armed &= ~early
            held[..., :3] += ((reach / need - 1.0)[..., None] * legs[..., 1, :] * early[..., None]) * _HORIZONTAL[:3]
            self._fade_from[sel] = np.where(early[..., None], held, self._fade_from[sel])
            self._fade_speed[sel] = np.where(early[..., None], -moved, self._fade_speed[sel])
            since = np.where(early, 0.0, since)
            released |= early
        if released.any():
            self.stride[sel] = np.where(released, np.sqrt((self._fade_from[sel] ** 2 * self._stride).sum(-1)),
                                        self.stride[sel])
        self.locked[sel], self.armed[sel] = locked, armed
        self.since[sel] = np.where(locked, 0.0, since)
        self.weight[sel], self.held[sel] = weight, held

        # Two-bone IK in the plane of the model's knee: hip and knee turn about its normal n to give the leg
        # the length asked for, then both swing about m, from the ankle's direction to the target's.
        lengths = np.minimum(np.maximum(np.concatenate([have[..., None], reach[..., None]], -1), self._short),
                             self._long)
        cosines = ((lengths * lengths)[..., None] * _COSINE_SIGN + self._cos_top) / (lengths[..., None] * self._cos_bottom[0]
                                                                                + self._cos_bottom[1])
        angles = np.arccos(np.minimum(np.maximum(cosines, -1.0), 1.0))  # (n, L, now/wanted, hip/knee)
        # Planes, as normals: of the model's knee (line x knee), of the pole, of the swing (line x target).
        # The pole is the model's knee; where the leg must bend further out than the model's knee is (a nearly
        # straight leg, whose bend direction is noise), the foot's direction makes up the difference. The leg
        # first swivels about the hip-ankle line from the model's plane into the pole's (the ankle stays, the
        # solve stays exact), then bends in it and swings. A leg asked for no change keeps the model's pose.
        crosses = np.concatenate([(knee - hip)[..., None, :], direction[..., None, :], legs[..., 1:, :]], -2) \
            @ (legs[..., 0, :] @ -_SKEW).reshape(hip.shape + (3,))  # line x knee, line x foot, line x target
        bent = np.sqrt((crosses[..., 0, :] ** 2).sum(-1)) / have  # the knee's distance to the line
        out = np.maximum(self._thigh * np.sin(angles[..., 1, 0]), STRAIGHT_M)  # how far out the knee must go
        crosses[..., 1, :] = crosses[..., 0, :] + np.maximum(out - bent, 0.0)[..., None] * crosses[..., 1, :]
        sizes = np.sqrt((crosses * crosses).sum(-1))
        normals = crosses / np.maximum(sizes, 1e-12)[..., None]
        model_n = np.where((sizes[..., :1] > 1e-12), normals[..., 0, :], normals[..., 1, :])
        pole_n, line = normals[..., 1, :], legs[..., 0, :] / have[..., None]
        across = (pole_n[..., None, :] @ (model_n @ -_SKEW).reshape(hip.shape + (3,)))[..., 0, :]  # model_n x pole_n
        asked = np.minimum(np.sqrt(((target - ankle) ** 2).sum(-1)) / 1e-3, 1.0)
        swivel = np.arctan2((across * line).sum(-1), (model_n * pole_n).sum(-1)) * asked
        swing = np.arctan2(sizes[..., 2], (legs[..., 0, :] * legs[..., 1, :]).sum(-1))
        # The new local rotations are the old ones turned by these factors, about axes seen from the joint's
        # parent (hip's parent, hip, knee): the hip by the swing, its bend and the swivel; the knee by its bend
        # about the model's knee axis; the ankle back by all of the leg's turn, then by the held turn.
        vectors = np.concatenate([normals[..., 2:, :], normals[..., 1:2, :], line[..., None, :], model_n[..., None, :]], -2)
        axes = vectors[:, :, None] @ frames[:, :, :3]  # (n, L, 3 frames, 4: m, n, line, model's n, 3)
        axes = np.concatenate([axes.reshape(axes.shape[:2] + (12, 3)), frames[:, :, 2, 1:2]], 2)[:, :, _FACTOR_AXES]
        spins = np.concatenate([swing[..., None], angles[:, :, 1] - angles[:, :, 0], held[..., 3:], swivel[..., None]],
                               -1) @ _FACTOR_SPINS
        half = np.cos(spins[..., None] - _SIN_COS)  # sin, cos of half the angle
        factors = np.concatenate([axes * half[..., :1], half[..., 1:]], -1).reshape(axes.shape[:2] + (3, 4, 4))
        q = rotations[:, self._solved].astype(np.float64).reshape(factors.shape[:2] + (3, 4))
        for k in (3, 2, 1, 0):
            q = ((factors[..., k, :, None] * q[..., None, :]).reshape(-1, 16) @ _QUAT_PRODUCT).reshape(q.shape)
        shown[:, self._solved] = q.reshape(len(q), -1, 4)
        return shown

    def positions(self, rotations: np.ndarray, root: np.ndarray) -> np.ndarray:
        """World joint positions (n, J, 3) float32 of local rotations (n, J, 4) and root positions (n, 3)."""
        return self.kinematics(quat_matrices(rotations.astype(np.float64)), root.astype(np.float64))[1].astype(np.float32)
