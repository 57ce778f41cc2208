"""Train a control policy over a model's frozen decoder with PPO, then export it into the model directory.

The characters step through the model directory's decoder.onnx (exactly the runtime's step); give the
training run with --vae-run to step through its torch twin instead (faster on a GPU).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from runtime.cli import UsageError, check_memory, fail, number, parse, write_error
from runtime.model import ModelError

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..runs import resolve_device
from .export import export_policy, load_exported, policy_file, provenance
from .loop import RunConfig, Trainer, make_trainer, read, restore, train
from .ppo import PPOConfig
from .stepper import PolicyError, make_stepper
from .tasks import TASKS, TaskConfig

EXAMPLES = """examples:
  python -m trainer.policy joystick --model models/walk --run-dir runs/walk-joystick
  python -m trainer.policy target --model models/walk --run-dir runs/walk-target --steps 5000000 --envs 256
  python -m trainer.policy joystick --model models/walk --run-dir runs/walk-joystick --resume --steps 8000000
  python -m trainer.policy path --model models/walk --vae-run runs/walk --device cuda --run-dir runs/walk-path
  python -m trainer.policy joystick --model models/walk --run-dir runs/walk-joystick --export-only
  python -m trainer.policy joystick --model models/walk --run-dir runs/walk-joystick-2 \
      --init-policy models/walk/policy-joystick.onnx --steps 1500000 --lr 1e-4 --init-log-std -1.6
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m trainer.policy", description=__doc__.split("\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS), help="the control task: %(choices)s")
    p.add_argument("--model", required=True, help="model directory (the policy is exported into it)")
    p.add_argument("--run-dir", required=True, help="folder for policy.pt, log.csv and reward.png")
    p.add_argument("--vae-run", help="the model's training run: step its decoder in torch instead of ONNX")
    p.add_argument("--steps", type=int, help=f"character frames to train in all (default {RunConfig.steps:,})")
    p.add_argument("--envs", type=int, default=PPOConfig.envs, help="characters stepped together (default %(default)s)")
    p.add_argument("--horizon", type=int, default=PPOConfig.horizon,
                   help="steps per character per update (default %(default)s)")
    p.add_argument("--epochs", type=int, default=PPOConfig.epochs,
                   help="PPO passes over each rollout (default %(default)s)")
    p.add_argument("--minibatch", type=int, default=PPOConfig.minibatch,
                   help="samples per PPO step (default %(default)s)")
    p.add_argument("--lr", type=float, default=PPOConfig.lr,
                   help="Adam learning rate, decaying linearly (default %(default)s)")
    p.add_argument("--action-scale", type=float, default=PPOConfig.action_scale,
                   help="latent = scale * clamp(action, -1, 1) (default %(default)s)")
    p.add_argument("--speed-min", type=float, default=TaskConfig.speed_min,
                   help="joystick: slowest command, m/s (default %(default)s)")
    p.add_argument("--speed-max", type=float, default=TaskConfig.speed_max,
                   help="joystick: fastest command, m/s (default %(default)s)")
    p.add_argument("--skate-weight", type=float, default=TaskConfig.skate_weight,
                   help="reward penalty per m/s of planted-foot sliding (default %(default)s)")
    p.add_argument("--heading", choices=("linear", "cosine"),
                   default="linear" if TaskConfig.heading_linear else "cosine",
                   help="joystick heading term: linear, -2|error|/pi, or cosine, the reference's cos(error) - 1 "
                        "(default %(default)s)")
    p.add_argument("--speed-relative-below", type=float, default=TaskConfig.speed_relative_below,
                   help="joystick: speed errors of slower commands count relative to this speed, m/s; 0 gives the "
                        "reference's error in m/s (default %(default)s)")
    p.add_argument("--half-turns", type=float, default=TaskConfig.half_turns,
                   help="joystick: share of commands drawn turning 135-180 degrees from the character's heading, "
                        "beside the uniform ones (default %(default)s)")
    p.add_argument("--path-approach", type=float, default=TaskConfig.path_approach,
                   help="path: weight of the reward for closing in on the path (default %(default)s)")
    p.add_argument("--target-facing", type=float, default=TaskConfig.target_facing,
                   help="target: weight of the discount on progress made while not facing the target "
                        "(default %(default)s)")
    p.add_argument("--target-hold", type=float, default=TaskConfig.target_hold,
                   help="target: share of arrivals after which the target stays put for %g-%g s (default %%(default)s)"
                        % TaskConfig.target_hold_s)
    p.add_argument("--init-policy", help="start the actor from an exported policy-<task>.onnx (its critic is new)")
    p.add_argument("--critic-warmup", type=int,
                   help="first updates that train only the critic (default 8 with --init-policy, else 0)")
    p.add_argument("--init-log-std", type=float, default=PPOConfig.init_log_std,
                   help="starting log standard deviation of the actions (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--device", default="auto", help="torch device: cpu, cuda or auto (default %(default)s)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--checkpoint-every", type=float, default=120.0,
                   help="seconds between checkpoints (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--export-only", action="store_true", help="export the run's checkpoint without training")
    p.add_argument("--no-export", action="store_true", help="train without writing into the model directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


# Bytes a rollout keeps per character step (observation, latent, log-probability, value, reward ...), generously.
ROLLOUT_BYTES_PER_STEP = 16 << 10


def _check_numbers(args: argparse.Namespace) -> None:
    """Every number finite and in range, and the rollout's memory, before a model is loaded."""
    for name, low, high in (("lr", 0.0, 1.0), ("action_scale", 0.0, 100.0), ("checkpoint_every", 0.0, 1e7)):
        number(getattr(args, name), f"--{name.replace('_', '-')}", low, high, low_open=True)
    for name, low, high in (("speed_min", 0.0, 20.0), ("speed_max", 0.0, 20.0), ("skate_weight", 0.0, 1e3),
                            ("speed_relative_below", 0.0, 20.0), ("half_turns", 0.0, 1.0),
                            ("path_approach", 0.0, 1e3), ("target_facing", 0.0, 1e3), ("target_hold", 0.0, 1.0),
                            ("init_log_std", -20.0, 5.0)):
        number(getattr(args, name), f"--{name.replace('_', '-')}", low, high)
    for name in ("envs", "horizon", "epochs", "minibatch", "steps", "threads"):
        if getattr(args, name) is not None:
            number(getattr(args, name), f"--{name}", 1, integer=True)
    for name in ("seed", "critic_warmup"):
        if getattr(args, name) is not None:
            number(getattr(args, name), f"--{name.replace('_', '-')}", 0, integer=True)
    check_memory(float(args.envs) * args.horizon * ROLLOUT_BYTES_PER_STEP,
                 f"--envs {args.envs} x --horizon {args.horizon}")


def _trainer(args: argparse.Namespace, run_dir: Path) -> Trainer:
    if min(args.envs, args.horizon, args.epochs, args.minibatch, args.steps or 1) < 1:
        raise PolicyError("--envs, --horizon, --epochs, --minibatch and --steps must be at least 1")
    if not 0 <= args.speed_min <= args.speed_max:
        raise PolicyError("--speed-min and --speed-max must satisfy 0 <= min <= max")
    if not 0 <= args.half_turns <= 1:
        raise PolicyError("--half-turns is a share: between 0 and 1")
    stepper = make_stepper(args.model, args.vae_run, resolve_device(args.device))
    if args.resume or args.export_only:
        state = read(run_dir)
        if state["task"] != args.task:
            raise PolicyError(f"{run_dir}: this run trains {state['task']}, not {args.task}")
        return restore(state, stepper, args.steps, args.checkpoint_every)
    if (run_dir / "policy.pt").exists():
        raise PolicyError(f"{run_dir}: already holds a policy run; pass --resume or pick another --run-dir")
    warmup = args.critic_warmup if args.critic_warmup is not None else (8 if args.init_policy else 0)
    ppo = PPOConfig(envs=args.envs, horizon=args.horizon, epochs=args.epochs, minibatch=args.minibatch, lr=args.lr,
                    action_scale=args.action_scale, init_log_std=args.init_log_std, critic_warmup=warmup)
    env = TaskConfig(speed_min=args.speed_min, speed_max=args.speed_max, skate_weight=args.skate_weight,
                     heading_linear=args.heading == "linear", path_approach=args.path_approach,
                     target_facing=args.target_facing, target_hold=args.target_hold,
                     speed_relative_below=args.speed_relative_below, half_turns=args.half_turns)
    trainer = make_trainer(RunConfig(args.task, args.steps or RunConfig.steps, args.seed, args.checkpoint_every,
                                     ppo, env), stepper)
    if args.init_policy:
        load_exported(trainer.net, args.init_policy)
        trainer.init = provenance(args.init_policy, args.task)
    return trainer


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input."""
    args = parse(build_parser(), argv)
    run_dir = Path(args.run_dir)
    try:
        _check_numbers(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        run_dir.mkdir(parents=True, exist_ok=True)
        trainer = _trainer(args, run_dir)
        if not args.export_only:
            train(trainer, run_dir, progress=not args.quiet)
        last = trainer.history[-1] if trainer.history else {}
        if not args.no_export:
            env = trainer.env
            record = {"frames": trainer.frames, "seconds": round(trainer.seconds, 1),
                      "mean_reward": last.get("mean_reward"), "run": str(run_dir), "reward": env.config.reward(),
                      "init": trainer.init}
            diff = export_policy(trainer.net, args.model, args.task, env.blocks, env.config.runtime(args.task),
                                 record)
            print(f"exported {policy_file(args.task)} into {args.model} (onnxruntime vs torch {diff:.1e})")
    except (PolicyError, ConfigError, ModelError, CheckpointError, UsageError) as e:
        return fail(e)
    except OSError as e:
        return fail(write_error(e, run_dir))
    print(f"{args.task}: {trainer.frames:,} frames in {trainer.seconds:.0f} s, last mean reward "
          f"{last.get('mean_reward', float('nan')):.3f}; log {run_dir / 'log.csv'}, curve {run_dir / 'reward.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
