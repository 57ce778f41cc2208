"""Bridge: the clients' characters as slots of one Controller, their messages, and the tick that steps them.

Transport-free: a client is anything with an async send(str | bytes); serve.py plugs websockets in.
Every client owns a block of characters_per_client slots, so all characters advance in ONE controller
call per tick. Message handlers only change bookkeeping and queue work; the tick applies queued resets
between steps, so nothing touches the controller while a step runs in its worker thread.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from runtime.control import resample_path
from runtime.controller import CHARACTER_SPACING_M, Controller
from runtime.model import MotionModel

from . import protocol as P
from .rigbind import RigBinding, bind

log = logging.getLogger("godot_bridge")

STATS_WINDOW = 1000  # ticks kept for the step-time percentiles in stats replies
CATCH_UP_TICKS = 3  # a realtime server this many ticks behind drops them rather than running them back to back


@dataclass
class Client:
    """One connection: its block of slots, its latent stream and its outgoing frame mailbox."""

    number: int
    block: int
    send: Callable[[str | bytes], Awaitable[None]]
    rng: np.random.Generator
    spawned: np.ndarray  # (K,) bool, by local character id
    paused: bool = False
    ack: int = 0  # highest seq applied so far
    wants_step: bool = False
    pending: bytes | None = None  # the newest unsent frame; a newer one replaces it (a dropped frame)
    frame_ready: asyncio.Event = field(default_factory=asyncio.Event)
    frames_sent: int = 0
    frames_dropped: int = 0
    rig: RigBinding | None = None  # the rig a bind message described: its frames' legs are turned for it

    def offer(self, payload: bytes) -> None:
        """Hand a frame to the sender; frames a slow client has not taken yet are dropped, never queued."""
        if self.pending is not None:
            self.frames_dropped += 1
        self.pending = payload
        self.frame_ready.set()

    async def pump(self) -> None:
        """Send offered frames until the connection fails (the caller cancels it on disconnect)."""
        while True:
            await self.frame_ready.wait()
            self.frame_ready.clear()
            payload, self.pending = self.pending, None
            if payload is not None:
                await self.send(payload)
                self.frames_sent += 1


@dataclass(frozen=True)
class BridgeConfig:
    """Server limits and mode."""

    max_clients: int = 8
    characters_per_client: int = 4
    lockstep: bool = False
    max_message_bytes: int = 65536


class Bridge:
    """All clients of one server and the controller that steps their characters."""

    def __init__(self, model: MotionModel, config: BridgeConfig) -> None:
        self.model = model
        self.config = config
        k = config.characters_per_client
        n = config.max_clients * k
        self.ctrl = Controller(model, n_characters=n, seed=0, foot_lock=True)
        self.clients: dict[int, Client] = {}
        self._free_blocks = list(range(config.max_clients))
        self._next_number = 1
        self._live = np.zeros(n, bool)  # slots whose character has been placed and is streamed
        self._placed = np.zeros(n, bool)  # slots (re)placed since the last step: flagged in the next frame
        self._resets: list[tuple[np.ndarray, int | None, np.ndarray, float]] = []
        self._latents = np.zeros((n, model.latent_size), np.float32)
        # Per-slot control state, handed to the controller once the model has policies for it.
        self._task = np.full(n, "", dtype=object)
        self._direction = np.zeros((n, 2), np.float32)
        self._speed = np.zeros(n, np.float32)
        self._target = np.zeros((n, 2), np.float32)
        self._foot_lock = np.ones(n, bool)  # per slot, handed to the controller's foot lock before each step
        self._paths: list[np.ndarray | None] = [None] * n
        self._closed = np.zeros(n, bool)
        self._local_ids = (np.arange(n) % k).astype(np.uint32)
        self._step_wanted = asyncio.Event()
        self._step_ms: deque[float] = deque(maxlen=STATS_WINDOW)
        self._tick_ms: deque[float] = deque(maxlen=STATS_WINDOW)
        self.late_ticks = 0
        self.ticks = 0

    # ---- connections -------------------------------------------------------------------------------

    def hello(self) -> str:
        """The handshake text for a new connection."""
        m = self.model
        return P.encode_hello(m.name, m.fps, m.latent_size, sorted(m.policies), m.skeleton.to_dict(),
                              len(m.start_frames), self.config.characters_per_client, self.config.lockstep,
                              self.config.max_clients, self.config.max_message_bytes)

    def connect(self, send: Callable[[str | bytes], Awaitable[None]]) -> Client | None:
        """Register a connection; None when the server is full."""
        if not self._free_blocks:
            return None
        block = self._free_blocks.pop(0)
        client = Client(self._next_number, block, send, np.random.default_rng(),
                        np.zeros(self.config.characters_per_client, bool))
        self._next_number += 1
        self.clients[client.number] = client
        return client

    def disconnect(self, client: Client) -> None:
        """Free a client's slots and block; a lockstep barrier it was holding up is re-checked."""
        self._forget(client, np.flatnonzero(client.spawned))
        self.clients.pop(client.number, None)
        self._free_blocks.append(client.block)
        self._free_blocks.sort()
        self._check_barrier()

    def _slots(self, client: Client, ids: np.ndarray) -> np.ndarray:
        return client.block * self.config.characters_per_client + ids

    def _forget(self, client: Client, ids: np.ndarray) -> None:
        slots = self._slots(client, ids)
        client.spawned[ids] = False
        self._live[slots] = False
        self._task[slots] = ""

    # ---- messages ----------------------------------------------------------------------------------

    def handle(self, client: Client, message: str | bytes) -> str | None:
        """Apply one client message; returns the text reply (None for a step request: its frame answers)."""
        if not isinstance(message, str):
            return P.encode_error("binary_not_allowed", "clients send JSON text messages only")
        try:
            msg = P.decode_client_message(message)
            reply = getattr(self, f"_on_{msg.type}")(client, msg)
        except P.ProtocolError as e:
            return P.encode_error(e.code, str(e), e.seq)
        except Exception:  # a bug must cost one reply, never the server or the other clients
            log.exception("client %d: failed on message %.200r", client.number, message)
            return P.encode_error("internal_error", "the server failed on this message")
        if msg.seq is not None:
            client.ack = max(client.ack, msg.seq)
        if msg.type == "step":
            self._check_barrier()
        return reply

    def _ids(self, client: Client, msg: P.ClientMessage) -> np.ndarray:
        """The message's ids (default: all the client's characters), each checked to be spawned."""
        if "ids" not in msg.fields:
            return np.flatnonzero(client.spawned)
        ids = np.asarray(msg.fields["ids"], np.int64)
        bad = [int(i) for i in ids if i >= len(client.spawned) or not client.spawned[i]]
        if bad:
            raise P.ProtocolError("unknown_character", f"no spawned character with id {bad[0]}", msg.seq)
        return ids

    def _placement(self, client: Client, ids: np.ndarray, msg: P.ClientMessage) -> None:
        """Queue a reset of ids onto a start frame at the message's position and yaw (default: side by side)."""
        start = msg.fields.get("start")
        if start is not None and start >= len(self.model.start_frames):
            raise P.ProtocolError("bad_message", f"{msg.type}.start must be below {len(self.model.start_frames)} "
                                                 "(hello.start_frames)", msg.seq)
        k = self.config.characters_per_client
        origin = np.zeros((len(ids), 3))
        if "position" in msg.fields:
            origin[:, [0, 2]] = msg.fields["position"]
        else:
            origin[:, 0] = (ids - (k - 1) / 2) * CHARACTER_SPACING_M
        self._resets.append((self._slots(client, ids), start, origin, msg.fields.get("yaw", 0.0)))

    def _on_spawn(self, client: Client, msg: P.ClientMessage) -> str:
        count = msg.fields.get("count", 1)
        free = np.flatnonzero(~client.spawned)
        if count > len(free):
            raise P.ProtocolError("no_free_slot", f"spawn of {count} characters, but only {len(free)} of "
                                                  f"{len(client.spawned)} are free", msg.seq)
        ids = free[:count]
        self._placement(client, ids, msg)
        client.spawned[ids] = True
        self._foot_lock[self._slots(client, ids)] = msg.fields.get("foot_lock", True)
        return P.encode_ok("spawn", msg.seq, ids=ids.tolist())

    def _on_despawn(self, client: Client, msg: P.ClientMessage) -> str:
        ids = self._ids(client, msg)
        self._forget(client, ids)
        return P.encode_ok("despawn", msg.seq, ids=ids.tolist())

    def _on_reset(self, client: Client, msg: P.ClientMessage) -> str:
        ids = self._ids(client, msg)
        self._placement(client, ids, msg)
        return P.encode_ok("reset", msg.seq, ids=ids.tolist())

    def _on_control(self, client: Client, msg: P.ClientMessage) -> str:
        ids = self._ids(client, msg)
        task = msg.fields["task"]
        if task != "none" and task not in self.model.policies:
            have = ", ".join(sorted(self.model.policies)) or "none"
            raise P.ProtocolError("no_policy", f"model {self.model.name!r} has no {task} policy (it has: {have}); "
                                               "its characters keep walking freely", msg.seq)
        slots = self._slots(client, ids)
        self._task[slots] = "" if task == "none" else task
        if task == "joystick":
            d = np.asarray(msg.fields["direction"], np.float32)
            self._direction[slots] = d / np.linalg.norm(d)
            self._speed[slots] = msg.fields["speed"]
        elif task == "target":
            self._target[slots] = msg.fields["target"]
        elif task == "path":
            points, closed = np.array(msg.fields["path"]), msg.fields.get("closed", False)
            try:
                resample_path(points, closed)  # refused now rather than in the tick
            except ValueError as e:
                raise P.ProtocolError("bad_message", f"control.path: {e}", msg.seq) from None
            for slot in slots:
                self._paths[slot] = points
            self._closed[slots] = closed
        if "foot_lock" in msg.fields:
            self._foot_lock[slots] = msg.fields["foot_lock"]
        return P.encode_ok("control", msg.seq, ids=ids.tolist(), task=task)

    def _on_pause(self, client: Client, msg: P.ClientMessage) -> str:
        client.paused = msg.fields["paused"]
        self._check_barrier()
        return P.encode_ok("pause", msg.seq, paused=client.paused)

    def _on_seed(self, client: Client, msg: P.ClientMessage) -> str:
        client.rng = np.random.default_rng(msg.fields["seed"])
        return P.encode_ok("seed", msg.seq, seed=msg.fields["seed"])

    def _on_step(self, client: Client, msg: P.ClientMessage) -> None:
        if not self.config.lockstep:
            raise P.ProtocolError("not_lockstep", "this server paces frames itself; start it with --lockstep "
                                                  "to step on request", msg.seq)
        client.wants_step = True

    def _on_bind(self, client: Client, msg: P.ClientMessage) -> str:
        client.rig = bind(self.model.skeleton, msg)
        return client.rig.reply(self.model.skeleton, msg.seq)

    def _on_stats(self, client: Client, msg: P.ClientMessage) -> str:
        return P.encode_stats(msg.seq, self.stats(client))

    def stats(self, client: Client | None = None) -> dict:
        """Server counters, step-time percentiles over the last ticks, and the asking client's frame counts."""
        def summary(values: deque[float]) -> dict[str, float]:
            a = np.asarray(values) if values else np.zeros(1)
            return {"mean": round(float(a.mean()), 3), "p50": round(float(np.percentile(a, 50)), 3),
                    "p99": round(float(np.percentile(a, 99)), 3), "max": round(float(a.max()), 3)}
        out = {"ticks": self.ticks, "frame": self.ctrl.frame, "clients": len(self.clients),
               "characters": int(sum(c.spawned.sum() for c in self.clients.values())),
               "slots": self.ctrl.n_characters, "late_ticks": self.late_ticks,
               "step_ms": summary(self._step_ms), "tick_ms": summary(self._tick_ms),
               "tasks": len(asyncio.all_tasks())}
        if client is not None:
            out.update(frames_sent=client.frames_sent, frames_dropped=client.frames_dropped)
        return out

    # ---- ticking -----------------------------------------------------------------------------------

    def _check_barrier(self) -> None:
        """Lockstep: step once some client asked and every client with streamed characters has asked."""
        if not self.config.lockstep:
            return
        asked = [c for c in self.clients.values() if c.wants_step]
        waiting = [c for c in self.clients.values() if not c.wants_step and not c.paused and c.spawned.any()]
        if asked and not waiting:
            self._step_wanted.set()

    async def run(self) -> None:
        """Tick forever: at the model's fps, or in lockstep whenever the barrier opens."""
        period = 1.0 / self.model.fps
        deadline = time.perf_counter()
        while True:
            if self.config.lockstep:
                await self._step_wanted.wait()
                self._step_wanted.clear()
                await self.tick()
                continue
            deadline += period
            delay = deadline - time.perf_counter()
            if delay < -period:
                self.late_ticks += 1
            if delay < -CATCH_UP_TICKS * period:
                # Too far behind to catch up without a burst: skip the missed ticks (motion slows down a
                # little instead of arriving in clumps).
                deadline = time.perf_counter()
            await asyncio.sleep(max(delay, 0.0))
            await self.tick()

    def _apply_resets(self) -> None:
        for slots, start, origin, yaw in self._resets:
            self.ctrl.reset(slots, start=start, origin=origin, yaw=yaw)
            self._placed[slots] = True
        self._resets.clear()
        for c in self.clients.values():
            self._live[self._slots(c, np.flatnonzero(c.spawned))] = True

    def _fill_latents(self) -> None:
        k = self.config.characters_per_client
        for c in self.clients.values():
            # Every client draws all K latents each tick, so its characters' motion depends only on its own
            # seed and messages, never on what other clients do.
            self.model.sample_latents(c.rng, self._latents[c.block * k:(c.block + 1) * k])

    def _control(self) -> dict[str, np.ndarray] | None:
        """Per-slot control for the controller's policies, or None while no live character has one."""
        if not np.any((self._task != "") & self._live):
            return None
        return {"task": self._task.copy(), "direction": self._direction.copy(), "speed": self._speed.copy(),
                "target": self._target.copy(), "path": list(self._paths), "closed": self._closed.copy()}

    def _frozen_slots(self) -> np.ndarray:
        """Slots of paused clients: they keep their state across steps."""
        k = self.config.characters_per_client
        blocks = [c.block for c in self.clients.values() if c.paused]
        return (np.asarray(blocks, np.int64)[:, None] * k + np.arange(k)).reshape(-1)

    def _step(self, control: dict[str, np.ndarray] | None, frozen: np.ndarray):
        """One controller step for every slot; frozen slots get their pre-step state back afterwards."""
        t0 = time.perf_counter()
        st, lock = self.ctrl.state, self.ctrl.foot_lock
        saved = [a[frozen].copy() for a in (st.condition, st.origin, st.yaw, st.rotations)]
        held = lock.save(frozen)
        poses = self.ctrl.step(self._latents, control)
        st = self.ctrl.state
        for a, keep in zip((st.condition, st.origin, st.yaw, st.rotations), saved):
            a[frozen] = keep
        lock.restore(frozen, held)
        self._step_ms.append((time.perf_counter() - t0) * 1000.0)
        return poses

    async def tick(self) -> None:
        """Step every slot once (in a worker thread, so sockets keep flowing) and offer each client its frame."""
        t0 = time.perf_counter()
        lockstep = self.config.lockstep
        receivers = [c for c in self.clients.values()
                     if (c.wants_step if lockstep else not c.paused and c.spawned.any())]
        for c in receivers:
            c.wants_step = False
        self.ctrl.foot_lock.enabled[:] = self._foot_lock
        self._apply_resets()
        if not receivers:
            return  # nobody to stream to (all idle or paused): paused characters stay frozen anyway
        acks = {c.number: c.ack for c in receivers}
        self._fill_latents()
        frozen = self._frozen_slots()
        poses = await asyncio.to_thread(self._step, self._control(), frozen)
        flags = (self._placed | poses.reset).astype(np.uint32) * P.CHARACTER_FLAG_RESET
        # Frozen characters were not streamed: a reset they got while paused is flagged when they resume.
        keep = self._placed[frozen]
        self._placed[:] = False
        self._placed[frozen] = keep
        records = P.pack_records(self._local_ids, flags, poses.root_position, poses.root_rotation,
                                 poses.local_rotations)
        frame_flags = P.FRAME_FLAG_STEP if lockstep else 0
        k = self.config.characters_per_client
        for c in receivers:
            if c.number not in self.clients:
                continue  # disconnected during the step
            base = c.block * k
            rows = base + np.flatnonzero(c.spawned & self._live[base:base + k])
            if rows.size or lockstep:
                mine = records[rows] if c.rig is None else c.rig.legs(self.model.skeleton, records[rows])
                c.offer(P.encode_frame(poses.frame, acks[c.number], mine, frame_flags))
        self.ticks += 1
        self._tick_ms.append((time.perf_counter() - t0) * 1000.0)
