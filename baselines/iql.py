"""IQL: "Offline Reinforcement Learning with Implicit Q-Learning" (Kostrikov, Nair & Levine, ICLR 2022).

Never queries Q at actions outside the dataset. With u = min_k Q'_k(s, a) - V(s):

    value:   L_V = E |tau - 1(u < 0)| u^2                         (expectile regression, tau)
    critic:  L_Q = sum_k E (Q_k(s, a) - r - gamma (1 - d) V(s'))^2
    actor:   L_pi = -E min(exp(beta u), 100) log pi(a|s)          (advantage-weighted regression)
             or, with --deterministic-actor, E min(exp(beta u), 100) ||pi(s) - a||^2

Each step updates V first (against the target critics), then the critics and the actor both
with the updated V: the critics' target uses it at s', the actor's advantages u at s (the
authors' order), then Polyak 0.005 on the target critics. The actor is a Gaussian with a
tanh-squashed mean and a state-independent std (the authors' choice for locomotion); its learning
rate decays by a cosine over `steps`. Adam 3e-4 everywhere, batch 256. The authors' settings per
task (experiments/hyperparams/iql.toml): expectile 0.7 / beta 3 and rewards scaled by
1000 / (max return - min return) for locomotion, 0.9 / 10 and r - 1 for AntMaze, beta 0.5 for
Adroit (pen) and Kitchen; CORL's per-dataset changes (deterministic actor and tau 0.001 on some
hopper datasets, ...) are not used.

Deliberate deviations:
- Observations are standardised (the harness's default, as in CORL's IQL, whose scores are the
  published reference for this suite); the authors' code feeds raw states, which
  --normalize-observations false gives.
- No dropout: the authors use dropout 0.1 in the actor for Adroit and Kitchen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dql.actors import (
    DeterministicActor,
    GaussianActor,
    frozen_copy,
    observations_tensor,
)
from dql.batched_seeds import per_seed
from dql.buffer import Batch
from dql.cli import run_cli
from dql.nets import (
    CriticEnsemble,
    Precision,
    at_config_precision,
    make_optimizer,
    mlp,
    polyak_update,
)
from dql.training import Checkpointed, TrainConfig, resolve_device, run_training, spec

ALGORITHM = "iql"
MAX_ADVANTAGE_WEIGHT = 100.0


@dataclass
class Config(TrainConfig):
    """IQL (Kostrikov et al. 2022)."""

    expectile: float = field(default=0.7, metadata=spec("(0, 1)"))
    """Expectile tau of the value regression, in (0, 1); 0.5 is the mean, near 1 the max."""
    beta: float = field(default=3.0, metadata=spec(">= 0"))
    """Inverse temperature of the advantage weights exp(beta * A)."""
    discount: float = field(default=0.99, metadata=spec("[0, 1]"))
    """Discount factor gamma."""
    tau: float = field(default=0.005, metadata=spec("(0, 1]"))
    """Polyak rate of the target critics."""
    actor_lr: float = field(default=3e-4, metadata=spec("> 0"))
    """Adam learning rate of the actor (decayed by a cosine over --steps)."""
    critic_lr: float = field(default=3e-4, metadata=spec("> 0"))
    """Adam learning rate of the critics."""
    value_lr: float = field(default=3e-4, metadata=spec("> 0"))
    """Adam learning rate of the value network."""
    deterministic_actor: bool = False
    """Use a deterministic actor with weighted MSE instead of a Gaussian with weighted log-likelihood."""
    hidden: tuple[int, ...] = field(default=(256, 256), metadata=spec("widths"))
    """Hidden layer widths of actor, critics and value network."""
    precision: Precision = "fp32"
    """fp32, or bf16: the training step's matmuls in bfloat16 (dql.nets.autocast); acting is fp32."""


def expectile_loss(residual: torch.Tensor, expectile: float) -> torch.Tensor:
    """E |tau - 1(u < 0)| u^2: weight tau where the target lies above V (u > 0), 1 - tau below."""
    weight = torch.where(residual < 0, 1.0 - expectile, expectile)
    return (weight * residual.square()).mean()


class IQL(Checkpointed):
    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: Config
    ) -> None:
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        actor_cls = DeterministicActor if config.deterministic_actor else GaussianActor
        self.actor = actor_cls(observation_dim, action_dim, max_action, config.hidden)
        self.critic = CriticEnsemble(observation_dim, action_dim, 2, config.hidden)
        self.value = mlp(observation_dim, 1, config.hidden)
        for net in (self.actor, self.critic, self.value):
            net.to(self.device)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = make_optimizer(self.actor.parameters(), config.actor_lr)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), config.critic_lr)
        self.value_optimizer = make_optimizer(self.value.parameters(), config.value_lr)
        self.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.actor_optimizer, T_max=config.steps
        )

    @per_seed
    def value_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Expectile regression of V(s) onto the target critics' min Q(s, a); also that Q."""
        with torch.no_grad():
            target_q = self.critic_target.min(batch["observations"], batch["actions"])
        value = self.value(batch["observations"]).squeeze(-1)
        return expectile_loss(target_q - value, self.config.expectile), target_q

    @per_seed
    def critic_loss(
        self, batch: Batch, target_q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One-step TD onto the (updated) V(s'), never a max over actions; also the actor's
        advantages Q(s, a) - V(s) and the mean of each."""
        c = self.config
        # the updated V at s (the actor's advantages) and at s' (the critics' target), one pass
        with torch.no_grad():
            both = torch.cat([batch["observations"], batch["next_observations"]])
            v, next_v = self.value(both).squeeze(-1).float().chunk(2)
            advantage = target_q - v
        target = batch["rewards"] + c.discount * (1.0 - batch["terminals"]) * next_v
        q = self.critic(batch["observations"], batch["actions"])  # (2, B)
        loss = (q - target).square().mean(dim=1).sum()
        return loss, advantage, advantage.mean(), q.detach().mean()

    @per_seed
    def actor_loss(self, batch: Batch, advantage: torch.Tensor) -> torch.Tensor:
        """Advantage-weighted regression."""
        c = self.config
        observations, actions = batch["observations"], batch["actions"]
        weights = torch.exp(c.beta * advantage).clamp(max=MAX_ADVANTAGE_WEIGHT)
        if c.deterministic_actor:
            bc_losses = (self.actor(observations) - actions).square().sum(-1)
        else:
            bc_losses = -self.actor.log_prob(observations, actions)
        return (weights * bc_losses).mean()

    @at_config_precision  # --precision bf16: the step under autocast
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        # .sum() of a loss: over batched seeds (dql.batched_seeds); for one seed, the loss
        value_loss, target_q = self.value_loss(batch)
        self.value_optimizer.zero_grad(set_to_none=True)
        value_loss.sum().backward()
        self.value_optimizer.step()

        critic_loss, advantage, advantage_mean, q_mean = self.critic_loss(batch, target_q)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        self.critic_optimizer.step()

        actor_loss = self.actor_loss(batch, advantage)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        self.actor_optimizer.step()
        self.actor_schedule.step()

        polyak_update(self.critic_target, self.critic, self.config.tau)
        return {
            "value_loss": value_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "advantage_mean": advantage_mean,
            "q_mean": q_mean,
        }

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return self.actor(observations_tensor(observations, self.device)).cpu().numpy()


Agent = IQL  # the registry's agent class of this algorithm


def train(config: Config) -> dict[str, Any]:
    return run_training(config, IQL, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(Config, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
