"""Training configuration: one flat dataclass, read from TOML and overridden from the command line."""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# TOML files may group keys under these tables; they all land in one flat config (TrainConfig, TokenizerConfig).
SECTIONS = ("model", "data", "train", "loss")
PAPER_PHASES = (20, 20, 100)  # teacher, ramping, student epochs in Ling et al. 2020
# The settings of TrainConfig with a fixed set of values (validate checks them; the CLI lists them).
CHOICES = {"decoder": ("mixture", "single"), "expert_init": ("reference", "linear"),
           "normalisation": ("zscore", "minmax", "none"), "kl_mode": ("beta", "capacity"),
           "prior": ("standard", "learned")}


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


@dataclass
class TrainConfig:
    """Everything that decides a training run (the data path and run folder are given separately)."""

    # model
    decoder: str = "mixture"          # mixture | single
    quantize: bool = False            # per-frame VQ codebook instead of a Gaussian latent
    latent: int = 32
    hidden: int = 256
    experts: int = 6
    gate_hidden: int = 64
    expert_init: str = "reference"    # reference (about 16x smaller than nn.Linear, biases 0.01) | linear
    n_cond: int = 1
    n_future: int = 1
    future_stride: int = 1            # frames between predicted future frames: offsets 1, 1+s, 1+2s, ...
    vq_codes: int = 512
    vq_decay: float = 0.99
    vq_reset_threshold: float = 1.0
    prior: str = "standard"           # standard: z ~ N(0, I) | learned: z ~ N(mu(c), sigma(c)), a net of the condition
    # data
    normalisation: str = "zscore"     # zscore | minmax | none
    holdout_every: int = 0            # hold out every k-th clip (0: train on all clips)
    balance_speed: float = 0.0        # draw windows by root speed density^-this (0: uniform, 1: every speed alike)
    # loop
    batch_size: int = 64
    rollout: int = 8
    teacher_epochs: int = PAPER_PHASES[0]
    ramp_epochs: int = PAPER_PHASES[1]
    student_epochs: int = PAPER_PHASES[2]
    batches_per_epoch: int = 0        # 0: one pass over a shuffle of every valid rollout start
    lr: float = 1e-4
    lr_end: float = 1e-7
    seed: int = 0
    device: str = "cpu"               # cpu | cuda | cuda:N
    threads: int = 0                  # torch intra-op threads (0: torch's default)
    # losses
    future_weights: list[float] = field(default_factory=list)  # one per future frame; empty: uniform
    kl_mode: str = "beta"             # beta: beta * KL | capacity: gamma * |KL - C|
    kl_beta: float = 1.0
    kl_gamma: float = 10.0
    kl_capacity: float = 10.0         # C_max, nats per frame summed over latent dimensions
    kl_capacity_steps: int = 100_000  # optimiser steps over which C rises linearly from 0 to C_max
    commit_weight: float = 0.25
    root_weight: float = 1.0          # weight of the root columns (step, turn) in the reconstruction loss
    prior_feedback: float = 0.0       # share of student steps that feed back a frame decoded from a prior sample
    condition_noise: float = 0.0      # std of Gaussian noise on the condition the decoder sees (normalised units)
    foot_weight: float = 0.0          # planted feet's world steps against the data's (cm^2)
    fk_weight: float = 0.0            # predicted bones against the predicted rotations' rest offsets (cm^2)

    @property
    def epochs(self) -> int:
        """Total number of epochs over the three scheduled-sampling phases."""
        return self.teacher_epochs + self.ramp_epochs + self.student_epochs

    def validate(self) -> "TrainConfig":
        """Check values and combinations; raise ConfigError naming the first bad one."""
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} = {getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        positive = ("latent", "hidden", "experts", "gate_hidden", "n_cond", "n_future", "future_stride", "vq_codes",
                    "batch_size", "rollout")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} = {getattr(self, key)}: must be at least 1")
        for key in ("teacher_epochs", "ramp_epochs", "student_epochs", "batches_per_epoch",
                    "holdout_every", "threads", "kl_capacity_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} = {getattr(self, key)}: must not be negative")
        if self.epochs < 1:
            raise ConfigError("teacher_epochs + ramp_epochs + student_epochs must be at least 1")
        if self.future_weights and len(self.future_weights) != self.n_future:
            raise ConfigError(f"future_weights has {len(self.future_weights)} entries for "
                              f"n_future = {self.n_future}")
        if self.future_weights and (min(self.future_weights) < 0 or sum(self.future_weights) <= 0):
            raise ConfigError("future_weights must be non-negative with a positive sum")
        if not 0.0 < self.vq_decay < 1.0:
            raise ConfigError(f"vq_decay = {self.vq_decay}: must lie in (0, 1)")
        for key in ("condition_noise", "foot_weight", "fk_weight", "balance_speed", "root_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} = {getattr(self, key)}: must not be negative")
        if not 0.0 <= self.prior_feedback <= 1.0:
            raise ConfigError(f"prior_feedback = {self.prior_feedback}: must lie in [0, 1]")
        if self.lr <= 0 or self.lr_end < 0:
            raise ConfigError("lr must be positive and lr_end non-negative")
        return self

    def with_epochs(self, total: int) -> "TrainConfig":
        """Split a total epoch count over teacher/ramping/student in the paper's 20:20:100 ratio."""
        if total < 1:
            raise ConfigError(f"epochs = {total}: must be at least 1")
        teacher = round(total * PAPER_PHASES[0] / sum(PAPER_PHASES))
        ramp = round(total * PAPER_PHASES[1] / sum(PAPER_PHASES))
        return dataclasses.replace(self, teacher_epochs=teacher, ramp_epochs=ramp,
                                   student_epochs=total - teacher - ramp)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(key: str, value: Any) -> Any:
    """Check one value against the field's type (ints are accepted for floats)."""
    if key not in FIELDS:
        raise ConfigError(f"unknown setting {key!r}")
    default = getattr(TrainConfig(), key)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
        value = [float(v) for v in value] if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key} = {value!r}: expected a {type(default).__name__}")
    return value


def flatten_sections(values: dict[str, Any]) -> dict[str, Any]:
    """Flat key-value pairs from flat or sectioned (model/data/train/loss tables) ones."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    for key, value in flat.items():  # nan/inf parse as TOML floats and slip past every range check
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"{key} = {value!r}: must be finite")
    return flat


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A config from flat or sectioned (model/data/train/loss tables) key-value pairs."""
    changes = {key: _coerce(key, value) for key, value in flatten_sections(values).items()}
    return dataclasses.replace(base or TrainConfig(), **changes).validate()


def read_toml(path: str | Path) -> dict[str, Any]:
    """The key-value pairs of a TOML config file; ConfigError when it cannot be read or parsed."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML config file on top of base (defaults when None)."""
    return from_dict(read_toml(path), base)


def parse_override(text: str) -> tuple[str, Any]:
    """Split a KEY=VALUE override; VALUE is read as TOML (a bare word is taken as a string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def to_toml(config: TrainConfig) -> str:
    """The config as TOML text (flat keys), readable back with load_config."""
    lines = []
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = f'"{value}"'
        elif isinstance(value, list):
            text = "[" + ", ".join(repr(v) for v in value) + "]"
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
