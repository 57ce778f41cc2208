"""Motion quality of training recipes side by side, judged by trainer.evaluate's rules in one run.

Prepares the mocap into a scratch folder (the Bandai locomotion from ../shared, or the default model's procedural
mocap), trains each recipe there on one CPU thread each (two at a time), and evaluates every model over
64 x 3,000 frames from held-out frames with each seed, printing every check beside every other. The earlier
recipe is configs/default-model.toml (the shipped default model's: 1,320 short batches); the recommended one is
configs/mocap.toml (with 4 student epochs on the procedural data, which is 1.5x as long). Nothing derived from
the data is kept unless --work names a folder (keep Bandai-derived folders private: CC BY-NC-ND 4.0).

    python benchmarks/motion_quality.py --data bandai                  # both recipes, seeds 0 and 1
    python benchmarks/motion_quality.py --data procedural --recipes recommended
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.data import load_frames  # noqa: E402
from trainer.evaluate import evaluate, open_model  # noqa: E402

BANDAI = ROOT.parent / "shared" / "mocap" / "bandai2_locomotion"
# recipe -> data -> (prepare arguments, train arguments); every run holds out 1 in 10 source clips. The earlier
# recipe is the shipped default model's (short epochs); the recommended one is configs/mocap.toml, with fewer
# student epochs on the procedural data, which is 1.5x as long.
EARLIER = ["--config", str(ROOT / "configs/default-model.toml")]
RECOMMENDED = ["--config", str(ROOT / "configs/mocap.toml")]
RECIPES = {
    "earlier": {"bandai": (["--mirror"], EARLIER), "procedural": (["--mirror"], EARLIER)},
    "recommended": {"bandai": (["--mirror"], RECOMMENDED),
                    "procedural": (["--mirror"], [*RECOMMENDED, "--student-epochs", "4"])},
}
TIMES = "benchmark-times.json"  # what training a recipe took, kept in its run folder
PROCEDURAL = ["--clips", "24", "--seconds", "60", "--seed", "7"]  # the default model's data
SHOWN = ("speed_p10", "speed_p50", "speed_p90", "turn_p50", "turn_p90", "share_standing", "share_walking",
         "share_jogging", "share_running")


def python(*args: str) -> list[str]:
    """A command line running this interpreter."""
    return [sys.executable, *args]


def prepare(data: str, recipe: str, work: Path) -> Path:
    """The recipe's frames.npz of the data, prepared once per distinct set of prepare arguments."""
    args = RECIPES[recipe][data][0]
    frames = work / f"{data}{''.join(args)}.npz"
    if frames.exists():
        return frames
    source = BANDAI if data == "bandai" else work / "procedural"
    if data == "procedural" and not source.exists():
        subprocess.run(python("-m", "trainer.procedural", str(source), *PROCEDURAL), check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    subprocess.run(python("-m", "trainer.prepare", str(source), "-o", str(frames), "-q", *args), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return frames


def train(recipes: list[str], data: str, work: Path, frames: dict[str, Path], jobs: int) -> dict[str, dict]:
    """Train every recipe (jobs at a time, one thread each); their run folders, wall and CPU seconds."""
    out, running, queue = {}, {}, list(recipes)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for recipe in list(queue):  # a kept --work folder reuses what finished there before
        record = work / f"run-{data}-{recipe}" / TIMES
        if record.is_file():
            out[recipe] = {**json.loads(record.read_text()), "run": record.parent}
            queue.remove(recipe)
    while queue or running:
        while queue and len(running) < jobs:
            recipe = queue.pop(0)
            run = work / f"run-{data}-{recipe}"
            shutil.rmtree(run, ignore_errors=True)  # an unfinished run from an interrupted benchmark
            cmd = python("-m", "trainer.train", str(frames[recipe]), "--out", str(run), "--holdout-every", "10",
                         "--threads", "1", "--no-progress", *RECIPES[recipe][data][1])
            log = open(work / f"train-{data}-{recipe}.log", "w")
            running[subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).pid] = (
                recipe, run, time.perf_counter(), log)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        recipe, run, started, log = running.pop(pid)
        log.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"training {recipe} failed: see {work / f'train-{data}-{recipe}.log'}")
        out[recipe] = {"wall_s": time.perf_counter() - started, "cpu_s": usage.ru_utime + usage.ru_stime}
        (run / TIMES).write_text(json.dumps(out[recipe]))
        out[recipe]["run"] = run
    return out


def main() -> int:
    """Prepare, train, evaluate and print the recipes side by side."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=("bandai", "procedural"), default="bandai",
                    help="which mocap (default %(default)s; bandai skips when ../shared lacks it)")
    ap.add_argument("--recipes", default="earlier,recommended",
                    help=f"comma-separated, from {', '.join(RECIPES)} (default %(default)s)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="evaluation seeds (default 0 1)")
    ap.add_argument("--rollouts", type=int, default=64, help="characters per evaluation (default %(default)s)")
    ap.add_argument("--frames", type=int, default=3000, help="frames per rollout (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=2, help="recipes trained at once (default %(default)s)")
    ap.add_argument("--work", type=Path, help="keep the scratch folder here and reuse the runs that finished in it "
                    "(default: a temporary one, deleted)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)}")
    if args.data == "bandai" and not any(BANDAI.glob("*.bvh")):
        print(f"skipped: {BANDAI} is not present")
        return 0
    with tempfile.TemporaryDirectory(prefix="mvae-quality-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        frames = {r: prepare(args.data, r, work) for r in recipes}
        runs = train(recipes, args.data, work, frames, args.jobs)
        results = {}
        for recipe in recipes:
            frame_set = load_frames(frames[recipe])
            scratch = work / f"export-{args.data}-{recipe}"
            scratch.mkdir(exist_ok=True)
            model, run, every = open_model(runs[recipe]["run"], "cpu", scratch)
            results[recipe] = {str(seed): evaluate(model, frame_set, 10, args.rollouts, args.frames, seed, run, every)
                               for seed in args.seeds}
    print(table(results, runs, args))
    if args.json:
        args.json.write_text(json.dumps({"runs": {r: {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}
                                                  for r, d in runs.items()}, "results": results}, indent=1))
    return 0


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def table(results: dict, runs: dict, args) -> str:
    """Every check and gait figure, one column per recipe and seed, the data's beside them."""
    columns = [(r, s) for r in results for s in results[r]]
    first = results[columns[0][0]][columns[0][1]]
    head = f"{'':<22}" + "".join(f"{f'{r} s{s}':>16}" for r, s in columns) + f"{'data':>10}"
    lines = [f"{args.data}: {args.rollouts} x {args.frames} frames from held-out frames; "
             f"judged over the last {first['rollouts']['late_frames']}", head]
    lines.append(f"{'train CPU min':<22}" + "".join(f"{runs[r]['cpu_s'] / 60:>16.1f}" for r, _ in columns))
    lines.append(f"{'held-out error mm':<22}" + "".join(
        f"{results[r][s]['reconstruction']['joint_error_mm']:>16.1f}" for r, s in columns))
    for key in SHOWN:
        lines.append(f"{key:<22}" + "".join(f"{_fmt(results[r][s]['gait']['model'][key]):>16}" for r, s in columns)
                     + f"{_fmt(first['gait']['data'][key]):>10}")
    for name in first["checks"]:
        cells = []
        for r, s in columns:
            check = results[r][s]["checks"][name]
            cells.append(f"{_fmt(check['value']) + (' ok' if check['ok'] else ' FAIL'):>16}")
        lines.append(f"{name:<22}" + "".join(cells) + f"   {first['checks'][name]['bound']}")
    lines.append(f"{'verdict':<22}" + "".join(f"{results[r][s]['verdict']:>16}" for r, s in columns))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
