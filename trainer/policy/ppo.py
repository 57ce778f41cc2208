"""PPO (Schulman et al. 2017) for latent-action control: actor-critic networks, GAE and the clipped update."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PPOConfig:
    """Hyper-parameters; defaults follow the Motion VAE paper's except lr, raised for short CPU runs."""

    envs: int = 64  # characters stepped together
    horizon: int = 128  # steps per character per rollout
    gamma: float = 0.99
    lam: float = 0.95
    clip: float = 0.2
    epochs: int = 10
    minibatch: int = 1000
    lr: float = 3e-4
    lr_end: float = 3e-5  # linear decay to this over the run
    max_grad_norm: float = 1.0
    action_scale: float = 4.0  # latent = action_scale * clamp(action, -1, 1)
    init_log_std: float = -1.0
    hidden: int = 256
    critic_warmup: int = 0  # updates that train only the critic (a warm-started actor's fresh critic)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RunningNorm(nn.Module):
    """Observation standardisation with running statistics (frozen at export, inside the ONNX graph)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.tensor(1e-4))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the statistics of a batch (B, size) (parallel variance formula)."""
        x = x.reshape(-1, x.shape[-1]).double()
        n = float(len(x))
        mean, var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total)
        self.mean.copy_(self.mean + delta * n / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised, clipped observations."""
        return torch.clamp((x - self.mean) / torch.sqrt(self.var + 1e-8), -10.0, 10.0)


class ActorCritic(nn.Module):
    """Actor 3 x hidden ReLU -> tanh mean, a learned state-independent std; a critic of the same shape."""

    def __init__(self, obs_size: int, action_size: int, config: PPOConfig) -> None:
        super().__init__()
        h = config.hidden
        self.norm = RunningNorm(obs_size)
        self.actor = mlp([obs_size, h, h, h, action_size])
        self.critic = mlp([obs_size, h, h, h, 1])
        self.log_std = nn.Parameter(torch.full((action_size,), config.init_log_std))
        self.action_scale = config.action_scale
        # Small last layers: the first actions stay near the prior's mean and values near zero.
        for head in (self.actor[-1], self.critic[-1]):
            nn.init.uniform_(head.weight, -3e-3, 3e-3)
            nn.init.zeros_(head.bias)

    def distribution(self, obs_n: torch.Tensor) -> torch.distributions.Normal:
        """The action distribution at normalised observations."""
        return torch.distributions.Normal(torch.tanh(self.actor(obs_n)), self.log_std.exp())

    def value(self, obs_n: torch.Tensor) -> torch.Tensor:
        """State values (B,) at normalised observations."""
        return self.critic(obs_n).squeeze(-1)

    def latent(self, action: torch.Tensor) -> torch.Tensor:
        """The decoder's latent for an action."""
        return self.action_scale * torch.clamp(action, -1.0, 1.0)


class PolicyGraph(nn.Module):
    """The exported policy: raw observation -> deterministic latent (the action distribution's mean, scaled)."""

    def __init__(self, net: ActorCritic) -> None:
        super().__init__()
        self.norm, self.actor, self.action_scale = net.norm, net.actor, net.action_scale

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent)."""
        return self.action_scale * torch.tanh(self.actor(self.norm(observation)))


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (T, N) from rewards, values and episode ends (T, N) and the next state's value (N,).

    Rewards of time-limited steps already include gamma * V(final state), so an episode end always cuts here.
    """
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    next_value = last_value
    for t in range(len(rewards) - 1, -1, -1):  # over rollout steps: the recursion is sequential
        live = 1.0 - dones[t].float()
        delta = rewards[t] + gamma * next_value * live - values[t]
        running = delta + gamma * lam * live * running
        adv[t] = running
        next_value = values[t]
    return adv, adv + values


def ppo_update(net: ActorCritic, optimiser: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               config: PPOConfig, generator: torch.Generator, train_actor: bool = True) -> dict[str, float]:
    """config.epochs passes of clipped-surrogate minibatch steps over a flattened rollout; returns statistics.

    With train_actor False only the critic learns (the policy loss is reported, not followed).
    """
    n = len(batch["obs"])
    adv = batch["adv"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    stats = {"policy_loss": 0.0, "value_loss": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0}
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(adv.device)
        for start in range(0, n, config.minibatch):
            i = order[start:start + config.minibatch]
            dist = net.distribution(batch["obs"][i])
            logp = dist.log_prob(batch["actions"][i]).sum(-1)
            ratio = torch.exp(logp - batch["logp"][i])
            surrogate = torch.min(ratio * adv[i], torch.clamp(ratio, 1 - config.clip, 1 + config.clip) * adv[i])
            policy_loss = -surrogate.mean()
            value_loss = 0.5 * ((net.value(batch["obs"][i]) - batch["returns"][i]) ** 2).mean()
            optimiser.zero_grad(set_to_none=True)
            (policy_loss + value_loss if train_actor else value_loss).backward()
            # Clipped apart: large early value gradients must not shrink the policy's step.
            nn.utils.clip_grad_norm_([*net.actor.parameters(), net.log_std], config.max_grad_norm)
            nn.utils.clip_grad_norm_(net.critic.parameters(), config.max_grad_norm)
            optimiser.step()
            with torch.no_grad():
                stats["policy_loss"] += float(policy_loss)
                stats["value_loss"] += float(value_loss)
                stats["approx_kl"] += float((batch["logp"][i] - logp).mean())
                stats["clip_fraction"] += float(((ratio - 1).abs() > config.clip).float().mean())
            steps += 1
    return {k: v / steps for k, v in stats.items()}
