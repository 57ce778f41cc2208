"""The bridge server on real websocket connections on 127.0.0.1: streaming, faults, tokens, cleanup, the CLI."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from godot_bridge import protocol as P
from godot_bridge.background import BackgroundServer
from godot_bridge.bridge import Bridge, BridgeConfig, Client
from runtime.model import load_model

from .test_protocol import HOSTILE, section, table

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 10.0


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


def start(model, token: str | None = None, **config) -> BackgroundServer:
    """A server on a free loopback port with the given BridgeConfig fields (started by `with`)."""
    return BackgroundServer(Bridge(model, BridgeConfig(**config)), token=token)


class Peer:
    """A test client that keeps text replies and binary frames apart."""

    def __init__(self, ws: ClientConnection, hello: dict) -> None:
        self.ws = ws
        self.hello = hello
        self.bones = len(hello["skeleton"]["names"])
        self.frames: list[P.Frame] = []
        self.replies: list[dict] = []

    @classmethod
    async def open(cls, url: str, **kwargs) -> "Peer":
        ws = await connect(url, **kwargs)
        return cls(ws, json.loads(await asyncio.wait_for(ws.recv(), WAIT_S)))

    async def _next(self) -> None:
        message = await asyncio.wait_for(self.ws.recv(), WAIT_S)
        if isinstance(message, bytes):
            self.frames.append(P.decode_frame(message, self.bones))
        else:
            self.replies.append(P.decode_server_message(message))

    async def reply(self) -> dict:
        """The next text message (frames arriving meanwhile are kept)."""
        n = len(self.replies)
        while len(self.replies) == n:
            await self._next()
        return self.replies[-1]

    async def ask(self, text: str) -> dict:
        await self.ws.send(text)
        return await self.reply()

    async def frame(self) -> P.Frame:
        """The next binary frame (text replies arriving meanwhile are kept)."""
        n = len(self.frames)
        while len(self.frames) == n:
            await self._next()
        return self.frames[-1]

    async def close(self) -> None:
        await self.ws.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_handshake_spawn_and_streamed_frames(model):
    async def body():
        with start(model, max_clients=2, characters_per_client=3) as server:
            peer = await Peer.open(server.url)
            hello = peer.hello
            assert (hello["type"], hello["protocol"], hello["characters"]) == ("hello", 1, 3)
            assert hello["skeleton"]["names"] == list(model.skeleton.names)
            assert np.allclose(hello["skeleton"]["offsets"], model.skeleton.offsets)
            assert hello["fps"] == model.fps and hello["start_frames"] == len(model.start_frames)
            assert hello["limits"] == {"max_clients": 2, "characters_per_client": 3, "max_message_bytes": 65536}
            ok = await peer.ask(P.encode_client_message("spawn", seq=4, count=2))
            assert ok == {"type": "ok", "request": "spawn", "seq": 4, "ids": [0, 1]}
            first = await peer.frame()
            t0 = time.perf_counter()
            frames = [await peer.frame() for _ in range(15)]
            elapsed = time.perf_counter() - t0
            await peer.close()
        assert first.ids.tolist() == [0, 1] and first.ack == 4
        assert first.character_flags.tolist() == [P.CHARACTER_FLAG_RESET] * 2, "a spawn is flagged as a reset"
        numbers = [f.frame for f in [first, *frames]]
        assert numbers == list(range(numbers[0], numbers[0] + 16))
        assert 15 / model.fps * 0.7 < elapsed < 15 / model.fps * 3, "frames are paced at the model's fps"
        q = np.stack([f.local_rotations for f in frames])
        assert np.allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-4)
        assert np.allclose(q[..., 0, :], np.stack([f.root_rotation for f in frames]))
        # Characters spawn side by side, 2 m apart along X, centred on the client's slots.
        assert abs(first.root_position[1, 0] - first.root_position[0, 0] - 2.0) < 0.5
    run(body())


def test_stats_reply_matches_protocol_md(model):
    async def body():
        with start(model) as server:
            peer = await Peer.open(server.url)
            stats = await peer.ask(P.encode_client_message("stats", seq=1))
            await peer.close()
        assert [r["field"] for r in table(section("### stats", section("## Server messages")))] == list(stats)
        assert set(stats["step_ms"]) == {"mean", "p50", "p99", "max"}
    run(body())


def test_spawn_limits_ids_and_missing_policy_are_refused(model):
    async def body():
        with start(model, characters_per_client=2) as server:
            peer = await Peer.open(server.url)
            assert (await peer.ask('{"type": "spawn", "count": 3}'))["code"] == "no_free_slot"
            assert (await peer.ask('{"type": "spawn", "start": 999}'))["code"] == "bad_message"
            assert (await peer.ask('{"type": "spawn"}'))["ids"] == [0]
            assert (await peer.ask('{"type": "despawn", "ids": [1]}'))["code"] == "unknown_character"
            assert (await peer.ask('{"type": "reset", "ids": [0], "start": 0}'))["ids"] == [0]
            refused = await peer.ask('{"type": "control", "task": "joystick", "direction": [1, 0], "speed": 1, "seq": 3}')
            assert (refused["code"], refused["seq"]) == ("no_policy", 3) and "joystick" in refused["message"]
            assert (await peer.ask('{"type": "control", "task": "none"}'))["task"] == "none"
            assert (await peer.ask('{"type": "step"}'))["code"] == "not_lockstep"
            assert (await peer.ask('{"type": "despawn"}'))["ids"] == [0]
            assert (await peer.ask('{"type": "spawn", "count": 2}'))["ids"] == [0, 1]
            await peer.close()
    run(body())


def test_joystick_control_turns_the_character():
    model = load_model(None)  # the shipped default model carries a joystick policy
    assert "joystick" in model.policies

    async def body():
        with start(model, lockstep=True) as server:
            peer = await Peer.open(server.url)
            await peer.ask('{"type": "spawn", "start": 0}')
            await peer.ask('{"type": "control", "task": "joystick", "direction": [1, 0], "speed": 1.5}')
            frames = []
            for _ in range(int(4 * model.fps)):
                await peer.ws.send('{"type": "step"}')
                frames.append(await peer.frame())
            await peer.close()
        travel = frames[-1].root_position[0] - frames[len(frames) // 2].root_position[0]
        assert travel[0] > 0.5 and abs(travel[2]) < 0.5 * travel[0], "walks towards +X as commanded"
    run(body())


def test_hostile_messages_are_answered_and_other_clients_keep_streaming(model):
    garbage = [bytes(np.random.default_rng(i).integers(0, 256, 64, dtype=np.uint8)) for i in range(20)]

    async def body():
        with start(model, max_clients=3) as server:
            victim = await Peer.open(server.url)
            await victim.ask('{"type": "spawn", "count": 2}')
            attacker = await Peer.open(server.url)
            await attacker.ask('{"type": "spawn"}')
            watch = asyncio.create_task(_collect_frames(victim, 3.0))
            for text, code in HOSTILE:
                if len(text) > 65536:
                    continue  # over the size limit: closes the connection, checked below
                # Bytes go out as binary messages: a client's text frames are valid UTF-8 by the RFC.
                expected = "binary_not_allowed" if isinstance(text, bytes) else code
                assert (await attacker.ask(text))["code"] == expected, text[:60]
            for blob in garbage:
                await attacker.ws.send(blob)
                assert (await attacker.reply())["code"] == "binary_not_allowed"
            assert (await attacker.ask('{"type": "despawn", "seq": 77}'))["seq"] == 77, "still served afterwards"
            frames = await watch
            # A message over the size limit closes that connection (1009) and nothing else.
            await attacker.ws.send('{"type": "seed", "pad": "' + "x" * 70000 + '"}')
            with pytest.raises(ConnectionClosed):
                await attacker.reply()
            assert attacker.ws.close_code == 1009
            after = [await victim.frame() for _ in range(5)]
            await victim.close()
        numbers = [f.frame for f in frames]
        assert len(frames) >= 0.7 * 3.0 * model.fps, "the victim kept receiving frames"
        assert max(np.diff(numbers)) <= 5, "no stall while the attacker was served"
        assert all(f.ids.tolist() == [0, 1] for f in frames + after)
    run(body())


async def _collect_frames(peer: Peer, seconds: float) -> list[P.Frame]:
    end = time.perf_counter() + seconds
    start_count = len(peer.frames)
    while time.perf_counter() < end:
        await peer.frame()
    return peer.frames[start_count:]


def test_token_is_required_and_checked(model):
    async def body():
        with start(model, token="s3cret") as server:
            for url in (server.url, server.url + "?token=wrong", server.url + "?token="):
                with pytest.raises(InvalidStatus) as err:
                    await connect(url)
                assert err.value.response.status_code == 401
            peer = await Peer.open(server.url + "?token=s3cret")
            assert peer.hello["type"] == "hello"
            await peer.close()
    run(body())


def test_server_full_is_said_then_closed(model):
    async def body():
        with start(model, max_clients=1) as server:
            first = await Peer.open(server.url)
            ws = await connect(server.url)
            refused = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            assert refused["code"] == "server_full"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT_S)
            assert ws.close_code == 1013
            await first.close()
            second = await Peer.open(server.url)  # the freed block is reusable
            await second.close()
    run(body())


def test_vanished_clients_are_cleaned_up(model):
    async def body():
        with start(model, max_clients=4, characters_per_client=2) as server:
            observer = await Peer.open(server.url)
            baseline = await observer.ask('{"type": "stats"}')
            peers = [await Peer.open(server.url) for _ in range(3)]
            for p in peers:
                await p.ask('{"type": "spawn", "count": 2}')
                await p.frame()
            busy = await observer.ask('{"type": "stats"}')
            for p in peers:
                p.ws.transport.abort()  # gone without a closing handshake, like a killed process
            deadline = time.perf_counter() + WAIT_S
            while time.perf_counter() < deadline:
                stats = await observer.ask('{"type": "stats"}')
                if stats["clients"] == 1 and stats["characters"] == 0:
                    break
                await asyncio.sleep(0.05)
            await observer.close()
            return baseline, busy, stats, server.bridge
    baseline, busy, stats, bridge = run(body())
    assert (busy["clients"], busy["characters"]) == (4, 6)
    assert (stats["clients"], stats["characters"]) == (1, 0)
    assert stats["tasks"] == baseline["tasks"], "each connection's tasks ended with it"
    assert not bridge.clients and not bridge._live.any() and sorted(bridge._free_blocks) == [0, 1, 2, 3]


def test_a_slow_client_gets_the_newest_frame_not_a_queue():
    async def body():
        sent: list[bytes] = []
        release = asyncio.Event()

        async def slow_send(payload: bytes) -> None:
            await release.wait()
            sent.append(payload)

        client = Client(1, 0, slow_send, np.random.default_rng(), np.zeros(1, bool))
        pump = asyncio.create_task(client.pump())
        for i in range(100):
            client.offer(bytes([i]))
            await asyncio.sleep(0)
        release.set()
        await asyncio.sleep(0.01)
        pump.cancel()
        return client, sent
    client, sent = asyncio.run(body())
    # One frame was in flight when the client stalled; of the 99 offered meanwhile only the newest is sent.
    assert sent == [bytes([0]), bytes([99])]
    assert (client.frames_sent, client.frames_dropped) == (2, 98)


def test_lockstep_barrier_pause_and_per_client_determinism(model):
    async def body():
        with start(model, max_clients=2, characters_per_client=2, lockstep=True) as server:
            a = await Peer.open(server.url)
            b = await Peer.open(server.url)
            assert a.hello["lockstep"] is True
            for p in (a, b):
                await p.ask('{"type": "seed", "seed": 11}')
                await p.ask('{"type": "spawn", "start": 0, "position": [0, 0]}')
            # One step each: the barrier opens only when both have asked.
            await a.ws.send('{"type": "step", "seq": 5}')
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(a.ws.recv(), 0.3)
            await b.ws.send('{"type": "step"}')
            fa, fb = await a.frame(), await b.frame()
            assert fa.flags == fb.flags == P.FRAME_FLAG_STEP and fa.ack == 5 and fa.frame == fb.frame
            for _ in range(10):
                await a.ws.send('{"type": "step"}')
                await b.ws.send('{"type": "step"}')
                await a.frame()
                await b.frame()
            same = [np.array_equal(x.local_rotations, y.local_rotations) and
                    np.array_equal(x.root_position, y.root_position) for x, y in zip(a.frames, b.frames)
                    if not (x.character_flags.any() or y.character_flags.any())]
            # Paused, b's characters keep their state while a steps alone.
            await b.ask('{"type": "pause", "paused": true}')
            frozen = server.call(lambda: server.bridge.ctrl.state.condition[2:4].copy())
            for _ in range(5):
                await a.ws.send('{"type": "step"}')
                await a.frame()
            still = server.call(lambda: server.bridge.ctrl.state.condition[2:4].copy())
            await a.close()
            await b.close()
            return same, frozen, still
    same, frozen, still = run(body())
    assert all(same), "same seed, same start, same place: same motion, whichever slots the clients own"
    assert np.array_equal(frozen, still)


def serve_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "godot_bridge.serve", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_cli_serves_and_shuts_down_cleanly_on_sigterm(model_dir):
    proc = serve_cli("--model", str(model_dir), "--port", "0", "--max-clients", "2")
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving 'tiny' (float32) on ws://127.0.0.1:"), line
        url = line.split(" on ")[1].split(" ")[0]

        async def body():
            peer = await Peer.open(url)
            await peer.ask('{"type": "spawn"}')
            await peer.frame()
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                while True:
                    await peer.frame()
            return peer.ws.close_code
        assert run(body()) == 1001, "clients are told the server is going away"
        out, err = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "stopped", err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent"], "no such model directory"),
    (["--host", "0.0.0.0"], "give --token"),
    (["--max-clients", "0"], "between 1 and 1024"),
    (["--port", "70000"], "--port"),
    (["--token", ""], "must not be empty"),
])
def test_cli_bad_arguments_exit_2_with_one_line(args, message):
    env = {k: v for k, v in os.environ.items() if k != "MOTIONVAE_BRIDGE_TOKEN"}
    proc = serve_cli(*args, env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_port_in_use_exits_2(model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = serve_cli("--model", str(model_dir), "--port", str(s.getsockname()[1]))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "cannot listen" in err and len(err.strip().splitlines()) == 1, err


def test_foot_lock_is_on_by_default_and_switched_per_character_over_the_wire():
    model = load_model(None)  # the shipped default model: trained, its contacts mean something
    toe = model.skeleton.index("LeftToeBase")
    blend = Bridge(model, BridgeConfig()).ctrl.foot_lock.settings.blend_frames

    async def body():
        with start(model, max_clients=2, characters_per_client=1, lockstep=True) as server:
            a, b = await Peer.open(server.url), await Peer.open(server.url)
            for p, extra in ((a, ""), (b, ', "foot_lock": false')):
                await p.ask('{"type": "seed", "seed": 11}')
                assert (await p.ask('{"type": "spawn", "start": 0, "position": [0, 0]' + extra + "}"))["type"] == "ok"
            refused = await a.ask('{"type": "control", "task": "none", "foot_lock": "yes", "seq": 9}')
            locks = []

            async def step(n: int) -> None:
                for _ in range(n):
                    await a.ws.send('{"type": "step"}')
                    await b.ws.send('{"type": "step"}')
                    await a.frame()
                    await b.frame()
                    locks.append(server.call(lambda: bool(server.bridge.ctrl.foot_lock.locked[0, 0])))

            await step(90)
            assert (await a.ask('{"type": "control", "task": "none", "foot_lock": false}'))["type"] == "ok"
            await step(blend + 2)
            await a.close()
            await b.close()
            return refused, np.array(locks), a.frames, b.frames
    refused, locks, fa, fb = run(body())
    assert refused["type"] == "error" and refused["code"] == "bad_message" and "control.foot_lock" in refused["message"]
    # The same seed, start and place: the same motion underneath, the lock only changes the legs shown.
    assert all(np.array_equal(x.root_position, y.root_position) for x, y in zip(fa, fb))
    assert max(np.abs(x.local_rotations - y.local_rotations).max() for x, y in zip(fa[:90], fb[:90])) > 1e-3
    # While the left foot is locked, its toe stands still in a's frames and slides in b's (the raw ones).
    held = locks[1:90] & locks[:89]
    assert held.sum() > 20
    moved_a = np.linalg.norm(np.diff(_toe_positions(model, fa[:90], toe)[:, [0, 2]], axis=0), axis=-1)[held]
    moved_b = np.linalg.norm(np.diff(_toe_positions(model, fb[:90], toe)[:, [0, 2]], axis=0), axis=-1)[held]
    assert np.median(moved_a) < 1e-4 and np.percentile(moved_a, 90) < 2e-3, "the locked toe moved"
    assert np.median(moved_b) > 1e-3, "the raw toe was already still: this test shows nothing"
    # Switched off, a's character fades back onto the raw pose: then its frames are b's.
    assert np.array_equal(fa[-1].local_rotations, fb[-1].local_rotations)


def _toe_positions(model, frames: list[P.Frame], joint: int) -> np.ndarray:
    """World position of one joint in each frame's first character, by forward kinematics of the wire's pose."""
    q = np.stack([f.local_rotations[0] for f in frames]).astype(np.float64)
    root = np.stack([f.root_position[0] for f in frames]).astype(np.float64)
    return model.skeleton.forward_kinematics(q, root)[0][:, joint]
