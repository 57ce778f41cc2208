"""The PPO training loop: rollouts in a ControlEnv, updates, checkpoints, log.csv and reward.png."""
from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.preview import save_figure

from .ppo import ActorCritic, PPOConfig, gae, ppo_update
from .stepper import PolicyError, Stepper
from .tasks import EARLIER_REWARD, ControlEnv, TaskConfig

CHECKPOINT = "policy.pt"
FORMAT = "motionvae-policy-checkpoint"
VERSION = 1


@dataclass
class RunConfig:
    """One policy-training run."""

    task: str
    steps: int = 2_000_000  # character frames in all
    seed: int = 0
    checkpoint_every_s: float = 120.0
    ppo: PPOConfig = field(default_factory=PPOConfig)
    env: TaskConfig = field(default_factory=TaskConfig)


@dataclass
class Trainer:
    """A run's networks, optimiser and progress."""

    config: RunConfig
    env: ControlEnv
    net: ActorCritic
    optimiser: torch.optim.Optimizer
    generator: torch.Generator
    frames: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    init: dict | None = None  # the exported policy this run started from, with its own training record


def make_trainer(config: RunConfig, stepper: Stepper) -> Trainer:
    """A fresh trainer for config over stepper's decoder."""
    torch.manual_seed(config.seed)
    env = ControlEnv(config.task, stepper, config.ppo.envs, config.env, config.seed)
    net = ActorCritic(env.obs_size, env.action_size, config.ppo).to(stepper.device)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.ppo.lr)
    return Trainer(config, env, net, optimiser, torch.Generator().manual_seed(config.seed))


def save(trainer: Trainer, run_dir: Path) -> None:
    """Write the checkpoint atomically (a crash never leaves half of one)."""
    c = trainer.config
    state = {"format": FORMAT, "version": VERSION, "task": c.task, "seed": c.seed, "steps": c.steps,
             "ppo": asdict(c.ppo), "env": asdict(c.env), "net": trainer.net.state_dict(),
             "optimiser": trainer.optimiser.state_dict(), "frames": trainer.frames, "seconds": trainer.seconds,
             "history": trainer.history, "generator": trainer.generator.get_state(),
             "env_rng": trainer.env.rng.bit_generator.state, "init": trainer.init}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(run_dir / CHECKPOINT, buffer.getvalue())


def read(run_dir: Path) -> dict:
    """A run folder's checkpoint; PolicyError when missing or foreign."""
    file = run_dir / CHECKPOINT
    if not file.is_file():
        raise PolicyError(f"{file}: no policy checkpoint there (train without --resume first)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
        raise PolicyError(f"{file}: not a policy checkpoint of version {VERSION}")
    return state


def restore(state: dict, stepper: Stepper, steps: int | None = None, checkpoint_every_s: float = 120.0) -> Trainer:
    """A trainer continued from a checkpoint (steps: a new total, if given)."""
    # Runs from before a reward term continue with the reward they were trained on.
    saved = {**EARLIER_REWARD, **state["env"]}
    env = TaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    config = RunConfig(state["task"], steps or state["steps"], state["seed"], checkpoint_every_s,
                       PPOConfig(**state["ppo"]), env)
    trainer = make_trainer(config, stepper)
    try:
        trainer.net.load_state_dict(state["net"])
    except RuntimeError:
        raise PolicyError("the checkpoint's networks do not fit this model's observation or latent size") from None
    trainer.optimiser.load_state_dict(state["optimiser"])
    trainer.generator.set_state(state["generator"])
    trainer.env.rng.bit_generator.state = state["env_rng"]
    trainer.frames, trainer.seconds, trainer.history = state["frames"], state["seconds"], list(state["history"])
    trainer.init = state.get("init")  # absent from runs before the record
    return trainer


def collect(trainer: Trainer, obs: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict]:
    """One rollout of horizon steps for every character; returns the flattened batch, next obs and stats."""
    env, net, p = trainer.env, trainer.net, trainer.config.ppo
    keys = ("obs", "actions", "logp", "values", "rewards", "dones")
    buf: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    raw_obs = []
    episodes, task_reward = 0, 0.0
    with torch.no_grad():
        for _ in range(p.horizon):  # over time steps: each is one batched step of every character
            obs_n = net.norm(obs)
            dist = net.distribution(obs_n)
            action = dist.sample()
            value = net.value(obs_n)
            next_obs, reward, terminated, truncated, final = env.step(net.latent(action))
            task_reward += float(reward.mean())
            if truncated.any():
                # Time limit, not failure: the episode would have gone on, so bootstrap its value.
                tail = net.value(net.norm(torch.nan_to_num(final)))
                reward = reward + p.gamma * torch.where(truncated, tail, torch.zeros_like(tail))
            for k, v in zip(keys, (obs_n, action, dist.log_prob(action).sum(-1), value, reward,
                                   terminated | truncated)):
                buf[k].append(v)
            raw_obs.append(obs)
            episodes += int((terminated | truncated).sum())
            obs = next_obs
        last_value = net.value(net.norm(obs))
    data = {k: torch.stack(v) for k, v in buf.items()}
    adv, returns = gae(data["rewards"], data["values"], data["dones"], last_value, p.gamma, p.lam)
    net.norm.update(torch.cat(raw_obs))
    batch = {k: data[k].flatten(0, 1) for k in ("obs", "actions", "logp")}
    batch.update(adv=adv.flatten(), returns=returns.flatten())
    stats = {"mean_reward": task_reward / p.horizon, "episodes": episodes}
    if env.name == "target":
        stats["targets_reached"] = int(env.task.reached.sum())
    return batch, obs, stats


def write_log(history: list[dict], run_dir: Path) -> None:
    """log.csv (one row per update) and reward.png, both replaced atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "log.csv", text.getvalue())
    plot_rewards(history, run_dir / "reward.png")


def plot_rewards(history: list[dict], path: Path) -> None:
    """Mean reward per step against character frames, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["frames"] for r in history], [r["mean_reward"] for r in history], marker="." if len(history) < 30
            else None)
    ax.set_xlabel("character frames")
    ax.set_ylabel("mean reward per step")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def train(trainer: Trainer, run_dir: Path, progress: bool = True) -> Trainer:
    """Run PPO until config.steps frames, checkpointing every checkpoint_every_s seconds and at the end."""
    from tqdm import tqdm

    c, p = trainer.config, trainer.config.ppo
    per_update = p.envs * p.horizon
    obs = trainer.env.reset()
    bar = tqdm(total=c.steps, initial=min(trainer.frames, c.steps), unit="frame", desc=c.task, disable=not progress)
    last_save = time.perf_counter()
    while trainer.frames < c.steps:
        t0 = time.perf_counter()
        fraction = min(trainer.frames / max(c.steps, 1), 1.0)
        for group in trainer.optimiser.param_groups:
            group["lr"] = p.lr + (p.lr_end - p.lr) * fraction
        batch, obs, stats = collect(trainer, obs)
        warming = len(trainer.history) < p.critic_warmup
        stats.update(ppo_update(trainer.net, trainer.optimiser, batch, p, trainer.generator, train_actor=not warming))
        trainer.frames += per_update
        elapsed = time.perf_counter() - t0
        trainer.seconds += elapsed
        row = {"update": len(trainer.history) + 1, "frames": trainer.frames, "seconds": round(trainer.seconds, 2),
               "lr": trainer.optimiser.param_groups[0]["lr"], "std": float(trainer.net.log_std.detach().exp().mean()),
               "frames_per_s": round(per_update / elapsed, 1), **stats}
        trainer.history.append(row)
        bar.update(per_update)
        bar.set_postfix(reward=f"{stats['mean_reward']:.3f}")
        if time.perf_counter() - last_save > c.checkpoint_every_s or trainer.frames >= c.steps:
            save(trainer, run_dir)
            write_log(trainer.history, run_dir)
            last_save = time.perf_counter()
    bar.close()
    return trainer
