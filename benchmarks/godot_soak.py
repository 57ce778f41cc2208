"""Soak test of the Godot bridge server on loopback: load, hostile messages, vanishing clients, latency.

Starts `python -m godot_bridge.serve` as a separate process (as a game would use it) and, from this one:
  1. keeps --clients clients x --characters characters streaming at the model's fps for --seconds;
  2. meanwhile sends --hostile malformed or hostile messages from one more client (bad JSON, wrong
     types, huge numbers, oversized messages, unknown types, binary garbage), each of which must get
     its error reply (oversized ones close that connection, which then reconnects);
  3. meanwhile lets waves of clients spawn characters and vanish mid-stream without a closing handshake;
  4. then checks that no streaming client stalled and that the vanished clients left no characters or
     tasks behind, and reports the server's per-tick step times;
  5. finally starts a --lockstep server and measures round trips on loopback: a control message and a
     step request sent -> the frame that acknowledges the control received.
Exits 1 when a check fails. Every loop is bounded in count and time; traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from godot_bridge import protocol as P

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = """examples:
  python benchmarks/godot_soak.py                          # 32 clients x 4 characters for 60 s, default model
  python benchmarks/godot_soak.py --seconds 10 --model runs/walk/model
  python benchmarks/godot_soak.py --clients 8 --hostile 200 --json soak.json
"""
STALL_S = 0.5  # a streaming client that waits longer than this for a frame counts as stalled
FAIR_SHARE = 0.95  # every streaming client gets at least this share of the best-served client's frames
VANISH_WAVES = 5
VANISH_PER_WAVE = 4
WAIT_S = 20.0


@dataclass
class Stream:
    """What one streaming client saw."""

    arrivals: list[float] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def start_server(args: argparse.Namespace, *extra: str) -> tuple[subprocess.Popen, str]:
    """The server process and its URL, once it listens."""
    cmd = [sys.executable, "-m", "godot_bridge.serve", "--port", "0", *extra]
    if args.model is not None:
        cmd += ["--model", str(args.model)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.kill()
        sys.exit(f"error: the server did not start: {line.strip() or 'no output'}")
    return proc, line.split(" on ")[1].split(" ")[0]


async def open_client(url: str) -> tuple[ClientConnection, dict]:
    """A connection and its hello."""
    ws = await connect(url, max_size=1 << 24)
    return ws, json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))


async def reply(ws: ClientConnection) -> dict:
    """The next text message, skipping frames."""
    while True:
        message = await asyncio.wait_for(ws.recv(), WAIT_S)
        if isinstance(message, str):
            return json.loads(message)


async def stream(url: str, characters: int, until: float, out: Stream) -> None:
    """Spawn characters and read frames until the deadline, noting when each arrives."""
    ws, _ = await open_client(url)
    await ws.send(P.encode_client_message("spawn", count=characters))
    try:
        while time.perf_counter() < until:
            message = await asyncio.wait_for(ws.recv(), WAIT_S)
            if isinstance(message, bytes):
                out.arrivals.append(time.perf_counter())
                out.numbers.append(P.HEADER.unpack_from(message)[3])
            elif json.loads(message)["type"] == "error":
                out.errors.append(message)
    finally:
        await ws.close()


def hostile_messages(n: int, max_bytes: int, seed: int = 0) -> list[tuple[str | bytes, str | None]]:
    """n hostile messages and the error code each must get (None: the connection must be closed)."""
    rng = random.Random(seed)
    makers = [
        lambda: ("{" * rng.randint(1, 50), "bad_json"),
        lambda: ('{"type": "spawn", "count": NaN}', "bad_json"),
        lambda: ('{"type": "seed", "seed": ' + "9" * rng.randint(5000, 20000) + "}", "bad_json"),
        lambda: ("[" * 3000 + "]" * 3000, "bad_json"),
        lambda: (json.dumps(rng.choice([[], 1, "x", None, True])), "bad_message"),
        lambda: ('{"type": "spawn", "count": ' + rng.choice(["1e308", "-5", "\"3\"", "true", "2.5"]) + "}",
                 "bad_message"),
        lambda: ('{"type": "control", "task": "joystick", "direction": [1e300, 0], "speed": 1}', "bad_message"),
        lambda: ('{"type": "reset", "ids": [' + ",".join(["0"] * rng.randint(2, 50)) + "]}", "bad_message"),
        lambda: ('{"type": "despawn", "ids": [70000]}', "bad_message"),
        lambda: (json.dumps({"type": "spawn", "x" * rng.randint(1, 100): 1}), "bad_message"),
        lambda: (json.dumps({"type": "".join(rng.choices("abcxyz", k=rng.randint(1, 300)))}), "unknown_type"),
        lambda: (bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2000))), "binary_not_allowed"),
        lambda: ('{"type": "despawn", "ids": [3]}', "unknown_character"),
        lambda: ('{"type": "step"}', "not_lockstep"),
        lambda: ('{"type": "spawn", "count": 60000}', "no_free_slot"),
        lambda: ('{"type": "pad", "x": "' + "x" * (max_bytes + rng.randint(1, 10000)) + '"}', None),
    ]
    return [rng.choice(makers)() for _ in range(n)]


async def attack(url: str, messages: list[tuple[str | bytes, str | None]]) -> dict[str, int]:
    """Send every hostile message and check its reply; counts of what happened."""
    counts = {"answered": 0, "wrong_reply": 0, "closed_as_required": 0, "not_closed": 0}
    ws, _ = await open_client(url)
    for text, code in messages:
        await ws.send(text)
        if code is None:
            try:
                await reply(ws)
                counts["not_closed"] += 1
            except ConnectionClosed:
                counts["closed_as_required"] += 1
                ws, _ = await open_client(url)
            continue
        got = await reply(ws)
        counts["answered" if got.get("code") == code else "wrong_reply"] += 1
    await ws.close()
    return counts


async def vanish(url: str, characters: int) -> int:
    """Waves of clients that spawn, take a few frames, then drop the TCP connection without closing."""
    gone = 0
    for _ in range(VANISH_WAVES):
        clients = [await open_client(url) for _ in range(VANISH_PER_WAVE)]
        for ws, _ in clients:
            await ws.send(P.encode_client_message("spawn", count=characters))
        for ws, _ in clients:
            for _ in range(3):
                while not isinstance(await asyncio.wait_for(ws.recv(), WAIT_S), bytes):
                    pass
            ws.transport.abort()
            gone += 1
        await asyncio.sleep(0.5)
    return gone


async def stats(url: str) -> dict:
    """The server's stats, asked on a connection of its own."""
    ws, _ = await open_client(url)
    await ws.send('{"type": "stats"}')
    out = await reply(ws)
    await ws.close()
    return out


async def soak(args: argparse.Namespace, url: str, hello_fps: float) -> dict:
    """Streamers, the attacker and the vanishing waves at once; what each saw and the server's stats."""
    baseline = await stats(url)
    until = time.perf_counter() + args.seconds
    streams = [Stream() for _ in range(args.clients)]
    tasks = [asyncio.create_task(stream(url, args.characters, until, s)) for s in streams]
    await asyncio.sleep(min(2.0, args.seconds / 10))
    hostile = asyncio.create_task(attack(url, hostile_messages(args.hostile, args.max_message_bytes)))
    vanished = asyncio.create_task(vanish(url, args.characters))
    during = None
    while time.perf_counter() < until - 1.0 and during is None:
        await asyncio.sleep(max(0.0, min(args.seconds * 0.8, until - 1.0 - time.perf_counter())))
        during = await stats(url)
    attack_counts = await hostile
    gone = await vanished
    await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)  # the server notices the last closes
    after = await stats(url)
    gaps = [float(np.diff(s.arrivals).max()) if len(s.arrivals) > 1 else float("inf") for s in streams]
    counts = [len(s.arrivals) for s in streams]
    # Frames each client got over the frames due from its first frame to the end of the soak.
    shares = [len(s.arrivals) / ((until - s.arrivals[0]) * hello_fps) if s.arrivals else 0.0 for s in streams]
    skipped = [int(np.diff(s.numbers).max()) - 1 if len(s.numbers) > 1 else 0 for s in streams]
    return {"baseline": baseline, "during": during, "after": after, "attack": attack_counts, "vanished": gone,
            "frames_min": min(counts), "frames_max": max(counts),
            "frames_share_min": min(shares),
            "max_gap_s": max(gaps), "max_skipped_frames": max(skipped),
            "stream_errors": sum(len(s.errors) for s in streams)}


async def latency(url: str, rounds: int) -> dict[str, float]:
    """Lockstep round trips: control + step sent -> the frame acknowledging the control received."""
    ws, hello = await open_client(url)
    await ws.send(P.encode_client_message("spawn", start=0))
    await reply(ws)
    task = "joystick" if "joystick" in hello["tasks"] else "none"
    times = []
    for seq in range(1, rounds + 1):
        fields = {"direction": [1.0, 0.0], "speed": 1.0} if task == "joystick" else {}
        t0 = time.perf_counter()
        await ws.send(P.encode_client_message("control", seq=seq, task=task, **fields))
        await ws.send('{"type": "step"}')
        while True:
            message = await asyncio.wait_for(ws.recv(), WAIT_S)
            if isinstance(message, bytes) and P.HEADER.unpack_from(message)[4] >= seq:
                break
        times.append((time.perf_counter() - t0) * 1000.0)
    await ws.close()
    a = np.asarray(times[10:])  # the first rounds warm caches up
    return {"task": task, "rounds": len(a), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def report(args: argparse.Namespace, result: dict, lat: dict) -> list[str]:
    """Print the figures; return the failed checks."""
    during, after, base = result["during"] or result["after"], result["after"], result["baseline"]
    step, tick = during["step_ms"], during["tick_ms"]
    print(f"soak: {args.clients} clients x {args.characters} characters ({during['slots']} slots stepped per tick) "
          f"for {args.seconds:g} s at {args.fps_label}")
    print(f"  per-tick model step (ms):  mean {step['mean']:.2f}  p50 {step['p50']:.2f}  p99 {step['p99']:.2f}  "
          f"max {step['max']:.2f}")
    budget = 1000.0 / args.fps
    print(f"  per-tick total (ms):       mean {tick['mean']:.2f}  p50 {tick['p50']:.2f}  p99 {tick['p99']:.2f}  "
          f"max {tick['max']:.2f}   ({tick['mean'] / budget:.0%} of the {budget:.1f} ms budget; "
          f"late ticks {after['late_ticks']})")
    print(f"  frames per client:         min {result['frames_min']}  max {result['frames_max']}  "
          f"({result['frames_share_min']:.1%} or more of those due at the model's fps); longest wait {result['max_gap_s'] * 1000:.0f} ms; "
          f"most frames skipped at once {result['max_skipped_frames']}")
    a = result["attack"]
    print(f"  hostile messages:          {args.hostile} sent: {a['answered']} answered with the right error, "
          f"{a['closed_as_required']} oversized closed their connection, "
          f"{a['wrong_reply'] + a['not_closed']} wrong")
    print(f"  vanished clients:          {result['vanished']} dropped mid-stream; afterwards "
          f"{after['clients'] - 1} clients, {after['characters']} characters, {after['tasks']} tasks "
          f"(before the soak: {base['tasks']} tasks)")
    print(f"lockstep round trip on loopback ({lat['task']} control + step -> acknowledging frame, "
          f"{lat['rounds']} rounds): p50 {lat['p50_ms']:.2f} ms  p99 {lat['p99_ms']:.2f} ms  max {lat['max_ms']:.2f} ms")
    failed = []
    if result["max_gap_s"] > STALL_S:
        failed.append(f"a client stalled: it waited {result['max_gap_s']:.2f} s for a frame")
    if result["frames_min"] < FAIR_SHARE * result["frames_max"]:
        failed.append(f"clients were not served alike: {result['frames_min']} to {result['frames_max']} frames")
    if a["wrong_reply"] or a["not_closed"] or a["answered"] + a["closed_as_required"] != args.hostile:
        failed.append(f"hostile messages not handled as documented: {a}")
    if after["clients"] != 1 or after["characters"] != 0 or after["tasks"] != base["tasks"]:
        failed.append(f"leak after the soak: {after['clients'] - 1} clients, {after['characters']} characters, "
                      f"{after['tasks']} tasks (baseline {base['tasks']})")
    if result["stream_errors"]:
        failed.append(f"{result['stream_errors']} error replies reached well-behaved clients")
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run the soak and the latency measurement; exit 1 when a check fails."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped default model)")
    ap.add_argument("--seconds", type=float, default=60.0, help="soak duration (default 60)")
    ap.add_argument("--clients", type=int, default=32, help="streaming clients (default 32)")
    ap.add_argument("--characters", type=int, default=4, help="characters per client (default 4)")
    ap.add_argument("--hostile", type=int, default=1000, help="hostile messages to send (default 1000)")
    ap.add_argument("--rounds", type=int, default=300, help="lockstep latency round trips (default 300)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if not (args.seconds >= 5 and args.clients >= 1 and args.characters >= 1 and args.hostile >= 0
            and args.rounds > 10):
        ap.error("need --seconds >= 5, --clients >= 1, --characters >= 1, --hostile >= 0, --rounds > 10")
    args.max_message_bytes = 65536
    max_clients = args.clients + VANISH_PER_WAVE + 3  # streamers, a wave of vanishing clients, attacker, stats
    proc, url = start_server(args, "--max-clients", str(max_clients), "--characters-per-client",
                             str(args.characters), "--max-message-bytes", str(args.max_message_bytes))
    try:
        hello = asyncio.run(asyncio.wait_for(_hello(url), WAIT_S))
        args.fps = hello["fps"]
        args.fps_label = f"{hello['fps']:g} fps, model {hello['model']!r}"
        result = asyncio.run(asyncio.wait_for(soak(args, url, hello["fps"]), args.seconds + 120))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, url = start_server(args, "--lockstep", "--max-clients", "1", "--characters-per-client", "1")
    try:
        lat = asyncio.run(asyncio.wait_for(latency(url, args.rounds), 120))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    failed = report(args, result, lat)
    if args.json is not None:
        args.json.write_text(json.dumps({"soak": result, "latency": lat, "failed": failed}, indent=1))
    for problem in failed:
        print(f"FAILED: {problem}")
    return 1 if failed else 0


async def _hello(url: str) -> dict:
    """The server's hello."""
    ws, hello = await open_client(url)
    await ws.close()
    return hello


if __name__ == "__main__":
    sys.exit(main())
