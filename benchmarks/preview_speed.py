"""How long a 3-D --preview takes, against the clip's own length and the bake of it, measured in one run.

Bakes N frames (default 300, 10 s at 30 fps) from the shipped default model for 1 and 4 characters, then times
runtime.preview.render writing a GIF (every 2nd frame), a PNG (one frame), and drawing every frame as an MP4
would (the ffmpeg encoding itself is timed too when ffmpeg is installed).
Usage: python benchmarks/preview_speed.py [--frames N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from runtime import preview
from runtime.bake import bake
from runtime.model import load_model


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    """Print one line per (characters, format): seconds, x real time, x the bake."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames baked and previewed (default %(default)s)")
    args = parser.parse_args()
    model = load_model(None)
    length = args.frames / model.fps
    with tempfile.TemporaryDirectory() as tmp:
        for characters in (1, 4):
            clips = []
            baked = _seconds(lambda: clips.append(bake(model, args.frames, seed=0, characters=characters)))
            clip = clips[0]

            def render(suffix: str) -> None:
                preview.render(Path(tmp) / f"p{suffix}", clip.positions, model.skeleton, model.fps, clip.contacts,
                               model.layout.contact_joints, title=model.name)

            def draw_all() -> None:
                scene = preview._Scene(clip.positions, model.skeleton.parents, model.fps, clip.contacts,
                                       [model.skeleton.index(n) for n in model.layout.contact_joints], model.name,
                                       [f"character {k}" for k in range(characters)])
                for f in range(args.frames):
                    scene.draw(f)
                    scene.rgb()
                preview._pyplot().close(scene.fig)

            jobs = {".gif": lambda: render(".gif"), ".png": lambda: render(".png"), "every frame drawn": draw_all}
            if preview.ffmpeg_available():
                jobs[".mp4"] = lambda: render(".mp4")
            print(f"{characters} character(s), {args.frames} frames ({length:g} s), bake {baked:.2f} s:")
            for name, job in jobs.items():
                s = _seconds(job)
                print(f"  {name:18s} {s:6.2f} s  = {s / length:.2f}x real time, {s / baked:.1f}x the bake")


if __name__ == "__main__":
    main()
