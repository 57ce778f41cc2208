"""Control tasks as vectorised environments: many characters stepped at once through the frozen decoder.

An observation is the character's current normalised frame followed by task features in its own frame,
computed by runtime.control (the runtime builds the same observation when it runs the exported policy).
Task bookkeeping is numpy on a few floats per character; the frames stay torch tensors on the device.
Rewards follow Ling et al. 2020 (see ../shared/NOTES.md section 1), with the joystick's target taken
from the commanded direction (the reference derives it from the speed, a bug), and every task pays for foot
skating: without that term a policy finds latents that slide planted feet twice as fast as random walking.
Joystick and path subtract it; the target task scales its progress by exp(-skating) instead, because there a
subtracted penalty about as large as the progress itself taught policies to dawdle; it also discounts progress
made while not facing the target, which taught them to glide backwards, and after some arrivals keeps the
target a while, paying for standing on it. The path task also pays for closing in on the path, so that
characters that wander off learn to come back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from runtime.control import LOOKAHEAD_POINTS, Paths, joystick_features, resample_path, target_features
from runtime.rotations import wrap_angle

from .stepper import PolicyError, Stepper

TASK_FEATURES = {"joystick": [("direction", 2), ("speed", 1)], "target": [("target", 2)],
                 "path": [("lookahead", 2 * LOOKAHEAD_POINTS)]}


@dataclass
class TaskConfig:
    """Task parameters; those the runtime needs too are written into model.json with the policy."""

    episode_s: float = 20.0  # time limit (truncation, bootstrapped) of one episode
    speed_min: float = 0.0  # joystick speeds are drawn from [speed_min, speed_max] m/s
    speed_max: float = 2.0
    command_min_s: float = 2.0  # a new joystick command after a random interval in [min, max] seconds
    command_max_s: float = 6.0
    half_turns: float = 0.0  # joystick: share of commands turning 135-180 degrees from the character's heading
    target_min_m: float = 1.0  # new targets are this far from the character
    target_max_m: float = 10.0
    target_radius_m: float = 0.5  # reached within this distance: bonus, then a new target
    target_bonus: float = 5.0
    energy_weight: float = 0.002  # per (m/s)^2 of mean squared joint speed
    lookahead_m: float = 0.5  # path look-ahead points are this far apart along the path
    path_pace_mps: float = 1.0  # path progress at this speed or faster earns the full reward
    path_size_m: tuple[float, float] = (2.0, 6.0)  # half-extent of the random training curves
    path_approach: float = 1.0  # weight of the reward for closing in on the path (see PathTask.reward)
    skate_weight: float = 1.0  # per m/s of horizontal foot speed while the frame says the foot is planted
    heading_linear: bool = True  # joystick: heading term -2|error|/pi instead of the reference's cos(error) - 1
    speed_relative_below: float = 1.0  # joystick: speed errors of commands slower than this count relative to it
    target_facing: float = 1.0  # target: progress is discounted by exp(-weight x 2|angle to the target|/pi)
    target_hold: float = 0.5  # target: share of arrivals after which the target stays put (see TargetTask)
    target_hold_s: tuple[float, float] = (1.0, 5.0)  # how long it stays, drawn uniformly, seconds

    def runtime(self, task: str) -> dict:
        """The parameters the runtime and benchmarks need for a task."""
        keys = {"joystick": ("speed_min", "speed_max"), "target": ("target_radius_m",),
                "path": ("lookahead_m", "path_pace_mps")}[task]
        return {k: asdict(self)[k] for k in keys}

    def reward(self) -> dict:
        """The reward terms' settings and the joystick's half-turn share, recorded with an exported policy."""
        keys = ("energy_weight", "target_bonus", "skate_weight", "heading_linear", "speed_relative_below",
                "half_turns", "path_approach", "target_facing", "target_hold", "target_hold_s")
        return {k: asdict(self)[k] for k in keys}


# The settings that give each reward term's earlier form (most of them the reference's): a checkpoint written
# before a term existed resumes with these.
EARLIER_REWARD = {"skate_weight": 0.0, "path_approach": 0.0, "heading_linear": False, "target_facing": 0.0,
                  "target_hold": 0.0, "speed_relative_below": 0.0}


def heading_error(yaw: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """|angle| (N,) in [0, pi] between headings yaw (N,) and world directions (N, 2) as (x, z)."""
    return np.abs(wrap_angle(yaw - np.arctan2(direction[:, 0], direction[:, 1])))


def observation_blocks(task: str, frame_size: int) -> list[list]:
    """The observation's block table [[name, start, stop], ...]: the frame, then the task's features."""
    blocks, start = [["frame", 0, frame_size]], frame_size
    for name, size in TASK_FEATURES[task]:
        blocks.append([name, start, start + size])
        start += size
    return blocks


class Characters:
    """A batch of characters: the step graph's state, kept as torch tensors on the stepper's device."""

    def __init__(self, stepper: Stepper, n: int, rng: np.random.Generator) -> None:
        model = stepper.model
        self.stepper, self.n, self.rng, self.device = stepper, n, rng, stepper.device
        self.frame_size = model.frame_size
        self.fps = model.fps
        starts = model.normalise(model.start_frames).reshape(len(model.start_frames), -1)
        self.starts = torch.as_tensor(starts, device=self.device)
        self.condition = self.starts[np.zeros(n, np.int64)].clone()
        self.origin = torch.zeros(n, 3, device=self.device)
        self.yaw = torch.zeros(n, 1, device=self.device)
        self.rotations = torch.zeros(n, model.skeleton.n_joints, 4, device=self.device)
        self.rotations[..., 3] = 1.0
        layout = model.layout
        self.feet = [layout.joint_names.index(name) for name in layout.contact_joints]
        self.feet_xz = torch.zeros(n, len(self.feet), 2, device=self.device)  # world, after the last step
        self.skating = np.zeros(n)  # m/s of planted feet in the last step (0 on a character's first step)
        self.placed = np.ones(n, dtype=bool)  # where feet_xz is stale: placed since the last step

    def place(self, idx: np.ndarray, start: np.ndarray | None = None, origin: np.ndarray | None = None,
              yaw: np.ndarray | None = None) -> None:
        """Put characters idx on start frames (random by default) at origin (default 0) facing yaw (random)."""
        k = len(idx)
        start = self.rng.integers(len(self.starts), size=k) if start is None else start
        yaw = self.rng.uniform(-np.pi, np.pi, k) if yaw is None else yaw
        rows = torch.as_tensor(idx, device=self.device)
        self.condition[rows] = self.starts[torch.as_tensor(start, device=self.device)]
        self.origin[rows] = 0.0 if origin is None else torch.as_tensor(origin, dtype=torch.float32,
                                                                       device=self.device)
        self.yaw[rows, 0] = torch.as_tensor(yaw, dtype=torch.float32, device=self.device)
        self.placed[idx] = True

    @property
    def frame(self) -> torch.Tensor:
        """The current normalised frame (N, F)."""
        return self.condition[:, -self.frame_size:]

    def step(self, z: torch.Tensor) -> torch.Tensor:
        """Advance every character one frame; returns which diverged (N,) bool (their state is garbage)."""
        out = self.stepper(z, self.condition, self.origin, self.yaw, self.rotations)
        self.condition, self.origin, self.yaw, self.rotations = (out["next_condition"], out["next_origin"],
                                                                 out["next_yaw"], out["rotations"])
        feet = out["positions"][:, self.feet][..., [0, 2]]
        # Planted-foot speed, weighted by how planted the new frame says each foot is (the evaluator's measure,
        # made smooth): horizontal world speed of the foot between the two frames.
        speed = torch.linalg.vector_norm(feet - self.feet_xz, dim=-1) * self.fps
        planted = torch.clamp(out["contacts"], 0.0, 1.0)  # raw contacts, one per foot joint
        self.skating = (planted * speed).mean(-1).cpu().numpy() if self.feet else np.zeros(self.n)
        self.skating[self.placed] = 0.0
        self.feet_xz, self.placed[:] = feet, False
        return out["diverged"]

    def ground(self) -> tuple[np.ndarray, np.ndarray]:
        """Origins (N, 3) and yaws (N,) as float64 numpy, for task bookkeeping."""
        return (self.origin.detach().cpu().numpy().astype(np.float64),
                self.yaw[:, 0].detach().cpu().numpy().astype(np.float64))

    def raw_frame(self) -> np.ndarray:
        """The current frame in raw units (N, F) as numpy."""
        return (self.frame * self.stepper.scale + self.stepper.shift).detach().cpu().numpy()


class Task:
    """Commands, task features and rewards of one task for every character."""

    name = ""

    def __init__(self, chars: Characters, config: TaskConfig) -> None:
        self.chars, self.config, self.rng, self.n = chars, config, chars.rng, chars.n

    def reset(self, idx: np.ndarray, origin: np.ndarray, yaw: np.ndarray) -> None:
        """New commands for characters idx, who now stand at origin[idx] facing yaw[idx]."""
        raise NotImplementedError

    def features(self, origin: np.ndarray, yaw: np.ndarray) -> dict[str, np.ndarray]:
        """Task features of every character, by observation block name."""
        raise NotImplementedError

    def reward(self, before: np.ndarray, origin: np.ndarray, yaw: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Reward (N,) of the step that moved characters from origins before to origin, yaw; raw is the new frame."""
        raise NotImplementedError

    def skate_cost(self) -> np.ndarray:
        """The weighted planted-foot speed of the step just taken (N,)."""
        return self.config.skate_weight * self.chars.skating


class JoystickTask(Task):
    """Walk in a commanded world direction at a commanded speed; commands change at random intervals."""

    name = "joystick"

    def __init__(self, chars: Characters, config: TaskConfig) -> None:
        super().__init__(chars, config)
        self.direction = np.zeros((self.n, 2))
        self.speed = np.zeros(self.n)
        self.timer = np.zeros(self.n, np.int64)

    def reset(self, idx, origin, yaw):
        angle = self.rng.uniform(-np.pi, np.pi, len(idx))
        # Uniform directions turn 135-180 degrees only a quarter of the time, and half turns at speed are what
        # policies learn last; half_turns draws that many more of them, relative to where each one faces.
        if self.config.half_turns:  # drawn only when asked for, so that uniform runs keep their random stream
            turn = self.rng.random(len(idx)) < self.config.half_turns
            side = self.rng.choice((-1.0, 1.0), turn.sum())
            angle[turn] = yaw[idx][turn] + side * self.rng.uniform(0.75 * np.pi, np.pi, turn.sum())
        self.direction[idx] = np.stack([np.sin(angle), np.cos(angle)], axis=-1)  # heading angle, 0 = +Z
        self.speed[idx] = self.rng.uniform(self.config.speed_min, self.config.speed_max, len(idx))
        c = self.config
        self.timer[idx] = np.round(self.rng.uniform(c.command_min_s, c.command_max_s, len(idx)) * self.chars.fps)

    def features(self, origin, yaw):
        return joystick_features(self.direction, self.speed, yaw)

    def reward(self, before, origin, yaw, raw):
        root = raw[:, :3]
        speed = np.hypot(root[:, 0], root[:, 1]) * self.chars.fps
        # The angle error is between the character's heading and the commanded direction itself.
        error = heading_error(yaw, self.direction)
        # cos(error) - 1 is flat near a half turn, so it barely tells a character facing away which way to turn;
        # the linear term agrees with it at 0 and 180 degrees and pulls equally hard all the way round.
        heading = -2.0 / np.pi * error if self.config.heading_linear else np.cos(error) - 1.0
        # The reference's error in m/s lets a policy walk a 0.5 m/s command at 0.8 m/s for a small cost; below
        # speed_relative_below the error is scaled up, so that 25% too fast costs what it does at that speed
        # (at most 4x, so that a command to stand still does not make every sway ruinous).
        relative = np.clip(self.config.speed_relative_below / np.maximum(self.speed, 1e-6), 1.0, 4.0)
        r = np.exp(heading - relative * np.abs(speed - self.speed)) - self.skate_cost()
        self.timer -= 1
        due = np.flatnonzero(self.timer <= 0)
        if due.size:
            self.reset(due, origin, yaw)
        return r


class TargetTask(Task):
    """Walk to a point; on arrival a bonus, then a new point, or after some arrivals stand on it a while first.

    Progress is rewarded and joint speed penalised. While a reached target is held, each step on it pays
    exp(-skating) and stepping off costs the distance lost, so that a character told to stay on its mark
    stands there instead of circling it (the runtime holds a target for as long as the user does).
    """

    name = "target"

    def __init__(self, chars: Characters, config: TaskConfig) -> None:
        super().__init__(chars, config)
        self.target = np.zeros((self.n, 2))
        self.reached = np.zeros(self.n, np.int64)
        self.hold = np.zeros(self.n, np.int64)  # steps left standing on a reached target (0: walking to it)

    def reset(self, idx, origin, yaw):
        self.reached[idx] = 0
        self.hold[idx] = 0
        self._new_target(idx, origin)

    def _new_target(self, idx: np.ndarray, origin: np.ndarray) -> None:
        angle = self.rng.uniform(-np.pi, np.pi, len(idx))
        dist = self.rng.uniform(self.config.target_min_m, self.config.target_max_m, len(idx))
        self.target[idx] = origin[idx][:, [0, 2]] + dist[:, None] * np.stack([np.sin(angle), np.cos(angle)], -1)

    def features(self, origin, yaw):
        return target_features(self.target, origin, yaw)

    def reward(self, before, origin, yaw, raw):
        c = self.config
        d_before = np.linalg.norm(self.target - before[:, [0, 2]], axis=1)
        d_now = np.linalg.norm(self.target - origin[:, [0, 2]], axis=1)
        vel = raw[:, self.chars.stepper.model.layout.slice("velocities")]
        energy = c.energy_weight * (vel.reshape(self.n, -1, 3) ** 2).sum(-1).mean(-1)
        near = d_now < c.target_radius_m
        holding = self.hold > 0
        arrived = near & ~holding
        progress = (d_before - d_now) * self.chars.fps
        # Skating and facing away discount progress but never make walking away look better. Without the facing
        # term policies reach targets behind them by sliding backwards on planted feet rather than turning.
        skate = self.skate_cost()
        facing = heading_error(yaw, self.target - origin[:, [0, 2]])
        walk = np.where(progress > 0, progress * np.exp(-skate - c.target_facing * 2.0 / np.pi * facing), progress)
        stay = np.where(near, np.exp(-skate), 0.0) + np.minimum(progress, 0.0)
        r = np.where(holding, stay, walk) + c.target_bonus * arrived - energy
        self.hold[holding] -= 1
        due = [np.flatnonzero(holding & (self.hold == 0))]  # held long enough
        hit = np.flatnonzero(arrived)
        if hit.size:
            self.reached[hit] += 1
            held = self.rng.random(hit.size) < c.target_hold
            self.hold[hit[held]] = np.round(self.rng.uniform(*c.target_hold_s, held.sum()) * self.chars.fps)
            due.append(hit[~held])
        due = np.concatenate(due)
        if due.size:
            self._new_target(due, origin)
        return r


def random_closed_curve(rng: np.random.Generator, size: tuple[float, float]) -> np.ndarray:
    """A random figure-eight, ellipse or wobbly loop (points (400, 2), metres), centred at 0, randomly turned."""
    t = np.linspace(0.0, 2 * np.pi, 400, endpoint=False)
    a, b = rng.uniform(*size, 2)
    kind = rng.integers(3)
    if kind == 0:
        pts = np.stack([a * np.sin(t), b * np.sin(t) * np.cos(t)], -1)  # figure-eight (Gerono)
    elif kind == 1:
        pts = np.stack([a * np.cos(t), b * np.sin(t)], -1)
    else:
        wobble = 1.0 + 0.25 * np.sin(rng.integers(2, 5) * t + rng.uniform(0, 2 * np.pi))
        pts = np.stack([a * wobble * np.cos(t), b * wobble * np.sin(t)], -1)
    turn = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(turn), np.sin(turn)
    return pts @ np.array([[c, s], [-s, c]])


class PathTask(Task):
    """Follow a closed curve, steered by look-ahead points; rewarded for staying on it while moving along it."""

    name = "path"

    def __init__(self, chars: Characters, config: TaskConfig) -> None:
        super().__init__(chars, config)
        self.paths = Paths(self.n)
        self.dist = np.zeros(self.n)  # distance to the path after the last step

    def reset(self, idx, origin, yaw):
        curves = []
        for _ in idx:  # a new curve per episode, not per frame
            pts = random_closed_curve(self.rng, self.config.path_size_m)
            pts = pts - pts[self.rng.integers(len(pts))] + self.rng.normal(0.0, 0.3, 2)
            curves.append(resample_path(pts, closed=True))
        self.follow(idx, [c + origin[i, [0, 2]] for c, i in zip(curves, idx)], origin[idx][:, [0, 2]])

    def follow(self, idx: np.ndarray, curves: list[np.ndarray], xz: np.ndarray) -> None:
        """Give characters idx, standing at xz (len(idx), 2), closed resampled curves to follow."""
        self.dist[idx] = self.paths.set(idx, curves, np.ones(len(idx), bool), xz)

    def features(self, origin, yaw):
        return self.paths.features(np.arange(self.n), yaw, origin[:, [0, 2]], self.config.lookahead_m)

    def reward(self, before, origin, yaw, raw):
        advanced, dist = self.paths.track(np.arange(self.n), origin[:, [0, 2]])
        pace = self.config.path_pace_mps
        progress = np.clip(advanced * self.chars.fps / pace, -1.0, 1.0)
        # Closing in on the path is paid as much as leaving it costs (shaping by the distance, unclipped so that
        # it telescopes): without it a character that wanders a few metres off, as fast random walkers do, sees
        # no reward at all and never learns to come back.
        approach = self.config.path_approach * (self.dist - dist) * self.chars.fps / pace
        self.dist = dist
        return np.exp(-2.0 * dist) * progress + approach - self.skate_cost()


TASKS = {t.name: t for t in (JoystickTask, TargetTask, PathTask)}


class ControlEnv:
    """n characters doing one task: reset() -> obs; step(action) -> obs, reward, terminated, truncated, final_obs.

    Actions are latents (N, latent). Finished characters start a new episode at once; final_obs holds the
    observation they ended on (for time-limit bootstrapping) and obs their new episode's first one.
    """

    def __init__(self, task: str, stepper: Stepper, n: int, config: TaskConfig | None = None, seed: int = 0) -> None:
        if task not in TASKS:
            raise PolicyError(f"unknown task {task!r} (expected {', '.join(TASKS)})")
        self.config = config or TaskConfig()
        self.rng = np.random.default_rng(seed)
        self.chars = Characters(stepper, n, self.rng)
        self.task = TASKS[task](self.chars, self.config)
        self.name, self.n, self.device = task, n, stepper.device
        self.blocks = observation_blocks(task, self.chars.frame_size)
        self.obs_size = self.blocks[-1][2]
        self.action_size = stepper.model.latent_size
        self.limit = int(round(self.config.episode_s * self.chars.fps))
        self.t = np.zeros(n, np.int64)

    def reset(self) -> torch.Tensor:
        """Start every character's episode; returns the observations (N, obs)."""
        self._restart(np.arange(self.n))
        return self.observe()

    def _restart(self, idx: np.ndarray) -> None:
        self.chars.place(idx)
        self.t[idx] = 0
        origin, yaw = self.chars.ground()
        self.task.reset(idx, origin, yaw)

    def observe(self) -> torch.Tensor:
        """Observations of every character (N, obs) on the device."""
        origin, yaw = self.chars.ground()
        feats = self.task.features(origin, yaw)
        parts = [self.chars.frame] + [torch.as_tensor(feats[name], dtype=torch.float32, device=self.device)
                                      for name, _, _ in self.blocks[1:]]
        return torch.cat(parts, dim=1)

    def step(self, action: torch.Tensor):
        """Step every character with latents action (N, latent); see the class docstring."""
        before, _ = self.chars.ground()
        diverged = self.chars.step(action).cpu().numpy()
        origin, yaw = self.chars.ground()
        reward = self.task.reward(before, origin, yaw, self.chars.raw_frame())
        reward[diverged] = 0.0
        self.t += 1
        truncated = (self.t >= self.limit) & ~diverged
        final = self.observe()
        done = np.flatnonzero(diverged | truncated)
        if done.size:
            self._restart(done)
            obs = self.observe()
        else:
            obs = final
        return (obs, torch.as_tensor(reward, dtype=torch.float32, device=self.device),
                torch.as_tensor(diverged, device=self.device), torch.as_tensor(truncated, device=self.device), final)
