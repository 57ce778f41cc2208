"""Training: the CLI end to end, crash and resume, distributed start, bad input, sampler and schedules."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.features import FeatureLayout, encode
from tests.conftest import ROOT, one_error_line, random_motion, run_module, small_skeleton
from trainer.checkpoint import CHECKPOINT_NAME, load_run, read_checkpoint
from trainer.config import TrainConfig, from_dict
from trainer.data import Frames, RolloutSampler, heldout_clips, load_frames, rollout_window, training_clips
from trainer.models import KLSchedule, ModelSpec
from trainer.runs import ABORT_ENV
from trainer.train import RolloutTrainer, build_parser, learning_rate, main, phase, student_probability

TINY = """
[model]
latent = 4
hidden = 32
experts = 3
gate_hidden = 8
[train]
batch_size = 8
rollout = 4
teacher_epochs = 1
ramp_epochs = 1
student_epochs = 1
batches_per_epoch = 3
threads = 1
"""


def write_frames(path: Path, n_clips: int = 6, length: int = 40, seed: int = 0, skeleton=None,
                 edit=None) -> Path:
    """A small frames.npz of random smooth motions encoded with the real feature layout."""
    skeleton = skeleton or small_skeleton()
    layout = FeatureLayout.for_skeleton(skeleton, 30.0)
    clips = [encode(random_motion(skeleton, length + 5 * (i % 3), seed=seed + i), layout) for i in range(n_clips)]
    sizes = np.array([len(c.features) for c in clips])
    arrays = {"data": np.concatenate([c.features for c in clips]).astype(np.float32),
              "end_indices": np.cumsum(sizes) - 1, "clip_names": np.array([f"clip{i}" for i in range(n_clips)]),
              "clip_start_root": np.stack([c.start for c in clips]), "fps": np.float64(30.0),
              "skeleton": np.array(skeleton.to_json()), "layout": np.array(layout.to_json()),
              "source": np.array(json.dumps({"synthetic": True}))}
    if edit:
        edit(arrays)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train")
    write_frames(folder / "frames.npz")
    (folder / "tiny.toml").write_text(TINY)
    return folder


def weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run)["model"]


def test_cli_end_to_end_writes_logs_plot_and_checkpoint(workdir):
    run = workdir / "e2e"
    done = run_module("trainer.train", str(workdir / "frames.npz"), "--out", str(run), "--config",
                      str(workdir / "tiny.toml"), "--set", "holdout_every=3", "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,phase,student_probability,lr,step,loss,recon,kl")
    assert [r.split(",")[1] for r in rows[1:]] == ["teacher", "ramping", "student"]
    # --no-progress still ends with one line: steps, time, the last epoch's losses, where the run is.
    summary, last = done.stdout.strip().splitlines()[-1], dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert summary.startswith(f"trained {int(last['step']):,} steps in 0 min ")
    losses = ", ".join(f"{key} {float(last[key]):.4g}" for key in ("loss", "recon", "kl"))
    assert f"; last logged {losses}; run in {run} " in summary
    assert (run / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run / "tensorboard").iterdir())
    assert from_dict(tomllib.loads((run / "config.toml").read_text())).hidden == 32
    loaded = load_run(run)
    assert loaded.epoch == 3 and loaded.config.holdout_every == 3
    assert loaded.layout == load_frames(workdir / "frames.npz").layout
    frame = loaded.layout.size
    assert loaded.decoder(torch.zeros(2, 4), torch.zeros(2, frame)).shape == (2, frame)
    assert loaded.start_frames.shape[1:] == (1, frame)
    assert loaded.normaliser.kind == "zscore"
    assert "examples:" in build_parser().format_help()
    model = workdir / "e2e-model"
    for again in (False, True):  # the second export replaces a directory that has gained a policy meanwhile
        done = run_module("trainer.export", str(run), "--out", str(model))
        assert done.returncode == 0, done.stderr
        meta = json.loads((model / "model.json").read_text())
        assert not meta.get("policies") and ("note:" in done.stdout) == again
        meta["policies"] = {"joystick": {}}
        (model / "model.json").write_text(json.dumps(meta))
    assert "held policy-joystick; an export writes the new decoder alone" in done.stdout


def test_killed_run_resumes_to_the_same_result(workdir):
    frames, tiny = str(workdir / "frames.npz"), str(workdir / "tiny.toml")
    whole, broken = workdir / "whole", workdir / "broken"
    assert main([frames, "--out", str(whole), "--config", tiny, "--no-progress"]) == 0
    # 3 batches x 4 rollout steps per epoch: stop abruptly after 16 optimiser steps, inside epoch 2.
    killed = run_module("trainer.train", frames, "--out", str(broken), "--config", tiny, "--no-progress",
                        env={ABORT_ENV: "16"})
    assert killed.returncode == 3, killed.stderr
    state = read_checkpoint(broken)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert len((broken / "log.csv").read_text().splitlines()) == 2
    # A temporary file from a write interrupted by a kill is never taken for a checkpoint and is swept.
    stale = broken / f".{CHECKPOINT_NAME}.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert list(broken.glob("*.pt")) == [broken / CHECKPOINT_NAME]
    assert main([frames, "--out", str(broken), "--resume", "--no-progress"]) == 0
    assert not stale.exists()
    a, b = read_checkpoint(whole), read_checkpoint(broken)
    assert b["epoch"] == 3 and b["step"] == a["step"]
    for key in ("loss", "recon", "kl"):
        np.testing.assert_allclose([r[key] for r in b["history"]], [r[key] for r in a["history"]], rtol=1e-5)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert (broken / "log.csv").read_text().splitlines()[0] == (whole / "log.csv").read_text().splitlines()[0]
    assert len((broken / "log.csv").read_text().splitlines()) == 4


def test_torchrun_single_process_gloo_matches_plain_run(workdir):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    run = workdir / "ddp"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=1", "-m", "trainer.train",
                           str(workdir / "frames.npz"), "--out", str(run), "--config", str(workdir / "tiny.toml"),
                           "--set", "student_epochs=0", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = workdir / "plain"
    assert main([str(workdir / "frames.npz"), "--out", str(plain), "--config", str(workdir / "tiny.toml"),
                 "--set", "student_epochs=0", "--no-progress"]) == 0
    np.testing.assert_allclose([r["loss"] for r in read_checkpoint(run)["history"]],
                               [r["loss"] for r in read_checkpoint(plain)["history"]], rtol=1e-5)


def test_kl_capacity_schedule_in_a_run(workdir):
    run = workdir / "capacity"
    assert main([str(workdir / "frames.npz"), "--out", str(run), "--config", str(workdir / "tiny.toml"),
                 "--kl-mode", "capacity", "--set", "kl_capacity=6.0", "--set", "kl_capacity_steps=24",
                 "--no-progress"]) == 0
    history = read_checkpoint(run)["history"]
    assert [r["step"] for r in history] == [12, 24, 36]
    assert [r["kl_capacity"] for r in history] == [3.0, 6.0, 6.0]
    assert all(r["kl_weighted"] >= 0 for r in history)


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    return one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("case,edit,needle", [
    ("missing", lambda a: a.pop("end_indices"), "missing key(s) end_indices"),
    ("renamed", lambda a: a.update(frames=a.pop("data")), "missing key(s) data"),
    ("nan", lambda a: a["data"].__setitem__((7, 3), np.nan), "NaN/inf"),
    ("badlayout", lambda a: a.update(layout=np.array("{not json")), "not a valid feature layout"),
    ("ends", lambda a: a.update(end_indices=a["end_indices"][::-1].copy()), "end_indices"),
])
def test_bad_frames_give_one_line_and_exit_2(workdir, capsys, case, edit, needle):
    path = write_frames(workdir / f"bad_{case}.npz", n_clips=3, edit=edit)
    err = _one_error_line(capsys, [str(path), "--out", str(workdir / f"bad_{case}"), "--config",
                                   str(workdir / "tiny.toml")])
    assert needle in err


def test_clips_shorter_than_the_rollout(workdir, capsys):
    path = write_frames(workdir / "short.npz", n_clips=4, length=8)
    err = _one_error_line(capsys, [str(path), "--out", str(workdir / "short"), "--config", str(workdir / "tiny.toml"),
                                   "--rollout", "20"])
    assert "is long enough for a window of 21 frames" in err


def test_resume_with_another_skeleton(workdir, capsys):
    run = workdir / "skeleton_run"
    tiny = str(workdir / "tiny.toml")
    assert main([str(workdir / "frames.npz"), "--out", str(run), "--config", tiny, "--epochs", "1",
                 "--no-progress"]) == 0
    other = write_frames(workdir / "other.npz", skeleton=small_skeleton().subset([0, 1, 2, 3, 4, 5]))
    err = _one_error_line(capsys, [str(other), "--out", str(run), "--resume"])
    assert "differs from the checkpoint" in err
    err = _one_error_line(capsys, [str(workdir / "frames.npz"), "--out", str(run), "--resume", "--set", "hidden=64"])
    assert "cannot change hidden" in err
    err = _one_error_line(capsys, [str(workdir / "frames.npz"), "--out", str(run), "--config", tiny])
    assert "already holds a checkpoint" in err


def test_bad_settings_give_one_line(workdir, capsys):
    frames, tiny = str(workdir / "frames.npz"), str(workdir / "tiny.toml")
    assert "unknown setting" in _one_error_line(capsys, [frames, "--out", str(workdir / "x"), "--set", "hiden=3"])
    assert "expected one of" in _one_error_line(capsys, [frames, "--out", str(workdir / "x"), "--decoder", "moe"])
    assert "no checkpoint" in _one_error_line(capsys, [frames, "--out", str(workdir / "nothing"), "--resume"])
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _one_error_line(
            capsys, [frames, "--out", str(workdir / "x"), "--config", tiny, "--device", "cuda"])


def test_bad_input_through_the_real_entry_point(workdir):
    path = write_frames(workdir / "nan_cli.npz", n_clips=2, edit=lambda a: a["data"].__setitem__((0, 0), np.inf))
    done = run_module("trainer.train", str(path), "--out", str(workdir / "nan_cli"))
    assert done.returncode == 2
    one_error_line(done.stderr)
    assert not (workdir / "nan_cli").exists()


def test_scheduled_sampling_phases_and_learning_rate():
    config = TrainConfig(teacher_epochs=2, ramp_epochs=3, student_epochs=2, lr=1e-4, lr_end=1e-7)
    assert [phase(e, config) for e in range(7)] == ["teacher"] * 2 + ["ramping"] * 3 + ["student"] * 2
    assert [student_probability(e, config) for e in range(7)] == [0, 0, 0.25, 0.5, 0.75, 1, 1]
    assert learning_rate(0, config) == 1e-4 and learning_rate(6, config) == pytest.approx(1e-7)
    assert learning_rate(3, config) == pytest.approx((1e-4 + 1e-7) / 2)
    paper = TrainConfig()
    assert (paper.teacher_epochs, paper.ramp_epochs, paper.student_epochs, paper.batch_size, paper.rollout) == \
        (20, 20, 100, 64, 8)
    assert TrainConfig().with_epochs(14).epochs == 14 and TrainConfig().with_epochs(14).teacher_epochs == 2


class Recorder(torch.nn.Module):
    """A stand-in model that records each condition and predicts a constant far from the data."""

    def __init__(self, frame: int):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.full((frame,), 100.0))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, condition):
        self.seen.append(condition.clone())
        zeros = torch.zeros(len(x), 2)
        return {"prediction": self.bias.expand(len(x), -1) + 0 * x, "mu": zeros, "logvar": zeros}


@pytest.mark.parametrize("coins", [[False, False, False], [True, True, True], [True, False, True]])
def test_student_steps_feed_back_the_models_output(coins):
    frame, n_cond = 3, 2
    spec = ModelSpec(frame_size=frame, latent=2, n_cond=n_cond)
    model = Recorder(frame)
    trainer = RolloutTrainer(model, torch.optim.SGD(model.parameters(), lr=0.0), spec, KLSchedule(),
                             torch.ones(1), TrainConfig())
    window = torch.arange(2 * (n_cond + 4) * frame, dtype=torch.float32).view(2, n_cond + 4, frame)
    trainer.run(window, torch.tensor(coins + [False]), step=0)
    assert len(model.seen) == 4
    expected = window[:, :n_cond]
    for k, coin in enumerate(coins):
        torch.testing.assert_close(model.seen[k], expected.flatten(1))
        fed = torch.full((2, frame), 100.0) if coin else window[:, n_cond + k]
        expected = torch.cat((expected[:, 1:], fed[:, None]), dim=1)
    torch.testing.assert_close(model.seen[-1], expected.flatten(1))


def synthetic_frames(lengths: list[int]) -> Frames:
    """A Frames with only the clip structure filled in (enough for the sampler)."""
    ends = np.cumsum(lengths) - 1
    return Frames(Path("mem.npz"), np.zeros((int(ends[-1]) + 1, 1), np.float32), ends,
                  tuple(f"c{i}" for i in range(len(lengths))), 30.0, None, None, {})


def test_rollouts_never_cross_clip_boundaries():
    lengths = [5, 12, 9, 30, 10, 3]
    frames = synthetic_frames(lengths)
    clip_of = np.repeat(np.arange(len(lengths)), lengths)
    window = rollout_window(n_cond=2, rollout=6, n_future=2)
    assert window == 9
    clips = np.array([0, 1, 2, 3, 5])  # clip 4 is held out
    sampler = RolloutSampler(frames, clips, window, batch_size=4)
    # Valid first frames: clip 1 (12 frames) has 4, clip 2 (9) has 1, clip 3 (30) has 22; 0 and 5 are short.
    assert len(sampler.starts) == 4 + 1 + 22
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        for rows in sampler.epoch(gen):
            assert rows.shape == (4, window)
            owner = clip_of[rows.numpy()]
            assert (owner == owner[:, :1]).all()
            assert set(owner[:, 0]) <= {1, 2, 3}
            assert (np.diff(rows.numpy(), axis=1) == 1).all()
            seen |= set(rows[:, 0].tolist())
    assert seen == set(sampler.starts.tolist())


def test_sampler_ranks_get_disjoint_batches_and_limits():
    frames = synthetic_frames([50, 50])
    shards = [list(RolloutSampler(frames, np.arange(2), 5, 8, rank=r, world=2).epoch(torch.Generator().manual_seed(1)))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    for a, b in zip(*shards):
        assert not set(a[:, 0].tolist()) & set(b[:, 0].tolist())
    few = RolloutSampler(frames, np.arange(2), 48, 16)  # only 6 valid starts for a batch of 16
    batches = list(few.epoch(torch.Generator().manual_seed(0), limit=2))
    assert len(batches) == 2 and all(b.shape == (16, 48) for b in batches)


def test_holdout_keeps_mirrored_copies_together():
    names = ("a", "a~mirror", "b", "b~mirror", "c", "c~mirror", "d", "d~mirror")
    assert heldout_clips(names, 2).tolist() == [2, 3, 6, 7]
    assert training_clips(names, 2).tolist() == [0, 1, 4, 5]
    assert heldout_clips(names, 0).tolist() == []
    assert heldout_clips(("x", "y", "z"), 10).tolist() == []


@pytest.mark.parametrize("settings,logged", [
    (["--set", "quantize=true", "--set", "vq_codes=16"], {"commit", "perplexity"}),
    (["--decoder", "single", "--normalisation", "minmax"], {"kl"}),
    (["--n-cond", "2", "--n-future", "2", "--set", "future_weights=[0.75, 0.25]", "--normalisation", "none"], {"kl"}),
])
def test_model_variants_train(workdir, settings, logged):
    run = workdir / ("variant_" + "_".join(s.split("=")[0].strip("-") for s in settings[::2]))
    assert main([str(workdir / "frames.npz"), "--out", str(run), "--config", str(workdir / "tiny.toml"),
                 "--epochs", "2", "--no-progress", *settings]) == 0
    history = read_checkpoint(run)["history"]
    assert logged <= set(history[-1]) and np.isfinite(history[-1]["loss"])
    loaded = load_run(run)
    assert loaded.decoder(torch.zeros(3, 4), torch.zeros(3, loaded.spec.cond_size)).shape == (3, loaded.layout.size)
