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
from .footlock import PARAMS, STATE_WIDTH, VERSION as FOOT_LOCK_VERSION, find_legs
from .skeleton import Skeleton

SCHEMA_VERSION = 2  # 2: decoder.onnx may lock feet (its foot_lock inputs and outputs, model.json's foot_lock)
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"
REQUIRED = ("schema_version", "name", "fps", "skeleton", "layout", "normalisation", "latent", "condition_frames",
            "start_frames", "files")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
FLOAT_FILE, INT8_FILE = "decoder.onnx", "decoder-int8.onnx"
PRECISIONS = ("float32", "int8")  # of the step graph's network; the pose decoding is float32 in both


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
    foot_lock_in_graph: bool = False  # decoder.onnx also locks feet (runtime/footlock.py, trainer/foot_lock_graph.py)
    precision: str = "float32"  # which step graph `decoder` runs: float32 (decoder.onnx) or int8
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
    def decoder_file(self) -> Path:
        """The ONNX file of the step graph `decoder` runs."""
        return self.path / step_file(self.meta, self.precision)

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
    if meta_path.exists() and not meta_path.is_file():
        raise model_error(meta_path, "is not a file (a folder or special file)")
    if not meta_path.is_file():
        raise model_error(folder, "not a model directory (no model.json); export one with `python -m trainer.export`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise model_error(meta_path, "not a UTF-8 text file") from None
    except json.JSONDecodeError as e:
        raise model_error(meta_path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise model_error(meta_path, "JSON nested too deeply to be a model description") from None
    except OSError as e:
        raise model_error(meta_path, f"cannot read ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise model_error(meta_path, "expected a JSON object")
    version = meta.get("schema_version")
    if "schema_version" not in meta:
        raise model_error(meta_path, "missing field 'schema_version'")
    if isinstance(version, bool) or not isinstance(version, int):
        raise model_error(meta_path, f"field 'schema_version' must be an integer, got {_short(version)}")
    if version > SCHEMA_VERSION:
        raise model_error(meta_path, f"schema version {version} is newer than this runtime understands "
                                     f"({SCHEMA_VERSION}); update the toolkit")
    if required == REQUIRED and meta.get("kind") == "tokenizer":
        raise model_error(meta_path, "this directory holds only a motion tokenizer (no decoder.onnx); "
                                     "open it with runtime.tokenizer.load_tokenizer")
    check_meta(meta, meta_path, required)
    return meta


def checked_file(folder: Path, meta: dict, name: str) -> Path:
    """The path of a file that model.json lists, once it is there with the sha256 model.json gives."""
    entry = meta["files"].get(name) if isinstance(meta["files"], dict) else None
    path = folder / name
    if entry is None:
        raise model_error(folder / "model.json", f"'files' does not list {name}")
    if path.exists() and not path.is_file():
        raise model_error(path, "is not a file (a folder or special file)")
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


def _check_io(sess, path: Path, inputs: dict[str, int | None], outputs: dict[str, int | None]) -> None:
    """The graph's inputs and outputs have the names and last-axis sizes (None: any) model.json implies."""
    for kind, have, want in (("input", sess.get_inputs(), inputs), ("output", sess.get_outputs(), outputs)):
        got = {i.name: i.shape for i in have}
        for name, size in want.items():
            if name not in got:
                raise model_error(path, f"has no {kind} {name!r} ({kind}s: {', '.join(got)}); re-export the model")
            if size is not None and isinstance(got[name][-1], int) and got[name][-1] != size:
                raise model_error(path, f"{kind} {name!r} has {got[name][-1]} columns but model.json implies {size}")


def _check_foot_lock(sess, path: Path, meta: dict, skeleton: Skeleton, layout: FeatureLayout) -> bool:
    """Whether the decoder locks feet too (models exported before it did not); its foot-lock inputs and outputs
    checked against this runtime's lock (runtime/footlock.py) when it does."""
    if "foot_lock_state" not in {i.name for i in sess.get_inputs()}:
        return False
    version = (meta.get("foot_lock") or {}).get("version")
    if version != FOOT_LOCK_VERSION:
        raise model_error(path, f"its foot lock is version {version} but this runtime's is {FOOT_LOCK_VERSION}; "
                                "re-export the model with this toolkit (python -m trainer.export)")
    _check_io(sess, path, {"foot_lock_state": STATE_WIDTH, "foot_lock_enabled": None,
                           "foot_lock_settings": len(PARAMS) * len(find_legs(skeleton, layout))},
              {"shown_rotations": 4, "shown_positions": 3, "next_foot_lock_state": STATE_WIDTH})
    return True


def step_file(meta: dict, precision: str) -> str:
    """The file name of a model's step graph of a precision (model.json's precisions; decoder.onnx for float32)."""
    return (meta.get("precisions") or {}).get(precision, FLOAT_FILE if precision == "float32" else "")


def _step_graph(folder: Path, meta: dict, precision: str) -> Path:
    """The checked file of the step graph of a precision; ModelError when the directory has none or a stale one."""
    name = step_file(meta, precision)
    if not name:
        raise model_error(folder / "model.json", f"the model has no {precision} step graph; add one with "
                                                 f"`python -m trainer.export --precision {precision} {folder}`")
    path = checked_file(folder, meta, name)
    source = meta["files"][name].get("quantised_from")
    if source is not None and source != (meta["files"].get(FLOAT_FILE) or {}).get("sha256"):
        raise model_error(path, f"was made from another {FLOAT_FILE} than this one; make it again with "
                                f"`python -m trainer.export --precision {precision} {folder}`")
    return path


def load_model(path: str | Path | None = None, providers: str = "cpu", threads: int = 1,
               precision: str = "float32") -> MotionModel:
    """Load and validate a model directory (None: the shipped default model).

    providers: "cpu", "cuda" or "auto"; threads: onnxruntime intra-op threads (1 is fastest for small batches);
    precision: "float32" or "int8", the step graph to run (int8 when the directory has one).
    """
    folder = Path(path) if path is not None else DEFAULT_MODEL
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r} (expected {' or '.join(PRECISIONS)})")
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
    decoder_path = _step_graph(folder, meta, precision)
    sess, used = onnx_session(decoder_path, providers, threads)
    c = len(layout.contact_joints)
    _check_io(sess, decoder_path,
              {"z": latent, "condition": n_cond * size, "origin": 3, "yaw": 1, "previous_rotations": 4},
              {"next_condition": n_cond * size, "next_origin": 3, "next_yaw": 1, "positions": 3, "rotations": 4,
               "contacts": c, "next_frame": size})
    in_graph = _check_foot_lock(sess, decoder_path, meta, skeleton, layout)
    model = MotionModel(folder, meta, skeleton, layout, shift, scale, starts, sess, used, bounds, codebook, in_graph,
                        precision)
    for task, spec in (meta.get("policies") or {}).items():
        file = spec.get("file", f"policy-{task}.onnx")
        psess, _ = onnx_session(checked_file(folder, meta, file), providers, threads)
        _check_io(psess, folder / file, {"observation": spec["observation"]["size"]}, {"latent": latent})
        model.policies[task] = Policy(task, psess, spec)
    return model


# ---- model.json schema ----------------------------------------------------------------------------------
# Every field a reader uses is checked here, strictly (types, ranges, shapes, finiteness), when present;
# read_meta says which must be present. Keys this runtime does not know are tolerated (newer exports add some).

MIN_FPS, MAX_FPS = 1.0, 1000.0
MAX_ABS_VALUE = 1e6  # features, statistics and codes: beyond this float32 arithmetic overflows in a few steps
MAX_OFFSET_M = 100.0
MAX_JOINTS = 1024
MAX_LATENT = 4096
MAX_CONDITION_FRAMES = 64
RECORDS = ("training", "data", "verified", "created")  # free-form provenance: read by people, not by code


class _Schema:
    """Checks of one model.json, each failure a ModelError naming the file and the field."""

    def __init__(self, meta_path: Path) -> None:
        self.path = meta_path

    def error(self, field: str, expected: str, got: str | None = None) -> ModelError:
        return model_error(self.path, f"field {field!r} must be {expected}" + (f", got {got}" if got else ""))

    def integer(self, value: object, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(field, f"an integer in [{low}, {high}]", _short(value))
        return value

    def number(self, value: object, field: str, low: float, high: float, low_open: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(value, int) or bool(np.isfinite(value)))
        if not ok or not (value > low if low_open else value >= low) or value > high:
            span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise self.error(field, f"a finite number in {span}", _short(value))
        return float(value)

    def text(self, value: object, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, "a non-empty string", _short(value))
        return value

    def mapping(self, value: object, field: str) -> dict:
        if not isinstance(value, dict):
            raise self.error(field, "a JSON object", _short(value))
        return value

    def names(self, value: object, field: str, unique: bool = True) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(field, "a list of non-empty strings", _short(value))
        if unique and len(set(value)) != len(value):
            dup = next(v for i, v in enumerate(value) if v in value[:i])
            raise self.error(field, "a list of distinct names", f"{dup!r} twice")
        return value

    def array(self, value: object, field: str, shape: tuple[int | None, ...], allow_inf: bool = False,
              limit: float = MAX_ABS_VALUE) -> np.ndarray:
        """A nested list of numbers of shape (None: any length >= 1), finite unless allow_inf, within +-limit."""
        want = "x".join("N" if s is None else str(s) for s in shape)
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):  # ragged nesting
            arr = np.asarray(None)
        if arr.dtype.kind not in "iuf" or arr.ndim != len(shape) or any(
                (s is None and n < 1) or (s is not None and n != s) for s, n in zip(shape, arr.shape)):
            got = f"shape {arr.shape}" if arr.dtype.kind in "iuf" else "other values"
            raise self.error(field, f"{want} numbers" if len(shape) == 1 else f"a {want} array of numbers", got)
        arr = arr.astype(np.float64)
        bad = np.isnan(arr) if allow_inf else ~np.isfinite(arr)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise self.error(field, "finite numbers" if not allow_inf else "numbers (not NaN)",
                             f"{arr[where]} at index {list(where)}")
        big = np.isfinite(arr) & (np.abs(arr) > limit)
        if big.any():
            where = tuple(int(i) for i in np.argwhere(big)[0])
            raise self.error(field, f"numbers within +-{limit:g}", f"{arr[where]:g} at index {list(where)}")
        return arr

    def file_name(self, value: object, field: str) -> str:
        name = self.text(value, field)
        if name in (".", "..") or "/" in name or "\\" in name:
            raise self.error(field, "a file name inside the model directory", _short(value))
        return name


def _short(value: object) -> str:
    text = json.dumps(value, allow_nan=True, default=str) if not isinstance(value, str) or len(value) < 60 else ""
    return (text if len(text) <= 60 else text[:57] + "...") if text else repr(value[:40] + "...")


def _is_sha256(digest: object) -> bool:
    return isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def _first_non_finite(meta: dict) -> tuple[str, float] | None:
    """Field path and value of the first NaN or infinity outside the provenance records and the bounds."""
    stack: list[tuple[str, object]] = [(k, v) for k, v in meta.items() if k not in RECORDS + ("bounds",)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not np.isfinite(value):
            return where, value
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}", v) for k, v in value.items() if k not in RECORDS)
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
    return None


def check_meta(meta: dict, meta_path: Path, required: tuple[str, ...] = REQUIRED) -> None:
    """model.json checked against its schema; ModelError naming the file and field of the first problem.

    Fields in required must be present; every known field that is present is checked.
    """
    s = _Schema(meta_path)
    for key in required:
        if key not in meta:
            raise model_error(meta_path, f"missing field {key!r}")
    s.integer(meta.get("schema_version"), "schema_version", 1, SCHEMA_VERSION)
    if "name" in meta:
        s.text(meta["name"], "name")
    fps = s.number(meta["fps"], "fps", MIN_FPS, MAX_FPS) if "fps" in meta else None
    skeleton = _check_skeleton(s, meta["skeleton"]) if "skeleton" in meta else None
    layout = _check_layout(s, meta["layout"], skeleton, fps) if "layout" in meta else None
    size = layout.size if layout is not None else None
    if "normalisation" in meta:
        norm = s.mapping(meta["normalisation"], "normalisation")
        for key in ("shift", "scale"):
            if key not in norm:
                raise model_error(meta_path, f"missing field 'normalisation.{key}'")
            arr = s.array(norm[key], f"normalisation.{key}", (size,))
            if key == "scale" and np.any(arr < 1e-9):  # a zero scale divides by zero
                raise s.error("normalisation.scale", "numbers of at least 1e-9", f"{arr[np.argmax(arr < 1e-9)]:g}")
    if "bounds" in meta:
        bounds = s.array(meta["bounds"], "bounds", (2, size), allow_inf=True)
        if np.any(bounds[0] >= bounds[1]):
            raise s.error("bounds", "a lower row below the upper row")
    latent = _check_latent(s, meta["latent"]) if "latent" in meta else None
    n_cond = (s.integer(meta["condition_frames"], "condition_frames", 1, MAX_CONDITION_FRAMES)
              if "condition_frames" in meta else None)
    if "start_frames" in meta:
        s.array(meta["start_frames"], "start_frames", (None, n_cond, size))
    files = s.mapping(meta["files"], "files") if "files" in meta else {}
    for name, entry in files.items():
        s.file_name(name, "files")
        entry = s.mapping(entry, f"files.{name}")
        if not _is_sha256(entry.get("sha256")):
            raise s.error(f"files.{name}.sha256", "64 lowercase hex digits", _short(entry.get("sha256")))
    if meta.get("precisions") is not None:
        for precision, name in s.mapping(meta["precisions"], "precisions").items():
            if precision not in PRECISIONS:
                raise s.error("precisions", f"keys among {', '.join(PRECISIONS)}", _short(precision))
            if s.file_name(name, f"precisions.{precision}") not in files:
                raise model_error(meta_path, f"'files' does not list {name} (the file of precisions.{precision})")
    for name, entry in files.items():
        if "quantised_from" in entry and not _is_sha256(entry["quantised_from"]):
            raise s.error(f"files.{name}.quantised_from", "64 lowercase hex digits", _short(entry["quantised_from"]))
    if meta.get("policies") is not None:
        for task, spec in s.mapping(meta["policies"], "policies").items():
            _check_policy(s, task, spec, files, size, latent)
    if meta.get("tokenizer") is not None:
        _check_tokenizer(s, meta["tokenizer"], files, size)
    if meta.get("foot_lock") is not None:
        lock = s.mapping(meta["foot_lock"], "foot_lock")
        s.integer(lock.get("version"), "foot_lock.version", 1, 1 << 20)
        contacts = len(layout.contact_joints) if layout is not None else None
        s.array(lock.get("planted_m"), "foot_lock.planted_m", (contacts,), limit=MAX_OFFSET_M)
    bad = _first_non_finite(meta)  # in fields read elsewhere, and in those a newer export adds
    if bad is not None:
        raise model_error(meta_path, f"field {bad[0]!r} must be finite, got {bad[1]}")


def _check_skeleton(s: _Schema, value: object) -> Skeleton:
    d = s.mapping(value, "skeleton")
    for key in ("names", "parents", "offsets"):
        if key not in d:
            raise model_error(s.path, f"missing field 'skeleton.{key}'")
    names = s.names(d["names"], "skeleton.names")
    n = len(names)
    if not 1 <= n <= MAX_JOINTS:
        raise s.error("skeleton.names", f"1 to {MAX_JOINTS} joint names", str(n))
    parents = d["parents"]
    if not isinstance(parents, list) or len(parents) != n or not all(
            isinstance(p, int) and not isinstance(p, bool) and -1 <= p < i for i, p in enumerate(parents)) \
            or parents[0] != -1 or -1 in parents[1:]:
        raise s.error("skeleton.parents", f"{n} parent indices, -1 for the root (joint 0) and each other joint's "
                                          "parent before it", _short(parents))
    s.array(d["offsets"], "skeleton.offsets", (n, 3), limit=MAX_OFFSET_M)
    ends = d.get("end_offsets")
    if ends is not None:
        if not isinstance(ends, list) or len(ends) != n:
            raise s.error("skeleton.end_offsets", f"{n} entries (null or [x, y, z])", _short(ends))
        for j, e in enumerate(ends):
            if e is not None:
                s.array(e, f"skeleton.end_offsets[{j}]", (3,), limit=MAX_OFFSET_M)
    try:
        return Skeleton.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise model_error(s.path, f"field 'skeleton' is malformed ({e})") from None


def _check_layout(s: _Schema, value: object, skeleton: Skeleton | None, fps: float | None) -> FeatureLayout:
    d = s.mapping(value, "layout")
    names = s.names(d.get("joint_names"), "layout.joint_names")
    for key in ("contact_joints", "heading_joints"):
        if key in d:
            unknown = [v for v in s.names(d[key], f"layout.{key}") if v not in names]
            if unknown:
                raise s.error(f"layout.{key}", "joints of layout.joint_names", repr(unknown[0]))
    s.number(d.get("fps"), "layout.fps", MIN_FPS, MAX_FPS)
    if "version" in d:
        s.integer(d["version"], "layout.version", 1, 1 << 20)
    try:
        layout = FeatureLayout.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise model_error(s.path, f"field 'layout' is malformed ({e})") from None
    if skeleton is not None and layout.joint_names != skeleton.names:
        raise model_error(s.path, "the feature layout's joints do not match the skeleton's")
    if fps is not None and abs(layout.fps - fps) > 1e-6:
        raise model_error(s.path, f"the layout's fps {layout.fps} differs from the model's {fps}")
    if "size" in d and d["size"] != layout.size:
        raise s.error("layout.size", f"{layout.size} (what its joints and contacts make)", _short(d["size"]))
    return layout


def _check_latent(s: _Schema, value: object) -> int:
    d = s.mapping(value, "latent")
    size = s.integer(d.get("size"), "latent.size", 1, MAX_LATENT)
    if "prior" in d:
        s.text(d["prior"], "latent.prior")
    if "codebook" in d:
        s.array(d["codebook"], "latent.codebook", (None, size))
    return size


def _check_policy(s: _Schema, task: str, spec: object, files: dict, size: int | None, latent: int | None) -> None:
    where = f"policies.{task}"
    spec = s.mapping(spec, where)
    name = s.file_name(spec.get("file", f"policy-{task}.onnx"), f"{where}.file")
    if name not in files:
        raise model_error(s.path, f"'files' does not list {name} (the file of {where})")
    obs = s.mapping(spec.get("observation"), f"{where}.observation")
    width = s.integer(obs.get("size"), f"{where}.observation.size", 1, 1 << 20)
    blocks = obs.get("blocks")
    ok = isinstance(blocks, list) and len(blocks) > 0
    at = 0
    for b in blocks if ok else []:
        ok = (isinstance(b, list) and len(b) == 3 and isinstance(b[0], str)
              and all(isinstance(v, int) and not isinstance(v, bool) for v in b[1:]) and b[1] == at and b[2] > b[1])
        if not ok:
            break
        at = b[2]
    if not ok or at != width:
        raise s.error(f"{where}.observation.blocks", f"[name, start, stop] blocks covering 0..{width} in order",
                      _short(blocks))
    frame = [b for b in blocks if b[0] == "frame"]
    if size is not None and frame and frame[0][2] - frame[0][1] != size:
        raise s.error(f"{where}.observation.blocks", f"a 'frame' block of {size} columns (the frame size)",
                      _short(frame[0]))
    action = s.mapping(spec.get("action"), f"{where}.action")
    if latent is not None and action.get("size") != latent:
        raise s.error(f"{where}.action.size", f"{latent} (the latent size)", _short(action.get("size")))
    if "scale" in action:
        s.number(action["scale"], f"{where}.action.scale", 0.0, 1e6, low_open=True)
    if "task" in spec:
        s.mapping(spec["task"], f"{where}.task")
    if task == "path":  # the runtime reads how far ahead the path policy looks
        s.number((spec.get("task") or {}).get("lookahead_m"), f"{where}.task.lookahead_m", 0.0, 100.0,
                 low_open=True)


def _check_tokenizer(s: _Schema, value: object, files: dict, size: int | None) -> None:
    d = s.mapping(value, "tokenizer")
    s.integer(d.get("frames_per_token"), "tokenizer.frames_per_token", 1, 1 << 10)
    s.integer(d.get("codes"), "tokenizer.codes", 1, 1 << 31)
    s.text(d.get("id"), "tokenizer.id")
    for key in ("encoder", "decoder"):
        if key in d:
            name = s.file_name(d[key], f"tokenizer.{key}")
            if name not in files:
                raise model_error(s.path, f"'files' does not list {name} (tokenizer.{key})")
    if isinstance(d.get("normalisation"), dict):
        for key in ("shift", "scale"):
            if key in d["normalisation"]:
                s.array(d["normalisation"][key], f"tokenizer.normalisation.{key}", (size,))
