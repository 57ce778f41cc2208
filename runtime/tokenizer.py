"""The motion tokenizer at run time: clips <-> discrete codes through encoder.onnx and tokenizer-decoder.onnx.

    tok = load_tokenizer("models/walk")
    tokens = tok.encode(read_bvh("clip.bvh"))   # or a (T, F) feature array; tokens.codes (N,) int64
    clip = tok.decode(tokens)                   # features, then poses as the controller gives them

One code stands for frames_per_token frames (4 in the recipe). A clip whose length is not a multiple of
that is padded by repeating its last frame; Tokens.padded says how many frames were added, and decode
trims them again because Tokens.length keeps the original length. numpy + onnxruntime only.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .features import FeatureLayout, decode as decode_features
from .features import encode as encode_motion
from .model import ModelError, checked_file, model_error, onnx_session, read_meta
from .motion import Motion
from .rotations import quat_continuous
from .skeleton import Skeleton

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "tokenizer-decoder.onnx"
TOKENS_FORMAT = "motion-tokens"
TOKENS_VERSION = 1
TOKENS_FIELDS = ("format", "version", "codes", "length", "frames_per_token", "fps", "start", "tokenizer")
REQUIRED = ("schema_version", "name", "fps", "skeleton", "layout", "files", "tokenizer")


class TokenError(ModelError):
    """Codes or a clip this tokenizer cannot take (too short, wrong shape, code out of range, another tokenizer's)."""


@dataclass
class Tokens:
    """A clip as codes: what a .tok.npz holds."""

    codes: np.ndarray        # (N,) int64
    length: int              # frames of the original clip; N * frames_per_token - padded
    frames_per_token: int
    fps: float
    start: np.ndarray        # (3,) x, z, yaw of the clip's first character frame
    tokenizer_id: str = ""   # which tokenizer made the codes ("" when unknown)

    @property
    def padded(self) -> int:
        """Frames of padding (copies of the last frame) the encoder saw after the clip."""
        return len(self.codes) * self.frames_per_token - self.length


@dataclass
class DecodedClip:
    """Frames decoded from codes: raw features and the world poses they describe (T frames)."""

    features: np.ndarray          # (T, F) float32 raw feature frames
    root_positions: np.ndarray    # (T, 3) world position of the root joint
    local_rotations: np.ndarray   # (T, J, 4) (x, y, z, w) relative to each parent; the root's in world space
    positions: np.ndarray         # (T, J, 3) world joint positions
    contacts: np.ndarray          # (T, C)
    origin: np.ndarray            # (T, 3) character frame: ground origin
    yaw: np.ndarray               # (T,) character frame: heading

    def motion(self, skeleton: Skeleton, fps: float, name: str = "decoded") -> Motion:
        """The clip as a Motion of skeleton (for BVH output)."""
        trans = np.broadcast_to(skeleton.offsets, self.positions.shape).astype(np.float64)
        trans[:, 0] = self.root_positions
        return Motion(skeleton, self.local_rotations.astype(np.float64), trans, fps, name)


@dataclass
class Tokenizer:
    """A loaded, validated tokenizer of a model directory."""

    path: Path
    meta: dict
    skeleton: Skeleton
    layout: FeatureLayout
    encoder: object           # onnxruntime.InferenceSession: features (B, T, F) -> codes (B, T / fpt)
    decoder: object           # onnxruntime.InferenceSession: codes (B, N) -> features (B, N * fpt, F)
    providers: list[str]

    @property
    def info(self) -> dict:
        """The tokenizer section of model.json."""
        return self.meta["tokenizer"]

    @property
    def frames_per_token(self) -> int:
        """Frames one code stands for."""
        return int(self.info["frames_per_token"])

    @property
    def codes(self) -> int:
        """Codebook size: codes run 0 .. codes - 1."""
        return int(self.info["codes"])

    @property
    def fps(self) -> float:
        """Frame rate of the clips it encodes and decodes."""
        return float(self.meta["fps"])

    @property
    def id(self) -> str:
        """Short fingerprint of the two ONNX files: codes only mean something to the tokenizer that made them."""
        return str(self.info["id"])

    def clip_features(self, motion: Motion) -> tuple[np.ndarray, np.ndarray]:
        """A Motion -> raw feature frames (T, F) and its start (x, z, yaw), prepared as trainer.prepare does."""
        motion = motion.without_static_root()
        names = list(self.layout.joint_names)
        missing = [n for n in names if n not in motion.skeleton.names]
        if missing:
            raise TokenError(f"{motion.name or 'the clip'}: its skeleton lacks joint(s) {', '.join(missing[:5])} "
                             f"of the tokenizer's {len(names)}-joint skeleton")
        if list(motion.skeleton.names) != names:
            try:
                motion = motion.subset(names)
            except ValueError as e:
                raise TokenError(f"{motion.name or 'the clip'}: cannot keep the tokenizer's joints ({e})") from None
        if list(motion.skeleton.names) != names or not np.array_equal(motion.skeleton.parents, self.skeleton.parents):
            raise TokenError(f"{motion.name or 'the clip'}: its hierarchy differs from the tokenizer's skeleton")
        motion = motion.rigid().resample(self.fps)
        enc = encode_motion(motion, self.layout)
        return enc.features.astype(np.float32), enc.start

    def encode(self, clip: Motion | np.ndarray, start: np.ndarray | None = None) -> Tokens:
        """A clip (Motion, or raw feature frames (T, F)) -> Tokens; pads to a whole number of tokens."""
        if isinstance(clip, Motion):
            features, start = self.clip_features(clip)
        else:
            features = np.asarray(clip, dtype=np.float32)
        self._check_features(features)
        fpt = self.frames_per_token
        extra = -len(features) % fpt
        padded = np.concatenate([features, np.repeat(features[-1:], extra, axis=0)]) if extra else features
        codes = self.encoder.run(["codes"], {"features": np.ascontiguousarray(padded[None])})[0][0]
        return Tokens(codes.astype(np.int64), len(features), fpt, self.fps,
                      np.zeros(3) if start is None else np.asarray(start, np.float64), self.id)

    def decode_features(self, codes: np.ndarray) -> np.ndarray:
        """Codes (N,) -> raw feature frames (N * frames_per_token, F) float32."""
        codes = self._checked_codes(codes)
        return self.decoder.run(["features"], {"codes": codes[None]})[0][0]

    def decode(self, tokens: Tokens | np.ndarray, length: int | None = None,
               start: np.ndarray | None = None) -> DecodedClip:
        """Tokens (or bare codes (N,)) -> features and world poses; trimmed to the original length."""
        if isinstance(tokens, Tokens):
            if tokens.tokenizer_id and tokens.tokenizer_id != self.id:
                raise TokenError(f"these codes were made by tokenizer {tokens.tokenizer_id}, not by {self.id} "
                                 f"({self.path}); decode them with the model directory that encoded them")
            if tokens.frames_per_token != self.frames_per_token:
                raise TokenError(f"these codes stand for {tokens.frames_per_token} frames each, this tokenizer's "
                                 f"for {self.frames_per_token}")
            codes, length, start = tokens.codes, tokens.length, tokens.start if start is None else start
        else:
            codes = tokens
        features = self.decode_features(codes)
        if length is not None:
            if not len(features) - self.frames_per_token < length <= len(features):
                raise TokenError(f"a length of {length} frames does not fit {len(features) // self.frames_per_token} "
                                 f"tokens of {self.frames_per_token} frames")
            features = features[:length]
        pose, origin, yaw = decode_features(features.astype(np.float64), self.layout, self.skeleton,
                                            None if start is None else np.asarray(start, np.float64))
        return DecodedClip(features, pose.root_position.astype(np.float32),
                           quat_continuous(pose.local_rotations).astype(np.float32),
                           pose.positions.astype(np.float32), pose.contacts.astype(np.float32),
                           origin.astype(np.float32), yaw.astype(np.float32))

    def _check_features(self, features: np.ndarray) -> None:
        if features.ndim != 2 or features.shape[1] != self.layout.size:
            raise TokenError(f"expected feature frames of shape (frames, {self.layout.size}), got {features.shape}")
        if len(features) < self.frames_per_token:
            raise TokenError(f"the clip has {len(features)} frame(s), shorter than one token: this tokenizer needs "
                             f"at least {self.frames_per_token} frames")
        if not np.isfinite(features).all():
            raise TokenError(f"the clip holds NaN or infinite values (first at frame "
                             f"{int(np.argwhere(~np.isfinite(features))[0, 0])})")

    def _checked_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 1 or not (np.issubdtype(codes.dtype, np.integer) or codes.size == 0):
            raise TokenError(f"expected a 1-D array of integer codes, got {codes.dtype} {codes.shape}")
        if codes.size == 0:
            raise TokenError("there are no codes to decode")
        bad = np.flatnonzero((codes < 0) | (codes >= self.codes))
        if len(bad):
            raise TokenError(f"code {int(codes[bad[0]])} at token {int(bad[0])} is out of range: this tokenizer "
                             f"has {self.codes} codes (0..{self.codes - 1})")
        return codes.astype(np.int64)


def load_tokenizer(path: str | Path, providers: str = "cpu", threads: int = 1) -> Tokenizer:
    """Load and validate the tokenizer of a model directory (files present, hashes right, graph shapes)."""
    folder = Path(path)
    meta = read_meta(folder, REQUIRED[:-1])
    meta_path = folder / "model.json"
    if "tokenizer" not in meta:
        raise model_error(meta_path, "holds no motion tokenizer; add one with "
                                     f"`python -m trainer.tokenizer_export RUN --out {folder}`")
    try:
        skeleton = Skeleton.from_dict(meta["skeleton"])
        layout = FeatureLayout.from_dict(meta["layout"])
        info = meta["tokenizer"]
        fpt, codes, _ = int(info["frames_per_token"]), int(info["codes"]), str(info["id"])
        files = (str(info.get("encoder", ENCODER_FILE)), str(info.get("decoder", DECODER_FILE)))
    except (KeyError, TypeError, ValueError) as e:
        raise model_error(meta_path, f"malformed tokenizer description ({e.__class__.__name__}: {e})") from None
    if layout.joint_names != skeleton.names:
        raise model_error(meta_path, "the feature layout's joints do not match the skeleton's")
    if fpt < 1 or codes < 1:
        raise model_error(meta_path, f"the tokenizer needs positive frames_per_token and codes, got {fpt} and {codes}")
    sessions, used = [], []
    for name, (inp, out) in zip(files, (("features", "codes"), ("codes", "features"))):
        file = checked_file(folder, meta, name)
        sess, used = onnx_session(file, providers, threads)
        _check_graph(sess, file, inp, out, layout.size)
        sessions.append(sess)
    return Tokenizer(folder, meta, skeleton, layout, sessions[0], sessions[1], used)


def _check_graph(sess, path: Path, inp: str, out: str, size: int) -> None:
    """The graph maps inp to out with a dynamic time axis; feature arrays have size columns."""
    for kind, have, name in (("input", sess.get_inputs(), inp), ("output", sess.get_outputs(), out)):
        shapes = {i.name: i.shape for i in have}
        if name not in shapes:
            raise model_error(path, f"has no {kind} {name!r} ({kind}s: {', '.join(shapes)}); re-export the tokenizer")
        shape = shapes[name]
        want = "(batch, time, features)" if name == "features" else "(batch, tokens)"
        if len(shape) != (3 if name == "features" else 2) or isinstance(shape[1], int):
            raise model_error(path, f"{kind} {name!r} has shape {shape}, not {want} with a dynamic time axis; "
                                    "re-export the tokenizer")
        if name == "features" and isinstance(shape[2], int) and shape[2] != size:
            raise model_error(path, f"{kind} 'features' has {shape[2]} columns but model.json's layout has {size}")


def encode(clip: Motion | np.ndarray, tokenizer: Tokenizer | str | Path) -> Tokens:
    """Encode a clip with a Tokenizer or the tokenizer of a model directory."""
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    return tok.encode(clip)


def decode(codes: Tokens | np.ndarray, tokenizer: Tokenizer | str | Path) -> DecodedClip:
    """Decode Tokens (or bare codes) with a Tokenizer or the tokenizer of a model directory."""
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    return tok.decode(codes)


def save_tokens(path: str | Path, tokens: Tokens, tokenizer_name: str = "") -> None:
    """Write a .tok.npz atomically; codes are stored as uint16 when they fit (2 bytes per token)."""
    codes = np.asarray(tokens.codes)
    dtype = np.uint16 if codes.size == 0 or (codes.min() >= 0 and codes.max() < 2 ** 16) else np.int64
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, format=np.array(TOKENS_FORMAT), version=np.int64(TOKENS_VERSION),
                 codes=codes.astype(dtype), length=np.int64(tokens.length),
                 frames_per_token=np.int64(tokens.frames_per_token), fps=np.float64(tokens.fps),
                 start=np.asarray(tokens.start, np.float64),
                 tokenizer=np.array(json.dumps({"id": tokens.tokenizer_id, "name": tokenizer_name})))


def load_tokens(path: str | Path) -> Tokens:
    """Read a .tok.npz; TokenError with one sentence when it is not one."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise TokenError(f"{path}: expected a .tok.npz file, found a folder or special file")
    try:
        npz = np.load(path, allow_pickle=False)
        if not hasattr(npz, "files"):  # a bare .npy array
            raise TokenError(f"{path}: not a tokens file (a .npy array, not an .npz archive)")
        with npz:
            arrays = {k: npz[k] for k in npz.files if k in TOKENS_FIELDS}
    except TokenError:
        raise
    except FileNotFoundError:
        raise TokenError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as e:
        raise TokenError(f"{path}: not a readable .npz file ({e.__class__.__name__})") from None
    if "format" not in arrays or arrays["format"].shape != () or str(arrays["format"][()]) != TOKENS_FORMAT:
        raise TokenError(f"{path}: not a tokens file (write one with `python -m runtime.tokens encode`)")
    missing = [k for k in TOKENS_FIELDS if k not in arrays]
    if missing:
        raise TokenError(f"{path}: malformed tokens file (no {missing[0]!r})")

    def scalar(key: str, kind: str) -> float | int:
        a = arrays[key]
        if a.shape != () or a.dtype.kind not in kind:
            what = "integer" if kind == "iu" else "number"
            raise TokenError(f"{path}: malformed tokens file ({key!r} must be one {what}, got {a.dtype} {a.shape})")
        return a[()].item()

    version = scalar("version", "iu")
    if version > TOKENS_VERSION or version < 1:
        raise TokenError(f"{path}: tokens format version {version} is not one this runtime reads (1..{TOKENS_VERSION})")
    length, fpt, fps = scalar("length", "iu"), scalar("frames_per_token", "iu"), scalar("fps", "iuf")
    codes, start = arrays["codes"], arrays["start"]
    if codes.ndim != 1 or codes.dtype.kind not in "iu" or codes.size == 0:
        raise TokenError(f"{path}: malformed tokens file ('codes' must be a non-empty 1-D integer array, got "
                         f"{codes.dtype} {codes.shape})")
    if start.shape != (3,) or start.dtype.kind not in "iuf" or not np.isfinite(start).all():
        raise TokenError(f"{path}: malformed tokens file ('start' must be 3 finite numbers: x, z, yaw)")
    if not 1 <= fpt <= 1024 or not len(codes) * fpt - fpt < length <= len(codes) * fpt:
        raise TokenError(f"{path}: malformed tokens file (length {length} does not fit {len(codes)} codes of "
                         f"{fpt} frames)")
    if not (np.isfinite(fps) and 0 < fps <= 1000):
        raise TokenError(f"{path}: malformed tokens file ('fps' must be in (0, 1000], got {fps})")
    try:
        info = json.loads(str(arrays["tokenizer"][()])) if arrays["tokenizer"].shape == () else None
    except (ValueError, RecursionError):
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("id", ""), str):
        raise TokenError(f"{path}: malformed tokens file ('tokenizer' must be JSON text with the tokenizer's id)")
    return Tokens(codes.astype(np.int64), int(length), int(fpt), float(fps), start.astype(np.float64),
                  info.get("id", ""))
