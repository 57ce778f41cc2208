"""Foot locking against the raw output, side by side in one run: planted-foot sliding, pops, FK, cost.

Every scenario steps one controller with foot_lock on: the lock never changes what the model is fed, so the
raw output is the same run's raw rotations (FK gives their positions) and the locked output is what the
controller shows. Scenarios: random walking and each control policy of the model (joystick: random commands
held 5 s; target: random targets 1-10 m away, a new one on arrival; path: a figure-eight), 32 characters x
30 s unless told otherwise. The training mocap of the model is measured with the same rules.

- sliding: planted frames found from shown positions by runtime.contacts (a contact joint within 2.5 cm of
  its floor, a low percentile of its height in the mocap, vertical speed under 0.15 m/s, held 3 or more
  frames); the mean horizontal speed on planted frames, and its ratio to the mocap's own (target: 1.1x).
- pops: the largest per-frame joint acceleration (second difference of every joint's world position) on the
  frames where a lock starts or a release fades, against the mocap's 99.9th percentile over all frames and
  joints; the raw output on the same frames beside it. Knee angle: largest change from one frame to the next.
- bones and FK: joint distances against the skeleton's bone lengths, and the skeleton's forward kinematics of
  the shown rotations against the shown positions (both in mm); the lowest contact joint.
- cost: Controller.step at 1 and 1,024 characters, stepped in turn in this run: without the lock and with it.
  For a model whose step graph locks feet, "without" is that graph cut before the lock (the step as exported
  before it), and the lock in numpy after the cut graph is timed too (what older model directories run).

The model measured is the shipped default one unless --model DIR --frames-npz NPZ name another and its mocap;
the default model's mocap is rebuilt with the README's recipe (trainer.procedural, seed 7) in a temporary
folder. When ../shared/mocap/bandai2_locomotion exists, a model is trained on it with configs/mocap.toml in a
temporary folder that is deleted afterwards (nothing derived is kept), or --bandai-model DIR
--bandai-frames-npz NPZ reuse one.
Usage: python benchmarks/foot_lock.py [--model DIR --frames-npz NPZ] [--bandai-model DIR --bandai-frames-npz NPZ]
       [--no-bandai] [--characters 32] [--seconds 30]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.contacts import foot_floor, planted_speed
from runtime.controller import Controller
from runtime.features import FeatureLayout, decode
from runtime.model import MotionModel, load_model, sha256_file
from runtime.skeleton import Skeleton

ROOT = Path(__file__).resolve().parents[1]
BANDAI = ROOT.parent / "shared" / "mocap" / "bandai2_locomotion"
SLIDE_TARGET = 1.1
COMMAND_S = 5.0
TARGET_LIMIT_S = 15.0
SETTLE_FRAMES = 2  # frames after the start pose that no measure uses (their velocity is not defined yet)


def run_module(*args: str, cwd: Path = ROOT) -> None:
    """python -m args in a fresh process; stops the benchmark with its output when it fails."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: python -m {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-2000:]}")


def procedural_frames(work: Path) -> Path:
    """The default model's training frames, made again with the README's recipe."""
    run_module("trainer.procedural", str(work / "procedural"), "--clips", "24", "--seconds", "60", "--seed", "7")
    run_module("trainer.prepare", str(work / "procedural"), "-o", str(work / "procedural.npz"), "--mirror")
    return work / "procedural.npz"


def bandai_model(work: Path) -> tuple[Path, Path]:
    """A model trained on the Bandai locomotion data with the recommended recipe (configs/mocap.toml), and its frames."""
    frames, run, model = work / "frames.npz", work / "run", work / "model"
    run_module("trainer.prepare", str(BANDAI), "-o", str(frames), "--mirror")
    run_module("trainer.train", str(frames), "--out", str(run), "--config", str(ROOT / "configs" / "mocap.toml"),
               "--threads", "1", "--no-progress")
    run_module("trainer.export", str(run), "--out", str(model), "--licence", "CC BY-NC-ND 4.0: do not share")
    return model, frames


class Mocap:
    """A frames.npz as world positions per clip, with the measures the outputs are compared to."""

    def __init__(self, path: Path) -> None:
        d = np.load(path)
        self.layout = FeatureLayout.from_json(str(d["layout"]))
        self.skeleton = Skeleton.from_json(str(d["skeleton"]))
        self.fps = float(d["fps"])
        data, ends = d["data"].astype(np.float64), d["end_indices"]
        starts = np.concatenate([[0], ends[:-1] + 1])
        self.clips = [decode(data[a:b + 1], self.layout, self.skeleton, d["clip_start_root"][k])[0].positions
                      for k, (a, b) in enumerate(zip(starts, ends))]
        self.feet = [self.skeleton.index(n) for n in self.layout.contact_joints]
        self.floor = foot_floor(np.concatenate([c[:, self.feet, 1] for c in self.clips]))
        speeds, planted = [], []
        for clip in self.clips:
            speed, mask = planted_speed(clip[:, self.feet], self.fps, self.floor)
            speeds.append(speed[mask])
            planted.append(mask)
        self.slide = float(np.concatenate(speeds).mean())
        self.planted = float(np.concatenate(planted).mean())
        accel = np.concatenate([acceleration(c, self.fps).reshape(-1) for c in self.clips if len(c) > 2])
        self.accel_999 = float(np.percentile(accel, 99.9))
        knees = np.concatenate([np.abs(np.diff(knee_angles(c, self.skeleton, self.layout), axis=0)).reshape(-1)
                                for c in self.clips])
        self.knee_999, self.knee_max = float(np.percentile(knees, 99.9)), float(knees.max())


def acceleration(p: np.ndarray, fps: float) -> np.ndarray:
    """Per-frame joint accelerations (T, ..., J) in m/s^2 (zero on the first and last frame)."""
    a = np.zeros(p.shape[:-1])
    a[1:-1] = np.linalg.norm(p[2:] - 2 * p[1:-1] + p[:-2], axis=-1) * fps * fps
    return a


def knee_angles(p: np.ndarray, skeleton: Skeleton, layout: FeatureLayout) -> np.ndarray:
    """Knee bend (degrees) of each leg, (T, ..., L), from world positions."""
    from runtime.footlock import find_legs

    out = []
    for leg in find_legs(skeleton, layout):
        thigh, shin = p[..., leg.knee, :] - p[..., leg.hip, :], p[..., leg.ankle, :] - p[..., leg.knee, :]
        cos = np.sum(thigh * shin, -1) / (np.linalg.norm(thigh, axis=-1) * np.linalg.norm(shin, axis=-1))
        out.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return np.stack(out, -1)


def commands(model: MotionModel, task: str, n: int, rng: np.random.Generator):
    """A function (step, controller) -> control dict for one policy, as benchmarks/policy_eval.py drives them."""
    fps = model.fps
    if task == "joystick":
        spec = model.policies["joystick"].spec["task"]
        state = {}

        def joystick(t: int, ctrl: Controller) -> dict:
            if t % int(COMMAND_S * fps) == 0:
                angle = rng.uniform(-np.pi, np.pi, n)
                state.update(direction=np.stack([np.sin(angle), np.cos(angle)], -1),
                             speed=rng.uniform(spec["speed_min"], spec["speed_max"], n))
            return {"task": "joystick", **state}
        return joystick
    if task == "target":
        radius = model.policies["target"].spec["task"]["target_radius_m"]
        goal, since = np.zeros((n, 2)), np.full(n, np.inf)

        def target(t: int, ctrl: Controller) -> dict:
            xz = ctrl.state.origin[:, [0, 2]]
            new = (np.linalg.norm(xz - goal, axis=1) < radius) | (since > TARGET_LIMIT_S * fps)
            angle, dist = rng.uniform(-np.pi, np.pi, n), rng.uniform(1.0, 10.0, n)
            goal[new] = (xz + dist[:, None] * np.stack([np.sin(angle), np.cos(angle)], -1))[new]
            since[:] = np.where(new, 0, since + 1)
            return {"task": "target", "target": goal.copy()}
        return target
    s = np.linspace(0.0, 2 * np.pi, 400, endpoint=False)
    eight = np.stack([2.0 * np.sin(2 * s), 4.0 * np.sin(s)], -1)
    return lambda t, ctrl: {"task": "path", "path": eight, "closed": True}


def rollout(model: MotionModel, task: str | None, n: int, frames: int, seed: int) -> dict[str, np.ndarray]:
    """Shown and raw rotations and positions, roots, lock states and resets of n characters over frames."""
    ctrl = Controller(model, n, seed=seed, foot_lock=True)
    if task == "path":  # start on the curve, facing along it, as policy_eval does
        ctrl.reset(origin=np.zeros(3), yaw=float(np.arctan2(1.0, 1.0)))  # the curve leaves the origin at 45 degrees
    control = None if task is None else commands(model, task, n, np.random.default_rng(seed))
    j, legs = model.skeleton.n_joints, ctrl.foot_lock.n_legs
    out = {"shown": np.zeros((frames, n, j, 3)), "shown_q": np.zeros((frames, n, j, 4), np.float32),
           "raw_q": np.zeros((frames, n, j, 4), np.float32), "root": np.zeros((frames, n, 3)),
           "locked": np.zeros((frames, n, legs), bool), "weight": np.zeros((frames, n, legs)),
           "reset": np.zeros((frames, n), bool)}
    for t in range(frames):
        p = ctrl.step(control=None if control is None else control(t, ctrl))
        out["shown"][t], out["shown_q"][t], out["raw_q"][t] = p.positions, p.local_rotations, ctrl.state.rotations
        out["root"][t], out["reset"][t] = p.root_position, p.reset
        out["locked"][t], out["weight"][t] = ctrl.foot_lock.locked, ctrl.foot_lock.weight
    out["raw"] = model.skeleton.forward_kinematics(out["raw_q"].astype(np.float64), out["root"])[0]
    return out


def measure(model: MotionModel, mocap: Mocap, run: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """The measures of one rollout, for the raw and the locked output."""
    sk, fps = model.skeleton, model.fps
    feet = [sk.index(n) for n in model.layout.contact_joints]
    # Frames next to a divergence reset (a teleport) and the first frames are left out of every measure.
    bad = run["reset"].copy()
    bad[:SETTLE_FRAMES] = True
    bad[1:] |= run["reset"][:-1]
    bad[:-1] |= run["reset"][1:]
    locked, weight = run["locked"], run["weight"]
    change = np.zeros_like(locked)
    change[1:] = (locked[1:] & ~locked[:-1]) | ((weight[1:] < 1.0) & (weight[:-1] > 0.0))  # lock starts and fades
    events = change.any(-1) & ~bad
    out = {}
    for name in ("raw", "shown"):
        p = run[name]
        speed, mask = planted_speed(p[:, :, feet].swapaxes(0, 1), fps, mocap.floor)  # (characters, T, C)
        mask &= ~bad.T[..., None]
        slide = speed[mask]
        accel = acceleration(p, fps).max(-1)
        knee = np.abs(np.diff(knee_angles(p, sk, model.layout), axis=0))[~(bad[1:] | bad[:-1])]
        rot = run["raw_q" if name == "raw" else "shown_q"].astype(np.float64)
        fk = sk.forward_kinematics(rot, run["root"])[0]
        bones = np.linalg.norm(p[:, :, 1:] - p[:, :, sk.parents[1:]], axis=-1) - sk.bone_lengths()[1:]
        out[name] = {"slide": float(slide.mean()), "ratio": float(slide.mean()) / mocap.slide,
                     "planted": float(mask.mean()), "pop": float(accel[events].max()) if events.any() else 0.0,
                     "knee": float(knee.max()), "fk_mm": 1000 * float(np.abs(fk - p).max()),
                     "bone_mm": 1000 * float(np.abs(bones).max()), "low": float(p[:, :, feet, 1].min())}
    out["shown"]["locked"] = float(locked.mean())
    return out


def without_lock(model: MotionModel, folder: Path) -> MotionModel:
    """The model with its step graph cut before the foot lock: the step as exported before the lock was in it."""
    from trainer.foot_lock_graph import step_only
    from trainer.step_graph import INPUTS, OUTPUTS

    folder.mkdir(parents=True)
    (folder / "decoder.onnx").write_bytes(step_only(model.path / "decoder.onnx"))
    meta = {**model.meta, "policies": {}}
    meta.pop("foot_lock")
    meta["files"] = {"decoder.onnx": {"sha256": sha256_file(folder / "decoder.onnx"), "inputs": INPUTS,
                                      "outputs": OUTPUTS}}
    (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    return load_model(folder)


def step_cost(models: dict[str, tuple[MotionModel, bool]], n: int, seconds: float) -> dict[str, float]:
    """Milliseconds per Controller.step of n characters for each (model, foot_lock), stepped in turn."""
    ctrls = {name: Controller(model, n, seed=0, foot_lock=lock) for name, (model, lock) in models.items()}
    spent = dict.fromkeys(ctrls, 0.0)
    for c in ctrls.values():
        for _ in range(5):
            c.step()
    calls, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end or calls < 5:
        for name, c in ctrls.items():
            t0 = time.perf_counter()
            c.step()
            spent[name] += time.perf_counter() - t0
        calls += 1
    return {k: 1000 * v / calls for k, v in spent.items()}


def report_cost(model: MotionModel, work: Path, seconds: float) -> None:
    """Print what the foot lock adds to Controller.step at 1 and 1,024 characters."""
    if model.foot_lock_in_graph:
        bare = without_lock(model, work / f"{model.name}-without-lock")
        models = {"without": (bare, False), "graph": (model, True), "numpy": (bare, True)}
        print(f"\ncost of Controller.step, model {model.name!r} (ms, stepped in turn): without the lock (its step "
              "graph cut before it), with the lock in the step graph, and with the lock in numpy after the cut graph")
    else:
        models = {"without": (model, False), "numpy": (model, True)}
        print(f"\ncost of Controller.step, model {model.name!r} (ms, stepped in turn): its step graph has no foot lock "
              "(exported before it was there), so the lock runs in numpy after each step")
    for n in (1, 1024):
        c = step_cost(models, n, seconds)
        rows = ", ".join(f"{name} {c[name]:.3f} (+{100 * (c[name] / c['without'] - 1):.0f}%)" for name in models
                         if name != "without")
        print(f"  {n:>5} characters: without {c['without']:.3f}; {rows}")


def report(title: str, model: MotionModel, mocap: Mocap, n: int, frames: int, seed: int) -> None:
    """Print the measures of every scenario of one model."""
    print(f"\n== {title}: model {model.name!r}, {n} characters x {frames / model.fps:.0f} s per scenario ==")
    print(f"mocap: planted {mocap.planted:.1%} of contact-joint frames, sliding {mocap.slide:.4f} m/s; joint "
          f"acceleration 99.9th percentile {mocap.accel_999:.0f} m/s^2; knee change p99.9 {mocap.knee_999:.1f}, "
          f"max {mocap.knee_max:.1f} deg/frame")
    head = (f"{'scenario':<12} {'output':<7} {'sliding m/s':>11} {'x mocap':>8} {'planted':>8} {'pop m/s^2':>10} "
            f"{'knee deg/fr':>11} {'FK mm':>8} {'bone mm':>8} {'lowest m':>9} {'locked':>7}")
    print(head)
    for task in [None] + sorted(model.policies):
        t0 = time.perf_counter()
        result = measure(model, mocap, rollout(model, task, n, frames, seed))
        for name, label in (("raw", "raw"), ("shown", "locked")):
            r = result[name]
            verdict = "" if name == "raw" else ("  ok" if r["ratio"] <= SLIDE_TARGET else "  over 1.1x")
            print(f"{task or 'random walk':<12} {label:<7} {r['slide']:>11.4f} {r['ratio']:>7.2f}x {r['planted']:>8.1%} "
                  f"{r['pop']:>10.0f} {r['knee']:>11.1f} {r['fk_mm']:>8.4f} {r['bone_mm']:>8.4f} {r['low']:>9.3f} "
                  f"{r.get('locked', float('nan')):>7.1%}{verdict}")
        print(f"{'':<12} ({time.perf_counter() - t0:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    """Measure a model (the shipped default one unless told) and a Bandai-trained one when the data is there."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("Usage: ")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="the model directory to measure (default: the shipped default model)")
    ap.add_argument("--frames-npz", type=Path,
                    help="its training frames, its mocap (default: the default model's, made again with the README's "
                         "recipe; needed with --model)")
    ap.add_argument("--bandai-model", type=Path, help="a model trained on the Bandai data, to measure instead of "
                                                      "training one (with --bandai-frames-npz)")
    ap.add_argument("--bandai-frames-npz", type=Path, help="the training frames of --bandai-model")
    ap.add_argument("--no-bandai", action="store_true", help="measure only --model")
    ap.add_argument("--characters", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cost-seconds", type=float, default=10.0, help="time spent stepping per cost row")
    args = ap.parse_args(argv)
    if args.model is not None and args.frames_npz is None:
        ap.error("--model needs --frames-npz (its training frames)")
    if (args.bandai_model is None) != (args.bandai_frames_npz is None):
        ap.error("--bandai-model and --bandai-frames-npz go together")
    with tempfile.TemporaryDirectory(prefix="foot-lock-") as tmp:
        work = Path(tmp)
        model = load_model(args.model)
        frames = int(args.seconds * model.fps)
        mocap = Mocap(args.frames_npz or procedural_frames(work))
        report("default model" if args.model is None else "given model", model, mocap, args.characters, frames,
               args.seed)
        report_cost(model, work, args.cost_seconds)

        if args.bandai_model is not None:
            bandai, npz = load_model(args.bandai_model), args.bandai_frames_npz
        elif args.no_bandai or not BANDAI.is_dir():
            print(f"\n(Bandai skipped: {'--no-bandai' if args.no_bandai else f'{BANDAI} is not present'})")
            return 0
        else:
            print("\ntraining a model on the Bandai data with configs/mocap.toml (about 25 minutes of one thread) ...", flush=True)
            t0 = time.perf_counter()
            path, npz = bandai_model(work)
            bandai = load_model(path)
            print(f"trained and exported in {time.perf_counter() - t0:.0f} s (in {work}, deleted afterwards)")
        report("Bandai-trained model", bandai, Mocap(npz), args.characters, frames, args.seed)
        report_cost(bandai, work, args.cost_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
