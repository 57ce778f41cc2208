"""Every reproduction of issue 18, as it was reported: each now gives one clear line (exit 2, nothing written)
or, where the input was valid, a correct result."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from godot_bridge import protocol as P
from godot_bridge.background import BackgroundServer
from godot_bridge.bridge import Bridge, BridgeConfig
from runtime.atomic import atomic_path
from runtime.bake import main as bake_main
from runtime.bvh import read_bvh, write_bvh
from runtime.model import DEFAULT_MODEL, load_model
from runtime.tokenizer import Tokens, save_tokens
from tests.conftest import ROOT, random_motion, small_skeleton
from tests.contract import check_refusal, run_main, temporaries
from trainer.prepare import main as prepare_main


@pytest.fixture
def bvh(tmp_path) -> tuple[Path, str]:
    """A valid BVH file and its text."""
    path = tmp_path / "walk.bvh"
    write_bvh(path, random_motion(small_skeleton(), 60))
    return path, path.read_text()


def prepare(tmp_path: Path, text: str | bytes | None, *args: str, name: str = "case.bvh"):
    src = tmp_path / name
    if text is not None:
        src.write_bytes(text.encode() if isinstance(text, str) else text)
    return src, run_main(prepare_main, [src, "-o", tmp_path / "frames.npz", "-q", *args])


def refused(result, tmp_path: Path, *culprits: str, outputs=("frames.npz",)) -> str:
    return check_refusal(result, "reproduction", culprits, [tmp_path / o for o in outputs], tmp_path)


# ---- trainer.prepare ----------------------------------------------------------------------------------------

def test_duplicate_joint_names_are_named_with_their_lines(tmp_path, bvh):
    text = bvh[1].replace("JOINT Spine", "JOINT Head", 1)
    _, result = prepare(tmp_path, text)
    line = refused(result, tmp_path, "case.bvh")
    assert "'Head' again (first on line" in line and "joint names must be unique" in line


@pytest.mark.parametrize("frame_time", ["1e9", "1e308"])
def test_absurd_frame_times_are_refused(tmp_path, bvh, frame_time):
    text = "\n".join(f"Frame Time: {frame_time}" if ln.startswith("Frame Time") else ln
                     for ln in bvh[1].splitlines())
    _, result = prepare(tmp_path, text)
    assert "expected a Frame Time from 0.001 to 10 seconds" in refused(result, tmp_path, "case.bvh:")


@pytest.mark.parametrize("fps", ["inf", "1e7"])
def test_absurd_target_fps_is_refused(tmp_path, bvh, fps):
    _, result = prepare(tmp_path, bvh[1], "--fps", fps)
    assert "--fps must be a number in [1, 1000]" in refused(result, tmp_path, "--fps")


def test_3000_nested_joints_are_refused_without_recursion_error(tmp_path):
    lines = ["HIERARCHY", "ROOT j0", "{", "OFFSET 0 0 0", "CHANNELS 3 Zrotation Xrotation Yrotation"]
    for i in range(1, 3000):
        lines += [f"JOINT j{i}", "{", "OFFSET 0 0.01 0", "CHANNELS 3 Zrotation Xrotation Yrotation"]
    lines += ["End Site", "{", "OFFSET 0 0.01 0", "}"] + ["}"] * 3000
    lines += ["MOTION", "Frames: 2", "Frame Time: 0.0333333"] + [" ".join(["0"] * 9000)] * 2
    _, result = prepare(tmp_path, "\n".join(lines))
    assert "nested at most 256 levels deep" in refused(result, tmp_path, "case.bvh:")


def test_1e300_in_a_motion_row_or_an_offset_is_refused(tmp_path, bvh):
    lines = bvh[1].splitlines()
    row = lines.index("MOTION") + 3
    values = lines[row].split()
    values[4] = "1e300"
    _, result = prepare(tmp_path, "\n".join(lines[:row] + [" ".join(values)] + lines[row + 1:]))
    assert f"case.bvh:{row + 1}: expected channel values within +-1e+06" in refused(result, tmp_path, "case.bvh")
    _, result = prepare(tmp_path, bvh[1].replace("OFFSET 0.000000 0.250000", "OFFSET 1e300 0.250000", 1))
    assert "expected OFFSET values within +-1e+06" in refused(result, tmp_path, "case.bvh:")


def test_scale_1e300_is_refused(tmp_path, bvh):
    _, result = prepare(tmp_path, bvh[1], "--scale", "1e300")
    assert "expected metres per file unit from 1e-06 to 1000" in refused(result, tmp_path, "--scale")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path, bvh):
    _, result = prepare(tmp_path, b"\xef\xbb\xbf" + bvh[1].encode())
    assert result.code == 0, result.err
    with np.load(tmp_path / "frames.npz") as f:
        with_bom = f["data"].copy()
    motion = read_bvh(bvh[0])
    bom = read_bvh(tmp_path / "case.bvh")
    assert np.array_equal(bom.rotations, motion.rotations) and len(with_bom) == motion.n_frames


def test_a_fifo_is_named_as_one(tmp_path):
    fifo = tmp_path / "pipe.bvh"
    os.mkfifo(fifo)
    _, result = prepare(tmp_path, None, name="pipe.bvh")
    assert "found a FIFO, socket or device" in refused(result, tmp_path, "pipe.bvh")


@pytest.mark.parametrize("preview,says", [("p.txt", "unknown --preview format '.txt'"),
                                          ("folder", "is a folder"), ("gone/p.png", "does not exist")])
def test_prepare_checks_preview_before_writing(tmp_path, bvh, preview, says):
    (tmp_path / "folder").mkdir()
    _, result = prepare(tmp_path, bvh[1], "--preview", str(tmp_path / preview))
    assert says in refused(result, tmp_path, preview.split("/")[0])


@pytest.mark.parametrize("preview,says", [("p.svg", "unknown --preview format '.svg'"),
                                          ("folder", "is a folder"), ("gone/p.gif", "does not exist")])
def test_bake_checks_preview_before_writing(tmp_path, preview, says):
    (tmp_path / "folder").mkdir()
    result = run_main(bake_main, [tmp_path / "clip.npz", "--preview", tmp_path / preview, "-q"])
    assert says in refused(result, tmp_path, preview.split("/")[0], outputs=("clip.npz",))


def run_read_only(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """A CLI run whose folder is read-only: chmod for a normal user, a read-only bind mount for root."""
    cmd = [sys.executable, "-m", *args]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        finally:
            folder.chmod(0o755)
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without unshare: no way to make a read-only folder")
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(folder), *cmd], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_read_only_output_folder_is_named_before_work(tmp_path, bvh):
    folder = tmp_path / "locked"
    folder.mkdir()
    done = run_read_only(folder, "runtime.bake", str(folder / "clip.npz"), "--frames", "5")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"cannot write into {folder}" in done.stderr and "baked" not in done.stdout
    done = run_read_only(folder, "trainer.prepare", str(bvh[0]), "-o", str(folder / "frames.npz"))
    assert done.returncode == 2 and f"cannot write into {folder}" in done.stderr, done.stderr
    assert not list(folder.iterdir())


def test_an_output_path_that_is_a_folder(tmp_path, bvh):
    (tmp_path / "clip.npz").mkdir()
    result = run_main(bake_main, [tmp_path / "clip.npz", "-q"])
    assert "is a folder; give the output a file name" in refused(result, tmp_path, "clip.npz", outputs=())
    (tmp_path / "frames.npz").mkdir()
    _, result = prepare(tmp_path, bvh[1])
    assert "is a folder" in refused(result, tmp_path, "frames.npz", outputs=())


def test_missing_extras_are_named_before_work(tmp_path, monkeypatch):
    """The real check is tests/test_wheel.py (a venv without them); here the import system is told they are gone."""
    for module in ("pygltflib", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)  # what find_spec and import see for a missing package
    result = run_main(bake_main, [tmp_path / "clip.glb", "-q"])
    assert "pip install 'motionvae-toolkit[gltf]'" in refused(result, tmp_path, "pygltflib", outputs=("clip.glb",))
    result = run_main(bake_main, [tmp_path / "clip.npz", "--preview", tmp_path / "c.gif", "-q"])
    assert "[preview]" in refused(result, tmp_path, "matplotlib", outputs=("clip.npz", "c.gif"))
    monkeypatch.setitem(sys.modules, "tqdm", None)
    result = run_main(bake_main, [tmp_path / "clip.npz", "--frames", "3"])  # no bar, same bake
    assert result.code == 0 and (tmp_path / "clip.npz").is_file(), result.err


# ---- runtime.bake ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,says", [
    ('{"task": "path", "points": [[0, 0], [5, 0]], "closed": "false"}', "field 'closed' must be true or false"),
    ('{"task": "target", "targets": [[1, 2]], "radius_m": [1]}', "field 'radius_m' must be a number"),
    ('[[0, 1e300], [1, 2]]', "coordinates (m) must be from -10000 to 10000"),
    ('{"task": "target", "targets": [[1, 2]], "radius_m": -1}', "field 'radius_m' must be a number in (0, 100]"),
    ("42", "expected a JSON list of rows or an object with 'task', got a number"),
    (json.dumps([[0, 0], [5, 0]]).encode("utf-16"), "expected UTF-8 JSON text"),
])
def test_control_json_cases(tmp_path, content, says):
    control = tmp_path / "control.json"
    control.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run_main(bake_main, [tmp_path / "clip.npz", "--control", control, "-q", "--frames", "3"])
    assert says in refused(result, tmp_path, "control.json", outputs=("clip.npz",))


@pytest.mark.parametrize("args,says", [(["--frames", "2000000000"], "--frames 2000000000 x --characters 1 would need"),
                                       (["--characters", "100000000"], "--characters 100000000 would need"),
                                       (["--seed", "-1"], "--seed must be 0 or more")])
def test_sizes_and_seed_are_checked_before_allocating(tmp_path, args, says):
    result = run_main(bake_main, [tmp_path / "clip.npz", "-q", *args])
    assert says in refused(result, tmp_path, args[0], outputs=("clip.npz",))


def test_model_json_corruptions_of_the_report(tmp_path):
    """The issue's list in one place (tests/test_fuzz_model.py runs these and many more)."""
    meta = json.loads((DEFAULT_MODEL / "model.json").read_text())
    edits = {"fps": ("abc", None, [30], float("nan")), "schema_version": (0, -1, True),
             "skeleton": (None, "s", []), "layout": (None, "s", [])}
    cases = [({**meta, key: v}, f"field '{key}'") for key, values in edits.items() for v in values]
    cases += [({**meta, "policies": ["joystick"]}, "field 'policies' must be a JSON object"),
              ({**meta, "files": {**meta["files"], "decoder.onnx": "x"}}, "field 'files.decoder.onnx'")]
    nan_shift = json.loads(json.dumps(meta))
    nan_shift["normalisation"]["shift"][0] = float("nan")
    cases.append((nan_shift, "field 'normalisation.shift' must be finite numbers, got nan at index [0]"))
    for n, (content, says) in enumerate(cases):
        folder = tmp_path / f"m{n}"
        shutil.copytree(DEFAULT_MODEL, folder)
        (folder / "model.json").write_text(json.dumps(content))
        result = run_main(bake_main, [tmp_path / "clip.npz", "--model", folder, "-q"])
        assert says in refused(result, tmp_path, str(folder), outputs=("clip.npz",)), says
        shutil.rmtree(folder)


def test_a_decoder_copied_over_a_policy_is_refused_at_load(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder)
    shutil.copy(folder / "decoder.onnx", folder / "policy-joystick.onnx")
    meta = json.loads((folder / "model.json").read_text())
    meta["files"]["policy-joystick.onnx"]["sha256"] = meta["files"]["decoder.onnx"]["sha256"]
    (folder / "model.json").write_text(json.dumps(meta))
    result = run_main(bake_main, [tmp_path / "clip.npz", "--model", folder, "-q"])
    assert "policy-joystick.onnx: has no input 'observation'" in refused(result, tmp_path, "policy-joystick.onnx",
                                                                         outputs=("clip.npz",))


# ---- runtime.tokens decode -----------------------------------------------------------------------------------

def test_corrupt_token_files_are_named(tmp_path):
    from tests.test_fuzz_cli import npz_bytes

    good = tmp_path / "good.tok.npz"
    save_tokens(good, Tokens(np.array([1, 2]), 8, 4, 30.0, np.zeros(3), "abc"), "x")
    with np.load(good) as f:
        fields = {k: f[k] for k in f.files}
    (tmp_path / "empty.tok.npz").write_bytes(b"")
    (tmp_path / "cut.tok.npz").write_bytes(good.read_bytes()[:200])
    npz_bytes(tmp_path / "noversion.tok.npz", **{k: v for k, v in fields.items() if k != "version"})
    npz_bytes(tmp_path / "strversion.tok.npz", **{**fields, "version": np.array("one")})
    npz_bytes(tmp_path / "nanfps.tok.npz", **{**fields, "fps": np.float64(np.nan)})
    from runtime.tokenizer import TokenError, load_tokens

    for name, says in (("empty", "not a readable .npz file"), ("cut", "not a readable .npz file"),
                       ("noversion", "no 'version'"), ("strversion", "'version' must be one integer"),
                       ("nanfps", "'fps' must be in (0, 1000]")):
        with pytest.raises(TokenError) as info:
            load_tokens(tmp_path / f"{name}.tok.npz")
        assert says in str(info.value) and f"{name}.tok.npz" in str(info.value), info.value


# ---- temporary files ---------------------------------------------------------------------------------------

def big_bake(out: Path) -> subprocess.Popen:
    """A bake whose .npz takes a while to write (600 frames x 64 characters, ~80 MB)."""
    return subprocess.Popen([sys.executable, "-m", "runtime.bake", str(out), "--frames", "600", "--characters",
                             "64", "-q"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_temporary(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = temporaries(folder)
        if found and any(p.stat().st_size > 0 for p in found):
            return found
        time.sleep(0.002)
    return []


@pytest.mark.slow
def test_a_bake_killed_while_writing_leaves_no_temporary_behind(tmp_path):
    out = tmp_path / "crowd.npz"
    proc = big_bake(out)
    found = wait_for_temporary(tmp_path, proc)
    if not found:
        proc.kill()
        pytest.skip("the bake finished writing before a temporary file was seen")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():  # on a loaded machine the rename can land between seeing the temporary and the kill
        pytest.skip("the bake finished writing before it was killed")
    assert temporaries(tmp_path), "SIGKILL cannot clean up: the file stays until the next write"
    # The next write of the same file sweeps what the dead writer left.
    assert run_main(bake_main, [out, "--frames", "3", "-q"]).code == 0
    assert out.is_file() and not temporaries(tmp_path)
    # SIGTERM (what `kill` and service managers send) cleans up at once.
    out.unlink()
    proc = big_bake(out)
    if wait_for_temporary(tmp_path, proc):
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert not temporaries(tmp_path)
        assert (code, out.exists()) in ((128 + signal.SIGTERM, False), (0, True)), code  # (0, True): it had finished
    else:
        proc.wait()


def test_stale_temporaries_of_dead_writers_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".clip.npz.{pid}.abc123.tmp.npz"
    stale.write_bytes(b"half a clip")
    live = tmp_path / f".clip.npz.{os.getpid()}.def456.tmp.npz"  # a writer that is still running: kept
    live.write_bytes(b"being written")
    other = tmp_path / f".other.npz.{pid}.abc123.tmp.npz"  # another file's: not this write's business
    other.write_bytes(b"x")
    with atomic_path(tmp_path / "clip.npz", suffix=".npz") as tmp:
        tmp.write_bytes(b"new")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "clip.npz").read_bytes() == b"new"


# ---- the bridge --------------------------------------------------------------------------------------------

def test_bridge_control_accepts_the_path_task_hello_lists(tmp_path):
    model = load_model(None)

    async def body():
        from tests.test_godot_server import Peer

        with BackgroundServer(Bridge(model, BridgeConfig(lockstep=True))) as server:
            peer = await Peer.open(server.url)
            assert "path" in peer.hello["tasks"]
            await peer.ask('{"type": "spawn", "start": 0, "position": [0, 0]}')
            ok = await peer.ask(P.encode_client_message("control", seq=2, task="path",
                                                        path=[[0, 0], [0, 10], [0, 20]], closed=False))
            assert (ok["type"], ok["task"]) == ("ok", "path")
            bad = await peer.ask('{"type": "control", "task": "path", "path": [[0, 0], [0.01, 0]]}')
            assert bad["code"] == "bad_message" and "at least" in bad["message"]
            bad = await peer.ask('{"type": "control", "task": "path", "path": [[0, 0]]}')
            assert bad["code"] == "bad_message"
            frames = []
            for _ in range(int(4 * model.fps)):
                await peer.ws.send('{"type": "step"}')
                frames.append(await peer.frame())
            await peer.close()
        walked = np.stack([f.root_position[0] for f in frames])
        assert walked[-1, 2] > 3.0 and np.abs(walked[:, 0]).max() < 0.5, f"follows the path along +Z: {walked[-1]}"

    asyncio.run(asyncio.wait_for(body(), 120))
