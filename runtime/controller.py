"""Controller: N characters stepped together through the decoder, returning engine-ready poses."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .control import ControlState
from .features import frame_to_pose
from .footlock import FootLock, FootLockSettings
from .model import MotionModel

CHARACTER_SPACING_M = 2.0  # characters start side by side along +X, this far apart


class Poses:
    """One frame of every character: float32 arrays with the character index first.

    local_rotations are (x, y, z, w) relative to each parent with the skeleton offsets as rest translations;
    the root's entry is its world rotation. Quaternions keep the previous frame's hemisphere.
    positions (N, J, 3) are world joint positions; a controller with foot locking computes them from the
    shown rotations on first use (forward kinematics), so a step that only needs rotations does not pay.
    """

    def __init__(self, frame: int, root_position: np.ndarray, root_rotation: np.ndarray,
                 local_rotations: np.ndarray, positions: np.ndarray | Callable[[], np.ndarray],
                 contacts: np.ndarray, reset: np.ndarray) -> None:
        self.frame = frame
        self.root_position = root_position  # (N, 3)
        self.root_rotation = root_rotation  # (N, 4)
        self.local_rotations = local_rotations  # (N, J, 4)
        self._positions = positions
        self.contacts = contacts  # (N, C)
        self.reset = reset  # (N,) bool: put back on a start frame by the divergence guard this step

    @property
    def positions(self) -> np.ndarray:
        """World joint positions (N, J, 3)."""
        if callable(self._positions):
            self._positions = self._positions()
        return self._positions

    def copy(self) -> "Poses":
        """A copy that later steps do not overwrite."""
        return Poses(self.frame, *(np.array(getattr(self, k)) for k in
                                   ("root_position", "root_rotation", "local_rotations", "positions",
                                    "contacts", "reset")))


class _State:
    """The per-character state the step graph reads, in buffers onnxruntime reads and writes in place."""

    def __init__(self, n: int, cond: int, joints: int) -> None:
        self.condition = np.zeros((n, cond), np.float32)
        self.origin = np.zeros((n, 3), np.float32)
        self.yaw = np.zeros((n, 1), np.float32)
        self.rotations = np.zeros((n, joints, 4), np.float32)
        self.rotations[..., 3] = 1.0


class Controller:
    """Steps n_characters through a MotionModel; random latents by default, or given ones.

    Each step is one onnxruntime call on pre-bound buffers: two state sets swap roles every step, so the
    decoder allocates nothing. The arrays of a returned Poses are reused by later steps: copy to keep.
    foot_lock (True or FootLockSettings) pins planted feet in the poses returned (runtime/footlock.py; per
    character on and off with `foot_lock.enabled`); the model's own state is never changed by it.
    """

    def __init__(self, model: MotionModel, n_characters: int = 1, seed: int | None = None,
                 foot_lock: bool | FootLockSettings = False) -> None:
        if n_characters < 1:
            raise ValueError(f"n_characters must be at least 1, got {n_characters}")
        self.model = model
        self.n = n_characters
        self.rng = np.random.default_rng(seed)
        j, f = model.skeleton.n_joints, model.frame_size
        self._z = np.zeros((self.n, model.latent_size), np.float32)
        self._states = (_State(self.n, model.n_cond * f, j), _State(self.n, model.n_cond * f, j))
        self._positions = np.zeros((self.n, j, 3), np.float32)
        self._contacts = np.zeros((self.n, len(model.layout.contact_joints)), np.float32)
        self._diverged = np.zeros(self.n, dtype=bool)
        self._next_frame = np.zeros((self.n, f), np.float32)
        self._bindings = (self._bind(*self._states), self._bind(*self._states[::-1]))
        self._current = 0  # index of the state set that holds the latest frame
        self.home = np.zeros((self.n, 3), np.float32)
        self.home[:, 0] = (np.arange(self.n) - (self.n - 1) / 2) * CHARACTER_SPACING_M
        self.frame = 0
        self._control = ControlState(self.n)
        self.foot_lock: FootLock | None = None
        if foot_lock:
            settings = foot_lock if isinstance(foot_lock, FootLockSettings) else None
            self.foot_lock = FootLock(model.skeleton, model.layout, self.n, settings)
            self._shown = self.state.rotations.copy()  # the shown rotations, and the root they hang from
            self._shown_root = np.zeros((self.n, 3), np.float32)
            self._shown_positions: np.ndarray | None = None
        self.reset()

    def _bind(self, src: _State, dst: _State):
        b = self.model.decoder.io_binding()
        for name, arr in (("z", self._z), ("condition", src.condition), ("origin", src.origin),
                          ("yaw", src.yaw), ("previous_rotations", src.rotations)):
            b.bind_cpu_input(name, arr)
        for name, arr in (("next_condition", dst.condition), ("next_origin", dst.origin), ("next_yaw", dst.yaw),
                          ("rotations", dst.rotations), ("positions", self._positions),
                          ("contacts", self._contacts), ("diverged", self._diverged),
                          ("next_frame", self._next_frame)):
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
        those poses instead of the model's start frames.
        """
        idx = np.arange(self.n) if characters is None else np.asarray(characters, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return
        self._place(idx, start, origin, yaw, frames)
        if self.foot_lock is not None:
            self._shown[idx] = self.foot_lock.apply(self.state.rotations[idx], self._positions[idx, 0],
                                                    self._contacts[idx], idx)
            self._shown_root[idx] = self._positions[idx, 0]
            self._shown_positions = None

    def _place(self, idx: np.ndarray, start: int | None, origin: np.ndarray | None,
               yaw: float | np.ndarray | None, frames: np.ndarray | None = None) -> None:
        """reset() without showing the new pose: their foot locks are forgotten, the next step shows it."""
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
        if self.foot_lock is not None:
            self.foot_lock.reset(idx)

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
        if self._diverged.any():
            # A diverging character goes back to a start frame where it stood instead of emitting garbage.
            where = np.flatnonzero(self._diverged)
            before = self._states[self._current ^ 1]
            self._place(where, None, before.origin[where], before.yaw[where, 0])
        if self.foot_lock is not None:
            self._shown = self.foot_lock.apply(self.state.rotations, self._positions[:, 0], self._contacts)
            self._shown_root = self._positions[:, 0].copy()
            self._shown_positions = None
        return self.poses()

    def features(self) -> np.ndarray:
        """The latest raw feature frame of every character, (N, F) (a new array)."""
        return self.model.denormalise(self.state.condition[:, -self.model.frame_size:])

    def poses(self) -> Poses:
        """The latest poses (views into the controller's buffers); with foot_lock, the locked ones."""
        if self.foot_lock is None:
            rot, pos = self.state.rotations, self._positions
            return Poses(self.frame, pos[:, 0], rot[:, 0], rot, pos, self._contacts, self._diverged)
        rot = self._shown
        return Poses(self.frame, self._shown_root, rot[:, 0], rot, self._locked_positions, self._contacts,
                     self._diverged)

    def _locked_positions(self) -> np.ndarray:
        """World joint positions of the shown (foot-locked) rotations, computed once per frame."""
        if self._shown_positions is None:
            self._shown_positions = self.foot_lock.positions(self._shown, self._shown_root)
        return self._shown_positions
