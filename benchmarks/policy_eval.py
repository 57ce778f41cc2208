"""Control policies of a model directory against the control issue's targets, through runtime.Controller.

Joystick: 200 random commands (speeds from the policy's training range), each held 5 s; a command passes
    when the heading comes within 20 degrees of it within 2 s and the speed (over 0.5 s) within 25% of it
    (at least 0.1 m/s) within 3 s; the share passing is also given apart for the hard commands (turning
    135-180 degrees, slower than 1 m/s, 2 m/s or faster). Target: 100 random targets 1-10 m away, reached
    within the policy's radius in under 15 s, then told to stay there (the share of the time after arriving
    spent within the radius is reported; frozen windows count on the way only). Path: mean distance to a
    figure-eight (8 m x 4 m) over 60 s.
Motion quality under control against random latents, on the pose engines show (FK of the returned rotations):
frozen 2 s windows, foot skating (runtime.contacts' planted-foot rule, the evaluator's) as a ratio to random
walking on the same model ("comparable" is at most 1.25x), and the share of moving frames spent walking backwards.
Cost: Controller.step with and without control at 1 and 64 characters.
Usage: python benchmarks/policy_eval.py --model DIR [--tasks joystick target path] [--seed N] [--precision int8]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from runtime.controller import Controller
from runtime.model import PRECISIONS, MotionModel, load_model
from runtime.rotations import wrap_angle
from runtime.contacts import foot_floor, planted_speed
from trainer.motion_metrics import FREEZE_WINDOW_S, frozen_windows, joint_speed

HEADING_DEG, HEADING_S = 20.0, 2.0
SPEED_TOLERANCE, SPEED_FLOOR, SPEED_S, SPEED_WINDOW_S = 0.25, 0.1, 3.0, 0.5
COMMAND_S = 5.0
TARGET_LIMIT_S = 15.0
PATH_S = 60.0
BACKWARDS_MIN_SPEED = 0.3  # m/s: slower steps are standing or turning on the spot, not walking either way
SKATE_RATIO_LIMIT = 1.25  # foot skating under control this many times random walking's still counts as comparable


def figure_eight(n: int = 400) -> np.ndarray:
    """A closed figure-eight 8 m long and 4 m wide (Gerono's lemniscate), through the origin."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([2.0 * np.sin(2 * t), 4.0 * np.sin(t)], axis=-1)


class Recorder:
    """Raw frames and the shown pose (FK of the returned rotations) of every step, for the motion-quality measures."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.shown: list[np.ndarray] = []

    def add(self, ctrl: Controller) -> None:
        """Keep the latest raw frame and shown world pose of every character."""
        poses = ctrl.poses()
        self.frames.append(ctrl.features())
        self.shown.append(ctrl.model.skeleton.forward_kinematics(poses.local_rotations.astype(np.float64),
                                                                 poses.root_position.astype(np.float64))[0])

    def floor(self, model: MotionModel) -> np.ndarray:
        """The contact joints' floor heights in this recording (runtime.contacts.foot_floor)."""
        feet = [model.layout.joint_names.index(n) for n in model.layout.contact_joints]
        return foot_floor(np.stack(self.shown)[..., feet, 1])

    def quality(self, model: MotionModel, floor: np.ndarray, until: np.ndarray | None = None) -> dict[str, float]:
        """Frozen-window fraction (windows ending before step until[i] only, if given), planted-foot skating
        (runtime.contacts on the shown pose, floors from random walking) and the share walked backwards."""
        f = np.stack(self.frames, axis=1)  # (N, T, F)
        shown = np.stack(self.shown, axis=1)  # (N, T, J, 3)
        still = frozen_windows(joint_speed(shown, model.fps), model.fps)
        ends = (np.arange(still.shape[1]) + 1) * round(FREEZE_WINDOW_S * model.fps)
        counted = np.ones_like(still) if until is None else ends[None, :] <= np.asarray(until)[:, None]
        out = {"frozen": float(still[counted].mean()) if counted.any() else 0.0}
        # Moving against its facing: the locomotion data walks forwards, so backing up is a glide the policy found.
        root = f[:, 1:, model.layout.slice("root")]
        speed = np.hypot(root[..., 0], root[..., 1]) * model.fps
        moving = speed > BACKWARDS_MIN_SPEED
        out["backwards"] = float((root[..., 1][moving] < 0).mean()) if moving.any() else 0.0
        if model.layout.contact_joints:
            feet = [model.layout.joint_names.index(n) for n in model.layout.contact_joints]
            slide, planted = planted_speed(shown[:, :, feet], model.fps, floor)
            out["skate"] = float(slide[planted].mean()) if planted.any() else 0.0
        return out


def joystick(model: MotionModel, seed: int, floor: np.ndarray) -> dict:
    """Heading and speed response to 200 random commands (50 characters x 4 commands)."""
    spec = model.policies["joystick"].spec["task"]
    n, per, fps = 50, 4, model.fps
    rng = np.random.default_rng(seed)
    ctrl = Controller(model, n, seed=seed)
    angle = rng.uniform(-np.pi, np.pi, (per, n))
    speed = rng.uniform(spec["speed_min"], spec["speed_max"], (per, n))
    steps = int(COMMAND_S * fps)
    window = int(SPEED_WINDOW_S * fps)
    heading_ok, speed_ok = np.zeros((per, n), bool), np.zeros((per, n), bool)
    turn = np.zeros((per, n))  # how far each command turns from where the character faces when it comes
    rec = Recorder()
    for k in range(per):
        control = {"task": "joystick", "direction": np.stack([np.sin(angle[k]), np.cos(angle[k])], -1),
                   "speed": speed[k]}
        turn[k] = np.abs(wrap_angle(ctrl.state.yaw[:, 0] - angle[k]))
        xz = []
        for t in range(steps):
            ctrl.step(control=control)
            rec.add(ctrl)
            xz.append(ctrl.state.origin[:, [0, 2]].astype(np.float64))
            err = np.abs(wrap_angle(ctrl.state.yaw[:, 0] - angle[k]))
            if t < HEADING_S * fps:
                heading_ok[k] |= err < np.radians(HEADING_DEG)
            if window <= t < SPEED_S * fps:
                v = np.linalg.norm(xz[-1] - xz[-1 - window], axis=1) / SPEED_WINDOW_S
                speed_ok[k] |= np.abs(v - speed[k]) <= np.maximum(SPEED_TOLERANCE * speed[k], SPEED_FLOOR)
    both = heading_ok & speed_ok
    # Where the misses are: half turns and the two ends of the speed range are the hard commands.
    hard = {"half_turns": turn >= np.radians(135), "slow": speed < 1.0, "fast": speed >= 2.0}
    by_kind = {f"both_{k}": float(both[m].mean()) for k, m in hard.items() if m.any()}
    return {"commands": per * n, "heading": float(heading_ok.mean()), "speed": float(speed_ok.mean()),
            "both": float(both.mean()), "pass": bool(both.mean() >= 0.9), **by_kind, **rec.quality(model, floor)}


def target(model: MotionModel, seed: int, floor: np.ndarray) -> dict:
    """Share of 100 random targets 1-10 m away reached in under 15 s."""
    n, fps = 100, model.fps
    radius = model.policies["target"].spec["task"]["target_radius_m"]
    rng = np.random.default_rng(seed)
    ctrl = Controller(model, n, seed=seed)
    angle, dist = rng.uniform(-np.pi, np.pi, n), rng.uniform(1.0, 10.0, n)
    goal = ctrl.state.origin[:, [0, 2]] + dist[:, None] * np.stack([np.sin(angle), np.cos(angle)], -1)
    reached = np.full(n, np.inf)
    after, on_mark = np.zeros(n), np.zeros(n)  # steps since arriving, and how many of them on the target
    rec = Recorder()
    for t in range(int(TARGET_LIMIT_S * fps)):
        ctrl.step(control={"task": "target", "target": goal})
        rec.add(ctrl)
        near = np.linalg.norm(ctrl.state.origin[:, [0, 2]] - goal, axis=1) < radius
        arrived = np.isfinite(reached)
        after += arrived
        on_mark += arrived & near
        reached[near & ~arrived] = (t + 1) / fps
    share = float(np.isfinite(reached).mean())
    stays = on_mark[after > 0].sum() / after[after > 0].sum() if (after > 0).any() else None
    # Standing on a reached target is the task, not freezing: only windows on the way count as frozen.
    return {"targets": n, "reached": share, "median_s": float(np.median(reached[np.isfinite(reached)]))
            if share else None, "pass": share >= 0.95, "stays_on_target": stays,
            **rec.quality(model, floor, until=np.where(np.isfinite(reached), reached * fps, np.inf))}


def path(model: MotionModel, seed: int, floor: np.ndarray) -> dict:
    """Mean distance to a figure-eight over 60 s for 8 characters starting on it."""
    from runtime.control import resample_path

    n, fps = 8, model.fps
    curve = figure_eight()
    dense = resample_path(curve, closed=True, spacing=0.02)
    ctrl = Controller(model, n, seed=seed)
    first = dense[0] - dense[-1]
    ctrl.reset(origin=np.array([dense[0, 0], 0.0, dense[0, 1]]), yaw=float(np.arctan2(first[0], first[1])))
    dists, travelled, last = [], np.zeros(n), ctrl.state.origin[:, [0, 2]].copy()
    rec = Recorder()
    for _ in range(int(PATH_S * fps)):
        ctrl.step(control={"task": "path", "path": curve, "closed": True})
        rec.add(ctrl)
        xz = ctrl.state.origin[:, [0, 2]]
        travelled += np.linalg.norm(xz - last, axis=1)
        last = xz.copy()
        dists.append(np.linalg.norm(dense[None] - xz[:, None], axis=-1).min(axis=1))
    mean = float(np.mean(dists))
    return {"mean_distance_m": mean, "max_distance_m": float(np.max(dists)),
            "metres_travelled": float(travelled.mean()), "pass": mean < 0.5, **rec.quality(model, floor)}


def random_walk(model: MotionModel, seed: int) -> tuple[dict, np.ndarray]:
    """Motion quality of random latents, the baseline for the controlled runs, and its feet's floor heights."""
    ctrl = Controller(model, 50, seed=seed)
    rec = Recorder()
    for _ in range(int(20 * model.fps)):
        ctrl.step()
        rec.add(ctrl)
    floor = rec.floor(model)
    return rec.quality(model, floor), floor


def step_cost(model: MotionModel) -> dict:
    """Milliseconds per Controller.step without and with control (every character on the first policy)."""
    task = sorted(model.policies)[0]
    control = {"joystick": {"direction": [0.0, 1.0], "speed": 1.0}, "target": {"target": [5.0, 5.0]},
               "path": {"path": figure_eight()}}[task]
    out = {"task": task}
    for n in (1, 64):
        ctrl = Controller(model, n, seed=0)
        for label, kwargs in (("free", {}), ("controlled", {"control": {"task": task, **control}})):
            ctrl.step(**kwargs)
            t0, calls = time.perf_counter(), 0
            while time.perf_counter() - t0 < 0.5 or calls < 20:
                ctrl.step(**kwargs)
                calls += 1
            out[f"{label}_ms_{n}"] = 1000 * (time.perf_counter() - t0) / calls
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the evaluations of the model's policies and print one line per measure."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("Usage: ")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory with policies (default: the shipped default model)")
    p.add_argument("--tasks", nargs="+", choices=["joystick", "target", "path"], help="default: every policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="float32", help="the step graph the policies steer")
    args = p.parse_args(argv)
    model = load_model(args.model, precision=args.precision)
    tasks = args.tasks or sorted(model.policies)
    missing = [t for t in tasks if t not in model.policies]
    if not tasks or missing:
        print(f"error: model {model.name!r} has no {missing[0] if missing else 'control'} policy", file=sys.stderr)
        return 2
    print(f"model {model.name} ({model.path}, {model.precision}), policies: {', '.join(sorted(model.policies))}")
    for name, spec in sorted(model.policies.items()):
        print(f"  {name}: trained {spec.spec.get('training', {})}")
    base, floor = random_walk(model, args.seed)
    print(f"random walk: frozen windows {base['frozen']:.3f}, backwards {base['backwards']:.3f}, "
          f"skating {base.get('skate', float('nan')):.3f} m/s")
    for task in tasks:
        t0 = time.perf_counter()
        result = {"joystick": joystick, "target": target, "path": path}[task](model, args.seed, floor)
        if "skate" in result and base.get("skate"):
            result["skate_ratio"] = result["skate"] / base["skate"]
            result["skate_pass"] = bool(result["skate_ratio"] <= SKATE_RATIO_LIMIT)
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
        print(f"{task}: {shown} ({time.perf_counter() - t0:.0f} s)")
    cost = step_cost(model)
    print("step cost (ms): " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in cost.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
