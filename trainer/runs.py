"""What every training run shares: device choice, seeds and RNG state, the crash-test hook, log.csv, loss
curves, the closing summary and the settings' command-line shortcuts (the Motion VAE trainer and the tokenizer
trainer both use them)."""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from runtime.atomic import atomic_write_text

from .config import ConfigError

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.axes import Axes

# Crash-test hook: the process exits abruptly (no cleanup, like a kill) after this many optimiser steps.
ABORT_ENV = "MVAE_ABORT_AFTER_STEPS"


def resolve_device(name: str) -> torch.device:
    """A torch device from its name ("auto": CUDA when there), with a clear error when CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: not a torch device name (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r}: only cpu and cuda are supported")
    return device


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states as checkpoint-safe plain data."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {k: np.asarray(v).tolist() for k, v in np_state["state"].items()}
    return {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2], "numpy": json.dumps(np_state),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Inverse of rng_state()."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np_state = json.loads(state["numpy"])
    np_state["state"] = {k: np.array(v, dtype=np.uint32) if isinstance(v, list) else v
                         for k, v in np_state["state"].items()}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def write_history_csv(history: list[dict], path: Path) -> None:
    """Write the history rows as CSV (atomically), with every key any row has as a column."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, text.getvalue())


def plot_loss_curves(ax: Axes, x: list, history: list[dict], keys: tuple[str, ...]) -> None:
    """Draw the keys of history that are positive in every row against x on ax, log scale."""
    for key in keys:
        values = [row.get(key) for row in history]
        if all(v is not None and v > 0 for v in values):
            ax.plot(x, values, label=key, marker="." if len(x) < 30 else None)
    ax.set_yscale("log")
    ax.set_ylabel("loss (normalised units)")
    ax.grid(alpha=0.3)


def run_summary(out: Path, history: list[dict], keys: tuple[str, ...]) -> str:
    """One line for the end of a run: steps and training time, the last logged values of keys, where the run is."""
    if not history:
        return f"nothing trained; run in {out}"
    last = history[-1]
    minutes, seconds = divmod(round(sum(row["seconds"] for row in history)), 60)
    values = ", ".join(f"{key} {last[key]:.4g}" for key in keys if key in last)
    return (f"trained {last['step']:,} steps in {minutes} min {seconds} s; last logged {values}; "
            f"run in {out} (checkpoint.pt, log.csv, losses.png)")


def add_shortcuts(group: argparse._ArgumentGroup, defaults: Any, shortcuts: dict[str, str],
                  choices: dict[str, tuple[str, ...]]) -> None:
    """Add a --key option for each config setting in shortcuts (key: what it does), its help with choices and default.

    The choices are listed, not enforced here: the config's validate() rejects a bad value in one line.
    """
    for key, text in shortcuts.items():
        default = getattr(defaults, key)
        allowed = choices.get(key)
        listed = f"one of {', '.join(allowed)}; " if allowed else ""
        group.add_argument("--" + key.replace("_", "-"), dest=key, type=type(default),
                           metavar="|".join(allowed) if allowed else None, help=f"{text} ({listed}default {default})")
