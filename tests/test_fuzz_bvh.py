"""Fuzz `trainer.prepare` with mutated BVH files and arguments (seeded): each case either gives a frames.npz
that holds finite, consistent data, or is refused by the contract (exit 2, one line naming the file or the
option, no output, no temp file)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from runtime.bvh import write_bvh
from tests.conftest import random_motion, run_module, small_skeleton
from tests.contract import check_refusal, run_main, tally
from trainer.prepare import main as prepare_main

SEED = 18
BAD_NUMBERS = ["nan", "inf", "-inf", "1e300", "-1e300", "1e9", "0", "-0", "abc", "1e", "", "0x10", "1_0",
               "1e-320", "NaN", "+", "--1", "1e308", "3.4e38", "7"]
FRAME_TIMES = ["0", "-1", "1e9", "1e308", "1e-9", "nan", "inf", "x", "0.001", "10", "0.0083333", "10.5", "1e-3",
               "0.0333333", ""]
FRAME_COUNTS = ["0", "-1", "1000000000", "abc", "+1", "2.5", str(2 ** 63), "1e3", ""]
GARBAGE = [b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"{", b"}", b"\r", b"\t", b"ROOT X", b"JOINT", b"End Site",
           b"MOTION", b"CHANNELS 3", b"\xe2\x80\xa8", b"\x0b", b"\x1c"]


def base_files() -> list[str]:
    """Valid BVH texts: Y-up in metres with End Sites, and another with every joint's positions in XYZ order."""
    texts = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, kwargs in enumerate(({}, {"order": "XYZ", "position_joints": "all", "scale": 100.0})):
            path = Path(tmp) / f"base{k}.bvh"
            write_bvh(path, random_motion(small_skeleton(), 45, seed=k), **kwargs)
            texts.append(path.read_text())
    return texts


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _motion_start(lines: list[str]) -> int:
    return next(i for i, ln in enumerate(lines) if ln.strip() == "MOTION")


def mutate(text: str, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of a BVH text: (what was done, the file's bytes)."""
    lines = _lines(text)
    kind = rng.integers(16)
    i = int(rng.integers(len(lines)))
    m = _motion_start(lines)
    if kind == 0:
        del lines[i]
        what = f"delete line {i + 1}"
    elif kind == 1:
        lines.insert(i, lines[i])
        what = f"duplicate line {i + 1}"
    elif kind == 2:
        j = int(rng.integers(len(lines)))
        lines[i], lines[j] = lines[j], lines[i]
        what = f"swap lines {i + 1} and {j + 1}"
    elif kind in (3, 4, 5):
        numeric = [(k, t) for k, ln in enumerate(lines) for t, tok in enumerate(ln.split())
                   if tok.lstrip("-").replace(".", "", 1).isdigit()]
        k, t = numeric[int(rng.integers(len(numeric)))]
        toks = lines[k].split()
        toks[t] = str(rng.choice(BAD_NUMBERS))
        lines[k] = "\t".join(toks)
        what = f"line {k + 1} token {t} -> {toks[t]!r}"
    elif kind == 6:
        data = text.encode()
        cut = int(rng.integers(len(data)))
        return f"truncate at byte {cut}", data[:cut]
    elif kind == 7:
        data = bytearray(text.encode())
        at = int(rng.integers(len(data)))
        junk = GARBAGE[int(rng.integers(len(GARBAGE)))]
        data[at:at] = junk
        return f"insert {junk!r} at byte {at}", bytes(data)
    elif kind == 8:
        lines[m + 1] = f"Frames: {rng.choice(FRAME_COUNTS)}"
        what = lines[m + 1]
    elif kind == 9:
        lines[m + 2] = f"Frame Time: {rng.choice(FRAME_TIMES)}"
        what = lines[m + 2]
    elif kind == 10:
        names = [(k, ln.split(None, 1)[1]) for k, ln in enumerate(lines) if ln.split()[:1] in (["JOINT"], ["ROOT"])]
        (a, _), (_, b) = (names[int(rng.integers(len(names)))] for _ in range(2))
        indent = lines[a][:len(lines[a]) - len(lines[a].lstrip())]
        lines[a] = f"{indent}{lines[a].split()[0]} {b}"
        what = f"joint on line {a + 1} renamed {b!r}"
    elif kind == 11:
        chans = [k for k, ln in enumerate(lines) if ln.strip().startswith("CHANNELS")]
        k = chans[int(rng.integers(len(chans)))]
        toks = lines[k].split()
        variant = int(rng.integers(4))
        if variant == 0:
            toks[1] = str(int(toks[1]) + int(rng.choice([-1, 1])))
        elif variant == 1:
            toks[-1] = "Wrotation"
        elif variant == 2:
            toks[-1] = toks[-2]
        else:
            toks = toks[:1] + [str(int(toks[1]) - 1)] + toks[2:-1]
        lines[k] = "\t".join(toks)
        what = f"line {k + 1} -> {lines[k]!r}"
    elif kind == 12:
        braces = [k for k, ln in enumerate(lines[:m]) if ln.strip() in ("{", "}")]
        k = braces[int(rng.integers(len(braces)))]
        del lines[k]
        what = f"remove the brace on line {k + 1}"
    elif kind == 13:
        variant = int(rng.integers(5))
        if variant == 0:
            return "UTF-8 byte-order mark", b"\xef\xbb\xbf" + text.encode()
        if variant == 1:
            return "CRLF line ends", text.replace("\n", "\r\n").encode()
        if variant == 2:
            return "keywords in lower case", text.replace("HIERARCHY", "hierarchy").replace("MOTION", "motion").encode()
        if variant == 3:
            return "trailing spaces", "\n".join(ln + "   " for ln in lines).encode()
        return "blank lines between frames", "\n\n".join(lines).encode()
    elif kind == 14:
        rows = list(range(m + 3, len(lines) - 1))
        k = rows[int(rng.integers(len(rows)))]
        toks = lines[k].split()
        toks = toks + ["0"] if rng.integers(2) else toks[:-1]
        lines[k] = " ".join(toks)
        what = f"frame row {k + 1} now has {len(toks)} values"
    else:
        variant = int(rng.integers(4))
        if variant == 0:
            return "empty file", b""
        if variant == 1:
            return "whitespace only", b" \n\t\n"
        if variant == 2:
            return "random bytes", rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
        lines.insert(m, "ROOT Second\n{\nOFFSET 0 0 0\n}")
        what = "a second ROOT"
    return what, "\n".join(lines).encode()


ARGUMENTS = [["--fps", v] for v in ("inf", "nan", "-inf", "1e7", "0", "-1", "1e-9", "24", "60", "1000", "1001",
                                    "abc", "1e308")] + \
            [["--scale", v] for v in ("1e300", "0", "-1", "nan", "inf", "furlong", "cm", "1e-7", "1e4", "mm",
                                      "1e-6", "1000", "0.01")] + \
            [["--up", "x"], ["--up", "z"], ["--joints", "0"], ["--joints", "1000"], ["--joints", "Nope"],
             ["--joints", "9"], ["--joints", "Hips,Spine,Head"], ["--joints", "Spine"], ["--joints", ",,"],
             ["--mirror"], ["--no-contacts"], ["--joints", "-3"], ["--fps", "30", "--fps", "nan"],
             ["--preview", "p.txt"], ["--preview", "p.png"]]


def check_frames(path, case: str) -> None:
    """A written frames.npz holds finite data and consistent clip ends."""
    with np.load(path) as f:
        data, ends = f["data"], f["end_indices"]
        assert data.ndim == 2 and len(data) > 0 and np.isfinite(data).all(), case
        assert ends[-1] == len(data) - 1 and np.all(np.diff(ends) > 0), case
        assert 0 < float(f["fps"]) <= 1000, case


def run_case(tmp_path, name: str, content: bytes, args: list[str], category: str, culprits: list[str]) -> bool:
    src = tmp_path / f"{name}.bvh"
    src.write_bytes(content)
    out = tmp_path / f"{name}.npz"
    preview = [tmp_path / a for a in args if a.startswith("p.")]
    argv = [src, "-o", out, "-q", *[str(tmp_path / a) if a.startswith("p.") else a for a in args]]
    result = run_main(prepare_main, argv)
    if result.code == 0:
        check_frames(out, f"{category} {name}")
        out.unlink()
        for p in preview:
            assert p.stat().st_size > 0
            p.unlink()
        tally(category, True)
        return True
    check_refusal(result, f"{category} {name}", culprits, [out, *preview], tmp_path)
    tally(category, False)
    return False


def test_mutated_bvh_files(tmp_path):
    rng = np.random.default_rng(SEED)
    bases = base_files()
    refused = 0
    for n in range(320):
        what, content = mutate(bases[n % len(bases)], rng)
        name = f"case{n:03d}"
        try:
            refused += not run_case(tmp_path, name, content, [], "prepare: mutated BVH files", [f"{name}.bvh"])
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None
        (tmp_path / f"{name}.bvh").unlink()
    assert 0 < refused < 320  # the mutations reach both sides


def test_prepare_arguments(tmp_path):
    text = base_files()[0].encode()
    for n, args in enumerate(ARGUMENTS):
        culprits = [a for a in args if a.startswith("--")]
        run_case(tmp_path, f"args{n:02d}", text, args, "prepare: arguments", culprits)


@pytest.mark.parametrize("args,culprit", [(["--fps", "1e7"], "--fps"), (["--scale", "1e300"], "--scale")])
def test_prepare_refuses_in_a_real_process(tmp_path, args, culprit):
    src = tmp_path / "walk.bvh"
    src.write_text(base_files()[0])
    done = run_module("trainer.prepare", str(src), "-o", str(tmp_path / "f.npz"), *args, timeout=120)
    assert done.returncode == 2 and culprit in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "f.npz").exists()
