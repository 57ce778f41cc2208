"""A client of a running godot_bridge server, run by a network thread that owns the connection.

The thread connects, reads the server's hello (open() waits for it, so Play can still refuse with a report),
sends what the main thread queued (seed, spawn, control, step requests) and puts decoded frames in a one-slot
queue, replacing a frame the main thread has not taken (the server drops frames for slow clients the same
way), so nothing grows while Blender is busy. Whatever ends the connection becomes one sentence in `error`;
the thread never raises. No bpy here: live.py drains the queue on the main thread.
"""
from __future__ import annotations

import queue
import threading
from typing import Any
from urllib.parse import quote

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from .errors import AddonError
from .runtime import protocol as P

OPEN_TIMEOUT_S = 3.0  # Play waits this long for the handshake: a loopback server answers at once
POLL_S = 0.01  # the thread looks at the outgoing queue this often between frames
CLOSE_TIMEOUT_S = 1.0
JOIN_TIMEOUT_S = 3.0
FATAL_REPLIES = ("seed", "spawn")  # refused, the session cannot show anything
STREAMED_TASKS = tuple(t for t in P.CONTROL_TASKS if t != "none")  # what a control message can carry
CLOSE_REASONS = {1001: "the server shut down", 1009: "a message was too big", 1013: "the server is full"}


def server_url(host: str, port: int, token: str = "") -> str:
    """The ws:// URL of a server, with the token as the protocol carries it (?token=T)."""
    name = f"[{host}]" if ":" in host else host
    return f"ws://{name}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")


def _refusal(where: str, e: BaseException) -> AddonError:
    """What a failed connection attempt means for the user, as one sentence."""
    if isinstance(e, InvalidStatus) and e.response.status_code == 401:
        return AddonError(f"The godot_bridge server at {where} refused the token (HTTP 401): set the token it was "
                          "started with (--token).")
    if isinstance(e, ConnectionRefusedError):
        return AddonError(f"No godot_bridge server at {where} (connection refused): start one with "
                          "`python -m godot_bridge.serve`, or check host and port.")
    if isinstance(e, TimeoutError):
        return AddonError(f"The godot_bridge server at {where} did not answer within {OPEN_TIMEOUT_S:g} s.")
    if isinstance(e, (InvalidHandshake, InvalidURI, P.ProtocolError)):
        return AddonError(f"{where} is not a godot_bridge server ({e}).")
    if isinstance(e, ConnectionClosed):
        return AddonError(f"The godot_bridge server at {where} closed the connection during the handshake.")
    return AddonError(f"Cannot connect to {where} ({getattr(e, 'strerror', None) or e}).")


def _hello(ws: ClientConnection, where: str) -> dict:
    """The server's first message, checked to be a protocol-1 hello with a skeleton."""
    hello = P.decode_server_message(ws.recv(timeout=OPEN_TIMEOUT_S))
    if hello["type"] == "error":
        raise AddonError(f"The godot_bridge server at {where} refused the connection: {hello.get('message')}")
    if hello["type"] != "hello" or hello.get("protocol") != P.PROTOCOL_VERSION:
        raise AddonError(f"The server at {where} speaks protocol {hello.get('protocol')!r}, this extension speaks "
                         f"{P.PROTOCOL_VERSION}: update one of them.")
    fps = hello.get("fps")
    if not isinstance(hello.get("skeleton"), dict) or not isinstance(hello["skeleton"].get("names"), list) \
            or not isinstance(fps, (int, float)) or not fps > 0:
        raise AddonError(f"The server at {where} sent a hello without a skeleton or frame rate.")
    return hello


def _ended(where: str, e: ConnectionClosed) -> str:
    """Why a streaming connection ended, as one sentence."""
    if e.rcvd is None:
        return f"The connection to the godot_bridge server at {where} dropped."
    reason = CLOSE_REASONS.get(e.rcvd.code, e.rcvd.reason or f"close code {e.rcvd.code}")
    return f"The godot_bridge server at {where} closed the connection ({reason})."


class _Fatal(Exception):
    """A refusal that ends the session (its message is the panel's status)."""


class BridgeLink:
    """One connection to a godot_bridge server streaming one character; see the module docstring."""

    def __init__(self, host: str, port: int, token: str = "") -> None:
        self.where = server_url(host, port)  # the token stays out of every message
        self.hello: dict = {}
        self.bones = 0
        self.lockstep = False
        self.frames: queue.Queue[P.Frame] = queue.Queue(maxsize=1)
        self.error: str | None = None  # set once, by the thread, when the connection ends
        self.warning: str | None = None  # the latest refused control message (the session goes on)
        self.dropped = 0  # frames replaced before the main thread took them
        self._url = server_url(host, port, token)
        self._refused: AddonError | None = None  # why the handshake failed
        self._greeted = threading.Event()  # set once the hello came or the handshake failed
        self._outgoing: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._requests: dict[int, str] = {}  # seq -> message type, to tell which request a reply answers
        self._seq = 0
        self._steering: dict[str, Any] = {"task": "none"}  # the control last sent; a spawn walks freely
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="motion-vae-bridge", daemon=True)

    @classmethod
    def open(cls, host: str, port: int, token: str = "") -> "BridgeLink":
        """Connect and wait for the server's hello; AddonError saying what went wrong (refused, bad token, ...)."""
        link = cls(host, port, token)
        link._thread.start()
        # open_timeout bounds the connection and OPEN_TIMEOUT_S the hello: the thread answers well within both.
        if not link._greeted.wait(3 * OPEN_TIMEOUT_S):
            link.close()
            raise AddonError(f"The godot_bridge server at {link.where} did not answer within "
                             f"{3 * OPEN_TIMEOUT_S:g} s.")
        if link._refused is not None:
            link.close()
            raise link._refused
        return link

    def send(self, msg_type: str, **fields: Any) -> None:
        """Queue a client message for the thread; AddonError when the protocol cannot carry it."""
        try:
            text = P.encode_client_message(msg_type, seq=self._seq + 1, **fields)
        except P.ProtocolError as e:
            raise AddonError(f"Cannot send {msg_type} to the server: {e}.") from None
        self._seq += 1
        self._requests[self._seq] = msg_type
        self._outgoing.put(text)

    def steer(self, control: dict | None) -> None:
        """Send a runtime control dict (runtime/control.py; None: walk freely) as a control message, if it changed."""
        if control is None:
            fields: dict[str, Any] = {"task": "none"}
        elif control["task"] == "joystick":
            fields = {"task": "joystick", "direction": np.ravel(control["direction"]).astype(float).tolist(),
                      "speed": float(np.ravel(control["speed"])[0])}
        elif control["task"] == "target":
            fields = {"task": "target", "target": np.ravel(control["target"])[:2].astype(float).tolist()}
        elif control["task"] == "path":
            points = np.asarray(control["path"], np.float64)
            if len(points) > P.MAX_PATH_POINTS:  # the protocol's limit: the same shape, evenly thinned
                points = points[np.linspace(0, len(points) - 1, P.MAX_PATH_POINTS).round().astype(int)]
            fields = {"task": "path", "path": points.tolist(), "closed": bool(control["closed"])}
        else:
            raise AddonError(f"The godot_bridge protocol carries {' and '.join(STREAMED_TASKS)} control, not "
                             f"{control['task']}.")
        if fields != self._steering:
            self.send("control", **fields)
            self._steering = fields

    def spawn(self, seed: int, start: int | None, foot_lock: bool = True) -> None:
        """Restart the server's random stream at seed and spawn one character where a local session starts."""
        self.send("seed", seed=seed)
        # At the origin facing +Z, as Controller.reset places a local character.
        self.send("spawn", position=[0.0, 0.0], yaw=0.0, foot_lock=foot_lock,
                  **({} if start is None else {"start": start}))

    def latest(self) -> P.Frame | None:
        """The newest frame not yet taken, or None."""
        try:
            return self.frames.get_nowait()
        except queue.Empty:
            return None

    @property
    def alive(self) -> bool:
        """Whether the thread still runs (False once the connection ended or close() was called)."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the thread, which closes the connection (the server then frees the character); safe to repeat."""
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT_S)

    def _offer(self, frame: P.Frame) -> None:
        """Put a frame in the one-slot queue, replacing one the main thread has not taken."""
        while True:
            try:
                self.frames.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _reply(self, reply: dict) -> None:
        """A text reply: refusals of seed or spawn end the session, others are a warning for the panel."""
        request = self._requests.pop(reply.get("seq"), None)
        if reply["type"] != "error":
            return
        message = f"The server refused {request or 'a message'}: {reply.get('message')}"
        if request in FATAL_REPLIES:
            raise _Fatal(message)
        self.warning = message

    def _greet(self, ws: ClientConnection) -> None:
        """Read and keep the hello, then let open() return."""
        self.hello = _hello(ws, self.where)
        self.bones = len(self.hello["skeleton"]["names"])
        self.lockstep = bool(self.hello.get("lockstep"))
        self._greeted.set()

    def _stream(self, ws: ClientConnection) -> None:
        """Send what is queued and take what comes until close() or the connection ends."""
        while not self._stopping.is_set():
            while True:
                try:
                    ws.send(self._outgoing.get_nowait())
                except queue.Empty:
                    break
            try:
                message = ws.recv(timeout=POLL_S)
            except TimeoutError:
                continue
            if isinstance(message, bytes):
                self._offer(P.decode_frame(message, self.bones))
            else:
                self._reply(P.decode_server_message(message))

    def _run(self) -> None:
        try:
            with connect(self._url, open_timeout=OPEN_TIMEOUT_S, close_timeout=CLOSE_TIMEOUT_S, compression=None,
                         proxy=None) as ws:
                try:
                    self._greet(ws)
                except AddonError as e:
                    self._refused = e
                    return
                except (P.ProtocolError, ConnectionClosed, TimeoutError) as e:
                    self._refused = _refusal(self.where, e)
                    return
                self._stream(ws)
        except (OSError, InvalidHandshake, InvalidURI) as e:
            if self._greeted.is_set():  # the socket failed while streaming
                self.error = f"The connection to the godot_bridge server at {self.where} failed ({e})."
            else:  # the connection attempt failed
                self._refused = _refusal(self.where, e)
        except ConnectionClosed as e:
            if not self._stopping.is_set():
                self.error = _ended(self.where, e)
        except _Fatal as e:
            self.error = str(e)
        except P.ProtocolError as e:
            self.error = f"The server at {self.where} sent a message this extension cannot read ({e})."
        except Exception as e:  # the thread's last word must reach the panel, not stderr
            self.error = f"The connection to {self.where} failed ({e.__class__.__name__}: {e})."
        finally:
            self._greeted.set()  # open() never waits on a thread that has ended
