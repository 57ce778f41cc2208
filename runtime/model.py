"""MotionModel: a model directory (decoder.onnx + model.json), validated, with its ONNX sessions.

Every problem with a model directory surfaces as one ModelError sentence naming the file and the fix.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .features import FeatureLayout
from .skeleton import Skeleton

SCHEMA_VERSION = 1
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"
REQUIRED = ("schema_version", "name", "fps", "skeleton", "layout", "normalisation", "latent", "condition_frames",
            "start_frames", "files")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class ModelError(ValueError):
    """A model directory that cannot be used; the message names the file and what is wrong."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Policy:
    """A control policy stored beside the decoder: observation -> latent action."""

    task: str
    session: object
    spec: dict


@dataclass
class MotionModel:
    """A loaded, validated model directory."""

    path: Path
    meta: dict
    skeleton: Skeleton
    layout: FeatureLayout
    shift: np.ndarray  # (F,) normalised = (raw - shift) / scale
    scale: np.ndarray
    start_frames: np.ndarray  # (S, n_cond, F) raw feature windows to start characters from
    decoder: object  # onnxruntime.InferenceSession
    providers: list[str]  # what onnxruntime really uses, in priority order
    bounds: np.ndarray  # (2, F) normalised range beyond which a character counts as diverged
    codebook: np.ndarray | None = None  # (K, latent) for VQ models: latents are codes
    policies: dict[str, Policy] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The model's name."""
        return str(self.meta["name"])

    @property
    def fps(self) -> float:
        """Frames per second the model steps at."""
        return float(self.meta["fps"])

    @property
    def latent_size(self) -> int:
        """Size of the latent z."""
        return int(self.meta["latent"]["size"])

    @property
    def n_cond(self) -> int:
        """Number of past frames the decoder conditions on."""
        return int(self.meta["condition_frames"])

    @property
    def frame_size(self) -> int:
        """Floats in one feature frame."""
        return self.layout.size

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Raw feature frames -> the decoder's units."""
        return ((raw - self.shift) / self.scale).astype(np.float32)

    def sample_latents(self, rng: np.random.Generator, out: np.ndarray) -> None:
        """Fill out (n, latent) float32 from the prior: codebook entries for VQ models, standard normal otherwise."""
        if self.codebook is not None:
            out[:] = self.codebook[rng.integers(len(self.codebook), size=len(out))]
        else:
            rng.standard_normal(out=out, dtype=np.float32)

    def denormalise(self, norm: np.ndarray) -> np.ndarray:
        """The decoder's units -> raw feature frames."""
        return norm * self.scale + self.shift


def model_error(path: Path, msg: str) -> ModelError:
    """A ModelError whose message starts with the file or folder it is about."""
    return ModelError(f"{path}: {msg}")


def read_meta(folder: Path, required: tuple[str, ...] = REQUIRED) -> dict:
    """A model directory's model.json, checked for its schema version and the required fields."""
    meta_path = folder / "model.json"
    if not folder.is_dir():
        raise model_error(folder, "no such model directory")
    if not meta_path.is_file():
        raise model_error(folder, "not a model directory (no model.json); export one with `python -m trainer.export`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise model_error(meta_path, "not a text file") from None
    except json.JSONDecodeError as e:
        raise model_error(meta_path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(meta, dict):
        raise model_error(meta_path, "expected a JSON object")
    version = meta.get("schema_version")
    if not isinstance(version, int):
        raise model_error(meta_path, "missing field 'schema_version'")
    if version > SCHEMA_VERSION:
        raise model_error(meta_path, f"schema version {version} is newer than this runtime understands "
                                     f"({SCHEMA_VERSION}); update the toolkit")
    if required == REQUIRED and meta.get("kind") == "tokenizer":
        raise model_error(meta_path, "this directory holds only a motion tokenizer (no decoder.onnx); "
                                     "open it with runtime.tokenizer.load_tokenizer")
    for key in required:
        if key not in meta:
            raise model_error(meta_path, f"missing field {key!r}")
    return meta


def checked_file(folder: Path, meta: dict, name: str) -> Path:
    """The path of a file that model.json lists, once it is there with the sha256 model.json gives."""
    entry = meta["files"].get(name) if isinstance(meta["files"], dict) else None
    path = folder / name
    if entry is None:
        raise model_error(folder / "model.json", f"'files' does not list {name}")
    if not path.is_file():
        raise model_error(path, "missing from the model directory")
    if sha256_file(path) != entry.get("sha256"):
        raise model_error(path, "sha256 does not match model.json (the file was changed, swapped or corrupted); "
                                "re-export the model")
    return path


def onnx_session(path: Path, providers: str, threads: int, graph: bytes | None = None) -> tuple[object, list[str]]:
    """An onnxruntime session of an ONNX file (or of graph, named by it) and the providers it really uses.

    providers: cpu, cuda or auto.
    """
    import onnxruntime as ort

    if providers not in ("cpu", "cuda", "auto"):
        raise ModelError(f"unknown providers {providers!r} (expected cpu, cuda or auto)")
    available = ort.get_available_providers()
    if providers == "cuda" and PROVIDERS["cuda"] not in available:
        raise ModelError("CUDA was requested but this onnxruntime has no CUDA provider "
                         "(install onnxruntime-gpu in place of onnxruntime)")
    wanted = ([PROVIDERS["cuda"]] if providers in ("cuda", "auto") and PROVIDERS["cuda"] in available else [])
    wanted.append(PROVIDERS["cpu"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path) if graph is None else graph, sess_options=opts, providers=wanted)
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise model_error(path, f"not a loadable ONNX model ({first})") from None
    used = sess.get_providers()
    if providers == "cuda" and PROVIDERS["cuda"] not in used:
        raise model_error(path, "CUDA was requested but onnxruntime fell back to the CPU "
                                "(check the CUDA/cuDNN install)")
    return sess, used


def _check_io(sess, path: Path, inputs: dict[str, int], outputs: dict[str, int]) -> None:
    """The graph's inputs and outputs have the names and last-axis sizes model.json implies."""
    for kind, have, want in (("input", sess.get_inputs(), inputs), ("output", sess.get_outputs(), outputs)):
        got = {i.name: i.shape for i in have}
        for name, size in want.items():
            if name not in got:
                raise model_error(path, f"has no {kind} {name!r} ({kind}s: {', '.join(got)}); re-export the model")
            if isinstance(got[name][-1], int) and got[name][-1] != size:
                raise model_error(path, f"{kind} {name!r} has {got[name][-1]} columns but model.json implies {size}")


def load_model(path: str | Path | None = None, providers: str = "cpu", threads: int = 1) -> MotionModel:
    """Load and validate a model directory (None: the shipped default model).

    providers: "cpu", "cuda" or "auto"; threads: onnxruntime intra-op threads (1 is fastest for small batches).
    """
    folder = Path(path) if path is not None else DEFAULT_MODEL
    meta = read_meta(folder)
    meta_path = folder / "model.json"
    try:
        skeleton = Skeleton.from_dict(meta["skeleton"])
        layout = FeatureLayout.from_dict(meta["layout"])
        n_cond = int(meta["condition_frames"])
        latent = int(meta["latent"]["size"])
        norm = meta["normalisation"]
        shift = np.asarray(norm["shift"], dtype=np.float32)
        scale = np.asarray(norm["scale"], dtype=np.float32)
        starts = np.asarray(meta["start_frames"], dtype=np.float32)
        bounds = np.asarray(meta.get("bounds", [[-np.inf] * layout.size, [np.inf] * layout.size]), np.float32)
        codebook = np.asarray(meta["latent"]["codebook"], np.float32) if "codebook" in meta["latent"] else None
    except (KeyError, TypeError, ValueError) as e:
        raise model_error(meta_path, f"malformed content ({e.__class__.__name__}: {e})") from None
    if layout.joint_names != skeleton.names:
        raise model_error(meta_path, "the feature layout's joints do not match the skeleton's")
    if abs(layout.fps - float(meta["fps"])) > 1e-6:
        raise model_error(meta_path, f"the layout's fps {layout.fps} differs from the model's {meta['fps']}")
    size = layout.size
    if shift.shape != (size,) or scale.shape != (size,) or not np.all(scale > 0):
        raise model_error(meta_path, f"normalisation must hold {size} shifts and {size} positive scales")
    if starts.ndim != 3 or starts.shape[1:] != (n_cond, size) or len(starts) == 0:
        raise model_error(meta_path, f"start_frames must be (count, {n_cond}, {size}), got {starts.shape}")
    if bounds.shape != (2, size):
        raise model_error(meta_path, f"bounds must be (2, {size}), got {bounds.shape}")
    decoder_path = checked_file(folder, meta, "decoder.onnx")
    sess, used = onnx_session(decoder_path, providers, threads)
    c = len(layout.contact_joints)
    _check_io(sess, decoder_path,
              {"z": latent, "condition": n_cond * size, "origin": 3, "yaw": 1, "previous_rotations": 4},
              {"next_condition": n_cond * size, "next_origin": 3, "next_yaw": 1, "positions": 3, "rotations": 4,
               "contacts": c, "next_frame": size})
    model = MotionModel(folder, meta, skeleton, layout, shift, scale, starts, sess, used, bounds, codebook)
    for task, spec in (meta.get("policies") or {}).items():
        file = spec.get("file", f"policy-{task}.onnx")
        psess, _ = onnx_session(checked_file(folder, meta, file), providers, threads)
        model.policies[task] = Policy(task, psess, spec)
    return model
