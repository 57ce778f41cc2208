"""Real Godot 4, headless, running the addon unchanged against the bridge server.

Godot comes from scripts/godot.sh (a Debian sid chroot cached outside the checkout); these tests skip
with the reason when it cannot be installed. The test project is the demo project plus the drivers in
godot_bridge/godot_tests/, copied to a temporary folder so Godot's import cache stays out of the checkout.
"""
from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from godot_bridge import protocol as P
from godot_bridge.background import BackgroundServer
from godot_bridge.bridge import Bridge, BridgeConfig, Client
from runtime.bvh import read_bvh
from runtime.contacts import foot_floor, planted_speed
from runtime.model import load_model
from runtime.rotations import quat_to_matrix
from tests.rigs import LEGS, RigSpec, angle_deg, anonymous, rigs

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = ROOT / "godot_bridge"
GODOT_SH = ROOT / "scripts" / "godot.sh"
INSTALL_TIMEOUT_S = 900  # a first install debootstraps Debian sid: about 2 minutes here
FRAMES = 300
BAKE_FRAMES = 60


@pytest.fixture(scope="module")
def godot():
    """A function running Godot 4 headless on a project folder: godot(project, *args) -> CompletedProcess."""
    try:
        setup = subprocess.run(["bash", str(GODOT_SH)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"Godot 4 could not be installed within {INSTALL_TIMEOUT_S} s (bash scripts/godot.sh)")
    if setup.returncode != 0:
        reason = (setup.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"Godot 4 is not available (bash scripts/godot.sh: {reason})")

    def run(project: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(GODOT_SH), "run", str(project), *args], capture_output=True, text=True,
                              timeout=timeout)
    return run


@pytest.fixture(scope="module")
def project(godot, tmp_path_factory) -> tuple[Path, str]:
    """The demo project (addon included) plus the test drivers, imported once with the editor."""
    root = tmp_path_factory.mktemp("godot") / "project"
    shutil.copytree(BRIDGE / "demo", root, symlinks=False)  # the demo's addons/ link becomes a real copy
    shutil.copytree(BRIDGE / "godot_tests", root / "godot_tests")
    editor = godot(root, "--editor", "--quit", timeout=300)
    assert editor.returncode == 0, editor.stderr[-2000:]
    return root, editor.stdout + editor.stderr


def script_errors(output: str) -> list[str]:
    """Lines where Godot reports a script or engine error."""
    return [ln for ln in output.splitlines() if "SCRIPT ERROR" in ln or ln.startswith("ERROR:")]


def test_editor_loads_the_plugin_without_errors(project):
    _, output = project
    assert "Motion VAE bridge: addon enabled (protocol 1)" in output
    assert not script_errors(output), output[-3000:]


def test_every_gd_file_passes_check_only(godot, project):
    root, _ = project
    scripts = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.gd") if ".godot" not in p.parts)
    assert len(scripts) >= 14
    failures = {}
    for script in scripts:
        proc = godot(root, "--check-only", "-s", f"res://{script}", timeout=60)
        if proc.returncode != 0 or script_errors(proc.stdout + proc.stderr):
            failures[script] = (proc.stdout + proc.stderr)[-1000:]
    assert not failures, failures


@pytest.fixture(scope="module")
def e2e(godot, project, model_dir):
    """Godot's report of 300 lockstep frames applied to two skeletons, and every frame the server sent it."""
    root, _ = project
    model = load_model(model_dir)
    sent: list[bytes] = []
    offer = Client.offer

    def recording_offer(self: Client, payload: bytes) -> None:
        sent.append(payload)
        offer(self, payload)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Client, "offer", recording_offer)
        with BackgroundServer(Bridge(model, BridgeConfig(max_clients=2, characters_per_client=2,
                                                         lockstep=True))) as server:
            proc = godot(root, "-s", "res://godot_tests/e2e.gd", "--", "--url", server.url, "--out", "res://e2e.json",
                         "--frames", str(FRAMES), "--bake-frames", str(BAKE_FRAMES), "--library", "res://baked.tres")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and not script_errors(output), output[-3000:]
    result = json.loads((root / "e2e.json").read_text())
    assert result["errors"] == [], result["errors"]
    frames = [P.decode_frame(payload, model.skeleton.n_joints) for payload in sent]
    return model, result, {f.frame: f for f in frames}, frames


def sign_free_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference between quaternions, q and -q counting as the same rotation."""
    return float(np.minimum(np.abs(a - b).max(axis=-1), np.abs(a + b).max(axis=-1)).max())


def test_godot_applies_300_frames_exactly_as_the_server_sent_them(e2e):
    model, result, by_number, _ = e2e
    rows = result["frames"]
    assert len(rows) >= FRAMES and result["bones"] == list(model.skeleton.names)
    numbers = [r["frame"] for r in rows]
    assert numbers == list(range(numbers[0], numbers[0] + len(rows))), "every frame applied, none skipped"
    sent = [by_number[n] for n in numbers]
    assert all(f.ids.tolist() == [0] for f in sent)
    server_q = np.stack([f.local_rotations[0] for f in sent])
    server_root = np.stack([f.root_position[0] for f in sent])
    # The handshake-built skeleton (identity rest) carries the streamed local rotations as they are.
    assert sign_free_error(np.array([r["rotations"] for r in rows]), server_q) < 1e-5
    assert np.abs(np.array([r["root"] for r in rows]) - server_root).max() < 1e-5
    # The rig with other rest rotations, through rest-pose compensation, turns every bone in the world
    # exactly as the model's forward kinematics does, and puts every joint in the same place.
    world_pos, world_rot = model.skeleton.forward_kinematics(server_q.astype(np.float64), server_root)
    assert sign_free_error(np.array([r["global_rotations"] for r in rows]), world_rot) < 1e-4
    assert np.abs(np.array([r["positions"] for r in rows]) - world_pos).max() < 1e-4
    assert np.ptp(server_q, axis=0).max() > 1e-3, "the streamed pose changes over time"
    trips = np.array(result["round_trip_ms"])
    print(f"Godot lockstep round trip (step sent -> frame decoded): p50 {np.percentile(trips, 50):.2f} ms, "
          f"p99 {np.percentile(trips, 99):.2f} ms over {len(trips)} steps")
    assert len(trips) >= FRAMES and np.percentile(trips, 50) < 100


def test_baked_library_reloads_with_a_track_per_bone_and_the_right_length(godot, project, e2e):
    root, _ = project
    model, result, by_number, _ = e2e
    assert result["baked"] == "res://baked.tres"
    sent = [by_number[result["baked_first"] + k] for k in range(BAKE_FRAMES)]
    proc = godot(root, "-s", "res://godot_tests/reload.gd", "--", "--library", "res://baked.tres",
                 "--out", "res://reloaded.json")
    assert proc.returncode == 0 and not script_errors(proc.stdout + proc.stderr), proc.stderr[-2000:]
    report = json.loads((root / "reloaded.json").read_text())
    assert list(report["animations"]) == ["motion_vae"]
    anim = report["animations"]["motion_vae"]
    assert abs(anim["length"] - BAKE_FRAMES / model.fps) < 1e-4
    rotation = [t for t in anim["tracks"] if t["type"] == report["rotation_type"]]
    position = [t for t in anim["tracks"] if t["type"] == report["position_type"]]
    names = list(model.skeleton.names)
    assert [t["path"] for t in rotation] == [f"Skeleton3D:{n}" for n in names], "one rotation track per bone"
    assert [t["path"] for t in position] == [f"Skeleton3D:{names[0]}"] and len(anim["tracks"]) == len(names) + 1
    for t in anim["tracks"]:
        times = [k[0] for k in t["keys"]]
        assert np.allclose(times, np.arange(BAKE_FRAMES) / model.fps, atol=1e-5)
    baked_q = np.array([[k[1] for k in t["keys"]] for t in rotation]).transpose(1, 0, 2)
    server_q = np.stack([f.local_rotations[0] for f in sent])
    assert sign_free_error(baked_q, server_q) < 1e-5
    baked_root = np.array([k[1] for k in position[0]["keys"]])
    assert np.abs(baked_root - np.stack([f.root_position[0] for f in sent])).max() < 1e-5


def test_gdscript_decodes_frames_like_protocol_py(godot, project):
    root, _ = project
    rng = np.random.default_rng(3)
    q = rng.normal(size=(3, 6, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    records = P.pack_records(np.array([4, 0, 65535], np.uint32), np.array([1, 0, 1]), rng.normal(size=(3, 3)) * 50,
                             q[:, 0], q)
    good = P.encode_frame(4_000_000_000, 17, records, P.FRAME_FLAG_STEP)
    cases = [(good, 6), (P.encode_frame(1, 0, records[:0]), 6), (good[:10], 6), (b"XXXX" + good[4:], 6),
             (good[:4] + (2).to_bytes(2, "little") + good[6:], 6), (good[:-2], 6), (good, 5)]
    (root / "frames.json").write_text(json.dumps([{"base64": base64.b64encode(d).decode(), "bones": b}
                                                  for d, b in cases]))
    proc = godot(root, "-s", "res://godot_tests/decode.gd", "--", "--in", "res://frames.json",
                 "--out", "res://decoded.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    decoded = json.loads((root / "decoded.json").read_text())
    for (data, bones), row in zip(cases, decoded):
        try:
            expected = P.decode_frame(data, bones)
        except P.ProtocolError:
            assert row["error"] != "", "GDScript refuses what protocol.py refuses"
            continue
        assert row["error"] == ""
        assert (row["frame"], row["ack"], row["flags"]) == (expected.frame, expected.ack, expected.flags)
        chars = row["characters"]
        assert [c["id"] for c in chars] == expected.ids.tolist()
        assert [c["reset"] for c in chars] == [bool(f & P.CHARACTER_FLAG_RESET) for f in expected.character_flags]
        for name in ("root_position", "root_rotation", "local_rotations"):
            got = np.array([c[name] for c in chars], np.float32).reshape(getattr(expected, name).shape)
            assert np.array_equal(got, getattr(expected, name)), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_waits_for_the_server_reconnects_and_streams(godot, project, model_dir):
    root, _ = project
    port = free_port()
    # The demo starts first: its client retries with backoff until the server is up.
    demo = subprocess.Popen(["bash", str(GODOT_SH), "run", str(root), "--", "--url", f"ws://127.0.0.1:{port}/",
                             "--frames", "90"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    server = subprocess.Popen([sys.executable, "-m", "godot_bridge.serve", "--model", str(model_dir),
                               "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        output, _ = demo.communicate(timeout=90)
    finally:
        demo.kill()
        server.terminate()
        server.communicate(timeout=30)
    assert demo.returncode == 0 and not script_errors(output), output[-3000:]
    assert "demo: connection_failed" in output, "the server was not up yet"
    assert f"demo: connected to tiny ({load_model(model_dir).skeleton.n_joints} bones" in output
    assert "demo: 90 frames received" in output
    assert "rig matched as godot" in output, "the demo's humanoid-profile skeleton was bound by the server"


def test_every_client_request_is_a_valid_message_for_the_server(godot, project, model_dir):
    root, _ = project
    with BackgroundServer(Bridge(load_model(model_dir), BridgeConfig(max_clients=1, characters_per_client=2))) as server:
        proc = godot(root, "-s", "res://godot_tests/requests.gd", "--", "--url", server.url,
                     "--out", "res://requests.json")
    assert proc.returncode == 0 and not script_errors(proc.stdout + proc.stderr), proc.stderr[-2000:]
    result = json.loads((root / "requests.json").read_text())
    got = {name: result["replies"][str(seq)] for name, seq in result["calls"]}
    outcome = {name: r.get("code", r["type"]) for name, r in got.items()}
    assert outcome == {"spawn": "ok", "send_joystick": "no_policy", "send_target": "no_policy",
                       "release_control": "ok", "reset_characters": "ok", "set_random_seed": "ok", "pause": "ok",
                       "resume": "ok", "step": "not_lockstep", "request_stats": "stats", "despawn": "ok"}
    assert got["spawn"]["ids"] == [0, 1] and got["despawn"]["ids"] == [1] and got["resume"]["paused"] is False
    # ui_up / a stick pushed forward walks away from the camera; no camera: towards world -Z.
    assert np.allclose(result["sticks"], [[0, -1, 2], [1, 0, 2], [-1, 0, 1], [0, -1, 0]], atol=1e-6)


def test_held_arrow_keys_steer_the_character_through_the_addon(godot, project):
    """ui_right then ui_up held in Godot: MotionVAEInput's joystick commands turn the default model's character."""
    root, _ = project
    model = load_model(None)  # the shipped default model has a joystick policy
    per_phase = 150  # 5 s each: the turn, then 2 s measured
    with BackgroundServer(Bridge(model, BridgeConfig(max_clients=1, characters_per_client=1, lockstep=True))) as server:
        proc = godot(root, "-s", "res://godot_tests/steer.gd", "--", "--url", server.url, "--out", "res://steer.json",
                     "--frames", str(per_phase))
    assert proc.returncode == 0 and not script_errors(proc.stdout + proc.stderr), proc.stderr[-2000:]
    result = json.loads((root / "steer.json").read_text())
    assert result["errors"] == [] and result["phases"] == ["ui_right", "ui_up"]
    wanted = {0: np.array([1.0, 0.0]), 1: np.array([0.0, -1.0])}  # world (x, z): no camera, ui_up is -Z
    last = int(2 * model.fps)
    for phase, direction in wanted.items():
        rows = [r for r in result["frames"] if r["phase"] == phase]
        assert len(rows) == per_phase
        assert not any(r["reset"] for r in rows[phase == 0:]), "no divergence reset after the spawn's first frame"
        root_xz = np.array([r["root"] for r in rows])[:, [0, 2]]
        moved = root_xz[-1] - root_xz[-last]
        speed = np.linalg.norm(moved) / 2.0
        angle = np.degrees(np.arccos(np.clip(moved @ direction / max(np.linalg.norm(moved), 1e-9), -1, 1)))
        print(f"{result['phases'][phase]}: heading {angle:.1f} degrees off the command, {speed:.2f} m/s "
              f"(walk speed 1.4) over the last 2 s")
        assert angle < 30 and 0.7 < speed < 2.1


def test_godot_shows_the_locked_feet_the_server_sends(godot, project):
    """Foot locking (on by default) reaches Godot: its bones put the feet where the runtime held them."""
    root, _ = project
    model = load_model(None)  # the shipped default model: trained, its contacts mean something
    toes = [model.skeleton.index(n) for n in ("LeftToeBase", "RightToeBase")]
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    step = Bridge._step

    def recording_step(self: Bridge, control, frozen):
        poses = step(self, control, frozen)
        seen[poses.frame] = (poses.positions[0].astype(np.float64), self.ctrl.foot_lock.locked[0].copy())
        return poses

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Bridge, "_step", recording_step)
        with BackgroundServer(Bridge(model, BridgeConfig(max_clients=1, characters_per_client=1,
                                                         lockstep=True))) as server:
            proc = godot(root, "-s", "res://godot_tests/e2e.gd", "--", "--url", server.url, "--out", "res://locked.json",
                         "--frames", "150", "--bake-frames", "10", "--library", "res://locked.tres")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and not script_errors(output), output[-3000:]
    rows = json.loads((root / "locked.json").read_text())["frames"]
    numbers = [r["frame"] for r in rows]
    assert len(rows) >= 150 and numbers == list(range(numbers[0], numbers[0] + len(rows)))
    shown = np.array([r["positions"] for r in rows])  # Godot's global bone positions (the re-rested skeleton)
    sent = np.array([seen[n][0] for n in numbers])
    locks = np.array([seen[n][1] for n in numbers])
    assert np.abs(shown - sent).max() < 1e-3, "Godot's joints are not where the runtime put them"
    held = 0
    for leg, toe in enumerate(toes):
        pairs = locks[1:, leg] & locks[:-1, leg]
        runtime_still = np.linalg.norm(np.diff(sent[:, toe, [0, 2]], axis=0), axis=-1) < 1e-4
        godot_moves = np.linalg.norm(np.diff(shown[:, toe, [0, 2]], axis=0), axis=-1)
        assert godot_moves[pairs & runtime_still].max() < 1e-3, "a locked toe moved in Godot"
        held += int((pairs & runtime_still).sum())
    assert held > 60, f"only {held} locked frames: the lock did not reach Godot"


RIG_FRAMES = 120
CMU_131 = ROOT.parent / "shared" / "mocap" / "cmu_permissive_extra" / "131_01.bvh"


def _godot_rigs(skeleton) -> tuple[list[dict], dict[str, RigSpec]]:
    """rigs.gd's input: every convention of tests/rigs.py (rolled ones with random bone axes), the Godot rig once
    more with other bone names and a humanoid BoneMap, Godot's own profile skeleton, and CMU 131 when present."""
    specs = {s.name: s for s in rigs(skeleton)}
    # Godot's bone names cannot hold ':' (its importer writes mixamorig_Hips); the preset matches either spelling.
    mixamo = specs["mixamo"]
    mixamo.names = [n.replace(":", "_") for n in mixamo.names]
    mixamo.expected = {j: b.replace(":", "_") for j, b in mixamo.expected.items()}
    out = []
    for spec in specs.values():
        rng = np.random.default_rng(spec.roll_seed or 0)
        q = rng.normal(size=(len(spec.names), 4)) if spec.roll_seed else np.tile([0, 0, 0, 1.0], (len(spec.names), 1))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        out.append({"name": spec.name, "bones": spec.names, "parents": spec.parents,
                    "heads": spec.head_array.tolist(), "rests": q.tolist()})
    godot = anonymous(specs["godot"])
    godot.name, godot.preset = "godot-bonemap", "godot"
    specs[godot.name] = godot
    out.append({**out[[r["name"] for r in out].index("godot")], "name": godot.name, "bones": godot.names,
                "bone_map": {a: b for a, b in zip(specs["godot"].names, godot.names)}})
    out.append({"name": "profile", "profile": True})
    if CMU_131.exists():
        cmu = read_bvh(CMU_131).skeleton
        out.append({"name": "cmu131", "bones": list(cmu.names), "parents": cmu.parents.tolist(),
                    "heads": (cmu.rest_positions() + cmu.offsets[0]).tolist(),
                    "rests": np.tile([0, 0, 0, 1.0], (cmu.n_joints, 1)).tolist()})
    return out, specs


def _run_rigs(godot, project, driver: str, names: list[str] | None = None) -> tuple:
    """A rig driver's report on the rigs of _godot_rigs (those named, else all) over RIG_FRAMES frames, with the
    model and the reference frames' world positions and rotations."""
    root, _ = project
    model = load_model(ROOT / "runtime" / "assets" / "default")
    rig_list, specs = _godot_rigs(model.skeleton)
    rig_list = [r for r in rig_list if names is None or r["name"] in names]
    (root / f"{driver}_in.json").write_text(json.dumps({"rigs": rig_list}))
    bridge = Bridge(model, BridgeConfig(max_clients=len(rig_list) + 1, characters_per_client=1, lockstep=True))
    with BackgroundServer(bridge) as server:
        proc = godot(root, "-s", f"res://godot_tests/{driver}.gd", "--", "--url", server.url,
                     "--rigs", f"res://{driver}_in.json", "--out", f"res://{driver}_out.json",
                     "--frames", str(RIG_FRAMES), timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and not script_errors(output), output[-3000:]
    result = json.loads((root / f"{driver}_out.json").read_text())
    assert result["errors"] == [], result["errors"]
    ref = result["reference"]
    rot = quat_to_matrix(np.array([r["rotations"] for r in ref], np.float64))
    root_pos = np.array([r["root"] for r in ref], np.float64)
    positions, world = model.skeleton.forward_kinematics_matrices(rot, root_pos)
    return model, specs, result, positions, world


@pytest.fixture(scope="module")
def godot_rigs(godot, project):
    """rigs.gd's report: each rig's bind reply and bone poses, and the reference frames, over RIG_FRAMES frames."""
    return _run_rigs(godot, project, "rigs")


def _rig_frames(result: dict, name: str, frames: list[int]) -> tuple[list[str], dict, np.ndarray, np.ndarray]:
    """A rig's bone names, bind reply, bones' turns away from rest (model axes) and heads over frames."""
    rig = result["rigs"][name]
    by_frame = {f["frame"]: f for f in rig["frames"]}
    names = [b["name"] for b in rig["bones"]]
    rest = quat_to_matrix(np.array([b["rest"] for b in rig["bones"]], np.float64))
    turn = quat_to_matrix(np.array([by_frame[f]["rotations"] for f in frames], np.float64)) @ np.swapaxes(rest, -1, -2)
    return names, rig["reply"], turn, np.array([by_frame[f]["heads"] for f in frames], np.float64)


def _feet(model, positions: np.ndarray, heads: np.ndarray, toes: list[int], scale: float) -> tuple[float, float, float]:
    """Lowest rig toe (m), planted sliding of the model's toes and of the rig's at the model's size (m/s)."""
    model_toes = positions[:, [model.skeleton.index("LeftToeBase"), model.skeleton.index("RightToeBase")]]
    slides = []
    for xyz in (model_toes, heads[:, toes] / scale):
        speed, planted = planted_speed(xyz, model.fps, foot_floor(xyz[..., 1]))
        slides.append(speed[planted].mean())
    return heads[:, toes, 1].min(), slides[0], slides[1]


def _assert_rig_follows_the_model(rigs_report: tuple, name: str) -> None:
    """The rig's mapped bones turn in the world as the model's (legs of other proportions: their feet instead),
    its toes stay on the ground and slide no more than the model's."""
    model, specs, result, positions, world = rigs_report
    spec, sk = specs[name], model.skeleton
    all_frames = [r["frame"] for r in result["reference"]]
    shown = {f["frame"] for f in result["rigs"][name]["frames"]}
    keep = np.array([f in shown for f in all_frames])
    frames = [f for f in all_frames if f in shown]
    assert len(frames) >= RIG_FRAMES - 2, f"{len(frames)} of the rig's frames match reference frames"
    positions, world = positions[keep], world[keep]
    names, reply, turn, heads = _rig_frames(result, name, frames)
    assert reply["preset"] == spec.preset
    assert {sk.names[j]: names[int(b)] for j, b in enumerate(reply["bones"]) if b >= 0} == spec.expected
    check = [j for j in spec.expected if spec.leg_scale == 1.0 or j not in LEGS]
    bones = [names.index(spec.expected[j]) for j in check]
    joints = np.array([sk.index(j) for j in check])
    error = angle_deg(turn[:, bones] @ spec.align_array(sk, joints), world[:, joints])
    print(f"{name}: mapped bones within {error.max():.5f} deg of the model's over {len(frames)} frames")
    assert error.max() < 0.01, f"{check[error.max(0).argmax()]} turns {error.max():.4f} deg off the model's"
    toes = [names.index(spec.expected[t]) for t in ("LeftToeBase", "RightToeBase")]
    low, model_slide, rig_slide = _feet(model, positions, heads, toes, reply["root_scale"])
    print(f"{name}: lowest toe {low * 1000:.2f} mm, planted toes slide {rig_slide:.4f} m/s (model {model_slide:.4f})")
    assert low > -0.005, f"toes {-low * 1000:.1f} mm under the ground"
    assert rig_slide <= 1.1 * model_slide, f"planted toes slide {rig_slide:.4f} m/s against {model_slide:.4f}"


@pytest.mark.parametrize("name", ["mixamo", "rigify", "unreal", "godot", "cmu-bvh", "cmu-asf", "godot-bonemap"])
def test_godot_rigs_of_every_convention_turn_as_the_model_and_keep_their_feet(godot_rigs, name):
    _assert_rig_follows_the_model(godot_rigs, name)


BAKED_RIGS = ["mixamo", "godot", "godot-bonemap"]


@pytest.fixture(scope="module")
def baked_rigs(godot, project):
    """bake_rigs.gd's report: BAKED_RIGS baked by MotionVAEBaker, each library reloaded and played on its rig."""
    return _run_rigs(godot, project, "bake_rigs", BAKED_RIGS)


@pytest.mark.parametrize("name", BAKED_RIGS)
def test_libraries_baked_for_other_rigs_turn_as_the_model_and_keep_their_feet(baked_rigs, name):
    _assert_rig_follows_the_model(baked_rigs, name)


@pytest.mark.parametrize("name", ["profile", "cmu131"])
def test_godot_profile_and_cmu_skeletons_point_limbs_as_the_model(godot_rigs, name):
    model, specs, result, positions, world = godot_rigs
    if name not in result["rigs"]:
        pytest.skip(f"{CMU_131} is not here (the CMU mocap in ../shared)")
    sk = model.skeleton
    frames = [r["frame"] for r in result["reference"]]
    names, reply, turn, heads = _rig_frames(result, name, frames)
    bone = {sk.names[j]: int(b) for j, b in enumerate(reply["bones"]) if b >= 0}
    assert reply["unmatched_joints"] == [] and len(bone) == sk.n_joints
    assert (names[bone["LeftShoulder"]], names[bone["LeftArm"]]) == {
        "profile": ("LeftShoulder", "LeftUpperArm"), "cmu131": ("LeftCollar", "LeftShoulder")}[name]
    for joint, child in (("LeftShoulder", "LeftArm"), ("LeftArm", "LeftForeArm"), ("RightForeArm", "RightHand"),
                         ("Spine1", "Spine2"), ("Neck", "Head")):
        rig_dir = heads[:, bone[child]] - heads[:, bone[joint]]
        model_dir = positions[:, sk.index(child)] - positions[:, sk.index(joint)]
        cos = np.sum(rig_dir * model_dir, -1) / np.linalg.norm(rig_dir, axis=-1) / np.linalg.norm(model_dir, axis=-1)
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 0.01, joint
    low, model_slide, rig_slide = _feet(model, positions, heads, [bone["LeftToeBase"], bone["RightToeBase"]],
                                        reply["root_scale"])
    assert low > -0.005, f"toes {-low * 1000:.1f} mm under the ground"
    assert rig_slide <= 1.1 * model_slide, f"planted toes slide {rig_slide:.4f} m/s against {model_slide:.4f}"
