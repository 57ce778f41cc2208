"""3-D previews of motion with matplotlib: a GIF or MP4 with the camera following each character, or one PNG frame."""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_path
from .skeleton import Skeleton

FORMATS = (".gif", ".mp4", ".png")
GIF_FPS = 15.0       # GIF delays are whole centiseconds, and drawing costs time: GIFs show at most 15 frames/s
MAX_SECONDS = 60.0   # a longer clip previews its first minute
MAX_PANELS = 9       # characters drawn side by side; more are left out
HALF_VIEW = 1.5      # metres from the followed point to the edge of the ground drawn
BOX_HEIGHT = 1.0     # metres; lower than a body (mplot3d does not clip), so the ground fills the view
GRID_STEP = 0.5      # metres between ground lines
FOLLOW_SECONDS = 0.6  # the camera follows the root averaged over this long, so the gait's sway does not shake it

BONE, SHADOW, TRAIL, GRID, GROUND = "#1f3b5c", "#b9bec6", "#e08a1e", "#c9ced6", "#eef0f3"
CONTACT, AIRBORNE = "#d62728", "#4da3ff"  # feet on the ground / in the air


class PreviewError(ValueError):
    """A preview that cannot be written; the message says why."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save a matplotlib figure atomically (format from the suffix) and close it."""
    plt = _pyplot()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def check_output(path: str | os.PathLike) -> None:
    """Raise PreviewError unless path can take a preview: a known format, an existing folder, ffmpeg for MP4."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise PreviewError(f"{path}: a preview is {', '.join(FORMATS)}, not {suffix or 'a file without suffix'!r}")
    if not path.parent.is_dir():
        raise PreviewError(f"{path}: the output folder {path.parent} does not exist")
    if suffix == ".mp4" and not ffmpeg_available():
        raise PreviewError(f"{path}: an .mp4 preview needs ffmpeg on PATH, and there is none; install ffmpeg "
                           "or write a .gif")


def ffmpeg_available() -> bool:
    """Whether matplotlib can find the ffmpeg it writes MP4 through."""
    import matplotlib

    return shutil.which(matplotlib.rcParams["animation.ffmpeg_path"]) is not None


def _follow(root: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average (T, K, 2) of the root's ground position over width frames.

    The ends are padded by odd reflection (continuing the motion), so a steady walk is followed without lag.
    """
    half = width // 2
    padded = np.pad(root, ((half, half), (0, 0), (0, 0)), mode="reflect", reflect_type="odd")
    sums = np.cumsum(np.concatenate([np.zeros_like(root[:1]), padded]), axis=0)
    return (sums[2 * half + 1:] - sums[:-2 * half - 1]) / (2 * half + 1)


def _to_plot(p: np.ndarray) -> np.ndarray:
    """Y-up data (x, y, z) -> matplotlib's Z-up axes (x, -z, y): the same right-handed space, turned."""
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


@dataclass
class _Panel:
    """One character's axes and the artists redrawn every frame."""

    ax: object
    ground: object
    grid: object
    trail: object
    shadow: object
    bones: object
    joints: object
    feet_down: object
    feet_up: object


class _Scene:
    """A figure of up to MAX_PANELS followed characters; draw(f) poses every panel at frame f."""

    def __init__(self, positions: np.ndarray, parents: np.ndarray, fps: float, contacts: np.ndarray | None,
                 contact_joints: list[int], title: str, labels: list[str]):
        plt = _pyplot()
        from mpl_toolkits.mplot3d.art3d import Line3DCollection, Poly3DCollection

        self.points = _to_plot(positions)  # (T, K, J, 3)
        self.fps, self.title = fps, title
        self.bones = np.array([(int(p), j) for j, p in enumerate(parents) if p >= 0]).reshape(-1, 2)
        self.contacts = contacts
        self.contact_joints = list(contact_joints) if contacts is not None else []
        root = self.points[:, :, 0, :2]
        self.centre = _follow(root, max(1, round(FOLLOW_SECONDS * fps)))
        k = self.points.shape[1]
        cols = k if k <= 3 else (2 if k == 4 else 3)
        rows = math.ceil(k / cols)
        panel_w, panel_h, top = 3.8, 3.2, 0.3  # inches
        self.fig = plt.figure(figsize=(panel_w * cols, panel_h * rows + top), dpi=100)
        self.fig.subplots_adjust(0, 0, 1, 1 - top / (panel_h * rows + top), 0, 0)
        self.heading = self.fig.text(0.5, 0.99, "", ha="center", va="top", fontsize=10)
        if self.contact_joints:
            self.fig.text(0.99, 0.005, "feet: red on the ground, blue in the air", ha="right", va="bottom",
                          fontsize=7, color="0.35")
        self.panels = []
        for i in range(k):
            ax = self.fig.add_subplot(rows, cols, i + 1, projection="3d", computed_zorder=False)
            ax.set_axis_off()
            ax.set_box_aspect((2 * HALF_VIEW, 2 * HALF_VIEW, BOX_HEIGHT), zoom=1.7)
            ax.view_init(elev=22, azim=-60)
            ax.set_proj_type("persp", focal_length=0.6)
            if k > 1:
                ax.text2D(0.03, 0.97, labels[i], transform=ax.transAxes, va="top", fontsize=8, color="0.3")
            panel = _Panel(
                ax,
                ax.add_collection3d(Poly3DCollection([], facecolor=GROUND, edgecolor="none", zorder=0), autolim=False),
                ax.add_collection3d(Line3DCollection([], colors=GRID, linewidths=0.8, zorder=1), autolim=False),
                ax.plot([], [], [], color=TRAIL, lw=1.6, zorder=2)[0],
                ax.add_collection3d(Line3DCollection([], colors=SHADOW, linewidths=2.5, zorder=2), autolim=False),
                ax.add_collection3d(Line3DCollection([], colors=BONE, linewidths=2.6, zorder=3, capstyle="round"),
                                    autolim=False),
                ax.plot([], [], [], ls="none", marker="o", ms=2.6, color=BONE, zorder=4)[0],
                ax.plot([], [], [], ls="none", marker="o", ms=6.5, mfc=CONTACT, mec="white", mew=0.6, zorder=5)[0],
                ax.plot([], [], [], ls="none", marker="o", ms=5.0, mfc=AIRBORNE, mec="white", mew=0.6,
                        zorder=5)[0])
            self.panels.append(panel)

    def draw(self, f: int) -> None:
        """Pose every panel at frame f."""
        for k, panel in enumerate(self.panels):
            cx, cy = self.centre[f, k]
            lo, hi = np.array([cx, cy]) - HALF_VIEW, np.array([cx, cy]) + HALF_VIEW
            panel.ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), zlim=(0, BOX_HEIGHT))
            panel.ground.set_verts([[(lo[0], lo[1], 0), (hi[0], lo[1], 0), (hi[0], hi[1], 0), (lo[0], hi[1], 0)]])
            # World-fixed ground lines (they slide under a walking character) clipped to the square drawn.
            xs = np.arange(math.ceil(lo[0] / GRID_STEP), math.floor(hi[0] / GRID_STEP) + 1) * GRID_STEP
            ys = np.arange(math.ceil(lo[1] / GRID_STEP), math.floor(hi[1] / GRID_STEP) + 1) * GRID_STEP
            grid = [[(x, lo[1], 0), (x, hi[1], 0)] for x in xs] + [[(lo[0], y, 0), (hi[0], y, 0)] for y in ys]
            panel.grid.set_segments(grid)
            # mplot3d does not clip to the axes box: hide the trail outside the square.
            trail = self.points[:f + 1, k, 0].copy()
            trail[:, 2] = 0.002
            outside = np.any((trail[:, :2] < lo) | (trail[:, :2] > hi), axis=1)
            trail[outside] = np.nan
            panel.trail.set_data_3d(trail[:, 0], trail[:, 1], trail[:, 2])
            p = self.points[f, k]
            segments = p[self.bones]
            panel.bones.set_segments(segments)
            flat = segments.copy()
            flat[..., 2] = 0.004
            panel.shadow.set_segments(flat)
            panel.joints.set_data_3d(p[:, 0], p[:, 1], p[:, 2])
            if self.contact_joints:
                down = self.contacts[f, k] > 0.5
                on, off = p[self.contact_joints][down], p[self.contact_joints][~down]
                panel.feet_down.set_data_3d(on[:, 0], on[:, 1], on[:, 2])
                panel.feet_up.set_data_3d(off[:, 0], off[:, 1], off[:, 2])
        self.heading.set_text(f"{self.title}   t = {f / self.fps:5.2f} s".strip())

    def rgb(self) -> np.ndarray:
        """The figure as drawn now, (H, W, 3) uint8."""
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()


def render(path: str | os.PathLike, positions: np.ndarray, skeleton: Skeleton, fps: float,
           contacts: np.ndarray | None = None, contact_joints: Sequence[str] = (), title: str = "",
           labels: list[str] | None = None) -> str:
    """Write a 3-D preview of K characters' world positions (T, K, J, 3); returns a line saying what was drawn.

    .gif and .mp4 animate (the GIF at most GIF_FPS frames/s), .png draws the last frame; contacts (T, K, C)
    colour the C joints named in contact_joints; labels name the panels. Clips over MAX_SECONDS are cut.
    A single character's (T, J, 3) positions and (T, C) contacts work too.
    """
    check_output(path)
    path = Path(path)
    suffix = path.suffix.lower()
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 3:
        positions = positions[:, None]
        contacts = None if contacts is None else np.asarray(contacts)[:, None]
    t, k = positions.shape[:2]
    notes = []
    shown = min(k, MAX_PANELS)
    if shown < k:
        notes.append(f"characters 0-{shown - 1} of {k}")
    length = min(t, max(1, int(MAX_SECONDS * fps)))
    if length < t:
        notes.append(f"the first {length} of {t} frames")
    stride = max(1, round(fps / GIF_FPS)) if suffix == ".gif" else 1
    frames = [length - 1] if suffix == ".png" else list(range(0, length, stride))
    if stride > 1:
        notes.append(f"1 frame in {stride}, {fps / stride:g} fps")
    labels = labels or [f"character {i}" for i in range(shown)]
    scene = _Scene(positions[:length, :shown], skeleton.parents, fps,
                   None if contacts is None else np.asarray(contacts)[:length, :shown],
                   [skeleton.names.index(name) for name in contact_joints], title, labels[:shown])
    try:
        if suffix == ".png":
            scene.draw(frames[0])
            save_figure(scene.fig, path)
        elif suffix == ".gif":
            _write_gif(path, scene, frames, fps / stride)
        else:
            _write_mp4(path, scene, frames, fps)
    finally:
        _pyplot().close(scene.fig)
    return f"preview: {len(frames)} frame(s) -> {path}" + (f" ({'; '.join(notes)})" if notes else "")


def _write_gif(path: Path, scene: _Scene, frames: list[int], fps: float) -> None:
    from PIL import Image

    images = []
    for f in frames:
        scene.draw(f)
        # A palette per frame (fast octree, 64 colours): a shared one could lose a colour the first frame lacks.
        images.append(Image.fromarray(scene.rgb()).quantize(24, method=Image.Quantize.FASTOCTREE,
                                                            dither=Image.Dither.NONE))
    # GIF delays are whole centiseconds: round the frames' times, not each delay, so the clip keeps its length.
    centiseconds = np.round(100 * np.arange(len(images) + 1) / fps)
    with atomic_path(path, suffix=".gif") as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=[int(d) for d in 10 * np.diff(centiseconds)], loop=0)


def _write_mp4(path: Path, scene: _Scene, frames: list[int], fps: float) -> None:
    from matplotlib.animation import FFMpegWriter

    writer = FFMpegWriter(fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p"])
    with atomic_path(path, suffix=".mp4") as tmp, writer.saving(scene.fig, str(tmp), scene.fig.dpi):
        for f in frames:
            scene.draw(f)
            writer.grab_frame()
