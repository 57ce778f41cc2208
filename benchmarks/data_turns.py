"""How sharply the motion in a frames.npz turns, by speed: what a joystick policy over its model can learn.

The joystick measure of benchmarks/policy_eval.py asks for the heading within 20 degrees of a command
within 2 s; a command 135-180 degrees away needs a turn of 115-160 degrees in 2 s. This prints, for every
speed band (the mean root speed over a window), how many 2 s windows the data has and how far the root
turns in them (largest, 99th percentile, the share turning at least 115 degrees), and the data's speeds.
The table is printed only: frames derived from licensed data stay where the user keeps them.

    python benchmarks/data_turns.py FRAMES.npz [--window 2.0]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from trainer.data import Frames, FramesError, load_frames

BANDS = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, np.inf)  # m/s
HALF_TURN_DEG = 115.0  # the least turn that brings a 135-degree command within 20 degrees


def root_speed(frames: Frames) -> np.ndarray:
    """Horizontal root speed of every frame (m/s)."""
    root = frames.data[:, frames.layout.slice("root")]  # per frame: dx, dz (character frame), dyaw
    return np.hypot(root[:, 0], root[:, 1]) * frames.fps


def window_turns(frames: Frames, speed: np.ndarray, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """|Heading change| (degrees) and mean speed (m/s) of every window of that length inside a clip."""
    dyaw = frames.data[:, frames.layout.slice("root")][:, 2]
    width = int(round(seconds * frames.fps))
    turns, speeds = [], []
    for start, end in zip(frames.clip_starts, frames.end_indices + 1):
        if end - start <= width:
            continue
        yaw = np.concatenate([[0.0], np.cumsum(dyaw[start:end])])
        run = np.concatenate([[0.0], np.cumsum(speed[start:end])])
        turns.append(np.abs(yaw[width:] - yaw[:-width]))
        speeds.append((run[width:] - run[:-width]) / width)
    if not turns:
        return np.zeros(0), np.zeros(0)
    return np.degrees(np.concatenate(turns)), np.concatenate(speeds)


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 on success, 2 on unusable input."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("frames", help="a frames.npz written by python -m trainer.prepare")
    p.add_argument("--window", type=float, default=2.0, help="window length, seconds (default %(default)s)")
    args = p.parse_args(argv)
    try:
        frames = load_frames(args.frames)
    except FramesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    frame_speed = root_speed(frames)
    turn, speed = window_turns(frames, frame_speed, args.window)
    if not turn.size:
        print(f"error: {args.frames}: no clip is longer than {args.window:g} s", file=sys.stderr)
        return 2
    pct = np.percentile(frame_speed, [5, 50, 95])
    print(f"{args.frames}: {frames.n_clips} clips, {len(frames.data) / frames.fps:.0f} s; root speed "
          f"5/50/95th percentile {pct[0]:.2f} / {pct[1]:.2f} / {pct[2]:.2f} m/s")
    print(f"| speed, m/s | {args.window:g} s windows | largest turn | 99th percentile | share >= {HALF_TURN_DEG:g} deg |")
    print("|---|---|---|---|---|")
    for lo, hi in zip(BANDS[:-1], BANDS[1:]):
        m = (speed >= lo) & (speed < hi)
        if m.any():
            band = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">= {lo:g}"
            print(f"| {band} | {m.sum()} | {turn[m].max():.0f} deg | {np.percentile(turn[m], 99):.0f} deg | "
                  f"{(turn[m] >= HALF_TURN_DEG).mean():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
