import json

import numpy as np
import pytest

from runtime.bvh import read_bvh, write_bvh
from runtime.features import FeatureLayout, decode
from runtime.skeleton import Skeleton
from trainer.prepare import find_bvh_files, prepare
from tests.conftest import BANDAI, CMU, needs, random_motion, run_module, small_skeleton


def run_prepare(*args):
    return run_module("trainer.prepare", *map(str, args), "-q", timeout=300)


def clips(prep):
    starts = np.concatenate([[0], prep.end_indices[:-1] + 1])
    for c, (a, b) in enumerate(zip(starts, prep.end_indices)):
        yield c, prep.data[a:b + 1].astype(np.float64)


def check_round_trip(files, fps):
    """Every clip: features -> world positions within 1 mm of the BVH's own FK; local rotations drive FK there too."""
    prep = prepare(files, fps=fps, progress=False)
    worst_pos = worst_fk = 0.0
    for c, feats in clips(prep):
        raw = read_bvh(files[c])
        ratio = raw.fps / fps
        pos, _ = raw.world()
        pos = pos[np.round(np.arange(len(feats)) * ratio).astype(int)]
        pos = pos[:, raw.skeleton.n_joints - prep.skeleton.n_joints:]  # the folded dummy root, if any
        pose, _, _ = decode(feats, prep.layout, prep.skeleton, prep.clip_start_root[c])
        worst_pos = max(worst_pos, np.abs(pose.positions - pos).max())
        fk, _ = prep.skeleton.forward_kinematics(pose.local_rotations, pose.root_position)
        worst_fk = max(worst_fk, np.abs(fk - pos).max())
    assert worst_pos < 1e-3, f"positions off by {worst_pos * 1000:.3f} mm"
    assert worst_fk < 1e-3, f"local rotations drive the skeleton {worst_fk * 1000:.3f} mm off"
    return prep


def test_bandai_round_trip_every_clip():
    files = find_bvh_files([str(needs(BANDAI))])
    prep = check_round_trip(files, 30.0)
    assert len(prep.clip_names) == len(files) == 171
    assert prep.skeleton.names[0] == "Hips" and prep.skeleton.n_joints == 21


def test_cmu_round_trip_after_resampling():
    files = find_bvh_files([str(needs(CMU))])
    prep = check_round_trip(files, 30.0)
    assert prep.skeleton.n_joints == 31
    assert abs(len(prep.data) - sum(read_bvh(f).n_frames for f in files) / 4) <= 2


def test_cli_writes_frames_with_layout_skeleton_and_summary(tmp_path):
    for k in range(3):
        write_bvh(tmp_path / f"c{k}.bvh", random_motion(small_skeleton(), n_frames=90 + k, fps=60.0, seed=k), scale=100)
    out = tmp_path / "frames.npz"
    res = run_prepare(tmp_path, "-o", out, "--mirror", "--preview", tmp_path / "p.png")
    assert res.returncode == 0, res.stderr
    assert "6 clips (3 files, mirrored)" in res.stdout and "9 joints" in res.stdout
    with np.load(out) as f:
        data, ends = f["data"], f["end_indices"]
        lay = FeatureLayout.from_json(str(f["layout"]))
        skel = Skeleton.from_json(str(f["skeleton"]))
        assert data.dtype == np.float32 and data.shape[1] == lay.size
        assert list(ends) == list(np.cumsum([45, 45, 46, 46, 46, 46]) - 1)
        assert list(f["clip_names"][:2]) == ["c0", "c0~mirror"]
        assert json.loads(str(f["source"]))["mirror"] is True
        assert float(f["fps"]) == 30.0 and skel.n_joints == 9
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_joint_subset_and_count(tmp_path):
    write_bvh(tmp_path / "a.bvh", random_motion(small_skeleton(), seed=1))
    keep = "Hips,Spine,Head,LeftUpLeg,LeftLeg,RightUpLeg,RightLeg"
    res = run_prepare(tmp_path / "a.bvh", "-o", tmp_path / "f.npz", "--joints", keep)
    assert res.returncode == 0, res.stderr
    assert "7 joints" in res.stdout
    res = run_prepare(tmp_path / "a.bvh", "-o", tmp_path / "g.npz", "--joints", "Hips,LeftLeg")
    assert res.returncode == 2 and "LeftLeg' is kept but its parent 'LeftUpLeg' is not" in res.stderr


@pytest.mark.parametrize("mutate,expect", [
    (lambda t: t[: len(t) // 2], "truncated file"),
    (lambda t: t.replace("Frames: 60", "Frames: 0"), "the MOTION section is empty"),
    (lambda t: t.replace("CHANNELS 3 Zrotation", "CHANNELS 3 Qrotation", 1), "unknown channel 'Qrotation'"),
    (lambda t: t.replace("\n0.", "\n0.x", 1), "expected a number"),
    (lambda t: t.rstrip("\n") + " 1.0\n", "expected 30 channel values, found 31"),
])
def test_cli_bad_input_exit_2_one_line(tmp_path, mutate, expect):
    write_bvh(tmp_path / "ok.bvh", random_motion(small_skeleton(), n_frames=60, seed=2))
    bad = tmp_path / "bad.bvh"
    bad.write_text(mutate((tmp_path / "ok.bvh").read_text()))
    out = tmp_path / "f.npz"
    res = run_prepare(bad, "-o", out)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and f"{bad}:" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_cli_joint_count_mismatch_and_missing_output_folder(tmp_path):
    write_bvh(tmp_path / "ok.bvh", random_motion(small_skeleton(), seed=3))
    res = run_prepare(tmp_path / "ok.bvh", "-o", tmp_path / "f.npz", "--joints", "22")
    assert res.returncode == 2 and "expected 22 joints (--joints), found 9" in res.stderr
    res = run_prepare(tmp_path / "ok.bvh", "-o", tmp_path / "nope" / "f.npz")
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run_prepare(tmp_path / "missing.bvh", "-o", tmp_path / "f.npz")
    assert res.returncode == 2 and "no such file or folder" in res.stderr


def test_mixed_skeletons_are_refused(tmp_path):
    write_bvh(tmp_path / "a.bvh", random_motion(small_skeleton(), seed=4))
    other = random_motion(small_skeleton(), seed=5).subset(["Hips", "Spine", "Head"])
    write_bvh(tmp_path / "b.bvh", other)
    res = run_prepare(tmp_path, "-o", tmp_path / "f.npz")
    assert res.returncode == 2 and "b.bvh: its hierarchy differs" in res.stderr
