"""Controller: N characters stepped together through the decoder, returning engine-ready poses."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .control import ControlState
from .features import frame_to_pose
from .footlock import (STATE, STATE_WIDTH, FootLockRig, FootLockSettings, lock_step, planted_heights, raw_kinematics,
                       settings_vector)
from .posefk import PoseKinematics
from .model import MotionModel

CHARACTER_SPACING_M = 2.0  # characters start side by side along +X, this far apart


class Poses:
    """One frame of every character: float32 arrays with the character index first.

    local_rotations are (x, y, z, w) relative to each parent with the skeleton offsets as rest translations;
    the root's entry is its world rotation. Quaternions keep the previous frame's hemisphere.
    positions (N, J, 3) are world joint positions: with foot locking, the forward kinematics of the shown
    rotations; without, the model's own.
    """

    def __init__(self, frame: int, root_position: np.ndarray, root_rotation: np.ndarray,
                 local_rotations: np.ndarray, positions: np.ndarray, contacts: np.ndarray, reset: np.ndarray) -> None:
        self.frame = frame
        self.root_position = root_position  # (N, 3)
        self.root_rotation = root_rotation  # (N, 4)
        self.local_rotations = local_rotations  # (N, J, 4)
        self.positions = positions  # (N, J, 3)
        self.contacts = contacts  # (N, C)
        self.reset = reset  # (N,) bool: put back on a start frame by the divergence guard this step

    def copy(self) -> "Poses":
        """A copy that later steps do not overwrite."""
        return Poses(self.frame, *(np.array(getattr(self, k)) for k in
                                   ("root_position", "root_rotation", "local_rotations", "positions",
                                    "contacts", "reset")))


class _State:
    """The per-character state the step graph reads, in buffers onnxruntime reads and writes in place."""

    def __init__(self, n: int, cond: int, joints: int, legs: int | None) -> None:
        self.condition = np.zeros((n, cond), np.float32)
        self.origin = np.zeros((n, 3), np.float32)
        self.yaw = np.zeros((n, 1), np.float32)
        self.rotations = np.zeros((n, joints, 4), np.float32)
        self.rotations[..., 3] = 1.0
        self.foot = None if legs is None else np.zeros((n, legs, STATE_WIDTH), np.float32)  # foot locks


class FootLock:
    """A Controller's foot locks: the settings, the per-character switch `enabled` and views of the lock state.

    locked, weight (the share of the held correction shown) and held (the foot moved by x, z metres and turned
    by an angle about the vertical through its pin, relative to the model's foot) read the latest frame's state.
    """

    def __init__(self, rig: FootLockRig, n: int, settings: FootLockSettings, vector: np.ndarray) -> None:
        self.rig = rig
        self.settings = settings
        self.enabled = np.ones(n, bool)
        self.vector = vector  # lock_step's settings input
        self.state = np.zeros((n, rig.n_legs, STATE_WIDTH), np.float32)  # the Controller's latest state set

    @property
    def n_legs(self) -> int:
        """Number of legs the lock solves."""
        return self.rig.n_legs

    @property
    def locked(self) -> np.ndarray:
        """(N, L) bool: the legs held this frame."""
        return self.state[..., STATE["locked"]] > 0.5

    @property
    def weight(self) -> np.ndarray:
        """(N, L): the share of each leg's held correction shown this frame (1 held, fading to 0 on release)."""
        return self.state[..., STATE["weight"]]

    @property
    def held(self) -> np.ndarray:
        """(N, L, 3): each foot's correction, x and z metres and a turn in radians about the vertical."""
        return self.state[..., STATE["held"]]

    def save(self, characters: np.ndarray) -> np.ndarray:
        """A copy of characters' lock state, for restore() (a paused character keeps its locks)."""
        return self.state[characters].copy()

    def restore(self, characters: np.ndarray, saved: np.ndarray) -> None:
        """Put back the lock state save() took."""
        self.state[characters] = saved


class Controller:
    """Steps n_characters through a MotionModel; random latents by default, or given ones.

    Each step is one onnxruntime call on pre-bound buffers: two state sets swap roles every step, so the
    decoder allocates nothing. The arrays of a returned Poses are reused by later steps: copy to keep.
    foot_lock (True or FootLockSettings) pins planted feet in the poses returned (runtime/footlock.py; per
    character on and off with `foot_lock.enabled`); the model's own state is never changed by it. Models exported
    with the lock in their step graph run it in the same call; older ones run it in numpy after the call.
    """

    def __init__(self, model: MotionModel, n_characters: int = 1, seed: int | None = None,
                 foot_lock: bool | FootLockSettings = False) -> None:
        if n_characters < 1:
            raise ValueError(f"n_characters must be at least 1, got {n_characters}")
        self.model = model
        self.n = n_characters
        self.rng = np.random.default_rng(seed)
        j, f = model.skeleton.n_joints, model.frame_size
        # A graph with the lock inside needs its inputs bound whether or not it is used.
        self._in_graph = model.foot_lock_in_graph
        rig = FootLockRig(model.skeleton, model.layout) if foot_lock or self._in_graph else None
        legs = rig.n_legs if rig is not None else None
        self._z = np.zeros((self.n, model.latent_size), np.float32)
        self._states = (_State(self.n, model.n_cond * f, j, legs), _State(self.n, model.n_cond * f, j, legs))
        self._positions = np.zeros((self.n, j, 3), np.float32)
        self._contacts = np.zeros((self.n, len(model.layout.contact_joints)), np.float32)
        self._diverged = np.zeros(self.n, dtype=bool)
        self._next_frame = np.zeros((self.n, f), np.float32)
        self.foot_lock: FootLock | None = None
        if rig is not None:
            settings = foot_lock if isinstance(foot_lock, FootLockSettings) else FootLockSettings()
            vector = settings_vector(settings, rig, planted_heights(model.meta, model.layout, model.start_frames),
                                     model.fps)
            lock = FootLock(rig, self.n, settings, vector)
            lock.enabled[:] = bool(foot_lock)
            self._rig, self._kinematics = rig.namespace(), PoseKinematics(model.skeleton)
            self._shown = self._states[0].rotations.copy()  # the shown rotations and their world positions
            self._shown_positions = np.zeros((self.n, j, 3), np.float32)
            lock.state = self._states[0].foot
            self.foot_lock = lock if foot_lock else None
            self._lock = lock
        self._bindings = (self._bind(*self._states), self._bind(*self._states[::-1]))
        self._current = 0  # index of the state set that holds the latest frame
        self.home = np.zeros((self.n, 3), np.float32)
        self.home[:, 0] = (np.arange(self.n) - (self.n - 1) / 2) * CHARACTER_SPACING_M
        self.frame = 0
        self._control = ControlState(self.n)
        self.reset()

    def _bind(self, src: _State, dst: _State):
        b = self.model.decoder.io_binding()
        inputs = [("z", self._z), ("condition", src.condition), ("origin", src.origin), ("yaw", src.yaw),
                  ("previous_rotations", src.rotations)]
        outputs = [("next_condition", dst.condition), ("next_origin", dst.origin), ("next_yaw", dst.yaw),
                   ("rotations", dst.rotations), ("positions", self._positions), ("contacts", self._contacts),
                   ("diverged", self._diverged), ("next_frame", self._next_frame)]
        if self._in_graph:
            inputs += [("foot_lock_state", src.foot), ("foot_lock_enabled", self._lock.enabled),
                       ("foot_lock_settings", self._lock.vector)]
            outputs += [("shown_rotations", self._shown), ("shown_positions", self._shown_positions),
                        ("next_foot_lock_state", dst.foot)]
        for name, arr in inputs:
            b.bind_cpu_input(name, arr)
        for name, arr in outputs:
            b.bind_output(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
        return b

    @property
    def n_characters(self) -> int:
        """Number of characters stepped together."""
        return self.n

    @property
    def state(self) -> _State:
        """The latest frame's state: condition, origin (character frame on the ground), yaw, rotations."""
        return self._states[self._current]

    def reset(self, characters: Sequence[int] | np.ndarray | None = None, start: int | None = None,
              origin: np.ndarray | None = None, yaw: float | np.ndarray | None = None,
              frames: np.ndarray | None = None) -> None:
        """Put characters on a start frame (random when start is None), at origin (default: home) and yaw.

        frames (k, n_cond, F), raw feature windows such as a clip's frames, starts the k characters from
        those poses instead of the model's start frames. Their foot locks are forgotten.
        """
        idx = np.arange(self.n) if characters is None else np.asarray(characters, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return
        self._place(idx, start, origin, yaw, frames)

    def _place(self, idx: np.ndarray, start: int | None, origin: np.ndarray | None,
               yaw: float | np.ndarray | None, frames: np.ndarray | None = None) -> None:
        """reset() of characters idx (valid or not)."""
        if np.any(idx < 0) or np.any(idx >= self.n):
            raise IndexError(f"character indices must be in [0, {self.n}), got {idx.tolist()}")
        starts = self.model.start_frames
        if frames is not None:
            window = np.asarray(frames, np.float32)
            if window.shape != (idx.size,) + starts.shape[1:]:
                raise ValueError(f"frames must have shape {(idx.size,) + starts.shape[1:]}, got {window.shape}")
        elif start is None:
            window = starts[self.rng.integers(len(starts), size=idx.size)]
        elif 0 <= start < len(starts):
            window = starts[np.full(idx.size, start)]
        else:
            raise IndexError(f"start must be in [0, {len(starts)}) for this model, got {start}")
        st = self.state
        st.condition[idx] = self.model.normalise(window).reshape(idx.size, -1)
        st.origin[idx] = self.home[idx] if origin is None else np.broadcast_to(origin, (idx.size, 3))
        st.yaw[idx, 0] = 0.0 if yaw is None else yaw
        pose = frame_to_pose(window[:, -1].astype(np.float64), self.model.layout, self.model.skeleton,
                             st.origin[idx].astype(np.float64), st.yaw[idx, 0].astype(np.float64))
        st.rotations[idx] = pose.local_rotations
        self._positions[idx] = pose.positions
        self._contacts[idx] = pose.contacts
        if st.foot is not None:
            st.foot[idx] = 0.0  # no locks, and no last frame to measure the feet's motion from
            self._lock_in_numpy(idx, st.foot, st.foot)

    def _lock_in_numpy(self, idx: np.ndarray | slice, before: np.ndarray, after: np.ndarray) -> None:
        """The foot lock of characters idx in numpy: shown poses from the latest raw ones, state before -> after."""
        lock, rotations = self._lock, self.state.rotations[idx]
        root = self._positions[idx, :1].astype(np.float64)
        world, positions = raw_kinematics(self._kinematics, self._rig, rotations, root[:, 0])
        shown, positions, state = lock_step(np, self._rig, rotations, world, positions, root, self._contacts[idx],
                                            before[idx], lock.enabled[idx], lock.vector)
        self._shown[idx], self._shown_positions[idx], after[idx] = shown, positions, state

    def _sample_latents(self) -> None:
        self.model.sample_latents(self.rng, self._z)

    def _policy_latents(self, control: object, latents: np.ndarray | None) -> np.ndarray:
        """Latents from the model's control policies for controlled characters; the others keep latents."""
        if latents is None:
            self._sample_latents()
            latents = self._z.copy()
        else:
            latents = np.array(latents, dtype=np.float32)
            if latents.shape != self._z.shape:
                raise ValueError(f"latents must have shape {self._z.shape}, got {latents.shape}")
        return self._control.latents(self.model, self.state, control, latents)

    def step(self, latents: np.ndarray | None = None, control: object | None = None) -> Poses:
        """Advance every character one frame and return their poses (views: valid until the next step).

        control (see runtime/control.py) steers characters with the model's policies; the others take
        latents, or random ones when latents is None.
        """
        if control is not None:
            latents = self._policy_latents(control, latents)
        if latents is None:
            self._sample_latents()
        else:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != self._z.shape:
                raise ValueError(f"latents must have shape {self._z.shape}, got {latents.shape}")
            self._z[:] = latents
        self.model.decoder.run_with_iobinding(self._bindings[self._current])
        self._current ^= 1
        self.frame += 1
        if self.foot_lock is not None:
            self.foot_lock.state = self.state.foot
            if not self._in_graph:
                self._lock_in_numpy(slice(None), self._states[self._current ^ 1].foot, self.state.foot)
        if self._diverged.any():
            # A diverging character goes back to a start frame where it stood instead of emitting garbage.
            where = np.flatnonzero(self._diverged)
            before = self._states[self._current ^ 1]
            self._place(where, None, before.origin[where], before.yaw[where, 0])
        return self.poses()

    def features(self) -> np.ndarray:
        """The latest raw feature frame of every character, (N, F) (a new array)."""
        return self.model.denormalise(self.state.condition[:, -self.model.frame_size:])

    def poses(self) -> Poses:
        """The latest poses (views into the controller's buffers); with foot_lock, the locked ones."""
        if self.foot_lock is None:
            rot, pos = self.state.rotations, self._positions
        else:
            rot, pos = self._shown, self._shown_positions
        return Poses(self.frame, pos[:, 0], rot[:, 0], rot, pos, self._contacts, self._diverged)
