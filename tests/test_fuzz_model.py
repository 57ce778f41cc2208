"""Fuzz model directories through `runtime.bake` (seeded): model.json with random values put anywhere in its
tree, keys deleted or added, broken JSON, ONNX files damaged, missing or swapped with their hashes fixed.
Each case either bakes a finite clip or is refused by the contract naming a file of the model directory."""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime.bake import main as bake_main
from runtime.model import DEFAULT_MODEL, INT8_FILE, SCHEMA_VERSION, sha256_file
from tests.conftest import run_module
from tests.contract import check_refusal, run_main, tally

SEED = 1818
VALUES = [None, "abc", "", [], {}, float("nan"), float("inf"), -float("inf"), -1, 0, 1e300, True, 3.5, [[1]],
          {"x": 1}, "1", 2 ** 64, [float("nan")], -1e-300, 1e7]
ONNX = sorted(p.name for p in DEFAULT_MODEL.glob("*.onnx"))
META = json.loads((DEFAULT_MODEL / "model.json").read_text(encoding="utf-8"))


def new_dir(tmp_path: Path, name: str, meta: dict | str | bytes | None = None) -> Path:
    """A model directory whose ONNX files link to the default model's and whose model.json is meta."""
    folder = tmp_path / name
    folder.mkdir()
    for f in ONNX:
        (folder / f).symlink_to(DEFAULT_MODEL / f)
    meta = META if meta is None else meta
    if isinstance(meta, dict):
        meta = json.dumps(meta)
    (folder / "model.json").write_bytes(meta.encode() if isinstance(meta, str) else meta)
    return folder


def random_path(meta: dict, rng: np.random.Generator) -> list:
    """A path from the root into the JSON tree, descending while containers last."""
    node, path = meta, []
    while isinstance(node, (dict, list)) and node and (not path or rng.random() < 0.75):
        key = list(node)[int(rng.integers(len(node)))] if isinstance(node, dict) else int(rng.integers(len(node)))
        path.append(key)
        node = node[key]
    return path


def json_mutation(rng: np.random.Generator) -> tuple[str, dict]:
    """model.json with one random change: a value replaced, a key deleted, or an unknown key added."""
    meta = copy.deepcopy(META)
    path = random_path(meta, rng)
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    action = int(rng.integers(5))
    if action == 0 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"delete {path}", meta
    if action == 1:
        target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
        if isinstance(target, dict):
            target[f"unknown_{int(rng.integers(100))}"] = VALUES[int(rng.integers(len(VALUES)))]
            return f"unknown key under {path}", meta
    value = VALUES[int(rng.integers(len(VALUES)))]
    parent[path[-1]] = value
    return f"{path} = {value!r}", meta


def edited(change) -> dict:
    meta = copy.deepcopy(META)
    change(meta)
    return meta


def listed_cases() -> list[tuple[str, object]]:
    """The corruptions of the issue, and more of their kind: (what, model.json content or a folder edit)."""
    size = META["layout"]["size"]
    cases: list[tuple[str, object]] = [
        (f"fps {v!r}", edited(lambda m, v=v: m.update(fps=v))) for v in ("abc", None, [30], float("nan"), 0, -30, 1e6)]
    cases += [(f"{k} {v!r}", edited(lambda m, k=k, v=v: m.update({k: v})))
              for k in ("skeleton", "layout", "normalisation", "latent", "files", "start_frames")
              for v in (None, "x", [1])]
    cases += [(f"schema_version {v!r}", edited(lambda m, v=v: m.update(schema_version=v)))
              for v in (0, -1, True, "1", SCHEMA_VERSION + 1, 1.0)]
    cases += [
        ("a files entry that is a string", edited(lambda m: m["files"].update({"decoder.onnx": "abc"}))),
        ("policies a list", edited(lambda m: m.update(policies=["joystick"]))),
        ("observation removed", edited(lambda m: m["policies"]["joystick"].pop("observation"))),
        ("codebook of bad shape", edited(lambda m: m["latent"].update(codebook=[[0.0] * 5]))),
        ("codebook with NaN", edited(lambda m: m["latent"].update(codebook=[[float("nan")] * 32]))),
        ("NaN in normalisation", edited(lambda m: m["normalisation"]["shift"].__setitem__(4, float("nan")))),
        ("zero scale", edited(lambda m: m["normalisation"]["scale"].__setitem__(4, 0.0))),
        ("NaN in start frames", edited(lambda m: m["start_frames"][0][0].__setitem__(7, float("nan")))),
        ("1e300 in start frames", edited(lambda m: m["start_frames"][0][0].__setitem__(7, 1e300))),
        ("NaN in bounds", edited(lambda m: m["bounds"][0].__setitem__(3, float("nan")))),
        ("bounds upside down", edited(lambda m: m.update(bounds=[m["bounds"][1], m["bounds"][0]]))),
        ("NaN in offsets", edited(lambda m: m["skeleton"]["offsets"][3].__setitem__(1, float("nan")))),
        ("1e300 in offsets", edited(lambda m: m["skeleton"]["offsets"][3].__setitem__(1, 1e300))),
        ("duplicate joint names", edited(lambda m: m["skeleton"]["names"].__setitem__(2, m["skeleton"]["names"][1]))),
        ("a parent after its child", edited(lambda m: m["skeleton"]["parents"].__setitem__(1, 5))),
        ("latent size a string", edited(lambda m: m["latent"].update(size="32"))),
        ("latent size 33", edited(lambda m: m["latent"].update(size=33))),
        ("condition_frames 2", edited(lambda m: m.update(condition_frames=2))),
        ("a policy action of another size", edited(lambda m: m["policies"]["target"]["action"].update(size=8))),
        ("blocks that skip columns", edited(lambda m: m["policies"]["target"]["observation"].update(
            blocks=[["frame", 0, size], ["target", size + 1, size + 3]]))),
        ("a path policy without lookahead", edited(lambda m: m["policies"]["path"].update(task={}))),
        ("a file name with a folder",
         edited(lambda m: m["files"].update({"../model.json": m["files"]["decoder.onnx"]}))),
        ("a policy file not listed", edited(lambda m: m["policies"]["joystick"].update(file="other.onnx"))),
        ("sha256 in capitals", edited(lambda m: m["files"]["decoder.onnx"].update(
            sha256=m["files"]["decoder.onnx"]["sha256"].upper()))),
        ("layout size wrong", edited(lambda m: m["layout"].update(size=size + 1))),
        ("contact joint unknown", edited(lambda m: m["layout"].update(contact_joints=["Tail"]))),
        ("deeply nested JSON", '{"a": ' * 100000 + "1" + "}" * 100000),
        ("nested below the recursion limit", {**META, "extra": json.loads("[" * 900 + "]" * 900)}),
        ("truncated model.json", json.dumps(META)[:5000]),
        ("empty model.json", ""),
        ("not UTF-8", b"\xff\xfe" + json.dumps(META).encode("utf-16-le")),
        ("a JSON list", "[1, 2]"),
        ("NaN literal in name", json.dumps(META).replace('"name": "default"', '"name": NaN')),
        # Accepted: what newer exports may add, and what is optional.
        ("unknown top-level key", {**META, "future": {"anything": [1, 2]}}),
        ("latent prior statistics", edited(lambda m: m["latent"].update(mean=[0.0] * 32, std=[1.0] * 32, scale=1.0))),
        ("no policies", edited(lambda m: m.pop("policies"))),
        ("no bounds", edited(lambda m: m.pop("bounds"))),
        ("NaN in a training record", edited(lambda m: m["policies"]["joystick"]["training"].update(
            mean_reward=float("nan")))),
    ]
    return cases


def fix_hash(folder: Path, name: str) -> None:
    meta = json.loads((folder / "model.json").read_text())
    meta["files"][name]["sha256"] = sha256_file(folder / name)
    (folder / "model.json").write_text(json.dumps(meta))


def replace_file(folder: Path, name: str, data: bytes) -> None:
    (folder / name).unlink()
    (folder / name).write_bytes(data)


def file_cases(rng: np.random.Generator) -> list[tuple[str, object]]:
    """Edits of the folder's files: (what, function of the folder)."""
    decoder = (DEFAULT_MODEL / "decoder.onnx").read_bytes()

    def flip(name: str, fixed: bool):
        def edit(folder: Path) -> None:
            data = bytearray((DEFAULT_MODEL / name).read_bytes())
            at = int(rng.integers(len(data) - 64))
            data[at:at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
            replace_file(folder, name, bytes(data))
            if fixed:
                fix_hash(folder, name)
        return edit

    def copy_over(src: str, dst: str):
        def edit(folder: Path) -> None:
            replace_file(folder, dst, (DEFAULT_MODEL / src).read_bytes())
            fix_hash(folder, dst)
        return edit

    def truncate(name: str, fixed: bool):
        def edit(folder: Path) -> None:
            data = (DEFAULT_MODEL / name).read_bytes()
            replace_file(folder, name, data[:int(rng.integers(len(data)))])
            if fixed:
                fix_hash(folder, name)
        return edit

    cases: list[tuple[str, object]] = []
    for name in ONNX:
        cases += [(f"bytes of {name} changed", flip(name, False)),
                  (f"{name} truncated", truncate(name, False)),
                  (f"{name} truncated, its hash fixed", truncate(name, True)),
                  (f"{name} missing", lambda f, n=name: (f / n).unlink()),
                  (f"{name} a folder", lambda f, n=name: ((f / n).unlink(), (f / n).mkdir()))]
    cases += [
        ("a decoder copied over a policy, its hash fixed", copy_over("decoder.onnx", "policy-joystick.onnx")),
        ("a policy copied over the decoder, its hash fixed", copy_over("policy-path.onnx", "decoder.onnx")),
        ("the target policy copied over the joystick's, its hash fixed",
         copy_over("policy-target.onnx", "policy-joystick.onnx")),
        ("decoder bytes changed, its hash fixed", flip("decoder.onnx", True)),
        ("random bytes as the decoder, its hash fixed",
         lambda f: (replace_file(f, "decoder.onnx", bytes(rng.integers(0, 256, 4096, dtype=np.uint8))),
                    fix_hash(f, "decoder.onnx"))),
        ("model.json a folder", lambda f: ((f / "model.json").unlink(), (f / "model.json").mkdir())),
        ("model.json missing", lambda f: (f / "model.json").unlink()),
        ("half the decoder, hash fixed", lambda f: (replace_file(f, "decoder.onnx", decoder[:len(decoder) // 2]),
                                                    fix_hash(f, "decoder.onnx"))),
    ]
    return cases


def check_bake(tmp_path: Path, folder: Path, what: str) -> None:
    out = tmp_path / "clip.npz"
    result = run_main(bake_main, [out, "--model", folder, "--frames", "3", "-q", "--seed", "1"])
    if result.code == 0:
        with np.load(out) as clip:
            for key in ("root_positions", "local_rotations", "world_positions", "features"):
                assert np.isfinite(clip[key]).all(), f"{what}: {key} is not finite"
        out.unlink()
        tally("bake: model directories", True)
        return
    check_refusal(result, what, [str(folder)], [out], tmp_path)
    tally("bake: model directories", False)


def test_corrupted_model_directories(tmp_path):
    rng = np.random.default_rng(SEED)
    cases = listed_cases()
    cases += [json_mutation(rng) for _ in range(80)]
    cases += file_cases(rng)
    assert len(cases) >= 100
    for n, (what, content) in enumerate(cases):
        if callable(content):
            folder = new_dir(tmp_path, f"m{n:03d}")
            content(folder)
        else:
            folder = new_dir(tmp_path, f"m{n:03d}", content)
        check_bake(tmp_path, folder, f"case {n} ({what})")


def test_listed_corruptions_are_refused_and_additions_accepted(tmp_path):
    expected_ok = {"unknown top-level key", "latent prior statistics", "no policies", "no bounds",
                   "NaN in a training record", "nested below the recursion limit"}
    for n, (what, content) in enumerate(listed_cases()):
        folder = new_dir(tmp_path, f"l{n:03d}", content)
        result = run_main(bake_main, [tmp_path / "c.npz", "--model", folder, "--frames", "2", "-q"])
        assert (result.code == 0) == (what in expected_ok), f"{what}: {result.err}"
        if result.code == 0:
            (tmp_path / "c.npz").unlink()


def test_a_damaged_model_in_a_real_process(tmp_path):
    folder = new_dir(tmp_path, "bad", edited(lambda m: m.update(fps="abc")))
    done = run_module("runtime.bake", str(tmp_path / "x.npz"), "--model", str(folder), timeout=120)
    assert done.returncode == 2 and "field 'fps' must be a finite number" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "x.npz")


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory) -> Path:
    """The default model with its int8 step graph added (trainer.export --precision int8)."""
    from trainer.quantize import add_int8

    folder = new_dir(tmp_path_factory.mktemp("int8"), "m")
    add_int8(folder)
    return folder


def int8_cases(meta: dict, rng: np.random.Generator) -> list[tuple[str, object, bool]]:
    """Edits of an int8 model directory's precision entries: (what, model.json or a folder edit, accepted)."""
    def change(fn) -> dict:
        m = copy.deepcopy(meta)
        fn(m)
        return m

    entry = meta["files"][INT8_FILE]
    cases: list[tuple[str, object, bool]] = [
        ("as exported", meta, True),
        ("precisions a list", change(lambda m: m.update(precisions=["int8"])), False),
        ("an unknown precision", change(lambda m: m["precisions"].update(fp16=INT8_FILE)), False),
        ("the int8 file not listed", change(lambda m: m["precisions"].update(int8="other.onnx")), False),
        ("the int8 file in a folder", change(lambda m: m["precisions"].update(int8="../decoder-int8.onnx")), False),
        ("quantised_from not a hash", change(lambda m: m["files"][INT8_FILE].update(quantised_from="abc")), False),
        ("quantised_from another decoder",
         change(lambda m: m["files"][INT8_FILE].update(quantised_from="0" * 64)), False),
        ("no precisions", change(lambda m: m.pop("precisions")), False),
        ("the int8 file's hash wrong", change(lambda m: m["files"][INT8_FILE].update(sha256="f" * 64)), False),
        ("the int8 graph missing", lambda f: (f / INT8_FILE).unlink(), False),
        ("the int8 graph truncated", lambda f: (f / INT8_FILE).write_bytes(
            (f / INT8_FILE).read_bytes()[:int(rng.integers(1, 100000))]), False),
    ]
    for _ in range(20):  # random values anywhere in the entries the precision adds
        where = ["precisions", "int8"] if rng.random() < 0.4 else ["files", INT8_FILE, str(rng.choice(list(entry)))]
        value = VALUES[int(rng.integers(len(VALUES)))]

        def put(m, where=where, value=value):
            node = m
            for key in where[:-1]:
                node = node[key]
            node[where[-1]] = value
        cases.append((f"{where} = {value!r}", change(put), None))
    return cases


def test_precision_entries_of_model_json_are_checked(tmp_path, int8_dir):
    meta = json.loads((int8_dir / "model.json").read_text(encoding="utf-8"))
    for n, (what, content, accepted) in enumerate(int8_cases(meta, np.random.default_rng(SEED))):
        folder = tmp_path / f"p{n:03d}"
        folder.mkdir()
        for f in sorted(set(ONNX) | {INT8_FILE}):
            shutil.copy(int8_dir / f, folder / f) if f == INT8_FILE else (folder / f).symlink_to(DEFAULT_MODEL / f)
        (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
        if callable(content):
            content(folder)
        else:
            (folder / "model.json").write_text(json.dumps(content), encoding="utf-8")
        out = tmp_path / "c.npz"
        result = run_main(bake_main, [out, "--model", folder, "--frames", "2", "-q", "--precision", "int8"])
        if accepted is not None:
            assert (result.code == 0) == accepted, f"{what}: {result.err}"
        if result.code == 0:
            with np.load(out) as clip:
                assert np.isfinite(clip["local_rotations"]).all(), what
            out.unlink()
        else:
            check_refusal(result, f"int8 case {n} ({what})", [str(folder)], [out], tmp_path)
