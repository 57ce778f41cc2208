"""3-D previews: real files read back with Pillow, and pixels checked for contacts, following and Y up."""
import os

import numpy as np
import pytest
from PIL import Image

from runtime import preview
from runtime.preview import PreviewError, check_output, ffmpeg_available, render
from tests.conftest import one_error_line, run_module, small_skeleton

SKELETON = small_skeleton()
FEET = ("LeftFoot", "RightFoot")


def walking_clip(frames: int, fps: float, characters: int = 1, speed: float = 1.0) -> np.ndarray:
    """The rest pose of the small skeleton walking straight along +Z (T, K, J, 3), feet on the ground."""
    rest = SKELETON.offsets.copy()
    for j in range(1, SKELETON.n_joints):
        rest[j] += rest[SKELETON.parents[j]]
    rest[:, 1] -= rest[:, 1].min()
    step = np.zeros((frames, 1, 1, 3))
    step[:, 0, 0, 2] = speed * np.arange(frames) / fps
    offsets = np.zeros((1, characters, 1, 3))
    offsets[0, :, 0, 0] = np.arange(characters)
    return rest[None, None] + step + offsets


def colour_mask(image: Image.Image, hex_colour: str, tolerance: float = 40.0) -> np.ndarray:
    """Pixels within tolerance of a colour, (H, W) bool."""
    rgb = np.asarray(image.convert("RGB"), dtype=float)
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    return np.linalg.norm(rgb - target, axis=-1) < tolerance


def gif_frames(path) -> list[Image.Image]:
    with Image.open(path) as im:
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(im.convert("RGB"))
        return frames


def test_gif_frames_size_and_feet_coloured_by_contact(tmp_path):
    # 10 fps is drawn frame for frame; contacts: none in frames 10-19, else the left foot, then both.
    contacts = np.zeros((40, 2))
    contacts[:10, 0] = 1
    contacts[20:] = 1
    out = tmp_path / "walk.gif"
    note = render(out, walking_clip(40, 10.0)[:, 0], SKELETON, 10.0, contacts, FEET, title="test")
    assert note == f"preview: 40 frame(s) -> {out}"
    frames = gif_frames(out)
    assert len(frames) == 40 and frames[0].size == (380, 350)
    red = np.array([colour_mask(f, preview.CONTACT).sum() for f in frames])
    blue = np.array([colour_mask(f, preview.AIRBORNE).sum() for f in frames])
    assert red[10:20].max() == 0 and red[:10].min() > 15 and red[20:].min() > red[:10].max()
    assert blue[20:].max() == 0 and blue[10:20].min() > blue[:10].max() > 15


def test_camera_follows_and_y_is_up(tmp_path):
    out = tmp_path / "far.gif"
    render(out, walking_clip(30, 10.0, speed=2.0)[:, 0], SKELETON, 10.0)  # 6 m away by the end
    frames = gif_frames(out)
    first, last = (colour_mask(f, preview.BONE) for f in (frames[0], frames[-1]))
    for mask in (first, last):
        rows, cols = np.nonzero(mask)
        assert np.ptp(rows) > 2.5 * np.ptp(cols)  # a standing figure: tall, not lying along the ground
    # Followed, the character stays where it was on screen (unfollowed it would have left the picture).
    shift = np.subtract(np.argwhere(first).mean(axis=0), np.argwhere(last).mean(axis=0))
    assert np.abs(shift).max() < 10
    # ... while the world-fixed ground grid slides under it.
    assert (colour_mask(frames[0], preview.GRID, 8) != colour_mask(frames[-1], preview.GRID, 8)).sum() > 500


def test_gif_subsamples_fast_clips_and_says_so(tmp_path):
    out = tmp_path / "fast.gif"
    note = render(out, walking_clip(60, 30.0)[:, 0], SKELETON, 30.0)
    assert "(1 frame in 2, 15 fps)" in note
    with Image.open(out) as im:
        assert im.n_frames == 30
        delays = []
        for i in range(im.n_frames):
            im.seek(i)
            delays.append(im.info["duration"])
    assert sum(delays) == 2000 and set(delays) == {60, 70}  # 2 s as whole centiseconds


def test_png_of_several_characters_side_by_side_and_a_cap(tmp_path):
    out = tmp_path / "three.png"
    render(out, walking_clip(5, 10.0, characters=3), SKELETON, 10.0, labels=["a", "b", "c"])
    with Image.open(out) as im:
        assert im.size == (3 * 380, 350)
        bone = colour_mask(im, preview.BONE)
    # One figure in each third of the picture.
    assert all(bone[:, k * 380:(k + 1) * 380].sum() > 200 for k in range(3))
    note = render(tmp_path / "many.png", walking_clip(2, 10.0, characters=preview.MAX_PANELS + 3), SKELETON, 10.0)
    assert f"characters 0-{preview.MAX_PANELS - 1} of {preview.MAX_PANELS + 3}" in note
    with Image.open(tmp_path / "many.png") as im:
        assert im.size == (3 * 380, 3 * 320 + 30)


@pytest.mark.parametrize("name,message", [("clip.jpg", "not '.jpg'"), ("missing/clip.gif", "does not exist")])
def test_bad_preview_paths(tmp_path, name, message):
    with pytest.raises(PreviewError, match=message):
        check_output(tmp_path / name)


def test_mp4_without_ffmpeg_fails_before_baking(model_dir, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "clip.npz"
    res = run_module("runtime.bake", str(out), "--model", str(model_dir), "--preview", str(tmp_path / "c.mp4"),
                     "-q", env={"PATH": str(empty)})
    assert res.returncode == 2
    assert "needs ffmpeg on PATH" in one_error_line(res.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


@pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg is not installed")
def test_mp4_with_ffmpeg(tmp_path):
    out = tmp_path / "walk.mp4"
    render(out, walking_clip(20, 10.0)[:, 0], SKELETON, 10.0)
    assert out.read_bytes()[4:8] == b"ftyp" and os.path.getsize(out) > 1000
