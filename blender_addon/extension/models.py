"""Model directories as the panel names them, loaded once and kept while model.json is unchanged."""
from __future__ import annotations

from pathlib import Path

import bpy

from .errors import AddonError
from .runtime.model import DEFAULT_MODEL, MotionModel, load_model

_cache: dict[tuple[Path, str], tuple[float, MotionModel]] = {}


def resolve(setting: str) -> Path:
    """The panel's model directory as a path ("" picks the model shipped inside the extension, if any)."""
    if setting.strip():
        return Path(bpy.path.abspath(setting.strip())).resolve()
    if (DEFAULT_MODEL / "model.json").is_file():
        return DEFAULT_MODEL
    raise AddonError("Set the model directory in the Motion VAE panel (a folder with model.json and "
                     "decoder.onnx, written by `python -m trainer.export`).")


def load(setting: str, precision: str = "float32") -> MotionModel:
    """The model of a directory setting, stepping its precision's graph; runtime.model.ModelError says what is wrong
    with a bad one."""
    path = resolve(setting)
    meta = path / "model.json"
    stamp = meta.stat().st_mtime if meta.is_file() else -1.0
    hit = _cache.get((path, precision))
    if hit is None or hit[0] != stamp:
        _cache[path, precision] = (stamp, load_model(path, precision=precision))
    return _cache[path, precision][1]


def peek(setting: str, precision: str = "float32") -> MotionModel | None:
    """The model already loaded for a setting, or None; never loads (the panel calls it on every redraw)."""
    try:
        hit = _cache.get((resolve(setting), precision))
    except AddonError:
        return None
    return None if hit is None else hit[1]


def clear() -> None:
    """Forget every loaded model (on unregister, so onnxruntime sessions are freed)."""
    _cache.clear()
