"""Motion tokenizer: windows, codebook liveness, training and resume, ONNX export, runtime API and CLI, bad input."""
from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.bvh import read_bvh, write_bvh
from runtime.model import ModelError, load_model
from runtime.motion import Motion
from runtime.tokenizer import TokenError, Tokens, load_tokenizer, load_tokens, save_tokens
from runtime.tokens import main as tokens_main
from tests.conftest import one_error_line, random_motion, run_module, small_skeleton
from trainer.checkpoint import CHECKPOINT_NAME
from trainer.data import load_frames, training_clips
from trainer.models import EMAQuantizer, MotionTokenizer, StraightThroughQuantizer, TokenizerSpec
from trainer.prepare import MIRROR_SUFFIX
from trainer.tokenizer_export import compare, export_tokenizer
from trainer.runs import ABORT_ENV
from trainer.train_tokenizer import (TokenizerConfig, config_from_dict, learning_rate, load_tokenizer_run,
                                     main as train_main, read_tokenizer_checkpoint, train_tokenizer, window_sampler)

TINY = """
[model]
width = 32
codes = 16
code_dim = 16
[data]
window = 32
holdout_every = 3
[train]
batch_size = 16
steps = 30
log_every = 15
warmup_steps = 5
lr = 1e-3
threads = 1
"""


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Tiny convolutions run fastest on one thread on a busy 2-core machine."""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "tiny.toml").write_text(TINY)
    return folder


@pytest.fixture(scope="module")
def run(work, frames_path) -> Path:
    """A tiny tokenizer trained for 30 steps on the procedural frames."""
    threads = torch.get_num_threads()
    config = config_from_dict(tomllib.loads(TINY))
    out = train_tokenizer(config, frames_path, work / "run", progress=False)
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def model(run, work) -> Path:
    """The tiny tokenizer exported into a new, tokenizer-only model directory."""
    out = work / "model"
    export_tokenizer(run, out, licence="test data")
    return out


def test_windows_stay_inside_training_clips_and_mirrors_share_a_side(frames_path):
    frames = load_frames(frames_path)
    config = TokenizerConfig(window=32, batch_size=16, holdout_every=3)
    clips = training_clips(frames.clip_names, config.holdout_every)
    held = sorted(set(range(frames.n_clips)) - set(clips.tolist()))
    assert held and sorted(n.removesuffix(MIRROR_SUFFIX) for n in np.array(frames.clip_names)[held]) == \
        [frames.clip_names[held[0]]] * 2  # a held-out clip and its mirror, nothing else
    owner = np.repeat(np.arange(frames.n_clips), frames.end_indices - frames.clip_starts + 1)
    sampler = window_sampler(frames, clips, config)
    for rows in sampler.epoch(torch.Generator().manual_seed(0), 50):
        who = owner[rows.numpy()]
        assert rows.shape == (16, 32) and (who == who[:, :1]).all() and set(who[:, 0]) <= set(clips.tolist())
        assert (np.diff(rows.numpy(), axis=1) == 1).all()


def test_ema_reset_keeps_codes_alive_where_straight_through_loses_them():
    torch.manual_seed(0)
    # Encoder outputs far from the origin, where a freshly initialised plain codebook is not.
    data = torch.randn(4096, 4) + 5.0
    ema, plain = EMAQuantizer(codes=32, dim=4).train(), StraightThroughQuantizer(codes=32, dim=4)
    optimiser = torch.optim.Adam(plain.parameters(), lr=1e-2)
    for _ in range(20):
        batch = data[torch.randint(len(data), (256,))]
        ema(batch)
        out = plain(batch)
        optimiser.zero_grad()
        out["codebook"].backward()
        optimiser.step()
    ema_used = len(torch.unique(ema.eval()(data)["codes"]))
    plain_used = len(torch.unique(plain(data)["codes"]))
    assert ema_used >= 0.8 * 32 and plain_used <= 4, (ema_used, plain_used)
    assert float(ema(data)["perplexity"]) > 0.6 * 32


@pytest.mark.parametrize("threshold,alive", [(1.0, True), (0.0, False)])
def test_dead_code_reset_follows_the_encoder_when_its_outputs_move(threshold, alive):
    torch.manual_seed(0)
    q = EMAQuantizer(codes=32, dim=4, decay=0.9, reset_threshold=threshold).train()
    for data in (torch.randn(4096, 4) + 5.0, torch.randn(4096, 4) - 5.0):
        for _ in range(30):
            q.train()(data[torch.randint(len(data), (256,))])
    used = len(torch.unique(q.eval()(data)["codes"]))
    # With the reset, codes stranded where the outputs used to be are moved onto the new ones.
    assert (used >= 0.8 * 32) if alive else (used <= 2), used


def test_network_shapes_follow_the_recipe():
    spec = TokenizerSpec(frame_size=11, width=8, codes=6, code_dim=5)
    assert spec.frames_per_token == 4 and spec.dilations == (9, 3, 1)
    net = MotionTokenizer(spec).train()
    out = net(torch.randn(3, 32, 11))
    assert out["recon"].shape == (3, 32, 11) and out["codes"].shape == (3, 8)
    assert {"commit", "perplexity"} <= set(out) and "codebook" not in out
    net.eval()
    for frames in (4, 8, 36):
        codes = net.encode(torch.randn(1, frames, 11))
        assert codes.shape == (1, frames // 4) and net.decode(codes).shape == (1, frames, 11)
    assert "codebook" in MotionTokenizer(TokenizerSpec(11, 8, 6, 5, quantizer="straight_through")).train()(
        torch.randn(2, 8, 11))
    blocks = [m.dilated.dilation[0] for m in net.encoder.modules() if hasattr(m, "dilated")]
    assert blocks == [9, 3, 1, 9, 3, 1]
    config = TokenizerConfig()
    assert (config.width, config.codes, config.code_dim, config.window, config.batch_size, config.lr,
            config.commit_weight, config.position_weight) == (512, 512, 512, 64, 256, 2e-4, 0.02, 0.5)
    assert learning_rate(0, config) == pytest.approx(2e-7) and learning_rate(999, config) == 2e-4
    assert learning_rate(200_000, config) == pytest.approx(1e-5)


def test_training_writes_logs_plot_and_checkpoint(run):
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,lr,recon,position,commit,loss,perplexity,codes,usage")
    assert "heldout_mpjpe_mm" in rows[0] and len(rows) == 3
    assert (run / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert config_from_dict(tomllib.loads((run / "config.toml").read_text())).width == 32
    loaded = load_tokenizer_run(run)
    assert loaded.step == 30 and loaded.spec.codes == 16 and len(loaded.data["heldout"]) == 2
    first, last = loaded.history[0], loaded.history[-1]
    assert last["recon"] < first["recon"] and last["usage"] >= 0.5 and np.isfinite(last["heldout_mpjpe_mm"])


def test_killed_run_resumes_to_the_same_result(run, work, frames_path, capsys):
    broken = work / "broken"
    killed = run_module("trainer.train_tokenizer", str(frames_path), "--out", str(broken), "--config",
                        str(work / "tiny.toml"), "--no-progress", env={ABORT_ENV: "20"})
    assert killed.returncode == 3, killed.stderr
    assert read_tokenizer_checkpoint(broken)["step"] == 15
    assert train_main([str(frames_path), "--out", str(broken), "--resume", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("trained 30 steps in 0 min ")
    a, b = read_tokenizer_checkpoint(run), read_tokenizer_checkpoint(broken)
    assert b["step"] == a["step"] == 30
    np.testing.assert_allclose([r["loss"] for r in b["history"]], [r["loss"] for r in a["history"]], rtol=1e-5)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_onnx_matches_torch_for_clip_lengths_4_to_400(run, model, frames_path):
    tok = load_tokenizer(model)
    loaded = load_tokenizer_run(run)
    assert tok.frames_per_token == 4 and tok.codes == 16 and tok.providers == ["CPUExecutionProvider"]
    data = load_frames(frames_path).data
    lengths = (4, 5, 37, 64, 255, 400)
    clips = [data[100 * i:100 * i + n] for i, n in enumerate(lengths)]
    check = compare(loaded, model / "encoder.onnx", model / "tokenizer-decoder.onnx", clips)
    assert check["mismatched_codes"] == 0 and check["max_frame_difference"] < 1e-4, check
    norm = loaded.normaliser
    for clip in clips:
        tokens = tok.encode(clip)
        assert len(tokens.codes) == -(-len(clip) // 4) and tokens.padded == -len(clip) % 4
        padded = np.concatenate([clip, np.repeat(clip[-1:], tokens.padded, axis=0)])
        with torch.no_grad():
            want = loaded.model.encode(torch.from_numpy(norm.normalise(padded))[None])[0].numpy()
            frames = norm.denormalise(loaded.model.decode(torch.from_numpy(want)[None])[0].numpy())
        np.testing.assert_array_equal(tokens.codes, want)
        out = tok.decode(tokens)
        assert out.features.shape == clip.shape and out.positions.shape == (len(clip), tok.skeleton.n_joints, 3)
        np.testing.assert_allclose(out.features, frames[:len(clip)], atol=1e-4)


def test_export_into_an_existing_model_directory(run, model_dir, tmp_path):
    target = tmp_path / "both"
    shutil.copytree(model_dir, target)
    before = json.loads((target / "model.json").read_text())
    export_tokenizer(run, target)
    meta = json.loads((target / "model.json").read_text())
    assert set(meta["files"]) == {"decoder.onnx", "encoder.onnx", "tokenizer-decoder.onnx"}
    assert meta["files"]["decoder.onnx"] == before["files"]["decoder.onnx"]
    assert meta["tokenizer"]["verified"]["mismatched_codes"] == 0
    assert load_model(target).name == before["name"]  # the Motion VAE still loads as before
    assert load_tokenizer(target).codes == 16
    assert not list(target.glob(".*.tmp*"))
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    meta = json.loads((other / "model.json").read_text())
    meta["layout"]["contact_joints"], meta["layout"]["blocks"] = [], meta["layout"]["blocks"][:-1]
    meta.pop("foot_lock")  # it describes the contact joints just removed
    (other / "model.json").write_text(json.dumps(meta))
    # The layout no longer matches its own size and statistics: refused before the tokenizer is compared.
    with pytest.raises(ModelError, match="field 'layout.size' must be 267"):
        export_tokenizer(run, other)
    meta["layout"]["size"] = meta["layout"]["blocks"][-1][2]
    for key in ("shift", "scale"):
        meta["normalisation"][key] = meta["normalisation"][key][:meta["layout"]["size"]]
    meta["bounds"] = [row[:meta["layout"]["size"]] for row in meta["bounds"]]
    meta["start_frames"] = [[f[:meta["layout"]["size"]] for f in s] for s in meta["start_frames"]]
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="feature layout or fps differs from the tokenizer's"):
        export_tokenizer(run, other)
    assert not (other / "encoder.onnx").exists()


def short_bvh(frames_path: Path, out: Path, n: int) -> Path:
    """The first n frames of a procedural clip, as BVH."""
    source = read_bvh(sorted((frames_path.parent / "bvh").glob("*.bvh"))[0])
    cut = Motion(source.skeleton, source.rotations[:n], source.translations[:n], source.fps, "cut")
    write_bvh(out, cut)
    return out


def test_cli_round_trip_bvh_to_codes_to_bvh_and_npz(model, frames_path, tmp_path, capsys):
    clip = short_bvh(frames_path, tmp_path / "walk.bvh", 131)
    assert tokens_main(["encode", str(clip), "--model", str(model)]) == 0
    captured = capsys.readouterr()
    assert "131 frames is not a multiple of 4: padded with 1" in captured.err and "-> 33 codes" in captured.out
    tokens = load_tokens(tmp_path / "walk.tok.npz")
    assert tokens.length == 131 and tokens.padded == 1 and len(tokens.codes) == 33
    assert np.load(tmp_path / "walk.tok.npz")["codes"].dtype == np.uint16
    assert tokens_main(["decode", str(tmp_path / "walk.tok.npz"), "--model", str(model), "-o",
                        str(tmp_path / "back.bvh")]) == 0
    back = read_bvh(tmp_path / "back.bvh")
    assert back.n_frames == 131 and back.skeleton.names == load_tokenizer(model).skeleton.names
    assert tokens_main(["decode", str(tmp_path / "walk.tok.npz"), "--model", str(model), "-o",
                        str(tmp_path / "back.npz")]) == 0
    arrays = np.load(tmp_path / "back.npz")
    assert arrays["features"].shape[0] == 131 and arrays["world_positions"].shape[:2] == (131, back.skeleton.n_joints)
    # The decoded clip starts where the original did (up to the tiny model's error), not at the world origin.
    assert np.linalg.norm(tokens.start[:2]) > 1.0
    assert np.linalg.norm(arrays["root_positions"][0, [0, 2]] - tokens.start[:2]) < 0.3


def test_bad_input_gives_one_clear_error(model, frames_path, tmp_path, capsys):
    tok = load_tokenizer(model)
    with pytest.raises(TokenError, match="3 frame\\(s\\), shorter than one token: this tokenizer needs at least 4"):
        tok.encode(np.zeros((3, tok.layout.size), np.float32))
    with pytest.raises(TokenError, match="expected feature frames of shape"):
        tok.encode(np.zeros((8, 5), np.float32))
    with pytest.raises(TokenError, match="code 16 at token 1 is out of range: this tokenizer has 16 codes"):
        tok.decode(np.array([0, 16, 3]))
    with pytest.raises(TokenError, match="code -1 at token 0"):
        tok.decode(np.array([-1]))
    with pytest.raises(TokenError, match="its skeleton lacks joint\\(s\\)"):
        tok.encode(random_motion(small_skeleton(), 40))
    with pytest.raises(TokenError, match="made by tokenizer abc"):
        tok.decode(Tokens(np.zeros(2, np.int64), 8, 4, 30.0, np.zeros(3), "abc"))
    # Through the command line: one line on stderr, exit code 2, nothing written.
    short = short_bvh(frames_path, tmp_path / "short.bvh", 3)
    assert tokens_main(["encode", str(short), "--model", str(model)]) == 2
    assert "shorter than one token" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "short.tok.npz").exists()
    save_tokens(tmp_path / "bad.tok.npz", Tokens(np.array([1, 99]), 8, 4, 30.0, np.zeros(3), tok.id))
    assert tokens_main(["decode", str(tmp_path / "bad.tok.npz"), "--model", str(model), "-o",
                        str(tmp_path / "bad.bvh")]) == 2
    assert "code 99 at token 1 is out of range" in one_error_line(capsys.readouterr().err)
    assert tokens_main(["decode", str(tmp_path / "bad.tok.npz"), "--model", str(model), "-o",
                        str(tmp_path / "bad.fbx")]) == 2
    assert "unknown output format" in one_error_line(capsys.readouterr().err)
    assert not list(tmp_path.glob("bad.[bf]*"))
    assert tokens_main(["decode", str(short), "--model", str(model), "-o", str(tmp_path / "x.npz")]) == 2
    assert "not a readable .npz" in one_error_line(capsys.readouterr().err)
    done = run_module("runtime.tokens", "encode", str(short), "--model", str(tmp_path), timeout=60)
    assert done.returncode == 2 and "no model.json" in one_error_line(done.stderr)


@pytest.mark.parametrize("edit,message", [
    (lambda d: (d / "encoder.onnx").write_bytes(b"\x00corrupt" * 10), "encoder.onnx: sha256 does not match"),
    (lambda d: (d / "tokenizer-decoder.onnx").unlink(), "tokenizer-decoder.onnx: missing from the model directory"),
    (lambda d: (d / "model.json").write_text(json.dumps({k: v for k, v in json.loads(
        (d / "model.json").read_text()).items() if k != "tokenizer"})), "holds no motion tokenizer"),
])
def test_broken_tokenizer_directories_fail_in_one_sentence(model, tmp_path, edit, message):
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    edit(bad)
    with pytest.raises(ModelError, match=message):
        load_tokenizer(bad)


def test_tokenizer_only_directory_and_bad_training_settings(model, frames_path, work, capsys):
    with pytest.raises(ModelError, match="holds only a motion tokenizer"):
        load_model(model)
    assert train_main([str(frames_path), "--out", str(work / "x"), "--window", "30"]) == 2
    assert "multiple of the 4 frames per token" in one_error_line(capsys.readouterr().err)
    assert train_main([str(frames_path), "--out", str(work / "x"), "--set", "quantiser=ema"]) == 2
    assert "unknown setting 'quantiser'" in one_error_line(capsys.readouterr().err)
    assert train_main([str(frames_path), "--out", str(work / "run"), "--config", str(work / "tiny.toml")]) == 2
    assert "already holds a checkpoint" in one_error_line(capsys.readouterr().err)
    assert train_main([str(frames_path), "--out", str(work / "run"), "--resume", "--width", "64"]) == 2
    assert "cannot change width" in one_error_line(capsys.readouterr().err)
    assert not (work / "x").exists()
    assert (work / "run" / CHECKPOINT_NAME).exists()
