"""Evaluation: every measure of a tiny run, broken and standing models failing the verdict, the data's own scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.features import FeatureLayout, encode
from runtime.skeleton import Skeleton
from tests.test_train import TINY, write_frames
from trainer.checkpoint import read_checkpoint, save_checkpoint
from trainer.data import load_frames
from trainer.evaluate import BOUNDS, START_S, checks, main, reference, root_response
from trainer.export import export
from trainer.motion_metrics import frechet_distance, gait_series, gait_summary
from trainer.procedural import Segment, Style, generate_clip
from trainer.train import main as train_main

SECTIONS = ("reconstruction", "latent", "rollouts", "frechet", "gait", "freezing", "fk_error_mm", "feet", "checks",
            "verdict")

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def procedural_frames(path: Path, n_clips: int, seconds: float) -> Path:
    """A frames.npz of procedural locomotion (feet that really plant), as trainer.prepare writes it."""
    return clip_frames(path, [generate_clip(seed, seconds) for seed in range(n_clips)])


def clip_frames(path: Path, clips: list) -> Path:
    """A frames.npz of the given procedural clips, as trainer.prepare writes it."""
    n_clips = len(clips)
    layout = FeatureLayout.for_skeleton(clips[0].skeleton, 30.0)
    encoded = [encode(c, layout) for c in clips]
    sizes = np.array([len(e.features) for e in encoded])
    np.savez(path, data=np.concatenate([e.features for e in encoded]).astype(np.float32),
             end_indices=np.cumsum(sizes) - 1, clip_names=np.array([f"clip{i}" for i in range(n_clips)]),
             clip_start_root=np.stack([e.start for e in encoded]), fps=np.float64(30.0),
             skeleton=np.array(clips[0].skeleton.to_json()), layout=np.array(layout.to_json()),
             source=np.array(json.dumps({"procedural": True})))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    procedural_frames(folder / "frames.npz", n_clips=6, seconds=6.0)
    (folder / "tiny.toml").write_text(TINY)
    assert train_main([str(folder / "frames.npz"), "--out", str(folder / "run"), "--config",
                       str(folder / "tiny.toml"), "--holdout-every", "3", "--no-progress"]) == 0
    return folder / "run"


def test_evaluate_writes_every_measure_and_a_verdict(run, capsys):
    frames = run.parent / "frames.npz"
    assert main([str(run), str(frames), "--rollouts", "4", "--frames", "360"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    for section in SECTIONS:
        assert section in result
    assert "verdict:" in printed and "checks:" in printed
    assert result["evaluated_clips"]["count"] == 2  # clips 2 and 5 of 6
    assert result["evaluated_clips"]["which"] == "1 in 3 source clips and their mirrors, held out in training"
    assert result["reconstruction"]["joint_error_mm"] > 0
    assert -1.0 <= result["reconstruction"]["root_acceleration"]["correlation"] <= 1.0
    assert len(result["latent"]["kl_per_dim"]) == 4
    assert result["rollouts"] == {**result["rollouts"], "characters": 4, "frames": 360, "late_frames": 120,
                                  "early_frames": 300}
    assert result["frechet"]["first"] > 0 and result["frechet"]["last"] > 0
    assert set(result["gait"]["model"]) == set(result["gait"]["data"])
    assert set(result["checks"]) >= {"drift", "speed_p50", "speed_p90", "turn_p90", "share_standing", "skating",
                                     "fk_mean_mm", "fk_p99_mm", "freezing", "under_floor", "no_resets"}
    assert result["verdict"] == ("pass" if all(c["ok"] for c in result["checks"].values()) else "fail")


def test_a_model_directory_measures_as_its_run(run, tmp_path):
    """The evaluator runs the exported runtime either way: a run and its export give the same rollouts."""
    frames = run.parent / "frames.npz"
    export(run, tmp_path / "model")
    assert main([str(tmp_path / "model"), str(frames), "--rollouts", "3", "--frames", "320", "--holdout-every", "3",
                 "--json", str(tmp_path / "dir.json")]) == 0
    assert main([str(run), str(frames), "--rollouts", "3", "--frames", "320", "--json", str(tmp_path / "run.json")]) == 0
    from_dir, from_run = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("dir", "run"))
    assert "reconstruction" not in from_dir and "reconstruction" in from_run
    for key in ("frechet", "gait", "feet", "fk_error_mm"):
        assert _numbers(from_dir[key]) == pytest.approx(_numbers(from_run[key]), rel=1e-4, abs=1e-6, nan_ok=True)


def _numbers(tree: dict, prefix: str = "") -> dict:
    """The numbers of a nested dict, flat, by dotted key."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and value is not None:
            out[prefix + key] = value
    return out


def _edited_run(run: Path, folder: Path, edit) -> Path:
    state = read_checkpoint(run)
    edit(state)
    folder.mkdir()
    save_checkpoint(state, folder / "checkpoint.pt")
    return folder


def test_an_exploding_model_fails_the_verdict(run, tmp_path, capsys):
    def blow_up(state):
        for name in state["model"]:
            if name.startswith("decoder.weights") or name.startswith("decoder.biases"):
                state["model"][name] = state["model"][name] * 40.0

    broken = _edited_run(run, tmp_path / "broken", blow_up)
    code = main([str(broken), str(run.parent / "frames.npz"), "--rollouts", "4", "--frames", "320", "--strict"])
    assert code == 1
    result = json.loads((broken / "eval.json").read_text())
    assert result["rollouts"]["resets"] > 0 and not result["checks"]["no_resets"]["ok"]
    assert result["verdict"] == "fail"


def test_a_model_that_only_stands_fails_on_gait_and_freezing(run, tmp_path):
    """A decoder that always returns one motionless pose: standing, frozen and far from the data's gait."""
    frames = load_frames(run.parent / "frames.npz")
    state = read_checkpoint(run)
    layout = frames.layout
    still = frames.data[0].astype(np.float64).copy()
    for block in ("root", "velocities"):
        still[layout.slice(block)] = 0.0
    shift, scale = (np.asarray(state["normaliser"][k]) for k in ("shift", "scale"))
    target = torch.as_tensor((still - shift) / scale, dtype=torch.float32)

    def stand(state):
        last = max(int(name.split(".")[-1]) for name in state["model"] if name.startswith("decoder.weights."))
        state["model"][f"decoder.weights.{last}"].zero_()
        state["model"][f"decoder.biases.{last}"][:] = target

    standing = _edited_run(run, tmp_path / "standing", stand)
    assert main([str(standing), str(frames.path), "--rollouts", "3", "--frames", "300", "--holdout-every", "3"]) == 0
    result = json.loads((standing / "eval.json").read_text())
    assert result["gait"]["model"]["share_standing"] == 1.0 and result["gait"]["model"]["speed_p90"] < 1e-6
    assert result["freezing"]["model"] == 1.0 and not result["checks"]["freezing"]["ok"]
    if result["starts"] is not None:  # the tiny clips may never stand; where they do, this model never walks off
        assert result["starts"]["model"] == 0.0 and result["starts"]["data"] > 0.0
    assert result["verdict"] == "fail"


def test_mocap_measured_by_the_rollout_rule_plants_its_feet(tmp_path):
    """The procedural mocap plants feet without sliding; the rule must see that, in its share and its speed."""
    frames = load_frames(procedural_frames(tmp_path / "frames.npz", n_clips=2, seconds=20.0))
    ref = reference(frames, np.arange(2))
    assert ref.skating < 0.03, ref.skating                 # planted feet stand still in the world
    assert 0.2 < ref.planted_share < 0.7, ref.planted_share
    assert ref.under_floor == 0.0 and ref.frozen == 0.0
    assert 0.5 < ref.gait["speed_p50"] < 3.5


def test_starts_from_standing_are_read_off_the_clips(tmp_path):
    """Standing frames START_S before a clip's end, and whether the clip walks off from them within START_S."""
    stop_and_go = generate_clip(1, 8.0, plan=[Segment(2.5, 0.0), Segment(6.0, 1.3)], style=Style())
    stays = generate_clip(2, 8.0, plan=[Segment(10.0, 0.0)], style=Style())
    walks = generate_clip(3, 8.0, plan=[Segment(10.0, 1.3)], style=Style())
    frames = load_frames(clip_frames(tmp_path / "frames.npz", [stop_and_go, stays, walks]))
    first = reference(frames, np.array([0]))
    assert first.starts == 1.0 and len(first.standing) > 30   # it stands 1-2.5 s in and walks off within 3 s of each
    assert first.standing.max() < 2.5 * 30 + 20               # standing ends around the start (a gait window late)
    assert reference(frames, np.array([1])).starts == 0.0     # standing throughout: never walks off
    assert reference(frames, np.array([2])).starts is None    # never standing: nothing to judge
    both = reference(frames, np.array([0, 1]))
    assert 0.3 < both.starts < 0.7
    assert (both.standing[both.standing >= frames.clip_starts[1]] + START_S * 30 <= frames.end_indices[1]).all()


def _result(**changes) -> dict:
    gait = {"speed_p10": 0.5, "speed_p50": 1.0, "speed_p90": 2.0, "turn_p50": 10.0, "turn_p90": 40.0,
            "share_standing": 0.1, "share_walking": 0.5, "share_jogging": 0.2, "share_running": 0.2}
    result = {"rollouts": {"non_finite": 0, "resets": 0}, "frechet": {"drift": 1.0},
              "gait": {"model": dict(gait), "data": dict(gait)}, "freezing": {"model": 0.0, "data": 0.0},
              "fk_error_mm": {"mean": 0.5, "p99": 5.0}, "starts": {"model": 0.8, "data": 0.8},
              "feet": {"skating_ratio": 1.0, "data_skating_mps": 0.1, "under_floor": 0.0, "data_under_floor": 0.0}}
    for path, value in changes.items():
        *keys, last = path.split("__")
        target = result
        for key in keys:
            target = target[key]
        target[last] = value
    return result


@pytest.mark.parametrize("path,bad,check", [
    ("frechet__drift", BOUNDS["drift"] * 1.01, "drift"),
    ("gait__model__speed_p90", 2.0 * (1 + BOUNDS["speed"] * 1.1), "speed_p90"),
    ("gait__model__turn_p90", 40.0 * (1 + BOUNDS["turning"] * 1.1), "turn_p90"),
    ("gait__model__share_standing", 0.1 + BOUNDS["gait_share"] * 1.1, "share_standing"),
    ("feet__skating_ratio", BOUNDS["skating"] * 1.01, "skating"),
    ("fk_error_mm__p99", BOUNDS["fk_p99_mm"] * 1.01, "fk_p99_mm"),
    ("freezing__model", BOUNDS["frozen"] * 1.1, "freezing"),
    ("rollouts__resets", 1, "no_resets"),
    ("starts__model", 0.8 - BOUNDS["starts"] * 1.1, "starts"),
])
def test_each_bound_fails_just_outside_it(path, bad, check):
    assert all(c["ok"] for c in checks(_result()).values())
    failed = [name for name, c in checks(_result(**{path: bad})).items() if not c["ok"]]
    assert failed == [check]


def test_gait_measures_net_motion_over_a_gait_cycle():
    fps = 30.0
    t = np.arange(300) / fps
    origin = np.zeros((2, 300, 3))
    origin[0, :, 2] = 2.0 * t + 0.05 * np.sin(2 * np.pi * t)       # 2 m/s ahead, swaying once a second
    yaw = np.stack([0.2 * np.sin(2 * np.pi * t),                     # twisting, not turning
                    np.radians(90.0) * t])                           # 90 deg/s, round and round
    yaw[1] = np.angle(np.exp(1j * yaw[1]))                            # headings arrive wrapped to [-pi, pi]
    origin[1, :, 0] = 0.1 * t                                          # 0.1 m/s
    speed, turn = gait_series(origin, yaw, fps)
    np.testing.assert_allclose(speed[0], 2.0, atol=1e-9)               # the sway cancels over whole cycles
    np.testing.assert_allclose(turn[0], 0.0, atol=1e-9)
    summary = gait_summary(speed, turn)
    assert summary["share_jogging"] == pytest.approx(0.5) and summary["share_standing"] == pytest.approx(0.5)
    assert summary["speed_p90"] == pytest.approx(2.0)
    np.testing.assert_allclose(turn[1], 90.0, rtol=1e-9)


def test_layout_mismatch_and_missing_model_exit_2(run, tmp_path, capsys):
    skeleton = Skeleton.from_json(load_frames(run.parent / "frames.npz").skeleton.to_json())
    other = write_frames(tmp_path / "other.npz", skeleton=skeleton.subset([0, 1, 2, 3, 4, 5]))
    for argv in ([str(run), str(other)], [str(tmp_path / "nothing"), str(other)]):
        assert main(argv + ["--frames", "10"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_root_response_is_one_for_a_decoder_that_follows_and_zero_for_one_that_copies():
    rng = np.random.default_rng(0)
    now = rng.normal(0.0, 0.05, (500, 2))
    nxt = now * (1.0 + rng.normal(0.0, 0.05, (500, 1)))  # speed changes along the step
    follows = root_response(np.stack([now, nxt, nxt], 1))
    assert follows["slope"] == pytest.approx(1.0) and follows["correlation"] == pytest.approx(1.0)
    copies = root_response(np.stack([now, nxt, now], 1))
    assert copies["slope"] is None  # no change predicted at all: nothing to correlate
    half = root_response(np.stack([now, nxt, now + 0.5 * (nxt - now)], 1))
    assert half["slope"] == pytest.approx(0.5) and half["correlation"] == pytest.approx(1.0)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    mean = rng.normal(size=5)
    assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mean, cov, mean + 2.0, cov) == pytest.approx(20.0, abs=1e-8)
    one = frechet_distance(np.zeros(1), np.eye(1) * 4.0, np.ones(1), np.eye(1) * 9.0)
    assert one == pytest.approx(1.0 + (2.0 - 3.0) ** 2)
