"""Stick-figure pictures of a clip with matplotlib: a strip of poses and a top-down trail, or an animation."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .rotations import yaw_matrix


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bones(parents: np.ndarray) -> list[tuple[int, int]]:
    return [(int(p), j) for j, p in enumerate(parents) if p >= 0]


def draw_strip(path: str | os.PathLike, positions: np.ndarray, parents: np.ndarray, n_poses: int = 8,
               title: str = "", contacts: np.ndarray | None = None, contact_joints: list[int] | None = None,
               yaw: np.ndarray | None = None) -> None:
    """Write a PNG: n_poses side views of a clip's world positions (T, J, 3) and its top-down path.

    With the heading yaw (T,), every pose is turned to face right.
    """
    plt = _pyplot()
    t = len(positions)
    frames = np.linspace(0, t - 1, min(n_poses, t)).round().astype(int)
    fig, (ax_side, ax_top) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    bones = _bones(parents)
    spacing = 1.2 * max(np.ptp(positions[..., 0]), np.ptp(positions[..., 2]), 0.8) / max(len(frames), 1)
    for k, f in enumerate(frames):
        # Each pose centred on the root (and turned to face right), laid side by side.
        p = positions[f] - positions[f, 0] * np.array([1, 0, 1])
        if yaw is not None:
            p = p @ yaw_matrix(yaw[f])
        p = p[:, [2, 1]] + np.array([k * max(spacing, 0.9), 0])
        for a, b in bones:
            ax_side.plot(p[[a, b], 0], p[[a, b], 1], color="tab:blue", lw=2)
        if contacts is not None and contact_joints:
            on = [j for c, j in enumerate(contact_joints) if contacts[f, c] > 0.5]
            ax_side.scatter(p[on, 0], p[on, 1], color="tab:red", s=18, zorder=3)
        ax_side.text(p[0, 0], -0.12, str(f), ha="center", fontsize=8)
    ax_side.axhline(0, color="0.6", lw=1)
    ax_side.set_aspect("equal")
    ax_side.set_title(f"{title}  (side view, frames; red = foot contact)".strip())
    ax_side.set_xticks([])
    root = positions[:, 0]
    ax_top.plot(root[:, 0], root[:, 2], color="tab:blue", lw=1.5)
    ax_top.scatter(root[0, 0], root[0, 2], color="tab:green", s=25, label="start")
    ax_top.set_aspect("equal", adjustable="datalim")
    ax_top.set_title("top view (x, z)")
    ax_top.legend(loc="best", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save a matplotlib figure atomically (format from the suffix) and close it."""
    plt = _pyplot()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def animate(path: str | os.PathLike, positions: np.ndarray, parents: np.ndarray, fps: float,
            title: str = "", max_frames: int = 300) -> None:
    """Write an animated GIF of a clip's world positions (T, J, 3): side and front views following the root."""
    plt = _pyplot()
    from matplotlib.animation import FuncAnimation, PillowWriter

    stride = 2 if fps > 20 else 1  # GIF frame delays are coarse anyway; halve the drawing work
    positions = positions[:max_frames:stride]
    fps /= stride
    bones = np.array(_bones(parents))
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2), dpi=72)
    views = ((2, "side (z, y)"), (0, "front (x, y)"))  # horizontal axis of each panel
    lines = []
    for ax, (_, name) in zip(axes, views):
        ax.set_xlim(-1.0, 1.0)
        ax.set_ylim(-0.05, 1.95)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.6", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        lines.append([ax.plot([], [], color="tab:blue", lw=2)[0] for _ in bones])
    label = fig.suptitle(title, fontsize=9)

    def draw(f: int):
        p = positions[f]
        for panel, (axis, _) in zip(lines, views):
            h = p[:, axis] - p[0, axis]  # follow the root
            for line, (a, b) in zip(panel, bones):
                line.set_data(h[[a, b]], p[[a, b], 1])
        label.set_text(f"{title} frame {f * stride}")
        return [line for panel in lines for line in panel]

    anim = FuncAnimation(fig, draw, frames=len(positions), interval=1000 / fps, blit=False)
    with atomic_path(path, suffix=".gif") as tmp:
        anim.save(tmp, writer=PillowWriter(fps=min(fps, 50)))
    plt.close(fig)
