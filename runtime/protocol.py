"""Wire format of the pose stream, protocol version 1: the one place that defines it in Python.

godot_bridge serves it (godot_bridge.protocol is this module) and the Blender add-on's server source reads it.

godot_bridge/PROTOCOL.md describes the same format for people and for the GDScript side; tests parse
that document and compare it with the tables here and with the constants in addons/motion_vae/protocol.gd.
"""
from __future__ import annotations

import ipaddress
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
MAGIC = b"MVAE"
SERVER_NAME = "motionvae-godot-bridge"

# Binary frame layout, little-endian, as (field, struct code) in wire order.
HEADER_FIELDS: tuple[tuple[str, str], ...] = (
    ("magic", "4s"), ("version", "H"), ("flags", "H"), ("frame", "I"), ("ack", "I"),
    ("characters", "H"), ("bones", "H"),
)
HEADER = struct.Struct("<" + "".join(code for _, code in HEADER_FIELDS))
# One record per character; local_rotations (4 f32 per bone) follow these fixed fields.
RECORD_FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "I"), ("flags", "I"), ("root_position", "3f"), ("root_rotation", "4f"),
)
RECORD_BASE = struct.Struct("<" + "".join(code for _, code in RECORD_FIELDS))

FRAME_FLAG_STEP = 1  # header flags bit 0: this frame answers a lockstep step request
CHARACTER_FLAG_RESET = 1  # record flags bit 0: the character was (re)placed on a start frame this frame

MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF
MAX_SEED = 2**53 - 1  # the largest integer every JSON implementation (GDScript, JavaScript) keeps exact
MAX_COORDINATE_M = 1.0e4
MAX_SPEED_M_S = 20.0
MAX_YAW_RAD = 1.0e3
MAX_PATH_POINTS = 1024
MAX_RIG_BONES = 1024  # bones a bind message may describe
MAX_NAME_CHARS = 256
MAX_RIG_COORDINATE = 1.0e6  # rest heads, in the rig's own units

# What each code means is in PROTOCOL.md ("Error codes"), which a test keeps equal to this list.
ERROR_CODES = ("bad_json", "bad_message", "unknown_type", "binary_not_allowed", "no_free_slot",
               "unknown_character", "no_policy", "not_lockstep", "server_full", "internal_error")

CONTROL_TASKS = ("joystick", "target", "path", "none")


class ProtocolError(ValueError):
    """A message that breaks the protocol; code is one of ERROR_CODES, seq the message's seq if it had one."""

    def __init__(self, code: str, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.seq = seq


@dataclass(frozen=True)
class Field:
    """One field of a client message: its kind, whether it is required, and its allowed range."""

    kind: str  # int | number | bool | ids | vec2 | path | task | names | parents | points | bone_map
    required: bool = False
    low: float = -math.inf
    high: float = math.inf
    when: str | None = None  # "task=joystick": required under that condition, refused otherwise
    optional: bool = False  # with when: allowed under that condition, but not required


_IDS = Field("ids", low=0, high=MAX_U16)
_START = Field("int", low=0, high=MAX_U16)
_POSITION = Field("vec2", low=-MAX_COORDINATE_M, high=MAX_COORDINATE_M)
_YAW = Field("number", low=-MAX_YAW_RAD, high=MAX_YAW_RAD)

# Fields every client message may carry besides its own.
COMMON_FIELDS: dict[str, Field] = {"type": Field("string", required=True), "seq": Field("int", low=0, high=MAX_U32)}
CLIENT_MESSAGES: dict[str, dict[str, Field]] = {
    "spawn": {"count": Field("int", low=1, high=MAX_U16), "start": _START, "position": _POSITION, "yaw": _YAW,
              "foot_lock": Field("bool")},
    "despawn": {"ids": _IDS},
    "reset": {"ids": _IDS, "start": _START, "position": _POSITION, "yaw": _YAW},
    "control": {
        "ids": _IDS,
        "task": Field("task", required=True),
        "direction": Field("vec2", low=-MAX_COORDINATE_M, high=MAX_COORDINATE_M, when="task=joystick"),
        "speed": Field("number", low=0.0, high=MAX_SPEED_M_S, when="task=joystick"),
        "target": Field("vec2", low=-MAX_COORDINATE_M, high=MAX_COORDINATE_M, when="task=target"),
        "path": Field("path", low=-MAX_COORDINATE_M, high=MAX_COORDINATE_M, when="task=path"),
        "closed": Field("bool", when="task=path", optional=True),
        "foot_lock": Field("bool"),
    },
    "pause": {"paused": Field("bool", required=True)},
    "seed": {"seed": Field("int", required=True, low=0, high=MAX_SEED)},
    "step": {},
    "stats": {},
    "bind": {"bones": Field("names", required=True), "parents": Field("parents", required=True),
             "heads": Field("points", required=True, low=-MAX_RIG_COORDINATE, high=MAX_RIG_COORDINATE),
             "map": Field("bone_map")},
}
SERVER_MESSAGES = ("hello", "ok", "error", "stats")


@dataclass(frozen=True)
class ClientMessage:
    """A validated client message: its type, its seq (None when absent) and its own fields."""

    type: str
    seq: int | None
    fields: dict[str, Any]


def is_loopback(host: str) -> bool:
    """Whether host names only this machine (127.0.0.0/8, ::1 or localhost): no token needed there."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str | bytes) -> Any:
    """JSON with NaN/Infinity refused and every parser failure folded into ProtocolError."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise ProtocolError("bad_json", f"not UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise ProtocolError("bad_json", f"invalid JSON at character {e.pos}: {e.msg}") from None
    except RecursionError:
        raise ProtocolError("bad_json", "JSON nested too deeply") from None
    except ValueError as e:  # NaN/Infinity, or an integer too long to convert
        raise ProtocolError("bad_json", str(e).split(";")[0]) from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_integer(v: Any) -> bool:
    """An int, or a float with an integral value: Godot's JSON parser turns every number into a float."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _check_field(msg_type: str, name: str, spec: Field, value: Any) -> Any:
    """The field's value in canonical form, or a bad_message ProtocolError naming the field."""
    where = f"{msg_type}.{name}"
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ProtocolError("bad_message", f"{where} must be true or false")
        return value
    if spec.kind == "task":
        if value not in CONTROL_TASKS:
            raise ProtocolError("bad_message", f"{where} must be one of {', '.join(CONTROL_TASKS)}")
        return value
    if spec.kind == "int":
        if not _is_integer(value) or not spec.low <= value <= spec.high:
            raise ProtocolError("bad_message", f"{where} must be an integer in [{spec.low:g}, {spec.high:g}]")
        return int(value)
    if spec.kind == "number":
        if not _is_number(value) or not math.isfinite(value) or not spec.low <= value <= spec.high:
            raise ProtocolError("bad_message", f"{where} must be a number in [{spec.low:g}, {spec.high:g}]")
        return float(value)
    if spec.kind == "vec2":
        if (not isinstance(value, list) or len(value) != 2
                or not all(_is_number(v) and math.isfinite(v) and spec.low <= v <= spec.high for v in value)):
            raise ProtocolError("bad_message", f"{where} must be [x, z], numbers in [{spec.low:g}, {spec.high:g}]")
        return (float(value[0]), float(value[1]))
    if spec.kind == "path":
        if (not isinstance(value, list) or not 2 <= len(value) <= MAX_PATH_POINTS
                or not all(isinstance(p, list) and len(p) == 2 and all(
                    _is_number(v) and math.isfinite(v) and spec.low <= v <= spec.high for v in p) for p in value)):
            raise ProtocolError("bad_message", f"{where} must be 2 to {MAX_PATH_POINTS} points [x, z], numbers in "
                                               f"[{spec.low:g}, {spec.high:g}]")
        return tuple((float(p[0]), float(p[1])) for p in value)
    if spec.kind == "ids":
        if (not isinstance(value, list) or not 1 <= len(value) <= MAX_U16
                or not all(_is_integer(v) and spec.low <= v <= spec.high for v in value)):
            raise ProtocolError("bad_message", f"{where} must be a non-empty list of character ids")
        ids = tuple(int(v) for v in value)
        if len(set(ids)) != len(ids):
            raise ProtocolError("bad_message", f"{where} lists an id twice")
        return ids
    return _check_rig_field(where, spec, value)


def _check_rig_field(where: str, spec: Field, value: Any) -> Any:
    """A bind message's fields: bone names, parent indices, rest heads and a bone map."""
    if spec.kind == "names":
        if (not isinstance(value, list) or not 1 <= len(value) <= MAX_RIG_BONES
                or not all(isinstance(v, str) and 1 <= len(v) <= MAX_NAME_CHARS for v in value)):
            raise ProtocolError("bad_message", f"{where} must be 1 to {MAX_RIG_BONES} names of 1 to "
                                               f"{MAX_NAME_CHARS} characters")
        if len(set(value)) != len(value):
            raise ProtocolError("bad_message", f"{where} names a bone twice")
        return tuple(value)
    if spec.kind == "parents":
        if not isinstance(value, list) or not all(_is_integer(v) and -1 <= v < MAX_RIG_BONES for v in value):
            raise ProtocolError("bad_message", f"{where} must be a list of bone indices (-1 for a root)")
        return tuple(int(v) for v in value)
    if spec.kind == "points":
        if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 3 and all(
                _is_number(v) and math.isfinite(v) and spec.low <= v <= spec.high for v in p) for p in value):
            raise ProtocolError("bad_message", f"{where} must be a list of [x, y, z], numbers in "
                                               f"[{spec.low:g}, {spec.high:g}]")
        return tuple(tuple(float(v) for v in p) for p in value)
    if spec.kind == "bone_map":
        if not isinstance(value, dict) or len(value) > MAX_RIG_BONES or not all(
                isinstance(v, str) and len(k) <= MAX_NAME_CHARS and len(v) <= MAX_NAME_CHARS
                for k, v in value.items()):
            raise ProtocolError("bad_message", f"{where} must be an object of joint name -> bone name")
        return dict(value)
    raise AssertionError(f"unknown field kind {spec.kind}")


def _check_rig(fields: dict[str, Any]) -> None:
    """A bind message's arrays agree in length and its parents form a tree."""
    n = len(fields["bones"])
    if len(fields["parents"]) != n or len(fields["heads"]) != n:
        raise ProtocolError("bad_message", f"bind.parents and bind.heads must have one entry per bone ({n})")
    parents = fields["parents"]
    for b in range(n):
        p, steps = parents[b], 0
        while p >= 0:
            if p >= n or steps > n:
                raise ProtocolError("bad_message", f"bind.parents: bone {b} ({fields['bones'][b][:40]!r}) has "
                                                   "no root above it")
            p, steps = parents[p], steps + 1


def decode_client_message(text: str | bytes) -> ClientMessage:
    """Parse and validate one client text message; raises ProtocolError with the code to reply."""
    obj = _loads(text)
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object")
    seq = obj.get("seq")
    if seq is not None:
        seq = _check_field("message", "seq", COMMON_FIELDS["seq"], seq)
    msg_type = obj.get("type")
    try:
        if not isinstance(msg_type, str):
            raise ProtocolError("bad_message", "a message needs a string field 'type'")
        if msg_type not in CLIENT_MESSAGES:
            shown = msg_type if len(msg_type) <= 40 else msg_type[:40] + "..."
            raise ProtocolError("unknown_type", f"unknown message type {shown!r}")
        return ClientMessage(msg_type, seq, _check_fields(msg_type, obj))
    except ProtocolError as e:
        e.seq = seq
        raise


def _check_fields(msg_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The message's own fields, validated against CLIENT_MESSAGES[msg_type], defaults left out."""
    specs = CLIENT_MESSAGES[msg_type]
    extra = [k for k in obj if k not in specs and k not in COMMON_FIELDS]
    if extra:
        raise ProtocolError("bad_message", f"{msg_type} has no field {str(extra[0])[:40]!r}")
    fields: dict[str, Any] = {}
    for name, spec in specs.items():
        value = obj.get(name)
        applies = spec.when is None or obj.get(spec.when.split("=")[0]) == spec.when.split("=")[1]
        if value is None:
            if spec.required or (spec.when is not None and applies and not spec.optional):
                raise ProtocolError("bad_message", f"{msg_type} needs field {name!r}"
                                    + (f" when {spec.when}" if spec.when else ""))
            continue
        if not applies:
            raise ProtocolError("bad_message", f"{msg_type}.{name} is only allowed when {spec.when}")
        fields[name] = _check_field(msg_type, name, spec, value)
    if msg_type == "bind":
        _check_rig(fields)
    if msg_type == "control" and fields.get("direction") is not None and math.hypot(*fields["direction"]) < 1e-6:
        raise ProtocolError("bad_message", "control.direction must not be [0, 0]; send speed 0 to stand still")
    return fields


def encode_client_message(msg_type: str, seq: int | None = None, **fields: Any) -> str:
    """A client message as JSON text, validated against the schema (for Python clients and tests)."""
    obj: dict[str, Any] = {"type": msg_type, **({} if seq is None else {"seq": seq}), **fields}
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    decode_client_message(text)
    return text


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def encode_hello(model_name: str, fps: float, latent_size: int, tasks: list[str], skeleton: dict,
                 start_frames: int, characters: int, lockstep: bool, max_clients: int,
                 max_message_bytes: int) -> str:
    """The handshake the server sends first on every connection."""
    return _dumps({
        "type": "hello", "protocol": PROTOCOL_VERSION, "server": SERVER_NAME,
        "model": model_name, "fps": fps, "latent_size": latent_size, "tasks": tasks,
        "skeleton": skeleton, "start_frames": start_frames, "characters": characters, "lockstep": lockstep,
        "limits": {"max_clients": max_clients, "characters_per_client": characters,
                   "max_message_bytes": max_message_bytes},
    })


def encode_ok(request: str, seq: int | None, **extra: Any) -> str:
    """The reply to a client message that was carried out."""
    return _dumps({"type": "ok", "request": request, "seq": seq, **extra})


def encode_error(code: str, message: str, seq: int | None = None) -> str:
    """The reply to a client message that was refused; nothing it asked for was done."""
    if code not in ERROR_CODES:
        raise AssertionError(f"undocumented error code {code}")
    return _dumps({"type": "error", "code": code, "message": message, "seq": seq})


def encode_stats(seq: int | None, stats: dict[str, Any]) -> str:
    """The reply to a stats request."""
    return _dumps({"type": "stats", "seq": seq, **stats})


def decode_server_message(text: str | bytes) -> dict[str, Any]:
    """Parse a server text message (for Python clients and tests)."""
    obj = _loads(text)
    if not isinstance(obj, dict) or obj.get("type") not in SERVER_MESSAGES:
        raise ProtocolError("bad_message", "not a server message")
    return obj


def record_dtype(n_bones: int) -> np.dtype:
    """numpy dtype of one character record, byte for byte as on the wire."""
    return np.dtype([("id", "<u4"), ("flags", "<u4"), ("root_position", "<f4", (3,)),
                     ("root_rotation", "<f4", (4,)), ("local_rotations", "<f4", (n_bones, 4))])


def record_size(n_bones: int) -> int:
    """Bytes in one character record."""
    return RECORD_BASE.size + 16 * n_bones


def frame_size(n_characters: int, n_bones: int) -> int:
    """Bytes in one binary frame."""
    return HEADER.size + n_characters * record_size(n_bones)


def pack_records(ids: np.ndarray, flags: np.ndarray, root_position: np.ndarray, root_rotation: np.ndarray,
                 local_rotations: np.ndarray) -> np.ndarray:
    """Character records as a structured array; a frame sends any subset of its rows."""
    n, n_bones = local_rotations.shape[:2]
    rec = np.empty(n, record_dtype(n_bones))
    rec["id"] = ids
    rec["flags"] = flags
    rec["root_position"] = root_position
    rec["root_rotation"] = root_rotation
    rec["local_rotations"] = local_rotations
    return rec


def encode_frame(frame: int, ack: int, records: np.ndarray, flags: int = 0) -> bytes:
    """One binary frame: the header, then the given character records."""
    n_bones = records.dtype["local_rotations"].shape[0]
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, flags, frame & MAX_U32, ack & MAX_U32, len(records), n_bones)
    return header + records.tobytes()


@dataclass(frozen=True)
class Frame:
    """A decoded binary frame: header fields and per-character arrays (float32, x y z w quaternions)."""

    frame: int
    ack: int
    flags: int
    ids: np.ndarray  # (n,) uint32
    character_flags: np.ndarray  # (n,) uint32
    root_position: np.ndarray  # (n, 3)
    root_rotation: np.ndarray  # (n, 4)
    local_rotations: np.ndarray  # (n, bones, 4)


def decode_frame(data: bytes, n_bones: int | None = None) -> Frame:
    """Parse a binary frame; raises ProtocolError naming the byte offset of the first problem."""
    if len(data) < HEADER.size:
        raise ProtocolError("bad_message", f"frame of {len(data)} bytes is shorter than its {HEADER.size}-byte header")
    magic, version, flags, frame, ack, count, bones = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("bad_message", f"byte 0: magic {magic!r} is not {MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_message", f"byte 4: protocol version {version}, expected {PROTOCOL_VERSION}")
    if n_bones is not None and bones != n_bones:
        raise ProtocolError("bad_message", f"byte 18: {bones} bones, the handshake's skeleton has {n_bones}")
    expected = frame_size(count, bones)
    if len(data) != expected:
        raise ProtocolError("bad_message", f"byte {min(len(data), expected)}: frame of {count} characters x "
                                           f"{bones} bones must be {expected} bytes, got {len(data)}")
    rec = np.frombuffer(data, record_dtype(bones), count=count, offset=HEADER.size)
    return Frame(frame, ack, flags, rec["id"].copy(), rec["flags"].copy(), rec["root_position"].copy(),
                 rec["root_rotation"].copy(), rec["local_rotations"].copy())
