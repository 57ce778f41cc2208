"""Every command line of the toolkit against bad input: one line on stderr naming the file or option and what
was expected, exit code 2, nothing written (tests/test_fuzz_*.py fuzz the runtime's inputs in depth)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from tests.conftest import ROOT, one_error_line, run_module
from tests.contract import check_refusal, run_main, tally

# (module, arguments, the culprit the line must name, outputs that must not appear); {t} is a scratch folder,
# {frames} a valid frames.npz, {model} a valid model directory, {file} a plain file, {nan} frames with a NaN.
CASES = [
    ("trainer.train", ["{t}/missing.npz", "--out", "{t}/run"], "missing.npz", ["run"]),
    ("trainer.train", ["{file}", "--out", "{t}/run"], "plain.txt", ["run"]),
    ("trainer.train", ["{t}/empty.npz", "--out", "{t}/run"], "empty.npz", ["run"]),
    ("trainer.train", ["{nan}", "--out", "{t}/run"], "nan.npz", ["run"]),
    ("trainer.train", ["{frames}", "--out", "{t}/run", "--set", "lr=nan"], "lr", ["run"]),
    ("trainer.train", ["{frames}", "--out", "{t}/run", "--set", "kl_beta=inf"], "kl_beta", ["run"]),
    ("trainer.train", ["{frames}", "--out", "{t}/run", "--epochs", "abc"], "--epochs", ["run"]),
    ("trainer.train", ["{frames}", "--out", "{file}"], "plain.txt", []),
    ("trainer.evaluate", ["{t}/norun", "{frames}"], "norun", []),
    ("trainer.evaluate", ["{t}/norun", "{frames}", "--rollouts", "0"], "--rollouts", []),
    ("trainer.evaluate", ["{t}/norun", "{frames}", "--frames", "1000000000000"], "--frames", []),
    ("trainer.evaluate", ["{t}/norun", "{frames}", "--json", "{t}/out.txt"], "out.txt", ["out.txt"]),
    ("trainer.evaluate", ["{t}/norun", "{frames}", "--seed", "-1"], "--seed", []),
    ("trainer.export", ["{t}/norun", "--out", "{t}/model"], "norun", ["model"]),
    ("trainer.export", ["{t}/norun", "--out", "{file}"], "plain.txt", []),
    ("trainer.export", ["{t}/norun", "--out", "{t}/gone/model"], "gone", ["gone"]),
    ("trainer.export", ["{t}/norun", "--out", "{t}/model", "--name", " "], "--name", ["model"]),
    ("trainer.policy", ["joystick", "--model", "{model}", "--run-dir", "{t}/p", "--lr", "nan"], "--lr", ["p"]),
    ("trainer.policy", ["joystick", "--model", "{model}", "--run-dir", "{t}/p", "--envs", "0"], "--envs", ["p"]),
    ("trainer.policy", ["joystick", "--model", "{model}", "--run-dir", "{t}/p", "--envs", "1000000000"], "--envs",
     ["p"]),
    ("trainer.policy", ["joystick", "--model", "{model}", "--run-dir", "{t}/p", "--speed-min", "-1"], "--speed-min",
     ["p"]),
    ("trainer.policy", ["joystick", "--model", "{model}", "--run-dir", "{t}/p", "--threads", "-1"], "--threads",
     ["p"]),
    ("trainer.policy", ["fly", "--model", "{model}", "--run-dir", "{t}/p"], "fly", ["p"]),
    ("trainer.policy", ["joystick", "--model", "{t}/nomodel", "--run-dir", "{t}/p", "--steps", "64"], "nomodel", []),
    ("trainer.train_tokenizer", ["{t}/missing.npz", "--out", "{t}/run"], "missing.npz", ["run"]),
    ("trainer.train_tokenizer", ["{frames}", "--out", "{t}/run", "--set", "lr=nan"], "lr", ["run"]),
    ("trainer.train_tokenizer", ["{nan}", "--out", "{t}/run"], "nan.npz", ["run"]),
    ("trainer.tokenizer_export", ["{t}/norun", "--out", "{t}/model"], "norun", ["model"]),
    ("trainer.tokenizer_export", ["{t}/norun", "--out", "{file}"], "plain.txt", []),
    ("trainer.procedural", ["{t}/proc", "--clips", "0"], "--clips", ["proc"]),
    ("trainer.procedural", ["{t}/proc", "--seconds", "1e12"], "--seconds", ["proc"]),
    ("trainer.procedural", ["{t}/proc", "--fps", "nan"], "--fps", ["proc"]),
    ("trainer.procedural", ["{file}"], "plain.txt", []),
    ("runtime.tokens", ["encode", "{t}/missing.bvh", "--model", "{model}"], "missing.bvh", ["missing.tok.npz"]),
    ("runtime.tokens", ["encode", "{t}", "--model", "{model}"], "is a folder", []),
    ("runtime.tokens", ["decode", "{file}", "--model", "{model}", "-o", "{t}/x.fbx"], "x.fbx", ["x.fbx"]),
    ("runtime.tokens", ["decode", "{file}", "--model", "{model}", "-o", "{t}/x.bvh"], "tokenizer", ["x.bvh"]),
    ("runtime.tokens", ["nonsense"], "nonsense", []),
    ("godot_bridge.serve", ["--port", "99999"], "--port", []),
    ("godot_bridge.serve", ["--model", "{t}/nomodel"], "nomodel", []),
    ("godot_bridge.serve", ["--max-clients", "0"], "--max-clients", []),
    ("blender_addon.build", ["--out", "{file}"], "plain.txt", []),
    ("blender_addon.build", ["--wheel", "{t}/none.whl", "--out", "{t}/dist"], "none.whl", ["dist"]),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, frames_path, model_dir) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "plain.txt").write_text("not what any command wants\n")
    with np.load(frames_path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["data"] = arrays["data"].copy()
    arrays["data"][5, 3] = np.nan
    np.savez(folder / "nan.npz", **arrays)
    return {"frames": str(frames_path), "model": str(model_dir), "file": str(folder / "plain.txt"),
            "nan": str(folder / "nan.npz")}


@pytest.mark.parametrize("module,args,culprit,outputs", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_cli_refuses_bad_input_in_one_line(tmp_path, inputs, module, args, culprit, outputs,
                                                 torch_one_thread):
    work = tmp_path / "t"
    work.mkdir()
    (work / "empty.npz").write_bytes(b"")
    argv = [a.format(t=work, **inputs) for a in args]
    main = importlib.import_module(module if module != "trainer.policy" else "trainer.policy.__main__").main
    result = run_main(main, argv)
    check_refusal(result, f"{module} {argv}", [culprit], [work / o for o in outputs], work)
    tally("every CLI: bad arguments and files", False)


@pytest.mark.parametrize("module,args,culprit", [
    ("trainer.train", ["missing.npz", "--out", "run"], "missing.npz"),
    ("trainer.policy", ["joystick", "--model", "m", "--run-dir", "r", "--lr", "inf"], "--lr"),
    ("godot_bridge.serve", ["--port", "-5"], "--port"),
    ("blender_addon.build", ["--out", "README.md"], "README.md"),
])
def test_every_cli_in_a_real_process(module, args, culprit):
    done = run_module(module, *args, timeout=180)
    assert done.returncode == 2 and culprit in one_error_line(done.stderr), done.stderr
    assert not (ROOT / "run").exists() and not (ROOT / "r").exists()  # run_module runs in the checkout
