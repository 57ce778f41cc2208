"""The bridge protocol: PROTOCOL.md's tables against protocol.py and the addon's protocol.gd, codecs, validation."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from godot_bridge import protocol as P

BRIDGE = Path(__file__).resolve().parents[1] / "godot_bridge"
DOC = (BRIDGE / "PROTOCOL.md").read_text(encoding="utf-8")
ADDON = BRIDGE / "addons" / "motion_vae"
GD_PROTOCOL = (ADDON / "protocol.gd").read_text(encoding="utf-8")
GD_ALL = "\n".join(p.read_text(encoding="utf-8") for p in sorted(ADDON.glob("*.gd")))
STRUCT_TYPES = {"char[4]": "4s", "u16": "H", "u32": "I", "f32[3]": "3f", "f32[4]": "4f"}


def section(heading: str, text: str = DOC) -> str:
    """The text under a markdown heading, up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n") + len(heading) + 1
    stop = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(text, start)
    return text[start:stop.start() if stop else len(text)]


def table(text: str) -> list[dict[str, str]]:
    """The first markdown table in text, as rows keyed by the header cells."""
    all_lines = text.splitlines()
    first = next(i for i, ln in enumerate(all_lines) if ln.startswith("|"))
    lines = []
    for ln in all_lines[first:]:
        if not ln.startswith("|"):
            break
        lines.append(ln)
    assert len(lines) >= 2, f"no table in {text[:80]!r}"
    split = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    return [dict(zip(split[0], row)) for row in split[2:]]


def gd_constants(text: str) -> dict[str, str]:
    """`const NAME := value` lines of a GDScript file."""
    return dict(re.findall(r"^const (\w+) := (.+?)\s*(?:#.*)?$", text, re.M))


def layout_rows(heading: str) -> list[dict[str, str]]:
    return table(section(heading))


def test_header_table_matches_struct_and_gdscript():
    rows = layout_rows("### Frame header")
    assert [r["field"] for r in rows] == [name for name, _ in P.HEADER_FIELDS]
    offset = 0
    gd = gd_constants(GD_PROTOCOL)
    for row, (name, code) in zip(rows, P.HEADER_FIELDS):
        assert STRUCT_TYPES[row["type"]] == code, name
        assert int(row["offset"]) == offset and int(row["size"]) == struct.calcsize("<" + code), name
        assert int(gd[f"HEADER_OFFSET_{name.upper()}"]) == offset, name
        offset += struct.calcsize("<" + code)
    assert offset == P.HEADER.size == int(gd["HEADER_SIZE"])


def test_record_table_matches_struct_and_gdscript():
    rows = layout_rows("### Character record")
    fixed, last = rows[:-1], rows[-1]
    assert [r["field"] for r in fixed] == [name for name, _ in P.RECORD_FIELDS]
    gd = gd_constants(GD_PROTOCOL)
    offset = 0
    for row, (name, code) in zip(fixed, P.RECORD_FIELDS):
        assert STRUCT_TYPES[row["type"]] == code, name
        assert int(row["offset"]) == offset and int(row["size"]) == struct.calcsize("<" + code), name
        assert int(gd[f"RECORD_OFFSET_{name.upper()}"]) == offset, name
        offset += struct.calcsize("<" + code)
    assert (last["field"], last["type"], last["size"]) == ("local_rotations", "f32[4 × bones]", "16 × bones")
    assert int(last["offset"]) == offset == P.RECORD_BASE.size == int(gd["RECORD_BASE_SIZE"])
    assert int(gd["RECORD_OFFSET_LOCAL_ROTATIONS"]) == offset and int(gd["BONE_SIZE"]) == 16
    assert P.record_size(22) == P.record_dtype(22).itemsize == 36 + 16 * 22


def test_flags_magic_and_version_agree_everywhere():
    gd = gd_constants(GD_PROTOCOL)
    assert gd["MAGIC"] == f'"{P.MAGIC.decode()}"' and f'"{P.MAGIC.decode()}"' in section("### Frame header")
    assert int(gd["PROTOCOL_VERSION"]) == P.PROTOCOL_VERSION == 1
    assert int(gd["FRAME_FLAG_STEP"]) == P.FRAME_FLAG_STEP and f"FRAME_FLAG_STEP = {P.FRAME_FLAG_STEP}" in DOC
    assert int(gd["CHARACTER_FLAG_RESET"]) == P.CHARACTER_FLAG_RESET
    assert f"CHARACTER_FLAG_RESET = {P.CHARACTER_FLAG_RESET}" in DOC


def _required(spec: P.Field) -> str:
    if spec.when and spec.optional:
        return f"no, {spec.when} only"
    return f"when {spec.when}" if spec.when else ("yes" if spec.required else "no")


def test_client_message_tables_match_the_schema():
    messages = section("## Client messages")
    common = table(messages)
    assert {r["field"]: r["required"] for r in common} == {k: _required(v) for k, v in P.COMMON_FIELDS.items()}
    documented = re.findall(r"^### (\w+)$", messages, re.M)
    assert documented == list(P.CLIENT_MESSAGES)
    for name, fields in P.CLIENT_MESSAGES.items():
        body = section(f"### {name}", messages)
        if not fields:
            assert "No fields." in body, name
            continue
        rows = table(body)
        assert {r["field"]: r["required"] for r in rows} == {k: _required(v) for k, v in fields.items()}, name


def test_error_code_tables_match_protocol_py_and_the_addon():
    codes = section("## Error codes")
    server_codes = [r["code"] for r in table(codes)]
    assert server_codes == list(P.ERROR_CODES)
    client_codes = [r["code"] for r in table(codes.split("Raised by the Godot client itself")[1])]
    emitted = set(re.findall(r'error\.emit\("(\w+)"', GD_ALL))
    assert emitted == set(client_codes), "codes the addon raises itself must be documented, and only those"


def test_addon_sends_exactly_the_documented_message_types():
    sent = set(re.findall(r'send_message\("(\w+)"', GD_ALL))
    assert sent == set(P.CLIENT_MESSAGES)


def test_hello_table_matches_encode_hello():
    text = P.encode_hello("m", 30.0, 32, [], {"names": ["Hips"], "parents": [-1], "offsets": [[0, 0, 0]]},
                          3, 4, False, 8, 65536)
    hello = json.loads(text)
    assert [r["field"] for r in table(section("### hello"))] == list(hello)
    assert list(hello["limits"]) == ["max_clients", "characters_per_client", "max_message_bytes"]


def test_ok_and_error_tables_list_every_field_the_encoders_write():
    ok_fields = {r["field"] for r in table(section("### ok"))}
    for extra in ({"ids": [0]}, {"ids": [0], "task": "none"}, {"paused": True}, {"seed": 3}):
        assert set(json.loads(P.encode_ok("x", 1, **extra))) <= ok_fields
    assert [r["field"] for r in table(section("### error"))] == list(json.loads(P.encode_error("bad_json", "m", 2)))


def random_records(n: int, bones: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, bones, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return P.pack_records(np.arange(n, dtype=np.uint32) * 3, np.arange(n) % 2, rng.normal(size=(n, 3)),
                          q[:, 0], q)


def test_frame_round_trip_and_byte_layout():
    rec = random_records(3, 5)
    data = P.encode_frame(70000, 12, rec, P.FRAME_FLAG_STEP)
    assert len(data) == P.frame_size(3, 5) == 20 + 3 * (36 + 80)
    assert data[:4] == b"MVAE" and struct.unpack_from("<HHIIHH", data, 4) == (1, 1, 70000, 12, 3, 5)
    # The second record's root position sits where the record table says.
    at = 20 + (36 + 80) + 8
    assert np.allclose(struct.unpack_from("<3f", data, at), rec["root_position"][1])
    f = P.decode_frame(data, n_bones=5)
    assert (f.frame, f.ack, f.flags) == (70000, 12, P.FRAME_FLAG_STEP)
    assert f.ids.tolist() == [0, 3, 6] and f.character_flags.tolist() == [0, 1, 0]
    for name in ("root_position", "root_rotation", "local_rotations"):
        assert np.array_equal(getattr(f, name), rec[name]), name
    empty = P.decode_frame(P.encode_frame(1, 0, random_records(0, 5)))
    assert empty.ids.shape == (0,) and empty.local_rotations.shape == (0, 5, 4)


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d[:10], "shorter than"),
    (lambda d: b"XXXX" + d[4:], "byte 0"),
    (lambda d: d[:4] + struct.pack("<H", 2) + d[6:], "byte 4"),
    (lambda d: d[:-1], "must be"),
    (lambda d: d + b"\0" * 4, "must be"),
])
def test_bad_frames_are_refused_with_the_byte_offset(mutate, where):
    data = P.encode_frame(1, 0, random_records(2, 4))
    with pytest.raises(P.ProtocolError, match=where):
        P.decode_frame(mutate(data))
    with pytest.raises(P.ProtocolError, match="byte 18"):
        P.decode_frame(data, n_bones=5)


@pytest.mark.parametrize("msg_type, fields, expected", [
    ("spawn", {}, {}),
    ("spawn", {"count": 2, "start": 0, "position": [1, -2.5], "yaw": 3.1}, {"count": 2, "start": 0,
                                                                           "position": (1.0, -2.5), "yaw": 3.1}),
    ("spawn", {"count": 2.0}, {"count": 2}),
    ("despawn", {"ids": [0, 2]}, {"ids": (0, 2)}),
    ("reset", {"ids": [1.0], "start": 1}, {"ids": (1,), "start": 1}),
    ("control", {"task": "joystick", "direction": [0, 1], "speed": 1.5},
     {"task": "joystick", "direction": (0.0, 1.0), "speed": 1.5}),
    ("control", {"task": "target", "target": [3, 4], "ids": [0]}, {"task": "target", "target": (3.0, 4.0), "ids": (0,)}),
    ("control", {"task": "none"}, {"task": "none"}),
    ("pause", {"paused": True}, {"paused": True}),
    ("seed", {"seed": 2**53 - 1}, {"seed": 2**53 - 1}),
    ("step", {}, {}),
    ("stats", {}, {}),
])
def test_valid_client_messages(msg_type, fields, expected):
    msg = P.decode_client_message(json.dumps({"type": msg_type, "seq": 5, **fields}))
    assert (msg.type, msg.seq, msg.fields) == (msg_type, 5, expected)
    assert P.decode_client_message(P.encode_client_message(msg_type, **fields)).seq is None


HOSTILE = [
    ("{", "bad_json"),
    ("", "bad_json"),
    (b"\xff\xfe{}", "bad_json"),
    ('{"type": "spawn", "count": NaN}', "bad_json"),
    ('{"type": "spawn", "count": Infinity}', "bad_json"),
    ('{"type": "seed", "seed": ' + "9" * 5000 + "}", "bad_json"),
    ("[" * 100000 + "]" * 100000, "bad_json"),
    ("[]", "bad_message"),
    ('"spawn"', "bad_message"),
    ("{}", "bad_message"),
    ('{"type": 3}', "bad_message"),
    ('{"type": "teleport"}', "unknown_type"),
    ('{"type": "' + "x" * 5000 + '"}', "unknown_type"),
    ('{"type": "spawn", "count": 0}', "bad_message"),
    ('{"type": "spawn", "count": 1e300}', "bad_message"),
    ('{"type": "spawn", "count": 1.5}', "bad_message"),
    ('{"type": "spawn", "count": true}', "bad_message"),
    ('{"type": "spawn", "count": "2"}', "bad_message"),
    ('{"type": "spawn", "colour": "red"}', "bad_message"),
    ('{"type": "spawn", "position": [1]}', "bad_message"),
    ('{"type": "spawn", "position": [1, 1e9]}', "bad_message"),
    ('{"type": "spawn", "yaw": 1e308}', "bad_message"),
    ('{"type": "despawn", "ids": []}', "bad_message"),
    ('{"type": "despawn", "ids": [0, 0]}', "bad_message"),
    ('{"type": "despawn", "ids": [-1]}', "bad_message"),
    ('{"type": "despawn", "ids": 0}', "bad_message"),
    ('{"type": "control"}', "bad_message"),
    ('{"type": "control", "task": "fly"}', "bad_message"),
    ('{"type": "control", "task": "joystick", "direction": [0, 1]}', "bad_message"),
    ('{"type": "control", "task": "joystick", "direction": [0, 0], "speed": 1}', "bad_message"),
    ('{"type": "control", "task": "joystick", "direction": [0, 1], "speed": 99}', "bad_message"),
    ('{"type": "control", "task": "target", "direction": [0, 1], "target": [0, 1]}', "bad_message"),
    ('{"type": "control", "task": "none", "speed": 1}', "bad_message"),
    ('{"type": "pause", "paused": 1}', "bad_message"),
    ('{"type": "seed", "seed": -1}', "bad_message"),
    ('{"type": "seed", "seed": 9007199254740992}', "bad_message"),
    ('{"type": "step", "seq": -1}', "bad_message"),
    ('{"type": "step", "seq": 4294967296}', "bad_message"),
    ('{"type": "step", "count": 3}', "bad_message"),
]


@pytest.mark.parametrize("text, code", HOSTILE)
def test_hostile_client_messages_get_the_documented_code(text, code):
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message(text)
    assert err.value.code == code and code in P.ERROR_CODES
    assert len(str(err.value)) < 300, "error messages stay one short sentence whatever the input"


def test_errors_carry_the_seq_of_the_refused_message():
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message('{"type": "teleport", "seq": 9}')
    assert err.value.seq == 9
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message('{"type": "spawn", "count": 0, "seq": 10}')
    assert err.value.seq == 10 and "spawn.count" in str(err.value)
    reply = json.loads(P.encode_error(err.value.code, str(err.value), err.value.seq))
    assert reply == {"type": "error", "code": "bad_message", "message": str(err.value), "seq": 10}


def test_undocumented_error_codes_cannot_be_sent():
    with pytest.raises(AssertionError):
        P.encode_error("oops", "no such code")
