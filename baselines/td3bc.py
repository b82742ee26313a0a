"""TD3+BC: "A Minimalist Approach to Offline Reinforcement Learning" (Fujimoto & Gu, NeurIPS 2021).

TD3 with a behaviour-cloning term in the actor loss and normalised states:

    critic:  y = r + gamma (1 - d) min_k Q'_k(s', clip(pi'(s') + clip(sigma eps, -c, c), -M, M))
             L_Q = sum_k E (Q_k(s, a) - y)^2
    actor:   lambda = alpha / E|Q_1(s, pi(s))|          (a constant: no gradient flows through it)
             L_pi = -lambda E Q_1(s, pi(s)) + E ||pi(s) - a||^2       every `policy_delay` steps

with alpha 2.5, sigma 0.2 M, c 0.5 M (M = max_action), policy delay 2, Polyak 0.005 for both
targets, Adam 3e-4, as in the authors' code. The twin critic is one `CriticEnsemble` of 2; the
actor's Q_1 is computed alone (`CriticEnsemble.member`), not as half of both critics' output.
Deliberate deviation: none. The actor's last loss is reported at every step (it is updated every
second step) so that logged averages are not halved.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dql.actors import DeterministicActor, frozen_copy, observations_tensor
from dql.batched_seeds import per_seed
from dql.buffer import Batch
from dql.cli import run_cli
from dql.nets import (
    CriticEnsemble,
    Precision,
    at_config_precision,
    make_optimizer,
    polyak_update,
)
from dql.training import Checkpointed, TrainConfig, resolve_device, run_training, spec

ALGORITHM = "td3bc"


@dataclass
class Config(TrainConfig):
    """TD3+BC (Fujimoto & Gu 2021)."""

    alpha: float = field(default=2.5, metadata=spec(">= 0"))
    """BC trade-off: lambda = alpha / mean |Q| weighs the Q term against the BC term."""
    discount: float = field(default=0.99, metadata=spec("[0, 1]"))
    """Discount factor gamma."""
    tau: float = field(default=0.005, metadata=spec("(0, 1]"))
    """Polyak rate of the target actor and critics."""
    policy_noise: float = field(default=0.2, metadata=spec(">= 0"))
    """Std of the target policy smoothing noise, as a fraction of max_action."""
    noise_clip: float = field(default=0.5, metadata=spec(">= 0"))
    """Clip of the target policy smoothing noise, as a fraction of max_action."""
    policy_delay: int = field(default=2, metadata=spec(">= 1"))
    """Update the actor and the targets every this many critic updates."""
    actor_lr: float = field(default=3e-4, metadata=spec("> 0"))
    """Adam learning rate of the actor."""
    critic_lr: float = field(default=3e-4, metadata=spec("> 0"))
    """Adam learning rate of the critics."""
    hidden: tuple[int, ...] = field(default=(256, 256), metadata=spec("widths"))
    """Hidden layer widths of actor and critics."""
    precision: Precision = "fp32"
    """fp32, or bf16: the training step's matmuls in bfloat16 (dql.nets.autocast); acting is fp32."""


class TD3BC(Checkpointed):
    extra_state = ("updates", "last_actor_loss", "last_lambda")

    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: Config
    ) -> None:
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.max_action = max_action
        self.actor = DeterministicActor(observation_dim, action_dim, max_action, config.hidden)
        self.critic = CriticEnsemble(observation_dim, action_dim, 2, config.hidden)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.actor_target = frozen_copy(self.actor)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = make_optimizer(self.actor.parameters(), config.actor_lr)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), config.critic_lr)
        self.updates = 0
        self.last_actor_loss = torch.zeros((), device=self.device)
        self.last_lambda = torch.zeros((), device=self.device)

    @per_seed
    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over both critics of the TD error against the smoothed clipped double-Q target;
        also returns the mean Q(s, a)."""
        c = self.config
        with torch.no_grad():
            next_actions = self.actor_target(batch["next_observations"])
            noise = torch.randn_like(next_actions) * (c.policy_noise * self.max_action)
            noise = noise.clamp(-c.noise_clip * self.max_action, c.noise_clip * self.max_action)
            next_actions = (next_actions + noise).clamp(-self.max_action, self.max_action)
            next_q = self.critic_target.min(batch["next_observations"], next_actions)
            target = batch["rewards"] + c.discount * (1.0 - batch["terminals"]) * next_q
        q = self.critic(batch["observations"], batch["actions"])  # (2, B)
        return (q - target).square().mean(dim=1).sum(), q.detach().mean()

    @per_seed
    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """-lambda E Q_1(s, pi(s)) + E ||pi(s) - a||^2 and lambda = alpha / E|Q_1| (detached)."""
        policy_actions = self.actor(batch["observations"])
        q1 = self.critic.member(0, batch["observations"], policy_actions)
        lmbda = self.config.alpha / q1.abs().mean().detach()
        bc = (policy_actions - batch["actions"]).square().mean()
        return -lmbda * q1.mean() + bc, lmbda

    @at_config_precision  # --precision bf16: the step under autocast
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        critic_loss, q_mean = self.critic_loss(batch)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # .sum(): over batched seeds (dql.batched_seeds); one: the loss
        self.critic_optimizer.step()
        self.updates += 1

        if self.updates % self.config.policy_delay == 0:
            actor_loss, lmbda = self.actor_loss(batch)
            self.actor_optimizer.zero_grad(set_to_none=True)
            # only the actor's gradients are needed: skip the critic's weight gradients
            actor_loss.sum().backward(inputs=list(self.actor.parameters()))
            self.actor_optimizer.step()
            polyak_update(self.critic_target, self.critic, self.config.tau)
            polyak_update(self.actor_target, self.actor, self.config.tau)
            self.last_actor_loss, self.last_lambda = actor_loss.detach(), lmbda
        return {
            "critic_loss": critic_loss.detach(),
            "actor_loss": self.last_actor_loss,
            "lambda": self.last_lambda,
            "q_mean": q_mean,
        }

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return self.actor(observations_tensor(observations, self.device)).cpu().numpy()


Agent = TD3BC  # the registry's agent class of this algorithm


def train(config: Config) -> dict[str, Any]:
    return run_training(config, TD3BC, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(Config, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
