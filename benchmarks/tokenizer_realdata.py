"""Motion tokenizer on Bandai locomotion: EMA-reset vs plain straight-through codebook, held-out clips.

Prepares ../shared/mocap/bandai2_locomotion (mirrored, 30 fps), holds out every 10th source clip with its
mirror, trains the two quantiser variants with the same seed, steps and network, exports each to a model
directory, and reports through the exported ONNX graphs (what users run):
  - MPJPE (mm, character frame) of held-out clips after encode -> decode: from the decoded joint positions,
    and from the decoded local rotations through forward kinematics (what a .bvh gets);
  - perplexity and code usage on held-out and on training clips;
  - onnxruntime vs torch: identical codes and frames within 1e-4 for clip lengths 4 to 400;
  - compression (float32 features vs uint16 codes) and decode speed on this CPU.
Everything derived from the data lives in a temporary folder (or --work, which must lie outside the
repository) because the data's licence (CC BY-NC-ND 4.0) forbids keeping derived copies in it.

    python benchmarks/tokenizer_realdata.py [--steps 2000] [--jobs 2] [--work /tmp/tok-bench]

Exit code 0 when EMA-reset reconstructs held-out clips better than straight-through, uses at least 80% of
its codes, and onnxruntime agrees with torch; 1 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.features import decode as decode_features  # noqa: E402
from runtime.rotations import quat_to_matrix, yaw_matrix  # noqa: E402
from runtime.tokenizer import Tokenizer, load_tokenizer  # noqa: E402
from trainer.data import Frames, heldout_clips, load_frames, training_clips  # noqa: E402
from trainer.prepare import find_bvh_files, prepare, save_frames  # noqa: E402
from trainer.tokenizer_export import compare, export_tokenizer  # noqa: E402
from trainer.train_tokenizer import TokenizerConfig, config_to_toml, load_tokenizer_run  # noqa: E402

BANDAI = ROOT.parent / "shared" / "mocap" / "bandai2_locomotion"
VARIANTS = ("ema_reset", "straight_through")
HOLDOUT_EVERY = 10
AGREEMENT_LENGTHS = (4, 5, 7, 13, 32, 64, 101, 128, 199, 256, 333, 400)
MIN_USAGE = 0.8


def clip(frames: Frames, c: int) -> np.ndarray:
    """Raw feature frames of clip c."""
    return frames.data[frames.clip_starts[c]:frames.end_indices[c] + 1]


def character_positions(positions: np.ndarray, origin: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """World joint positions (T, J, 3) -> the character frame (root on the ground, heading +Z)."""
    return np.einsum("tik,tjk->tji", yaw_matrix(-yaw), positions - origin[:, None])


def fk_positions(tok: Tokenizer, local_rotations: np.ndarray, root_positions: np.ndarray) -> np.ndarray:
    """World joint positions from local rotations through the tokenizer skeleton's forward kinematics."""
    return tok.skeleton.forward_kinematics_matrices(quat_to_matrix(local_rotations.astype(np.float64)),
                                                    root_positions.astype(np.float64))[0]


def perplexity_usage(codes: np.ndarray, k: int) -> tuple[float, float]:
    """exp(entropy) of the code histogram, and the fraction of the k codes used at least once."""
    p = np.bincount(codes, minlength=k) / len(codes)
    nz = p[p > 0]
    return float(np.exp(-(nz * np.log(nz)).sum())), float((p > 0).mean())


def evaluate(tok: Tokenizer, frames: Frames, held: np.ndarray, train: np.ndarray) -> dict:
    """Held-out reconstruction (MPJPE mm, character frame) and code statistics through the ONNX graphs."""
    pos_err, fk_err, held_codes = [], [], []
    for c in held:
        original = clip(frames, c)
        tokens = tok.encode(original)
        held_codes.append(tokens.codes)
        out = tok.decode(tokens)
        pose, origin, yaw = decode_features(original.astype(np.float64), tok.layout, tok.skeleton)
        want = character_positions(pose.positions, origin, yaw)
        got = character_positions(out.positions.astype(np.float64), out.origin, out.yaw)
        pos_err.append(np.linalg.norm(got - want, axis=-1).mean(axis=-1))
        want_fk = character_positions(fk_positions(tok, pose.local_rotations, pose.root_position), origin, yaw)
        got_fk = character_positions(fk_positions(tok, out.local_rotations, out.root_positions), out.origin, out.yaw)
        fk_err.append(np.linalg.norm(got_fk - want_fk, axis=-1).mean(axis=-1))
    train_codes = np.concatenate([tok.encode(clip(frames, c)).codes for c in train])
    held_codes = np.concatenate(held_codes)
    hp, hu = perplexity_usage(held_codes, tok.codes)
    tp, tu = perplexity_usage(train_codes, tok.codes)
    return {"mpjpe_mm": 1000 * float(np.concatenate(pos_err).mean()),
            "mpjpe_fk_mm": 1000 * float(np.concatenate(fk_err).mean()),
            "heldout_perplexity": hp, "heldout_usage": hu, "heldout_tokens": len(held_codes),
            "train_perplexity": tp, "train_usage": tu, "train_tokens": len(train_codes)}


def agreement_clips(frames: Frames, held: np.ndarray) -> list[np.ndarray]:
    """Real windows of AGREEMENT_LENGTHS frames: from held-out clips where long enough, else the longest clip."""
    lengths = frames.end_indices - frames.clip_starts + 1
    longest = int(np.argmax(lengths))
    out = []
    for i, n in enumerate(AGREEMENT_LENGTHS):
        fits = [c for c in held if lengths[c] >= n]
        c = fits[i % len(fits)] if fits else longest
        out.append(clip(frames, c)[:n])
    return out


def speed(tok: Tokenizer, n_frames: int = 400, repeats: int = 30) -> dict:
    """Frames per second of the ONNX decoder alone, of decode() with poses, and of encode()."""
    rng = np.random.default_rng(0)
    codes = rng.integers(tok.codes, size=n_frames // tok.frames_per_token)
    feats = tok.decode_features(codes)

    def rate(fn) -> float:
        fn()
        best = np.inf
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            best = min(best, (time.perf_counter() - start) / repeats)
        return n_frames / best

    return {"decoder_onnx_fps": rate(lambda: tok.decode_features(codes)),
            "decode_with_poses_fps": rate(lambda: tok.decode(codes)),
            "encode_fps": rate(lambda: tok.encode(feats)), "clip_frames": n_frames}


def train_variants(frames_path: Path, work: Path, config: TokenizerConfig, jobs: int, threads: int) -> dict:
    """Train (or resume, or reuse) every variant's run in work/runs; returns training seconds per variant."""
    procs = []
    for variant in VARIANTS:
        cfg = work / f"{variant}.toml"
        cfg.write_text(config_to_toml(dataclasses.replace(config, quantizer=variant)))
        run = work / "runs" / variant
        resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
        cmd = [sys.executable, "-m", "trainer.train_tokenizer", str(frames_path), "--out", str(run),
               "--config", str(cfg), "--threads", str(threads if jobs == 1 else 1), "--no-progress", *resume]
        procs.append(subprocess.Popen(cmd, cwd=ROOT))
        if jobs == 1:
            procs[-1].wait()
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"training failed: {' '.join(proc.args)}")
    return {v: sum(row["seconds"] for row in load_tokenizer_run(work / "runs" / v).history) for v in VARIANTS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=BANDAI, help=f"BVH folder (default {BANDAI})")
    parser.add_argument("--work", type=Path, help="keep runs and models here (outside the repository); "
                        "an interrupted benchmark resumes its runs")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--codes", type=int, default=256)
    parser.add_argument("--code-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, choices=[1, 2],
                        help="2 (default): train both variants at once, one thread each; 1: one after the other")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run when --jobs 1")
    args = parser.parse_args()
    if not args.data.is_dir() or not any(args.data.glob("*.bvh")):
        print(f"skipped: {args.data} is not present")
        return 0
    if args.work and ROOT in args.work.resolve().parents:
        raise SystemExit(f"--work {args.work}: must lie outside the repository (the data's licence)")
    config = TokenizerConfig(width=args.width, codes=args.codes, code_dim=args.code_dim, batch_size=args.batch_size,
                             steps=args.steps, lr=args.lr, warmup_steps=max(1, args.steps // 20),
                             lr_milestones=[args.steps * 3 // 4], log_every=max(1, args.steps // 10),
                             holdout_every=HOLDOUT_EVERY, seed=args.seed).validate()
    with tempfile.TemporaryDirectory(prefix="tokenizer-bandai-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        frames_path = work / "frames.npz"
        if not frames_path.exists():
            save_frames(frames_path, prepare(find_bvh_files([str(args.data)]), fps=30.0, mirror=True, progress=False))
        frames = load_frames(frames_path)
        held, train = heldout_clips(frames.clip_names, HOLDOUT_EVERY), training_clips(frames.clip_names, HOLDOUT_EVERY)
        lengths = frames.end_indices - frames.clip_starts + 1
        print(f"data: {frames.n_clips} clips ({len(frames.data)} frames, {frames.layout.size} features); held out "
              f"{len(held)} clips ({int(lengths[held].sum())} frames), every {HOLDOUT_EVERY}th source clip with "
              f"its mirror")
        print(f"config: width {config.width}, {config.codes} codes of dim {config.code_dim}, "
              f"{2 ** config.levels} frames/token, batch {config.batch_size} x {config.window} frames, "
              f"{config.steps} steps, AdamW lr {config.lr:g} (warm-up {config.warmup_steps}, x{config.lr_gamma:g} at "
              f"{config.lr_milestones[0]}), seed {config.seed}")
        seconds = train_variants(frames_path, work, config, args.jobs, args.threads)
        results = {}
        for variant in VARIANTS:
            run = work / "runs" / variant
            model = work / "models" / variant
            if not (model / "model.json").exists():
                model.parent.mkdir(exist_ok=True)
                export_tokenizer(run, model, name=f"tokenizer-{variant}", licence="CC BY-NC-ND 4.0 (do not share)")
            tok = load_tokenizer(model)
            r = evaluate(tok, frames, held, train)
            files = tok.path / tok.info["encoder"], tok.path / tok.info["decoder"]
            r["agreement"] = compare(load_tokenizer_run(run), *files, agreement_clips(frames, held))
            r["speed"] = speed(tok)
            r["train_seconds"] = seconds[variant]
            results[variant] = r
        size = frames.layout.size
        fpt = 2 ** config.levels
        ratio = size * 4 * fpt / 2
        if args.work:
            (work / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print(f"{'':34s}" + "".join(f"{v:>18s}" for v in VARIANTS))
    rows = [("held-out MPJPE, positions (mm)", "mpjpe_mm", "{:.1f}"),
            ("held-out MPJPE, rotations+FK (mm)", "mpjpe_fk_mm", "{:.1f}"),
            ("held-out perplexity", "heldout_perplexity", "{:.1f}"),
            ("held-out code usage", "heldout_usage", "{:.1%}"),
            ("training-clip perplexity", "train_perplexity", "{:.1f}"),
            ("training-clip code usage", "train_usage", "{:.1%}"),
            ("training time (s)", "train_seconds", "{:.0f}")]
    for label, key, fmt in rows:
        print(f"{label:34s}" + "".join(f"{fmt.format(results[v][key]):>18s}" for v in VARIANTS))
    for label, key in (("decoder.onnx alone (frames/s)", "decoder_onnx_fps"),
                       ("decode() with poses (frames/s)", "decode_with_poses_fps"),
                       ("encode() (frames/s)", "encode_fps")):
        print(f"{label:34s}" + "".join(f"{results[v]['speed'][key]:>18,.0f}" for v in VARIANTS))
    for v in VARIANTS:
        a = results[v]["agreement"]
        print(f"onnxruntime vs torch ({v}): {a['mismatched_codes']} differing codes, frames within "
              f"{a['max_frame_difference']:.1e}, lengths {a['lengths']}")
    print(f"compression: {size} float32 features x {fpt} frames = {size * 4 * fpt} bytes per token vs a 2-byte "
          f"uint16 code: {ratio:.0f}x ({np.log2(config.codes):.0f} bits of information per code: "
          f"{size * 32 * fpt / np.log2(config.codes):.0f}x)")
    ema, st = results["ema_reset"], results["straight_through"]
    agree = all(r["agreement"]["mismatched_codes"] == 0 and r["agreement"]["max_frame_difference"] < 1e-4
                for r in results.values())
    ok = ema["mpjpe_mm"] < st["mpjpe_mm"] and ema["train_usage"] >= MIN_USAGE and agree
    print(f"EMA-reset better than straight-through: {'yes' if ema['mpjpe_mm'] < st['mpjpe_mm'] else 'NO'}; "
          f"uses >= {MIN_USAGE:.0%} of its codes: {'yes' if ema['train_usage'] >= MIN_USAGE else 'NO'}; "
          f"ONNX agrees: {'yes' if agree else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
