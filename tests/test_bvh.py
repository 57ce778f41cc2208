import random
from dataclasses import replace

import numpy as np
import pytest

from runtime.bvh import MocapError, detect_unit, read_bvh, write_bvh
from tests.conftest import BANDAI, CMU, needs, random_motion, small_skeleton


def assert_same_poses(a, b, tol=1e-5):
    pa, _ = a.world()
    pb, _ = b.world()
    assert a.skeleton.names == b.skeleton.names
    assert np.abs(pa - pb).max() < tol
    ra = a.world()[1]
    rb = b.world()[1]
    assert np.abs(ra - rb).max() < tol


@pytest.mark.parametrize("order,up,scale", [("ZXY", "y", 1.0), ("XYZ", "y", 100.0), ("ZYX", "z", 100.0),
                                            ("XYZ", "z", 1 / 0.0254)])
def test_write_read_round_trip(tmp_path, order, up, scale):
    motion = random_motion(small_skeleton(), seed=1)
    path = tmp_path / "clip.bvh"
    write_bvh(path, motion, order=order, scale=scale, up=up)
    text = path.read_text()
    assert f"CHANNELS 3 {' '.join(a + 'rotation' for a in order)}" in text
    back = read_bvh(path)  # units and up axis detected
    assert back.fps == 30.0
    assert np.allclose(back.skeleton.offsets, motion.skeleton.offsets, atol=1e-6)
    assert_same_poses(motion, back)


def test_position_channels_on_any_joint_survive(tmp_path):
    motion = random_motion(small_skeleton(), seed=2)
    trans = motion.translations.copy()
    trans[:, 1, 1] += 0.02 * np.sin(np.arange(motion.n_frames) / 5)  # a stretching spine
    motion = replace(motion, translations=trans)
    write_bvh(tmp_path / "a.bvh", motion, scale=1.0)
    back = read_bvh(tmp_path / "a.bvh", scale=1.0, up="y")
    assert np.abs(back.translations - trans).max() < 1e-5
    assert_same_poses(motion, back)


def test_crlf_and_end_sites(tmp_path):
    motion = random_motion(small_skeleton(), seed=3)
    write_bvh(tmp_path / "a.bvh", motion)
    (tmp_path / "b.bvh").write_bytes((tmp_path / "a.bvh").read_bytes().replace(b"\n", b"\r\n"))
    back = read_bvh(tmp_path / "b.bvh")
    assert_same_poses(motion, back)
    ends = back.skeleton.end_offsets
    assert np.allclose(ends[2], [0, 0.15, 0]) and np.isnan(ends[1]).all()


def test_unit_detection():
    assert detect_unit(1.6) == "m"
    assert detect_unit(160) == "cm"
    assert detect_unit(63) == "inch"
    assert detect_unit(28) == "cmu"
    assert detect_unit(1600) == "mm"


def test_mirror_map_and_mirror_twice_is_identity():
    motion = random_motion(small_skeleton(), seed=4)
    skel = motion.skeleton
    assert [skel.names[i] for i in skel.mirror_map][3:6] == ["RightUpLeg", "RightLeg", "RightFoot"]
    twice = motion.mirrored().mirrored()
    assert_same_poses(motion, twice, tol=1e-9)
    pos, _ = motion.world()
    mpos, _ = motion.mirrored().world()
    assert np.allclose(mpos[:, 3], pos[:, 6] * [-1, 1, 1], atol=1e-9)


def test_resample_halves_frames_and_keeps_even_frames():
    motion = random_motion(small_skeleton(), n_frames=121, fps=60.0, seed=5)
    half = motion.resample(30.0)
    assert half.n_frames == 61 and half.fps == 30.0
    assert np.allclose(half.world()[0], motion.world()[0][::2], atol=1e-9)
    odd = motion.resample(24.0)  # non-integer ratio: slerp between frames
    assert odd.n_frames == 49
    assert np.all(np.isfinite(odd.rotations))


@pytest.mark.parametrize("folder,order", [(BANDAI, "ZXY"), (CMU, "XYZ")])
def test_real_clip_round_trip(tmp_path, folder, order):
    src = sorted(needs(folder).glob("*.bvh"))[0]
    motion = read_bvh(src)
    write_bvh(tmp_path / "rt.bvh", motion, order=order, scale=100.0, up="z")
    assert_same_poses(motion, read_bvh(tmp_path / "rt.bvh"))


# ---- bad input -------------------------------------------------------------------------------

GOOD = """HIERARCHY
ROOT Hips
{
\tOFFSET 0 0 0
\tCHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
\tJOINT Spine
\t{
\t\tOFFSET 0 10 0
\t\tCHANNELS 3 Zrotation Xrotation Yrotation
\t\tEnd Site
\t\t{
\t\t\tOFFSET 0 10 0
\t\t}
\t}
}
MOTION
Frames: 2
Frame Time: 0.0333333
0 90 0 0 0 0 0 0 0
0 90 1 0 5 0 0 10 0
"""


def bad(tmp_path, text):
    path = tmp_path / "bad.bvh"
    path.write_text(text)
    with pytest.raises(MocapError) as info:
        read_bvh(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


def test_good_fixture_reads(tmp_path):
    (tmp_path / "g.bvh").write_text(GOOD)
    m = read_bvh(tmp_path / "g.bvh")
    assert m.n_frames == 2 and m.skeleton.names == ("Hips", "Spine")


def test_truncated_file(tmp_path):
    assert ":20: truncated file: expected 2 frames, found 1" in bad(tmp_path, GOOD.rsplit("\n", 2)[0])
    assert "expected a MOTION section" in bad(tmp_path, GOOD[:120])


def test_wrong_channel_count(tmp_path):
    assert ":19: expected 9 channel values, found 8" in bad(tmp_path, GOOD.replace("0 90 0 0 0 0 0 0 0", "0 90 0 0 0 0 0 0"))


def test_non_numeric_value(tmp_path):
    assert ":20: expected a number, found 'abc'" in bad(tmp_path, GOOD.replace("0 90 1 0 5", "0 90 abc 0 5"))
    assert ":8: expected numbers for OFFSET" in bad(tmp_path, GOOD.replace("OFFSET 0 10 0", "OFFSET 0 x 0", 1))


def test_unknown_channel_name(tmp_path):
    assert ":9: unknown channel 'Wrotation'" in bad(tmp_path, GOOD.replace("Zrotation Xrotation Yrotation\n\t\tEnd",
                                                                           "Wrotation Xrotation Yrotation\n\t\tEnd"))


def test_empty_motion(tmp_path):
    text = GOOD.split("Frames:")[0] + "Frames: 0\nFrame Time: 0.0333333\n"
    assert ":17: the MOTION section is empty" in bad(tmp_path, text)


def test_joint_count_disagrees(tmp_path):
    path = tmp_path / "g.bvh"
    path.write_text(GOOD)
    with pytest.raises(MocapError, match=r"g.bvh:16: expected 3 joints \(--joints\), found 2"):
        read_bvh(path, expect_joints=3)


def test_structure_errors_name_the_line(tmp_path):
    assert ":5: expected CHANNELS, JOINT, End Site or }" in bad(tmp_path, GOOD.replace("\tCHANNELS 6 Xposition", "\tCHANNELZ 6 Xposition"))
    assert "CHANNELS says 6 channels but names 5" in bad(tmp_path, GOOD.replace(" Yrotation\n\tJOINT", "\n\tJOINT"))
    assert "expected 0 or 3 distinct rotation channels" in bad(
        tmp_path, GOOD.replace("CHANNELS 3 Zrotation Xrotation Yrotation", "CHANNELS 3 Zrotation Zrotation Yrotation"))


def test_fuzz_finds_only_mocap_errors(tmp_path):
    """Hundreds of mutated files: each reads or fails with MocapError, never anything else."""
    base = tmp_path / "base.bvh"
    write_bvh(base, random_motion(small_skeleton(), n_frames=12, seed=6), scale=100.0)
    text = base.read_text()
    rng = random.Random(0)
    tokens = ["{", "}", "JOINT", "ROOT", "End", "Site", "OFFSET", "CHANNELS", "MOTION", "Frames:", "nan", "inf",
              "-1", "0", "1e400", "Xrotation", "\x00\xff", "3", "Frame Time:", "\t", "\r\n", "HIERARCHY"]
    outcomes = {"ok": 0, "error": 0}
    for k in range(400):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            i = rng.randrange(len(chars))
            if op < 0.25:
                del chars[i:i + rng.randint(1, 40)]
            elif op < 0.5:
                chars[i:i] = list(rng.choice(tokens) + " ")
            elif op < 0.65:
                chars = chars[:i]
            elif op < 0.8:
                chars[i] = chr(rng.randrange(32, 127))
            else:
                j = rng.randrange(len(chars))
                chars[i:i] = chars[j:j + rng.randint(1, 60)]
        path = tmp_path / f"m{k}.bvh"
        path.write_text("".join(chars), encoding="utf-8", errors="replace")
        try:
            read_bvh(path)
            outcomes["ok"] += 1
        except MocapError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 100
