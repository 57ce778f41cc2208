"""Export a tokenizer run into a model directory: encoder.onnx + tokenizer-decoder.onnx, listed in model.json.

    python -m trainer.tokenizer_export runs/tok --out models/walk    # add to an existing model directory
    python -m trainer.tokenizer_export runs/tok --out models/tok     # or make a tokenizer-only directory

Both graphs take and give raw feature frames (normalisation lives inside them) and have dynamic batch and
time axes: encoder.onnx maps features (B, T, F), T a multiple of frames_per_token, to codes (B, T / fpt)
int64 (the nearest-code argmin is in the graph); tokenizer-decoder.onnx maps codes (B, N) int64 to
features (B, N * fpt, F). Before anything is renamed into place, onnxruntime is checked against torch
(identical codes, frames within 1e-4) over clip lengths from 4 to 400 frames; a failed export writes nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from runtime.atomic import atomic_path, atomic_write_text, folder_lock
from runtime.cli import UsageError, fail, parse, write_error
from runtime.features import FeatureLayout
from runtime.model import SCHEMA_VERSION, ModelError, read_meta, sha256_file
from runtime.skeleton import Skeleton
from runtime.tokenizer import DECODER_FILE, ENCODER_FILE

from .checkpoint import CheckpointError
from .models import MotionTokenizer
from .staging import check_model_out, staged_dir
from .train_tokenizer import TokenizerRun, load_tokenizer_run

OPSET = 17
VERIFY_LENGTHS = (4, 5, 7, 64, 130, 257, 400)
VERIFY_TOLERANCE = 1e-4


class RawUnitsGraph(nn.Module):
    """A tokenizer graph in raw feature units: the normaliser's shift and scale travel with it as buffers."""

    def __init__(self, model: MotionTokenizer, shift: np.ndarray, scale: np.ndarray):
        super().__init__()
        self.model = model
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))


class EncoderGraph(RawUnitsGraph):
    """Raw features (B, T, F) -> codes (B, T / frames_per_token) int64."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Normalise, encode, pick the nearest codes."""
        return self.model.encode((features - self.shift) / self.scale)


class DecoderGraph(RawUnitsGraph):
    """Codes (B, N) int64 -> raw features (B, N * frames_per_token, F)."""

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Look up the codes, decode, denormalise."""
        return self.model.decode(codes) * self.scale + self.shift


def graphs(run: TokenizerRun) -> tuple[EncoderGraph, DecoderGraph]:
    """The two exported graphs of a run, in torch (eval mode, CPU)."""
    model = run.model.cpu().eval()
    norm = run.normaliser
    return EncoderGraph(model, norm.shift, norm.scale).eval(), DecoderGraph(model, norm.shift, norm.scale).eval()


def export_graphs(run: TokenizerRun, encoder_path: Path, decoder_path: Path) -> None:
    """Write encoder and decoder ONNX files with dynamic batch and time axes."""
    encoder, decoder = graphs(run)
    fpt, size = run.spec.frames_per_token, run.layout.size
    with warnings.catch_warnings(), torch.no_grad():  # the TorchScript exporter is deprecated but exact here
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (torch.zeros(2, 16 * fpt, size),), str(encoder_path), input_names=["features"],
                          output_names=["codes"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"features": {0: "batch", 1: "frames"}, "codes": {0: "batch", 1: "tokens"}})
        torch.onnx.export(decoder, (torch.zeros(2, 16, dtype=torch.int64),), str(decoder_path),
                          input_names=["codes"], output_names=["features"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"codes": {0: "batch", 1: "tokens"}, "features": {0: "batch", 1: "frames"}})


def probe_clips(run: TokenizerRun, lengths: tuple[int, ...] = VERIFY_LENGTHS, seed: int = 0) -> list[np.ndarray]:
    """Raw clips of the given lengths that look like motion to the model: decoded from random codes."""
    _, decoder = graphs(run)
    rng = np.random.default_rng(seed)
    fpt = run.spec.frames_per_token
    with torch.no_grad():
        return [decoder(torch.from_numpy(rng.integers(run.spec.codes, size=(1, -(-n // fpt)))))[0, :n].numpy()
                for n in lengths]


def compare(run: TokenizerRun, encoder_path: Path, decoder_path: Path, clips: list[np.ndarray]) -> dict:
    """onnxruntime vs torch on clips (each padded to whole tokens): whether codes agree, worst frame difference."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    enc = ort.InferenceSession(str(encoder_path), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(decoder_path), opts, providers=["CPUExecutionProvider"])
    encoder, decoder = graphs(run)
    fpt = run.spec.frames_per_token
    mismatched, worst = 0, 0.0
    with torch.no_grad():
        for clip in clips:
            extra = -len(clip) % fpt
            x = np.concatenate([clip, np.repeat(clip[-1:], extra, axis=0)])[None].astype(np.float32)
            ort_codes = enc.run(["codes"], {"features": x})[0]
            torch_codes = encoder(torch.from_numpy(x)).numpy()
            mismatched += int((ort_codes != torch_codes).sum())
            ort_frames = dec.run(["features"], {"codes": ort_codes})[0]
            torch_frames = decoder(torch.from_numpy(ort_codes)).numpy()
            worst = max(worst, float(np.abs(ort_frames - torch_frames).max()))
    return {"lengths": [len(c) for c in clips], "mismatched_codes": mismatched, "max_frame_difference": worst}


def tokenizer_section(run: TokenizerRun, identity: str, check: dict, licence: str) -> dict:
    """The "tokenizer" entry of model.json."""
    norm = run.normaliser
    last = run.history[-1] if run.history else {}
    return {
        "encoder": ENCODER_FILE, "decoder": DECODER_FILE, "id": identity,
        "frames_per_token": run.spec.frames_per_token, "codes": run.spec.codes, "code_dim": run.spec.code_dim,
        "quantizer": run.spec.quantizer,
        "graphs": "encoder: features (B, T, F) raw float32, T a multiple of frames_per_token -> codes "
                  "(B, T / frames_per_token) int64; decoder: codes (B, N) int64 -> features "
                  "(B, N * frames_per_token, F) raw float32; normalisation is applied inside both graphs",
        "normalisation": {"kind": norm.kind, "shift": norm.shift.tolist(), "scale": norm.scale.tolist()},
        "spec": run.spec.state(),
        "training": {"steps": run.step, "config": dataclasses.asdict(run.config), "last_log": last},
        "data": {k: v for k, v in run.data.items() if k != "source"} | {"licence": licence},
        "verified": check,
    }


def _identity(encoder_path: Path, decoder_path: Path) -> str:
    both = sha256_file(encoder_path) + sha256_file(decoder_path)
    return hashlib.sha256(both.encode()).hexdigest()[:16]


def _same_shape(meta: dict, run: TokenizerRun, meta_path: Path) -> None:
    """An existing model directory must describe the tokenizer's skeleton and feature layout."""
    try:
        layout = FeatureLayout.from_dict(meta["layout"])
        skeleton = Skeleton.from_dict(meta["skeleton"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{meta_path}: malformed layout or skeleton ({e.__class__.__name__}: {e})") from None
    if layout != run.layout or not skeleton.same_as(run.skeleton) or abs(float(meta["fps"]) - run.fps) > 1e-6:
        raise ModelError(f"{meta_path}: the model's skeleton, feature layout or fps differs from the tokenizer's "
                         f"({layout.size} vs {run.layout.size} features); export into a new directory instead")


def _new_meta(run: TokenizerRun, name: str) -> dict:
    """model.json of a tokenizer-only directory, without the tokenizer entry."""
    return {"schema_version": SCHEMA_VERSION, "name": name, "kind": "tokenizer",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "fps": run.fps, "skeleton": run.skeleton.to_dict(), "layout": run.layout.to_dict(), "files": {}}


def add_tokenizer(run: TokenizerRun, folder: Path, meta: dict, licence: str) -> dict:
    """Write the tokenizer's files into folder (each atomically), then model.json; returns the check figures.

    The ONNX files are verified under temporary names and renamed only when onnxruntime agrees with torch,
    and model.json (with their hashes) is written last.
    """
    with atomic_path(folder / ENCODER_FILE, suffix=".onnx") as enc, \
            atomic_path(folder / DECODER_FILE, suffix=".onnx") as dec:
        export_graphs(run, enc, dec)
        check = compare(run, enc, dec, probe_clips(run))
        if check["mismatched_codes"] or not check["max_frame_difference"] < VERIFY_TOLERANCE:
            raise ModelError(f"{folder}: onnxruntime and torch disagree ({check['mismatched_codes']} code(s) differ, "
                             f"frames by up to {check['max_frame_difference']:.2e}); nothing was written")
        meta = dict(meta, files=dict(meta.get("files") or {}))
        for file, path, inputs, outputs in ((ENCODER_FILE, enc, ["features"], ["codes"]),
                                            (DECODER_FILE, dec, ["codes"], ["features"])):
            meta["files"][file] = {"sha256": sha256_file(path), "graph": "motion tokenizer "
                                   f"({'encoder' if file == ENCODER_FILE else 'decoder'})",
                                   "inputs": inputs, "outputs": outputs}
        meta["tokenizer"] = tokenizer_section(run, _identity(enc, dec), check, licence)
    atomic_write_text(folder / "model.json", json.dumps(meta, indent=1))
    return check


def export_tokenizer(run_path: str | Path, out: str | Path, name: str | None = None,
                     licence: str = "unspecified") -> dict:
    """Add a tokenizer run to the model directory out, or create out as a tokenizer-only directory."""
    run = load_tokenizer_run(run_path)
    out = Path(out)
    if (out / "model.json").is_file():
        with folder_lock(out):  # a policy export may be rewriting model.json too
            meta = read_meta(out, ("schema_version", "name", "fps", "skeleton", "layout", "files"))
            _same_shape(meta, run, out / "model.json")
            return add_tokenizer(run, out, meta, licence)
    if out.exists():
        raise ModelError(f"{out}: exists but is not a model directory (no model.json); choose another --out")
    with staged_dir(out) as staging:
        return add_tokenizer(run, staging, _new_meta(run, name or out.name), licence)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m trainer.tokenizer_export", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (or its checkpoint.pt) written by trainer.train_tokenizer")
    p.add_argument("--out", required=True, help="a model directory to add the tokenizer to, or a new folder")
    p.add_argument("--name", help="model name of a new directory (default: the folder name)")
    p.add_argument("--licence", default="unspecified",
                   help="licence note of the training data, kept in model.json (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input."""
    args = parse(build_parser(), argv)
    try:
        check_model_out(Path(args.out), args.name)
        check = export_tokenizer(args.run, args.out, args.name, args.licence)
    except (CheckpointError, ModelError, UsageError) as e:
        return fail(e)
    except OSError as e:
        return fail(write_error(e, args.out))
    print(f"exported {args.run} -> {args.out}: {ENCODER_FILE}, {DECODER_FILE}; onnxruntime vs torch: identical "
          f"codes, frames within {check['max_frame_difference']:.1e} over clips of "
          f"{min(check['lengths'])}-{max(check['lengths'])} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
