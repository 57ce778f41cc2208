"""Fuzz the runtime's inputs besides BVH and model directories (seeded): `runtime.bake --control` files,
`runtime.tokens decode` files, and every bake argument edge case. Each case either gives a valid result or
is refused by the contract (exit 2, one line naming the file or option, no output, no temp file)."""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest

from runtime.bake import main as bake_main
from runtime.tokenizer import Tokens, load_tokenizer, save_tokens
from runtime.tokens import main as tokens_main
from tests.conftest import run_module
from tests.contract import check_refusal, run_main, tally

SEED = 180


# ---- control files ----------------------------------------------------------------------------------------

def control_cases(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """(what, file bytes): valid scripts of every form, then broken ones."""
    def js(value) -> bytes:
        return json.dumps(value).encode()

    joystick = [[0, 1, 0, 1.5], [1, 0, 1, 2.0]]
    path = [[0, 0], [3, 0], [3, 3]]
    cases = [
        ("joystick rows", js(joystick)), ("path rows", js(path)),
        ("joystick object", js({"task": "joystick", "script": joystick})),
        ("closed path", js({"task": "path", "points": path, "closed": True})),
        ("targets", js({"task": "target", "targets": [[2, 2], [-2, 4]], "radius_m": 0.3})),
        ("UTF-8 with a byte-order mark", b"\xef\xbb\xbf" + js(path)),
        ('"closed": "false"', js({"task": "path", "points": path, "closed": "false"})),
        ("radius_m [1]", js({"task": "target", "targets": [[1, 2]], "radius_m": [1]})),
        ("negative radius", js({"task": "target", "targets": [[1, 2]], "radius_m": -1})),
        ("radius NaN", b'{"task": "target", "targets": [[1, 2]], "radius_m": NaN}'),
        ("1e300 points", js([[0, 1e300], [1, 2]])), ("1e400 points", b"[[0, 1e400], [1, 2]]"),
        ("Infinity speed", b"[[0, 1, 0, Infinity]]"), ("UTF-16", json.dumps(path).encode("utf-16")),
        ("a number", b"42"), ("a string", b'"joystick"'), ("null", b"null"), ("true", b"true"),
        ("an empty list", b"[]"), ("an empty object", b"{}"), ("empty file", b""),
        ("rows of mixed width", js([[0, 0], [1, 0, 1, 1]])), ("a string in a row", js([[0, "1", 0, 1]])),
        ("a bool in a row", js([[0, True], [1, 1]])), ("nested rows", js([[[0, 0]], [[1, 1]]])),
        ("deeply nested", b"[" * 100000 + b"]" * 100000), ("truncated", js(joystick)[:15]),
        ("unknown task", js({"task": "fly", "points": path})), ("no task", js({"points": path})),
        ("unknown field", js({"task": "path", "points": path, "speed": 2})),
        ("path without points", js({"task": "path"})), ("script a string", js({"task": "joystick", "script": "x"})),
        ("a 0.1 m path", js([[0, 0], [0.1, 0]])), ("a 20 km path", js([[0, 0], [10000, 0], [-10000, 0]])),
        ("times going back", js([[1, 1, 0, 1], [0, 1, 0, 1]])), ("negative time", js([[-1, 1, 0, 1]])),
        ("zero direction", js([[0, 0, 0, 1]])), ("speed 25 m/s", js([[0, 1, 0, 25]])),
        ("negative speed", js([[0, 1, 0, -1]])), ("random bytes", rng.integers(0, 256, 200, dtype=np.uint8).tobytes()),
        ("NUL bytes", b"\x00" * 10), ("a target 20 km away", js({"task": "target", "targets": [[20000, 0]]})),
        ("200,000 rows", js([[t, 1, 0, 1] for t in range(200_000)])),
    ]
    # Random damage to a valid file: one character replaced, or the file cut short.
    base = js({"task": "joystick", "script": joystick})
    for _ in range(12):
        data = bytearray(base)
        at = int(rng.integers(len(data)))
        if rng.integers(2):
            data[at] = int(rng.choice(list(b'{}[],:"0e-.ntfx ')))
            cases.append((f"byte {at} -> {chr(data[at])!r}", bytes(data)))
        else:
            cases.append((f"cut at byte {at}", bytes(data[:at])))
    return cases


def test_control_files(tmp_path):
    rng = np.random.default_rng(SEED)
    cases = control_cases(rng)
    assert len(cases) >= 40
    for n, (what, data) in enumerate(cases):
        control = tmp_path / f"control{n:02d}.json"
        control.write_bytes(data)
        out = tmp_path / "steer.npz"
        result = run_main(bake_main, [out, "--control", control, "--frames", "4", "-q"])
        if result.code == 0:
            with np.load(out) as clip:
                assert np.isfinite(clip["world_positions"]).all(), what
            out.unlink()
            tally("bake: --control files", True)
        else:
            check_refusal(result, f"control case {n} ({what})", [control.name], [out], tmp_path)
            tally("bake: --control files", False)


def test_control_paths_that_are_not_files(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "folder.json").mkdir()
    for name in ("fifo.json", "folder.json", "missing.json"):
        result = run_main(bake_main, [tmp_path / "x.npz", "--control", tmp_path / name, "--frames", "2", "-q"])
        check_refusal(result, name, [name], [tmp_path / "x.npz"], tmp_path)
        tally("bake: --control files", False)


# ---- token files ------------------------------------------------------------------------------------------

TINY = """
[model]
width = 16
codes = 8
code_dim = 8
[data]
window = 16
holdout_every = 0
[train]
batch_size = 4
steps = 2
log_every = 2
warmup_steps = 1
threads = 1
"""


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, frames_path) -> Path:
    """A tiny tokenizer (2 training steps) exported into a tokenizer-only model directory."""
    import torch

    from trainer.tokenizer_export import export_tokenizer
    from trainer.train_tokenizer import config_from_dict, train_tokenizer

    work = tmp_path_factory.mktemp("tok")
    threads = torch.get_num_threads()
    run = train_tokenizer(config_from_dict(tomllib.loads(TINY)), frames_path, work / "run", progress=False)
    torch.set_num_threads(threads)
    export_tokenizer(run, work / "model", licence="test data")
    return work / "model"


def npz_bytes(path: Path, **arrays) -> None:
    """Write arrays as an .npz at exactly path."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def token_cases(good: Path, rng: np.random.Generator) -> list[tuple[str, object]]:
    """(what, bytes of the file, or a function writing it): damaged and doctored .tok.npz files."""
    data = good.read_bytes()
    with np.load(good) as f:
        fields = {k: f[k] for k in f.files}

    def doctored(**changes):
        def write(path: Path) -> None:
            arrays = {k: v for k, v in {**fields, **changes}.items() if v is not None}
            npz_bytes(path, **arrays)
        return write

    cases: list[tuple[str, object]] = [
        ("valid", data), ("0 bytes", b""), ("random bytes", rng.integers(0, 256, 500, dtype=np.uint8).tobytes()),
        ("a text file", b"hello\n"), ("a .npy array", lambda p: np.save(open(p, "wb"), np.zeros(3))),
        ("version missing", doctored(version=None)), ("version a string", doctored(version=np.array("1"))),
        ("version -1", doctored(version=np.int64(-1))), ("version 99", doctored(version=np.int64(99))),
        ("version 1.5", doctored(version=np.float64(1.5))), ("version an array", doctored(version=np.arange(2))),
        ("fps NaN", doctored(fps=np.float64(np.nan))), ("fps 0", doctored(fps=np.float64(0))),
        ("fps inf", doctored(fps=np.float64(np.inf))), ("fps a string", doctored(fps=np.array("30"))),
        ("length 0", doctored(length=np.int64(0))), ("length huge", doctored(length=np.int64(2 ** 62))),
        ("length -5", doctored(length=np.int64(-5))), ("frames_per_token 0", doctored(frames_per_token=np.int64(0))),
        ("frames_per_token 2", doctored(frames_per_token=np.int64(2))),
        ("codes empty", doctored(codes=np.zeros(0, np.uint16))),
        ("codes 2-D", doctored(codes=np.zeros((2, 2), np.int64))),
        ("codes float", doctored(codes=np.zeros(4, np.float32))), ("code 99", doctored(codes=np.full(4, 99, np.int64))),
        ("code -1", doctored(codes=np.full(4, -1, np.int64))), ("start NaN", doctored(start=np.full(3, np.nan))),
        ("start of 2", doctored(start=np.zeros(2))), ("tokenizer not JSON", doctored(tokenizer=np.array("{"))),
        ("another tokenizer", doctored(tokenizer=np.array(json.dumps({"id": "0123456789abcdef"})))),
        ("format wrong", doctored(format=np.array("something"))), ("codes missing", doctored(codes=None)),
        ("an object array", lambda p: np.savez(open(p, "wb"), **{**fields, "codes": np.array([{}], dtype=object)})),
    ]
    for _ in range(6):
        cut = int(rng.integers(1, len(data)))
        cases.append((f"cut at byte {cut}", data[:cut]))
    for _ in range(6):
        flipped = bytearray(data)
        at = int(rng.integers(len(flipped)))
        flipped[at] ^= 0xFF
        cases.append((f"byte {at} flipped", bytes(flipped)))
    return cases


def test_token_files(tokenizer_dir, tmp_path):
    tok = load_tokenizer(tokenizer_dir)
    good = tmp_path / "good.tok.npz"
    save_tokens(good, Tokens(np.array([1, 2, 3, 0]), 14, 4, tok.fps, np.zeros(3), tok.id), "tiny")
    rng = np.random.default_rng(SEED)
    cases = token_cases(good, rng)
    assert len(cases) >= 30
    accepted = 0
    for n, (what, content) in enumerate(cases):
        src = tmp_path / f"t{n:02d}.tok.npz"
        if callable(content):
            content(src)
        else:
            src.write_bytes(content)
        out = tmp_path / "decoded.bvh"
        result = run_main(tokens_main, ["decode", src, "--model", tokenizer_dir, "-o", out])
        if result.code == 0:
            assert out.read_text().startswith("HIERARCHY"), what
            out.unlink()
            accepted += 1
            tally("tokens decode: files", True)
        else:
            check_refusal(result, f"tokens case {n} ({what})", [src.name], [out], tmp_path)
            tally("tokens decode: files", False)
    assert accepted >= 1


# ---- bake arguments ---------------------------------------------------------------------------------------

def bake_argument_cases(tmp_path: Path) -> list[tuple[list, str, list[Path]]]:
    """(arguments, the option or path the error must name, files that must not appear)."""
    (tmp_path / "taken.npz").mkdir()
    (tmp_path / "crowd_1.glb").mkdir()
    (tmp_path / "shot.gif").mkdir()
    out = tmp_path / "clip.npz"
    cases = [
        ([out, "--frames", "0"], "--frames", [out]), ([out, "--frames", "-1"], "--frames", [out]),
        ([out, "--frames", "2000000000"], "--frames", [out]), ([out, "--frames", "abc"], "--frames", [out]),
        ([out, "--frames", "1.5"], "--frames", [out]), ([out, "--characters", "0"], "--characters", [out]),
        ([out, "--characters", "100000000"], "--characters", [out]),
        ([out, "--characters", "-1"], "--characters", [out]),
        ([out, "--seed", "-1"], "--seed", [out]), ([out, "--seed", "x"], "--seed", [out]),
        ([out, "--start", "-1"], "--start", [out]), ([out, "--start", "999"], "--start", [out]),
        ([out, "--providers", "tpu"], "--providers", [out]), ([out, "--model", tmp_path / "nope"], "nope", [out]),
        ([out, "--control", tmp_path / "nope.json"], "nope.json", [out]),
        ([tmp_path / "clip.fbx"], "clip.fbx", [tmp_path / "clip.fbx"]), ([tmp_path / "clip"], "clip", []),
        ([tmp_path], str(tmp_path), []), ([tmp_path / "taken.npz"], "taken.npz", []),
        ([tmp_path / "missing" / "clip.npz"], "missing", [tmp_path / "missing"]),
        ([tmp_path / "crowd.glb", "--characters", "2"], "crowd_1.glb", [tmp_path / "crowd_0.glb"]),
        ([out, "--preview", tmp_path / "p.svg"], "p.svg", [out, tmp_path / "p.svg"]),
        ([out, "--preview", tmp_path / "shot.gif"], "shot.gif", [out]),
        ([out, "--preview", tmp_path / "gone" / "p.gif"], "gone", [out]),
        ([out, "--preview", out], "--preview", [out]),
        ([out, "--frames", "2", "--seed", str(2 ** 70)], "", [out]),  # valid: any non-negative seed
        ([out, "--frames", "2", "--start", "0", "--characters", "3"], "", [out]),  # valid
    ]
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        cases.append(([out, "--providers", "cuda"], "CUDA", [out]))
    return cases


def test_bake_arguments(tmp_path):
    for args, culprit, outputs in bake_argument_cases(tmp_path):
        result = run_main(bake_main, [*args, "-q"])
        if not culprit:  # a valid edge
            assert result.code == 0, result.err
            for p in outputs:
                p.unlink()
            tally("bake: arguments", True)
            continue
        check_refusal(result, f"bake {args}", [culprit], outputs, tmp_path)
        tally("bake: arguments", False)


def test_bake_arguments_in_a_real_process(tmp_path):
    for args, culprit in ((["--frames", "2000000000"], "--frames"), (["--characters", "100000000"], "--characters"),
                          (["--seed", "-1"], "--seed")):
        done = run_module("runtime.bake", str(tmp_path / "clip.npz"), *args, timeout=120)
        assert done.returncode == 2 and culprit in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not list(tmp_path.iterdir())
